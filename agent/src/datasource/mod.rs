//! Where a machine's configuration comes from: the local datasources read at boot before
//! the network is up (an OpenStack config drive, a NoCloud volume, QEMU's fw_cfg), the
//! first one present being the machine's; else the metadata service of the cloud DMI
//! names (EC2, GCE, OpenStack), asked once the network is up, within a bounded time.

pub mod config_drive;
pub mod ec2;
pub mod fw_cfg;
pub mod gce;
pub mod nocloud;
pub mod openstack;
pub mod url;

use std::path::{Path, PathBuf};

use berth_net::config::NetworkConfig;
use berth_net::platform::Platform;

use crate::http::Http;

use crate::userdata::MAX_DOCUMENT;
use crate::volumes::VolumeError;

/// What a datasource gave.
#[derive(Debug, Default)]
pub struct Fetched {
    /// Which datasource, for the report (`NoCloud (/dev/vdb)`).
    pub source: String,
    pub instance_id: Option<String>,
    /// The metadata's hostname (used when the user-data names none).
    pub hostname: Option<String>,
    pub user_data: Option<Vec<u8>>,
    pub network: Option<NetworkConfig>,
    /// The metadata's SSH public keys, checked (`crate::ssh::check_key`).
    pub public_keys: Vec<String>,
    /// What was wrong with the metadata (the user-data is checked later).
    pub problems: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DatasourceError {
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_DOCUMENT} bytes")]
    TooLarge { path: PathBuf },
}

/// Where datasource volumes are mounted while they are read.
const MOUNT_DIR: &str = "/run/berth/agent/mnt";
const FW_CFG_BY_NAME: &str = "/sys/firmware/qemu_fw_cfg/by_name";

/// One datasource's read: what it gave, nothing (not this machine's), or why it failed.
type Reader<'a> = dyn Fn() -> Result<Option<Fetched>, DatasourceError> + 'a;

/// The first local datasource present, in the order cloud-init's ds-identify would
/// prefer them; each one's failure is said and the next tried.
pub fn find_local(say: &dyn Fn(&str)) -> Option<Fetched> {
    let mount = Path::new(MOUNT_DIR);
    let tries: [(&str, &Reader); 3] = [
        ("config drive", &|| config_drive::read(mount)),
        ("NoCloud", &|| nocloud::read(mount)),
        ("fw_cfg", &|| fw_cfg::read(Path::new(FW_CFG_BY_NAME))),
    ];
    for (name, read) in tries {
        match read() {
            Ok(Some(f)) => return Some(f),
            Ok(None) => {}
            Err(e) => say(&format!("{name}: {e}")),
        }
    }
    None
}

/// The first volume labelled `label`, mounted read-only at `mount_at` while `read_tree`
/// reads it (unmounted again before returning), its source named `kind (device)`; None
/// when the machine has no such volume.
pub fn read_volume(
    label: &str,
    kind: &str,
    mount_at: &Path,
    read_tree: fn(&Path) -> Result<Fetched, DatasourceError>,
) -> Result<Option<Fetched>, DatasourceError> {
    let found = crate::volumes::with_label(Path::new("/sys/class/block"), Path::new("/dev"), label);
    let Some(volume) = found.first() else {
        return Ok(None);
    };
    let mounted = volume.mount_read_only(mount_at)?;
    let mut fetched = read_tree(&mounted.path)?;
    fetched.source = format!("{kind} ({})", volume.device.display());
    Ok(Some(fetched))
}

/// How long the metadata service may take to answer, the network's start included,
/// unless the command line says otherwise ([`budget_from_cmdline`]).
pub const NETWORK_BUDGET: std::time::Duration = std::time::Duration::from_secs(60);
/// `berth.datasource.timeout=SECONDS`: a shorter wait where a machine may have no
/// metadata service at all, a longer one on a slow network.
pub const TIMEOUT_PARAM: &str = "berth.datasource.timeout=";
/// An hour: past that a boot is better off going on without its user-data.
const MAX_BUDGET_SECONDS: u64 = 3600;

/// The network budget the command line asks for, or the default with a word on why
/// the value was not taken (the last occurrence wins, as in the kernel).
pub fn budget_from_cmdline(cmdline: &str) -> (std::time::Duration, Option<String>) {
    let Some(v) = cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix(TIMEOUT_PARAM))
        .next_back()
    else {
        return (NETWORK_BUDGET, None);
    };
    match v.parse::<u64>() {
        Ok(n) if (1..=MAX_BUDGET_SECONDS).contains(&n) => (std::time::Duration::from_secs(n), None),
        _ => (
            NETWORK_BUDGET,
            Some(format!(
                "{TIMEOUT_PARAM}{v:?} is not 1 to {MAX_BUDGET_SECONDS} seconds; waiting {} s",
                NETWORK_BUDGET.as_secs()
            )),
        ),
    }
}

/// The URL on the kernel command line (`berth.config_url=`), else the cloud's metadata
/// service, asked with retries within `budget`; None (said) when it never answers or
/// there is nothing to ask.
pub fn find_network(
    platform: Platform,
    config_url: Option<&str>,
    budget: std::time::Duration,
    say: &dyn Fn(&str),
) -> Option<Fetched> {
    let http = Http::new();
    let (what, result) = match config_url {
        Some(u) => {
            if let Err(e) = url::check(u) {
                say(&e);
                return None;
            }
            let result = crate::http::with_retries(budget, || url::fetch(&http, u));
            ("berth.config_url".to_string(), result)
        }
        None => {
            let fetch: fn(&Http, &str) -> Result<Fetched, String> = match platform {
                Platform::Ec2 => ec2::fetch,
                Platform::Gce => gce::fetch,
                Platform::OpenStack => openstack::fetch,
                Platform::Other => return None,
            };
            let result = crate::http::with_retries(budget, || fetch(&http, crate::http::METADATA));
            (format!("{platform:?} metadata service"), result)
        }
    };
    match result {
        Ok(f) => Some(f),
        Err(e) => {
            say(&format!("{what}: {e}"));
            None
        }
    }
}

/// A file's bytes, refusing one larger than a document may be.
pub fn read_bounded(path: &Path) -> Result<Vec<u8>, DatasourceError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|source| DatasourceError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut data = Vec::new();
    let limit = u64::try_from(MAX_DOCUMENT).unwrap_or(u64::MAX);
    file.take(limit + 1)
        .read_to_end(&mut data)
        .map_err(|source| DatasourceError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if data.len() > MAX_DOCUMENT {
        return Err(DatasourceError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(data)
}

/// [`read_bounded`], or None when there is no such file.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, DatasourceError> {
    if !path.exists() {
        return Ok(None);
    }
    read_bounded(path).map(Some)
}

#[cfg(test)]
mod budget_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_command_line_sets_the_network_budget_within_bounds() {
        assert_eq!(budget_from_cmdline("console=ttyS0"), (NETWORK_BUDGET, None));
        assert_eq!(
            budget_from_cmdline("berth.datasource.timeout=9 berth.datasource.timeout=5"),
            (Duration::from_secs(5), None)
        );
        for bad in ["0", "x", "3601", ""] {
            let (d, why) = budget_from_cmdline(&format!("berth.datasource.timeout={bad}"));
            assert_eq!(d, NETWORK_BUDGET, "{bad}");
            assert!(why.is_some_and(|w| w.contains("not 1 to 3600")), "{bad}");
        }
    }
}
