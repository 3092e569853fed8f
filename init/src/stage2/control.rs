//! Init's control API: `org.berth.Init1` (see `berth-control`) served peer to peer on
//! `/run/berth/init.sock` (root only: the socket is 0600 in a 0700 directory, and each
//! peer's SO_PEERCRED uid must be 0), and on the virtio-serial port `org.berth.control`
//! when the VM has one (whoever holds the host end of that port is the operator, as with
//! the serial console).
//!
//! The D-Bus side runs on its own threads (one per connection, each driving zbus's
//! single-threaded runtime), so a slow client never stalls PID 1's event loop. Reads are
//! answered from a snapshot the loop publishes; changes go to the loop as `Request`s,
//! with an eventfd to wake it, and are answered without waiting for the change to finish
//! (`berthctl` polls the state when it wants to wait).

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use berth_control::{
    BootPhase, Event, ExitRecord, LogChunk, ProcessMemory, ServiceStatus, SlotStatus,
    UpdateRequest, UpdateStatus, CONTROL_PORT, INIT_PATH, UPDATER_SERVICE, UPDATE_REQUEST,
    UPDATE_STATUS,
};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use zbus::fdo;

use super::slots::Slots;
use crate::shutdown::Action;
use crate::{info, warn};

pub enum Request {
    Start(String, Sender<Result<(), String>>),
    /// Start only if not running, after the closure prepared its input.
    StartIdle(String, Prepare, Sender<Result<(), String>>),
    Stop(String, Sender<Result<(), String>>),
    Restart(String, Sender<Result<(), String>>),
    TakeExits(String, Sender<Vec<ExitRecord>>),
    Shutdown(Action),
}

pub type Prepare = Box<dyn FnOnce() -> Result<(), String> + Send>;

/// What the loop publishes for readers.
#[derive(Default)]
pub struct Snapshot {
    pub services: Vec<ServiceStatus>,
    pub timeline: Vec<BootPhase>,
    pub log_dir: PathBuf,
    /// `berth: ready` was printed.
    pub ready: bool,
    /// `berthctl events`: services' restarts and failures, and what the daemon and the
    /// updater record.
    pub events: berth_control::events::Ring,
}

/// The loop's end: requests to handle, and the eventfd that says some are waiting.
pub struct Control {
    pub requests: Receiver<Request>,
    tx: Sender<Request>,
    wake: Arc<EventFd>,
    pub snapshot: Arc<Mutex<Snapshot>>,
}

/// How another of init's threads asks the loop for something, as the API does.
#[derive(Clone)]
pub struct Requester {
    tx: Sender<Request>,
    wake: Arc<EventFd>,
}

impl Requester {
    /// False when the loop no longer takes requests.
    pub fn send(&self, request: Request) -> bool {
        let sent = self.tx.send(request).is_ok();
        let _ = self.wake.write(1);
        sent
    }
}

impl Control {
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// Clears the eventfd (it is non-blocking; nothing there is fine).
    pub fn clear_wake(&self) {
        let _ = self.wake.read();
    }

    pub fn requester(&self) -> Requester {
        Requester {
            tx: self.tx.clone(),
            wake: self.wake.clone(),
        }
    }

    pub fn publish(&self, services: Vec<ServiceStatus>, timeline: Vec<BootPhase>, ready: bool) {
        if let Ok(mut s) = self.snapshot.lock() {
            for event in service_events(&s.services, &services) {
                info!("event: {}", event.line());
                s.events.push(event);
            }
            s.services = services;
            s.timeline = timeline;
            s.ready = ready;
        }
    }
}

/// Starts serving on `socket` (and the control port when it appears); `None` if even
/// the eventfd cannot be made (the machine then runs without its API, said loudly).
/// `slots` is filled once the boot slots are read (on a thread of their own, off the
/// boot's path); until then, and on a machine without them, the slot methods say so.
pub fn start(socket: &Path, log_dir: &Path, slots: Arc<OnceLock<Arc<Slots>>>) -> Option<Control> {
    let wake = match EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK) {
        Ok(fd) => Arc::new(fd),
        Err(e) => {
            warn!("control API: eventfd: {e}; no control API");
            return None;
        }
    };
    let (tx, rx) = channel();
    let snapshot = Arc::new(Mutex::new(Snapshot {
        log_dir: log_dir.to_path_buf(),
        ..Snapshot::default()
    }));
    let api = Api {
        tx: tx.clone(),
        wake: wake.clone(),
        snapshot: snapshot.clone(),
        caller_service: None,
        slots,
    };
    match berth_control::listen(socket) {
        Ok(listener) => {
            let api = api.clone();
            spawn_thread("control", move || accept_loop(listener, api));
            info!("control API on {}", socket.display());
        }
        Err(e) => warn!("control API: {}: {e}", socket.display()),
    }
    spawn_thread("control-port", move || port_loop(api));
    Some(Control {
        requests: rx,
        tx,
        wake,
        snapshot,
    })
}

fn spawn_thread(name: &str, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().name(name.into()).spawn(f) {
        warn!("control API: starting thread {name}: {e}");
    }
}

fn accept_loop(listener: UnixListener, api: Api) {
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                warn!("control API: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let creds = match getsockopt(&stream, PeerCredentials) {
            Ok(c) => c,
            Err(e) => {
                warn!("control API: peer credentials: {e}; connection refused");
                continue;
            }
        };
        if creds.uid() != 0 {
            warn!("control API: uid {} refused (root only)", creds.uid());
            continue;
        }
        let caller_service = std::fs::read_to_string(format!("/proc/{}/cgroup", creds.pid()))
            .ok()
            .and_then(|t| super::services::cgroup::service_of(&t))
            .and_then(|(name, in_main)| in_main.then_some(name));
        let api = Api {
            caller_service,
            ..api.clone()
        };
        spawn_thread("control-conn", move || serve(stream, api));
    }
}

/// One client, until it hangs up.
fn serve(stream: UnixStream, api: Api) {
    if let Err(e) = berth_control::serve_one(stream, INIT_PATH, api) {
        warn!("control API: connection: {e}");
    }
}

/// Bridges the virtio-serial control port to a fresh connection each time the host end
/// connects. Without udev the port is /dev/vportNpM, found by name in sysfs; it reads 0
/// while the host end is away, and poll says POLLHUP.
fn port_loop(api: Api) {
    let mut announced = false;
    loop {
        let Some(dev) = find_port(Path::new("/sys/class/virtio-ports"), Path::new("/dev")) else {
            std::thread::sleep(Duration::from_secs(1));
            continue;
        };
        if !announced {
            info!(
                "control API on virtio port {CONTROL_PORT} ({})",
                dev.display()
            );
            announced = true;
        }
        if let Err(e) = bridge_once(&dev, &api) {
            warn!("control port {}: {e}", dev.display());
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

fn find_port(sys: &Path, dev: &Path) -> Option<PathBuf> {
    std::fs::read_dir(sys).ok()?.flatten().find_map(|entry| {
        let name = std::fs::read_to_string(entry.path().join("name")).ok()?;
        let node = dev.join(entry.file_name());
        (name.trim() == CONTROL_PORT && node.exists()).then_some(node)
    })
}

/// Whether a chunk from the host is a D-Bus client's first bytes: the credentials NUL,
/// then its AUTH command (possibly in the next chunk).
fn is_client_hello(data: &[u8]) -> bool {
    data.first() == Some(&0) && (data.len() == 1 || data[1..].starts_with(b"AUTH"))
}

/// The socket a host client asks for with a `BERTH-ROUTE` line before its D-Bus hello,
/// and what follows that line in the chunk.
fn routed(data: &[u8]) -> Option<(&'static str, &[u8])> {
    [
        (berth_control::ROUTE_RUNTIME, berth_control::RUNTIME_SOCKET),
        (berth_control::ROUTE_AGENT, berth_control::AGENT_SOCKET),
    ]
    .into_iter()
    .find_map(|(line, socket)| data.strip_prefix(line).map(|rest| (socket, rest)))
}

/// Pumps bytes between the port and a socketpair whose other end is served like a local
/// client. Every host client begins with a D-Bus hello, which starts a new session (and
/// ends the previous one). A hang-up is not trusted to end a session: virtio-serial can
/// report the host end as away (read 0, POLLHUP) for a moment after a client connected and
/// sent its first bytes, before the port-open notice reaches the guest.
fn bridge_once(dev: &Path, api: &Api) -> std::io::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::io::Write;
    let mut port = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)?;
    let mut session: Option<UnixStream> = None;
    // A routed session whose D-Bus hello has not come yet: that hello is its own, not a
    // new client's.
    let mut routed_hello_due = false;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let mut fds = vec![PollFd::new(port.as_fd(), PollFlags::POLLIN)];
        if let Some(s) = &session {
            fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
        }
        poll(&mut fds, PollTimeout::from(1000u16))?;
        let port_ev = fds[0].revents().unwrap_or(PollFlags::empty());
        let ours_ev = fds
            .get(1)
            .and_then(|f| f.revents())
            .unwrap_or(PollFlags::empty());
        if ours_ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP) {
            if let Some(s) = &mut session {
                match s.read(&mut buf) {
                    Ok(n) if n > 0 => {
                        if port.write_all(&buf[..n]).is_err() {
                            session = None; // host gone mid-answer
                        }
                    }
                    _ => session = None, // the server ended the conversation
                }
            }
        }
        if port_ev.contains(PollFlags::POLLIN) {
            let n = port.read(&mut buf)?;
            if n == 0 {
                // Host end away (or not yet announced): nothing to read; don't spin.
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            let mut data = &buf[..n];
            if let Some((socket, rest)) = routed(data) {
                // A session with the daemon or the agent: bridged to its socket as is
                // (it checks that its peer, init, is root).
                session = match UnixStream::connect(socket) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        warn!("control port: {socket}: {e}");
                        None
                    }
                };
                data = rest;
                routed_hello_due = session.is_some() && data.is_empty();
            } else if routed_hello_due {
                // The routed client's first bytes after its route line (its hello).
                routed_hello_due = false;
            } else if session.is_none() || is_client_hello(data) {
                let (ours, theirs) = UnixStream::pair()?;
                let server_api = api.clone();
                spawn_thread("control-vm", move || serve(theirs, server_api));
                session = Some(ours);
            }
            if let Some(s) = &mut session {
                if s.write_all(data).is_err() {
                    session = None;
                }
            }
        } else if port_ev.contains(PollFlags::POLLHUP) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[derive(Clone)]
struct Api {
    tx: Sender<Request>,
    wake: Arc<EventFd>,
    snapshot: Arc<Mutex<Snapshot>>,
    /// The service the peer runs in (its main cgroup), for TakeExitStatuses.
    caller_service: Option<String>,
    slots: Arc<OnceLock<Arc<Slots>>>,
}

impl Api {
    fn send(&self, request: Request) -> fdo::Result<()> {
        self.tx
            .send(request)
            .map_err(|_| fdo::Error::Failed("init is not taking requests".into()))?;
        let _ = self.wake.write(1);
        Ok(())
    }

    /// Sends a change and waits (briefly: the loop answers at once) for its verdict.
    fn change(&self, make: impl FnOnce(Sender<Result<(), String>>) -> Request) -> fdo::Result<()> {
        let (tx, rx) = channel();
        self.send(make(tx))?;
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(fdo::Error::Failed(e)),
            Err(_) => Err(fdo::Error::Failed("init did not answer".into())),
        }
    }

    fn booted_slots(&self) -> fdo::Result<&Slots> {
        self.slots.get().map(|s| s.as_ref()).ok_or_else(|| {
            fdo::Error::NotSupported(
                "no boot slots: this boot did not come through Berth's bootloader (no \
                 berth.slot=), or its ESP could not be read (see the console)"
                    .into(),
            )
        })
    }

    fn known(&self, name: &str) -> fdo::Result<PathBuf> {
        let snap = self
            .snapshot
            .lock()
            .map_err(|_| fdo::Error::Failed("state unavailable".into()))?;
        if snap.services.iter().any(|s| s.name == name) {
            Ok(snap.log_dir.join(format!("{name}.log")))
        } else {
            Err(fdo::Error::InvalidArgs(format!(
                "no service named {name:?}"
            )))
        }
    }
}

#[zbus::interface(name = "org.berth.Init1")]
impl Api {
    async fn services(&self) -> Vec<ServiceStatus> {
        self.snapshot
            .lock()
            .map(|s| s.services.clone())
            .unwrap_or_default()
    }

    async fn start(&self, name: String) -> fdo::Result<()> {
        self.change(|tx| Request::Start(name, tx))
    }

    async fn stop(&self, name: String) -> fdo::Result<()> {
        self.change(|tx| Request::Stop(name, tx))
    }

    async fn restart(&self, name: String) -> fdo::Result<()> {
        self.change(|tx| Request::Restart(name, tx))
    }

    async fn reboot(&self) -> fdo::Result<()> {
        self.send(Request::Shutdown(Action::Reboot))
    }

    async fn power_off(&self) -> fdo::Result<()> {
        self.send(Request::Shutdown(Action::PowerOff))
    }

    async fn boot_timeline(&self) -> Vec<BootPhase> {
        self.snapshot
            .lock()
            .map(|s| s.timeline.clone())
            .unwrap_or_default()
    }

    async fn read_log(&self, name: String, offset: u64, tail_lines: u32) -> fdo::Result<LogChunk> {
        let path = self.known(&name)?;
        berth_control::read_log_file(&path, offset, tail_lines)
            .map_err(|e| fdo::Error::Failed(format!("{}: {e}", path.display())))
    }

    async fn take_exit_statuses(&self) -> fdo::Result<Vec<ExitRecord>> {
        let Some(service) = self.caller_service.clone() else {
            return Err(fdo::Error::AccessDenied(
                "only a service's own process may take its exit statuses".into(),
            ));
        };
        let (tx, rx) = channel();
        self.send(Request::TakeExits(service, tx))?;
        rx.recv_timeout(Duration::from_secs(10))
            .map_err(|_| fdo::Error::Failed("init did not answer".into()))
    }

    async fn slots(&self) -> fdo::Result<Vec<SlotStatus>> {
        self.booted_slots()?
            .status()
            .map_err(|e| fdo::Error::Failed(e.to_string()))
    }

    async fn claim_slot(&self) -> fdo::Result<String> {
        let slot = self.booted_slots()?.claim_other().map_err(slot_error)?;
        info!("control: slot {} claimed by an update", slot.name());
        Ok(slot.name().to_string())
    }

    async fn offer_slot(&self, tries: u8) -> fdo::Result<()> {
        let slot = self
            .booted_slots()?
            .offer_other(tries)
            .map_err(slot_error)?;
        info!(
            "control: slot {} offered for a trial boot ({tries} tries)",
            slot.name()
        );
        Ok(())
    }

    async fn update_start(&self, mut request: UpdateRequest) -> fdo::Result<u64> {
        check_update_request(&request)?;
        request.id = next_update_id();
        let id = request.id;
        let bytes = serde_json::to_vec(&request).map_err(|e| fdo::Error::Failed(e.to_string()))?;
        let prepare: Prepare = Box::new(move || {
            berth_persist::write_file(Path::new(UPDATE_REQUEST), &bytes, 0o600)
                .map_err(|e| format!("{UPDATE_REQUEST}: {e}"))
        });
        self.change(|tx| Request::StartIdle(UPDATER_SERVICE.into(), prepare, tx))?;
        info!(
            "control: update {} from {} (request {id})",
            request.action, request.source
        );
        Ok(id)
    }

    async fn update_status(&self) -> fdo::Result<UpdateStatus> {
        read_update_status(Path::new(UPDATE_STATUS)).map_err(fdo::Error::Failed)
    }

    async fn events(&self, after: u64) -> fdo::Result<Vec<Event>> {
        self.snapshot
            .lock()
            .map(|s| s.events.after(after))
            .map_err(|_| fdo::Error::Failed("state unavailable".into()))
    }

    async fn memory(&self) -> fdo::Result<Vec<ProcessMemory>> {
        let running: Vec<(String, u32)> = self
            .snapshot
            .lock()
            .map_err(|_| fdo::Error::Failed("state unavailable".into()))?
            .services
            .iter()
            .filter(|s| s.pid != 0)
            .map(|s| (s.name.clone(), s.pid))
            .collect();
        // Read outside the lock: the main loop never waits on /proc.
        Ok(super::memory::report(
            running.iter().map(|(n, p)| (n.as_str(), *p)),
        ))
    }

    async fn record_events(&self, events: Vec<Event>) -> fdo::Result<()> {
        if events.len() > berth_control::events::MAX_BATCH {
            return Err(fdo::Error::InvalidArgs(format!(
                "{} events in one call; at most {}",
                events.len(),
                berth_control::events::MAX_BATCH
            )));
        }
        let mut snap = self
            .snapshot
            .lock()
            .map_err(|_| fdo::Error::Failed("state unavailable".into()))?;
        for event in events {
            snap.events.push(event);
        }
        Ok(())
    }

    async fn rollback(&self) -> fdo::Result<()> {
        let slots = self.booted_slots()?;
        let next = slots.roll_back().map_err(slot_error)?;
        info!(
            "control: rollback: slot {} boots next; rebooting",
            next.name()
        );
        self.send(Request::Shutdown(Action::Reboot))
    }
}

/// What changed between two snapshots of the services that an operator watches for:
/// a restart (the count went up) and a failure (the state became `failed`).
fn service_events(before: &[ServiceStatus], now: &[ServiceStatus]) -> Vec<Event> {
    let mut events = Vec::new();
    for s in now {
        let Some(old) = before.iter().find(|o| o.name == s.name) else {
            continue;
        };
        if s.restarts > old.restarts {
            events.push(
                Event::new("service", "restart", &s.name)
                    .with("restarts", s.restarts)
                    .with("lastExit", &s.last_exit),
            );
        }
        if s.state == "failed" && old.state != "failed" {
            events.push(Event::new("service", "failure", &s.name).with("lastExit", &s.last_exit));
        }
    }
    events
}

/// A request's words, before anything starts: a known action and a source that is a
/// path on the machine or a registry reference, within bounds.
fn check_update_request(r: &UpdateRequest) -> fdo::Result<()> {
    if !matches!(r.action.as_str(), "check" | "apply") {
        return Err(fdo::Error::InvalidArgs(format!(
            "update action {:?}: check or apply",
            r.action
        )));
    }
    if r.source.is_empty() || r.source.len() > 1024 || r.source.chars().any(char::is_control) {
        return Err(fdo::Error::InvalidArgs(format!(
            "update source {:?}: a registry reference or an absolute path",
            r.source
        )));
    }
    Ok(())
}

/// Request ids grow through the boot (milliseconds since the epoch, or one more than the
/// last), so a client can tell its own answer from an earlier one.
fn next_update_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// The updater's status file (a few hundred bytes; at most 64 KiB read); none yet is
/// `idle`.
fn read_update_status(path: &Path) -> Result<UpdateStatus, String> {
    let text = match super::slots::read_regular(path, 64 * 1024) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(UpdateStatus {
                state: "idle".into(),
                ..UpdateStatus::default()
            })
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// A refusal the caller can act on is InvalidArgs; a failure to read or write is Failed.
fn slot_error(e: super::slots::SlotError) -> fdo::Error {
    use super::slots::SlotError as E;
    match e {
        E::State(_) | E::Empty(_) | E::OnTrial(_) | E::NotClaimed(_) | E::Incomplete(_) => {
            fdo::Error::InvalidArgs(e.to_string())
        }
        e => fdo::Error::Failed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_request_is_checked_before_anything_starts() {
        let ok = UpdateRequest {
            action: "apply".into(),
            source: "registry.example/berth/os:1.0.0".into(),
            ..UpdateRequest::default()
        };
        assert!(check_update_request(&ok).is_ok());
        for bad in [
            UpdateRequest {
                action: "rm".into(),
                ..ok.clone()
            },
            UpdateRequest {
                source: String::new(),
                ..ok.clone()
            },
            UpdateRequest {
                source: "a\nb".into(),
                ..ok.clone()
            },
            UpdateRequest {
                source: "x".repeat(2000),
                ..ok.clone()
            },
        ] {
            assert!(
                matches!(check_update_request(&bad), Err(fdo::Error::InvalidArgs(_))),
                "{bad:?}"
            );
        }
        let (a, b) = (next_update_id(), next_update_id());
        assert!(b > a);
    }

    #[test]
    fn no_status_file_is_idle_and_a_bad_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("update.json");
        assert_eq!(read_update_status(&path).unwrap().state, "idle");
        std::fs::write(
            &path,
            b"{\"state\":\"applying\",\"step\":\"root\",\"done\":5}",
        )
        .unwrap();
        let s = read_update_status(&path).unwrap();
        assert_eq!((s.state.as_str(), s.done), ("applying", 5));
        std::fs::write(&path, b"not json").unwrap();
        assert!(read_update_status(&path).is_err());
        // Neither followed nor waited on.
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &path).unwrap();
        assert!(read_update_status(&path).is_err());
        std::fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(read_update_status(&path).is_err());
    }

    #[test]
    fn recognises_a_new_client() {
        assert!(is_client_hello(b"\0"));
        assert!(is_client_hello(b"\0AUTH ANONYMOUS\r\n"));
        assert!(!is_client_hello(b"l\x01\0\x01"));
        assert!(!is_client_hello(b"\0\0\0"));
        assert_eq!(
            routed(b"BERTH-ROUTE runtime\n\0AUTH"),
            Some((berth_control::RUNTIME_SOCKET, &b"\0AUTH"[..]))
        );
        assert_eq!(
            routed(b"BERTH-ROUTE agent\n"),
            Some((berth_control::AGENT_SOCKET, &b""[..]))
        );
        assert_eq!(routed(b"BERTH-ROUTE /etc/shadow\n"), None);
        assert_eq!(routed(b"\0AUTH ANONYMOUS\r\n"), None);
    }

    #[test]
    fn serves_a_client_over_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("run/init.sock");
        let control = start(&sock, dir.path(), Arc::default()).unwrap();
        control.publish(
            vec![ServiceStatus {
                name: "svc".into(),
                state: "ready".into(),
                pid: 7,
                restarts: 2,
                last_exit: String::new(),
                status: String::new(),
                since_ms: 1,
                autostart: true,
                delegate: false,
                stored_fds: 0,
                pending_exits: 0,
            }],
            vec![],
            true,
        );
        let failed = ServiceStatus {
            name: "svc".into(),
            state: "failed".into(),
            pid: 0,
            restarts: 3,
            last_exit: "exited with status 1".into(),
            status: String::new(),
            since_ms: 2,
            autostart: true,
            delegate: false,
            stored_fds: 0,
            pending_exits: 0,
        };
        control.publish(vec![failed.clone()], vec![], true);
        control.publish(vec![failed], vec![], true);
        std::fs::write(dir.path().join("svc.log"), "hello\n").unwrap();
        // The test runs as root in CI and here; a non-root run is refused by design.
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let answer = std::thread::spawn(move || {
            let req = control
                .requests
                .recv_timeout(Duration::from_secs(10))
                .unwrap();
            match req {
                Request::Restart(name, tx) => tx
                    .send(if name == "svc" {
                        Ok(())
                    } else {
                        Err("no".into())
                    })
                    .unwrap(),
                _ => panic!("unexpected request"),
            }
        });
        zbus::block_on(async {
            let conn = berth_control::connect(&sock).await.unwrap();
            let init = berth_control::InitProxy::new(&conn).await.unwrap();
            let list = init.services().await.unwrap();
            assert_eq!(list[0].name, "svc");
            assert_eq!(list[0].restarts, 3);
            assert_eq!(init.read_log("svc", 0, 0).await.unwrap().text, "hello\n");
            assert!(init.read_log("../etc/x", 0, 0).await.is_err());
            init.restart("svc").await.unwrap();
            // A restart and a failure (once each), then what a peer records.
            init.record_events(&[Event::new("container", "start", "web")])
                .await
                .unwrap();
            let too_many = vec![Event::new("container", "start", "x"); 65];
            assert!(init.record_events(&too_many).await.is_err());
            let events = init.events(0).await.unwrap();
            let seen: Vec<(&str, &str)> = events
                .iter()
                .map(|e| (e.kind.as_str(), e.action.as_str()))
                .collect();
            assert_eq!(
                seen,
                [
                    ("service", "restart"),
                    ("service", "failure"),
                    ("container", "start")
                ]
            );
            assert_eq!(events[1].attributes["lastExit"], "exited with status 1");
            assert_eq!(init.events(events[1].seq).await.unwrap().len(), 1);
            // The test process is in no service's cgroup.
            assert!(init.take_exit_statuses().await.is_err());
        });
        answer.join().unwrap();
    }
}
