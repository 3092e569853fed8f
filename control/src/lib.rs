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

pub mod events;
pub use events::Event;

pub const INIT_SOCKET: &str = "/run/berth/init.sock";
pub const INIT_PATH: &str = "/org/berth/Init";
/// The virtio-serial port name the host side reaches init's interface through.
pub const CONTROL_PORT: &str = "org.berth.control";

/// What a host client of the control port sends before its D-Bus hello to talk to the
/// container daemon (`org.berth.Runtime1`) instead of init: init then bridges the port
/// to the daemon's socket for that session.
pub const ROUTE_RUNTIME: &[u8] = b"BERTH-ROUTE runtime\n";
/// The same, to the config agent (`org.berth.Agent1`).
pub const ROUTE_AGENT: &[u8] = b"BERTH-ROUTE agent\n";

/// The connection to a VM's control port at `path` (its host socket), routed to the
/// daemon or the agent when `route` is one of the ROUTE_ lines (empty: init).
pub async fn vm_client(path: &Path, route: &[u8]) -> zbus::Result<zbus::Connection> {
    use std::io::Write;
    let mut stream = UnixStream::connect(path).map_err(|e| {
        zbus::Error::Failure(format!(
            "connecting to the VM's control port {}: {e}",
            path.display()
        ))
    })?;
    stream
        .write_all(route)
        .map_err(|e| zbus::Error::Failure(format!("{}: {e}", path.display())))?;
    client(stream).await
}

/// One service as init sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct ServiceStatus {
    pub name: String,
    /// inactive, waiting, starting, ready, stopping, restarting, failed, done (exited 0
    /// by itself and not restarted).
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

/// One of Berth's own processes and what it holds in memory (`berthctl memory`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct ProcessMemory {
    /// The service it runs in, or `init`.
    pub service: String,
    pub pid: u32,
    pub command: String,
    /// Resident, counting shared pages whole.
    pub rss_kb: u64,
    /// Resident, each shared page divided among the processes mapping it: these add up.
    pub pss_kb: u64,
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
    /// The boot slots (A, then B). Fails with `org.freedesktop.DBus.Error.NotSupported`
    /// on a machine that was not booted through the slots' bootloader.
    fn slots(&self) -> zbus::Result<Vec<SlotStatus>>;
    /// An update is about to write the slot that did not boot: it is marked so (never
    /// booted or rolled back to) until offered. Returns its name. Refused on a trial.
    fn claim_slot(&self) -> zbus::Result<String>;
    /// The claimed slot was written whole: it boots next, on trial with `tries` tries.
    fn offer_slot(&self, tries: u8) -> zbus::Result<()>;
    /// Makes the slot that did not boot the next boot and reboots: on a trial boot,
    /// the trial ends as failed; else the other slot must hold a good version.
    fn rollback(&self) -> zbus::Result<()>;
    /// Starts the updater service on `request` (its id is set by init); returns the id
    /// its status will carry. Refused while an update runs.
    fn update_start(&self, request: &UpdateRequest) -> zbus::Result<u64>;
    /// What the updater is doing or last did (`idle` before any request this boot).
    fn update_status(&self) -> zbus::Result<UpdateStatus>;
    /// The events init keeps (services', and those Berth's parts record), numbered
    /// after `after`, oldest first.
    fn events(&self, after: u64) -> zbus::Result<Vec<Event>>;
    /// For Berth's own parts (the daemon, the updater): adds events to init's ring, in
    /// order (a batch per call: a hundred containers starting make one call, not two
    /// hundred).
    fn record_events(&self, events: &[Event]) -> zbus::Result<()>;
    /// Init's and every service's processes, with their RSS and PSS (containers left
    /// out).
    fn memory(&self) -> zbus::Result<Vec<ProcessMemory>>;
}

/// Where `berth-updater` keeps what an update is doing or last did (tmpfs: a reboot
/// starts idle again).
pub const UPDATE_STATUS: &str = "/run/berth/update.json";

/// Where init leaves the request the `berth-updater` service carries out.
pub const UPDATE_REQUEST: &str = "/run/berth/update-request.json";
/// The service init starts for each request.
pub const UPDATER_SERVICE: &str = "berth-updater";

/// What an operator asked of the updater (`berthctl update check|apply`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Type)]
#[serde(default)]
pub struct UpdateRequest {
    /// check, apply.
    pub action: String,
    /// A registry reference (`REGISTRY/REPOSITORY:TAG`), or an absolute path on the
    /// machine (an OCI layout directory or an oci-archive).
    pub source: String,
    pub allow_downgrade: bool,
    /// Set by init: the status answering this request carries it.
    pub id: u64,
}

/// What an update is doing or last did, as `berth-updater` writes it to
/// [`UPDATE_STATUS`] at each step and as the root is written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Type)]
#[serde(default)]
pub struct UpdateStatus {
    /// The request this answers (0: none yet).
    pub id: u64,
    /// idle, checking, available (a check found a newer version), up-to-date, applying,
    /// applied (a trial waits for the next reboot), failed.
    pub state: String,
    /// While applying: claim, root, read-back, kernel, initramfs, boot-config,
    /// slot-info, offer.
    pub step: String,
    /// The payload's version (empty before it was read).
    pub version: String,
    /// Where it came from.
    pub source: String,
    /// The slot written.
    pub slot: String,
    /// Bytes of the step done, and of the step in all (0 for a step without a size).
    pub done: u64,
    pub total: u64,
    /// Why the last update failed, else empty.
    pub error: String,
    /// When the state was written, in seconds since the epoch.
    pub at: u64,
}

impl UpdateStatus {
    /// Whether the request it answers is over (as it went, or failed).
    pub fn is_final(&self) -> bool {
        matches!(
            self.state.as_str(),
            "available" | "up-to-date" | "applied" | "failed"
        )
    }
}

/// Follows the update request `id` (from [`InitProxy::update_start`]) to its end:
/// `seen` hears each status of it as it goes. Fails when the updater service stopped
/// without answering it (killed, or crashed before its first status), and after
/// `patience`.
pub async fn wait_update(
    init: &InitProxy<'_>,
    id: u64,
    patience: std::time::Duration,
    mut seen: impl FnMut(&UpdateStatus),
) -> Result<UpdateStatus, String> {
    let text = |e: zbus::Error| match e {
        zbus::Error::MethodError(_, Some(msg), _) => msg,
        other => other.to_string(),
    };
    let started = std::time::Instant::now();
    loop {
        let s = init.update_status().await.map_err(text)?;
        if s.id == id {
            seen(&s);
            if s.is_final() {
                // The answer is written just before the process exits: wait (briefly) for
                // init to see it gone, so a request right after this one is not refused
                // as "already running".
                for _ in 0..50 {
                    let services = init.services().await.map_err(text)?;
                    if updater_stopped(&services) {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                return Ok(s);
            }
        }
        // Past a grace period (init publishes service states on its loop's next turn),
        // a stopped service with no answer will not answer.
        if started.elapsed() > std::time::Duration::from_secs(5) {
            let services = init.services().await.map_err(text)?;
            let stopped = updater_stopped(&services);
            let again = init.update_status().await.map_err(text)?;
            if stopped && !(again.id == id && again.is_final()) {
                return Err(format!(
                    "{UPDATER_SERVICE} stopped without finishing update {id} (berthctl service logs {UPDATER_SERVICE})"
                ));
            }
        }
        if started.elapsed() > patience {
            return Err(format!(
                "update {id}: no end after {} s",
                patience.as_secs()
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

fn updater_stopped(services: &[ServiceStatus]) -> bool {
    services
        .iter()
        .find(|x| x.name == UPDATER_SERVICE)
        .is_none_or(|x| matches!(x.state.as_str(), "inactive" | "done" | "failed"))
}

/// One boot slot (a root partition and its kernel, initramfs and command line on the
/// ESP) as init reads it from the bootloader's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct SlotStatus {
    /// `a` or `b`.
    pub slot: String,
    /// active (boots when nothing is on trial), trial, good (can be rolled back to),
    /// bad (lost its last trial), writing (claimed by an update), empty.
    pub state: String,
    /// Empty for an empty slot.
    pub version: String,
    pub build_id: String,
    pub root_hash: String,
    /// Boot attempts left while on trial, else 0.
    pub tries_left: u32,
    /// Why it went bad (`tries`, or `health: ...`), else empty.
    pub why: String,
    /// This boot came from it.
    pub booted: bool,
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

/// A root-only listening socket at `path`: its directory 0700, the socket 0600 (a stale
/// one from an earlier run replaced). Servers also check each peer's uid.
pub fn listen(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let _ = std::fs::remove_file(path);
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves `interface` at `object_path` to the one client on `stream`, until it hangs
/// up (peer to peer, ANONYMOUS: the socket decides who may talk). Blocks the calling
/// thread, which runs zbus's executor for this connection alone.
pub fn serve_one<I: zbus::object_server::Interface>(
    stream: UnixStream,
    object_path: &str,
    interface: I,
) -> zbus::Result<()> {
    zbus::block_on(async move {
        let conn = Builder::unix_stream(stream)
            .server(zbus::Guid::generate())
            .p2p()
            .auth_mechanism(AuthMechanism::Anonymous)
            .serve_at(object_path, interface)
            .build()
            .await?;
        conn.closed().await;
        Ok(())
    })
}

/// Accepts clients on `listener` for ever, each on its own thread serving a fresh
/// interface from `make` (given the peer's pid) at `object_path`; only root peers
/// (SO_PEERCRED) are served, others are refused and said. `who` names the server in
/// what it says.
pub fn serve_root_clients<I, F>(
    listener: std::os::unix::net::UnixListener,
    object_path: &'static str,
    who: &'static str,
    make: F,
) where
    I: zbus::object_server::Interface,
    F: Fn(i32) -> I,
{
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{who}: API: accept: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        let peer = match getsockopt(&stream, PeerCredentials) {
            Ok(c) if c.uid() == 0 => c.pid(),
            Ok(c) => {
                eprintln!("{who}: API: uid {} refused (root only)", c.uid());
                continue;
            }
            Err(e) => {
                eprintln!("{who}: API: peer credentials: {e}; refused");
                continue;
            }
        };
        let interface = make(peer);
        let spawned = std::thread::Builder::new()
            .name("api-conn".into())
            .spawn(move || {
                if let Err(e) = serve_one(stream, object_path, interface) {
                    eprintln!("{who}: API: connection: {e}");
                }
            });
        if let Err(e) = spawned {
            eprintln!("{who}: API: starting a connection thread: {e}");
        }
    }
}

/// How long a client waits for an answer to one call.
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Connects to a daemon's socket, e.g. [`INIT_SOCKET`].
pub async fn connect(path: &Path) -> zbus::Result<zbus::Connection> {
    let stream = UnixStream::connect(path)
        .map_err(|e| zbus::Error::Failure(format!("connecting to {}: {e}", path.display())))?;
    client(stream).await
}

/// The config agent's socket and object path (`org.berth.Agent1`).
pub const AGENT_SOCKET: &str = "/run/berth/agent.sock";
pub const AGENT_PATH: &str = "/org/berth/Agent";

/// The config agent: what it applied at this boot, from where, and what it skipped.
#[zbus::proxy(
    interface = "org.berth.Agent1",
    default_service = "org.berth.Agent1",
    default_path = "/org/berth/Agent"
)]
pub trait Agent {
    /// This boot's report as JSON: `source`, `instance_id`, `problems` (`errors` and
    /// `warnings`, each with `at` and `message`), `applied` (`item`, `ok`, `detail`).
    fn report(&self) -> zbus::Result<String>;
}

/// The container daemon's socket and object path (`org.berth.Runtime1`).
pub const RUNTIME_SOCKET: &str = "/run/berth/runtime.sock";
pub const RUNTIME_PATH: &str = "/org/berth/Runtime";

/// One declared container as the daemon sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct ContainerInfo {
    pub name: String,
    pub image: String,
    /// waiting, running, exited, failed, stopped.
    pub state: String,
    /// 0 when not running.
    pub pid: u32,
    pub restarts: u32,
    /// The last exit code (128+signal when killed), -1 when it has not exited.
    pub exit_code: i32,
    /// Why it could not be set up (state failed), else empty.
    pub error: String,
    /// RFC 3339, or empty when it never ran.
    pub started_at: String,
    /// `hostport:containerport/proto` as declared.
    pub ports: Vec<String>,
    pub network: String,
    /// Its address on the bridge, or empty.
    pub address: String,
    /// The declaration's file.
    pub source: String,
}

/// One image reference in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct ImageInfo {
    pub reference: String,
    /// The config digest (docker's image ID).
    pub id: String,
    /// Unpacked bytes.
    pub size: u64,
    /// When it was stored, seconds since the epoch.
    pub stored: u64,
}

/// A running container's resource use, from its cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct ContainerStats {
    pub name: String,
    pub cpu_usec: u64,
    pub memory_bytes: u64,
    /// 0 when unlimited.
    pub memory_limit: u64,
    pub pids: u64,
}

/// Where a pull started by `Pull` stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct PullStatus {
    pub reference: String,
    pub bytes_done: u64,
    /// 0 until the manifest is resolved.
    pub bytes_total: u64,
    pub finished: bool,
    /// Why it failed, else empty.
    pub error: String,
    /// The image ID once finished.
    pub id: String,
}

/// What a call to the daemon's API fails with: named D-Bus errors
/// (`org.berth.Error.NotFound`, ...), so that a client tells the cases apart by name,
/// never by parsing the text, and berthctl's exit code follows the name.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.berth.Error")]
pub enum ApiError {
    /// The connection or the protocol failed (not an answer of the daemon's).
    #[zbus(error)]
    ZBus(zbus::Error),
    /// No container, image or pull job by that name.
    NotFound(String),
    /// A container by that name exists already.
    AlreadyExists(String),
    /// The request itself is wrong: a declaration that does not parse, a bad reference.
    Invalid(String),
    /// Refused in the current state: running, in use, declared by a file.
    Busy(String),
    /// Not answered in time; the work may still be going on.
    Timeout(String),
    /// Anything else that went wrong while doing it (I/O, the store, the runtime).
    Failed(String),
}

impl ApiError {
    /// berthctl's exit code for this error (documented in docs/daemon.md): 1 for a
    /// failure, and one code for each kind a script may want to tell apart.
    pub fn exit_code(&self) -> u8 {
        match self {
            ApiError::ZBus(_) | ApiError::Failed(_) => 1,
            ApiError::NotFound(_) => 3,
            ApiError::AlreadyExists(_) => 4,
            ApiError::Invalid(_) => 5,
            ApiError::Busy(_) => 6,
            ApiError::Timeout(_) => 7,
        }
    }

    /// The daemon's words, without the D-Bus name.
    pub fn message(&self) -> String {
        match self {
            ApiError::ZBus(zbus::Error::MethodError(_, Some(msg), _)) => msg.clone(),
            ApiError::ZBus(e) => e.to_string(),
            ApiError::NotFound(m)
            | ApiError::AlreadyExists(m)
            | ApiError::Invalid(m)
            | ApiError::Busy(m)
            | ApiError::Timeout(m)
            | ApiError::Failed(m) => m.clone(),
        }
    }
}

#[zbus::proxy(
    interface = "org.berth.Runtime1",
    default_service = "org.berth.Runtime1",
    default_path = "/org/berth/Runtime"
)]
pub trait Runtime {
    /// Every declared container.
    fn containers(&self) -> Result<Vec<ContainerInfo>, ApiError>;
    /// Declares container `name` from a declaration (TOML, the format of
    /// `/etc/berth/containers.d`), kept under `/var/lib/berth`, and starts it.
    fn run(&self, name: &str, declaration: &str) -> Result<(), ApiError>;
    fn start(&self, name: &str) -> Result<(), ApiError>;
    /// Stops a container; it stays stopped until started (`unless-stopped`: across
    /// reboots too).
    fn stop(&self, name: &str) -> Result<(), ApiError>;
    fn restart(&self, name: &str) -> Result<(), ApiError>;
    /// Removes a container declared through the API (`force`: even when running).
    fn remove(&self, name: &str, force: bool) -> Result<(), ApiError>;
    /// Everything known about a container, as JSON.
    fn inspect(&self, name: &str) -> Result<String, ApiError>;
    /// As `Init1.ReadLog`, over the container's JSON-line log.
    fn read_log(&self, name: &str, offset: u64, tail_lines: u32) -> Result<LogChunk, ApiError>;
    fn stats(&self) -> Result<Vec<ContainerStats>, ApiError>;
    fn images(&self) -> Result<Vec<ImageInfo>, ApiError>;
    /// Starts pulling an image; returns the job to follow with `PullStatus`.
    fn pull(&self, reference: &str) -> Result<u32, ApiError>;
    fn pull_status(&self, job: u32) -> Result<PullStatus, ApiError>;
    fn remove_image(&self, reference: &str) -> Result<Vec<String>, ApiError>;
    /// Reads the declarations again and reconciles.
    fn reload(&self) -> Result<(), ApiError>;
    /// `berthctl debug`: makes container `name` from `image` (empty: the built-in
    /// busybox), privileged, in the host's pid, network and ipc namespaces, with the
    /// host's root read-only at /host and /var read-write at /host/var; created, never
    /// started, so that commands run in it with `berth-runtime exec`. Not declared, not
    /// kept: removed by `DebugRemove`, or when process `client` is gone. `who` says who
    /// asked (an SSH key from sshd's ExposeAuthInfo, and its client's address), for the
    /// log line every debug session gets.
    fn debug_create(&self, name: &str, image: &str, who: &str, client: u32)
        -> Result<(), ApiError>;
    /// Removes a debug container.
    fn debug_remove(&self, name: &str) -> Result<(), ApiError>;
}

/// The most a log read returns at once.
pub const MAX_LOG_CHUNK: u64 = 64 * 1024;

/// A piece of a log file, as `Init1.ReadLog` and `Runtime1.ReadLog` answer: `tail_lines` > 0
/// gives the last lines, else whole lines from `offset` (at most [`MAX_LOG_CHUNK`]); a file
/// shorter than `offset` was rotated and is read from 0.
pub fn read_log_file(path: &Path, offset: u64, tail_lines: u32) -> std::io::Result<LogChunk> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(LogChunk {
                text: String::new(),
                next_offset: 0,
            })
        }
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if tail_lines > 0 {
        // The last lines: read back at most a chunk, keep the last N lines of it.
        let start = len.saturating_sub(MAX_LOG_CHUNK);
        file.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(tail_lines as usize);
        let mut out = lines[from..].join("\n");
        if !out.is_empty() {
            out.push('\n');
        }
        return Ok(LogChunk {
            text: out,
            next_offset: len,
        });
    }
    // Rotated since the last read: start the new file from its beginning.
    let offset = if offset > len { 0 } else { offset };
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::new();
    file.take(MAX_LOG_CHUNK).read_to_end(&mut bytes)?;
    // Whole lines only, unless one line is longer than a chunk.
    let cut = match bytes.iter().rposition(|b| *b == b'\n') {
        Some(i) => i + 1,
        None if bytes.len() as u64 == MAX_LOG_CHUNK => bytes.len(),
        None => 0,
    };
    bytes.truncate(cut);
    Ok(LogChunk {
        next_offset: offset + bytes.len() as u64,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use zbus::DBusError;

    use super::*;

    #[test]
    fn api_errors_travel_by_name_and_map_to_exit_codes() {
        let sent = ApiError::Busy("container \"web\" is running".into());
        assert_eq!(sent.name().as_str(), "org.berth.Error.Busy");
        // What a proxy makes of the error message it receives: the same variant.
        let name = zbus::names::OwnedErrorName::try_from("org.berth.Error.Busy").unwrap();
        let msg = zbus::message::Message::method_call("/", "X")
            .build(&())
            .unwrap();
        let received = ApiError::from(zbus::Error::MethodError(name, Some(sent.message()), msg));
        assert!(
            matches!(&received, ApiError::Busy(m) if m.contains("running")),
            "{received:?}"
        );
        let codes: Vec<u8> = [
            ApiError::Failed(String::new()),
            ApiError::NotFound(String::new()),
            ApiError::AlreadyExists(String::new()),
            ApiError::Invalid(String::new()),
            ApiError::Busy(String::new()),
            ApiError::Timeout(String::new()),
        ]
        .iter()
        .map(ApiError::exit_code)
        .collect();
        assert_eq!(codes, [1, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn reads_logs_by_offset_and_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        assert_eq!(read_log_file(&path, 0, 0).unwrap().text, "");
        std::fs::write(&path, "one\ntwo\nthree\npart").unwrap();
        let all = read_log_file(&path, 0, 0).unwrap();
        assert_eq!(all.text, "one\ntwo\nthree\n");
        assert_eq!(all.next_offset, 14);
        assert_eq!(read_log_file(&path, 0, 2).unwrap().text, "three\npart\n");
        std::fs::write(&path, "new\n").unwrap();
        let rotated = read_log_file(&path, all.next_offset, 0).unwrap();
        assert_eq!(rotated.text, "new\n");
    }
}
