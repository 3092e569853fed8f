//! Berth's settings model: what user-data may ask of a machine, read from `#cloud-config`
//! YAML or native TOML (the same keys). Each top-level key is checked on its own, so a
//! bad one is reported (its key path, what was expected) and skipped while the rest
//! apply; keys Berth does not know, and cloud-init keys it does not do, are warnings
//! that name the key and say why.

use std::collections::BTreeMap;
use std::path::PathBuf;

use berth_net::config::{cloud_config, NetworkConfig};
use berth_schema::logs::LogsConfig;
use berth_schema::metrics::MetricsConfig;
use berth_schema::update::UpdateConfig;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

/// What a document asks for.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Settings {
    pub hostname: Option<String>,
    pub fqdn: Option<String>,
    pub manage_etc_hosts: bool,
    pub ssh_authorized_keys: Vec<String>,
    pub write_files: Vec<WriteFile>,
    pub timezone: Option<String>,
    pub ntp_servers: Vec<String>,
    pub ca_certs: Vec<String>,
    pub network: Option<NetworkConfig>,
    /// Container declarations by name, as TOML text in the daemon's format.
    pub containers: BTreeMap<String, String>,
    pub sysctls: BTreeMap<String, String>,
    pub modules: Vec<String>,
    /// The image store's registries.toml (mirrors, credentials, insecure hosts, CAs).
    pub registries: Option<String>,
    /// `berth.update`: how init judges a trial boot of a new version, and the automatic
    /// updates; written as /etc/berth/update.toml.
    pub update: Option<UpdateConfig>,
    /// `berth.metrics`: the Prometheus endpoint; written as /etc/berth/metrics.toml.
    pub metrics: Option<MetricsConfig>,
    /// `berth.logs`: where the logs are forwarded; written as /etc/berth/logs.toml.
    pub logs: Option<LogsConfig>,
}

/// A file to write, its content decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteFile {
    pub path: PathBuf,
    pub content: Vec<u8>,
    pub mode: u32,
    pub owner: Option<String>,
    pub append: bool,
}

/// Something said about a document: where (a key path, or a line and column), and what.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub at: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct Report {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl Report {
    pub fn error(&mut self, at: impl Into<String>, message: impl Into<String>) {
        self.errors.push(Problem {
            at: at.into(),
            message: message.into(),
        });
    }

    pub fn warn(&mut self, at: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Problem {
            at: at.into(),
            message: message.into(),
        });
    }
}

/// Limits on what one document may make the agent hold (a YAML alias bomb is refused by
/// the parser's own budget; these bound the rest).
const MAX_FILES: usize = 256;

/// cloud-init keys that mean running things or managing packages, which Berth does not
/// do: why, and what to do instead.
const NOT_HERE: &[(&str, &str)] = &[
    (
        "bootcmd",
        "Berth runs no shell commands at boot: run the work in a container (berth.containers)",
    ),
    (
        "runcmd",
        "Berth runs no shell commands: run the work in a container (berth.containers)",
    ),
    (
        "packages",
        "Berth has no package manager: ship the software in a container image",
    ),
    (
        "package_update",
        "Berth has no package manager: the OS is updated as a whole image",
    ),
    (
        "package_upgrade",
        "Berth has no package manager: the OS is updated as a whole image",
    ),
    ("package_reboot_if_required", "Berth has no package manager"),
    ("apt", "Berth has no package manager"),
    ("yum_repos", "Berth has no package manager"),
    ("snap", "Berth has no package manager"),
    (
        "users",
        "Berth has no login users: operate it with berthctl and containers",
    ),
    ("groups", "Berth has no login users"),
    ("chpasswd", "Berth has no passwords to set"),
    ("password", "Berth has no passwords to set"),
    (
        "ssh_pwauth",
        "Berth's SSH server takes public keys only, never a password",
    ),
    (
        "disable_root",
        "the SSH login is root's, and runs berthctl commands only (no shell)",
    ),
    ("final_message", "Berth prints its own ready line"),
    ("power_state", "use berthctl reboot/poweroff"),
    ("mounts", "not supported yet: use a container volume"),
];

/// Parses a `#cloud-config` document.
pub fn from_cloud_config(text: &str) -> (Settings, Report) {
    let mut report = Report::default();
    // YAML 1.1 octal, as cloud-init reads `permissions: 0644`.
    let options = serde_saphyr::options! { legacy_octal_numbers: true };
    let value: Value = match serde_saphyr::from_str_with_options(text, options) {
        Ok(v) => v,
        Err(e) => {
            report.error("user-data (YAML)", one_line(&e.to_string()));
            return (Settings::default(), report);
        }
    };
    let settings = from_value(value, &mut report);
    (settings, report)
}

/// Parses native TOML user-data (the same keys as cloud-config).
pub fn from_toml(text: &str) -> (Settings, Report) {
    let mut report = Report::default();
    let value: Value = match toml::from_str::<toml::Table>(text) {
        Ok(t) => serde_json::to_value(t).unwrap_or(Value::Null),
        Err(e) => {
            report.error("user-data (TOML)", one_line(&e.to_string()));
            return (Settings::default(), report);
        }
    };
    let settings = from_value(value, &mut report);
    (settings, report)
}

fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "|")
        .collect::<Vec<_>>()
        .join(" ")
}

/// The settings in a parsed document; each key alone, so one bad key costs only itself.
pub fn from_value(value: Value, report: &mut Report) -> Settings {
    let mut s = Settings::default();
    let map = match value {
        Value::Object(m) => m,
        Value::Null => return s, // an empty document
        other => {
            report.error(
                "user-data",
                format!("expected a mapping of keys, found {}", kind(&other)),
            );
            return s;
        }
    };
    for (key, value) in map {
        let at = key.as_str();
        match at {
            "hostname" => s.hostname = typed(at, value, report),
            "fqdn" => s.fqdn = typed(at, value, report),
            "manage_etc_hosts" => {
                s.manage_etc_hosts = match value {
                    Value::String(t) if t == "localhost" || t == "template" => true,
                    other => typed::<Lenient>(at, other, report).is_some_and(|b| b.0),
                }
            }
            "preserve_hostname" | "prefer_fqdn_over_hostname" => report.warn(
                at,
                "not needed: the hostname is set from user-data at every boot",
            ),
            "ssh_authorized_keys" => {
                let keys: Vec<String> = typed(at, value, report).unwrap_or_default();
                for (i, key) in keys.iter().enumerate() {
                    match crate::ssh::check_key(key) {
                        Ok(k) => s.ssh_authorized_keys.push(k),
                        Err(e) => report.error(format!("{at}[{i}]"), e),
                    }
                }
            }
            "write_files" => s.write_files = write_files(value, report),
            "timezone" => {
                s.timezone = typed(at, value, report);
                if s.timezone
                    .as_deref()
                    .is_some_and(|t| t != "UTC" && t != "Etc/UTC")
                {
                    report.warn(
                        at,
                        "the host keeps UTC (logs are stamped in UTC); set TZ in containers",
                    );
                }
            }
            "ntp" => s.ntp_servers = ntp(value, report),
            "ca_certs" | "ca-certs" => s.ca_certs = ca_certs(at, value, report),
            "network" => match cloud_config::parse(value) {
                Ok((config, warnings)) => {
                    for w in warnings {
                        report.warn("network", w);
                    }
                    s.network = Some(config);
                }
                Err(e) => report.error("network", e.to_string()),
            },
            "berth" => berth(value, &mut s, report),
            _ => match NOT_HERE.iter().find(|(k, _)| *k == at) {
                Some((_, why)) => report.warn(at, format!("ignored: {why}")),
                None => report.warn(at, "not a key Berth knows; ignored"),
            },
        }
    }
    s
}

fn unknown(at: &str, extra: &BTreeMap<String, Value>, report: &mut Report) {
    for key in extra.keys() {
        report.warn(format!("{at}.{key}"), "not a key Berth knows; ignored");
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// `value` as a `T`; on a type error, the key path and what was expected are reported.
fn typed<T: DeserializeOwned>(at: &str, value: Value, report: &mut Report) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.path().to_string();
            let path = if inner == "." || inner.is_empty() {
                at.to_string()
            } else if inner.starts_with('[') {
                format!("{at}{inner}")
            } else {
                format!("{at}.{inner}")
            };
            report.error(path, e.into_inner().to_string());
            None
        }
    }
}

/// A boolean as YAML 1.1 and cloud-init authors write it: true/false, yes/no, on/off.
struct Lenient(bool);

impl<'de> Deserialize<'de> for Lenient {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Lenient, D::Error> {
        match Value::deserialize(d)? {
            Value::Bool(b) => Ok(Lenient(b)),
            Value::String(s) => match s.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "y" => Ok(Lenient(true)),
                "false" | "no" | "off" | "n" => Ok(Lenient(false)),
                _ => Err(serde::de::Error::custom(format!(
                    "{s:?} is not a boolean (true/false, yes/no, on/off)"
                ))),
            },
            other => Err(serde::de::Error::custom(format!(
                "expected a boolean, found {}",
                kind(&other)
            ))),
        }
    }
}

/// A string, or a number or boolean taken as its text (YAML reads `content: 7` as a
/// number).
#[derive(Default)]
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Scalar, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Scalar(s)),
            Value::Number(n) => Ok(Scalar(n.to_string())),
            Value::Bool(b) => Ok(Scalar(b.to_string())),
            Value::Null => Ok(Scalar(String::new())),
            other => Err(serde::de::Error::custom(format!(
                "expected text, found {}",
                kind(&other)
            ))),
        }
    }
}

#[derive(Deserialize)]
struct RawFile {
    /// Keys Berth does not read: each named in a warning.
    #[serde(flatten)]
    extra: BTreeMap<String, Value>,
    path: String,
    #[serde(default)]
    content: Scalar,
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default)]
    permissions: Option<Value>,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    append: Option<Lenient>,
    #[serde(default)]
    defer: Option<Lenient>,
}

fn write_files(value: Value, report: &mut Report) -> Vec<WriteFile> {
    let Some(raw) = typed::<Vec<Value>>("write_files", value, report) else {
        return vec![];
    };
    if raw.len() > MAX_FILES {
        report.error(
            "write_files",
            format!("{} files; at most {MAX_FILES} are written", raw.len()),
        );
    }
    let mut out = Vec::new();
    let mut left = MAX_FILES_TOTAL;
    for (i, v) in raw.into_iter().take(MAX_FILES).enumerate() {
        let at = format!("write_files[{i}]");
        let Some(f) = typed::<RawFile>(&at, v, report) else {
            continue;
        };
        unknown(&at, &f.extra, report);
        if f.defer.as_ref().is_some_and(|d| d.0) {
            report.warn(
                format!("{at}.defer"),
                "files are written before containers start anyway",
            );
        }
        match write_file(&at, f, left) {
            Ok(w) => {
                left -= w.content.len();
                out.push(w);
            }
            Err(p) => report.errors.push(p),
        }
    }
    out
}

/// Where files may go: /etc (a tmpfs rebuilt every boot, so user-data writes it each
/// time) and /var (the persistent data). /usr is the verified read-only image.
const WRITABLE: &[&str] = &["/etc/", "/var/"];
/// Decoded content at most this large (the whole document is bounded before this).
const MAX_FILE: usize = 4 << 20;
/// All of `write_files` decoded, at most this large. The document is at most 1 MiB, but
/// gz+b64 inflates it about a thousandfold: 256 files of 4 MiB would be 1 GiB held in
/// memory and then written to /etc, a tmpfs (RAM). 16 MiB is four files at the per-file
/// cap, far above what configuration needs (a CA bundle is ~200 KiB), and little beside
/// the memory of the smallest machine Berth boots on.
pub const MAX_FILES_TOTAL: usize = 16 << 20;

/// `left`: what remains of [`MAX_FILES_TOTAL`] after the files before this one.
fn write_file(at: &str, f: RawFile, left: usize) -> Result<WriteFile, Problem> {
    let problem = |key: &str, message: String| Problem {
        at: format!("{at}.{key}"),
        message,
    };
    let path = PathBuf::from(&f.path);
    let clean = path.is_absolute()
        && !path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir));
    if !clean {
        return Err(problem(
            "path",
            format!("{:?} is not an absolute path without ..", f.path),
        ));
    }
    if f.path.starts_with("/usr/") || f.path == "/usr" {
        return Err(problem(
            "path",
            format!(
                "{} is on /usr, the read-only verified image; write under /etc or /var",
                f.path
            ),
        ));
    }
    if !WRITABLE.iter().any(|w| f.path.starts_with(w)) {
        return Err(problem(
            "path",
            format!(
                "{} is outside /etc and /var, where files may be written",
                f.path
            ),
        ));
    }
    let content =
        decode(f.encoding.as_deref(), &f.content.0, left.min(MAX_FILE)).map_err(|m| match m {
            Decode::TooLarge(_) if left < MAX_FILE => problem(
                "content",
                format!(
                    "past the {MAX_FILES_TOTAL} bytes all write_files may decode to \
                     ({left} left after the files before it): not written"
                ),
            ),
            Decode::TooLarge(limit) => problem(
                "content",
                format!("decodes to more than {limit} bytes, the most one file may hold"),
            ),
            Decode::Bad(m) => problem("encoding", m),
        })?;
    let mode = match f.permissions {
        None => 0o644,
        Some(p) => mode(&p).map_err(|m| problem("permissions", m))?,
    };
    Ok(WriteFile {
        path,
        content,
        mode,
        owner: f.owner,
        append: f.append.is_some_and(|a| a.0),
    })
}

/// Why a file's content was not decoded.
enum Decode {
    /// More than the limit (given) would come out.
    TooLarge(usize),
    Bad(String),
}

/// cloud-init's encodings: plain text, base64 (`b64`, `base64`), gzip (`gz`, `gzip`),
/// and gzip then base64 (`gz+b64`, `gzip+base64`, ...); at most `limit` bytes come out,
/// and inflating stops there (a gzip bomb costs no more than `limit`).
fn decode(encoding: Option<&str>, content: &str, limit: usize) -> Result<Vec<u8>, Decode> {
    use base64::Engine;
    let b64 = |s: &str| {
        let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|e| Decode::Bad(format!("not base64: {e}")))
    };
    let decoded = match encoding.map(str::to_ascii_lowercase).as_deref() {
        None | Some("text/plain") | Some("text") => content.as_bytes().to_vec(),
        Some("b64") | Some("base64") => b64(content)?,
        Some("gz") | Some("gzip") => {
            return Err(Decode::Bad(
                "gzip content must be base64 too in a text document (gz+b64)".into(),
            ))
        }
        Some("gz+b64") | Some("gzip+base64") | Some("gz+base64") | Some("gzip+b64") => {
            crate::userdata::gunzip(&b64(content)?, limit).map_err(|e| match e {
                crate::userdata::GunzipError::TooLarge(n) => Decode::TooLarge(n),
                other => Decode::Bad(other.to_string()),
            })?
        }
        Some(other) => {
            return Err(Decode::Bad(format!(
                "{other:?} is not an encoding (b64, gz+b64, or none)"
            )))
        }
    };
    if decoded.len() > limit {
        return Err(Decode::TooLarge(limit));
    }
    Ok(decoded)
}

/// A mode as cloud-init takes it: an octal string ("0644", "644", "0o644") or a number
/// (YAML 1.1 reads 0644 as octal already).
fn mode(v: &Value) -> Result<u32, String> {
    let m = match v {
        Value::String(s) => {
            let digits = s.trim_start_matches("0o");
            u32::from_str_radix(digits, 8).map_err(|_| format!("{s:?} is not an octal mode"))?
        }
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("{n} is not a mode"))?,
        other => return Err(format!("expected an octal mode, found {}", kind(other))),
    };
    if m > 0o7777 {
        return Err(format!("{m:o} is not a mode (at most 7777)"));
    }
    Ok(m)
}

#[derive(Deserialize)]
struct RawNtp {
    /// Keys Berth does not read: each named in a warning.
    #[serde(flatten)]
    extra: BTreeMap<String, Value>,
    #[serde(default)]
    enabled: Option<Lenient>,
    #[serde(default)]
    servers: Vec<String>,
    #[serde(default)]
    pools: Vec<String>,
    #[serde(default)]
    ntp_client: Option<String>,
}

fn ntp(value: Value, report: &mut Report) -> Vec<String> {
    let Some(n) = typed::<RawNtp>("ntp", value, report) else {
        return vec![];
    };
    unknown("ntp", &n.extra, report);
    if n.enabled.is_some_and(|e| !e.0) {
        report.warn(
            "ntp.enabled",
            "time sync cannot be turned off (TLS needs the clock); the defaults stay",
        );
        return vec![];
    }
    if let Some(c) = n.ntp_client {
        report.warn(
            "ntp.ntp_client",
            format!("{c:?} ignored: berth-net's SNTP client keeps the time"),
        );
    }
    n.servers.into_iter().chain(n.pools).collect()
}

#[derive(Deserialize)]
struct RawCaCerts {
    /// Keys Berth does not read: each named in a warning.
    #[serde(flatten)]
    extra: BTreeMap<String, Value>,
    #[serde(default)]
    trusted: Vec<String>,
    #[serde(default)]
    remove_defaults: Option<Lenient>,
    #[serde(default, rename = "remove-defaults")]
    remove_defaults_dash: Option<Lenient>,
}

fn ca_certs(at: &str, value: Value, report: &mut Report) -> Vec<String> {
    let Some(c) = typed::<RawCaCerts>(at, value, report) else {
        return vec![];
    };
    unknown(at, &c.extra, report);
    if c.remove_defaults
        .or(c.remove_defaults_dash)
        .is_some_and(|r| r.0)
    {
        report.warn(
            format!("{at}.remove_defaults"),
            "the image's CA bundle is kept; the certificates are added to it",
        );
    }
    let mut out = Vec::new();
    for (i, pem) in c.trusted.into_iter().enumerate() {
        if pem.contains("-----BEGIN CERTIFICATE-----") && pem.contains("-----END CERTIFICATE-----")
        {
            out.push(pem);
        } else {
            report.error(
                format!("{at}.trusted[{i}]"),
                "not a PEM certificate (-----BEGIN CERTIFICATE-----)",
            );
        }
    }
    out
}

#[derive(Deserialize)]
struct RawBerth {
    /// Keys Berth does not read: each named in a warning.
    #[serde(flatten)]
    extra: BTreeMap<String, Value>,
    #[serde(default)]
    containers: BTreeMap<String, Value>,
    #[serde(default)]
    sysctls: BTreeMap<String, Value>,
    #[serde(default)]
    modules: Vec<String>,
    #[serde(default)]
    registries: Option<Value>,
    #[serde(default)]
    update: Option<Value>,
    #[serde(default)]
    metrics: Option<Value>,
    #[serde(default)]
    logs: Option<Value>,
}

fn berth(value: Value, s: &mut Settings, report: &mut Report) {
    let Some(b) = typed::<RawBerth>("berth", value, report) else {
        return;
    };
    unknown("berth", &b.extra, report);
    for (name, decl) in b.containers {
        let at = format!("berth.containers.{name}");
        let text = match toml::to_string(&decl) {
            Ok(t) => t,
            Err(e) => {
                report.error(at, format!("not a container declaration: {e}"));
                continue;
            }
        };
        // The daemon's own parser, so what the agent accepts the daemon runs.
        let path = PathBuf::from(format!("user-data {at}"));
        match berth_schema::declaration::Declaration::parse(&name, &text, &path) {
            Ok(_) => {
                s.containers.insert(name, text);
            }
            Err(e) => report.error(at, e.to_string()),
        }
    }
    for (key, v) in b.sysctls {
        let at = format!("berth.sysctls.{key}");
        let value = match v {
            Value::String(t) => t,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => u8::from(b).to_string(),
            other => {
                report.error(
                    at,
                    format!("expected a string or number, found {}", kind(&other)),
                );
                continue;
            }
        };
        let ok_key = !key.is_empty()
            && key.split(['.', '/']).all(|p| {
                !p.is_empty()
                    && p != ".."
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-*".contains(&b))
            });
        if ok_key {
            s.sysctls.insert(key, value);
        } else {
            report.error(at, "not a sysctl name (like net.ipv4.ip_forward)");
        }
    }
    for (i, m) in b.modules.into_iter().enumerate() {
        if !m.is_empty()
            && m.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
        {
            s.modules.push(m);
        } else {
            report.error(
                format!("berth.modules[{i}]"),
                format!("{m:?} is not a module name"),
            );
        }
    }
    if let Some(v) = b.update {
        s.update = typed::<UpdateConfig>("berth.update", v, report).filter(|u| match u.check() {
            Ok(()) => true,
            Err(e) => {
                report.error(format!("berth.update.{}", e.key), e.why);
                false
            }
        });
    }
    if let Some(v) = b.metrics {
        s.metrics =
            typed::<MetricsConfig>("berth.metrics", v, report).filter(|m| match m.check() {
                Ok(()) => true,
                Err(e) => {
                    report.error(format!("berth.metrics.{}", e.key), e.why);
                    false
                }
            });
    }
    if let Some(v) = b.logs {
        s.logs = typed::<LogsConfig>("berth.logs", v, report).filter(|l| match l.check() {
            Ok(()) => true,
            Err(e) => {
                report.error(format!("berth.logs.forward[{}].{}", e.index, e.key), e.why);
                false
            }
        });
    }
    if let Some(v) = b.registries {
        let checked = toml::to_string(&v)
            .map_err(|e| e.to_string())
            .and_then(|text| berth_schema::registries::Config::parse(&text).map(|_| text));
        match checked {
            Ok(text) => s.registries = Some(text),
            Err(e) => report.error("berth.registries", one_line(&e)),
        }
    }
}

#[cfg(test)]
mod tests;
