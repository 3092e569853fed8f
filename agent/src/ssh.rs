//! SSH access. The operator's public keys come from user-data's `ssh_authorized_keys`
//! and from the cloud's metadata (EC2's `public-keys`, GCE's `ssh-keys`, OpenStack's and
//! NoCloud's `public_keys`): each one is checked here, and all of them are written at
//! every boot to one file on /run, so a key gone from the metadata stops working at the
//! next boot.
//!
//! `berth-agent sshd` (the `berth-sshd` service) then runs Debian's OpenSSH server
//! (run, not linked) when there is at least one key: host keys made once and kept under
//! /var, their fingerprints on the console, a configuration that takes public keys only
//! and forwards nothing but local TCP to the containers' bridge pool, and a login whose
//! shell is `berth-login` (berthctl's words, never a shell).

pub mod server;

use base64::Engine;
use sha2::Digest;

/// The keys sshd takes, rewritten at every boot (a tmpfs).
pub const AUTHORIZED_KEYS: &str = "/run/berth/ssh/authorized_keys";
/// A key line longer than this is refused (an 16384-bit RSA key is about 2.8 KB).
pub const MAX_KEY_LINE: usize = 8 * 1024;
/// At most this many keys are taken from all sources together.
pub const MAX_KEYS: usize = 64;

/// The public key algorithms OpenSSH's server accepts for users (ssh-dss is off in
/// OpenSSH since 7.0 and not taken).
const KEY_TYPES: [&str; 7] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// One public key line, checked: `TYPE BASE64 [COMMENT]` on one line, TYPE a key type
/// OpenSSH takes, BASE64 an SSH key blob of that type. authorized_keys options before
/// the key (`command=`, `permitopen=`, ...) are refused: keys from user-data and
/// metadata say who may log in, never what the login may do. Returns the line as sshd
/// will read it (words joined by one space).
pub fn check_key(text: &str) -> Result<String, String> {
    let line = text.trim();
    if line.is_empty() {
        return Err("an empty key".into());
    }
    if line.len() > MAX_KEY_LINE {
        return Err(format!(
            "a key of {} bytes (at most {MAX_KEY_LINE})",
            line.len()
        ));
    }
    if line.contains(['\n', '\r']) {
        return Err("a key must be one line".into());
    }
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err("a key with control characters".into());
    }
    let mut words = line.split_whitespace();
    let kind = words.next().unwrap_or_default();
    if !KEY_TYPES.contains(&kind) {
        return Err(format!(
            "{:?} is not an OpenSSH public key type (expected TYPE BASE64 [COMMENT], \
             e.g. ssh-ed25519 AAAA...; authorized_keys options are not taken)",
            kind.chars().take(40).collect::<String>()
        ));
    }
    let Some(encoded) = words.next() else {
        return Err(format!("{kind} without its key"));
    };
    let blob = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| format!("{kind} key: not base64 ({e})"))?;
    if blob_type(&blob) != Some(kind.as_bytes()) {
        return Err(format!("{kind} key: its data is not a {kind} key"));
    }
    let comment: Vec<&str> = words.collect();
    Ok(if comment.is_empty() {
        format!("{kind} {encoded}")
    } else {
        format!("{kind} {encoded} {}", comment.join(" "))
    })
}

/// The algorithm name an SSH key blob starts with (RFC 4253 6.6: a string, its length
/// a big-endian u32).
fn blob_type(blob: &[u8]) -> Option<&[u8]> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    blob.get(4..4usize.checked_add(len)?)
}

/// OpenSSH's fingerprint of a key blob: `SHA256:` and the unpadded base64 of its
/// SHA-256 (as `ssh-keygen -l` prints it).
pub fn fingerprint(blob: &[u8]) -> String {
    let digest = sha2::Sha256::digest(blob);
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

/// The base64 key of an authorized_keys line: the word after its key type (options
/// the agent itself put before it, `expiry-time=`, skipped).
fn blob_of(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    words.by_ref().find(|w| KEY_TYPES.contains(w))?;
    words.next()
}

/// The fingerprint of a checked key line.
pub fn line_fingerprint(line: &str) -> Option<String> {
    let encoded = blob_of(line)?;
    let blob = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    Some(fingerprint(&blob))
}

/// The authorized_keys file for `keys` (user-data's first, then the metadata's), each
/// key once, at most [`MAX_KEYS`]; and what was left out, for the report.
pub fn authorized_keys(user_data: &[String], metadata: &[String]) -> (String, Vec<String>) {
    let mut seen = std::collections::BTreeSet::new();
    let mut text = String::new();
    let mut dropped = Vec::new();
    for key in user_data.iter().chain(metadata) {
        let Some(blob) = blob_of(key) else {
            continue;
        };
        if !seen.insert(blob.to_string()) {
            continue;
        }
        if seen.len() > MAX_KEYS {
            dropped.push(format!(
                "more than {MAX_KEYS} SSH keys: {} left out",
                line_fingerprint(key).unwrap_or_default()
            ));
            continue;
        }
        text.push_str(key);
        text.push('\n');
    }
    (text, dropped)
}

/// The keys in a metadata document's text (one per line; blank lines and `#` comments
/// skipped), checked: the good ones, and why each other one was refused.
pub fn keys_in_lines(text: &str, source: &str) -> (Vec<String>, Vec<String>) {
    let mut good = Vec::new();
    let mut problems = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match check_key(line) {
            Ok(k) => good.push(k),
            Err(e) => problems.push(format!("{source}: {e}; that key is not taken")),
        }
    }
    (good, problems)
}

#[cfg(test)]
mod tests;
