//! Init's fd store, from the service's side (systemd's sd_notify protocol, which init
//! speaks): `FDSTORE=1` + `FDNAME=` with the descriptors as SCM_RIGHTS keeps them in
//! init while the daemon is away; `FDSTOREREMOVE=1` drops them; at the next start they
//! come back as fds 3.. named by `LISTEN_FDNAMES`. The daemon keeps each container's
//! log pipes (their read ends) there, so a daemon restart loses no output and no
//! container ever writes into a pipe with no reader.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};

/// The first fd a service receives (SD_LISTEN_FDS_START).
const LISTEN_FDS_START: i32 = 3;

/// The notify socket init gave us, if any.
pub struct Notifier {
    socket: UnixDatagram,
    addr: UnixAddr,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; `None` when not run by init (then nothing is kept).
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let addr = UnixAddr::new(std::path::Path::new(&path)).ok()?;
        let socket = UnixDatagram::unbound().ok()?;
        Some(Notifier { socket, addr })
    }

    fn send(&self, text: &str, fds: &[BorrowedFd<'_>]) -> Result<(), String> {
        let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let cmsgs = if raw.is_empty() {
            vec![]
        } else {
            vec![ControlMessage::ScmRights(&raw)]
        };
        sendmsg(
            self.socket.as_raw_fd(),
            &[IoSlice::new(text.as_bytes())],
            &cmsgs,
            MsgFlags::empty(),
            Some(&self.addr),
        )
        .map(|_| ())
        .map_err(|e| format!("notify socket: {e}"))
    }

    /// Keeps `fds` in init under `name` (replacing what was kept under it).
    pub fn store(&self, name: &str, fds: &[BorrowedFd<'_>]) -> Result<(), String> {
        self.remove(name)?;
        self.send(&format!("FDSTORE=1\nFDNAME={name}\n"), fds)
    }

    pub fn remove(&self, name: &str) -> Result<(), String> {
        self.send(&format!("FDSTOREREMOVE=1\nFDNAME={name}\n"), &[])
    }

    pub fn ready(&self) -> Result<(), String> {
        self.send("READY=1\n", &[])
    }
}

/// The fds init handed over at start (`LISTEN_FDS`, `LISTEN_FDNAMES`), each with its
/// name, marked close-on-exec; the variables are removed so no child sees them.
///
/// # Safety
/// The process must be single-threaded (call it first thing in `main`): it changes the
/// environment, which another thread may be reading, and it takes ownership of fds 3...
/// by number, which no other part of the process may own or have closed and reused.
pub unsafe fn take_listen_fds() -> Vec<(String, OwnedFd)> {
    let count: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    // SAFETY: the caller guarantees a single-threaded process (this function's contract),
    // so nothing reads the environment concurrently.
    unsafe {
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
        std::env::remove_var("LISTEN_PID");
    }
    let mut names = names.split(':');
    let mut out = Vec::new();
    for raw in LISTEN_FDS_START..LISTEN_FDS_START.saturating_add(count.clamp(0, 4096)) {
        let name = names.next().unwrap_or("").to_string();
        // Only an fd that is open is taken: a bogus count must not adopt unrelated numbers.
        if std::fs::symlink_metadata(format!("/proc/self/fd/{raw}")).is_err() {
            continue;
        }
        // SAFETY: init passed this fd to us for keeping (LISTEN_FDS says so, and it is
        // open); the caller guarantees nothing else in the process owns it (this
        // function's contract), so the OwnedFd becomes its owner.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let _ = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC);
        out.push((name, fd));
    }
    out
}
