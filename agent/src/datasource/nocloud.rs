//! cloud-init's NoCloud: a FAT or ISO 9660 volume labelled `cidata` with `user-data`,
//! `meta-data` (YAML: `instance-id`, `local-hostname`) and optionally `network-config`
//! (network config v1 or v2).

use std::path::Path;

use berth_net::config::cloud_config;
use serde_json::Value;

use super::{DatasourceError, Fetched};

pub const LABEL: &str = "cidata";

pub fn read(mount_at: &Path) -> Result<Option<Fetched>, DatasourceError> {
    super::read_volume(LABEL, "NoCloud", mount_at, read_tree)
}

pub fn read_tree(root: &Path) -> Result<Fetched, DatasourceError> {
    let mut fetched = Fetched {
        user_data: super::read_optional(&root.join("user-data"))?,
        ..Fetched::default()
    };
    if let Some(meta) = super::read_optional(&root.join("meta-data"))? {
        let text = String::from_utf8_lossy(&meta);
        match serde_saphyr::from_str::<Value>(&text) {
            Ok(v) => {
                let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
                fetched.instance_id = field("instance-id");
                fetched.hostname = field("local-hostname").or(field("hostname"));
                // `public-keys`: one key, a list of them, or a map of name -> key (as
                // cloud-init takes it).
                let keys: Vec<&Value> = match v.get("public-keys") {
                    Some(Value::Array(a)) => a.iter().collect(),
                    Some(Value::Object(m)) => m.values().collect(),
                    Some(one) => vec![one],
                    None => Vec::new(),
                };
                for key in keys.into_iter().take(crate::ssh::MAX_KEYS) {
                    match key.as_str() {
                        Some(text) => {
                            let (good, bad) =
                                crate::ssh::keys_in_lines(text, "meta-data public-keys");
                            fetched.public_keys.extend(good);
                            fetched.problems.extend(bad);
                        }
                        None => fetched
                            .problems
                            .push("meta-data public-keys: a key that is not a string".into()),
                    }
                }
            }
            Err(e) => fetched
                .problems
                .push(format!("meta-data: {}", e.to_string().replace('\n', " "))),
        }
    }
    if let Some(net) = super::read_optional(&root.join("network-config"))? {
        let text = String::from_utf8_lossy(&net);
        match serde_saphyr::from_str::<Value>(&text) {
            // The file holds either the `network:` mapping or its contents.
            Ok(v) => {
                let v = v.get("network").cloned().unwrap_or(v);
                match cloud_config::parse(v) {
                    Ok((config, warnings)) => {
                        fetched
                            .problems
                            .extend(warnings.into_iter().map(|w| format!("network-config: {w}")));
                        fetched.network = Some(config);
                    }
                    Err(e) => fetched.problems.push(format!("network-config: {e}")),
                }
            }
            Err(e) => fetched.problems.push(format!(
                "network-config: {}",
                e.to_string().replace('\n', " ")
            )),
        }
    }
    Ok(fetched)
}
