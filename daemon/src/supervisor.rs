//! The daemon's loop: keeps the declared containers as declared. It starts what is due
//! (see `launch`), restarts per policy (`restart`), answers the API's changes
//! (`requests`), reloads the declarations when their directory changes (`reconcile`),
//! and stops everything on SIGTERM. What it tells operators, the API and the next
//! daemon is in `publish`.
//!
//! The containers are the daemon's children (`berth-runtime create` exits once the
//! container waits for `start`, and the container's init is re-parented to the daemon,
//! a child subreaper). When the daemon dies they are re-parented to init instead, and
//! keep running: their log pipes are in init's fd store, their pids in `status.json`
//! under /run. The next daemon adopts them (`adopt`: a pidfd tells it when one ends;
//! init, which reaped it, tells it the exit status) and takes the pipes back.

mod adopt;
pub mod debug;
mod publish;
mod reconcile;
mod requests;

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use rustix::event::{PollFd, PollFlags};

use crate::api::{Control, Request};
use crate::declaration::Declaration;
use crate::fdstore::Notifier;
use crate::launch;
use crate::restart::{Decision, Exit, Reason, Tally};
use crate::status;
use berth_control::Event;

pub struct Paths {
    /// Declarations written by the agent or an operator.
    pub declarations: PathBuf,
    /// Declarations made through the API (`berthctl run`), kept across reboots.
    pub api_declarations: PathBuf,
    /// What survives reboots: `unless-stopped` containers an operator stopped.
    pub state_dir: PathBuf,
    pub store: PathBuf,
    pub registries: PathBuf,
    /// berth-runtime's --root (its state).
    pub runtime_root: PathBuf,
    pub runtime: PathBuf,
    /// Bundles and /etc files, per container; status.json.
    pub run_dir: PathBuf,
    pub log_dir: PathBuf,
    /// Built-in images (OCI layouts) imported when missing.
    pub builtin_images: PathBuf,
    /// Named volumes.
    pub volumes: PathBuf,
    /// The API's socket.
    pub socket: PathBuf,
    /// Bridge settings (`[bridge]`: name, subnet).
    pub network_config: PathBuf,
    /// Bridge containers' network namespaces.
    pub netns_dir: PathBuf,
    /// The Prometheus endpoint's settings (off when absent).
    pub metrics_config: PathBuf,
}

const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a debug session's berthctl is looked for, at most.
const DEBUG_CHECK: Duration = Duration::from_secs(5);
/// Editors write a file in steps: a reload waits for the directory to be quiet this long.
const RELOAD_SETTLE: Duration = Duration::from_millis(300);
/// Exit code docker reports when a container's status is unknown.
const UNKNOWN_EXIT: i32 = 255;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Waiting to be (re)started at this time.
    Waiting(Instant),
    Running {
        pid: i32,
        since: Instant,
    },
    /// Exited and not to be restarted.
    Exited(i32),
    /// Could not be set up; the reason.
    Failed(String),
    /// Stopped by an operator (or by the daemon's own stop).
    Stopped,
}

struct Container {
    decl: Declaration,
    /// The declaration's file.
    source: PathBuf,
    state: State,
    /// What the restart policy counts.
    tally: Tally,
    exit_code: i32,
    started_at: String,
    /// The same, in seconds since the epoch (for the metrics).
    started_epoch: Option<f64>,
    /// OOM kills in its earlier runs' cgroups (each run gets a new cgroup).
    oom_kills: u64,
    /// An operator stopped it: it stays down until started.
    stopped: bool,
    /// Adopted from an earlier daemon (not our child): readable when the process ends.
    pidfd: Option<OwnedFd>,
}

impl Container {
    fn new(decl: Declaration, source: PathBuf) -> Container {
        Container {
            decl,
            source,
            state: State::Waiting(Instant::now()),
            tally: Tally::default(),
            exit_code: -1,
            started_at: String::new(),
            started_epoch: None,
            oom_kills: 0,
            stopped: false,
            pidfd: None,
        }
    }

    fn pid(&self) -> Option<i32> {
        match self.state {
            State::Running { pid, .. } => Some(pid),
            _ => None,
        }
    }

    fn state_name(&self) -> &'static str {
        match self.state {
            State::Waiting(_) => "waiting",
            State::Running { .. } => "running",
            State::Exited(_) => "exited",
            State::Failed(_) => "failed",
            State::Stopped => "stopped",
        }
    }
}

pub struct Supervisor {
    paths: Paths,
    containers: BTreeMap<String, Container>,
    cgroup_parent: Option<String>,
    notifier: Option<Notifier>,
    /// `unless-stopped` containers an operator stopped (persisted under /var).
    stopped_forever: BTreeSet<String>,
    /// Exit statuses init handed over that no container claimed yet.
    init_exits: adopt::InitExits,
    reload_due: Option<Instant>,
    control: Option<Control>,
    /// Bridge networking, or why there is none (then bridge containers fail with it).
    bridge: Result<crate::network::Bridge, String>,
    /// `berthctl debug` containers, each with a pidfd of the berthctl that asked.
    debug: BTreeMap<String, OwnedFd>,
}

fn say(msg: &str) {
    eprintln!("berth-daemon: {msg}");
}

/// A container's cgroup directory, beside the daemon's own (see `cgroup_parent`).
fn container_cgroup(parent: Option<&str>, name: &str) -> Option<PathBuf> {
    parent.map(|p| PathBuf::from(format!("/sys/fs/cgroup{p}/{name}")))
}

fn epoch_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The daemon's own cgroup's parent (init gives a delegated service `NAME/main`): the
/// containers' cgroups go beside `main`, in `NAME/containers/`.
fn cgroup_parent() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))?
        .trim()
        .to_string();
    let base = path.strip_suffix("/main")?;
    Some(format!("{base}/containers"))
}

impl Supervisor {
    pub fn new(paths: Paths) -> Supervisor {
        let stopped_forever = status::read_stopped(&paths.state_dir.join("stopped.json"));
        let bridge = crate::network::load_config(&paths.network_config)
            .and_then(|c| crate::network::Bridge::new(&c, paths.netns_dir.clone()));
        if let Err(e) = &bridge {
            say(&format!("bridge networking unavailable: {e}"));
        }
        Supervisor {
            bridge,
            paths,
            containers: BTreeMap::new(),
            cgroup_parent: cgroup_parent(),
            notifier: Notifier::from_env(),
            stopped_forever,
            init_exits: adopt::InitExits::default(),
            reload_due: None,
            control: None,
            debug: BTreeMap::new(),
        }
    }

    /// The Prometheus endpoint, when configured; any error is said and the daemon runs
    /// on without it.
    fn start_metrics(&self) {
        let config = match berth_schema::metrics::MetricsConfig::load(&self.paths.metrics_config) {
            Ok(Some(c)) => c,
            Ok(None) => return,
            Err(e) => return say(&format!("metrics: {e}")),
        };
        let Some(control) = &self.control else {
            return say("metrics: off, as the API is");
        };
        match crate::metrics::start(&config, control.shared.clone()) {
            Ok(at) => say(&format!("metrics: serving on {at}")),
            Err(e) => say(&format!("metrics: {e}")),
        }
    }

    /// Imports the built-in images that are not in the store yet.
    pub fn import_builtin(&self) {
        let Ok(entries) = std::fs::read_dir(&self.paths.builtin_images) else {
            return;
        };
        let store = match berth_store::store::Store::open(&self.paths.store, Default::default()) {
            Ok(s) => s,
            Err(e) => return say(&format!("image store: {e}")),
        };
        let Ok(_lock) = store.lock(berth_store::store::LockKind::Shared) else {
            return;
        };
        for e in entries.flatten() {
            let dir = e.path();
            match berth_store::import::oci_layout(&store, &dir, None, &mut |_| {}) {
                Ok(images) => {
                    for i in images {
                        say(&format!("built-in image {} ready", i.reference));
                    }
                }
                Err(err) => say(&format!(
                    "importing the built-in image {}: {err}",
                    dir.display()
                )),
            }
        }
    }

    /// Starts what is due.
    fn tick(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .containers
            .iter()
            .filter(|(_, c)| matches!(c.state, State::Waiting(t) if t <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in self.start_order(due) {
            let Some(c) = self.containers.get(&name) else {
                continue;
            };
            let netns = match (c.decl.network, self.bridge.as_mut()) {
                (crate::declaration::Network::Bridge, Ok(b)) => b
                    .attach(&name, &c.decl.ports, c.decl.allow_metadata)
                    .map(Some),
                (crate::declaration::Network::Bridge, Err(e)) => {
                    Err(format!("bridge networking unavailable: {e}"))
                }
                _ => Ok(None),
            };
            let result = netns.and_then(|netns| {
                launch::start(
                    &self.paths,
                    &c.decl,
                    self.cgroup_parent.as_deref(),
                    netns,
                    self.notifier.as_ref(),
                )
            });
            let Some(c) = self.containers.get_mut(&name) else {
                continue;
            };
            match result {
                Ok(pid) => {
                    say(&format!("{name}: running (pid {pid})"));
                    c.state = State::Running {
                        pid,
                        since: Instant::now(),
                    };
                    c.started_at = berth_runtime::container::now_rfc3339();
                    c.started_epoch = Some(epoch_now());
                    crate::record(
                        Event::new("container", "start", &name)
                            .with("image", &c.decl.image)
                            .with("pid", pid),
                    );
                }
                Err(e) => {
                    say(&format!("{name}: {e}"));
                    c.state = State::Failed(e);
                }
            }
            // A long start (a pull) must not hide a stop request.
            self.write_status();
        }
        self.apply_rules();
    }

    /// NAT and published ports for the containers on the bridge, when that changed.
    fn apply_rules(&mut self) {
        if let Ok(b) = self.bridge.as_mut() {
            if let Err(e) = b.apply_rules() {
                say(&format!("bridge rules: {e}"));
            }
        }
    }

    /// `names` with each after the ones its `after` names.
    fn start_order(&self, mut names: Vec<String>) -> Vec<String> {
        names.sort_by_key(|n| {
            let mut depth = 0;
            let mut cur = n.clone();
            while let Some(first) = self
                .containers
                .get(&cur)
                .and_then(|c| c.decl.after.first().cloned())
            {
                depth += 1;
                if depth > 64 {
                    break;
                }
                cur = first;
            }
            depth
        });
        names
    }

    /// A container's init exited with `code`: restart or not, by its policy.
    fn exited(&mut self, pid: i32, code: i32) {
        let now = Instant::now();
        let Some((name, c)) = self
            .containers
            .iter_mut()
            .find(|(_, c)| c.pid() == Some(pid))
        else {
            return; // an orphan of some container: reaped, nothing to do
        };
        let State::Running { since, .. } = c.state else {
            return;
        };
        c.pidfd = None;
        c.exit_code = code;
        let exit = Exit {
            code,
            started: since,
            now,
            // An operator's stop never gets here: `stop_containers` makes the state
            // `Stopped` before the process ends, and reaps it itself.
            by_operator: false,
        };
        let decision = c.tally.on_exit(c.decl.restart, exit);
        // Its cgroup goes with the delete: count its OOM kills first.
        let oom = container_cgroup(self.cgroup_parent.as_deref(), name)
            .as_deref()
            .and_then(berth_runtime::cgroup::oom_kills)
            .unwrap_or(0);
        if oom > 0 {
            c.oom_kills += oom;
            crate::record(
                Event::new("container", "oom", name)
                    .with("image", &c.decl.image)
                    .with("kills", oom),
            );
        }
        crate::record(
            Event::new("container", "die", name)
                .with("image", &c.decl.image)
                .with("exitCode", code),
        );
        launch::delete(&self.paths, name);
        if let Some(n) = &self.notifier {
            for fd_name in launch::pipe_names(name) {
                let _ = n.remove(&fd_name);
            }
        }
        c.state = match decision {
            Decision::RestartAt(at) => {
                let delay = at.saturating_duration_since(now).as_millis();
                say(&format!(
                    "{name}: exited with {code}; restarting in {delay} ms"
                ));
                crate::record(
                    Event::new("container", "restart", name)
                        .with("image", &c.decl.image)
                        .with("restarts", c.tally.restarts)
                        .with("delayMs", delay),
                );
                State::Waiting(at)
            }
            Decision::StayDown(reason) => {
                say(&format!("{name}: exited with {code}"));
                match reason {
                    Reason::Stopped => State::Stopped,
                    Reason::Never | Reason::Succeeded | Reason::LimitReached(_) => {
                        State::Exited(code)
                    }
                }
            }
        };
        self.write_status();
    }

    fn save_stopped_forever(&self) {
        let path = self.paths.state_dir.join("stopped.json");
        if let Err(e) = status::write_json(&path, &self.stopped_forever) {
            say(&format!("remembering stopped containers: {e}"));
        }
    }

    /// Stops the named containers that run: SIGTERM, then SIGKILL to all their
    /// processes after the timeout; returns when they are gone and deleted. Their
    /// state becomes `Stopped` (not an exit to restart from).
    fn stop_containers(&mut self, names: &[String]) {
        let running: Vec<(String, i32)> = names
            .iter()
            .filter_map(|n| Some((n.clone(), self.containers.get(n)?.pid()?)))
            .collect();
        for (name, _) in &running {
            let _ = launch::runtime(&self.paths)
                .args(["kill", name, "TERM"])
                .stderr(Stdio::null())
                .status();
            if let Some(c) = self.containers.get_mut(name) {
                c.state = State::Stopped;
                c.pidfd = None;
            }
        }
        let wait = |s: &mut Self, left: &mut Vec<(String, i32)>, until: Instant| {
            while !left.is_empty() && Instant::now() < until {
                s.reap(|s, (pid, code)| {
                    if let Some(c) = s
                        .containers
                        .values_mut()
                        .find(|c| running.iter().any(|(n, p)| *p == pid && *n == c.decl.name))
                    {
                        c.exit_code = code;
                    }
                });
                left.retain(|(_, pid)| nix::sys::signal::kill(Pid::from_raw(*pid), None).is_ok());
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        let mut left = running.clone();
        wait(self, &mut left, Instant::now() + STOP_TIMEOUT);
        for (name, _) in &left {
            say(&format!("{name}: did not stop in time; killing it"));
            let _ = launch::runtime(&self.paths)
                .args(["kill", "--all", name, "KILL"])
                .stderr(Stdio::null())
                .status();
        }
        wait(self, &mut left, Instant::now() + Duration::from_secs(5));
        for (name, _) in &running {
            if let Some(c) = self.containers.get(name) {
                crate::record(
                    Event::new("container", "stop", name)
                        .with("image", &c.decl.image)
                        .with("exitCode", c.exit_code),
                );
            }
            launch::delete(&self.paths, name);
            if let Some(n) = &self.notifier {
                for fd_name in launch::pipe_names(name) {
                    let _ = n.remove(&fd_name);
                }
            }
        }
    }

    /// Stops (if running) and removes container `name`: its runtime state, rootfs,
    /// logs and files. Named volumes stay.
    fn remove_container(&mut self, name: &str) {
        self.stop_containers(&[name.to_string()]);
        launch::delete(&self.paths, name);
        remove_leftovers(&self.paths, name);
        if let Some(c) = self.containers.remove(name) {
            crate::record(Event::new("container", "remove", name).with("image", &c.decl.image));
        }
        if let Ok(b) = self.bridge.as_mut() {
            b.detach(name);
        }
        self.apply_rules();
        if self.stopped_forever.remove(name) {
            self.save_stopped_forever();
        }
    }

    /// Stops every running container (SIGTERM, SIGKILL after the timeout), deletes them.
    /// Not an operator's stop: the next daemon starts them again.
    fn stop_all(&mut self) {
        let names: Vec<String> = self.containers.keys().cloned().collect();
        self.stop_containers(&names);
        for name in &names {
            launch::delete(&self.paths, name);
        }
        self.reap(|_, _| {});
    }

    /// Reaps every exited child, telling `f` (pid, exit code or 128+signal).
    fn reap(&mut self, mut f: impl FnMut(&mut Self, (i32, i32))) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => f(self, (pid.as_raw(), code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => f(self, (pid.as_raw(), 128 + sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// Runs until SIGTERM or SIGINT; then stops the containers. `stored`: the fds init
    /// handed back (see `fdstore::take_listen_fds`).
    pub fn run(&mut self, stored: Vec<(String, OwnedFd)>) -> Result<(), String> {
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|e| format!("PR_SET_CHILD_SUBREAPER: {e}"))?;
        let mut mask = SigSet::empty();
        for s in [
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGCHLD,
            Signal::SIGHUP,
        ] {
            mask.add(s);
        }
        mask.thread_block()
            .map_err(|e| format!("blocking signals: {e}"))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(|e| format!("signalfd: {e}"))?;
        let watch = watch_dir(&self.paths.declarations);
        // The API first: berthctl works (reads answer, changes wait their turn) while
        // the first boot imports the built-in images.
        let shared = crate::api::Shared::new(
            self.paths.log_dir.clone(),
            self.paths.store.clone(),
            self.paths.registries.clone(),
        );
        match crate::api::start(&self.paths.socket, shared) {
            Ok(c) => self.control = Some(c),
            Err(e) => say(&format!("no API: {e}")),
        }
        self.start_metrics();
        self.import_builtin();
        self.load();
        self.remove_stale_debug();
        self.adopt(stored);
        self.apply_rules();
        self.write_status();
        if let Some(n) = &self.notifier {
            let _ = n.ready();
        }
        loop {
            // Signals first: a stop that arrived while the daemon was busy (importing,
            // pulling) must win over starting anything more.
            if self.handle_signals(&signals) {
                say("stopping the containers");
                for name in std::mem::take(&mut self.debug).into_keys() {
                    self.remove_debug(&name, "ended (the daemon stops)");
                }
                self.stop_all();
                self.write_status();
                return Ok(());
            }
            self.handle_requests();
            self.reap_debug();
            if self.reload_due.is_some_and(|t| t <= Instant::now()) {
                self.reload_due = None;
                self.reload();
                self.write_status();
            }
            self.tick();
            self.write_status();
            let ready = self.wait(&signals, watch.as_ref());
            if ready.inotify {
                if let Some(w) = &watch {
                    drain(w);
                }
                self.reload_due = Some(Instant::now() + RELOAD_SETTLE);
            }
            for name in ready.ended {
                if let Some(pid) = self.containers.get(&name).and_then(Container::pid) {
                    let code = self.init_exits.wait_for(pid);
                    self.exited(pid, code.unwrap_or(UNKNOWN_EXIT));
                }
            }
        }
    }

    fn handle_requests(&mut self) {
        let Some(control) = &self.control else {
            return;
        };
        control.clear_wake();
        let requests: Vec<Request> = control.requests.try_iter().collect();
        for r in requests {
            self.handle(r);
        }
    }

    /// Waits for a signal, a request, a change of the declarations, an adopted
    /// container's end, or the next due time.
    fn wait(&self, signals: &SignalFd, watch: Option<&OwnedFd>) -> Ready {
        let due = self
            .containers
            .values()
            .filter_map(|c| match c.state {
                State::Waiting(t) => Some(t),
                _ => None,
            })
            .chain(self.reload_due)
            .min();
        let mut timeout = due
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600));
        if !self.debug.is_empty() {
            // Whether each debug session's berthctl is still there.
            timeout = timeout.min(DEBUG_CHECK);
        }
        let mut fds = vec![PollFd::new(signals, PollFlags::IN)];
        if let Some(c) = &self.control {
            fds.push(PollFd::from_borrowed_fd(c.wake_fd(), PollFlags::IN));
        }
        let watch_index = watch.map(|w| {
            fds.push(PollFd::new(w, PollFlags::IN));
            fds.len() - 1
        });
        let first_pidfd = fds.len();
        let adopted: Vec<&String> = self
            .containers
            .iter()
            .filter_map(|(n, c)| {
                fds.push(PollFd::from_borrowed_fd(
                    c.pidfd.as_ref()?.as_fd(),
                    PollFlags::IN,
                ));
                Some(n)
            })
            .collect();
        let ts = rustix::event::Timespec {
            tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        if rustix::event::poll(&mut fds, Some(&ts)).is_err() {
            return Ready::default();
        }
        let readable = |i: usize| !fds[i].revents().is_empty();
        Ready {
            inotify: watch_index.is_some_and(readable),
            ended: adopted
                .iter()
                .enumerate()
                .filter(|(i, _)| readable(first_pidfd + i))
                .map(|(_, n)| (*n).clone())
                .collect(),
        }
    }

    /// Reads the pending signals and reaps exited children; true on SIGTERM or SIGINT.
    /// SIGHUP reloads the declarations.
    fn handle_signals(&mut self, signals: &SignalFd) -> bool {
        let mut stop = false;
        while let Ok(Some(info)) = signals.read_signal() {
            if info.ssi_signo == Signal::SIGTERM as u32 || info.ssi_signo == Signal::SIGINT as u32 {
                stop = true;
            }
            if info.ssi_signo == Signal::SIGHUP as u32 {
                self.reload_due = Some(Instant::now());
            }
        }
        self.reap(|s, (pid, code)| s.exited(pid, code));
        stop
    }
}

#[derive(Default)]
struct Ready {
    inotify: bool,
    /// Adopted containers whose process ended.
    ended: Vec<String>,
}

fn remove_rootfs(paths: &Paths, name: &str) -> Result<(), String> {
    let store = berth_store::store::Store::open(&paths.store, Default::default())
        .map_err(|e| e.to_string())?;
    let _lock = store
        .lock(berth_store::store::LockKind::Shared)
        .map_err(|e| e.to_string())?;
    store.remove_rootfs(name).map_err(|e| e.to_string())
}

/// A removed container's rootfs, logs and run directory.
fn remove_leftovers(paths: &Paths, name: &str) {
    if let Err(e) = remove_rootfs(paths, name) {
        say(&format!("{name}: removing its rootfs: {e}"));
    }
    for file in [format!("{name}.log"), format!("{name}.log.1")] {
        let _ = std::fs::remove_file(paths.log_dir.join(file));
    }
    let _ = std::fs::remove_dir_all(paths.run_dir.join(name));
}

/// An inotify watch on the declarations' directory (made if missing); None when that
/// fails (then only the API's Reload and SIGHUP reload, as said).
fn watch_dir(dir: &Path) -> Option<OwnedFd> {
    use rustix::fs::inotify;
    let _ = std::fs::create_dir_all(dir);
    let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK).ok()?;
    let flags = inotify::WatchFlags::CLOSE_WRITE
        | inotify::WatchFlags::CREATE
        | inotify::WatchFlags::DELETE
        | inotify::WatchFlags::MOVED_FROM
        | inotify::WatchFlags::MOVED_TO
        | inotify::WatchFlags::MODIFY;
    match inotify::add_watch(&fd, dir, flags) {
        Ok(_) => Some(fd),
        Err(e) => {
            say(&format!(
                "watching {}: {e}; reload with SIGHUP or the API",
                dir.display()
            ));
            None
        }
    }
}

fn drain(fd: &OwnedFd) {
    let mut buf = [0u8; 4096];
    while matches!(rustix::io::read(fd, &mut buf), Ok(n) if n > 0) {}
}
