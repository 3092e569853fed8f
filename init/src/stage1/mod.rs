//! Stage 1: what runs first, from the initramfs: API filesystems, the console, kernel
//! modules (the early list, then coldplug). Finding and verifying the root and
//! switch_root come with the disk image (issue 3).

pub mod mounts;

use std::path::Path;

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
    pub modules_loaded: usize,
}

/// A failure that leaves nothing sensible to do but report it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Fatal(pub String);

pub fn run() -> Result<Stage1, Fatal> {
    for m in mounts::API_MOUNTS {
        if let Err(e) = mounts::mount_api(Path::new("/"), m) {
            // Without /proc, /sys or /dev nothing else can work.
            if matches!(m.target, "/proc" | "/sys" | "/dev") {
                return Err(Fatal(e.to_string()));
            }
            warn!("{e}");
        }
    }
    ensure_console();
    if let Err(e) = nix::sys::reboot::set_cad_enabled(false) {
        warn!("disabling ctrl-alt-del in the kernel (so it reaches init as SIGINT): {e}");
    }
    let release = kernel_release();
    info!(
        "berth init {} on kernel {release}",
        env!("CARGO_PKG_VERSION")
    );
    register_modprobe_helper();
    // Listen before coldplug, so a device that appears during the walk is not missed.
    let uevents = UeventSocket::open()
        .map_err(|e| warn!("uevent socket: {e}; hot-plugged devices will get no driver"))
        .ok();
    let mut loader = match Loader::open(
        Path::new("/lib/modules"),
        &release,
        Path::new("/proc/modules"),
    ) {
        Ok(l) => Some(l),
        Err(e) => {
            warn!("{e}; no kernel modules will be loaded");
            None
        }
    };
    let mut modules_loaded = 0;
    if let Some(loader) = loader.as_mut() {
        modules_loaded += load_early(loader, &Path::new("/lib/modules").join(&release));
        let inserted = coldplug::settle(loader, Path::new("/sys/devices"));
        if !inserted.is_empty() {
            info!("coldplug loaded {}", inserted.join(" "));
        }
        modules_loaded += inserted.len();
    }
    Ok(Stage1 {
        loader,
        uevents,
        modules_loaded,
    })
}

fn load_early(loader: &mut Loader, dir: &Path) -> usize {
    let list = match std::fs::read_to_string(dir.join(EARLY_MODULES_FILE)) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0,
        Err(e) => {
            warn!("reading {}: {e}", dir.join(EARLY_MODULES_FILE).display());
            return 0;
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
    inserted.len()
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
