//! OpenStack's metadata service: the config drive's files over HTTP at
//! `/openstack/latest/` (`meta_data.json` with `uuid` and `hostname`, `user_data`,
//! `network_data.json`).

use std::path::Path;

use crate::http::Http;

use super::ec2::found;
use super::Fetched;

pub fn fetch(http: &Http, base: &str) -> Result<Fetched, String> {
    let staging = tempdir()?;
    let latest = staging.join("openstack/latest");
    std::fs::create_dir_all(&latest).map_err(|e| e.to_string())?;
    for name in ["meta_data.json", "user_data", "network_data.json"] {
        let url = format!("{base}/openstack/latest/{name}");
        if let Some(body) = found(http.request("GET", &url, &[])?, &url)? {
            std::fs::write(latest.join(name), body).map_err(|e| e.to_string())?;
        }
    }
    if !latest.join("meta_data.json").exists() {
        return Err("no /openstack/latest/meta_data.json".into());
    }
    // The same reading as a config drive's files.
    let fetched = super::config_drive::read_tree(&staging).map_err(|e| e.to_string());
    let _ = std::fs::remove_dir_all(&staging);
    let mut fetched = fetched?;
    fetched.source = "OpenStack metadata service".into();
    Ok(fetched)
}

fn tempdir() -> Result<std::path::PathBuf, String> {
    let dir = Path::new("/run/berth/agent/openstack-mds");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir.to_path_buf())
}
