//! EC2's instance metadata service: IMDSv2 (a session token from `PUT
//! /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds`, sent back as
//! `X-aws-ec2-metadata-token` on every request), falling back to IMDSv1 (no token) when
//! the token call is refused. User-data at `/latest/user-data` (404: none).

use crate::http::{Answer, Http};

use super::Fetched;

const TOKEN_TTL: &str = "21600";

pub fn fetch(http: &Http, base: &str) -> Result<Fetched, String> {
    let token = token(http, base)?;
    let get = |path: &str| -> Result<Option<Vec<u8>>, String> {
        let url = format!("{base}{path}");
        let headers: Vec<(&str, &str)> = token
            .as_deref()
            .map(|t| vec![("X-aws-ec2-metadata-token", t)])
            .unwrap_or_default();
        found(http.request("GET", &url, &headers)?, &url)
    };
    let instance_id = get("/latest/meta-data/instance-id")?
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .ok_or("no /latest/meta-data/instance-id")?;
    let hostname = get("/latest/meta-data/local-hostname")?
        .map(|b| String::from_utf8_lossy(&b).trim().to_string());
    let (public_keys, problems) = public_keys(&get)?;
    Ok(Fetched {
        source: format!(
            "EC2 instance metadata ({})",
            if token.is_some() { "IMDSv2" } else { "IMDSv1" }
        ),
        instance_id: Some(instance_id),
        hostname,
        user_data: get("/latest/user-data")?,
        public_keys,
        problems,
        ..Fetched::default()
    })
}

/// A metadata path's body (None: 404).
type Getter<'a> = dyn Fn(&str) -> Result<Option<Vec<u8>>, String> + 'a;

/// The key pair's public keys: `public-keys/` lists `INDEX=NAME` lines, each key is at
/// `public-keys/INDEX/openssh-key` (404 for the whole list: none).
fn public_keys(get: &Getter) -> Result<(Vec<String>, Vec<String>), String> {
    let Some(list) = get("/latest/meta-data/public-keys/")? else {
        return Ok((Vec::new(), Vec::new()));
    };
    let (mut keys, mut problems) = (Vec::new(), Vec::new());
    let list = String::from_utf8_lossy(&list);
    for entry in list.lines().take(crate::ssh::MAX_KEYS) {
        let index = entry.split('=').next().unwrap_or_default().trim();
        if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
            problems.push(format!(
                "meta-data/public-keys: {entry:?} is not INDEX=NAME"
            ));
            continue;
        }
        let path = format!("/latest/meta-data/public-keys/{index}/openssh-key");
        if let Some(body) = get(&path)? {
            let (good, bad) =
                crate::ssh::keys_in_lines(&String::from_utf8_lossy(&body), &path[8..]);
            keys.extend(good);
            problems.extend(bad);
        }
    }
    Ok((keys, problems))
}

/// The IMDSv2 token; None when the service does not do IMDSv2 (it answers the PUT with
/// 403, 404 or 405), so IMDSv1 is used.
fn token(http: &Http, base: &str) -> Result<Option<String>, String> {
    let url = format!("{base}/latest/api/token");
    let a = http.request(
        "PUT",
        &url,
        &[("X-aws-ec2-metadata-token-ttl-seconds", TOKEN_TTL)],
    )?;
    match a.status {
        200 => Ok(Some(String::from_utf8_lossy(&a.body).trim().to_string())),
        403..=405 => Ok(None),
        s => Err(format!("PUT {url}: status {s}")),
    }
}

/// The body of a 200; None for a 404; an error otherwise (retried).
pub fn found(a: Answer, url: &str) -> Result<Option<Vec<u8>>, String> {
    match a.status {
        200 => Ok(Some(a.body)),
        404 => Ok(None),
        s => Err(format!("GET {url}: status {s}")),
    }
}
