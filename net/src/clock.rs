//! Setting the system clock: a step through clock_settime (rustix), a slew through
//! adjtime(3), which neither rustix nor nix covers.

use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::time::{clock_settime, ClockId, Timespec};

/// Sets the clock `offset` seconds from where it is now.
pub fn step(offset: f64) -> io::Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| io::Error::other("the clock is before 1970"))?;
    let target = Duration::try_from_secs_f64(now.as_secs_f64() + offset)
        .map_err(|_| io::Error::other(format!("{offset} s from now is before 1970")))?;
    let ts = Timespec {
        tv_sec: i64::try_from(target.as_secs()).map_err(io::Error::other)?,
        tv_nsec: i64::from(target.subsec_nanos()),
    };
    clock_settime(ClockId::Realtime, ts).map_err(io::Error::from)
}

/// Has the kernel run the clock slightly fast or slow (0.05%, adjtime's rate) until it has
/// moved `offset` seconds further; replaces any slew still under way.
pub fn slew(offset: f64) -> io::Result<()> {
    // Bounded to what the discipline slews (well under a second); the cast saturates.
    #[allow(clippy::cast_possible_truncation)]
    let micros = (offset.clamp(-1.0, 1.0) * 1e6).round() as i64;
    let delta = libc::timeval {
        tv_sec: micros.div_euclid(1_000_000),
        tv_usec: micros.rem_euclid(1_000_000),
    };
    // SAFETY: `delta` is a valid timeval for the call's duration; the old-delta pointer
    // may be null (adjtime(3)).
    let r = unsafe { libc::adjtime(&delta, std::ptr::null_mut()) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
