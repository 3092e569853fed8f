//! The one way Berth writes a file it must never leave half written: a power cut at any
//! moment leaves either the old contents or the new, never an empty or partial file.
//!
//! 1. a temporary file is created beside the target (same directory, so the rename stays
//!    on one filesystem) with `O_EXCL | O_NOFOLLOW` and the final mode (fixed with
//!    `fchmod` on the open descriptor, so the umask cannot widen nor narrow it, and the
//!    file never exists with looser permissions than it ends with);
//! 2. the owner, when one is asked for, is set on the descriptor (`fchown`);
//! 3. the contents are written and the file is fsync'd;
//! 4. it is renamed over the target (`renameat` within one directory descriptor: a
//!    symlink planted under the target's name is replaced, never followed);
//! 5. the directory is fsync'd, so the rename itself is on disk.
//!
//! Callers that must not follow symlinks on the way to the directory open it themselves
//! (openat2 with `RESOLVE_NO_SYMLINKS`, say) and use [`write_file_at`].

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use rustix::fs::{self as rfs, Mode, OFlags};

/// What failed, on which file.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{0}: not a file name inside a directory")]
    BadName(PathBuf),
    #[error("{path}: opening its directory: {source}")]
    OpenDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {op}: {source}")]
    Write {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
}

/// Who owns the file when it is not the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// Replaces `path` with `contents` (mode `mode`, owned by the writer), durably.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), PersistError> {
    let (dir, name) = split(path)?;
    let dir_fd = open_dir(&dir).map_err(|source| PersistError::OpenDir {
        path: path.to_path_buf(),
        source,
    })?;
    write_file_at(dir_fd.as_fd(), &name, contents, mode, None).map_err(|e| e.at(path))
}

/// Replaces `name` in the directory `dir` with `contents`, durably; `name` is one path
/// component. Errors name the file as `name`: wrap them with the path the caller knows.
pub fn write_file_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    contents: &[u8],
    mode: u32,
    owner: Option<Owner>,
) -> Result<(), PersistError> {
    let shown = PathBuf::from(name);
    if name.is_empty() || name == "." || name == ".." || name.as_bytes().contains(&b'/') {
        return Err(PersistError::BadName(shown));
    }
    let tmp = temp_name(name);
    let fail = |op: &'static str| {
        let shown = shown.clone();
        move |e: rustix::io::Errno| PersistError::Write {
            path: shown,
            op,
            source: e.into(),
        }
    };
    let file = rfs::openat(
        dir,
        tmp.as_os_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode & 0o7777),
    )
    .map_err(fail("creating its temporary file"))?;
    let written = fill(&file, contents, mode, owner, &shown);
    let renamed = written.and_then(|()| {
        rfs::renameat(dir, tmp.as_os_str(), dir, name).map_err(fail("renaming into place"))
    });
    if let Err(e) = renamed {
        let _ = rfs::unlinkat(dir, tmp.as_os_str(), rfs::AtFlags::empty());
        return Err(e);
    }
    rfs::fsync(dir).map_err(fail("syncing its directory"))
}

fn fill(
    file: &OwnedFd,
    contents: &[u8],
    mode: u32,
    owner: Option<Owner>,
    shown: &Path,
) -> Result<(), PersistError> {
    let fail = |op: &'static str| {
        move |e: rustix::io::Errno| PersistError::Write {
            path: shown.to_path_buf(),
            op,
            source: e.into(),
        }
    };
    if let Some(o) = owner {
        // Before the mode: chown clears set-id bits, which fchmod then sets as asked.
        rfs::fchown(
            file,
            Some(rfs::Uid::from_raw(o.uid)),
            Some(rfs::Gid::from_raw(o.gid)),
        )
        .map_err(fail("setting its owner"))?;
    }
    rfs::fchmod(file, Mode::from_raw_mode(mode & 0o7777)).map_err(fail("setting its mode"))?;
    let mut out = std::fs::File::from(file.try_clone().map_err(|source| PersistError::Write {
        path: shown.to_path_buf(),
        op: "duplicating its descriptor",
        source,
    })?);
    out.write_all(contents)
        .and_then(|()| out.sync_all())
        .map_err(|source| PersistError::Write {
            path: shown.to_path_buf(),
            op: "writing and syncing",
            source,
        })
}

impl PersistError {
    /// The same error, naming `path` instead of the bare file name.
    pub fn at(self, path: &Path) -> PersistError {
        match self {
            PersistError::BadName(_) => PersistError::BadName(path.to_path_buf()),
            PersistError::OpenDir { source, .. } => PersistError::OpenDir {
                path: path.to_path_buf(),
                source,
            },
            PersistError::Write { op, source, .. } => PersistError::Write {
                path: path.to_path_buf(),
                op,
                source,
            },
        }
    }
}

fn split(path: &Path) -> Result<(PathBuf, OsString), PersistError> {
    let name = path
        .file_name()
        .ok_or_else(|| PersistError::BadName(path.to_path_buf()))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name.to_os_string()))
}

fn open_dir(dir: &Path) -> std::io::Result<OwnedFd> {
    rfs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(Into::into)
}

/// `.NAME.PID.N.tmp`: unique among this process's writers, and hidden from globs.
fn temp_name(name: &OsStr) -> OsString {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let mut t = OsString::from(".");
    t.push(name);
    t.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    t
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    #[test]
    fn replaces_a_file_with_the_exact_mode_and_leaves_no_temporary() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("state.json");
        std::fs::write(&p, "old").unwrap();
        write_file(&p, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o600
        );
        // The umask does not narrow a mode either.
        write_file(&p, b"newer", 0o666).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o666
        );
        let names: Vec<_> = std::fs::read_dir(t.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn a_symlink_at_the_target_is_replaced_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        let p = t.path().join("link");
        std::os::unix::fs::symlink(&victim, &p).unwrap();
        write_file(&p, b"mine", 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        assert!(std::fs::symlink_metadata(&p).unwrap().is_file());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "mine");
    }

    #[test]
    fn owner_and_set_id_bits_are_applied_on_the_descriptor() {
        let t = tempfile::tempdir().unwrap();
        let dir = open_dir(t.path()).unwrap();
        let here = std::fs::metadata(t.path()).unwrap();
        let me = Owner {
            uid: here.uid(),
            gid: here.gid(),
        };
        write_file_at(dir.as_fd(), OsStr::new("f"), b"x", 0o2755, Some(me)).unwrap();
        let m = std::fs::metadata(t.path().join("f")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o2755);
        assert_eq!((m.uid(), m.gid()), (me.uid, me.gid));
    }

    #[test]
    fn names_that_are_not_one_component_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let dir = open_dir(t.path()).unwrap();
        for bad in ["", ".", "..", "a/b", "../escape"] {
            let e = write_file_at(dir.as_fd(), OsStr::new(bad), b"x", 0o644, None);
            assert!(matches!(e, Err(PersistError::BadName(_))), "{bad}");
        }
        let e = write_file(Path::new("/"), b"x", 0o644).unwrap_err();
        assert!(e.to_string().contains("not a file name"), "{e}");
        let e = write_file(&t.path().join("missing/f"), b"x", 0o644).unwrap_err();
        assert!(
            e.to_string().contains("missing/f: opening its directory"),
            "{e}"
        );
    }
}
