//! Adoption after a daemon restart: what an earlier daemon of this boot left in
//! `status.json` is taken over. A container still running (its recorded pid still in its
//! cgroup) is watched through a pidfd and gets its log pipes back from init's fd store;
//! one that ended meanwhile gets the exit status init reaped; one no longer declared is
//! removed. `decide` is the pure part; the rest reads /proc, opens pidfds, asks init.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use berth_control::ExitRecord;
use nix::unistd::Pid;

use crate::launch;
use crate::status::{self, Record};

use super::{remove_leftovers, say, State, Supervisor, UNKNOWN_EXIT};

/// Unclaimed exit statuses kept (the newest): init hands over those of every process
/// re-parented to it, most of which no container claims.
const INIT_EXITS_KEPT: usize = 1024;
/// Init reaps a moment after a pidfd says the process ended: it is asked this many
/// times, this far apart, before the status counts as unknown.
const INIT_ASKS: u32 = 20;
const INIT_ASK_PAUSE: Duration = Duration::from_millis(50);

/// What becomes of a container the last daemon recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fate {
    /// No longer declared: its network namespace goes; `running`: its container still
    /// runs, and is deleted with its rootfs, logs and files.
    Forget { running: bool },
    /// Declared, not running, and an operator stopped it: stays down.
    Stopped,
    /// Declared, exited and not restarted: stays down with this code.
    Exited(i32),
    /// Declared and not running (waiting, failed, or stopped by the last daemon's own
    /// stop): started when due, as at a first start.
    Start,
    /// Still runs as its container's init: watched through a pidfd.
    Adopt(i32),
    /// Recorded as running, but that pid is gone or is not its container's any more:
    /// it ended while the daemon was away.
    Ended(i32),
}

/// Decides a recorded container's fate from its record, whether it is still declared
/// (`Some(stopped)`: whether an operator's stop that outlives reboots keeps it down),
/// and whether the recorded pid is still its container's init (`owned`, see `owns`).
pub(super) fn decide(rec: &Record, declared: Option<bool>, owned: bool) -> Fate {
    let running = rec.state == "running";
    let Some(stopped) = declared else {
        return Fate::Forget {
            running: running && owned,
        };
    };
    if !running || rec.pid <= 0 {
        return if stopped || rec.stopped {
            Fate::Stopped
        } else if rec.state == "exited" {
            Fate::Exited(rec.exit_code)
        } else {
            Fate::Start
        };
    }
    // An operator's stop recorded with a running process cannot be written (the stop
    // ends the process first); if it were, the process is watched, not left unwatched.
    if owned {
        Fate::Adopt(rec.pid)
    } else {
        Fate::Ended(rec.pid)
    }
}

impl Supervisor {
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
            let owned =
                rec.state == "running" && owns(self.cgroup_parent.as_deref(), name, rec.pid);
            let declared = self.containers.get(name).map(|c| c.stopped);
            let fate = decide(rec, declared, owned);
            if let Fate::Forget { running } = fate {
                self.forget(name, running);
                continue;
            }
            self.restore(name, rec);
            if matches!(fate, Fate::Adopt(_) | Fate::Ended(_)) {
                kept.extend(launch::pipe_names(name));
            }
            if let Some(pid) = self.resume(name, fate, pipes) {
                ended.push((name.clone(), pid));
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
            let code = self.init_exits.wait_for(pid);
            say(&format!("{name}: ended while the daemon was away"));
            self.exited(pid, code.unwrap_or(UNKNOWN_EXIT));
        }
    }

    /// A recorded container that is no longer declared.
    fn forget(&mut self, name: &str, running: bool) {
        if running {
            say(&format!("{name}: no longer declared; removing it"));
            launch::delete(&self.paths, name);
            remove_leftovers(&self.paths, name);
        }
        crate::netns::remove(&self.paths.netns_dir.join(name));
    }

    /// Takes a declared container's counts, bridge address and operator's stop from
    /// its record.
    fn restore(&mut self, name: &str, rec: &Record) {
        let Some(c) = self.containers.get_mut(name) else {
            return;
        };
        c.tally.restarts = rec.restarts;
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
    }

    /// Sets a declared container's state by its fate. One that was running gets the
    /// output it left in its pipes pumped; returns its pid when it ended meanwhile (or
    /// ends before its pidfd is open).
    fn resume(
        &mut self,
        name: &str,
        fate: Fate,
        pipes: (Option<OwnedFd>, Option<OwnedFd>),
    ) -> Option<i32> {
        let c = self.containers.get_mut(name)?;
        let pid = match fate {
            Fate::Forget { .. } | Fate::Start => return None,
            Fate::Stopped => {
                c.state = State::Stopped;
                return None;
            }
            Fate::Exited(code) => {
                c.state = State::Exited(code);
                return None;
            }
            Fate::Adopt(pid) | Fate::Ended(pid) => pid,
        };
        // Its output from while the daemon was away is in the pipes: read it now.
        launch::pump_logs(&self.paths, name, pipes.0, pipes.1);
        c.state = State::Running {
            pid,
            since: Instant::now(),
        };
        let pidfd = match fate {
            Fate::Adopt(_) => open_pidfd(pid),
            _ => None,
        };
        match pidfd {
            Some(fd) => {
                say(&format!("{name}: re-adopted (pid {pid})"));
                c.pidfd = Some(fd);
                None
            }
            None => Some(pid),
        }
    }
}

/// Exit statuses init handed over that no container claimed yet.
#[derive(Debug, Default)]
pub(super) struct InitExits {
    unclaimed: Vec<ExitRecord>,
}

impl InitExits {
    /// The exit status init kept for `pid` (a container re-parented to it): asked
    /// until it comes. None when init has none, or cannot be asked.
    pub(super) fn wait_for(&mut self, pid: i32) -> Option<i32> {
        if let Some(code) = self.claim(pid) {
            return Some(code);
        }
        for attempt in 0..INIT_ASKS {
            if attempt > 0 {
                std::thread::sleep(INIT_ASK_PAUSE);
            }
            match take_exit_statuses() {
                Ok(list) => self.add(list),
                Err(e) => {
                    say(&format!("asking init for exit statuses: {e}"));
                    return None;
                }
            }
            if let Some(code) = self.claim(pid) {
                return Some(code);
            }
        }
        say(&format!("init kept no exit status for pid {pid}"));
        None
    }

    /// Takes `pid`'s status out: its exit code, or 128 + the signal that killed it.
    fn claim(&mut self, pid: i32) -> Option<i32> {
        let i = self.unclaimed.iter().position(|r| r.pid == pid)?;
        Some(exit_code(&self.unclaimed.remove(i)))
    }

    /// Adds what init handed over, keeping only the newest `INIT_EXITS_KEPT`.
    fn add(&mut self, list: Vec<ExitRecord>) {
        self.unclaimed.extend(list);
        let excess = self.unclaimed.len().saturating_sub(INIT_EXITS_KEPT);
        self.unclaimed.drain(..excess);
    }
}

/// Docker's convention: the exit code, or 128 + the signal that killed it.
fn exit_code(r: &ExitRecord) -> i32 {
    if r.signal != 0 {
        128_i32.saturating_add(r.signal)
    } else {
        r.code
    }
}

/// Whether `pid` is container `name`'s init: in its cgroup (when the daemon knows the
/// containers' cgroups), else merely alive.
fn owns(cgroup_parent: Option<&str>, name: &str, pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match cgroup_parent {
        Some(parent) => std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .is_ok_and(|t| in_cgroup(&t, parent, name)),
        None => nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok(),
    }
}

/// Whether a `/proc/PID/cgroup` text puts the process in container `name`'s cgroup
/// itself: the cgroup v2 line, exactly (a recycled pid elsewhere does not count).
fn in_cgroup(text: &str, parent: &str, name: &str) -> bool {
    let want = format!("{parent}/{name}");
    text.lines()
        .any(|l| l.strip_prefix("0::") == Some(want.as_str()))
}

/// A pidfd for `pid`; None when the process is gone.
fn open_pidfd(pid: i32) -> Option<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(state: &str, pid: i32) -> Record {
        Record {
            state: state.into(),
            pid,
            exit_code: 3,
            ..Record::default()
        }
    }

    fn stopped(mut r: Record) -> Record {
        r.stopped = true;
        r
    }

    #[test]
    fn a_running_container_still_in_its_cgroup_is_adopted() {
        assert_eq!(
            decide(&rec("running", 42), Some(false), true),
            Fate::Adopt(42)
        );
    }

    #[test]
    fn a_running_container_whose_pid_is_gone_or_elsewhere_ended() {
        assert_eq!(
            decide(&rec("running", 42), Some(false), false),
            Fate::Ended(42)
        );
    }

    #[test]
    fn a_running_record_without_a_pid_is_started_again() {
        assert_eq!(decide(&rec("running", 0), Some(false), false), Fate::Start);
        assert_eq!(decide(&rec("running", -1), Some(false), true), Fate::Start);
    }

    #[test]
    fn an_undeclared_container_is_forgotten_and_removed_only_when_it_runs() {
        let forget = |running| Fate::Forget { running };
        assert_eq!(decide(&rec("running", 42), None, true), forget(true));
        // Its pid now belongs to someone else: not ours to delete.
        assert_eq!(decide(&rec("running", 42), None, false), forget(false));
        assert_eq!(decide(&rec("exited", 0), None, false), forget(false));
        assert_eq!(
            decide(&stopped(rec("stopped", 0)), None, false),
            forget(false)
        );
    }

    #[test]
    fn an_exited_container_keeps_its_code_unless_an_operator_stopped_it() {
        assert_eq!(
            decide(&rec("exited", 0), Some(false), false),
            Fate::Exited(3)
        );
        assert_eq!(
            decide(&stopped(rec("exited", 0)), Some(false), false),
            Fate::Stopped
        );
        // Stopped for good (unless-stopped, remembered across reboots).
        assert_eq!(decide(&rec("exited", 0), Some(true), false), Fate::Stopped);
    }

    #[test]
    fn waiting_failed_and_daemon_stopped_containers_start_again() {
        for state in ["waiting", "failed", "stopped"] {
            assert_eq!(
                decide(&rec(state, 0), Some(false), false),
                Fate::Start,
                "{state}"
            );
        }
        assert_eq!(
            decide(&stopped(rec("stopped", 0)), Some(false), false),
            Fate::Stopped
        );
    }

    #[test]
    fn a_recorded_stop_with_a_live_process_is_still_watched() {
        assert_eq!(
            decide(&stopped(rec("running", 42)), Some(true), true),
            Fate::Adopt(42)
        );
    }

    fn exit(pid: i32, code: i32, signal: i32) -> ExitRecord {
        ExitRecord {
            pid,
            code,
            signal,
            at_ms: 0,
        }
    }

    #[test]
    fn init_exits_are_claimed_once_with_signals_as_128_plus() {
        let mut e = InitExits::default();
        e.add(vec![exit(10, 7, 0), exit(11, 0, 9), exit(12, 0, i32::MAX)]);
        assert_eq!(e.claim(11), Some(137));
        assert_eq!(e.claim(11), None);
        assert_eq!(e.claim(10), Some(7));
        assert_eq!(e.claim(12), Some(i32::MAX));
        assert_eq!(e.claim(99), None);
    }

    #[test]
    fn init_exits_keep_only_the_newest() {
        let mut e = InitExits::default();
        e.add((0..1000).map(|p| exit(p, 1, 0)).collect());
        e.add((1000..1100).map(|p| exit(p, 2, 0)).collect());
        assert_eq!(e.unclaimed.len(), INIT_EXITS_KEPT);
        assert_eq!(e.claim(75), None);
        assert_eq!(e.claim(76), Some(1));
        assert_eq!(e.claim(1099), Some(2));
    }

    #[test]
    fn only_the_containers_own_cgroup_counts() {
        let parent = "/berth-daemon/containers";
        let line = |p: &str| format!("0::{p}\n");
        assert!(in_cgroup(
            &line("/berth-daemon/containers/web"),
            parent,
            "web"
        ));
        assert!(!in_cgroup(
            &line("/berth-daemon/containers/web2"),
            parent,
            "web"
        ));
        assert!(!in_cgroup(
            &line("/berth-daemon/containers/web/sub"),
            parent,
            "web"
        ));
        assert!(!in_cgroup(&line("/other/containers/web"), parent, "web"));
        assert!(!in_cgroup(
            "1:name=x:/berth-daemon/containers/web\n",
            parent,
            "web"
        ));
        assert!(!in_cgroup("", parent, "web"));
    }
}
