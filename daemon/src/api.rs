//! The daemon's control API: `org.berth.Runtime1` (see `berth-control`) served peer to
//! peer on `/run/berth/runtime.sock` (root only: 0600 in a 0700 directory, and each
//! peer's SO_PEERCRED uid must be 0).
//!
//! As in init, the D-Bus side runs on its own threads (one per connection), so a slow
//! client never stalls the supervisor. Reads are answered from a snapshot the
//! supervisor publishes (and from files: logs, cgroups, the image store); changes go to
//! the supervisor's loop as [`Request`]s, with an eventfd to wake it, and are answered
//! when done. Pulls run on their own threads: a big image never blocks the loop.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_control::{
    ApiError, ContainerInfo, ContainerStats, ImageInfo, LogChunk, PullStatus, RUNTIME_PATH,
};
use nix::sys::eventfd::{EfdFlags, EventFd};

/// A change for the supervisor's loop, with where its verdict goes.
pub enum Request {
    Run {
        name: String,
        declaration: String,
        reply: Reply,
    },
    Start(String, Reply),
    Stop(String, Reply),
    Restart(String, Reply),
    Remove {
        name: String,
        force: bool,
        reply: Reply,
    },
    Reload(Reply),
    DebugCreate {
        name: String,
        image: String,
        who: String,
        client: u32,
        reply: Reply,
    },
    DebugRemove(String, Reply),
}

pub type Reply = Sender<Result<(), ApiError>>;

/// One container as the supervisor last published it.
#[derive(Clone)]
pub struct Published {
    pub info: ContainerInfo,
    /// Everything for `inspect`.
    pub detail: serde_json::Value,
    /// Its cgroup directory (absolute), when it has one.
    pub cgroup: Option<PathBuf>,
    /// OOM kills in its earlier runs (each run's cgroup is a new one).
    pub oom_kills: u64,
    /// When its current or last run started, in seconds since the epoch.
    pub started_epoch: Option<f64>,
    /// Its veth pair's host end (a bridge container).
    pub link: Option<String>,
}

/// What the API serves from files, and the supervisor's latest snapshot.
pub struct Shared {
    pub containers: Mutex<BTreeMap<String, Published>>,
    pub log_dir: PathBuf,
    pub store: PathBuf,
    pub registries: PathBuf,
    pulls: Mutex<BTreeMap<u32, PullStatus>>,
    next_pull: AtomicU32,
}

impl Shared {
    pub fn new(log_dir: PathBuf, store: PathBuf, registries: PathBuf) -> Shared {
        Shared {
            containers: Mutex::new(BTreeMap::new()),
            log_dir,
            store,
            registries,
            pulls: Mutex::new(BTreeMap::new()),
            next_pull: AtomicU32::new(1),
        }
    }
}

/// The loop's end of the API.
pub struct Control {
    pub requests: Receiver<Request>,
    wake: Arc<EventFd>,
    pub shared: Arc<Shared>,
}

impl Control {
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    pub fn clear_wake(&self) {
        let _ = self.wake.read();
    }

    pub fn publish(&self, containers: BTreeMap<String, Published>) {
        if let Ok(mut c) = self.shared.containers.lock() {
            *c = containers;
        }
    }
}

/// Starts serving on `socket`. An error leaves the daemon running without its API
/// (said by the caller): the declared containers matter more.
pub fn start(socket: &Path, shared: Shared) -> Result<Control, String> {
    let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
        .map(Arc::new)
        .map_err(|e| format!("eventfd: {e}"))?;
    let (tx, rx) = channel();
    let shared = Arc::new(shared);
    let listener =
        berth_control::listen(socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    let api = Api {
        peer: 0,
        tx,
        wake: wake.clone(),
        shared: shared.clone(),
    };
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || accept_loop(listener, api))
        .map_err(|e| format!("starting the API thread: {e}"))?;
    Ok(Control {
        requests: rx,
        wake,
        shared,
    })
}

fn accept_loop(listener: UnixListener, api: Api) {
    berth_control::serve_root_clients(listener, RUNTIME_PATH, "berth-daemon", move |peer| Api {
        peer,
        ..api.clone()
    });
}

/// How long a change may take before the caller is told it is still going (a stop
/// waits up to the container's stop timeout, plus the runtime's own work).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone)]
struct Api {
    /// The connected client's pid (SO_PEERCRED).
    peer: i32,
    tx: Sender<Request>,
    wake: Arc<EventFd>,
    shared: Arc<Shared>,
}

type ApiResult<T> = Result<T, ApiError>;

fn failed(e: impl std::fmt::Display) -> ApiError {
    ApiError::Failed(e.to_string())
}

/// The store's errors by kind: what a client may want to tell apart gets its own name.
fn store_error(e: berth_store::store::StoreError) -> ApiError {
    use berth_store::store::StoreError;
    match e {
        StoreError::NoSuchImage(_) => ApiError::NotFound(e.to_string()),
        StoreError::InUse { .. } => ApiError::Busy(e.to_string()),
        other => ApiError::Failed(other.to_string()),
    }
}

impl Api {
    /// Hands a change to the loop and waits for its verdict. (Blocking is fine: each
    /// connection has its own thread and executor.)
    fn change(&self, make: impl FnOnce(Reply) -> Request) -> ApiResult<()> {
        let (tx, rx) = channel();
        self.tx
            .send(make(tx))
            .map_err(|_| failed("the daemon is not taking requests"))?;
        let _ = self.wake.write(1);
        match rx.recv_timeout(CHANGE_TIMEOUT) {
            Ok(result) => result,
            Err(_) => Err(ApiError::Timeout(
                "the daemon did not answer in time; it may still be working".into(),
            )),
        }
    }

    fn published(&self, name: &str) -> ApiResult<Published> {
        self.shared
            .containers
            .lock()
            .map_err(|_| failed("state unavailable"))?
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::NotFound(format!("no container named {name:?}")))
    }

    fn store(&self) -> ApiResult<berth_store::store::Store> {
        berth_store::store::Store::open(&self.shared.store, Default::default()).map_err(store_error)
    }
}

#[zbus::interface(name = "org.berth.Runtime1")]
impl Api {
    async fn containers(&self) -> Result<Vec<ContainerInfo>, ApiError> {
        let c = self
            .shared
            .containers
            .lock()
            .map_err(|_| failed("state unavailable"))?;
        Ok(c.values().map(|p| p.info.clone()).collect())
    }

    async fn run(&self, name: String, declaration: String) -> Result<(), ApiError> {
        self.change(|reply| Request::Run {
            name,
            declaration,
            reply,
        })
    }

    async fn debug_create(
        &self,
        name: String,
        image: String,
        who: String,
        client: u32,
    ) -> Result<(), ApiError> {
        // The process whose end removes the container must be the caller itself: not
        // another process's pid, and not init's bridge of the VM control port (whose
        // clients are on the hypervisor's side, with no process here to watch).
        if i64::from(client) != i64::from(self.peer) {
            return Err(ApiError::Invalid(format!(
                "debug: client {client} is not the caller (pid {}); debug runs on the machine itself or over SSH",
                self.peer
            )));
        }
        self.change(|reply| Request::DebugCreate {
            name,
            image,
            who,
            client,
            reply,
        })
    }

    async fn debug_remove(&self, name: String) -> Result<(), ApiError> {
        self.change(|r| Request::DebugRemove(name, r))
    }

    async fn start(&self, name: String) -> Result<(), ApiError> {
        self.change(|r| Request::Start(name, r))
    }

    async fn stop(&self, name: String) -> Result<(), ApiError> {
        self.change(|r| Request::Stop(name, r))
    }

    async fn restart(&self, name: String) -> Result<(), ApiError> {
        self.change(|r| Request::Restart(name, r))
    }

    async fn remove(&self, name: String, force: bool) -> Result<(), ApiError> {
        self.change(|reply| Request::Remove { name, force, reply })
    }

    async fn reload(&self) -> Result<(), ApiError> {
        self.change(Request::Reload)
    }

    async fn inspect(&self, name: String) -> Result<String, ApiError> {
        Ok(self.published(&name)?.detail.to_string())
    }

    async fn read_log(
        &self,
        name: String,
        offset: u64,
        tail_lines: u32,
    ) -> Result<LogChunk, ApiError> {
        // Only a known container's log: the name never becomes a path otherwise.
        self.published(&name)?;
        let path = self.shared.log_dir.join(format!("{name}.log"));
        berth_control::read_log_file(&path, offset, tail_lines)
            .map_err(|e| failed(format!("{}: {e}", path.display())))
    }

    async fn stats(&self) -> Result<Vec<ContainerStats>, ApiError> {
        let c = self
            .shared
            .containers
            .lock()
            .map_err(|_| failed("state unavailable"))?
            .clone();
        Ok(c.values()
            .filter(|p| p.info.state == "running")
            .map(|p| cgroup_stats(&p.info.name, p.cgroup.as_deref()))
            .collect())
    }

    async fn images(&self) -> Result<Vec<ImageInfo>, ApiError> {
        let store = self.store()?;
        Ok(store
            .images()
            .map_err(store_error)?
            .into_iter()
            .map(|i| ImageInfo {
                reference: i.reference,
                id: i.id.to_string(),
                size: i.size,
                stored: i.stored,
            })
            .collect())
    }

    async fn pull(&self, reference: String) -> Result<u32, ApiError> {
        let r = berth_store::reference::Reference::parse(&reference)
            .map_err(|e| ApiError::Invalid(e.to_string()))?;
        let job = self.shared.next_pull.fetch_add(1, Ordering::SeqCst);
        let status = PullStatus {
            reference: r.to_string(),
            bytes_done: 0,
            bytes_total: 0,
            finished: false,
            error: String::new(),
            id: String::new(),
        };
        if let Ok(mut p) = self.shared.pulls.lock() {
            p.insert(job, status);
        }
        let shared = self.shared.clone();
        std::thread::Builder::new()
            .name("pull".into())
            .spawn(move || pull_job(&shared, job, &r))
            .map_err(failed)?;
        Ok(job)
    }

    async fn pull_status(&self, job: u32) -> Result<PullStatus, ApiError> {
        self.shared
            .pulls
            .lock()
            .map_err(|_| failed("state unavailable"))?
            .get(&job)
            .cloned()
            .ok_or_else(|| ApiError::NotFound(format!("no pull numbered {job}")))
    }

    async fn remove_image(&self, reference: String) -> Result<Vec<String>, ApiError> {
        let store = self.store()?;
        let _lock = store
            .lock(berth_store::store::LockKind::Exclusive)
            .map_err(store_error)?;
        let removed = store.remove(&reference).map_err(store_error)?;
        crate::record(berth_control::Event::new("image", "remove", &reference));
        Ok(removed)
    }
}

/// Pulls `r` into the store, keeping job `job`'s status current.
fn pull_job(shared: &Shared, job: u32, r: &berth_store::reference::Reference) {
    let started = std::time::Instant::now();
    let update = |f: &dyn Fn(&mut PullStatus)| {
        if let Ok(mut p) = shared.pulls.lock() {
            if let Some(s) = p.get_mut(&job) {
                f(s);
            }
        }
    };
    let result = (|| -> Result<String, String> {
        let store = berth_store::store::Store::open(&shared.store, Default::default())
            .map_err(|e| e.to_string())?;
        let _lock = store
            .lock(berth_store::store::LockKind::Shared)
            .map_err(|e| e.to_string())?;
        let config =
            berth_store::registry::Config::load(&shared.registries).map_err(|e| e.to_string())?;
        let client = berth_store::registry::Client::new(config).map_err(|e| e.to_string())?;
        // Bytes per layer so far; their sum is the progress.
        let layers = Mutex::new(BTreeMap::<usize, u64>::new());
        let progress = |p: berth_store::pull::Progress| match p {
            berth_store::pull::Progress::Resolved { bytes, .. } => {
                update(&|s| s.bytes_total = bytes);
            }
            berth_store::pull::Progress::Downloaded { layer, bytes, .. } => {
                if let Ok(mut l) = layers.lock() {
                    l.insert(layer, bytes);
                    let done = l.values().sum();
                    update(&|s| s.bytes_done = done);
                }
            }
            _ => {}
        };
        let image =
            berth_store::pull::pull(&store, &client, r, &progress).map_err(|e| e.to_string())?;
        Ok(image.id.to_string())
    })();
    crate::metrics::PULLS.record(started.elapsed(), result.is_ok());
    crate::record(pull_event(&r.to_string(), &result));
    update(&|s| {
        s.finished = true;
        match &result {
            Ok(id) => {
                s.id = id.clone();
                s.bytes_done = s.bytes_total;
            }
            Err(e) => s.error = e.clone(),
        }
    });
}

/// An image pull's event: its ID when it was stored, the error when not.
pub fn pull_event(reference: &str, result: &Result<String, String>) -> berth_control::Event {
    let e = berth_control::Event::new("image", "pull", reference);
    match result {
        Ok(id) => e.with("id", id),
        Err(why) => e.with("error", why),
    }
}

/// A container's resource use from its cgroup's files (zeros when it has none).
pub fn cgroup_stats(name: &str, cgroup: Option<&Path>) -> ContainerStats {
    let f = cgroup
        .and_then(crate::metrics::Figures::read)
        .unwrap_or_default();
    ContainerStats {
        name: name.to_string(),
        cpu_usec: f.cpu_usec,
        memory_bytes: f.memory,
        memory_limit: f.limit,
        pids: f.pids,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_come_from_the_cgroup_files() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(
            t.path().join("cpu.stat"),
            "usage_usec 1234\nuser_usec 1000\n",
        )
        .unwrap();
        std::fs::write(t.path().join("memory.current"), "4096\n").unwrap();
        std::fs::write(t.path().join("memory.max"), "max\n").unwrap();
        std::fs::write(t.path().join("pids.current"), "3\n").unwrap();
        let s = cgroup_stats("web", Some(t.path()));
        assert_eq!(
            (s.cpu_usec, s.memory_bytes, s.memory_limit, s.pids),
            (1234, 4096, 0, 3)
        );
        assert_eq!(cgroup_stats("gone", None).pids, 0);
    }
}
