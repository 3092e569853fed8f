//! BLKPG: telling the kernel about a partition added or resized on a disk that is in use
//! (the root is open, so BLKRRPART's whole-table reread fails with EBUSY). Layout from
//! linux/blkpg.h.

use std::fs::File;
use std::os::fd::AsRawFd;

use nix::errno::Errno;

/// `_IO(0x12, 105)`
const BLKPG: libc::c_ulong = 0x1269;
const BLKPG_ADD_PARTITION: i32 = 1;
const BLKPG_RESIZE_PARTITION: i32 = 3;

#[repr(C)]
struct BlkpgIoctlArg {
    op: i32,
    flags: i32,
    datalen: i32,
    data: *mut BlkpgPartition,
}

#[repr(C)]
struct BlkpgPartition {
    /// Bytes.
    start: i64,
    /// Bytes.
    length: i64,
    pno: i32,
    devname: [u8; 64],
    volname: [u8; 64],
}

pub fn add_partition(disk: &File, number: u32, start: u64, length: u64) -> Result<(), Errno> {
    call(disk, BLKPG_ADD_PARTITION, number, start, length)
}

pub fn resize_partition(disk: &File, number: u32, start: u64, length: u64) -> Result<(), Errno> {
    call(disk, BLKPG_RESIZE_PARTITION, number, start, length)
}

fn call(disk: &File, op: i32, number: u32, start: u64, length: u64) -> Result<(), Errno> {
    let mut part = BlkpgPartition {
        start: i64::try_from(start).map_err(|_| Errno::EINVAL)?,
        length: i64::try_from(length).map_err(|_| Errno::EINVAL)?,
        pno: i32::try_from(number).map_err(|_| Errno::EINVAL)?,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut arg = BlkpgIoctlArg {
        op,
        flags: 0,
        datalen: i32::try_from(std::mem::size_of::<BlkpgPartition>()).map_err(|_| Errno::EINVAL)?,
        data: &raw mut part,
    };
    // SAFETY: BLKPG takes a blkpg_ioctl_arg whose `data` points at a blkpg_partition of
    // `datalen` bytes; both are live locals for the whole call, and the fd is an open
    // whole-disk block device.
    let rc = unsafe { libc::ioctl(disk.as_raw_fd(), BLKPG, &raw mut arg) };
    Errno::result(rc).map(drop)
}
