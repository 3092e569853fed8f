//! The few syscalls init makes that neither nix nor std wrap. Every `unsafe` block in
//! init lives here.

pub mod blkpg;
pub mod btrfs;
pub mod child;
pub mod dm;
pub mod fdpass;

use std::os::fd::{AsFd, AsRawFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

/// Sets IFF_UP on a network interface (SIOCGIFFLAGS, then SIOCSIFFLAGS with the bit
/// added), as `ip link set NAME up` does for loopback. Netlink would do too, but this is
/// three calls and needs no message building.
pub fn set_link_up(name: &str) -> Result<(), Errno> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let mut req = ifreq_for(name)?;
    // SAFETY: `sock` is an open socket owned by this function; `req` is a fully
    // initialised `ifreq` that lives across the call, which is what SIOCGIFFLAGS reads
    // (the name) and writes (the flags union member).
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    Errno::result(rc)?;
    // SAFETY: SIOCGIFFLAGS succeeded, so the kernel wrote `ifru_flags`, the member read.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    // IFF_UP is 0x1: it fits the kernel's `short` flags field.
    let up = flags | libc::c_short::try_from(libc::IFF_UP).map_err(|_| Errno::EOVERFLOW)?;
    req.ifr_ifru.ifru_flags = up;
    // SAFETY: as above; SIOCSIFFLAGS reads the name and `ifru_flags` we just set.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    Errno::result(rc).map(drop)
}

/// Whether `fd` is an open file descriptor of this process.
pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor table entry; an unused number gives
    // EBADF, no memory is touched.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// dup2(file, target): makes `target` (0, 1 or 2 at boot) refer to `file`.
pub fn dup_onto(file: &impl AsFd, target: RawFd) -> Result<(), Errno> {
    // SAFETY: the source is a live descriptor borrowed for the call; dup2 only changes
    // the descriptor table, and `target` is a standard stream nothing in init owns as
    // an OwnedFd (it was closed, which is why we are filling it).
    let rc = unsafe { libc::dup2(file.as_fd().as_raw_fd(), target) };
    Errno::result(rc).map(drop)
}

/// An `ifreq` naming `name`, NUL-terminated; names longer than IFNAMSIZ-1 are EINVAL.
fn ifreq_for(name: &str) -> Result<libc::ifreq, Errno> {
    // SAFETY: `ifreq` is plain old data (arrays and a union of integers and
    // sockaddrs), for which all-zero bytes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() || bytes.contains(&0) {
        return Err(Errno::EINVAL);
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = libc::c_char::from_ne_bytes([*src]);
    }
    Ok(req)
}

/// Whether something listens on the unix stream socket at `path`. The connect is
/// non-blocking, so a full backlog (EAGAIN: it listens, just busy) cannot stall PID 1.
pub fn unix_socket_listens(path: &std::path::Path) -> bool {
    use nix::sys::socket::{connect, UnixAddr};
    let Ok(addr) = UnixAddr::new(path) else {
        return false;
    };
    let Ok(sock) = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    ) else {
        return false;
    };
    matches!(
        connect(sock.as_raw_fd(), &addr),
        Ok(()) | Err(Errno::EAGAIN) | Err(Errno::EINPROGRESS)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_overlong_interface_names() {
        assert_eq!(
            ifreq_for("a-name-that-is-too-long").err(),
            Some(Errno::EINVAL)
        );
        assert!(ifreq_for("lo").is_ok());
    }
}
