//! Every file the agent writes, under a root it opened once, resolved without following
//! a symlink anywhere on the way.
//!
//! /var is shared with containers (their volumes live there), so a container can plant a
//! symlink at any path the agent later writes for user-data (`/var/lib/x -> /etc`, or a
//! `write_files` target pointing at a host file): followed, it would make the agent
//! overwrite, chown or append to any file, or drop a declaration into containers.d. So
//! each directory is opened one component at a time with `openat2(RESOLVE_NO_SYMLINKS)`
//! from the one before, a missing one is made with `mkdirat` and opened the same way,
//! and the file itself is made or replaced on that directory's descriptor
//! ([`berth_persist::write_file_at`], or `O_NOFOLLOW` opens): a symlink met anywhere is
//! an error, never followed.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use berth_persist::{Owner, PersistError};
use rustix::fs::{self as rfs, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Directories the agent makes on the way to a file (as `mkdir -p` under umask 022).
const DIR_MODE: u32 = 0o755;

/// What failed, on which path (as the caller named it, inside the root).
#[derive(Debug, thiserror::Error)]
pub enum InRootError {
    #[error("{root}: opening the root directory: {errno}")]
    OpenRoot { root: PathBuf, errno: Errno },
    #[error("{path}: not an absolute path of plain components (no .., not /)")]
    BadPath { path: PathBuf },
    #[error("{path}: {at} is a symlink (or a mount's magic link): refused, never followed")]
    Symlink { path: PathBuf, at: PathBuf },
    #[error("{path}: opening the directory {at}: {errno}")]
    OpenDir {
        path: PathBuf,
        at: PathBuf,
        errno: Errno,
    },
    #[error("{path}: creating the directory {at}: {errno}")]
    MakeDir {
        path: PathBuf,
        at: PathBuf,
        errno: Errno,
    },
    #[error("{path}: {op}: {errno}")]
    File {
        path: PathBuf,
        op: &'static str,
        errno: Errno,
    },
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("{path}: not a regular file with one name ({what}): refused")]
    NotRegular { path: PathBuf, what: &'static str },
    #[error("{path}: larger than {limit} bytes")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error(transparent)]
    Persist(#[from] PersistError),
}

impl InRootError {
    /// Whether the path (or a directory on the way) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            InRootError::OpenDir {
                errno: Errno::NOENT,
                ..
            } | InRootError::File {
                errno: Errno::NOENT,
                ..
            }
        )
    }
}

/// A directory every path is taken relative to (`/` on the machine, a temporary tree in
/// tests). The root itself is trusted: it is the agent's own configuration.
pub struct Root {
    fd: OwnedFd,
}

/// Nothing on the way may be a symlink or a /proc magic link, nor `..` out of the root.
fn resolve() -> ResolveFlags {
    ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS | ResolveFlags::BENEATH
}

/// An absolute path's components, each one plain (`..` refused: nothing leaves the root).
fn components(path: &Path) -> Result<Vec<&OsStr>, InRootError> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(InRootError::BadPath {
                    path: path.to_path_buf(),
                })
            }
        }
    }
    Ok(out)
}

impl Root {
    pub fn open(root: &Path) -> Result<Root, InRootError> {
        let fd = rfs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| InRootError::OpenRoot {
            root: root.to_path_buf(),
            errno,
        })?;
        Ok(Root { fd })
    }

    /// Opens the directory `dir` (absolute, inside the root), making missing components
    /// when `create`; `path` is what errors name.
    fn dir(&self, dir: &[&OsStr], path: &Path, create: bool) -> Result<OwnedFd, InRootError> {
        let mut cur = self.fd.try_clone().map_err(|e| InRootError::Io {
            path: path.to_path_buf(),
            op: "duplicating the root's descriptor",
            source: e,
        })?;
        let mut at = PathBuf::from("/");
        for name in dir {
            at.push(name);
            cur = match open_dir(cur.as_fd(), name) {
                Err(Errno::NOENT) if create => {
                    match rfs::mkdirat(cur.as_fd(), *name, Mode::from_raw_mode(DIR_MODE)) {
                        // Made meanwhile by someone else: opened (and checked) below.
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(errno) => {
                            return Err(InRootError::MakeDir {
                                path: path.to_path_buf(),
                                at,
                                errno,
                            })
                        }
                    }
                    open_dir(cur.as_fd(), name)
                }
                other => other,
            }
            .map_err(|errno| dir_error(cur.as_fd(), name, path, &at, errno))?;
        }
        Ok(cur)
    }

    /// The directory holding `path` (opened safely) and the file's name in it.
    fn parent(&self, path: &Path, create: bool) -> Result<(OwnedFd, OsString), InRootError> {
        let parts = components(path)?;
        let Some((name, dir)) = parts.split_last() else {
            return Err(InRootError::BadPath {
                path: path.to_path_buf(),
            });
        };
        Ok((self.dir(dir, path, create)?, name.to_os_string()))
    }

    /// Replaces `path` (absolute, inside the root) with `contents`, durably, with `mode`
    /// and `owner` set on the new file's descriptor before it gets its name; the
    /// directories on the way are made as needed.
    pub fn replace(
        &self,
        path: &Path,
        contents: &[u8],
        mode: u32,
        owner: Option<Owner>,
    ) -> Result<(), InRootError> {
        let (dir, name) = self.parent(path, true)?;
        berth_persist::write_file_at(dir.as_fd(), &name, contents, mode, owner)
            .map_err(|e| e.at(path).into())
    }

    /// Appends `contents` to `path`, made (with `O_EXCL`) when missing. An existing file
    /// must be a regular file with one name: a FIFO, a device or a hard link to some
    /// other file is refused (opened without blocking, checked with fstat before a byte
    /// is written). `mode` and `owner` are set on the descriptor, as cloud-init sets them
    /// on an appended file too.
    pub fn append(
        &self,
        path: &Path,
        contents: &[u8],
        mode: u32,
        owner: Option<Owner>,
    ) -> Result<(), InRootError> {
        let (dir, name) = self.parent(path, true)?;
        let file = open_for_append(dir.as_fd(), &name, mode, path)?;
        set_owner_and_mode(&file, mode, owner, path)?;
        let mut out = std::fs::File::from(file);
        out.write_all(contents)
            .and_then(|()| out.sync_all())
            .map_err(|source| InRootError::Io {
                path: path.to_path_buf(),
                op: "appending",
                source,
            })
    }

    /// Writes `contents` into the existing regular file `path` (a sysctl), never making
    /// one.
    pub fn write_existing(&self, path: &Path, contents: &[u8]) -> Result<(), InRootError> {
        let (dir, name) = self.parent(path, false)?;
        let file = open_regular(dir.as_fd(), &name, OFlags::WRONLY, path)?;
        std::fs::File::from(file)
            .write_all(contents)
            .map_err(|source| InRootError::Io {
                path: path.to_path_buf(),
                op: "writing",
                source,
            })
    }

    /// Reads the regular file `path`, at most `limit` bytes.
    pub fn read(&self, path: &Path, limit: u64) -> Result<Vec<u8>, InRootError> {
        let (dir, name) = self.parent(path, false)?;
        let file = open_regular(dir.as_fd(), &name, OFlags::RDONLY, path)?;
        let mut data = Vec::new();
        std::fs::File::from(file)
            .take(limit.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(|source| InRootError::Io {
                path: path.to_path_buf(),
                op: "reading",
                source,
            })?;
        if u64::try_from(data.len()).unwrap_or(u64::MAX) > limit {
            return Err(InRootError::TooLarge {
                path: path.to_path_buf(),
                limit,
            });
        }
        Ok(data)
    }

    /// Removes `path` (a symlink there is removed itself, not followed); a missing file
    /// is not an error.
    pub fn remove(&self, path: &Path) -> Result<(), InRootError> {
        let (dir, name) = match self.parent(path, false) {
            Err(e) if e.is_not_found() => return Ok(()),
            other => other?,
        };
        match rfs::unlinkat(dir.as_fd(), &name, rfs::AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(errno) => Err(InRootError::File {
                path: path.to_path_buf(),
                op: "removing",
                errno,
            }),
        }
    }
}

fn open_dir(dir: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd, Errno> {
    rfs::openat2(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        resolve(),
    )
}

/// Names a symlink as such: RESOLVE_NO_SYMLINKS says ELOOP, but O_NOFOLLOW|O_DIRECTORY
/// on a trailing symlink says ENOTDIR, as it does for a file.
fn dir_error(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    path: &Path,
    at: &Path,
    errno: Errno,
) -> InRootError {
    let is_link = || {
        rfs::statat(parent, name, rfs::AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink)
    };
    if errno == Errno::LOOP || (errno == Errno::NOTDIR && is_link()) {
        return InRootError::Symlink {
            path: path.to_path_buf(),
            at: at.to_path_buf(),
        };
    }
    InRootError::OpenDir {
        path: path.to_path_buf(),
        at: at.to_path_buf(),
        errno,
    }
}

fn file_error<'a>(path: &'a Path, op: &'static str) -> impl Fn(Errno) -> InRootError + 'a {
    move |errno| match errno {
        Errno::LOOP => InRootError::Symlink {
            path: path.to_path_buf(),
            at: path.to_path_buf(),
        },
        // O_WRONLY|O_NONBLOCK on a FIFO nobody reads (or a socket): refused at once.
        Errno::NXIO => InRootError::NotRegular {
            path: path.to_path_buf(),
            what: "a FIFO or socket",
        },
        _ => InRootError::File {
            path: path.to_path_buf(),
            op,
            errno,
        },
    }
}

/// Opens `name` in `dir` (never a symlink, never blocking on a FIFO) and checks that it
/// is a regular file with one name before anyone reads or writes it.
fn open_regular(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    access: OFlags,
    path: &Path,
) -> Result<OwnedFd, InRootError> {
    let flags = access | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let file = rfs::openat2(dir, name, flags, Mode::empty(), resolve())
        .map_err(file_error(path, "opening"))?;
    check_regular(&file, path)?;
    Ok(file)
}

fn check_regular(file: &OwnedFd, path: &Path) -> Result<(), InRootError> {
    let st = rfs::fstat(file).map_err(file_error(path, "fstat"))?;
    let what = match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile if st.st_nlink <= 1 => return Ok(()),
        FileType::RegularFile => "a hard link: another name shares it",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice | FileType::BlockDevice => "a device",
        FileType::Directory => "a directory",
        _ => "not a file",
    };
    Err(InRootError::NotRegular {
        path: path.to_path_buf(),
        what,
    })
}

/// The existing file for appending, or a new one made with `O_EXCL` and `mode`.
fn open_for_append(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    mode: u32,
    path: &Path,
) -> Result<OwnedFd, InRootError> {
    let access = OFlags::WRONLY | OFlags::APPEND;
    match open_regular(dir, name, access, path) {
        Err(InRootError::File {
            errno: Errno::NOENT,
            ..
        }) => {}
        other => return other,
    }
    let flags = access | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let made = rfs::openat2(
        dir,
        name,
        flags,
        Mode::from_raw_mode(mode & 0o777),
        resolve(),
    );
    match made {
        Ok(file) => Ok(file),
        // Made meanwhile: whatever it is, checked as an existing file.
        Err(Errno::EXIST) => open_regular(dir, name, access, path),
        Err(errno) => Err(file_error(path, "creating")(errno)),
    }
}

fn set_owner_and_mode(
    file: &OwnedFd,
    mode: u32,
    owner: Option<Owner>,
    path: &Path,
) -> Result<(), InRootError> {
    if let Some(o) = owner {
        // Before the mode: fchown clears set-id bits, which fchmod then sets as asked.
        rfs::fchown(
            file,
            Some(rfs::Uid::from_raw(o.uid)),
            Some(rfs::Gid::from_raw(o.gid)),
        )
        .map_err(file_error(path, "fchown"))?;
    }
    rfs::fchmod(file, Mode::from_raw_mode(mode & 0o7777)).map_err(file_error(path, "fchmod"))
}

#[cfg(test)]
mod tests;
