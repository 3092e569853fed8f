//! The restart policy: what becomes of a container whose init exited. Pure (no I/O, no
//! clock of its own): it is given the exit, the time, and the container's tally, and
//! answers when to start the container again, or why it stays down. The supervisor acts.
//!
//! The policies are docker's (`no`, `always`, `unless-stopped`, `on-failure[:N]`); the
//! backoff starts at 0.5 s and doubles per exit in a row up to 60 s, and starts over once
//! a run lasted 10 s.

use std::time::{Duration, Instant};

use crate::declaration::Restart;

/// The first restart's delay; it doubles per exit in a row.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(500);
/// The cap: what keeps a crash loop from starving the host.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A run at least this long was a good one: the backoff starts over.
pub const GOOD_RUN: Duration = Duration::from_secs(10);

/// What the policy remembers of a container between its exits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Exits in a row without a good run: the backoff's exponent.
    pub failures: u32,
    /// Restarts so far (kept across the daemon's own restarts): on-failure's limit
    /// counts these.
    pub restarts: u32,
}

/// One exit of a container's init.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Its exit code, or 128 + the signal that killed it.
    pub code: i32,
    /// When this run began.
    pub started: Instant,
    /// When it ended (now).
    pub now: Instant,
    /// An operator stopped it: it stays down, whatever the policy.
    pub by_operator: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start it again at this time.
    RestartAt(Instant),
    StayDown(Reason),
}

/// Why a container stays down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `restart = "no"`.
    Never,
    /// `on-failure`, and it exited 0.
    Succeeded,
    /// `on-failure:N`, and it was restarted N times already.
    LimitReached(u32),
    /// An operator stopped it.
    Stopped,
}

impl Tally {
    /// The container exited: restart it (when), or not (why). Counts the restart.
    pub fn on_exit(&mut self, policy: Restart, exit: Exit) -> Decision {
        if exit.by_operator {
            // Not a failure: an operator's stop leaves the tally alone.
            return Decision::StayDown(Reason::Stopped);
        }
        if exit.now.saturating_duration_since(exit.started) >= GOOD_RUN {
            self.failures = 0;
        }
        let again = match policy {
            Restart::No => Err(Reason::Never),
            Restart::Always | Restart::UnlessStopped => Ok(()),
            Restart::OnFailure(_) if exit.code == 0 => Err(Reason::Succeeded),
            Restart::OnFailure(Some(max)) if self.restarts >= max => Err(Reason::LimitReached(max)),
            Restart::OnFailure(_) => Ok(()),
        };
        match again {
            Ok(()) => {
                let delay = backoff(self.failures);
                self.failures = self.failures.saturating_add(1);
                self.restarts = self.restarts.saturating_add(1);
                Decision::RestartAt(exit.now + delay)
            }
            Err(reason) => Decision::StayDown(reason),
        }
    }

    /// A fresh start (an operator's start, a changed declaration): no backoff owed.
    pub fn reset_backoff(&mut self) {
        self.failures = 0;
    }
}

/// The delay before the restart that follows `failures` exits in a row.
pub fn backoff(failures: u32) -> Duration {
    // 2^7 × 0.5 s already passes the cap: a larger shift only risks overflow.
    BACKOFF_FIRST
        .saturating_mul(1 << failures.min(7))
        .min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_secs(1);

    /// A time far enough from the clock's start that runs can end at it.
    fn base() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    /// An exit with `code` after a run of `ran`, at `now`.
    fn exit(code: i32, now: Instant, ran: Duration) -> Exit {
        Exit {
            code,
            started: now - ran,
            now,
            by_operator: false,
        }
    }

    /// Exits quickly `n` times in a row, each at its restart time; the delays.
    fn crash_loop(policy: Restart, tally: &mut Tally, n: usize) -> Vec<Duration> {
        let mut now = base();
        let mut delays = Vec::new();
        for _ in 0..n {
            match tally.on_exit(policy, exit(1, now, SHORT)) {
                Decision::RestartAt(t) => {
                    delays.push(t - now);
                    now = t + SHORT;
                }
                d => panic!("expected a restart, got {d:?}"),
            }
        }
        delays
    }

    fn ms(list: &[u64]) -> Vec<Duration> {
        list.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn no_never_restarts() {
        let now = base();
        let mut t = Tally::default();
        for code in [0, 1, 137] {
            assert_eq!(
                t.on_exit(Restart::No, exit(code, now, SHORT)),
                Decision::StayDown(Reason::Never)
            );
        }
        assert_eq!(t, Tally::default());
    }

    #[test]
    fn always_restarts_after_any_exit_with_doubling_capped_backoff() {
        let mut t = Tally::default();
        let delays = crash_loop(Restart::Always, &mut t, 10);
        assert_eq!(
            delays,
            ms(&[500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000])
        );
        assert_eq!(t.restarts, 10);
        assert_eq!(t.failures, 10);
        // Exit 0 restarts too.
        let now = base();
        assert!(matches!(
            t.on_exit(Restart::Always, exit(0, now, SHORT)),
            Decision::RestartAt(_)
        ));
    }

    #[test]
    fn backoff_caps_and_never_overflows() {
        assert_eq!(backoff(0), BACKOFF_FIRST);
        assert_eq!(backoff(6), Duration::from_secs(32));
        assert_eq!(backoff(7), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
        let mut t = Tally {
            failures: u32::MAX,
            restarts: u32::MAX,
        };
        let now = base();
        assert_eq!(
            t.on_exit(Restart::Always, exit(1, now, SHORT)),
            Decision::RestartAt(now + BACKOFF_MAX)
        );
        assert_eq!(t.failures, u32::MAX);
    }

    #[test]
    fn a_good_run_resets_the_backoff_but_not_the_restart_count() {
        let mut t = Tally::default();
        crash_loop(Restart::Always, &mut t, 5);
        let now = base();
        // Just under the good run: the backoff keeps growing.
        assert_eq!(
            t.on_exit(
                Restart::Always,
                exit(1, now, GOOD_RUN - Duration::from_millis(1))
            ),
            Decision::RestartAt(now + Duration::from_secs(16))
        );
        // A run of exactly GOOD_RUN: back to the first delay.
        assert_eq!(
            t.on_exit(Restart::Always, exit(1, now, GOOD_RUN)),
            Decision::RestartAt(now + BACKOFF_FIRST)
        );
        assert_eq!(t.failures, 1);
        assert_eq!(t.restarts, 7);
    }

    #[test]
    fn unless_stopped_restarts_like_always_until_an_operator_stops_it() {
        let mut t = Tally::default();
        let delays = crash_loop(Restart::UnlessStopped, &mut t, 3);
        assert_eq!(delays, ms(&[500, 1000, 2000]));
        let now = base();
        let stop = Exit {
            by_operator: true,
            ..exit(143, now, SHORT)
        };
        assert_eq!(
            t.on_exit(Restart::UnlessStopped, stop),
            Decision::StayDown(Reason::Stopped)
        );
    }

    #[test]
    fn an_operators_stop_wins_over_always_and_leaves_the_tally() {
        let mut t = Tally {
            failures: 3,
            restarts: 5,
        };
        let now = base();
        for policy in [
            Restart::Always,
            Restart::UnlessStopped,
            Restart::OnFailure(None),
        ] {
            let stop = Exit {
                by_operator: true,
                ..exit(137, now, GOOD_RUN * 2)
            };
            assert_eq!(t.on_exit(policy, stop), Decision::StayDown(Reason::Stopped));
        }
        assert_eq!(
            t,
            Tally {
                failures: 3,
                restarts: 5
            }
        );
    }

    #[test]
    fn on_failure_restarts_only_after_a_failure() {
        let now = base();
        let mut t = Tally::default();
        assert_eq!(
            t.on_exit(Restart::OnFailure(None), exit(0, now, SHORT)),
            Decision::StayDown(Reason::Succeeded)
        );
        assert_eq!(t, Tally::default());
        // Killed by a signal (128 + n) is a failure.
        assert_eq!(
            t.on_exit(Restart::OnFailure(None), exit(137, now, SHORT)),
            Decision::RestartAt(now + BACKOFF_FIRST)
        );
        // Without a limit it goes on, with the same backoff as always.
        let delays = crash_loop(Restart::OnFailure(None), &mut t, 9);
        assert_eq!(delays[8], BACKOFF_MAX);
        assert_eq!(t.restarts, 10);
    }

    #[test]
    fn on_failure_stops_at_its_limit() {
        let mut t = Tally::default();
        let delays = crash_loop(Restart::OnFailure(Some(3)), &mut t, 3);
        assert_eq!(delays, ms(&[500, 1000, 2000]));
        let now = base();
        assert_eq!(
            t.on_exit(Restart::OnFailure(Some(3)), exit(1, now, SHORT)),
            Decision::StayDown(Reason::LimitReached(3))
        );
        // A good run resets the backoff, not the count: still at the limit.
        assert_eq!(
            t.on_exit(Restart::OnFailure(Some(3)), exit(1, now, GOOD_RUN)),
            Decision::StayDown(Reason::LimitReached(3))
        );
        assert_eq!(t.restarts, 3);
        // on-failure:0 never restarts.
        let mut zero = Tally::default();
        assert_eq!(
            zero.on_exit(Restart::OnFailure(Some(0)), exit(1, now, SHORT)),
            Decision::StayDown(Reason::LimitReached(0))
        );
    }

    #[test]
    fn a_fresh_start_resets_the_backoff() {
        let mut t = Tally::default();
        crash_loop(Restart::Always, &mut t, 4);
        t.reset_backoff();
        let now = base();
        assert_eq!(
            t.on_exit(Restart::Always, exit(1, now, SHORT)),
            Decision::RestartAt(now + BACKOFF_FIRST)
        );
        assert_eq!(t.restarts, 5);
    }
}
