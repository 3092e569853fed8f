//! PID 1's event loop: signals (child exits and systemd's shutdown conventions), kernel
//! uevents (hot-plugged devices get their driver), the power button, the services'
//! pipes and notify sockets, and control API requests. Prints `berth: ready` once every
//! service has settled, and at shutdown stops the services in reverse order before
//! handing over to `shutdown::finish`.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};

use super::control::{Control, Request};
use super::power_button::PowerButtons;
use super::services::{Manager, Source};
use crate::modules::uevent::UeventSocket;
use crate::modules::Loader;
use crate::shutdown::Action;
use crate::{info, log, warn};

/// The final stop may take each service's stop timeout; this bounds the whole of it
/// beyond those, in case something unforeseen keeps a service around.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(10);

pub struct Supervisor {
    pub signals: SignalFd,
    pub uevents: Option<UeventSocket>,
    pub loader: Option<Loader>,
    pub buttons: PowerButtons,
    pub services: Manager,
    pub control: Option<Control>,
    /// The hostname for the ready line; `None` once the line is printed.
    pub pending_ready: Option<String>,
    pub watchdog: Option<super::watchdog::Watchdog>,
    /// The boot slots, once read: the ready line names the booted slot's version.
    pub slots: std::sync::Arc<std::sync::OnceLock<std::sync::Arc<super::slots::Slots>>>,
}

/// What PID 1 does on each signal, after systemd (systemd(1), "Signals"), so `kill`,
/// ctrl-alt-del and tools written for systemd hosts behave the same here.
pub fn action_for_signal(signo: i32) -> Option<Action> {
    let rtmin = libc::SIGRTMIN();
    match signo {
        libc::SIGINT => Some(Action::Reboot), // ctrl-alt-del, with CAD disabled in the kernel
        libc::SIGTERM => Some(Action::PowerOff),
        s if s == rtmin + 3 => Some(Action::Halt),
        s if s == rtmin + 4 => Some(Action::PowerOff),
        s if s == rtmin + 5 => Some(Action::Reboot),
        _ => None,
    }
}

/// Which of the polled descriptors are readable.
#[derive(Default)]
struct Ready {
    signals: bool,
    uevents: bool,
    buttons: bool,
    control: bool,
    sources: Vec<Source>,
}

impl Supervisor {
    /// Runs until a shutdown is requested.
    pub fn run(&mut self) -> Action {
        loop {
            let now = Instant::now();
            let next = self.services.tick(now);
            let next = match self.watchdog.as_mut().map(|w| w.feed(now)) {
                Some(due) => Some(next.map_or(due, |n| n.min(due))),
                None => next,
            };
            self.announce_when_ready();
            self.publish();
            let ready = match self.wait(next) {
                Ok(r) => r,
                Err(e) => {
                    warn!("poll: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            if let Some(action) = self.handle(ready) {
                return action;
            }
        }
    }

    /// Stops the services (dependents first, each bounded by its stop timeout and the
    /// SIGKILL grace), keeping their logs flowing, then the rest of the shutdown.
    pub fn shutdown(&mut self, action: Action) -> ! {
        info!("shutdown: {action}: stopping services");
        self.services.begin_shutdown();
        let bound = Instant::now() + self.services.stop_bound() + SHUTDOWN_SLACK;
        loop {
            let now = Instant::now();
            if self.services.shutdown_step(now) {
                break;
            }
            if now >= bound {
                warn!("shutdown: services still running; going on");
                break;
            }
            self.publish();
            if let Some(w) = self.watchdog.as_mut() {
                w.feed(now);
            }
            let next = Some(now + Duration::from_millis(100));
            if let Ok(ready) = self.wait(next) {
                // Further shutdown requests change nothing now; exits and logs matter.
                let _ = self.handle(ready);
            }
        }
        if let Some(root) = self.services.cgroup_root() {
            let _ = super::services::cgroup::kill(root);
        }
        info!("shutdown: services stopped");
        // Their log files live on /var: open, they would keep it from being unmounted.
        self.services.close_logs();
        if let Some(w) = self.watchdog.take() {
            w.disarm();
        }
        crate::shutdown::finish(action)
    }

    fn wait(&self, deadline: Option<Instant>) -> Result<Ready, Errno> {
        let timeout = deadline
            .map(|t| t.saturating_duration_since(Instant::now()))
            .map(|d| PollTimeout::try_from(d).unwrap_or(PollTimeout::MAX))
            .unwrap_or(PollTimeout::NONE);
        let mut fds = vec![PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
        let uevents_at = self.uevents.as_ref().map(|u| {
            fds.push(PollFd::new(u.as_fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        let control_at = self.control.as_ref().map(|c| {
            fds.push(PollFd::new(c.wake_fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        let first_button = fds.len();
        fds.extend(
            self.buttons
                .fds()
                .map(|fd| PollFd::new(fd, PollFlags::POLLIN)),
        );
        let first_source = fds.len();
        let sources = self.services.sources();
        fds.extend(
            sources
                .iter()
                .map(|(_, fd)| PollFd::new(*fd, PollFlags::POLLIN)),
        );
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
        let readable = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
        let at = |i: Option<usize>| i.and_then(|i| fds.get(i)).is_some_and(readable);
        Ok(Ready {
            signals: fds.first().is_some_and(readable),
            uevents: at(uevents_at),
            control: at(control_at),
            buttons: fds
                .get(first_button..first_source)
                .is_some_and(|b| b.iter().any(readable)),
            sources: sources
                .iter()
                .zip(fds.get(first_source..).unwrap_or_default())
                .filter(|(_, fd)| readable(fd))
                .map(|((s, _), _)| *s)
                .collect(),
        })
    }

    fn handle(&mut self, ready: Ready) -> Option<Action> {
        let mut action = None;
        // Output first, so a service's last lines are logged before its exit is.
        for source in ready.sources.into_iter().rev() {
            self.services.on_readable(source);
        }
        if ready.signals {
            action = self.handle_signals();
        }
        if ready.uevents {
            self.handle_uevents();
        }
        if ready.buttons && self.buttons.pressed() {
            info!("power button pressed");
            action = action.or(Some(Action::PowerOff));
        }
        if ready.control {
            action = self.handle_requests().or(action);
        }
        action
    }

    fn handle_requests(&mut self) -> Option<Action> {
        let control = self.control.as_ref()?;
        control.clear_wake();
        let mut action = None;
        let now = Instant::now();
        while let Ok(req) = control.requests.try_recv() {
            match req {
                Request::Start(name, tx) => {
                    info!("control: start {name}");
                    let _ = tx.send(self.services.request_start(&name, now));
                }
                Request::StartIdle(name, prepare, tx) => {
                    info!("control: start {name}");
                    let _ = tx.send(self.services.request_start_idle(&name, now, prepare));
                }
                Request::Stop(name, tx) => {
                    info!("control: stop {name}");
                    let _ = tx.send(self.services.request_stop(&name, now));
                }
                Request::Restart(name, tx) => {
                    info!("control: restart {name}");
                    let _ = tx.send(self.services.request_restart(&name, now));
                }
                Request::TakeExits(name, tx) => {
                    let _ = tx.send(self.services.take_exits(&name));
                }
                Request::Shutdown(a) => {
                    info!("control: {a} requested");
                    action = action.or(Some(a));
                }
            }
        }
        action
    }

    fn publish(&self) {
        if let Some(c) = &self.control {
            c.publish(
                self.services.statuses(),
                crate::timeline::read(),
                self.pending_ready.is_none(),
            );
        }
    }

    /// The ready line, once: every service ready or failed once (a crash loop does not
    /// hold it), then a short status.
    fn announce_when_ready(&mut self) {
        if self.pending_ready.is_none() || !self.services.all_settled() {
            return;
        }
        let boot_hostname = self.pending_ready.take().unwrap_or_default();
        // The agent may have named the machine since boot (user-data's hostname).
        let hostname = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or(boot_hostname);
        crate::timeline::mark("services");
        let up = log::uptime();
        let addresses = addresses();
        // The version the machine came up on: the booted slot's (an update's), else
        // this build's.
        let version = self
            .slots
            .get()
            .and_then(|s| {
                s.info(s.booted)
                    .map(|i| format!("{} (slot {})", i.version, s.booted.name()))
            })
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string());
        log::bare(format_args!(
            "berth: ready (berth {version}, boot {} ms, hostname {hostname}, addresses {}, services {})",
            up.as_millis(),
            if addresses.is_empty() {
                "none".to_string()
            } else {
                addresses.join(" ")
            },
            self.services.summary()
        ));
    }

    fn handle_signals(&mut self) -> Option<Action> {
        let mut action = None;
        loop {
            match self.signals.read_signal() {
                Ok(Some(info)) => {
                    let signo = i32::try_from(info.ssi_signo).unwrap_or(0);
                    if signo == libc::SIGCHLD {
                        self.reap();
                    } else if let Some(a) = action_for_signal(signo) {
                        info!("signal {signo} received: {a}");
                        action = action.or(Some(a));
                    }
                }
                Ok(None) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    warn!("reading signalfd: {e}");
                    break;
                }
            }
        }
        // SIGCHLD coalesces: reap anyway so no zombie waits for the next signal.
        self.reap();
        action
    }

    /// Reaps every exited child. A service's main process is the service's business;
    /// any other (an orphan re-parented to PID 1) is looked at before it is reaped
    /// (WNOWAIT keeps /proc/PID/cgroup readable), so a process from a delegated subtree
    /// has its exit status kept for its service.
    pub fn reap(&mut self) {
        let now = Instant::now();
        loop {
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            let pid = match waitid(Id::All, flags) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(status) => status.pid(),
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    warn!("waitid: {e}");
                    break;
                }
            };
            let Some(pid) = pid else { break };
            let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            let status = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(s) => s,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    warn!("waitpid {pid}: {e}");
                    break;
                }
            };
            if !self.services.on_exit(pid, status, now) {
                self.services.on_orphan_exit(pid, status, &cgroup);
            }
        }
    }

    fn handle_uevents(&mut self) {
        let Some(uevents) = &self.uevents else {
            return;
        };
        let mut input_added = false;
        for ev in uevents.drain() {
            if ev.action != "add" {
                continue;
            }
            input_added |= ev.subsystem == "input";
            let (Some(alias), Some(loader)) = (&ev.modalias, self.loader.as_mut()) else {
                continue;
            };
            for result in loader.load_for_modalias(alias) {
                match result {
                    Ok(mods) if !mods.is_empty() => {
                        info!("loaded {} for {}", mods.join(" "), ev.devpath)
                    }
                    Ok(_) => {}
                    Err(e) => warn!("driver for {alias}: {e}"),
                }
            }
        }
        if input_added {
            for name in self
                .buttons
                .refresh(Path::new("/sys/class/input"), Path::new("/dev/input"))
            {
                info!("power button on /dev/input/{name}");
            }
        }
    }
}

/// The machine's addresses other than loopback, as `name=addr`.
fn addresses() -> Vec<String> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter(|a| a.interface_name != "lo")
        .filter_map(|a| {
            let addr = a.address?;
            let ip = addr
                .as_sockaddr_in()
                .map(|s| s.ip().to_string())
                .or_else(|| addr.as_sockaddr_in6().map(|s| s.ip().to_string()))?;
            Some(format!("{}={ip}", a.interface_name))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_signal_conventions() {
        let rtmin = libc::SIGRTMIN();
        assert_eq!(action_for_signal(libc::SIGINT), Some(Action::Reboot));
        assert_eq!(action_for_signal(libc::SIGTERM), Some(Action::PowerOff));
        assert_eq!(action_for_signal(rtmin + 3), Some(Action::Halt));
        assert_eq!(action_for_signal(rtmin + 4), Some(Action::PowerOff));
        assert_eq!(action_for_signal(rtmin + 5), Some(Action::Reboot));
        assert_eq!(action_for_signal(libc::SIGHUP), None);
        assert_eq!(action_for_signal(libc::SIGCHLD), None);
    }
}
