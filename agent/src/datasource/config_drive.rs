//! OpenStack's config drive: an ISO 9660 or FAT volume labelled `config-2` holding
//! `openstack/latest/{meta_data.json,network_data.json,user_data}` (Nova's config drive
//! layout): the instance `uuid` and `hostname` from meta_data.json, the network from
//! network_data.json.

use std::path::Path;

use berth_net::config::openstack;
use serde_json::Value;

use super::{DatasourceError, Fetched};

pub const LABEL: &str = "config-2";
const LATEST: &str = "openstack/latest";

/// The first `config-2` volume's files, read through a read-only mount at `mount_at`
/// (unmounted again before returning); None when the machine has no config drive.
pub fn read(mount_at: &Path) -> Result<Option<Fetched>, DatasourceError> {
    super::read_volume(LABEL, "config drive", mount_at, read_tree)
}

/// The files of a config drive's tree at `root`.
pub fn read_tree(root: &Path) -> Result<Fetched, DatasourceError> {
    let latest = root.join(LATEST);
    let mut fetched = Fetched {
        user_data: super::read_optional(&latest.join("user_data"))?,
        ..Fetched::default()
    };
    if let Some(meta) = super::read_optional(&latest.join("meta_data.json"))? {
        match serde_json::from_slice::<Value>(&meta) {
            Ok(v) => {
                let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
                fetched.instance_id = field("uuid");
                fetched.hostname = field("hostname").or(field("name"));
                // `public_keys`: key name -> key (Nova's key pair).
                if let Some(keys) = v.get("public_keys").and_then(Value::as_object) {
                    for (name, key) in keys.iter().take(crate::ssh::MAX_KEYS) {
                        match key.as_str().map(crate::ssh::check_key) {
                            Some(Ok(k)) => fetched.public_keys.push(k),
                            Some(Err(e)) => fetched.problems.push(format!(
                                "meta_data.json public_keys.{name:?}: {e}; not taken"
                            )),
                            None => fetched
                                .problems
                                .push(format!("meta_data.json public_keys.{name:?}: not a string")),
                        }
                    }
                }
            }
            Err(e) => fetched.problems.push(format!("meta_data.json: {e}")),
        }
    }
    if let Some(net) = super::read_optional(&latest.join("network_data.json"))? {
        match openstack::parse(&String::from_utf8_lossy(&net)) {
            Ok((config, warnings)) => {
                fetched.problems.extend(
                    warnings
                        .into_iter()
                        .map(|w| format!("network_data.json: {w}")),
                );
                fetched.network = Some(config);
            }
            Err(e) => fetched.problems.push(format!(
                "network_data.json: {e}; the links keep DHCP (Berth's default)"
            )),
        }
    }
    Ok(fetched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_latest_files_and_tolerates_missing_ones() {
        let t = tempfile::tempdir().unwrap();
        let latest = t.path().join(LATEST);
        std::fs::create_dir_all(&latest).unwrap();
        std::fs::write(latest.join("network_data.json"), "{\"links\": []}").unwrap();
        std::fs::write(latest.join("user_data"), b"#cloud-config\n").unwrap();
        std::fs::write(
            latest.join("meta_data.json"),
            r#"{"uuid": "83679162-1378-4288-a2d4-70e13ec132aa", "hostname": "os-1.novalocal"}"#,
        )
        .unwrap();
        let drive = read_tree(t.path()).unwrap();
        assert!(drive.network.is_some());
        assert_eq!(drive.user_data.as_deref(), Some(&b"#cloud-config\n"[..]));
        assert_eq!(drive.hostname.as_deref(), Some("os-1.novalocal"));
        assert_eq!(
            drive.instance_id.as_deref(),
            Some("83679162-1378-4288-a2d4-70e13ec132aa")
        );
        std::fs::write(latest.join("meta_data.json"), "{").unwrap();
        std::fs::remove_file(latest.join("network_data.json")).unwrap();
        let drive = read_tree(t.path()).unwrap();
        assert!(drive.network.is_none());
        assert!(
            drive.problems[0].starts_with("meta_data.json"),
            "{:?}",
            drive.problems
        );
    }
}
