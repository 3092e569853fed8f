//! The sd_notify protocol (systemd's `sd_notify(3)`): each service gets a datagram socket
//! in `$NOTIFY_SOCKET` and sends `KEY=VALUE` lines. Init understands `READY=1`,
//! `STATUS=...`, `STOPPING=1`, and the fd store: `FDSTORE=1` with `FDNAME=name` and the
//! descriptors as SCM_RIGHTS, `FDSTOREREMOVE=1` with `FDNAME=name`. Stored descriptors
//! come back at the next start as fds 3.. with `LISTEN_FDS` and `LISTEN_FDNAMES`.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

/// systemd's limit on one message is far larger; ours fit in a page.
const MAX_MESSAGE: usize = 4096;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Message {
    pub ready: bool,
    pub stopping: bool,
    pub status: Option<String>,
    pub fdstore: bool,
    pub fdstore_remove: bool,
    pub fdname: Option<String>,
}

impl Message {
    pub fn parse(text: &str) -> Self {
        let mut m = Message::default();
        for line in text.lines() {
            match line.split_once('=') {
                Some(("READY", "1")) => m.ready = true,
                Some(("STOPPING", "1")) => m.stopping = true,
                Some(("STATUS", s)) => m.status = Some(s.to_string()),
                Some(("FDSTORE", "1")) => m.fdstore = true,
                Some(("FDSTOREREMOVE", "1")) => m.fdstore_remove = true,
                Some(("FDNAME", n)) => m.fdname = Some(n.to_string()),
                _ => {}
            }
        }
        m
    }
}

/// An fd name as systemd allows it: printable, no colon (LISTEN_FDNAMES separator).
pub fn valid_fd_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name.chars().all(|c| c.is_ascii_graphic() && c != ':')
}

pub struct NotifySocket {
    socket: UnixDatagram,
    pub path: PathBuf,
}

impl NotifySocket {
    /// Binds `dir/<name>` (replacing a stale one), non-blocking.
    pub fn bind(dir: &Path, name: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path)?;
        socket.set_nonblocking(true)?;
        Ok(Self { socket, path })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// The next waiting message and the descriptors that came with it.
    pub fn receive(&self) -> Option<(Message, Vec<OwnedFd>)> {
        let mut buf = [0u8; MAX_MESSAGE];
        let (len, fds) = crate::sys::fdpass::recv_with_fds(&self.socket, &mut buf)?;
        let text = String::from_utf8_lossy(buf.get(..len).unwrap_or_default()).into_owned();
        Some((Message::parse(&text), fds))
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;

    #[test]
    fn parses_keys() {
        let m = Message::parse("READY=1\nSTATUS=up and running\nFDSTORE=1\nFDNAME=log-abc\nX=1\n");
        assert!(m.ready && m.fdstore && !m.fdstore_remove);
        assert_eq!(m.status.as_deref(), Some("up and running"));
        assert_eq!(m.fdname.as_deref(), Some("log-abc"));
        assert!(valid_fd_name("log-abc") && !valid_fd_name("a:b") && !valid_fd_name(""));
    }

    #[test]
    fn receives_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        let sock = NotifySocket::bind(dir.path(), "svc").unwrap();
        assert!(sock.receive().is_none());
        let client = UnixDatagram::unbound().unwrap();
        client.connect(&sock.path).unwrap();
        let (r, _w) = nix::unistd::pipe().unwrap();
        let fds = [r.as_raw_fd()];
        let body = b"FDSTORE=1\nFDNAME=pipe";
        sendmsg::<()>(
            client.as_raw_fd(),
            &[IoSlice::new(body)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let (m, got) = sock.receive().unwrap();
        assert!(m.fdstore);
        assert_eq!(m.fdname.as_deref(), Some("pipe"));
        assert_eq!(got.len(), 1);
        assert_ne!(got[0].as_raw_fd(), r.as_raw_fd());
    }
}
