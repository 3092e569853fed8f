//! The daemon's loop: brings the declared containers up (image from the store, pulled if
//! missing; a writable rootfs; the OCI config; `berth-runtime create` and `start`), and
//! keeps them as their restart policies say, with backoff. The containers are the
//! daemon's children: `berth-runtime create` exits once the container waits for
//! `start`, and the container's init is re-parented to the daemon, a child subreaper.
//! Their stdout and stderr are pipes the daemon reads into log files.
//!
//! Not yet (issue 7's remaining parts): bridge networking and published ports,
//! re-adopting running containers after a daemon restart (pipes through init's
//! fd store), the D-Bus API and berthctl's container verbs.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::declaration::{Declaration, Network, Restart};
use crate::spec::{self, Context};

pub struct Paths {
    pub declarations: PathBuf,
    pub store: PathBuf,
    pub registries: PathBuf,
    /// berth-runtime's --root (its state).
    pub runtime_root: PathBuf,
    pub runtime: PathBuf,
    /// Bundles and /etc files, per container.
    pub run_dir: PathBuf,
    pub log_dir: PathBuf,
    /// Built-in images (OCI layouts) imported when missing.
    pub builtin_images: PathBuf,
    /// Named volumes.
    pub volumes: PathBuf,
}

/// First restart delay, doubling per failure up to the cap; reset after a good run.
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
const GOOD_RUN: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const LOG_MAX_BYTES: u64 = 10 << 20;

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
}

struct Container {
    decl: Declaration,
    state: State,
    failures: u32,
    restarts: u32,
}

pub struct Supervisor {
    paths: Paths,
    containers: BTreeMap<String, Container>,
    cgroup_parent: Option<String>,
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
        Supervisor {
            paths,
            containers: BTreeMap::new(),
            cgroup_parent: cgroup_parent(),
        }
    }

    fn store(&self) -> Result<berth_store::store::Store, String> {
        berth_store::store::Store::open(&self.paths.store, berth_store::store::Options::default())
            .map_err(|e| e.to_string())
    }

    /// Imports the built-in images that are not in the store yet.
    pub fn import_builtin(&self) {
        let Ok(entries) = std::fs::read_dir(&self.paths.builtin_images) else {
            return;
        };
        let store = match self.store() {
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

    /// Reads the declarations; problems are reported and the rest goes on.
    pub fn load(&mut self) {
        let (decls, errors) = crate::declaration::load_dir(&self.paths.declarations);
        for e in errors {
            say(&format!("skipped: {e}"));
        }
        let now = Instant::now();
        for d in decls {
            self.containers.insert(
                d.name.clone(),
                Container {
                    decl: d,
                    state: State::Waiting(now),
                    failures: 0,
                    restarts: 0,
                },
            );
        }
    }

    fn runtime(&self) -> Command {
        let mut c = Command::new(&self.paths.runtime);
        c.arg("--root").arg(&self.paths.runtime_root);
        c
    }

    /// Sets up and starts `name`: returns the container's pid.
    fn start(&self, name: &str) -> Result<i32, String> {
        let decl = &self.containers[name].decl;
        if decl.network == Network::Bridge {
            return Err(
                "network \"bridge\" is not supported yet: declare network = \"host\" or \"none\""
                    .into(),
            );
        }
        let store = self.store()?;
        let _lock = store
            .lock(berth_store::store::LockKind::Shared)
            .map_err(|e| e.to_string())?;
        let image = match store.find(&decl.image) {
            Ok(i) => i,
            Err(berth_store::store::StoreError::NoSuchImage(_)) => {
                say(&format!("{name}: pulling {}", decl.image));
                let r = berth_store::reference::Reference::parse(&decl.image)
                    .map_err(|e| e.to_string())?;
                let config = berth_store::registry::Config::load(&self.paths.registries)
                    .map_err(|e| e.to_string())?;
                let client =
                    berth_store::registry::Client::new(config).map_err(|e| e.to_string())?;
                berth_store::pull::pull(&store, &client, &r, &|_| {}).map_err(|e| e.to_string())?
            }
            Err(e) => return Err(e.to_string()),
        };
        let config: serde_json::Value =
            serde_json::from_slice(&store.blob(&image.id).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        // The rootfs persists across restarts, as a docker container's writable layer.
        let rootfs = store
            .ensure_rootfs(&decl.image, name)
            .map_err(|e| e.to_string())?;
        let passwd = spec::read_in_root(&rootfs, "/etc/passwd").unwrap_or_default();
        let group = spec::read_in_root(&rootfs, "/etc/group").unwrap_or_default();
        let user = spec::resolve_user(decl.user.as_deref().unwrap_or("0"), &passwd, &group)?;
        let run = self.paths.run_dir.join(name);
        std::fs::create_dir_all(&run).map_err(|e| format!("{}: {e}", run.display()))?;
        let hostname = decl.hostname.clone().unwrap_or_else(|| name.to_string());
        let mut etc_files = Vec::new();
        for (file, target, text) in [
            ("hostname", "/etc/hostname", format!("{hostname}\n")),
            (
                "hosts",
                "/etc/hosts",
                format!("127.0.0.1 localhost\n::1 localhost\n127.0.1.1 {hostname}\n"),
            ),
            (
                "resolv.conf",
                "/etc/resolv.conf",
                std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
            ),
        ] {
            let p = run.join(file);
            std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
            etc_files.push((p, target));
        }
        let ctx = Context {
            rootfs,
            cgroup: self.cgroup_parent.as_ref().map(|p| format!("{p}/{name}")),
            netns: None,
            etc_files,
            volume_dirs: self.volumes(decl)?,
            nofile: nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .ok()
                .map(|(_, hard)| hard),
        };
        let cfg = spec::build(decl, &config, &user, &ctx).map_err(|e| e.to_string())?;
        let bundle = run.join("bundle");
        std::fs::create_dir_all(&bundle).map_err(|e| format!("{}: {e}", bundle.display()))?;
        std::fs::write(bundle.join("config.json"), cfg.to_string()).map_err(|e| e.to_string())?;
        // A leftover of an earlier run (the daemon restarted, or the container died).
        let _ = self
            .runtime()
            .args(["delete", "--force", name])
            .stderr(Stdio::null())
            .status();
        let log = crate::logs::LogFile::open(&self.paths.log_dir, name, LOG_MAX_BYTES)
            .map_err(|e| e.to_string())?;
        let (out_r, out_w) = rustix::pipe::pipe().map_err(|e| e.to_string())?;
        let (err_r, err_w) = rustix::pipe::pipe().map_err(|e| e.to_string())?;
        let pid_file = run.join("pid");
        let created = self
            .runtime()
            .arg("create")
            .arg("--bundle")
            .arg(&bundle)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(name)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::from(err_w))
            .status()
            .map_err(|e| format!("running {}: {e}", self.paths.runtime.display()))?
            .success();
        // (The Command, and with it the daemon's copies of the write ends, is gone: the
        // pipes end when the container's last process does.)
        crate::logs::pump(out_r, "stdout", log.clone());
        crate::logs::pump(err_r, "stderr", log);
        if !created {
            return Err(
                "berth-runtime create failed (its message is in the container's log)".into(),
            );
        }
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .ok_or("no pid file from berth-runtime create")?;
        let out = self
            .runtime()
            .args(["start", name])
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "berth-runtime start: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(pid)
    }

    /// The declaration's named volumes, made where missing, and its bind sources checked.
    fn volumes(&self, decl: &Declaration) -> Result<BTreeMap<String, PathBuf>, String> {
        let mut dirs = BTreeMap::new();
        for v in &decl.volumes {
            match v {
                crate::declaration::Volume::Named { name, .. } => {
                    dirs.insert(
                        name.clone(),
                        crate::volumes::ensure(&self.paths.volumes, name)?,
                    );
                }
                crate::declaration::Volume::Bind { source, .. } if !source.exists() => {
                    return Err(format!(
                        "bind mount source {} does not exist",
                        source.display()
                    ));
                }
                _ => {}
            }
        }
        Ok(dirs)
    }

    /// The next moment something is due, if any.
    fn next_due(&self) -> Option<Instant> {
        self.containers
            .values()
            .filter_map(|c| match c.state {
                State::Waiting(t) => Some(t),
                _ => None,
            })
            .min()
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
            let result = self.start(&name);
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
                }
                Err(e) => {
                    say(&format!("{name}: {e}"));
                    c.state = State::Failed(e);
                }
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
            .find(|(_, c)| matches!(c.state, State::Running { pid: p, .. } if p == pid))
        else {
            return; // an orphan of some container: reaped, nothing to do
        };
        let State::Running { since, .. } = c.state else {
            return;
        };
        if since.elapsed() >= GOOD_RUN {
            c.failures = 0;
        }
        let again = match c.decl.restart {
            Restart::No => false,
            Restart::Always | Restart::UnlessStopped => true,
            Restart::OnFailure(max) => code != 0 && max.is_none_or(|m| c.restarts < m),
        };
        let _ = Command::new(&self.paths.runtime)
            .arg("--root")
            .arg(&self.paths.runtime_root)
            .args(["delete", "--force", name])
            .stderr(Stdio::null())
            .status();
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

    /// `run_dir/status.json`: each container's state, for operators and tests until the
    /// D-Bus API comes.
    fn write_status(&self) {
        let status: BTreeMap<&String, serde_json::Value> = self
            .containers
            .iter()
            .map(|(n, c)| {
                let s = match &c.state {
                    State::Waiting(_) => serde_json::json!({"state": "waiting"}),
                    State::Running { pid, .. } => {
                        serde_json::json!({"state": "running", "pid": pid})
                    }
                    State::Exited(code) => serde_json::json!({"state": "exited", "code": code}),
                    State::Failed(e) => serde_json::json!({"state": "failed", "error": e}),
                };
                let mut s = s;
                s["restarts"] = serde_json::json!(c.restarts);
                (n, s)
            })
            .collect();
        let _ = std::fs::create_dir_all(&self.paths.run_dir);
        let tmp = self.paths.run_dir.join("status.json.tmp");
        if std::fs::write(&tmp, serde_json::to_vec_pretty(&status).unwrap_or_default()).is_ok() {
            let _ = std::fs::rename(&tmp, self.paths.run_dir.join("status.json"));
        }
    }

    /// Stops every running container (SIGTERM, SIGKILL after the timeout), deletes them.
    fn stop_all(&mut self) {
        let running: Vec<(String, i32)> = self
            .containers
            .iter()
            .filter_map(|(n, c)| match c.state {
                State::Running { pid, .. } => Some((n.clone(), pid)),
                _ => None,
            })
            .collect();
        for (name, _) in &running {
            let _ = self
                .runtime()
                .args(["kill", name, "TERM"])
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut left: Vec<(String, i32)> = running;
        while !left.is_empty() && Instant::now() < deadline {
            self.reap(|_, _| {});
            left.retain(|(_, pid)| nix::sys::signal::kill(Pid::from_raw(*pid), None).is_ok());
            std::thread::sleep(Duration::from_millis(50));
        }
        for (name, _) in &left {
            let _ = self
                .runtime()
                .args(["kill", "--all", name, "KILL"])
                .stderr(Stdio::null())
                .status();
        }
        for name in self.containers.keys() {
            let _ = self
                .runtime()
                .args(["delete", "--force", name])
                .stderr(Stdio::null())
                .status();
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

    /// Runs until SIGTERM or SIGINT; then stops the containers.
    pub fn run(&mut self) -> Result<(), String> {
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|e| format!("PR_SET_CHILD_SUBREAPER: {e}"))?;
        let mut mask = SigSet::empty();
        for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
            mask.add(s);
        }
        mask.thread_block()
            .map_err(|e| format!("blocking signals: {e}"))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(|e| format!("signalfd: {e}"))?;
        self.import_builtin();
        self.load();
        self.write_status();
        loop {
            // Signals first: a stop that arrived while the daemon was busy (importing,
            // pulling) must win over starting anything more.
            if self.handle_signals(&signals) {
                say("stopping the containers");
                self.stop_all();
                self.write_status();
                return Ok(());
            }
            self.tick();
            self.write_status();
            let timeout = self
                .next_due()
                .map(|t| t.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(3600));
            wait_readable(signals.as_fd(), timeout);
        }
    }

    /// Reads the pending signals and reaps exited children; true on SIGTERM or SIGINT.
    fn handle_signals(&mut self, signals: &SignalFd) -> bool {
        let mut stop = false;
        while let Ok(Some(info)) = signals.read_signal() {
            if info.ssi_signo == Signal::SIGTERM as u32 || info.ssi_signo == Signal::SIGINT as u32 {
                stop = true;
            }
        }
        self.reap(|s, (pid, code)| s.exited(pid, code));
        stop
    }
}

fn wait_readable(fd: std::os::fd::BorrowedFd<'_>, timeout: Duration) -> bool {
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let ts = rustix::event::Timespec {
        tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    matches!(rustix::event::poll(&mut fds, Some(&ts)), Ok(n) if n > 0)
}
