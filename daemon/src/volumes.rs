//! Named volumes: one directory per name under `/var/lib/berth/volumes` (init makes that
//! a btrfs subvolume of its own), each a btrfs subvolume where the filesystem is btrfs
//! (so it can be snapshotted and removed whole), kept when its containers go.
//!
//! And every volume's host source, checked and pinned before a container starts. A
//! bind source is a path under /var, where containers write: one of them can plant a
//! symlink (`/var/lib/app/conf -> /etc`) that a string check on the path never sees. So
//! sources are resolved from the allowed root's descriptor without following any
//! symlink (openat2 RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), held open as O_PATH
//! descriptors, and the runtime is handed `/proc/<daemon>/fd/<n>`: a path that names
//! the very directory checked, whatever is renamed or swapped afterwards, for as long
//! as [`Sources`] lives (until `berth-runtime create` has made its mounts).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::declaration::{Declaration, Volume, BIND_ROOTS};

pub const DEFAULT_DIR: &str = "/var/lib/berth/volumes";

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{0:?} is not a volume name")]
    BadName(String),
    #[error("volume {volume}: {path} is not under {roots} (bind mounts come from there only)")]
    OutsideRoots {
        volume: String,
        path: PathBuf,
        roots: String,
    },
    #[error("volume {volume}: {path} does not exist")]
    Missing { volume: String, path: PathBuf },
    #[error("volume {volume}: {path} goes through a symlink (not followed: a container may have planted it)")]
    Symlink { volume: String, path: PathBuf },
    #[error("volume {volume}: {path} is a device node")]
    Device { volume: String, path: PathBuf },
    #[error("volume {volume}: {path}: {op}: {source}")]
    Io {
        volume: String,
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
}

/// What a container's volumes mount, each source held open while this lives.
#[derive(Debug, Default)]
pub struct Sources {
    /// Named volumes: name to the path the runtime mounts.
    pub named: BTreeMap<String, PathBuf>,
    /// Bind mounts: the declared source to the path the runtime mounts.
    pub binds: BTreeMap<PathBuf, PathBuf>,
    held: Vec<OwnedFd>,
}

impl Sources {
    /// `fd` kept open; the path that names it to the daemon's children.
    fn hold(&mut self, fd: OwnedFd) -> PathBuf {
        let path = fd_path(fd.as_fd());
        self.held.push(fd);
        path
    }
}

/// `/proc/<daemon>/fd/<n>`: the runtime is the daemon's child in its pid and mount
/// namespaces, so it (and the container's init, before pivot_root) resolves this to the
/// file the daemon holds.
fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        fd.as_raw_fd()
    ))
}

/// The declaration's volumes: named ones made where missing, bind sources checked
/// against `bind_roots`; all resolved without following symlinks and held open.
pub fn prepare(
    volumes_dir: &Path,
    bind_roots: &[&Path],
    decl: &Declaration,
) -> Result<Sources, VolumeError> {
    let mut sources = Sources::default();
    for v in &decl.volumes {
        match v {
            Volume::Named { name, .. } => {
                let fd = ensure(volumes_dir, name)?;
                let path = sources.hold(fd);
                sources.named.insert(name.clone(), path);
            }
            Volume::Bind { source, target, .. } => {
                let shown = format!("{}:{}", source.display(), target.display());
                let fd = resolve_bind(bind_roots, source, &shown)?;
                let path = sources.hold(fd);
                sources.binds.insert(source.clone(), path);
            }
            Volume::Tmpfs { .. } => {}
        }
    }
    Ok(sources)
}

/// [`prepare`] with the declaration parser's roots (`BIND_ROOTS`).
pub fn prepare_default(volumes_dir: &Path, decl: &Declaration) -> Result<Sources, VolumeError> {
    let roots: Vec<&Path> = BIND_ROOTS.iter().map(Path::new).collect();
    prepare(volumes_dir, &roots, decl)
}

/// `source` as an O_PATH descriptor, when it lies under one of `roots` with no symlink
/// anywhere below the root (`volume` names it in errors). The declaration parser's
/// lexical check gives early errors; this is the one that holds.
pub fn resolve_bind(roots: &[&Path], source: &Path, volume: &str) -> Result<OwnedFd, VolumeError> {
    let err = |path: &Path| (volume.to_string(), path.to_path_buf());
    let Some((root, rel)) = roots.iter().find_map(|root| {
        let rel = source.strip_prefix(root).ok()?;
        let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
        (plain && rel.components().next().is_some()).then_some((root, rel))
    }) else {
        let (volume, path) = err(source);
        return Err(VolumeError::OutsideRoots {
            volume,
            path,
            roots: roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let io = |op: &'static str| {
        let (volume, path) = err(source);
        move |e: rustix::io::Errno| VolumeError::Io {
            volume,
            path,
            op,
            source: e.into(),
        }
    };
    // The root itself is the host's (/var): trusted, but not followed if a link.
    let root_fd = rustix::fs::open(
        *root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io("opening the allowed root"))?;
    let fd = open_beneath(root_fd.as_fd(), rel.as_os_str()).map_err(|e| {
        let (volume, path) = err(source);
        match e {
            rustix::io::Errno::LOOP => VolumeError::Symlink { volume, path },
            rustix::io::Errno::NOENT => VolumeError::Missing { volume, path },
            e => io("resolving")(e),
        }
    })?;
    let st = rustix::fs::fstat(&fd).map_err(io("fstat"))?;
    let kind = rustix::fs::FileType::from_raw_mode(st.st_mode);
    if matches!(
        kind,
        rustix::fs::FileType::BlockDevice | rustix::fs::FileType::CharacterDevice
    ) {
        let (volume, path) = err(source);
        return Err(VolumeError::Device { volume, path });
    }
    Ok(fd)
}

/// `rel` below `dir`, no symlink followed (the final one included: ELOOP), no `..`
/// out, as an O_PATH descriptor. (Not O_NOFOLLOW: with O_PATH that would open a final
/// symlink itself instead of refusing it.)
fn open_beneath(dir: BorrowedFd<'_>, rel: &OsStr) -> Result<OwnedFd, rustix::io::Errno> {
    rustix::fs::openat2(
        dir,
        rel,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    )
}

/// The volume's directory, made if it does not exist yet, as an O_PATH descriptor (a
/// symlink planted under the volume's name is refused, not followed).
pub fn ensure(dir: &Path, name: &str) -> Result<OwnedFd, VolumeError> {
    if !crate::declaration::valid_name(name) {
        return Err(VolumeError::BadName(name.to_string()));
    }
    let path = dir.join(name);
    let fail = |op: &'static str| {
        let path = path.clone();
        move |source: std::io::Error| VolumeError::Io {
            volume: name.to_string(),
            path,
            op,
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(fail("making the volumes directory"))?;
    // Read-only, not O_PATH: the subvolume ioctl needs a real descriptor.
    let parent = std::fs::File::open(dir).map_err(fail("opening the volumes directory"))?;
    let resolved = |e: rustix::io::Errno| match e {
        rustix::io::Errno::LOOP => VolumeError::Symlink {
            volume: name.to_string(),
            path: path.clone(),
        },
        e => fail("resolving")(e.into()),
    };
    match open_beneath(parent.as_fd(), OsStr::new(name)) {
        Err(rustix::io::Errno::NOENT) => {}
        other => return other.map_err(resolved),
    }
    if berth_store::btrfs::is_btrfs(parent.as_fd()) {
        berth_store::btrfs::create_subvolume(parent.as_fd(), OsStr::new(name))
            .map_err(|e| fail("creating the subvolume")(e.into()))?;
    } else {
        rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o755))
            .map_err(|e| fail("mkdir")(e.into()))?;
    }
    open_beneath(parent.as_fd(), OsStr::new(name)).map_err(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_bind_source_through_a_symlink_is_refused_and_a_directory_pinned() {
        let t = tempfile::tempdir().unwrap();
        // The allowed root (/var in the daemon), with a container-writable x/ in it.
        let var = t.path().join("var");
        std::fs::create_dir_all(var.join("x/data")).unwrap();
        symlink("/etc", var.join("x/link")).unwrap();
        symlink("../..", var.join("x/up")).unwrap();
        let roots = [var.as_path()];
        for (bad, want) in [
            ("x/link", "symlink"),
            ("x/link/passwd", "symlink"),
            ("x/up/etc", "symlink"),
            ("x/missing", "does not exist"),
        ] {
            let source = var.join(bad);
            let e = resolve_bind(&roots, &source, "vol")
                .err()
                .unwrap_or_else(|| panic!("{bad}: accepted"))
                .to_string();
            assert!(
                e.contains(want) && e.contains("vol") && e.contains(bad),
                "{bad}: {e}"
            );
        }
        for outside in ["/etc", "/var/../etc"] {
            let e = resolve_bind(&roots, Path::new(outside), "vol").unwrap_err();
            assert!(e.to_string().contains("is not under"), "{outside}: {e}");
        }
        let fd = resolve_bind(&roots, &var.join("x/data"), "vol").unwrap();
        let pinned = fd_path(fd.as_fd());
        // Swapped for a symlink afterwards: the pinned path still names the directory.
        std::fs::rename(var.join("x/data"), var.join("x/moved")).unwrap();
        symlink("/etc", var.join("x/data")).unwrap();
        assert_eq!(std::fs::read_link(&pinned).unwrap(), var.join("x/moved"));
    }

    #[test]
    fn a_named_volume_planted_as_a_symlink_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("volumes");
        let fd = ensure(&dir, "data").unwrap();
        assert_eq!(
            std::fs::read_link(fd_path(fd.as_fd())).unwrap(),
            dir.join("data")
        );
        assert!(ensure(&dir, "data").is_ok(), "an existing volume is reused");
        symlink("/etc", dir.join("evil")).unwrap();
        let e = ensure(&dir, "evil").unwrap_err().to_string();
        assert!(e.contains("symlink") && e.contains("evil"), "{e}");
        assert!(ensure(&dir, "../x").is_err());
    }
}
