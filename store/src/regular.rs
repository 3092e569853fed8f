//! Opening files the store reads from hostile sources (an OCI layout, a `docker save`
//! archive, a lower layer a hardlink points into): only regular files, never blocking,
//! and never read past a cap.
//!
//! A FIFO opened for reading without O_NONBLOCK waits for a writer forever (with the
//! store lock held); a symlink to /dev/zero reads forever; opening a device at all can
//! have a driver's side effects. So a path is first opened with O_PATH (which opens
//! nothing: no FIFO wait, no driver call), checked with fstat to be a regular file,
//! and only then opened for reading with O_NONBLOCK, checked again to be the same inode.

use std::io::Read;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Why a file was not opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The system call failed (ENOENT, ELOOP for a symlink where none may be, ...).
    #[error("{}", std::io::Error::from(*.0))]
    Errno(Errno),
    /// It is there but is not a regular file.
    #[error("not a regular file ({0:?}): symlinks, FIFOs and devices are refused")]
    NotRegular(FileType),
}

/// How `open_regular` resolves the path.
#[derive(Debug, Clone, Copy)]
pub enum Resolve {
    /// Inside `dir` as if it were `/`, with no symlink on any component (what an
    /// image layout or a layer has no business holding).
    InRootNoSymlinks,
    /// Inside `dir` as if it were `/`; symlinks on the way are followed within it, but
    /// the last component must not be one (a hardlink target in a lower layer).
    InRootNoFollow,
    /// As the operator named it (a path on the command line): symlinks followed, but
    /// whatever they lead to must still be a regular file.
    Follow,
}

/// Opens `path` under `dir` read-only if, and only if, it is a regular file; returns
/// the descriptor and its size.
pub fn open_regular(
    dir: BorrowedFd<'_>,
    path: &Path,
    how: Resolve,
) -> Result<(OwnedFd, u64), OpenError> {
    let (resolve, nofollow) = match how {
        Resolve::InRootNoSymlinks => (
            ResolveFlags::IN_ROOT | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
            OFlags::NOFOLLOW,
        ),
        Resolve::InRootNoFollow => (
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            OFlags::NOFOLLOW,
        ),
        Resolve::Follow => (ResolveFlags::NO_MAGICLINKS, OFlags::empty()),
    };
    let at = |flags: OFlags| {
        rustix::fs::openat2(
            dir,
            path,
            flags | nofollow | OFlags::CLOEXEC,
            Mode::empty(),
            resolve,
        )
        .map_err(OpenError::Errno)
    };
    let probe = at(OFlags::PATH)?;
    let before = rustix::fs::fstat(&probe).map_err(OpenError::Errno)?;
    let kind = FileType::from_raw_mode(before.st_mode);
    if kind != FileType::RegularFile {
        return Err(OpenError::NotRegular(kind));
    }
    // Non-blocking even now: should the name have been swapped for a FIFO since the
    // probe, the open returns at once and the inode check below refuses it.
    let fd = at(OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY)?;
    let after = rustix::fs::fstat(&fd).map_err(OpenError::Errno)?;
    let kind = FileType::from_raw_mode(after.st_mode);
    if kind != FileType::RegularFile
        || (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino)
    {
        return Err(OpenError::NotRegular(kind));
    }
    Ok((fd, u64::try_from(after.st_size).unwrap_or(0)))
}

/// Why a capped read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading: {0}")]
    Io(#[source] std::io::Error),
    /// The file holds more than the cap.
    #[error("larger than {limit} bytes")]
    TooLarge { limit: u64 },
}

/// Reads a whole file opened by [`open_regular`] whose `size` fstat gave, refusing one
/// larger than `limit` before reading (by its size) and while reading (a file that
/// grows meanwhile).
pub fn read_capped(fd: OwnedFd, size: u64, limit: u64) -> Result<Vec<u8>, ReadError> {
    if size > limit {
        return Err(ReadError::TooLarge { limit });
    }
    let mut out = Vec::new();
    std::fs::File::from(fd)
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(ReadError::Io)?;
    if out.len() as u64 > limit {
        return Err(ReadError::TooLarge { limit });
    }
    Ok(out)
}
