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

/// One timestamped console line from init.
pub fn line(args: fmt::Arguments<'_>) {
    let t = uptime();
    write_line(&format!(
        "[{:5}.{:06}] init: {}\n",
        t.as_secs(),
        t.subsec_micros(),
        args
    ));
}

/// A line without the timestamp prefix, for the few lines tools match from the start of
/// the line (`berth: ready`, `berth: fatal`).
pub fn bare(args: fmt::Arguments<'_>) {
    write_line(&format!("{args}\n"));
}

#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::line(format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::line(format_args!("warning: {}", format_args!($($arg)*))) };
}
