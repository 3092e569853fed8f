//! User-data as it arrives: maybe gzip-compressed, then one of `#cloud-config` YAML,
//! cloud-init's MIME multipart (its `text/cloud-config` parts taken, in order), a `#!`
//! script (not run: a warning), or Berth's native TOML. Everything is bounded: the
//! document, what gzip may inflate it to, the number of parts.

use std::io::Read;

use crate::settings::{self, Report, Settings};

/// The largest document the agent reads (EC2 allows 16 KiB, GCE 256 KiB; a config drive
/// or fw_cfg could hold more).
pub const MAX_DOCUMENT: usize = 1 << 20;
/// At most this much comes out of gzip (a gzip bomb stops here).
pub const MAX_INFLATED: usize = 4 << 20;
const MAX_PARTS: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GunzipError {
    #[error("not valid gzip: {0}")]
    Corrupt(String),
    #[error("inflates to more than {0} bytes (a gzip bomb?)")]
    TooLarge(usize),
}

/// Inflates gzip `data`, refusing to produce more than `limit` bytes.
pub fn gunzip(data: &[u8], limit: usize) -> Result<Vec<u8>, GunzipError> {
    let mut out = Vec::new();
    let limit64 = u64::try_from(limit).unwrap_or(u64::MAX);
    flate2::read::MultiGzDecoder::new(data)
        .take(limit64.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| GunzipError::Corrupt(e.to_string()))?;
    if out.len() > limit {
        return Err(GunzipError::TooLarge(limit));
    }
    Ok(out)
}

/// What the agent makes of a document.
pub fn parse(raw: &[u8]) -> (Settings, Report) {
    let mut report = Report::default();
    if raw.len() > MAX_DOCUMENT {
        report.error(
            "user-data",
            format!("{} bytes; at most {MAX_DOCUMENT} are read", raw.len()),
        );
        return (Settings::default(), report);
    }
    let data = if raw.starts_with(&[0x1f, 0x8b]) {
        match gunzip(raw, MAX_INFLATED) {
            Ok(d) => d,
            Err(e) => {
                report.error("user-data (gzip)", e.to_string());
                return (Settings::default(), report);
            }
        }
    } else {
        raw.to_vec()
    };
    let Ok(text) = std::str::from_utf8(&data) else {
        report.error(
            "user-data",
            "neither text (UTF-8) nor gzip: not a format Berth reads",
        );
        return (Settings::default(), report);
    };
    let (settings, more) = parse_text(text);
    report.errors.extend(more.errors);
    report.warnings.extend(more.warnings);
    (settings, report)
}

fn parse_text(text: &str) -> (Settings, Report) {
    let first = text.lines().next().unwrap_or("").trim_end();
    if first.starts_with("#cloud-config") {
        return settings::from_cloud_config(text);
    }
    if is_multipart(text) {
        return multipart(text);
    }
    let mut report = Report::default();
    if first.starts_with("#!") {
        report.warn(
            "user-data",
            format!(
                "a script ({first}) is not run: Berth has no shell; declare a container instead"
            ),
        );
        return (Settings::default(), report);
    }
    let unsupported = [
        "#include",
        "#cloud-boothook",
        "#part-handler",
        "#upstart-job",
    ];
    if unsupported.iter().any(|h| first.starts_with(h)) {
        report.error(
            "user-data",
            format!("{first:?} is not supported: give #cloud-config or TOML"),
        );
        return (Settings::default(), report);
    }
    if text.trim().is_empty() {
        return (Settings::default(), report);
    }
    // Native TOML has no header (as Bottlerocket's user-data): it must parse as TOML.
    match toml::from_str::<toml::Table>(text) {
        Ok(_) => settings::from_toml(text),
        Err(e) => {
            report.error(
                "user-data",
                format!(
                    "not #cloud-config (its first line must be `#cloud-config`), a MIME \
                     multipart, a script, or TOML ({})",
                    e.message()
                ),
            );
            (Settings::default(), report)
        }
    }
}

fn is_multipart(text: &str) -> bool {
    headers(text)
        .0
        .iter()
        .any(|(k, v)| k == "content-type" && v.to_ascii_lowercase().starts_with("multipart/"))
}

/// The headers at the start of a MIME entity (lower-cased names; folded lines joined) and
/// the body after the blank line.
fn headers(text: &str) -> (Vec<(String, String)>, &str) {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut rest = text;
    loop {
        let (line, after) = match rest.find('\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            return (out, after);
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            out.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        } else {
            return (out, rest);
        }
        if after.is_empty() {
            return (out, "");
        }
        rest = after;
    }
}

/// A parameter of a header value (`boundary="xyz"`).
fn parameter(value: &str, name: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// cloud-init's MIME multipart (RFC 2046): each `text/cloud-config` part is read in order
/// (later keys win, as cloud-init merges them by default); scripts and other parts are
/// named in warnings.
fn multipart(text: &str) -> (Settings, Report) {
    let mut report = Report::default();
    let (head, body) = headers(text);
    let boundary = head
        .iter()
        .find(|(k, _)| k == "content-type")
        .and_then(|(_, v)| parameter(v, "boundary"));
    let Some(boundary) = boundary else {
        report.error("user-data (MIME)", "multipart without a boundary");
        return (Settings::default(), report);
    };
    let delimiter = format!("--{boundary}");
    let mut merged = serde_json::Map::new();
    let parts: Vec<&str> = body.split(delimiter.as_str()).skip(1).collect();
    for (i, part) in parts.iter().enumerate() {
        if part.starts_with("--") {
            break; // the closing delimiter
        }
        if i >= MAX_PARTS {
            report.error(
                "user-data (MIME)",
                format!("more than {MAX_PARTS} parts; the rest ignored"),
            );
            break;
        }
        let at = format!("user-data part {}", i + 1);
        let part = part
            .strip_prefix("\r\n")
            .or(part.strip_prefix('\n'))
            .unwrap_or(part);
        let (h, content) = headers(part);
        let kind = h
            .iter()
            .find(|(k, _)| k == "content-type")
            .map(|(_, v)| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_else(|| "text/plain".into());
        let encoding = h
            .iter()
            .find(|(k, _)| k == "content-transfer-encoding")
            .map(|(_, v)| v.to_ascii_lowercase());
        let content = match encoding.as_deref() {
            Some("base64") => {
                use base64::Engine;
                let compact: String = content.chars().filter(|c| !c.is_whitespace()).collect();
                match base64::engine::general_purpose::STANDARD.decode(compact) {
                    Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                    Err(e) => {
                        report.error(at, format!("base64 content that does not decode: {e}"));
                        continue;
                    }
                }
            }
            _ => content.to_string(),
        };
        match kind.as_str() {
            "text/cloud-config" | "text/x-cloud-config" => {
                let options = serde_saphyr::options! { legacy_octal_numbers: true };
                match serde_saphyr::from_str_with_options::<serde_json::Value>(&content, options) {
                    Ok(serde_json::Value::Object(m)) => merged.extend(m),
                    Ok(serde_json::Value::Null) => {}
                    Ok(_) => report.error(at, "a cloud-config part that is not a mapping"),
                    Err(e) => {
                        report.error(format!("{at} (YAML)"), e.to_string().replace('\n', " "))
                    }
                }
            }
            "text/x-shellscript" | "text/x-shellscript-per-boot" | "text/cloud-boothook" => report
                .warn(
                    at,
                    format!("{kind} is not run: Berth has no shell; declare a container instead"),
                ),
            other => report.warn(
                at,
                format!("{other} parts are not read (only text/cloud-config)"),
            ),
        }
    }
    let settings = settings::from_value(serde_json::Value::Object(merged), &mut report);
    (settings, report)
}

#[cfg(test)]
mod tests;
