//! Named volumes: one directory per name under `/var/lib/berth/volumes` (init makes that
//! a btrfs subvolume of its own), each a btrfs subvolume where the filesystem is btrfs
//! (so it can be snapshotted and removed whole), kept when its containers go.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

pub const DEFAULT_DIR: &str = "/var/lib/berth/volumes";

/// The volume's directory, made if it does not exist yet.
pub fn ensure(dir: &Path, name: &str) -> Result<PathBuf, String> {
    if !crate::declaration::valid_name(name) {
        return Err(format!("{name:?} is not a volume name"));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join(name);
    if path.is_dir() {
        return Ok(path);
    }
    let parent = std::fs::File::open(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if berth_store::btrfs::is_btrfs(parent.as_fd()) {
        berth_store::btrfs::create_subvolume(parent.as_fd(), OsStr::new(name))
            .map_err(|e| format!("creating the subvolume {}: {e}", path.display()))?;
    } else {
        std::fs::create_dir(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(path)
}
