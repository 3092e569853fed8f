//! What a service's process does between fork and exec (the only code in init that runs
//! in a forked child, so only async-signal-safe calls: no allocation, no locks).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The first fd a service receives from the fd store (systemd's SD_LISTEN_FDS_START).
pub const LISTEN_FDS_START: i32 = 3;

/// Unblocks every signal (init blocks them all), makes the child a session leader (so a stop signal to its group reaches its helpers),
/// moves it into its cgroup by writing "0" to `cgroup_procs` (an open `cgroup.procs`),
/// and puts `fds` at 3, 4, ... without close-on-exec. `fds` must not be numbered below
/// `3 + fds.len()` (take them with `dup_high`), so no dup2 overwrites one still to move.
pub fn prepare(cmd: &mut Command, cgroup_procs: Option<OwnedFd>, fds: Vec<OwnedFd>) {
    let hook = move || -> std::io::Result<()> {
        // PID 1 blocks every signal (they reach it through a signalfd) and the mask is
        // inherited: a service must start with none blocked, or SIGTERM would not stop it.
        nix::sys::signal::SigSet::empty().thread_set_mask()?;
        nix::unistd::setsid()?;
        if let Some(procs) = &cgroup_procs {
            nix::unistd::write(procs, b"0")?;
        }
        for (target, fd) in (LISTEN_FDS_START..).zip(&fds) {
            // SAFETY: dup2 on descriptors this closure owns, onto free numbers >= 3; it
            // allocates nothing, so it is safe between fork and exec.
            if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the hook makes only async-signal-safe system calls (sigprocmask, setsid,
    // write, dup2)
    // on values it owns; it does not allocate or take locks.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// A close-on-exec duplicate of `fd` numbered at least `min`.
pub fn dup_high(fd: &OwnedFd, min: i32) -> std::io::Result<OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg};
    let raw = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(min))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that only we own.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(raw) })
}
