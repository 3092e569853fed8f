//! The formats Berth's parts hand each other as files, in one small crate so that the
//! agent (which writes them from user-data) checks them with the very parsers the
//! daemon and the image store read them with, without linking either:
//!
//! - `bridge`: the container bridge's `/etc/berth/network.toml`;
//! - `declaration`: a container declaration, `/etc/berth/containers.d/NAME.toml`;
//! - `caps`: capability names as declarations use them, and Docker's default set;
//! - `registries`: the image store's `/etc/berth/registries.toml`;
//! - `logs`: `/etc/berth/logs.toml`, where the logs are forwarded;
//! - `metrics`: `/etc/berth/metrics.toml`, the Prometheus endpoint;
//! - `time`: UTC instants as RFC 3339 text, both ways;
//! - `update`: `/etc/berth/update.toml`, the trial's health and automatic updates.

pub mod bridge;
pub mod caps;
pub mod declaration;
pub mod logs;
pub mod metrics;
pub mod registries;
pub mod time;
pub mod update;

/// A key of a user-data `berth.SECTION` that says something wrong: which, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("berth.{section}.{key}: {why}")]
pub struct Invalid {
    pub section: &'static str,
    pub key: &'static str,
    pub why: String,
}

/// A settings file the agent wrote (a few KiB; past `max` bytes it is not ours):
/// its text, or None when it is absent (the feature is off).
pub fn read_settings(path: &std::path::Path, max: u64) -> Result<Option<String>, String> {
    use std::io::Read;
    let mut text = String::new();
    match std::fs::File::open(path).and_then(|f| f.take(max).read_to_string(&mut text)) {
        Ok(_) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}
