//! OpenStack's config drive: an ISO 9660 or FAT volume labelled `config-2` holding
//! `openstack/latest/{meta_data.json,network_data.json,user_data}` (OpenStack Nova's
//! config drive layout).

use std::path::{Path, PathBuf};

use crate::volumes::{self, VolumeError};

pub const LABEL: &str = "config-2";
const LATEST: &str = "openstack/latest";

/// What a config drive holds (each file is optional on the drive).
#[derive(Debug, Default)]
pub struct ConfigDrive {
    pub device: PathBuf,
    pub meta_data: Option<String>,
    pub network_data: Option<String>,
    pub user_data: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigDriveError {
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The first `config-2` volume's files, read through a read-only mount at `mount_at`
/// (unmounted again before returning); None when the machine has no config drive.
pub fn read(mount_at: &Path) -> Result<Option<ConfigDrive>, ConfigDriveError> {
    let found = volumes::with_label(Path::new("/sys/class/block"), Path::new("/dev"), LABEL);
    let Some(volume) = found.first() else {
        return Ok(None);
    };
    let mounted = volume.mount_read_only(mount_at)?;
    let drive = read_tree(&mounted.path, &volume.device)?;
    Ok(Some(drive))
}

/// The files of a config drive's tree at `root`.
pub fn read_tree(root: &Path, device: &Path) -> Result<ConfigDrive, ConfigDriveError> {
    let latest = root.join(LATEST);
    let read = |name: &str| -> Result<Option<Vec<u8>>, ConfigDriveError> {
        let path = latest.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ConfigDriveError::Read { path, source }),
        }
    };
    let text = |b: Option<Vec<u8>>| b.map(|b| String::from_utf8_lossy(&b).into_owned());
    Ok(ConfigDrive {
        device: device.to_path_buf(),
        meta_data: text(read("meta_data.json")?),
        network_data: text(read("network_data.json")?),
        user_data: read("user_data")?,
    })
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
        let drive = read_tree(t.path(), Path::new("/dev/vdb")).unwrap();
        assert_eq!(drive.network_data.as_deref(), Some("{\"links\": []}"));
        assert_eq!(drive.user_data.as_deref(), Some(&b"#cloud-config\n"[..]));
        assert!(drive.meta_data.is_none());
    }
}
