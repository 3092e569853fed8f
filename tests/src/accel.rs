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
            "kvm" => return (Accel::Kvm, "cached probe".into()),
            "tcg" => return (Accel::Tcg, "cached probe: KVM hung here".into()),
            _ => {}
        }
    }
    let works = kvm_boots(kernel);
    let accel = if works { Accel::Kvm } else { Accel::Tcg };
    if let Some(p) = cache {
        let _ = std::fs::write(p, accel.name());
    }
    let why = if works {
        "a probe boot under KVM finished".to_string()
    } else {
        format!(
            "a probe boot under KVM did not finish in {} s",
            PROBE_TIMEOUT.as_secs()
        )
    };
    (accel, why)
}

/// Boots the kernel with no root under KVM: it panics ("VFS: Unable to mount root fs")
/// and, with panic=-1 and -no-reboot, QEMU exits. A working KVM does this in about a
/// second; a hanging one never does.
fn kvm_boots(kernel: &Path) -> bool {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(Accel::Kvm.qemu_args())
        .args([
            "-m",
            "256",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(["-serial", "null", "-kernel"])
        .arg(kernel)
        .args([
            "-append",
            "panic=-1 rdinit=/nonexistent root=/dev/nonexistent",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let Ok(mut child) = cmd.spawn() else {
        return false;
    };
    let start = Instant::now();
    while start.elapsed() < PROBE_TIMEOUT {
        if let Ok(Some(status)) = child.try_wait() {
            return status.success();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// Keyed by the host's boot: whether KVM works is a property of the host (nested
/// virtualisation, its hypervisor), not of the kernel the probe happened to boot.
fn cache_file() -> Option<PathBuf> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(std::env::temp_dir().join(format!("berth-accel-{}", boot_id.trim())))
}
