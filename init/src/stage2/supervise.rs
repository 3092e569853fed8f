//! PID 1's event loop: signals (child exits and systemd's shutdown conventions), kernel
//! uevents (hot-plugged devices get their driver) and the power button. Returns what
//! shutdown was asked for.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::power_button::PowerButtons;
use super::services::Services;
use crate::modules::uevent::UeventSocket;
use crate::modules::Loader;
use crate::shutdown::Action;
use crate::{info, warn};

pub struct Supervisor {
    pub signals: SignalFd,
    pub uevents: Option<UeventSocket>,
    pub loader: Option<Loader>,
    pub buttons: PowerButtons,
    pub services: Services,
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

impl Supervisor {
    /// Runs until a shutdown is requested.
    pub fn run(&mut self) -> Action {
        loop {
            let next_restart = self.services.restart_due(Instant::now());
            let timeout = next_restart
                .map(|t| t.saturating_duration_since(Instant::now()))
                .map(|d| PollTimeout::try_from(d).unwrap_or(PollTimeout::MAX))
                .unwrap_or(PollTimeout::NONE);
            let ready = match self.wait(timeout) {
                Ok(r) => r,
                Err(e) => {
                    warn!("poll: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    continue;
                }
            };
            if let Some(action) = self.handle(ready) {
                return action;
            }
        }
    }

    /// Polls signals, uevents and power buttons; returns which of them are readable.
    fn wait(&self, timeout: PollTimeout) -> Result<Ready, Errno> {
        let mut fds = vec![PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
        if let Some(u) = &self.uevents {
            fds.push(PollFd::new(u.as_fd(), PollFlags::POLLIN));
        }
        let first_button = fds.len();
        fds.extend(
            self.buttons
                .fds()
                .map(|fd| PollFd::new(fd, PollFlags::POLLIN)),
        );
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
        let readable = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
        Ok(Ready {
            signals: fds.first().is_some_and(readable),
            uevents: self.uevents.is_some() && fds.get(1).is_some_and(readable),
            buttons: fds
                .get(first_button..)
                .is_some_and(|b| b.iter().any(readable)),
        })
    }

    fn handle(&mut self, ready: Ready) -> Option<Action> {
        let mut action = None;
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
        action
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

    /// Reaps every exited child: services are told; orphans re-parented to PID 1 are
    /// simply collected so they never linger as zombies.
    pub fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(status) => {
                    if let Some(pid) = status.pid() {
                        self.services.on_exit(pid, status, false);
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    warn!("waitpid: {e}");
                    break;
                }
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

struct Ready {
    signals: bool,
    uevents: bool,
    buttons: bool,
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
