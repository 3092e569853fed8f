//! The container's terminal (process.terminal): a pty made from the container's own
//! devpts once it is the root, its master sent to the caller's console socket as
//! SCM_RIGHTS (with the slave's name as the message, as runc does), its slave made the
//! process's stdin, stdout, stderr and controlling terminal.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use nix::sys::stat::Mode;

use crate::error::{io, sys, Result};

/// Connects to the console socket; done before pivot_root, while its path resolves.
pub fn connect(socket: &Path) -> Result<UnixStream> {
    UnixStream::connect(socket).map_err(io(socket))
}

/// Makes the pty, hands its master over `socket`, and puts the slave on 0, 1, 2.
pub fn setup(socket: UnixStream, size: Option<&oci_spec::runtime::Box>) -> Result<()> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(sys("opening /dev/ptmx"))?;
    grantpt(&master).map_err(sys("grantpt"))?;
    unlockpt(&master).map_err(sys("unlockpt"))?;
    let name = ptsname_r(&master).map_err(sys("ptsname"))?;
    let slave: OwnedFd = nix::fcntl::open(
        Path::new(&name),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys(format!("opening {name}")))?;
    if let Some(b) = size {
        let rows = u16::try_from(b.height()).unwrap_or(u16::MAX);
        let cols = u16::try_from(b.width()).unwrap_or(u16::MAX);
        crate::sys::set_window_size(slave.as_fd(), rows, cols).map_err(sys("TIOCSWINSZ"))?;
    }
    let fds = [master.as_raw_fd()];
    sendmsg::<()>(
        socket.as_raw_fd(),
        &[IoSlice::new(name.as_bytes())],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(sys("sending the terminal to the console socket"))?;
    drop(master);
    drop(socket);
    crate::sys::onto_stdio(slave.as_fd()).map_err(sys("dup2 of the terminal"))?;
    crate::sys::set_controlling_tty(slave.as_fd()).map_err(sys("TIOCSCTTY"))?;
    Ok(())
}
