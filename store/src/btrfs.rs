//! The btrfs ioctls the store needs: create, snapshot, delete a subvolume and make one
//! read-only. Hand-written (crates.md: libbtrfsutil is LGPL C); layouts and numbers
//! from linux/btrfs.h: `struct btrfs_ioctl_vol_args { __s64 fd; char name[4088]; }` and
//! `struct btrfs_ioctl_vol_args_v2`, both 4096 bytes, with the name at offset 8 and 56.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::io::Errno;

/// statfs(2)'s f_type for btrfs (linux/magic.h).
pub const SUPER_MAGIC: i64 = 0x9123_683e;

// _IOW(0x94, nr, size): (1 << 30) | (size << 16) | (0x94 << 8) | nr.
const IOC_SUBVOL_CREATE: libc::c_ulong = 0x5000_940e; // nr 14, vol_args
const IOC_SNAP_DESTROY: libc::c_ulong = 0x5000_940f; // nr 15, vol_args
const IOC_SNAP_CREATE_V2: libc::c_ulong = 0x5000_9417; // nr 23, vol_args_v2
const IOC_SUBVOL_SETFLAGS: libc::c_ulong = 0x4008_941a; // nr 26, __u64
const SUBVOL_RDONLY: u64 = 1 << 1;

const ARGS_SIZE: usize = 4096;
const V1_NAME_AT: usize = 8;
const V2_NAME_AT: usize = 56;

/// The argument block with `fd` at offset 0 and `name` NUL-terminated at `name_at`.
fn args(fd: i64, name: &OsStr, name_at: usize) -> Result<Box<[u8; ARGS_SIZE]>, Errno> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.contains(&b'/') || bytes.len() >= ARGS_SIZE - name_at {
        return Err(Errno::INVAL);
    }
    let mut a = Box::new([0u8; ARGS_SIZE]);
    a[..8].copy_from_slice(&fd.to_ne_bytes());
    a[name_at..name_at + bytes.len()].copy_from_slice(bytes);
    Ok(a)
}

/// ioctl(2) on `dir`.
///
/// # Safety
///
/// `arg` must point to memory the kernel may read and write as `request`'s argument:
/// at least as many bytes as the size encoded in `request` (ARGS_SIZE for the
/// vol_args requests, 8 for IOC_SUBVOL_SETFLAGS), laid out as that request expects,
/// and valid and not otherwise borrowed for the whole call.
unsafe fn ioctl(
    dir: BorrowedFd<'_>,
    request: libc::c_ulong,
    arg: *mut libc::c_void,
) -> Result<(), Errno> {
    // SAFETY: `dir` is an open descriptor (BorrowedFd); `arg` meets `request`'s needs by
    // this function's own precondition, which its callers uphold.
    let rc = unsafe { libc::ioctl(dir.as_raw_fd(), request, arg) };
    if rc < 0 {
        Err(Errno::from_raw_os_error(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        ))
    } else {
        Ok(())
    }
}

/// A new, empty subvolume `name` in the directory `parent`.
pub fn create_subvolume(parent: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    let mut a = args(0, name, V1_NAME_AT)?;
    // SAFETY: `a` is an ARGS_SIZE-byte btrfs_ioctl_vol_args (fd at 0, NUL-terminated
    // name at V1_NAME_AT), the size IOC_SUBVOL_CREATE encodes, owned here for the call.
    unsafe { ioctl(parent, IOC_SUBVOL_CREATE, a.as_mut_ptr().cast()) }
}

/// A writable snapshot of the subvolume open at `source`, as `name` in `parent`.
pub fn snapshot(source: BorrowedFd<'_>, parent: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    let mut a = args(i64::from(source.as_raw_fd()), name, V2_NAME_AT)?;
    // SAFETY: `a` is an ARGS_SIZE-byte btrfs_ioctl_vol_args_v2 (source fd at 0, flags
    // and the rest zero, NUL-terminated name at V2_NAME_AT), the size IOC_SNAP_CREATE_V2
    // encodes, owned here for the call.
    unsafe { ioctl(parent, IOC_SNAP_CREATE_V2, a.as_mut_ptr().cast()) }
}

/// Deletes the subvolume `name` in `parent`, with everything in it.
pub fn delete_subvolume(parent: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    let mut a = args(0, name, V1_NAME_AT)?;
    // SAFETY: `a` is an ARGS_SIZE-byte btrfs_ioctl_vol_args (NUL-terminated name at
    // V1_NAME_AT), the size IOC_SNAP_DESTROY encodes, owned here for the call.
    unsafe { ioctl(parent, IOC_SNAP_DESTROY, a.as_mut_ptr().cast()) }
}

/// Makes the subvolume open at `subvol` read-only.
pub fn set_read_only(subvol: BorrowedFd<'_>) -> Result<(), Errno> {
    let mut flags: u64 = SUBVOL_RDONLY;
    // SAFETY: `flags` is the __u64 IOC_SUBVOL_SETFLAGS encodes (size 8), a local alive
    // and exclusively borrowed for the call.
    unsafe {
        ioctl(
            subvol,
            IOC_SUBVOL_SETFLAGS,
            std::ptr::from_mut(&mut flags).cast(),
        )
    }
}

/// Whether `dir` is on btrfs.
pub fn is_btrfs(dir: BorrowedFd<'_>) -> bool {
    rustix::fs::fstatfs(dir).is_ok_and(|st| st.f_type == SUPER_MAGIC)
}

/// Whether `dir` is the root of a btrfs subvolume (inode 256, BTRFS_FIRST_FREE_OBJECTID).
pub fn is_subvolume(dir: BorrowedFd<'_>) -> bool {
    is_btrfs(dir) && rustix::fs::fstat(dir).is_ok_and(|st| st.st_ino == 256)
}
