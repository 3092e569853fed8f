//! KVM or TCG. `/dev/kvm` can exist and still hang (nested virtualisation on this kind of
//! machine does), so KVM is used only after a real kernel boot under it reached its
//! first panic within seconds. The answer is cached per process and, for this host's
//! boot, in a file, so other test processes do not probe again.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn qemu_args(self) -> [&'static str; 4] {
        match self {
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => ["-accel", "tcg", "-cpu", "max"],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The accelerator to use with `kernel`. `BERTH_ACCEL=kvm|tcg` skips probing.
pub fn probe(kernel: &Path) -> Accel {
    static CHOSEN: OnceLock<Accel> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let (accel, why) = decide(kernel);
        eprintln!("berth-tests: using {} ({why})", accel.name());
        accel
    })
}

fn decide(kernel: &Path) -> (Accel, String) {
    match std::env::var("BERTH_ACCEL").as_deref() {
        Ok("kvm") => return (Accel::Kvm, "BERTH_ACCEL=kvm".into()),
        Ok("tcg") => return (Accel::Tcg, "BERTH_ACCEL=tcg".into()),
        _ => {}
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return (Accel::Tcg, "/dev/kvm cannot be opened".into());
    }
    let cache = cache_file();
    if let Some(cached) = cache
        .as_deref()
        .and_then(|p| std::fs::read_to_string(p).ok())
    {
        match cached.trim() {
            "kvm" => return (Accel::Kvm, "cached probe: KVM booted here".into()),
            "tcg" => return (Accel::Tcg, "cached probe: KVM hung here".into()),
            _ => {}
        }
    }
    let (accel, why) = match kvm_probe(kernel) {
        Probe::Finished(t) => (
            Accel::Kvm,
            format!(
                "a probe boot under KVM reached its panic in {:.1} s",
                t.as_secs_f64()
            ),
        ),
        Probe::Hung => (
            Accel::Tcg,
            format!(
                "a probe boot under KVM did not finish in {} s",
                PROBE_TIMEOUT.as_secs()
            ),
        ),
        // Says nothing about KVM (a wrong kernel path, say): not cached.
        Probe::Failed(why) => return (Accel::Tcg, format!("the KVM probe failed: {why}")),
    };
    if let Some(p) = cache {
        write_cache(&p, accel);
    }
    (accel, why)
}

enum Probe {
    Finished(Duration),
    Hung,
    Failed(String),
}

/// Boots the kernel with no initramfs and no root under KVM: it panics ("VFS: Unable to
/// mount root fs") and, with panic=-1 and -no-reboot, QEMU exits. A working KVM does
/// this in about a second; a hanging one never prints a thing. The console goes to a
/// file in the temp dir, for whoever wonders what the probe saw.
fn kvm_probe(kernel: &Path) -> Probe {
    if !kernel.is_file() {
        return Probe::Failed(format!("no kernel at {}", kernel.display()));
    }
    let log = std::env::temp_dir().join("berth-kvm-probe.log");
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(Accel::Kvm.qemu_args())
        .args(["-m", "256", "-nodefaults", "-no-user-config"])
        .args(["-display", "none", "-no-reboot", "-serial"])
        .arg(format!("file:{}", log.display()))
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1 rdinit=/nonexistent"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Probe::Failed(format!("starting qemu-system-x86_64: {e}")),
    };
    let start = Instant::now();
    while start.elapsed() < PROBE_TIMEOUT {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Probe::Finished(start.elapsed()),
            Ok(Some(status)) => return Probe::Failed(qemu_error(&mut child, status)),
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Probe::Failed(format!("waiting for QEMU: {e}")),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Probe::Hung
}

/// QEMU's last stderr line ("failed to initialize kvm: ...").
fn qemu_error(child: &mut std::process::Child, status: std::process::ExitStatus) -> String {
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    let last = stderr.lines().last().unwrap_or("no message");
    format!("QEMU exited with {status}: {last}")
}

/// Keyed by the host's boot: whether KVM works is a property of the host (nested
/// virtualisation, its hypervisor), not of the kernel the probe happened to boot.
fn cache_file() -> Option<PathBuf> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(std::env::temp_dir().join(format!("berth-accel-{}", boot_id.trim())))
}

/// Written aside and renamed, so a process reading it meanwhile never sees half of it.
fn write_cache(path: &Path, accel: Accel) {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, accel.name()).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}
