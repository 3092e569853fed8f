//! Berth's control API, shared by the daemons that serve it and `berthctl`.
//!
//! Each daemon serves one D-Bus interface, peer to peer (no bus daemon), on a root-only
//! unix socket under `/run/berth/`: init serves `org.berth.Init1` on `init.sock`. From
//! outside the guest the same conversation runs over a virtio-serial port named
//! `org.berth.control`, which init bridges to its interface.

use std::os::unix::net::UnixStream;
use std::path::Path;

use serde::{Deserialize, Serialize};
use zbus::connection::{AuthMechanism, Builder};
use zbus::Type;

pub use zbus;

pub const INIT_SOCKET: &str = "/run/berth/init.sock";
pub const INIT_PATH: &str = "/org/berth/Init";
/// The virtio-serial port name the host side reaches init's interface through.
pub const CONTROL_PORT: &str = "org.berth.control";

/// One service as init sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct ServiceStatus {
    pub name: String,
    /// inactive, waiting, starting, ready, stopping, restarting, failed.
    pub state: String,
    /// 0 when not running.
    pub pid: u32,
    pub restarts: u32,
    /// "exited with status 1", "killed by SIGKILL", or empty.
    pub last_exit: String,
    /// The service's own `STATUS=` line (sd_notify).
    pub status: String,
    /// When it entered its state, in milliseconds since the kernel started.
    pub since_ms: u64,
    pub autostart: bool,
    pub delegate: bool,
    pub stored_fds: u32,
    pub pending_exits: u32,
}

/// A process that ended in a service's delegated cgroup subtree after being re-parented
/// to init (a container whose runtime was away).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct ExitRecord {
    pub pid: i32,
    /// Exit code when it exited, else 0.
    pub code: i32,
    /// The signal that killed it, else 0.
    pub signal: i32,
    /// Milliseconds since the kernel started.
    pub at_ms: u64,
}

/// One step of the boot: its name and when it ended, in milliseconds since the kernel
/// started (so the steps are the differences).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct BootPhase {
    pub name: String,
    pub end_ms: u64,
}

/// A piece of a service's log: `text` from `offset`, and where the next read starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct LogChunk {
    pub text: String,
    pub next_offset: u64,
}

// Peer to peer there is no bus to route by name; the destination is only a label.
#[zbus::proxy(
    interface = "org.berth.Init1",
    default_service = "org.berth.Init1",
    default_path = "/org/berth/Init"
)]
pub trait Init {
    /// Every service with its state.
    fn services(&self) -> zbus::Result<Vec<ServiceStatus>>;
    fn start(&self, name: &str) -> zbus::Result<()>;
    fn stop(&self, name: &str) -> zbus::Result<()>;
    fn restart(&self, name: &str) -> zbus::Result<()>;
    fn reboot(&self) -> zbus::Result<()>;
    fn power_off(&self) -> zbus::Result<()>;
    /// The boot's phases, in order.
    fn boot_timeline(&self) -> zbus::Result<Vec<BootPhase>>;
    /// `tail_lines` > 0: the last lines of the log (offset ignored); else the bytes from
    /// `offset` (at most 64 KiB). A rotated file restarts at 0.
    fn read_log(&self, name: &str, offset: u64, tail_lines: u32) -> zbus::Result<LogChunk>;
    /// For a service: the exit statuses init kept for it (each handed out once). Only a
    /// process of that service may ask.
    fn take_exit_statuses(&self) -> zbus::Result<Vec<ExitRecord>>;
}

/// A client connection over an already connected stream (the unix socket, or a bridge
/// to the virtio-serial port).
/// Authentication is ANONYMOUS: who may talk is decided by the socket (root only, the
/// server checks the peer's uid) or by who holds the VM's control port on the host.
/// A call that gets no answer in [`CALL_TIMEOUT`] fails instead of hanging.
pub async fn client(stream: UnixStream) -> zbus::Result<zbus::Connection> {
    Builder::unix_stream(stream)
        .p2p()
        .auth_mechanism(AuthMechanism::Anonymous)
        .method_timeout(CALL_TIMEOUT)
        .build()
        .await
}

/// How long a client waits for an answer to one call.
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Connects to a daemon's socket, e.g. [`INIT_SOCKET`].
pub async fn connect(path: &Path) -> zbus::Result<zbus::Connection> {
    let stream = UnixStream::connect(path)
        .map_err(|e| zbus::Error::Failure(format!("connecting to {}: {e}", path.display())))?;
    client(stream).await
}
