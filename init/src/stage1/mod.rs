//! Stage 1: what runs first, from the initramfs: API filesystems, the console, kernel
//! modules (the early list, then coldplug), then, when the command line names a root
//! partition, dm-verity over it, the read-only mount and switch_root into stage 2.
//!
//! Stage 2 (the same binary re-executed from the root with `--stage2`) runs the module
//! part again from the root's own index (what is loaded is skipped) and goes on.

pub mod mounts;
pub mod root;
pub mod switch_root;
pub mod verity;

use std::path::Path;
use std::time::{Duration, Instant};

use crate::cmdline::Cmdline;

use crate::modules::uevent::UeventSocket;
use crate::modules::{coldplug, kernel_release, Loader};
use crate::{info, sys, warn};

/// Where the kernel runs its module helper; the image links it to init (modprobe mode).
pub const MODPROBE_PATH: &str = "/sbin/modprobe";
/// Module names to load at boot whatever the hardware, one per line (image-build writes it).
pub const EARLY_MODULES_FILE: &str = "modules.early";

/// What stage 1 hands on.
pub struct Stage1 {
    pub loader: Option<Loader>,
    pub uevents: Option<UeventSocket>,
}

/// A failure that leaves nothing sensible to do but report it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Fatal(pub String);

/// How long stage 1 waits for the root partition to appear (NVMe and SCSI disks are
/// probed asynchronously).
const ROOT_WAIT: Duration = Duration::from_secs(30);

pub fn run(stage2: bool) -> Result<Stage1, Fatal> {
    if !stage2 {
        mount_api_filesystems()?;
        crate::timeline::mark("kernel");
    } else {
        crate::timeline::mark("switch-root");
    }
    ensure_console();
    if let Err(e) = nix::sys::reboot::set_cad_enabled(false) {
        warn!("disabling ctrl-alt-del in the kernel (so it reaches init as SIGINT): {e}");
    }
    let release = kernel_release();
    if stage2 {
        info!("stage 2 on the verified root");
    } else {
        info!(
            "berth init {} on kernel {release}",
            env!("CARGO_PKG_VERSION")
        );
    }
    register_modprobe_helper();
    let mut stage1 = load_modules(&release);
    crate::timeline::mark(if stage2 { "modules" } else { "initramfs" });
    if !stage2 {
        let cmdline = Cmdline::read(Path::new("/proc/cmdline"))
            .map_err(|e| Fatal(format!("reading /proc/cmdline: {e}")))?;
        if let Some(label) = &cmdline.root {
            boot_root(label, &cmdline, &mut stage1)?;
        }
    }
    Ok(stage1)
}

fn mount_api_filesystems() -> Result<(), Fatal> {
    for m in mounts::API_MOUNTS {
        if let Err(e) = mounts::mount_api(Path::new("/"), m) {
            // Without /proc, /sys or /dev nothing else can work.
            if matches!(m.target, "/proc" | "/sys" | "/dev") {
                return Err(Fatal(e.to_string()));
            }
            warn!("{e}");
        }
    }
    Ok(())
}

fn load_modules(release: &str) -> Stage1 {
    // Listen before coldplug, so a device that appears during the walk is not missed.
    let uevents = UeventSocket::open()
        .map_err(|e| warn!("uevent socket: {e}; hot-plugged devices will get no driver"))
        .ok();
    let mut loader = match Loader::open(
        Path::new("/lib/modules"),
        release,
        Path::new("/proc/modules"),
    ) {
        Ok(l) => Some(l),
        Err(e) => {
            warn!("{e}; no kernel modules will be loaded");
            None
        }
    };
    if let Some(loader) = loader.as_mut() {
        load_early(loader, &Path::new("/lib/modules").join(release));
        let inserted = coldplug::settle(loader, Path::new("/sys/devices"));
        if !inserted.is_empty() {
            info!("coldplug loaded {}", inserted.join(" "));
        }
    }
    Stage1 { loader, uevents }
}

/// Finds the root partition, verifies it with dm-verity, mounts it and switches to it.
/// Returns only on failure.
fn boot_root(label: &str, cmdline: &Cmdline, stage1: &mut Stage1) -> Result<(), Fatal> {
    let params = verity::VerityParams::from_cmdline(cmdline).map_err(|e| Fatal(e.to_string()))?;
    let part = wait_for_partition(label, stage1)?;
    info!("root {label} is /dev/{} on {}", part.name, part.disk);
    let dev = verity::open(&part, &params).map_err(|e| Fatal(e.to_string()))?;
    switch_root::mount_root(&dev).map_err(|e| {
        Fatal(format!(
            "dm-verity: {label} (/dev/{}) failed verification or is not the image's root, so it is not mounted: {e}",
            part.name
        ))
    })?;
    info!(
        "root {label} verified by dm-verity ({}), mounted read-only; switching to it",
        dev.display()
    );
    crate::timeline::mark("root");
    match switch_root::switch_root() {
        Ok(never) => match never {},
        Err(e) => Err(Fatal(e.to_string())),
    }
}

/// Polls /sys/class/block for the partition, loading drivers for devices that appear
/// meanwhile.
fn wait_for_partition(label: &str, stage1: &mut Stage1) -> Result<root::Partition, Fatal> {
    let deadline = Instant::now() + ROOT_WAIT;
    loop {
        match root::find(&root::partitions(Path::new("/sys/class/block")), label) {
            Ok(p) => return Ok(p),
            Err(e @ root::FindError::SeveralDisks(_)) => return Err(Fatal(e.to_string())),
            Err(root::FindError::NotFound(_)) if Instant::now() < deadline => {}
            Err(e) => {
                return Err(Fatal(format!(
                    "waited {} s for the root: {e}",
                    ROOT_WAIT.as_secs()
                )))
            }
        }
        if let (Some(uevents), Some(loader)) = (&stage1.uevents, stage1.loader.as_mut()) {
            for ev in uevents.drain() {
                if let Some(alias) = ev.modalias.as_deref().filter(|_| ev.action == "add") {
                    // Failures show up as the partition not appearing.
                    let _ = loader.load_for_modalias(alias);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn load_early(loader: &mut Loader, dir: &Path) {
    let list = match std::fs::read_to_string(dir.join(EARLY_MODULES_FILE)) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            warn!("reading {}: {e}", dir.join(EARLY_MODULES_FILE).display());
            return;
        }
    };
    let mut inserted = Vec::new();
    for name in list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        match loader.load(name) {
            Ok(mods) => inserted.extend(mods),
            Err(e) => warn!("early module {name}: {e}"),
        }
    }
    if !inserted.is_empty() {
        info!("early modules: {}", inserted.join(" "));
    }
}

/// Points the kernel's on-demand module loading (filesystems, netfilter, nls...) at init
/// in modprobe mode.
fn register_modprobe_helper() {
    if !Path::new(MODPROBE_PATH).exists() {
        warn!("{MODPROBE_PATH} is missing: on-demand module loading is off");
        return;
    }
    if let Err(e) = std::fs::write("/proc/sys/kernel/modprobe", MODPROBE_PATH) {
        warn!("setting /proc/sys/kernel/modprobe: {e}");
    }
}

/// The kernel opens /dev/console as fds 0-2 for init only if the initramfs has the node;
/// if it did not, open it now that devtmpfs is mounted, so our lines reach the console.
fn ensure_console() {
    if (0..3).all(sys::fd_is_open) {
        return;
    }
    let Ok(console) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    else {
        return;
    };
    for fd in (0..3).filter(|fd| !sys::fd_is_open(*fd)) {
        let _ = sys::dup_onto(&console, fd);
    }
}
