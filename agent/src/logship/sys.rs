//! The one system call the forwarder makes that no safe wrapper covers.

use std::os::fd::{AsRawFd, BorrowedFd};

// SIOCOUTQ (= TIOCOUTQ) on a TCP socket: bytes in its send queue, sent or not, that
// the peer has not acknowledged (tcp(7)).
nix::ioctl_read_bad!(siocoutq, nix::libc::TIOCOUTQ, nix::libc::c_int);

/// Bytes the peer has not acknowledged yet.
pub fn unsent_bytes(socket: BorrowedFd<'_>) -> Result<u64, nix::Error> {
    let mut n: nix::libc::c_int = 0;
    // SAFETY: `socket` is an open TCP socket for the call's length, and the ioctl
    // writes one c_int to the pointer, which points at `n`.
    unsafe { siocoutq(socket.as_raw_fd(), &mut n) }?;
    Ok(u64::try_from(n).unwrap_or(0))
}
