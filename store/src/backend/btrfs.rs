//! The btrfs backend: a layer is a subvolume holding the whole tree (a snapshot of its
//! parent, the layer applied on top), made read-only once stored; a container's rootfs
//! is a writable snapshot of its top layer. The ioctls are in `crate::btrfs`.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::Path;

use super::{Layers, ROOTFS};
use crate::btrfs as ioctl;
use crate::digest::Digest;
use crate::error::{errno_err, Result};
use crate::store::open_dir;
use crate::unpack::Target;

/// `name` in `dir`: a snapshot of `parent`'s subvolume, or an empty subvolume for a
/// bottom layer. Either way the unpacker finds the lower layers already in place.
pub(super) fn new_layer(
    layers: &impl Layers,
    parent: Option<&Digest>,
    dir: &Path,
    name: &str,
) -> Result<Target> {
    let path = dir.join(name);
    let pdir = open_dir(dir)?;
    match parent {
        Some(p) => {
            let src = open_dir(&layers.dir(p))?;
            ioctl::snapshot(src.as_fd(), pdir.as_fd(), OsStr::new(name))
                .map_err(errno_err(&path))?;
        }
        None => {
            ioctl::create_subvolume(pdir.as_fd(), OsStr::new(name)).map_err(errno_err(&path))?;
        }
    }
    Ok(Target::Snapshot)
}

/// A stored layer never changes: its subvolume is made read-only.
pub(super) fn seal_layer(dir: &Path) -> Result<()> {
    let d = open_dir(dir)?;
    ioctl::set_read_only(d.as_fd()).map_err(errno_err(dir))
}

/// A subvolume goes with its own ioctl, anything else recursively.
pub(super) fn remove(parent: &Path, name: &OsStr) -> Result<()> {
    let pdir = open_dir(parent)?;
    let path = parent.join(name);
    if let Ok(sub) = open_dir(&path) {
        if ioctl::is_subvolume(sub.as_fd()) {
            // A read-only layer must be made writable before its contents can go;
            // the ioctl deletes it whole either way.
            return ioctl::delete_subvolume(pdir.as_fd(), name).map_err(errno_err(&path));
        }
    }
    super::remove_tree(pdir.as_fd(), &path, name)
}

/// `dir/rootfs`: a writable snapshot of the top layer, which already holds the rest.
pub(super) fn make_rootfs(layers: &impl Layers, top: &Digest, dir: &Path) -> Result<()> {
    let src = open_dir(&layers.dir(top))?;
    let d = open_dir(dir)?;
    ioctl::snapshot(src.as_fd(), d.as_fd(), OsStr::new(ROOTFS)).map_err(errno_err(dir.join(ROOTFS)))
}
