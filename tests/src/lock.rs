//! One VM at a time: a TCG guest takes both cores of the build machine, so VM tests in
//! parallel threads or processes would only slow each other into timeouts.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use nix::fcntl::{fcntl, FcntlArg, FdFlag, Flock, FlockArg};

pub const DEFAULT_LOCK: &str = "/tmp/berth-vm.lock";

/// Held while a VM runs; dropping it releases the flock.
pub struct VmLock {
    lock: Flock<File>,
    pub path: PathBuf,
    taken: Instant,
}

/// Where each VM's time is appended when set (`make test` prints the sum per test).
pub const TIMES_ENV: &str = "BERTH_TEST_TIMES";

impl Drop for VmLock {
    /// One line per VM, `test-name<TAB>seconds`: libtest names each test's thread after
    /// the test, so a test that boots three machines gets three lines under one name.
    /// The wait for the lock is not counted, only the time the VM held the machine.
    fn drop(&mut self) {
        let Some(path) = std::env::var_os(TIMES_ENV) else {
            return;
        };
        // Only the machine-wide lock is a VM's (this module's tests take others).
        if self.path != Path::new(DEFAULT_LOCK) {
            return;
        }
        let thread = std::thread::current();
        // A tool's main thread (berth-vm run by a test) is named after the tool.
        let name = match thread.name() {
            Some("main") | None => std::env::current_exe()
                .ok()
                .and_then(|e| e.file_name().map(|n| n.to_string_lossy().into_owned()))
                .map_or("a process of its own".into(), |n| {
                    format!("{n} (its own process)")
                }),
            Some(test) => test.to_string(),
        };
        let line = format!("{name}\t{:.1}\n", self.taken.elapsed().as_secs_f64());
        // One write with O_APPEND: lines of concurrent processes never interleave.
        let written = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            eprintln!("recording the VM's time in {}: {e}", path.to_string_lossy());
        }
    }
}

impl VmLock {
    /// For a process about to exec QEMU in its place (`berth-vm run` on a terminal):
    /// Rust opens files close-on-exec, which would drop the lock at exec. Cleared, the
    /// descriptor lives on in QEMU and the lock ends when QEMU does.
    pub fn keep_across_exec(&self) -> Result<()> {
        fcntl(&*self.lock, FcntlArg::F_SETFD(FdFlag::empty()))
            .with_context(|| format!("clearing close-on-exec on {}", self.path.display()))?;
        Ok(())
    }
}

/// Blocks until the machine-wide VM lock is ours. Every call opens the file anew: flock
/// locks belong to an open file description, so threads of one process exclude each
/// other too.
pub fn vm_lock() -> Result<VmLock> {
    lock_file(Path::new(DEFAULT_LOCK))
}

pub fn lock_file(path: &Path) -> Result<VmLock> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let lock = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(VmLock {
        lock,
        path: path.to_path_buf(),
        taken: Instant::now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn second_locker_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let first = lock_file(&path).unwrap();
        let (tx, rx) = mpsc::channel();
        let p = path.clone();
        let t = std::thread::spawn(move || {
            let _second = lock_file(&p).unwrap();
            tx.send(()).unwrap();
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "second lock taken while the first is held"
        );
        drop(first);
        rx.recv_timeout(Duration::from_secs(5))
            .expect("second lock after release");
        t.join().unwrap();
    }

    #[test]
    fn another_process_cannot_take_it_while_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let try_lock = || {
            std::process::Command::new("flock")
                .args(["--nonblock", "--conflict-exit-code", "7"])
                .arg(&path)
                .arg("true")
                .status()
                .expect("running flock(1)")
                .code()
        };
        let held = lock_file(&path).unwrap();
        assert_eq!(try_lock(), Some(7));
        drop(held);
        assert_eq!(try_lock(), Some(0));
    }
}
