//! Where layers and container root filesystems live on disk: the one part of the store
//! that differs between filesystems. Chosen once, when the store opens:
//!
//! - btrfs (`backend/btrfs.rs`): each layer is a read-only subvolume holding the whole
//!   tree, a snapshot of its parent with the layer applied; a container's rootfs is a
//!   writable snapshot of its image's top layer (O(1), no copy).
//! - overlay (`backend/overlay.rs`), anywhere else: a layer directory holds only its own
//!   changes, and a container's rootfs is an overlayfs mount over the chain of layers.
//!
//! The store keeps everything else (records, images.json, locking, gc, limits) and asks
//! the backend only to make, seal and remove trees. The set is closed, so an enum
//! dispatches; neither backend holds state of its own, so its variants carry none, which
//! keeps `Backend` the plain value the store reports (`berth-store df`: "btrfs" or
//! "overlay").

mod btrfs;
mod overlay;

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::digest::Digest;
use crate::error::{errno_err, Result};
use crate::unpack::{self, Target};

/// The name of a container's root filesystem inside its directory (`containers/ID/`).
pub(crate) const ROOTFS: &str = "rootfs";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Btrfs,
    Overlay,
}

/// What a backend needs of the store's layer records: where a layer is, and which
/// layers lie under it.
pub(crate) trait Layers {
    /// The directory of layer `chain`.
    fn dir(&self, chain: &Digest) -> PathBuf;
    /// The directories of `top` and every layer under it, topmost first.
    fn stack(&self, top: &Digest) -> Result<Vec<PathBuf>>;
}

impl Backend {
    /// The backend for a store whose top directory is open at `root`.
    pub(crate) fn detect(root: BorrowedFd<'_>) -> Backend {
        if crate::btrfs::is_btrfs(root) {
            Backend::Btrfs
        } else {
            Backend::Overlay
        }
    }

    /// Makes `name` in `dir`, the tree a new layer on top of `parent` is unpacked into,
    /// and says how the unpacker must treat what lies below it.
    pub(crate) fn new_layer(
        self,
        layers: &impl Layers,
        parent: Option<&Digest>,
        dir: &Path,
        name: &str,
    ) -> Result<Target> {
        match self {
            Backend::Btrfs => btrfs::new_layer(layers, parent, dir, name),
            Backend::Overlay => overlay::new_layer(layers, parent, dir, name),
        }
    }

    /// Makes the layer unpacked at `dir` (already in its final place) read-only, where
    /// the backend can.
    pub(crate) fn seal_layer(self, dir: &Path) -> Result<()> {
        match self {
            Backend::Btrfs => btrfs::seal_layer(dir),
            Backend::Overlay => Ok(()),
        }
    }

    /// Removes `name` in `parent`, whatever this backend made there (a layer, a rootfs,
    /// a half-unpacked tree, a container's directory); nothing there is not an error.
    pub(crate) fn remove(self, parent: &Path, name: &OsStr) -> Result<()> {
        match self {
            Backend::Btrfs => btrfs::remove(parent, name),
            Backend::Overlay => overlay::remove(parent, name),
        }
    }

    /// Makes `dir/rootfs`, a writable root filesystem over the layer `top` and those
    /// under it. `dir` exists and holds nothing of ours yet.
    pub(crate) fn make_rootfs(self, layers: &impl Layers, top: &Digest, dir: &Path) -> Result<()> {
        match self {
            Backend::Btrfs => btrfs::make_rootfs(layers, top, dir),
            Backend::Overlay => overlay::mount(layers, top, dir),
        }
    }

    /// Makes a rootfs made earlier by `make_rootfs` usable again after a reboot.
    pub(crate) fn restore_rootfs(
        self,
        layers: &impl Layers,
        top: &Digest,
        dir: &Path,
    ) -> Result<()> {
        match self {
            // A snapshot is a directory: nothing to undo at a reboot.
            Backend::Btrfs => Ok(()),
            Backend::Overlay => overlay::remount(layers, top, dir),
        }
    }

    /// Removes `dir/rootfs` (the container's directory itself stays).
    pub(crate) fn remove_rootfs(self, dir: &Path) -> Result<()> {
        match self {
            Backend::Btrfs => btrfs::remove(dir, OsStr::new(ROOTFS)),
            Backend::Overlay => overlay::remove_rootfs(dir),
        }
    }
}

/// Removes `name` under `pdir` as plain files and directories, never following a
/// symlink; nothing there is not an error.
fn remove_tree(pdir: BorrowedFd<'_>, path: &Path, name: &OsStr) -> Result<()> {
    match unpack::remove_at(pdir, name) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(errno_err(path)(e)),
    }
}
