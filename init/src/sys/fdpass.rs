//! Receiving descriptors sent as SCM_RIGHTS (the fd store of the notify protocol).

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

/// Descriptors accepted in one message; more are closed by the kernel (MSG_CTRUNC).
const MAX_FDS: usize = 64;

/// One datagram into `buf` and the descriptors that came with it (close-on-exec);
/// `None` when nothing is waiting or the read failed.
pub fn recv_with_fds(socket: &UnixDatagram, buf: &mut [u8]) -> Option<(usize, Vec<OwnedFd>)> {
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
    .ok()?;
    let mut fds = Vec::new();
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: SCM_RIGHTS installed these descriptors in our table just now;
                // nothing else owns them.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
    }
    Some((msg.bytes, fds))
}
