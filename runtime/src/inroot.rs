//! Paths under a container's rootfs, resolved as the container will see them: symlinks
//! (absolute or with `..`) never leave the rootfs, magic links (/proc/PID/root,
//! /proc/self/fd/N) are refused, and what is missing is made one component at a time
//! in the directory it resolved to.
//!
//! The image is hostile: its `/dev` or a mount destination's parent may be a symlink to
//! a host directory. Everything is therefore done through descriptors: the rootfs is
//! opened once, each destination is resolved with openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS) to an O_PATH descriptor, and mount(2) is given that
//! descriptor's /proc/self/fd path, so a symlink swapped in between the check and the
//! mount cannot redirect it (the runc CVE-2021-30465 class). Nodes and links are made
//! with the *at calls on an in-root directory descriptor.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use crate::error::{Error, Result};

/// Symlinks followed while making one path, as the kernel's own limit (MAXSYMLINKS).
const MAX_HOPS: u32 = 40;
/// Rounds of the making loop: bounds it even against a racer that keeps removing what
/// it made.
const MAX_ROUNDS: u32 = 512;
/// openat2 answers EAGAIN with RESOLVE_IN_ROOT when a rename raced the lookup.
const EAGAIN_RETRIES: u32 = 16;

/// What a missing final component is made as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaf {
    Dir,
    File,
}

/// The rootfs (or, after pivot_root, `/`), open once.
pub struct Root {
    fd: OwnedFd,
}

/// `/proc/self/fd/N` for `fd`: a path the kernel resolves to the very file the
/// descriptor holds, whatever happens to the names on the way to it.
pub fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

pub fn in_root(dest: &Path, op: &'static str) -> impl FnOnce(Errno) -> Error {
    let dest = dest.to_path_buf();
    move |errno| Error::InRoot { dest, op, errno }
}

/// `path`'s components as the kernel will walk them (`..` kept: it is resolved against
/// the real parent, and clamped at the root by RESOLVE_IN_ROOT).
fn parts(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

impl Root {
    /// Opens `path` (a host path the caller trusts: the bundle's rootfs, or `/`).
    pub fn open(path: &Path) -> Result<Root> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(crate::error::sys(format!("opening {}", path.display())))?;
        Ok(Root { fd })
    }

    /// `dest` (absolute or not: taken relative to the root) resolved in the root, the
    /// final symlink followed, as an O_PATH descriptor; ENOENT when something is missing.
    pub fn resolve(&self, dest: &Path) -> std::result::Result<OwnedFd, Errno> {
        let mut rel = PathBuf::from(".");
        rel.extend(parts(dest));
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let mut tries = 0;
        loop {
            match openat2(self.fd.as_fd(), &rel, how) {
                Err(Errno::EAGAIN) if tries < EAGAIN_RETRIES => tries += 1,
                other => return other,
            }
        }
    }

    /// `dest` resolved in the root, as [`Root::resolve`], or an error naming it.
    pub fn open_in(&self, dest: &Path) -> Result<OwnedFd> {
        self.resolve(dest).map_err(in_root(dest, "resolving"))
    }

    /// `dest` resolved in the root, made where missing: directories on the way, the
    /// final component as `leaf`. A dangling symlink on the way is followed in the root
    /// and its target made, as the container would see it.
    pub fn make(&self, dest: &Path, leaf: Leaf) -> Result<OwnedFd> {
        match self.resolve(dest) {
            Err(Errno::ENOENT) => {}
            other => return other.map_err(in_root(dest, "resolving")),
        }
        let mut todo = parts(dest);
        // A prefix that resolves in the root (possibly through symlinks).
        let mut done = PathBuf::new();
        let (mut hops, mut rounds) = (0, 0);
        while let Some(part) = todo.pop_front() {
            rounds += 1;
            if rounds > MAX_ROUNDS {
                return Err(in_root(dest, "making")(Errno::ELOOP));
            }
            let next = done.join(&part);
            match self.resolve(&next) {
                Ok(fd) if todo.is_empty() => return Ok(fd),
                Ok(_) => {
                    done = next;
                    continue;
                }
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(in_root(&next, "resolving")(e)),
            }
            // `next` is missing, and `done` (its parent) resolved a round ago.
            let parent = self.open_in(&done)?;
            let kind = if todo.is_empty() { leaf } else { Leaf::Dir };
            match create(&parent, &part, kind) {
                Ok(()) => {}
                Err(Errno::EEXIST) => {
                    // There, yet it did not resolve: a dangling symlink.
                    if let Some(target) = link_text(&parent, &part) {
                        hops += 1;
                        if hops > MAX_HOPS {
                            return Err(in_root(dest, "making")(Errno::ELOOP));
                        }
                        if target.is_absolute() {
                            done = PathBuf::new();
                        }
                        let mut more = parts(&target);
                        more.extend(todo);
                        todo = more;
                        continue;
                    }
                }
                Err(e) => return Err(in_root(&next, "making")(e)),
            }
            // Made (or made by someone else meanwhile): resolved on the next round.
            todo.push_front(part);
        }
        self.open_in(&done)
    }

    /// `dest`'s parent directory, made in the root where missing, and its last
    /// component: for the *at calls that must not follow a final symlink.
    pub fn parent(&self, dest: &Path) -> Result<(OwnedFd, OsString)> {
        let mut p = parts(dest);
        let name = match p.pop_back() {
            Some(n) if n != ".." => n,
            _ => return Err(in_root(dest, "naming its last component")(Errno::EINVAL)),
        };
        let parent: PathBuf = p.into_iter().collect();
        Ok((self.make(&parent, Leaf::Dir)?, name))
    }
}

/// Makes `name` in `dir` without following anything: mkdirat, or an empty file made
/// with O_EXCL | O_NOFOLLOW (a symlink planted there is never written through).
fn create(dir: &OwnedFd, name: &OsStr, kind: Leaf) -> std::result::Result<(), Errno> {
    match kind {
        Leaf::Dir => nix::sys::stat::mkdirat(dir.as_fd(), name, Mode::from_bits_truncate(0o755)),
        Leaf::File => nix::fcntl::openat(
            dir.as_fd(),
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        .map(drop),
    }
}

/// The text of the symlink `name` in `dir`; None when it is not one.
fn link_text(dir: &OwnedFd, name: &OsStr) -> Option<PathBuf> {
    nix::fcntl::readlinkat(dir.as_fd(), name)
        .ok()
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// Where `fd` is on the host, through /proc.
    fn host_path(fd: &OwnedFd) -> PathBuf {
        std::fs::read_link(fd_path(fd)).unwrap()
    }

    #[test]
    fn symlinks_resolve_in_the_root_and_magic_links_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        symlink("/etc", root.join("abs")).unwrap();
        symlink("../../../..", root.join("etc/up")).unwrap();
        symlink("/proc/self/root/etc", root.join("magic")).unwrap();
        let r = Root::open(&root).unwrap();
        assert_eq!(
            host_path(&r.open_in(Path::new("/abs")).unwrap()),
            root.join("etc")
        );
        assert_eq!(
            host_path(&r.open_in(Path::new("/etc/up/etc")).unwrap()),
            root.join("etc")
        );
        assert_eq!(
            host_path(&r.open_in(Path::new("/../../etc")).unwrap()),
            root.join("etc")
        );
        // In the root, /proc does not exist; on the host it would be a magic link.
        assert!(r.open_in(Path::new("/magic")).is_err());
        symlink("loop", root.join("loop")).unwrap();
        assert!(r.make(Path::new("/loop/x"), Leaf::Dir).is_err());
    }

    #[test]
    fn missing_parts_are_made_in_the_root_through_dangling_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let host = dir.path().join("host");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&host).unwrap();
        // An absolute link to a host directory that exists: taken in the root.
        symlink(&host, root.join("dev")).unwrap();
        symlink("../../tmp/victim", root.join("mnt")).unwrap();
        let r = Root::open(&root).unwrap();
        let inside = root.join(host.strip_prefix("/").unwrap());
        let fd = r.make(Path::new("/dev/pts"), Leaf::Dir).unwrap();
        assert_eq!(host_path(&fd), inside.join("pts"));
        let fd = r.make(Path::new("/mnt/file"), Leaf::File).unwrap();
        assert!(host_path(&fd).starts_with(&root), "{:?}", host_path(&fd));
        let (parent, name) = r.parent(Path::new("/dev/null")).unwrap();
        assert_eq!(host_path(&parent), inside);
        assert_eq!(name, "null");
        assert_eq!(std::fs::read_dir(&host).unwrap().count(), 0);
    }
}
