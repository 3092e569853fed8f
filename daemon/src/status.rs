//! What the daemon must remember across its own restarts, kept where it outlives the
//! daemon but not the boot (`/run/berth/containers/status.json`, which also serves
//! operators and tests), plus what must outlive a reboot (`unless-stopped` containers
//! an operator stopped, in `/var/lib/berth/daemon/stopped.json`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// waiting, running, exited, failed, stopped.
    pub state: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pid: i32,
    #[serde(default)]
    pub restarts: u32,
    #[serde(default = "minus_one")]
    pub exit_code: i32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub started_at: String,
    /// An operator stopped it: it stays down until started.
    #[serde(default)]
    pub stopped: bool,
    /// Its address on the bridge (kept with its namespace across daemon restarts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<std::net::Ipv4Addr>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

fn minus_one() -> i32 {
    -1
}

/// Writes `data` as JSON, durably (berth-persist: a power cut leaves the old or the new).
pub fn write_json(path: &Path, data: &impl Serialize) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let text = serde_json::to_vec_pretty(data).map_err(|e| e.to_string())?;
    berth_persist::write_file(path, &text, 0o600).map_err(|e| e.to_string())
}

/// The records of the daemon's last run in this boot (none on a first start).
pub fn read_records(path: &Path) -> BTreeMap<String, Record> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

pub fn read_stopped(path: &Path) -> BTreeSet<String> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_default() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("status.json");
        assert!(read_records(&path).is_empty());
        let mut m = BTreeMap::new();
        m.insert(
            "web".to_string(),
            Record {
                state: "running".into(),
                pid: 42,
                restarts: 2,
                exit_code: -1,
                ..Record::default()
            },
        );
        write_json(&path, &m).unwrap();
        assert_eq!(read_records(&path), m);
        std::fs::write(&path, r#"{"db": {"state": "exited"}}"#).unwrap();
        assert_eq!(read_records(&path)["db"].exit_code, -1);
    }
}
