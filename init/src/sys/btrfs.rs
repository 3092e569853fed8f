//! The two btrfs ioctls first-boot storage needs: create a subvolume, and grow the
//! filesystem to its device. Layout from linux/btrfs.h (`struct btrfs_ioctl_vol_args`:
//! an s64 fd and a 4088-byte name).

use std::fs::File;
use std::os::fd::AsRawFd;

use nix::errno::Errno;

const BTRFS_IOCTL_MAGIC: u8 = 0x94;
const BTRFS_PATH_NAME_MAX: usize = 4087;

#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; BTRFS_PATH_NAME_MAX + 1],
}

/// Creates subvolume `name` inside the directory `parent` (on a mounted btrfs).
pub fn create_subvolume(parent: &File, name: &str) -> Result<(), Errno> {
    // BTRFS_IOC_SUBVOL_CREATE = _IOW(0x94, 14, struct btrfs_ioctl_vol_args)
    call(
        parent,
        nix::request_code_write!(BTRFS_IOCTL_MAGIC, 14, std::mem::size_of::<VolArgs>()),
        name,
    )
}

/// Grows (or shrinks) the filesystem `mount` is on to fill its device ("max").
pub fn resize_to_max(mount: &File) -> Result<(), Errno> {
    // BTRFS_IOC_RESIZE = _IOW(0x94, 3, struct btrfs_ioctl_vol_args)
    call(
        mount,
        nix::request_code_write!(BTRFS_IOCTL_MAGIC, 3, std::mem::size_of::<VolArgs>()),
        "max",
    )
}

fn call(dir: &File, request: libc::c_ulong, name: &str) -> Result<(), Errno> {
    if name.len() > BTRFS_PATH_NAME_MAX || name.as_bytes().contains(&0) {
        return Err(Errno::ENAMETOOLONG);
    }
    let mut args = Box::new(VolArgs {
        fd: 0,
        name: [0; BTRFS_PATH_NAME_MAX + 1],
    });
    args.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: the request takes a btrfs_ioctl_vol_args, which `args` is (repr(C), boxed
    // and alive across the call); the fd is an open directory on the filesystem.
    let rc = unsafe { libc::ioctl(dir.as_raw_fd(), request, &raw mut *args) };
    Errno::result(rc).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vol_args_is_4096_bytes() {
        assert_eq!(std::mem::size_of::<VolArgs>(), 4096);
    }
}
