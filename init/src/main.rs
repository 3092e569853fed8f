//! Berth's PID 1.
//!
//! One binary, four roles: run as process 1 it boots and supervises the machine; run as
//! `modprobe` (the kernel's module helper, linked to it) it loads a module; run as
//! `berthctl` (linked to it too) it is the operator's command line (`berth-ctl`), and
//! as `berth-login` root's SSH login shell, which runs berthctl's words only.
//!
//! As PID 1 it must never exit or panic (either is a kernel panic): every step reports
//! its errors on the console and goes on, a failure that leaves nothing to do is one
//! `berth: fatal:` line followed by emergency mode, and each phase runs under
//! `catch_unwind` so even a bug ends in emergency mode.
//!
//! Emergency mode keeps the machine up with no services: the console stays readable, and
//! the power button, ctrl-alt-del and shutdown signals still work. We chose this over
//! halting or powering off because an operator can then read why it failed.

mod cmdline;
mod log;
mod modprobe;
mod modules;
mod shutdown;
mod stage1;
mod stage2;
mod sys;
mod timeline;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use nix::sys::signal::SigSet;
use nix::sys::signalfd::{SfdFlags, SignalFd};

use stage2::power_button::PowerButtons;
use stage2::services::Manager;
use stage2::supervise::Supervisor;

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    match Path::new(&argv0).file_name().and_then(|n| n.to_str()) {
        Some("modprobe") => return modprobe::main(args),
        // One copy of the control API's client code in the image, not two.
        Some("berthctl") => return berth_ctl::main(std::env::args_os()),
        // root's login shell for SSH (`-berth-login` for a login): berthctl's words.
        Some("berth-login" | "-berth-login") => return berth_ctl::login::main(std::env::args_os()),
        _ => {}
    }
    let first = args.next();
    if std::process::id() != 1 {
        if first.is_some_and(|a| a == "--version") {
            log::bare(format_args!("berth-init {}", env!("CARGO_PKG_VERSION")));
            return ExitCode::SUCCESS;
        }
        log::bare(format_args!(
            "init: Berth's PID 1; the kernel runs it as init, or as modprobe, and operators as berthctl, through links of those names"
        ));
        return ExitCode::from(2);
    }
    let stage2 = first.is_some_and(|a| a == stage1::switch_root::STAGE2_ARG);
    pid1(stage2)
}

fn pid1(stage2: bool) -> ! {
    std::panic::set_hook(Box::new(|panic| {
        log::bare(format_args!("berth: fatal: init bug: {panic}"));
    }));
    // Every signal comes through the signalfd; std's Command unblocks them in children.
    if let Err(e) = SigSet::all().thread_block() {
        warn!("blocking signals: {e}");
    }
    let mut supervisor = match catch_unwind(|| boot(stage2)) {
        Ok(Ok(s)) => s,
        Ok(Err(fatal)) => emergency(&fatal.to_string()),
        Err(_) => emergency("init panicked during boot"),
    };
    let action = loop {
        match catch_unwind(AssertUnwindSafe(|| supervisor.run())) {
            Ok(action) => break action,
            Err(_) => warn!("supervisor loop panicked; resuming"),
        }
    };
    supervisor.shutdown(action)
}

fn boot(stage2: bool) -> Result<Supervisor, stage1::Fatal> {
    let stage1 = stage1::run(stage2)?;
    let signals = signal_fd().map_err(|e| stage1::Fatal(format!("creating the signalfd: {e}")))?;
    Ok(stage2::run(stage1, signals))
}

fn signal_fd() -> nix::Result<SignalFd> {
    SignalFd::with_flags(
        &SigSet::all(),
        SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
    )
}

/// On a trial boot a fatal error must not wait for an operator: the reboot spends the
/// slot's next try, and once they are spent GRUB boots the other slot. (Read from
/// /proc/cmdline directly: a failure may come before anything else was read.)
fn trial_reboot() {
    let Ok(cmdline) = cmdline::Cmdline::read(Path::new("/proc/cmdline")) else {
        return;
    };
    if !cmdline.trial {
        return;
    }
    let delay = cmdline
        .panic_seconds
        .map_or(TRIAL_REBOOT_DELAY, |s| Duration::from_secs(s.min(300)));
    log::bare(format_args!(
        "berth: this was a trial boot: rebooting in {} s to try again or fall back",
        delay.as_secs()
    ));
    std::thread::sleep(delay);
    shutdown::finish(shutdown::Action::Reboot)
}

/// Without `panic=` on the command line: long enough to read the error on a console
/// (the image's own command line says `panic=10`).
const TRIAL_REBOOT_DELAY: Duration = Duration::from_secs(10);

/// Prints the fatal line and returns a supervisor with nothing to supervise, so the
/// machine keeps answering the power button and signals.
fn emergency(reason: &str) -> Supervisor {
    log::bare(format_args!("berth: fatal: {reason}"));
    trial_reboot();
    info!("emergency mode: no services; power button and ctrl-alt-del still work");
    loop {
        match signal_fd() {
            Ok(signals) => {
                let mut buttons = PowerButtons::default();
                buttons.refresh(Path::new("/sys/class/input"), Path::new("/dev/input"));
                return Supervisor {
                    signals,
                    uevents: None,
                    loader: None,
                    buttons,
                    services: Manager::new(Vec::new(), &[], None),
                    control: None,
                    pending_ready: None,
                    watchdog: None,
                    slots: Default::default(),
                };
            }
            Err(e) => {
                warn!("creating the signalfd: {e}; retrying");
                std::thread::sleep(Duration::from_secs(5));
            }
        }
    }
}
