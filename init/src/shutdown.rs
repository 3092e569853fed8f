//! Orderly shutdown, once the supervisor has stopped the services: end every other
//! process, sync, unmount, then the reboot(2) call. Every wait is bounded, so a process
//! stuck in D state (uninterruptible I/O) delays shutdown by seconds, never forever.

use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::{info, warn};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    PowerOff,
    Reboot,
    Halt,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::PowerOff => "powering off",
            Action::Reboot => "rebooting",
            Action::Halt => "halting",
        }
    }

    fn mode(self) -> RebootMode {
        match self {
            Action::PowerOff => RebootMode::RB_POWER_OFF,
            Action::Reboot => RebootMode::RB_AUTOBOOT,
            Action::Halt => RebootMode::RB_HALT_SYSTEM,
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::PowerOff => "poweroff",
            Action::Reboot => "reboot",
            Action::Halt => "halt",
        })
    }
}

const TERM_TIMEOUT: Duration = Duration::from_secs(3);
const KILL_TIMEOUT: Duration = Duration::from_secs(2);

/// After the services have stopped (the supervisor stops them in order): ends every
/// other process, syncs, unmounts, and calls reboot(2). Never returns: if the kernel
/// refuses, it waits forever (PID 1 must not exit).
pub fn finish(action: Action) -> ! {
    info!("shutdown: sending SIGTERM to all processes");
    end_all(Signal::SIGTERM, TERM_TIMEOUT);
    info!("shutdown: sending SIGKILL to all processes");
    end_all(Signal::SIGKILL, KILL_TIMEOUT);
    info!("shutdown: syncing filesystems");
    nix::unistd::sync();
    unmount_all();
    info!("shutdown: {}", action.verb());
    let err = match reboot(action.mode()) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    warn!("shutdown: reboot({action}) failed: {err}; waiting");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// kill(-1, sig) reaches every process but init itself; then reap until none is left
/// (ECHILD: every process ends up as init's child) or the timeout.
fn end_all(signal: Signal, timeout: Duration) {
    match kill(Pid::from_raw(-1), signal) {
        Ok(()) => {}
        Err(Errno::ESRCH) => return,
        Err(e) => warn!("shutdown: kill(-1, {signal}): {e}"),
    }
    let none_left = reap_until(timeout);
    if !none_left {
        warn!(
            "shutdown: processes left after {signal} and {} s; going on",
            timeout.as_secs()
        );
    }
}

/// Reaps children until there are none or the timeout passes; true when none are left.
fn reap_until(timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(Errno::ECHILD) => return true,
            Err(e) => {
                warn!("shutdown: waitpid: {e}");
                return false;
            }
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Filesystem types that hold no data of ours and stay mounted to the end.
const API_FSTYPES: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "cgroup2",
    "tmpfs",
    "rootfs",
    "ramfs",
    "securityfs",
    "debugfs",
    "tracefs",
    "bpf",
    "pstore",
    "efivarfs",
    "mqueue",
    "hugetlbfs",
    "configfs",
    "fusectl",
    "autofs",
    "binfmt_misc",
];

/// Unmounts every real filesystem, deepest first; one that is still busy is remounted
/// read-only so its journal is clean when the power goes, and what holds it is named.
fn unmount_all() {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        warn!("shutdown: cannot read /proc/self/mountinfo; not unmounting");
        return;
    };
    let mut count = 0;
    for (target, fstype) in unmount_order(mounts(&text)) {
        if target == "/" || API_FSTYPES.contains(&fstype.as_str()) {
            continue;
        }
        match umount2(target.as_str(), MntFlags::empty()) {
            Ok(()) => {
                info!("shutdown: unmounted {target}");
                count += 1;
            }
            Err(e) => {
                for holder in holders(std::path::Path::new("/proc"), &target) {
                    warn!("shutdown: {target} is held by {holder}");
                }
                let ro = mount(
                    None::<&str>,
                    target.as_str(),
                    None::<&str>,
                    MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None::<&str>,
                );
                match ro {
                    Ok(()) => info!("shutdown: {target} busy ({e}); remounted read-only"),
                    Err(e2) => warn!("shutdown: {target}: unmount: {e}; read-only remount: {e2}"),
                }
            }
        }
    }
    info!("shutdown: unmounted {count} filesystem(s)");
}

/// Deepest mount points first; among equals, the last mounted first (an over-mount
/// before what it covers).
fn unmount_order(mut mounts: Vec<(String, String)>) -> Vec<(String, String)> {
    mounts.reverse();
    mounts.sort_by_key(|(target, _)| {
        std::cmp::Reverse(target.split('/').filter(|c| !c.is_empty()).count())
    });
    mounts
}

/// What keeps `target` busy: each process (under `proc`) whose working directory, root
/// or an open file lies on it, as `pid N (comm): path` (at most 20).
fn holders(proc: &std::path::Path, target: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(proc) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let dir = entry.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let mut links: Vec<std::path::PathBuf> =
            ["cwd", "root"].iter().map(|l| dir.join(l)).collect();
        if let Ok(fds) = std::fs::read_dir(dir.join("fd")) {
            links.extend(fds.flatten().map(|f| f.path()));
        }
        for link in links {
            if let Ok(path) = std::fs::read_link(&link) {
                if path.starts_with(target) && found.len() < 20 {
                    found.push(format!("pid {pid} ({}): {}", comm.trim(), path.display()));
                }
            }
        }
    }
    found
}

/// (mount point, fstype) from /proc/self/mountinfo, in mount order. Mount points escape
/// spaces and such as octal (`\040`).
fn mounts(mountinfo: &str) -> Vec<(String, String)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let target = fields.get(4)?;
            let sep = fields.iter().position(|f| *f == "-")?;
            let fstype = fields.get(sep + 1)?;
            Some((unescape_octal(target), (*fstype).to_string()))
        })
        .collect()
}

fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes[i] == b'\\')
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match code {
            Some(c) => {
                out.push(c);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo() {
        let text = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
                    30 1 253:0 / /var rw,relatime shared:1 - btrfs /dev/vda4 rw\n\
                    31 30 0:40 / /var/with\\040space rw - tmpfs tmpfs rw\n";
        assert_eq!(
            mounts(text),
            vec![
                ("/proc".to_string(), "proc".to_string()),
                ("/var".to_string(), "btrfs".to_string()),
                ("/var/with space".to_string(), "tmpfs".to_string()),
            ]
        );
    }

    #[test]
    fn unmounts_deepest_first_and_overmounts_before_what_they_cover() {
        let m = |t: &str, f: &str| (t.to_string(), f.to_string());
        let order = unmount_order(vec![
            m("/var", "btrfs"),
            m("/var/lib/berth/containers/x", "overlay"),
            m("/run", "tmpfs"),
            m("/var/log", "btrfs"),
            m("/var", "tmpfs"),
        ]);
        let targets: Vec<&str> = order.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            targets,
            [
                "/var/lib/berth/containers/x",
                "/var/log",
                "/var",
                "/run",
                "/var"
            ]
        );
        assert_eq!(order[2].1, "tmpfs", "the later /var mount goes first");
    }

    #[test]
    fn names_the_processes_that_hold_a_mount() {
        let proc = tempfile::tempdir().unwrap();
        let p = proc.path().join("123");
        std::fs::create_dir_all(p.join("fd")).unwrap();
        std::fs::write(p.join("comm"), "berth-agent\n").unwrap();
        std::os::unix::fs::symlink("/", p.join("root")).unwrap();
        std::os::unix::fs::symlink("/var/lib/berth", p.join("cwd")).unwrap();
        std::os::unix::fs::symlink("/var/log/berth/a.log", p.join("fd/3")).unwrap();
        std::os::unix::fs::symlink("/variable", p.join("fd/4")).unwrap();
        std::os::unix::fs::symlink("pipe:[42]", p.join("fd/5")).unwrap();
        std::fs::create_dir_all(proc.path().join("self-ish")).unwrap();
        let mut found = holders(proc.path(), "/var");
        found.sort();
        assert_eq!(
            found,
            [
                "pid 123 (berth-agent): /var/lib/berth",
                "pid 123 (berth-agent): /var/log/berth/a.log"
            ]
        );
    }

    #[test]
    fn unescape_leaves_plain_text_and_bad_escapes() {
        assert_eq!(unescape_octal("/a\\134b"), "/a\\b");
        assert_eq!(unescape_octal("/trailing\\"), "/trailing\\");
        assert_eq!(unescape_octal("/x\\9zz"), "/x\\9zz");
    }
}
