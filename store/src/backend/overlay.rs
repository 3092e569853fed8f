//! The overlay backend, for a store on any other filesystem: a layer directory holds
//! only its own changes (whiteouts as overlayfs markers), and a container's rootfs is an
//! overlayfs mount with the chain of layers as its lower directories and the
//! container's `upper` and `work` beside it.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::Path;

use super::{Layers, ROOTFS};
use crate::digest::Digest;
use crate::error::{errno_err, io_err, Result, StoreError};
use crate::store::open_dir;
use crate::unpack::Target;

/// `name` in `dir`, an empty directory; the unpacker is told the layers under `parent`
/// (where a hardlink's target may live).
pub(super) fn new_layer(
    layers: &impl Layers,
    parent: Option<&Digest>,
    dir: &Path,
    name: &str,
) -> Result<Target> {
    let path = dir.join(name);
    std::fs::create_dir(&path).map_err(io_err(&path))?;
    let lowers = match parent {
        Some(p) => layers.stack(p)?,
        None => Vec::new(),
    };
    Ok(Target::Overlay { lowers })
}

/// Plain files and directories.
pub(super) fn remove(parent: &Path, name: &OsStr) -> Result<()> {
    let pdir = open_dir(parent)?;
    super::remove_tree(pdir.as_fd(), &parent.join(name), name)
}

/// Mounts overlayfs on `dir/rootfs` over `top` and the layers under it, creating the
/// mount point, `upper` and `work` where missing.
pub(super) fn mount(layers: &impl Layers, top: &Digest, dir: &Path) -> Result<()> {
    for sub in [ROOTFS, "upper", "work"] {
        match std::fs::create_dir(dir.join(sub)) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(io_err(dir.join(sub))(e))
            }
            _ => {}
        }
    }
    let lowers: Vec<String> = layers
        .stack(top)?
        .iter()
        .map(|l| l.display().to_string())
        .collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        dir.join("upper").display(),
        dir.join("work").display()
    );
    let data = std::ffi::CString::new(data)
        .map_err(|_| StoreError::Invalid("a NUL in the store's path".into()))?;
    rustix::mount::mount(
        "overlay",
        dir.join(ROOTFS),
        "overlay",
        rustix::mount::MountFlags::empty(),
        Some(data.as_c_str()),
    )
    .map_err(errno_err(dir.join(ROOTFS)))
}

/// A reboot undoes the mount (the upper directory, the container's writes, stays):
/// mounts it again where it is missing.
pub(super) fn remount(layers: &impl Layers, top: &Digest, dir: &Path) -> Result<()> {
    if is_mount_point(&dir.join(ROOTFS)) {
        return Ok(());
    }
    mount(layers, top, dir)
}

/// Unmounts `dir/rootfs` (if mounted), then removes it.
pub(super) fn remove_rootfs(dir: &Path) -> Result<()> {
    let rootfs = dir.join(ROOTFS);
    match rustix::mount::unmount(&rootfs, rustix::mount::UnmountFlags::DETACH) {
        Ok(()) | Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(errno_err(&rootfs)(e)),
    }
    remove(dir, OsStr::new(ROOTFS))
}

/// Whether something is mounted on `path` (its device differs from its parent's).
fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        std::fs::metadata(path),
        path.parent().map(std::fs::metadata),
    ) {
        (Ok(a), Some(Ok(b))) => a.dev() != b.dev(),
        _ => false,
    }
}
