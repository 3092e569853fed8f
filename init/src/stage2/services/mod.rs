//! The host's own services (`/usr/lib/berth/services/*.toml`, see `berth-services`):
//! started in dependency order, watched until ready, restarted with backoff, their output
//! logged, stopped in reverse order at shutdown. Everything here is driven by PID 1's
//! event loop (`supervise.rs`) and never blocks: each state has a deadline instead.
//!
//! What a service sees: stdin /dev/null, stdout and stderr to its log, its own session
//! and cgroup (`/sys/fs/cgroup/berth/<name>`, or `<name>/main` when delegated), `PATH`,
//! its `env`, `NOTIFY_SOCKET` (sd_notify: readiness, status, fd store), `BERTH_SERVICE`,
//! `BERTH_CGROUP` (its subtree), and the fds it stored before as `LISTEN_FDS`/`LISTEN_FDNAMES`.

pub mod cgroup;
pub mod logs;
pub mod notify;

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_control::{ExitRecord, ServiceStatus};
pub use berth_services::ServiceDef;
use berth_services::{Readiness, Restart};
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::sys::child;
use cgroup::ServiceCgroup;
use logs::{Pipe, ServiceLog, Stream};
use notify::NotifySocket;

pub const SERVICES_DIR: &str = "/usr/lib/berth/services";
pub const NOTIFY_DIR: &str = "/run/berth/notify";
pub const LOG_DIR: &str = "/var/log/berth";
const SERVICE_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// After SIGKILL, how long a service may take to vanish before init gives up on it (a
/// process in uninterruptible sleep cannot die until its I/O ends).
const KILL_GRACE: Duration = Duration::from_secs(3);
/// A service that ran this long before dying starts its backoff from the beginning.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// How often a socket-readiness service is tried.
const SOCKET_POLL: Duration = Duration::from_millis(50);
/// The fd store's limit per service.
const MAX_STORED_FDS: usize = 256;
/// Exit statuses kept per service until it takes them.
const MAX_EXITS: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not running and not meant to (never started, stopped on request, exited cleanly).
    Inactive,
    /// Meant to run, waiting for its dependencies.
    Waiting,
    /// Running, not ready yet.
    Starting,
    Ready,
    Stopping,
    /// Died; restarts when its backoff ends.
    Backoff,
    /// Died and will not be restarted.
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Inactive => "inactive",
            State::Waiting => "waiting",
            State::Starting => "starting",
            State::Ready => "ready",
            State::Stopping => "stopping",
            State::Backoff => "restarting",
            State::Failed => "failed",
        }
    }
}

/// A readable descriptor the event loop watches for the services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Notify(usize),
    Pipe(usize, usize),
}

struct Service {
    def: ServiceDef,
    cgroup: Option<ServiceCgroup>,
    state: State,
    pid: Option<Pid>,
    started_at: Option<Instant>,
    restarts: u32,
    /// Consecutive deaths, for the backoff.
    failures: u32,
    last_exit: Option<String>,
    status_text: Option<String>,
    /// Should be running (autostart, or asked for).
    wanted: bool,
    /// A restart was asked for: start again once stopped.
    restart_after_stop: bool,
    /// Starting: ready timeout; Backoff: restart time; Stopping: SIGKILL, then give up.
    deadline: Option<Instant>,
    killed: bool,
    /// Ready once or failed once: the ready line does not wait for it any more.
    settled: bool,
    /// Its main process exited 0 by itself and it is not restarted: its work is done
    /// (a one-shot, or a service with nothing to do here). Shown as `done`, and as
    /// healthy as a ready one.
    done: bool,
    notify: Option<NotifySocket>,
    fds: Vec<(String, OwnedFd)>,
    exits: Vec<ExitRecord>,
    log: ServiceLog,
    pipes: Vec<Pipe>,
    since: Duration,
}

pub struct Manager {
    services: Vec<Service>,
    cgroot: Option<PathBuf>,
    notify_dir: PathBuf,
    shutting_down: bool,
}

impl Manager {
    /// `defs` in start order (`berth_services::check_set`); `also_start` names services
    /// without `autostart` to start anyway (the `berth.start=` kernel parameter).
    pub fn new(defs: Vec<ServiceDef>, also_start: &[String], cgroot: Option<PathBuf>) -> Self {
        Self::with_dirs(
            defs,
            also_start,
            cgroot,
            Path::new(NOTIFY_DIR),
            Path::new(LOG_DIR),
        )
    }

    fn with_dirs(
        defs: Vec<ServiceDef>,
        also_start: &[String],
        cgroot: Option<PathBuf>,
        notify_dir: &Path,
        log_dir: &Path,
    ) -> Self {
        for name in also_start {
            if !defs.iter().any(|d| &d.name == name) {
                crate::warn!("berth.start={name}: no such service");
            }
        }
        let services = defs
            .into_iter()
            .map(|def| {
                let wanted = def.autostart || also_start.contains(&def.name);
                Service {
                    cgroup: cgroot.as_deref().map(|r| ServiceCgroup::new(r, &def)),
                    log: ServiceLog::new(
                        log_dir.join(format!("{}.log", def.name)),
                        def.log_max_bytes,
                    ),
                    state: if wanted {
                        State::Waiting
                    } else {
                        State::Inactive
                    },
                    wanted,
                    settled: !wanted,
                    done: false,
                    def,
                    pid: None,
                    started_at: None,
                    restarts: 0,
                    failures: 0,
                    last_exit: None,
                    status_text: None,
                    restart_after_stop: false,
                    deadline: None,
                    killed: false,
                    notify: None,
                    fds: Vec::new(),
                    exits: Vec::new(),
                    pipes: Vec::new(),
                    since: crate::log::uptime(),
                }
            })
            .collect();
        Self {
            services,
            cgroot,
            notify_dir: notify_dir.to_path_buf(),
            shutting_down: false,
        }
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.services.iter().position(|s| s.def.name == name)
    }

    fn state_of(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.def.name == name)
    }

    /// Whether service `i` may start: every `requires` ready, every `after` ready or done
    /// trying (systemd's After= orders start jobs; it does not wait for success).
    fn dependencies_met(&self, i: usize) -> bool {
        let def = &self.services[i].def;
        def.requires
            .iter()
            .all(|r| self.state_of(r).is_some_and(|s| s.state == State::Ready))
            && def.after.iter().all(|a| {
                self.state_of(a).is_none_or(|s| {
                    matches!(s.state, State::Ready | State::Failed | State::Inactive)
                        || s.failures > 0
                })
            })
    }

    /// Moves every service along: starts what may start, checks readiness, restarts
    /// after backoff, escalates stops. Returns when to call again at the latest.
    pub fn tick(&mut self, now: Instant) -> Option<Instant> {
        for i in 0..self.services.len() {
            self.tick_one(i, now);
        }
        let mut next = self.services.iter().filter_map(|s| s.deadline).min();
        let polling = self
            .services
            .iter()
            .any(|s| s.state == State::Starting && matches!(s.def.ready, Readiness::Socket(_)));
        if polling {
            let poll_at = now + SOCKET_POLL;
            next = Some(next.map_or(poll_at, |n| n.min(poll_at)));
        }
        next
    }

    fn tick_one(&mut self, i: usize, now: Instant) {
        let due = self.services[i].deadline.is_some_and(|d| d <= now);
        match self.services[i].state {
            State::Waiting if !self.shutting_down && self.dependencies_met(i) => self.start(i, now),
            State::Backoff if due && !self.shutting_down => self.start(i, now),
            State::Starting => {
                let s = &mut self.services[i];
                if let Readiness::Socket(path) = &s.def.ready {
                    if crate::sys::unix_socket_listens(path) {
                        self.set_ready(i);
                        return;
                    }
                }
                if due {
                    let s = &mut self.services[i];
                    crate::warn!(
                        "service {} not ready after {} ms; stopping it",
                        s.def.name,
                        s.def.ready_timeout.as_millis()
                    );
                    s.last_exit = Some("not ready in time".into());
                    s.restart_after_stop = s.def.restart != Restart::Never;
                    self.stop(i, now);
                }
            }
            State::Stopping if due => self.escalate(i, now),
            _ => {}
        }
    }

    fn set_ready(&mut self, i: usize) {
        let s = &mut self.services[i];
        if s.state == State::Starting {
            s.state = State::Ready;
            s.settled = true;
            s.deadline = None;
            s.since = crate::log::uptime();
            crate::info!("service {} ready", s.def.name);
        }
    }

    fn start(&mut self, i: usize, now: Instant) {
        let notify_dir = self.notify_dir.clone();
        let s = &mut self.services[i];
        s.deadline = None;
        s.killed = false;
        if s.notify.is_none() {
            match NotifySocket::bind(&notify_dir, &s.def.name) {
                Ok(n) => s.notify = Some(n),
                Err(e) => crate::warn!("service {}: notify socket: {e}", s.def.name),
            }
        }
        s.log.clear_tail();
        s.done = false;
        match spawn(s) {
            Ok(pid) => {
                crate::info!("service {} started (pid {pid})", s.def.name);
                s.pid = Some(pid);
                s.started_at = Some(now);
                s.state = State::Starting;
                s.since = crate::log::uptime();
                s.deadline = Some(now + s.def.ready_timeout);
                if s.def.ready == Readiness::Started {
                    self.set_ready(i);
                }
            }
            Err(e) => {
                crate::warn!("service {}: {e}", s.def.name);
                s.last_exit = Some(format!("did not start: {e}"));
                self.after_death(i, now, false);
            }
        }
    }

    /// Sends the stop signal to the service (its main cgroup, so helpers too); SIGKILL
    /// follows at the stop timeout.
    fn stop(&mut self, i: usize, now: Instant) {
        let s = &mut self.services[i];
        let Some(pid) = s.pid else {
            s.state = if s.state == State::Failed {
                State::Failed
            } else {
                State::Inactive
            };
            s.deadline = None;
            return;
        };
        let signal = Signal::try_from(s.def.stop_signal).unwrap_or(Signal::SIGTERM);
        crate::info!("service {}: stopping ({signal})", s.def.name);
        signal_scope(s, pid, signal);
        s.state = State::Stopping;
        s.since = crate::log::uptime();
        s.killed = false;
        s.deadline = Some(now + s.def.stop_timeout);
    }

    /// The stop timeout passed: SIGKILL; the grace after it passed: give up on it.
    fn escalate(&mut self, i: usize, now: Instant) {
        let shutting_down = self.shutting_down;
        let s = &mut self.services[i];
        if !s.killed {
            crate::warn!(
                "service {} did not stop within {} ms; killing it",
                s.def.name,
                s.def.stop_timeout.as_millis()
            );
            let whole = shutting_down || !s.def.delegate;
            match (&s.cgroup, s.pid) {
                (Some(cg), _) => {
                    let dir = if whole { &cg.dir } else { &cg.main };
                    if let Err(e) = cgroup::kill(dir) {
                        crate::warn!("service {}: {e}", s.def.name);
                    }
                }
                (None, Some(pid)) => {
                    let _ = killpg(pid, Signal::SIGKILL);
                }
                (None, None) => {}
            }
            s.killed = true;
            s.deadline = Some(now + KILL_GRACE);
            return;
        }
        crate::warn!(
            "service {} still there {} s after SIGKILL (stuck in the kernel?); going on without it",
            s.def.name,
            KILL_GRACE.as_secs()
        );
        s.pid = None;
        s.deadline = None;
        s.state = State::Failed;
        s.settled = true;
    }

    /// Records a child's exit if it was a service's main process; false if not ours.
    pub fn on_exit(&mut self, pid: Pid, status: WaitStatus, now: Instant) -> bool {
        let Some(i) = self.services.iter().position(|s| s.pid == Some(pid)) else {
            return false;
        };
        let s = &mut self.services[i];
        s.pid = None;
        let clean = matches!(status, WaitStatus::Exited(_, 0));
        let what = describe(status);
        crate::info!("service {} (pid {pid}) {what}", s.def.name);
        s.last_exit = Some(what);
        self.drain_pipes(i);
        let s = &mut self.services[i];
        if s.state == State::Stopping {
            self.after_stop(i, now);
        } else {
            if s.started_at
                .is_some_and(|t| now.duration_since(t) >= STABLE_AFTER)
            {
                s.failures = 0;
            }
            self.after_death(i, now, clean);
        }
        true
    }

    /// The service was asked to stop and its main process is gone.
    fn after_stop(&mut self, i: usize, now: Instant) {
        let shutting_down = self.shutting_down;
        let s = &mut self.services[i];
        s.deadline = None;
        if let Some(cg) = &s.cgroup {
            // The rest of its processes go with it; a delegated subtree only at the end.
            let dir = if shutting_down || !s.def.delegate {
                &cg.dir
            } else {
                &cg.main
            };
            if cgroup::populated(dir) {
                let _ = cgroup::kill(dir);
            }
        }
        s.state = State::Inactive;
        s.since = crate::log::uptime();
        if s.restart_after_stop && !shutting_down {
            s.restart_after_stop = false;
            s.wanted = true;
            s.restarts += 1;
            self.start(i, now);
        }
    }

    /// The service died (or could not start) without being asked to stop.
    fn after_death(&mut self, i: usize, now: Instant, clean: bool) {
        let shutting_down = self.shutting_down;
        let s = &mut self.services[i];
        if let Some(cg) = &s.cgroup {
            // What it left in its main cgroup would confuse the next instance.
            if cgroup::populated(&cg.main) {
                let _ = cgroup::kill(&cg.main);
            }
        }
        s.settled = true;
        s.since = crate::log::uptime();
        if !clean {
            print_tail(s);
        }
        let restart = match s.def.restart {
            Restart::Always => true,
            Restart::OnFailure => !clean,
            Restart::Never => false,
        };
        if restart && s.wanted && !shutting_down {
            s.failures = s.failures.saturating_add(1);
            s.restarts = s.restarts.saturating_add(1);
            let delay = s.def.backoff(s.failures);
            crate::info!(
                "service {} restarts in {} ms",
                s.def.name,
                delay.as_millis()
            );
            s.state = State::Backoff;
            s.deadline = Some(now + delay);
        } else {
            s.failures = s.failures.saturating_add(u32::from(!clean));
            s.state = if clean {
                State::Inactive
            } else {
                State::Failed
            };
            s.done = clean && !shutting_down;
            s.deadline = None;
        }
    }

    /// A reaped process that was no service's main process: if it lived in a delegated
    /// subtree (outside `main`), its status is kept for that service.
    pub fn on_orphan_exit(&mut self, pid: Pid, status: WaitStatus, cgroup_file: &str) {
        let Some((name, in_main)) = cgroup::service_of(cgroup_file) else {
            return;
        };
        let Some(s) = self.services.iter_mut().find(|s| s.def.name == name) else {
            return;
        };
        if !s.def.delegate || in_main {
            return;
        }
        let (code, signal) = match status {
            WaitStatus::Exited(_, c) => (c, 0),
            WaitStatus::Signaled(_, sig, _) => (0, sig as i32),
            _ => return,
        };
        if s.exits.len() >= MAX_EXITS {
            s.exits.remove(0);
        }
        s.exits.push(ExitRecord {
            pid: pid.as_raw(),
            code,
            signal,
            at_ms: ms(crate::log::uptime()),
        });
    }

    /// Hands a service the exit statuses kept for it, once.
    pub fn take_exits(&mut self, name: &str) -> Vec<ExitRecord> {
        self.services
            .iter_mut()
            .find(|s| s.def.name == name)
            .map(|s| std::mem::take(&mut s.exits))
            .unwrap_or_default()
    }

    /// Descriptors the event loop should watch for the services.
    pub fn sources(&self) -> Vec<(Source, BorrowedFd<'_>)> {
        let mut out = Vec::new();
        for (i, s) in self.services.iter().enumerate() {
            if let Some(n) = &s.notify {
                out.push((Source::Notify(i), n.fd()));
            }
            for (j, p) in s.pipes.iter().enumerate() {
                out.push((Source::Pipe(i, j), p.fd()));
            }
        }
        out
    }

    pub fn on_readable(&mut self, source: Source) {
        match source {
            Source::Notify(i) => self.on_notify(i),
            Source::Pipe(i, j) => {
                if let Some(s) = self.services.get_mut(i) {
                    let open = s.pipes.get_mut(j).is_some_and(|p| p.drain(&mut s.log));
                    if !open && j < s.pipes.len() {
                        s.pipes.remove(j);
                    }
                }
            }
        }
    }

    fn drain_pipes(&mut self, i: usize) {
        let s = &mut self.services[i];
        let log = &mut s.log;
        s.pipes.retain_mut(|p| p.drain(log));
    }

    fn on_notify(&mut self, i: usize) {
        while let Some((msg, fds)) = self.services[i].notify.as_ref().and_then(|n| n.receive()) {
            let s = &mut self.services[i];
            if let Some(text) = msg.status {
                s.status_text = Some(text);
            }
            if msg.fdstore_remove {
                if let Some(name) = &msg.fdname {
                    s.fds.retain(|(n, _)| n != name);
                }
            }
            if msg.fdstore && !fds.is_empty() {
                let name = msg.fdname.clone().unwrap_or_else(|| "stored".into());
                if !notify::valid_fd_name(&name) {
                    crate::warn!("service {}: fd name {name:?} refused", s.def.name);
                } else if s.fds.len() + fds.len() > MAX_STORED_FDS {
                    crate::warn!(
                        "service {}: fd store full ({MAX_STORED_FDS}); {} fds dropped",
                        s.def.name,
                        fds.len()
                    );
                } else {
                    s.fds.extend(fds.into_iter().map(|fd| (name.clone(), fd)));
                }
            }
            if msg.ready && s.def.ready == Readiness::Notify {
                self.set_ready(i);
            }
        }
    }

    /// Every service that was meant to start has become ready or has failed at least
    /// once (so a crash loop never holds the ready line), counting a service that waits
    /// on a failing dependency as settled too.
    pub fn all_settled(&self) -> bool {
        let mut settled: Vec<bool> = Vec::with_capacity(self.services.len());
        for s in &self.services {
            let blocked = s.state == State::Waiting
                && s.def.dependencies().any(|d| {
                    self.index(d).is_some_and(|j| {
                        settled.get(j).copied().unwrap_or(false)
                            && self.services[j].state != State::Ready
                    })
                });
            settled.push(s.settled || blocked);
        }
        settled.iter().all(|s| *s)
    }

    /// "3/3 ready" or "2/3 ready; failing: x" (a service whose work is done is not
    /// counted).
    pub fn summary(&self) -> String {
        let wanted: Vec<&Service> = self
            .services
            .iter()
            .filter(|s| s.wanted && !s.done)
            .collect();
        let ready = wanted.iter().filter(|s| s.state == State::Ready).count();
        let failing: Vec<&str> = wanted
            .iter()
            .filter(|s| s.state != State::Ready)
            .map(|s| s.def.name.as_str())
            .collect();
        if failing.is_empty() {
            format!("{ready}/{} ready", wanted.len())
        } else {
            format!(
                "{ready}/{} ready; not ready: {}",
                wanted.len(),
                failing.join(" ")
            )
        }
    }

    pub fn statuses(&self) -> Vec<ServiceStatus> {
        self.services
            .iter()
            .map(|s| ServiceStatus {
                name: s.def.name.clone(),
                state: if s.done && s.state == State::Inactive {
                    "done".into()
                } else {
                    s.state.as_str().into()
                },
                pid: s.pid.map_or(0, |p| u32::try_from(p.as_raw()).unwrap_or(0)),
                restarts: s.restarts,
                last_exit: s.last_exit.clone().unwrap_or_default(),
                status: s.status_text.clone().unwrap_or_default(),
                since_ms: ms(s.since),
                autostart: s.def.autostart,
                delegate: s.def.delegate,
                stored_fds: u32::try_from(s.fds.len()).unwrap_or(u32::MAX),
                pending_exits: u32::try_from(s.exits.len()).unwrap_or(u32::MAX),
            })
            .collect()
    }

    /// `berthctl start NAME`.
    pub fn request_start(&mut self, name: &str, now: Instant) -> Result<(), String> {
        let i = self.lookup(name)?;
        let s = &mut self.services[i];
        s.wanted = true;
        s.restart_after_stop = false;
        match s.state {
            State::Inactive | State::Failed => {
                s.failures = 0;
                s.state = State::Waiting;
                self.tick_one(i, now);
            }
            State::Backoff => self.start(i, now),
            State::Stopping => s.restart_after_stop = true,
            _ => {}
        }
        Ok(())
    }

    /// Starts `name` only if it is not running (inactive or failed), after `prepare`
    /// (which leaves it its input) succeeds: one run at a time, as the updater's.
    pub fn request_start_idle(
        &mut self,
        name: &str,
        now: Instant,
        prepare: impl FnOnce() -> Result<(), String>,
    ) -> Result<(), String> {
        let i = self.lookup(name)?;
        let s = &self.services[i];
        if !matches!(s.state, State::Inactive | State::Failed) {
            return Err(format!("{name} is already running ({})", s.state.as_str()));
        }
        prepare()?;
        self.request_start(name, now)
    }

    /// `berthctl stop NAME`: stays stopped until started again.
    pub fn request_stop(&mut self, name: &str, now: Instant) -> Result<(), String> {
        let i = self.lookup(name)?;
        let s = &mut self.services[i];
        s.wanted = false;
        s.restart_after_stop = false;
        match s.state {
            State::Waiting | State::Backoff => {
                s.state = State::Inactive;
                s.deadline = None;
            }
            State::Starting | State::Ready => self.stop(i, now),
            _ => {}
        }
        Ok(())
    }

    /// `berthctl restart NAME`: stop (if running), then start with a fresh backoff.
    pub fn request_restart(&mut self, name: &str, now: Instant) -> Result<(), String> {
        let i = self.lookup(name)?;
        let s = &mut self.services[i];
        s.wanted = true;
        s.failures = 0;
        match s.state {
            State::Starting | State::Ready => {
                s.restart_after_stop = true;
                self.stop(i, now);
            }
            State::Stopping => s.restart_after_stop = true,
            _ => {
                s.state = State::Waiting;
                self.tick_one(i, now);
            }
        }
        Ok(())
    }

    fn lookup(&self, name: &str) -> Result<usize, String> {
        if self.shutting_down {
            return Err("the machine is shutting down".into());
        }
        self.index(name)
            .ok_or_else(|| format!("no service named {name:?}"))
    }

    /// Final stop: nothing starts any more; services stop in reverse dependency order,
    /// each once nothing that depends on it still runs.
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        for s in &mut self.services {
            s.wanted = false;
            s.restart_after_stop = false;
            if matches!(s.state, State::Waiting | State::Backoff) {
                s.state = State::Inactive;
                s.deadline = None;
            }
        }
    }

    /// Closes every service's log file (the last step before unmounting /var).
    pub fn close_logs(&mut self) {
        for s in &mut self.services {
            s.log.close();
        }
    }

    /// One step of the final stop; true when every service is down and its cgroup empty
    /// (or given up on).
    pub fn shutdown_step(&mut self, now: Instant) -> bool {
        for i in (0..self.services.len()).rev() {
            let running = matches!(self.services[i].state, State::Starting | State::Ready);
            if running && !self.has_running_dependents(i) {
                self.stop(i, now);
            }
        }
        self.tick(now);
        self.services.iter().all(|s| {
            s.pid.is_none() && !matches!(s.state, State::Starting | State::Ready | State::Stopping)
        })
    }

    fn has_running_dependents(&self, i: usize) -> bool {
        let name = &self.services[i].def.name;
        self.services
            .iter()
            .any(|s| s.pid.is_some() && s.def.dependencies().any(|d| d == name))
    }

    /// `/sys/fs/cgroup/berth`, whose whole tree the final shutdown kills last.
    pub fn cgroup_root(&self) -> Option<&Path> {
        self.cgroot.as_deref()
    }

    /// How long the final stop may take: every running service's stop timeout and
    /// SIGKILL grace, one after the other in the worst case.
    pub fn stop_bound(&self) -> Duration {
        self.services
            .iter()
            .filter(|s| s.pid.is_some())
            .map(|s| s.def.stop_timeout + KILL_GRACE)
            .sum()
    }
}

/// Sends `signal` to the processes a stop reaches: the main cgroup's, or the process
/// group without cgroups.
fn signal_scope(s: &Service, pid: Pid, signal: Signal) {
    match &s.cgroup {
        Some(cg) => {
            let mut pids = cgroup::procs(&cg.main);
            if pids.is_empty() {
                pids.push(pid.as_raw());
            }
            for p in pids {
                let _ = kill(Pid::from_raw(p), signal);
            }
        }
        None => {
            let _ = killpg(pid, signal);
        }
    }
}

/// The last lines of a failed service's log, on the console.
fn print_tail(s: &Service) {
    let lines: Vec<&str> = s.log.tail().collect();
    if lines.is_empty() {
        return;
    }
    crate::info!(
        "service {} failed; its last lines ({}):",
        s.def.name,
        s.log.path.display()
    );
    for l in lines {
        crate::info!("  {}: {l}", s.def.name);
    }
}

fn spawn(s: &mut Service) -> Result<Pid, String> {
    if let Some(cg) = &s.cgroup {
        for e in cg.prepare(&s.def) {
            crate::warn!("service {}: cgroup: {e}", s.def.name);
        }
    }
    let procs = match &s.cgroup {
        Some(cg) => Some(
            std::fs::OpenOptions::new()
                .write(true)
                .open(cg.procs_file())
                .map(OwnedFd::from)
                .map_err(|e| format!("opening {}: {e}", cg.procs_file().display()))?,
        ),
        None => None,
    };
    let (out_r, out_w) = nonblocking_pipe()?;
    let (err_r, err_w) = nonblocking_pipe()?;
    let min_fd = i32::try_from(child::LISTEN_FDS_START as usize + s.fds.len()).unwrap_or(i32::MAX);
    let passed: Vec<OwnedFd> = s
        .fds
        .iter()
        .map(|(_, fd)| child::dup_high(fd, min_fd))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("passing stored fds: {e}"))?;
    let mut cmd = Command::new(&s.def.exec);
    cmd.args(&s.def.args)
        .env_clear()
        .env("PATH", SERVICE_PATH)
        .env("BERTH_SERVICE", &s.def.name)
        .envs(&s.def.env)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w));
    if let Some(n) = &s.notify {
        cmd.env("NOTIFY_SOCKET", &n.path);
    }
    if let Some(cg) = &s.cgroup {
        cmd.env("BERTH_CGROUP", &cg.dir);
    }
    if !s.fds.is_empty() {
        let names: Vec<&str> = s.fds.iter().map(|(n, _)| n.as_str()).collect();
        cmd.env("LISTEN_FDS", s.fds.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"));
    }
    child::prepare(&mut cmd, procs, passed);
    let childp = cmd
        .spawn()
        .map_err(|e| format!("starting {}: {e}", s.def.exec.display()))?;
    // Dropping the Child does not wait; init's reaper collects the process.
    let pid = Pid::from_raw(i32::try_from(childp.id()).unwrap_or(i32::MAX));
    drop(cmd);
    s.pipes.push(Pipe::new(out_r, Stream::Stdout));
    s.pipes.push(Pipe::new(err_r, Stream::Stderr));
    Ok(pid)
}

fn nonblocking_pipe() -> Result<(OwnedFd, OwnedFd), String> {
    use nix::fcntl::OFlag;
    nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .map_err(|e| format!("creating a pipe: {e}"))
        .and_then(|(r, w)| {
            // The write end is the service's stdout: it must block like any other pipe.
            nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()))
                .map_err(|e| format!("pipe flags: {e}"))?;
            Ok((r, w))
        })
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub fn describe(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exited with status {code}"),
        WaitStatus::Signaled(_, sig, core) => {
            format!(
                "killed by {sig}{}",
                if core { " (core dumped)" } else { "" }
            )
        }
        other => format!("changed state: {other:?}"),
    }
}

/// Loads and checks the definitions; what cannot run is reported and left out.
pub fn load(dir: &Path) -> Vec<ServiceDef> {
    let (defs, mut errors) = berth_services::load_dir(dir);
    let (order, set_errors) = berth_services::check_set(defs);
    errors.extend(set_errors);
    for e in errors {
        crate::warn!("{e}; not started");
    }
    order
}

#[cfg(test)]
mod tests;
