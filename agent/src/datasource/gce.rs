//! GCE's metadata server: `/computeMetadata/v1/` with `Metadata-Flavor: Google` on every
//! request (it answers 403 without it); user-data in the instance attribute `user-data`
//! (404: none).

use crate::http::Http;

use super::ec2::found;
use super::Fetched;

pub fn fetch(http: &Http, base: &str) -> Result<Fetched, String> {
    let get = |path: &str| -> Result<Option<Vec<u8>>, String> {
        let url = format!("{base}/computeMetadata/v1/{path}");
        found(
            http.request("GET", &url, &[("Metadata-Flavor", "Google")])?,
            &url,
        )
    };
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).trim().to_string();
    let instance_id = get("instance/id")?.map(text).ok_or("no instance/id")?;
    let (mut public_keys, mut problems) = (Vec::new(), Vec::new());
    let blocked = get("instance/attributes/block-project-ssh-keys")?
        .map(text)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let mut sources = vec!["instance/attributes/ssh-keys"];
    if !blocked {
        sources.push("project/attributes/ssh-keys");
    }
    for path in sources {
        if let Some(body) = get(path)? {
            let (good, bad) = ssh_keys(&String::from_utf8_lossy(&body), path, now());
            public_keys.extend(good);
            problems.extend(bad);
        }
    }
    Ok(Fetched {
        source: "GCE metadata server".into(),
        instance_id: Some(instance_id),
        hostname: get("instance/hostname")?.map(text),
        user_data: get("instance/attributes/user-data")?,
        public_keys,
        problems,
        ..Fetched::default()
    })
}

/// GCE's `ssh-keys` lines, `USERNAME:KEY`: every user's key logs in as root (Berth has
/// one login, berthctl's). A key of the form gcloud and the guest environment write for
/// temporary access (`... google-ssh {"userName":...,"expireOn":"2026-12-01T10:00:00+0000"}`)
/// is left out once `now` (seconds since the epoch) is past its expiry, and otherwise
/// taken with OpenSSH's `expiry-time` option, so sshd refuses it from then on (the host
/// keeps UTC); one whose expiry does not read is not taken.
pub fn ssh_keys(text: &str, source: &str, now: u64) -> (Vec<String>, Vec<String>) {
    let (mut good, mut problems) = (Vec::new(), Vec::new());
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let Some((user, key)) = line.split_once(':') else {
            problems.push(format!("{source}: a line without USERNAME: is not taken"));
            continue;
        };
        let expiry = if key.contains("google-ssh") {
            match expire_on(key) {
                Some((at, _)) if at <= now => continue,
                Some((_, stamp)) => Some(stamp),
                None => {
                    problems.push(format!(
                        "{source}: {user:?}'s temporary key: its expireOn does not read \
                         (YYYY-MM-DDTHH:MM:SS+0000); not taken"
                    ));
                    continue;
                }
            }
        } else {
            None
        };
        match crate::ssh::check_key(key) {
            Ok(k) => good.push(match expiry {
                Some(stamp) => format!("expiry-time=\"{stamp}\" {k}"),
                None => k,
            }),
            Err(e) => problems.push(format!("{source}: {user:?}'s key: {e}; not taken")),
        }
    }
    (good, problems)
}

/// The `expireOn` of a `google-ssh {...}` comment: seconds since the epoch, and the
/// same moment as `expiry-time` takes it (YYYYMMDDHHMMSS). UTC only (`+0000` or `Z`, as
/// gcloud writes it).
fn expire_on(key: &str) -> Option<(u64, String)> {
    let json = key.split_once("google-ssh")?.1.trim();
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let t = v.get("expireOn")?.as_str()?;
    if !matches!(t.get(19..), Some("+0000" | "Z" | "+00:00")) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<u64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let at = berth_schema::time::days_from_civil(y, mo, d)? * 86400 + h * 3600 + mi * 60 + s;
    Some((at, format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}")))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_schema::time::days_from_civil;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFEUKdzI6b2WCWo+iCT/FMefnoKrOglxS4fywEozLIdc";

    #[test]
    fn usernames_are_stripped_and_expired_keys_left_out() {
        let text = format!(
            "alice:{KEY} alice@laptop\n\
             bob:{KEY} google-ssh {{\"userName\":\"bob@example.com\",\"expireOn\":\"2026-12-01T10:00:00+0000\"}}\n\
             nouser\n"
        );
        let before = days_from_civil(2026, 12, 1).unwrap() * 86400 + 9 * 3600;
        let (good, bad) = ssh_keys(&text, "ssh-keys", before);
        assert_eq!(good.len(), 2, "{good:?}");
        assert_eq!(good[0], format!("{KEY} alice@laptop"));
        assert!(
            good[1].starts_with(&format!("expiry-time=\"20261201100000\" {KEY} google-ssh")),
            "{good:?}"
        );
        assert_eq!(bad.len(), 1, "{bad:?}");
        let unreadable = format!("carol:{KEY} google-ssh {{\"expireOn\":\"soon\"}}");
        let (good, bad) = ssh_keys(&unreadable, "ssh-keys", before);
        assert!(
            good.is_empty() && bad[0].contains("does not read"),
            "{bad:?}"
        );
        let (good, _) = ssh_keys(&text, "ssh-keys", before + 7200);
        assert_eq!(good.len(), 1, "bob's key expired at 10:00: {good:?}");
    }

    #[test]
    fn civil_days_match_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), Some(0));
        assert_eq!(days_from_civil(2000, 3, 1), Some(11_017));
        assert_eq!(days_from_civil(2026, 11, 30), Some(20_787));
        assert_eq!(days_from_civil(2026, 13, 1), None);
    }
}
