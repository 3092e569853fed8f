//! The hardware watchdog (or the kernel's softdog where the machine has none): armed
//! once stage 2 starts and fed by PID 1's loop, so a machine whose init stops turning
//! (a hang in the kernel or in init) resets on its own. On a trial boot a reset costs
//! the slot a try, like a panic, so a hung new version rolls back too.
//!
//! Linux's watchdog API (Documentation/watchdog/watchdog-api.rst): opening /dev/watchdog
//! arms it, any write feeds it, and writing `V` before closing disarms it (the "magic
//! close"), which the shutdown does before its final steps. The timeout is the driver's
//! default (30 s for i6300esb, 60 s for softdog); the loop feeds it every few seconds.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::modules::Loader;
use crate::{info, warn};

const DEVICE: &str = "/dev/watchdog";
/// Feeding interval: well inside the shortest default timeout.
pub const FEED_EVERY: Duration = Duration::from_secs(5);

pub struct Watchdog {
    file: File,
    next: Instant,
}

impl Watchdog {
    /// Arms the watchdog; loads softdog first when no driver made /dev/watchdog.
    pub fn arm(loader: Option<&mut Loader>) -> Option<Watchdog> {
        if !Path::new(DEVICE).exists() {
            match loader.map(|l| l.load("softdog")) {
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    warn!("watchdog: no hardware watchdog, and loading softdog: {e}; none");
                    return None;
                }
                None => return None,
            }
        }
        let file = File::options()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(DEVICE);
        match file {
            Ok(file) => {
                info!("watchdog: {} armed ({})", DEVICE, identity());
                Some(Watchdog {
                    file,
                    next: Instant::now(),
                })
            }
            Err(e) => {
                warn!("watchdog: opening {DEVICE}: {e}; none");
                None
            }
        }
    }

    /// Feeds it when due; returns when it is next due.
    pub fn feed(&mut self, now: Instant) -> Instant {
        if now >= self.next {
            if let Err(e) = self.file.write_all(b"\0") {
                warn!("watchdog: feeding: {e}");
            }
            self.next = now + FEED_EVERY;
        }
        self.next
    }

    /// The magic close: the machine is going down on purpose.
    pub fn disarm(mut self) {
        if let Err(e) = self.file.write_all(b"V") {
            warn!("watchdog: disarming: {e}");
        }
    }
}

/// The driver's name, from sysfs.
fn identity() -> String {
    std::fs::read_to_string("/sys/class/watchdog/watchdog0/identity")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown driver".into())
}
