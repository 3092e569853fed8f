//! Console logging for PID 1.
//!
//! Every line goes to the console (our stdout, which the kernel opened on /dev/console)
//! with a `[seconds.micros]` prefix taken from CLOCK_BOOTTIME, so lines line up with the
//! kernel's own printk timestamps. Writes never panic: `println!` panics when the console
//! write fails, and a panic in PID 1 is a kernel panic, so we write through `write_all`
//! and drop errors (there is nowhere else to report them).

use std::fmt;
use std::io::Write;
use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

/// Time since the kernel started, as the kernel counts it (includes suspend).
pub fn uptime() -> Duration {
    match clock_gettime(ClockId::CLOCK_BOOTTIME) {
        Ok(ts) => Duration::new(
            u64::try_from(ts.tv_sec()).unwrap_or(0),
            u32::try_from(ts.tv_nsec()).unwrap_or(0),
        ),
        Err(_) => Duration::ZERO,
    }
}

fn write_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}

/// Each of init's lines is also kept in the kernel's log buffer, where log forwarding
/// reads it with the kernel's own messages and in their order: facility user, level
/// debug (`<15>`), which the console (at its default level) does not print a second
/// time. Userspace writes to /dev/kmsg are rate-limited unless `printk_devkmsg` is
/// `on`; init sets it once /proc is there.
fn mirror(text: &str) {
    use std::sync::Mutex;
    static KMSG: Mutex<Option<std::fs::File>> = Mutex::new(None);
    static UNLIMITED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let Ok(mut kmsg) = KMSG.lock() else {
        return;
    };
    if kmsg.is_none() {
        *kmsg = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/kmsg")
            .ok();
    }
    if !UNLIMITED.load(std::sync::atomic::Ordering::Relaxed)
        && std::fs::write("/proc/sys/kernel/printk_devkmsg", "on\n").is_ok()
    {
        UNLIMITED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    if let Some(f) = kmsg.as_mut() {
        // One record per write; a failed one (the buffer is being torn down at
        // shutdown) is dropped, as the console line was written already.
        let _ = f.write_all(format!("<15>init: {text}").as_bytes());
    }
}

/// One timestamped console line from init.
pub fn line(args: fmt::Arguments<'_>) {
    let t = uptime();
    let text = args.to_string();
    write_line(&format!(
        "[{:5}.{:06}] init: {text}\n",
        t.as_secs(),
        t.subsec_micros(),
    ));
    mirror(&text);
}

/// A line without the timestamp prefix, for the few lines tools match from the start of
/// the line (`berth: ready`, `berth: fatal`).
pub fn bare(args: fmt::Arguments<'_>) {
    let text = args.to_string();
    write_line(&format!("{text}\n"));
    mirror(&text);
}

#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::line(format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::line(format_args!("warning: {}", format_args!($($arg)*))) };
}
