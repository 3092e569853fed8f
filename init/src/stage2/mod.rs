//! Stage 2: the running system: /var, /etc and /tmp, hostname, loopback, the control
//! API, services, then supervision until shutdown.

pub mod control;
pub mod etc;
pub mod memory;
pub mod power_button;
pub mod services;
pub mod slots;
pub mod storage;
pub mod supervise;
pub mod trial;
pub mod watchdog;

use std::path::Path;
use std::sync::Arc;

use nix::sys::signalfd::SignalFd;

use crate::cmdline::Cmdline;
use crate::stage1::Stage1;
use crate::{info, sys, warn};
use power_button::PowerButtons;
use services::Manager;
use supervise::Supervisor;
use watchdog::Watchdog;

pub const DEFAULT_HOSTNAME: &str = "berth";
/// The image's defaults for /etc, copied into the tmpfs /etc at every boot.
pub const ETC_DEFAULTS: &str = "/usr/share/berth/etc";

/// The root is read-only: /etc is a tmpfs seeded from the image's defaults (so a boot
/// always starts from known configuration), /tmp a tmpfs, and /var the DATA partition
/// when booted from a disk (a tmpfs otherwise, or when DATA cannot be used; said loudly).
fn writable_dirs(root_label: Option<&str>) {
    use nix::mount::{mount, MsFlags};
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let var_on_disk = root_label.is_some_and(|label| {
        let result = storage::mount_var(label);
        storage::report(&result);
        result.is_ok()
    });
    for (target, mode) in [("/etc", "0755"), ("/tmp", "1777"), ("/var", "0755")] {
        if target == "/var" && var_on_disk {
            continue;
        }
        let data = format!("mode={mode}");
        if let Err(e) = mount(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            nosuid_nodev,
            Some(data.as_str()),
        ) {
            warn!("mounting tmpfs on {target}: {e}");
        }
    }
    match etc::seed(Path::new(ETC_DEFAULTS), Path::new("/etc")) {
        Ok(n) => info!("/etc: tmpfs with {n} default files"),
        Err(e) => warn!("seeding /etc from {ETC_DEFAULTS}: {e}"),
    }
}

/// Modules in the kernel now (stage 1's and stage 2's).
fn loaded_modules() -> usize {
    std::fs::read_to_string("/proc/modules")
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Brings the system up and prints `berth: ready`; returns the supervisor to run.
pub fn run(mut stage1: Stage1, signals: SignalFd) -> Supervisor {
    let cmdline = Cmdline::read(Path::new("/proc/cmdline")).unwrap_or_else(|e| {
        warn!("reading /proc/cmdline: {e}");
        Cmdline::default()
    });
    writable_dirs(cmdline.root.as_deref());
    crate::timeline::mark("storage");
    let watchdog = Watchdog::arm(stage1.loader.as_mut());
    let hostname = cmdline.hostname.as_deref().unwrap_or(DEFAULT_HOSTNAME);
    match nix::unistd::sethostname(hostname) {
        Ok(()) => info!("hostname {hostname}"),
        Err(e) => warn!("setting hostname {hostname:?}: {e}"),
    }
    match sys::set_link_up("lo") {
        Ok(()) => info!("loopback up"),
        Err(e) => warn!("bringing up loopback: {e}"),
    }
    let mut buttons = PowerButtons::default();
    for name in buttons.refresh(Path::new("/sys/class/input"), Path::new("/dev/input")) {
        info!("power button on /dev/input/{name}");
    }
    let slots = Arc::new(std::sync::OnceLock::new());
    let control = control::start(
        Path::new(berth_control::INIT_SOCKET),
        Path::new(services::LOG_DIR),
        slots.clone(),
    );
    slots::start(&cmdline, slots.clone(), control.as_ref());
    let cgroot = services::cgroup::setup(Path::new(services::cgroup::MOUNT));
    let defs = services::load(Path::new(services::SERVICES_DIR));
    info!(
        "{} kernel modules loaded; {} services defined",
        loaded_modules(),
        defs.len()
    );
    let services = Manager::new(defs, &cmdline.start, cgroot);
    Supervisor {
        signals,
        uevents: stage1.uevents,
        loader: stage1.loader,
        buttons,
        services,
        control,
        pending_ready: Some(hostname.to_string()),
        watchdog,
        slots,
    }
}
