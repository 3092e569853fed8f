//! The daemon's loop: keeps the declared containers as declared. It starts what is due
//! (see `launch`), restarts per policy with backoff, answers the API's changes, reloads
//! the declarations when their directory changes, and stops everything on SIGTERM.
//!
//! The containers are the daemon's children (`berth-runtime create` exits once the
//! container waits for `start`, and the container's init is re-parented to the daemon,
//! a child subreaper). When the daemon dies they are re-parented to init instead, and
//! keep running: their log pipes are in init's fd store, their pids in `status.json`
//! under /run. The next daemon adopts them (a pidfd tells it when one ends; init, which
//! reaped it, tells it the exit status) and takes the pipes back.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use berth_control::ExitRecord;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use rustix::event::{PollFd, PollFlags};

use crate::api::{Control, Published, Request};
use crate::declaration::{Declaration, Restart};
use crate::fdstore::Notifier;
use crate::launch;
use crate::status::{self, Record};

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
}

/// First restart delay, doubling per failure up to the cap; reset after a good run.
/// (The cap is what keeps a crash loop from starving the host.)
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
const GOOD_RUN: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
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
    failures: u32,
    restarts: u32,
    exit_code: i32,
    started_at: String,
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
            failures: 0,
            restarts: 0,
            exit_code: -1,
            started_at: String::new(),
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
    init_exits: Vec<ExitRecord>,
    reload_due: Option<Instant>,
    control: Option<Control>,
    /// Bridge networking, or why there is none (then bridge containers fail with it).
    bridge: Result<crate::network::Bridge, String>,
}

fn say(msg: &str) {
    eprintln!("berth-daemon: {msg}");
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
            init_exits: Vec::new(),
            reload_due: None,
            control: None,
        }
    }

    fn status_path(&self) -> PathBuf {
        self.paths.run_dir.join("status.json")
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

    /// Every declaration, from the operator's directory and the API's (the operator's
    /// wins a name both declare); problems are reported and the rest goes on.
    fn read_declarations(&self) -> BTreeMap<String, (Declaration, PathBuf)> {
        let mut out: BTreeMap<String, (Declaration, PathBuf)> = BTreeMap::new();
        for dir in [&self.paths.declarations, &self.paths.api_declarations] {
            let (decls, errors) = crate::declaration::load_dir(dir);
            for e in errors {
                say(&format!("skipped: {e}"));
            }
            for d in decls {
                let source = dir.join(format!("{}.toml", d.name));
                if let Some((_, first)) = out.get(&d.name) {
                    say(&format!(
                        "skipped: {}: {} already declares {:?}",
                        source.display(),
                        first.display(),
                        d.name
                    ));
                    continue;
                }
                out.insert(d.name.clone(), (d, source));
            }
        }
        out
    }

    /// Reads the declarations (the daemon's start).
    pub fn load(&mut self) {
        for (name, (decl, source)) in self.read_declarations() {
            let mut c = Container::new(decl, source);
            if self.stopped_forever.contains(&name) && c.decl.restart == Restart::UnlessStopped {
                c.stopped = true;
                c.state = State::Stopped;
            }
            self.containers.insert(name, c);
        }
    }

    /// Takes over what an earlier daemon of this boot left: running containers (with
    /// their log pipes from init's fd store), the statuses of those that ended
    /// meanwhile, operators' stops, restart counts. Containers whose declaration is
    /// gone are removed.
    pub fn adopt(&mut self, stored: Vec<(String, OwnedFd)>) {
        let records = status::read_records(&self.status_path());
        // Every pipe init kept is dropped from its store below unless it is pumped.
        let stored_names: BTreeSet<String> = stored.iter().map(|(n, _)| n.clone()).collect();
        let mut kept = BTreeSet::new();
        let mut fds: BTreeMap<String, OwnedFd> = stored.into_iter().collect();
        let mut ended = Vec::new();
        for (name, rec) in &records {
            let [out, err] = launch::pipe_names(name);
            let pipes = (fds.remove(&out), fds.remove(&err));
            let Some(c) = self.containers.get_mut(name) else {
                if rec.state == "running" && owns(self.cgroup_parent.as_deref(), name, rec.pid) {
                    say(&format!("{name}: no longer declared; removing it"));
                    launch::delete(&self.paths, name);
                    remove_leftovers(&self.paths, name);
                }
                crate::netns::remove(&self.paths.netns_dir.join(name));
                continue;
            };
            c.restarts = rec.restarts;
            c.exit_code = rec.exit_code;
            c.started_at = rec.started_at.clone();
            if let (Some(address), Ok(bridge)) = (rec.address, self.bridge.as_mut()) {
                if c.decl.network == crate::declaration::Network::Bridge {
                    bridge.adopt(
                        name,
                        address,
                        crate::network::Attached {
                            address,
                            ports: c.decl.ports.clone(),
                            allow_metadata: c.decl.allow_metadata,
                        },
                    );
                }
            }
            if rec.stopped {
                c.stopped = true;
                c.state = State::Stopped;
            }
            if rec.state != "running" || rec.pid <= 0 {
                if rec.state == "exited" && !c.stopped {
                    c.state = State::Exited(rec.exit_code);
                }
                continue;
            }
            // Its output from while the daemon was away is in the pipes: read it now.
            launch::pump_logs(&self.paths, name, pipes.0, pipes.1);
            kept.extend(launch::pipe_names(name));
            c.state = State::Running {
                pid: rec.pid,
                since: Instant::now(),
            };
            let pidfd = owns(self.cgroup_parent.as_deref(), name, rec.pid)
                .then(|| {
                    rustix::process::pidfd_open(
                        rustix::process::Pid::from_raw(rec.pid)?,
                        rustix::process::PidfdFlags::empty(),
                    )
                    .ok()
                })
                .flatten();
            match pidfd {
                Some(fd) => {
                    say(&format!("{name}: re-adopted (pid {})", rec.pid));
                    c.pidfd = Some(fd);
                }
                None => ended.push((name.clone(), rec.pid)),
            }
        }
        // Pipes of containers that ended or that nobody knows any more: let init close
        // them (what was left in them has been read above, or had no reader).
        drop(fds);
        for name in stored_names.difference(&kept) {
            if let Some(n) = &self.notifier {
                let _ = n.remove(name);
            }
        }
        for (name, pid) in ended {
            let code = self.exit_from_init(pid);
            say(&format!("{name}: ended while the daemon was away"));
            self.exited(pid, code.unwrap_or(UNKNOWN_EXIT));
        }
    }

    /// The exit status init kept for `pid` (a container re-parented to it): asked
    /// until it comes (init reaps a moment after a pidfd says the process ended).
    fn exit_from_init(&mut self, pid: i32) -> Option<i32> {
        for attempt in 0..20 {
            if let Some(i) = self.init_exits.iter().position(|r| r.pid == pid) {
                let r = self.init_exits.remove(i);
                return Some(if r.signal != 0 {
                    128 + r.signal
                } else {
                    r.code
                });
            }
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(50));
            }
            match take_exit_statuses() {
                Ok(list) => self.init_exits.extend(list),
                Err(e) => {
                    say(&format!("asking init for exit statuses: {e}"));
                    return None;
                }
            }
            let excess = self.init_exits.len().saturating_sub(1024);
            self.init_exits.drain(..excess);
        }
        say(&format!("init kept no exit status for pid {pid}"));
        None
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
        if since.elapsed() >= GOOD_RUN {
            c.failures = 0;
        }
        let again = match c.decl.restart {
            Restart::No => false,
            Restart::Always | Restart::UnlessStopped => true,
            Restart::OnFailure(max) => code != 0 && max.is_none_or(|m| c.restarts < m),
        };
        launch::delete(&self.paths, name);
        if let Some(n) = &self.notifier {
            for fd_name in launch::pipe_names(name) {
                let _ = n.remove(&fd_name);
            }
        }
        if again {
            let delay = BACKOFF_FIRST
                .saturating_mul(1 << c.failures.min(7))
                .min(BACKOFF_MAX);
            c.failures += 1;
            c.restarts += 1;
            say(&format!(
                "{name}: exited with {code}; restarting in {} ms",
                delay.as_millis()
            ));
            c.state = State::Waiting(Instant::now() + delay);
        } else {
            say(&format!("{name}: exited with {code}"));
            c.state = State::Exited(code);
        }
        self.write_status();
    }

    /// `status.json` (what the next daemon adopts, and what operators and tests read)
    /// and the API's snapshot.
    fn write_status(&self) {
        let records: BTreeMap<&String, Record> = self
            .containers
            .iter()
            .map(|(n, c)| {
                let rec = Record {
                    state: c.state_name().to_string(),
                    pid: c.pid().unwrap_or(0),
                    restarts: c.restarts,
                    exit_code: c.exit_code,
                    error: match &c.state {
                        State::Failed(e) => e.clone(),
                        _ => String::new(),
                    },
                    started_at: c.started_at.clone(),
                    stopped: c.stopped,
                    address: self.bridge.as_ref().ok().and_then(|b| b.address(n)),
                };
                (n, rec)
            })
            .collect();
        if let Err(e) = status::write_json(&self.status_path(), &records) {
            say(&format!("writing the status: {e}"));
        }
        if let Some(control) = &self.control {
            control.publish(
                self.containers
                    .iter()
                    .map(|(n, c)| (n.clone(), self.published(c)))
                    .collect(),
            );
        }
    }

    fn published(&self, c: &Container) -> Published {
        let d = &c.decl;
        let ports: Vec<String> = d.ports.iter().map(port_text).collect();
        let cgroup = self
            .cgroup_parent
            .as_ref()
            .map(|p| PathBuf::from(format!("/sys/fs/cgroup{p}/{}", d.name)));
        let error = match &c.state {
            State::Failed(e) => e.clone(),
            _ => String::new(),
        };
        let info = berth_control::ContainerInfo {
            name: d.name.clone(),
            image: d.image.clone(),
            state: c.state_name().to_string(),
            pid: c.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
            restarts: c.restarts,
            exit_code: c.exit_code,
            error,
            started_at: c.started_at.clone(),
            ports,
            network: serde_json::to_value(d.network)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            address: self
                .bridge
                .as_ref()
                .ok()
                .and_then(|b| b.address(&d.name))
                .map(|a| a.to_string())
                .unwrap_or_default(),
            source: c.source.display().to_string(),
        };
        let detail = serde_json::json!({
            "Name": d.name,
            "State": {
                "Status": info.state,
                "Pid": info.pid,
                "ExitCode": info.exit_code,
                "Error": info.error,
                "StartedAt": info.started_at,
                "Restarts": info.restarts,
                "StoppedByOperator": c.stopped,
            },
            "Declaration": d,
            "Source": info.source,
            "LogPath": self.paths.log_dir.join(format!("{}.log", d.name)),
            "Rootfs": self.paths.store.join("containers").join(&d.name).join("rootfs"),
            "Bundle": self.paths.run_dir.join(&d.name).join("bundle"),
            "Cgroup": cgroup,
            "NetworkSettings": {
                "Network": info.network,
                "IPAddress": info.address,
                "Ports": info.ports,
                "NetNs": (d.network == crate::declaration::Network::Bridge)
                    .then(|| self.paths.netns_dir.join(&d.name)),
            },
        });
        Published {
            info,
            detail,
            cgroup,
        }
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
        self.containers.remove(name);
        if let Ok(b) = self.bridge.as_mut() {
            b.detach(name);
        }
        self.apply_rules();
        if self.stopped_forever.remove(name) {
            self.save_stopped_forever();
        }
    }

    /// Reads the declarations again: new ones start, changed ones are recreated (with
    /// a new rootfs when the image changed), and those whose file is gone are stopped
    /// and removed. A file that no longer parses leaves its container as it was.
    fn reload(&mut self) {
        let declared = self.read_declarations();
        let gone: Vec<String> = self
            .containers
            .iter()
            .filter(|(n, c)| !declared.contains_key(*n) && !c.source.exists())
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            say(&format!(
                "{name}: declaration removed; removing the container"
            ));
            self.remove_container(&name);
        }
        for (name, (decl, source)) in declared {
            let Some(c) = self.containers.get_mut(&name) else {
                say(&format!("{name}: declared"));
                self.containers.insert(name, Container::new(decl, source));
                continue;
            };
            c.source = source;
            if c.decl == decl {
                continue;
            }
            say(&format!(
                "{name}: declaration changed; recreating the container"
            ));
            let image_changed = c.decl.image != decl.image;
            self.stop_containers(std::slice::from_ref(&name));
            if let Ok(b) = self.bridge.as_mut() {
                b.detach(&name); // its network may have changed: made again at start
            }
            if image_changed {
                if let Err(e) = remove_rootfs(&self.paths, &name) {
                    say(&format!("{name}: removing its old rootfs: {e}"));
                }
            }
            if let Some(c) = self.containers.get_mut(&name) {
                c.decl = decl;
                c.failures = 0;
                c.state = if c.stopped {
                    State::Stopped
                } else {
                    State::Waiting(Instant::now())
                };
            }
        }
    }

    /// One change from the API.
    fn handle(&mut self, request: Request) {
        let (reply, result) = match request {
            Request::Run {
                name,
                declaration,
                reply,
            } => (reply, self.run_declared(&name, &declaration)),
            Request::Start(name, reply) => (reply, self.start_request(&name)),
            Request::Stop(name, reply) => (reply, self.stop_request(&name)),
            Request::Restart(name, reply) => {
                let r = self.known(&name).map(|_| ());
                if r.is_ok() {
                    self.stop_containers(std::slice::from_ref(&name));
                }
                (reply, r.and_then(|()| self.start_request(&name)))
            }
            Request::Remove { name, force, reply } => (reply, self.remove_request(&name, force)),
            Request::Reload(reply) => {
                self.reload();
                (reply, Ok(()))
            }
        };
        self.write_status();
        let _ = reply.send(result);
    }

    fn known(&self, name: &str) -> Result<&Container, String> {
        self.containers
            .get(name)
            .ok_or_else(|| format!("no container named {name:?}"))
    }

    /// `berthctl run`: a declaration kept under /var/lib/berth, started at once.
    fn run_declared(&mut self, name: &str, text: &str) -> Result<(), String> {
        if let Ok(c) = self.known(name) {
            return Err(format!(
                "a container named {name:?} already exists (declared in {})",
                c.source.display()
            ));
        }
        let path = self.paths.api_declarations.join(format!("{name}.toml"));
        let decl = Declaration::parse(name, text, &path).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&self.paths.api_declarations)
            .and_then(|()| std::fs::write(&path, text))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        say(&format!("{name}: declared through the API"));
        self.containers
            .insert(name.to_string(), Container::new(decl, path));
        Ok(())
    }

    fn start_request(&mut self, name: &str) -> Result<(), String> {
        self.known(name)?;
        if self.stopped_forever.remove(name) {
            self.save_stopped_forever();
        }
        let Some(c) = self.containers.get_mut(name) else {
            return Ok(());
        };
        c.stopped = false;
        if c.pid().is_none() {
            c.failures = 0;
            c.state = State::Waiting(Instant::now());
        }
        Ok(())
    }

    fn stop_request(&mut self, name: &str) -> Result<(), String> {
        let c = self.known(name)?;
        if c.decl.restart == Restart::UnlessStopped && self.stopped_forever.insert(name.into()) {
            self.save_stopped_forever();
        }
        self.stop_containers(&[name.to_string()]);
        if let Some(c) = self.containers.get_mut(name) {
            c.stopped = true;
            c.state = State::Stopped;
        }
        Ok(())
    }

    fn remove_request(&mut self, name: &str, force: bool) -> Result<(), String> {
        let c = self.known(name)?;
        if !c.source.starts_with(&self.paths.api_declarations) {
            return Err(format!(
                "{name:?} is declared by {}: remove that file (the daemon then removes the container)",
                c.source.display()
            ));
        }
        if c.pid().is_some() && !force {
            return Err(format!(
                "container {name:?} is running: stop it first, or remove it with -f"
            ));
        }
        let source = c.source.clone();
        self.remove_container(name);
        std::fs::remove_file(&source).map_err(|e| format!("{}: {e}", source.display()))
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
        self.import_builtin();
        self.load();
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
                self.stop_all();
                self.write_status();
                return Ok(());
            }
            self.handle_requests();
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
                    let code = self.exit_from_init(pid);
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
        let timeout = due
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600));
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

/// Whether `pid` is container `name`'s init: in its cgroup (when the daemon knows the
/// containers' cgroups), else merely alive.
fn owns(cgroup_parent: Option<&str>, name: &str, pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match cgroup_parent {
        Some(parent) => std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .is_ok_and(|t| t.lines().any(|l| l == format!("0::{parent}/{name}"))),
        None => nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok(),
    }
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

/// `8080:80/tcp`, `127.0.0.1:5353:53/udp`.
fn port_text(p: &crate::declaration::Port) -> String {
    let proto = match p.protocol {
        crate::declaration::Protocol::Tcp => "tcp",
        crate::declaration::Protocol::Udp => "udp",
    };
    match p.host_ip {
        Some(ip) => format!("{ip}:{}:{}/{proto}", p.host_port, p.container_port),
        None => format!("{}:{}/{proto}", p.host_port, p.container_port),
    }
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

/// The exit statuses init kept for this service (see `Init1.TakeExitStatuses`).
fn take_exit_statuses() -> Result<Vec<ExitRecord>, String> {
    berth_control::zbus::block_on(async {
        let conn = berth_control::connect(Path::new(berth_control::INIT_SOCKET)).await?;
        let init = berth_control::InitProxy::new(&conn).await?;
        init.take_exit_statuses().await
    })
    .map_err(|e| e.to_string())
}
