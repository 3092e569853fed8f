//! SNTP (RFC 4330) without I/O: the client's request, the server's reply checked and
//! turned into a clock offset, and the discipline that decides between stepping and
//! slewing. Packet layout and the offset/delay formulas are RFC 5905's (7.3, 8): four
//! timestamps T1 (we sent), T2 (server received), T3 (server sent), T4 (we received);
//! offset = ((T2 - T1) + (T3 - T4)) / 2, delay = (T4 - T1) - (T3 - T2).
//!
//! Hand-written: the whole protocol is one 48-byte packet each way, and the crates for it
//! (sntpc, rsntp) bring their own socket and runtime choices.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const PORT: u16 = 123;
pub const PACKET: usize = 48;

/// Seconds from NTP's epoch (1900) to Unix's (1970).
const NTP_TO_UNIX: u64 = 2_208_988_800;
/// NTP era 1 starts 2036-02-07: a timestamp whose top bit is clear is in era 1 (RFC 4330
/// section 3), good until 2104.
const ERA: u64 = 1 << 32;

/// An offset below this is slewed, above it stepped (ntpd's and chrony's default 128 ms).
pub const STEP_THRESHOLD: f64 = 0.128;
/// After the first synchronisation, a backward step larger than this is taken only when
/// this many polls in a row agree on it (each logged): a server that says the clock is
/// far ahead is more likely wrong than the clock that was right a poll ago.
pub const BACKWARD_MARGIN: f64 = 300.0;
pub const BACKWARD_VOTES: u32 = 3;
/// A sample whose round trip took longer than this says little about the offset.
pub const MAX_DELAY: f64 = 2.0;

/// A time as NTP writes it: seconds since 1900 in the high 32 bits, the fraction below.
pub fn to_ntp(t: SystemTime) -> u64 {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = (since.as_secs() + NTP_TO_UNIX) % ERA;
    let frac = (u64::from(since.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// Seconds since the Unix epoch (with fraction) of an NTP timestamp.
pub fn ntp_to_unix(ts: u64) -> f64 {
    let mut secs = ts >> 32;
    if secs & 0x8000_0000 == 0 {
        secs += ERA;
    }
    let frac = (ts & 0xffff_ffff) as f64 / ERA as f64;
    (secs as f64 - NTP_TO_UNIX as f64) + frac
}

/// A client request (version 4, mode 3) whose transmit timestamp is `sent`; the server
/// copies it into its reply's origin field, which is how the reply is matched.
pub fn request(sent: u64) -> [u8; PACKET] {
    let mut p = [0u8; PACKET];
    p[0] = (4 << 3) | 3;
    p[40..48].copy_from_slice(&sent.to_be_bytes());
    p
}

/// What a good reply says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Seconds to add to our clock.
    pub offset: f64,
    /// Round-trip seconds.
    pub delay: f64,
    pub stratum: u8,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SntpError {
    #[error("{0} bytes is not an NTP packet")]
    Short(usize),
    #[error("mode {0} is not a server's answer")]
    NotServer(u8),
    #[error("the server is not synchronised itself")]
    Unsynchronized,
    #[error("kiss-of-death {0:?} (the server wants us to stop or slow down)")]
    KissOfDeath(String),
    #[error("stratum {0} is not a valid server stratum")]
    Stratum(u8),
    #[error("the reply is not to our request (origin timestamp differs)")]
    WrongOrigin,
    #[error("round trip {0:.3} s is too long to trust")]
    TooSlow(f64),
}

/// Checks a reply to the request sent at `sent` (T1), received at `received` (T4).
pub fn parse_reply(reply: &[u8], sent: u64, received: u64) -> Result<Sample, SntpError> {
    if reply.len() < PACKET {
        return Err(SntpError::Short(reply.len()));
    }
    let leap = reply[0] >> 6;
    let mode = reply[0] & 7;
    let stratum = reply[1];
    let ts = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&reply[at..at + 8]);
        u64::from_be_bytes(b)
    };
    if mode != 4 {
        return Err(SntpError::NotServer(mode));
    }
    if stratum == 0 {
        return Err(SntpError::KissOfDeath(
            String::from_utf8_lossy(&reply[12..16]).into_owned(),
        ));
    }
    if stratum > 15 {
        return Err(SntpError::Stratum(stratum));
    }
    if leap == 3 || ts(40) == 0 {
        return Err(SntpError::Unsynchronized);
    }
    if ts(24) != sent {
        return Err(SntpError::WrongOrigin);
    }
    let (t1, t2, t3, t4) = (
        ntp_to_unix(sent),
        ntp_to_unix(ts(32)),
        ntp_to_unix(ts(40)),
        ntp_to_unix(received),
    );
    let delay = (t4 - t1) - (t3 - t2);
    if delay > MAX_DELAY {
        return Err(SntpError::TooSlow(delay));
    }
    Ok(Sample {
        offset: ((t2 - t1) + (t3 - t4)) / 2.0,
        delay: delay.max(0.0),
        stratum,
    })
}

/// What to do with the clock.
#[derive(Debug, Clone, PartialEq)]
pub enum Adjust {
    /// Set it, `offset` seconds from where it is.
    Step(f64),
    /// Let the kernel run it a little fast or slow until it is `offset` further.
    Slew(f64),
    /// Leave it, and say why.
    Hold(String),
}

/// The step/slew policy over successive samples.
#[derive(Debug, Default)]
pub struct Discipline {
    synchronised: bool,
    backward_votes: u32,
}

impl Discipline {
    pub fn decide(&mut self, offset: f64) -> Adjust {
        let far_back = offset < -BACKWARD_MARGIN;
        if !far_back {
            self.backward_votes = 0;
        }
        let first = !self.synchronised;
        self.synchronised = true;
        if first {
            // At boot the clock is whatever the RTC said: any step, either way.
            return if offset.abs() > STEP_THRESHOLD {
                Adjust::Step(offset)
            } else {
                Adjust::Slew(offset)
            };
        }
        if far_back {
            self.backward_votes += 1;
            if self.backward_votes < BACKWARD_VOTES {
                return Adjust::Hold(format!(
                    "the server puts the clock {:.0} s back; not stepping back that far \
                     unless {BACKWARD_VOTES} polls in a row say so ({} so far)",
                    -offset, self.backward_votes
                ));
            }
            self.backward_votes = 0;
        }
        if offset.abs() > STEP_THRESHOLD {
            Adjust::Step(offset)
        } else {
            Adjust::Slew(offset)
        }
    }
}

/// Poll intervals: RFC 4330 section 10 asks clients not to poll more often than every
/// 64 s; once the clock holds, every 1024 s.
pub const MIN_POLL: Duration = Duration::from_secs(64);
pub const MAX_POLL: Duration = Duration::from_secs(1024);
/// No answer: ask again soon at first, backing off to the minimum poll.
pub const FIRST_RETRY: Duration = Duration::from_secs(4);

#[cfg(test)]
mod tests {
    use super::*;

    /// A server's reply to `req`, its clock `ahead` seconds ahead of ours, the network
    /// taking `one_way` seconds each way, answered at our time `at`.
    fn reply(req: &[u8; PACKET], at: f64, ahead: f64, one_way: f64) -> ([u8; PACKET], u64) {
        let ntp = |unix: f64| to_ntp(UNIX_EPOCH + Duration::from_secs_f64(unix));
        let mut r = [0u8; PACKET];
        r[0] = (4 << 3) | 4;
        r[1] = 2;
        r[24..32].copy_from_slice(&req[40..48]);
        r[32..40].copy_from_slice(&ntp(at + one_way + ahead).to_be_bytes());
        r[40..48].copy_from_slice(&ntp(at + one_way + 0.001 + ahead).to_be_bytes());
        (r, ntp(at + 2.0 * one_way + 0.001))
    }

    #[test]
    fn offset_and_delay_from_the_four_timestamps() {
        let at = 1_795_000_000.25;
        let sent = to_ntp(UNIX_EPOCH + Duration::from_secs_f64(at));
        let req = request(sent);
        assert_eq!(req[0], 0x23);
        let (r, received) = reply(&req, at, 3600.5, 0.02);
        let s = parse_reply(&r, sent, received).unwrap();
        assert!((s.offset - 3600.5).abs() < 1e-3, "{s:?}");
        assert!((s.delay - 0.04).abs() < 1e-3, "{s:?}");
        let (r, received) = reply(&req, at, -7200.0, 0.01);
        let s = parse_reply(&r, sent, received).unwrap();
        assert!((s.offset + 7200.0).abs() < 1e-3, "{s:?}");
    }

    #[test]
    fn bad_replies_are_refused() {
        let sent = to_ntp(SystemTime::now());
        let req = request(sent);
        let (good, received) = reply(&req, 1_795_000_000.0, 0.0, 0.01);
        let with = |f: &dyn Fn(&mut [u8; PACKET])| {
            let mut r = good;
            f(&mut r);
            parse_reply(&r, sent, received)
        };
        assert_eq!(
            parse_reply(&good[..47], sent, received),
            Err(SntpError::Short(47))
        );
        assert_eq!(with(&|r| r[0] = (4 << 3) | 3), Err(SntpError::NotServer(3)));
        assert_eq!(with(&|r| r[0] |= 0xc0), Err(SntpError::Unsynchronized));
        assert_eq!(
            with(&|r| {
                r[1] = 0;
                r[12..16].copy_from_slice(b"RATE");
            }),
            Err(SntpError::KissOfDeath("RATE".into()))
        );
        assert_eq!(with(&|r| r[1] = 16), Err(SntpError::Stratum(16)));
        assert_eq!(with(&|r| r[31] ^= 1), Err(SntpError::WrongOrigin));
        assert_eq!(with(&|r| r[40..48].fill(0)), Err(SntpError::Unsynchronized));
    }

    #[test]
    fn timestamps_across_the_2036_era() {
        let t = UNIX_EPOCH + Duration::from_secs(2_085_978_496 + 10); // 2036-02-07 + 10 s
        let ts = to_ntp(t);
        assert_eq!(ts >> 32, 10);
        assert!((ntp_to_unix(ts) - 2_085_978_506.0).abs() < 1e-6);
        let now = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert!((ntp_to_unix(to_ntp(now)) - 1_795_000_000.0).abs() < 1e-6);
    }

    #[test]
    fn stepping_and_slewing() {
        let mut d = Discipline::default();
        // The first sample sets the clock, however far back.
        assert_eq!(d.decide(-86_400.0), Adjust::Step(-86_400.0));
        assert_eq!(d.decide(0.05), Adjust::Slew(0.05));
        assert_eq!(d.decide(2.0), Adjust::Step(2.0));
        assert_eq!(d.decide(-1.0), Adjust::Step(-1.0));
        // Far back: held twice, stepped on the third agreeing poll.
        assert!(matches!(d.decide(-3600.0), Adjust::Hold(_)));
        assert!(matches!(d.decide(-3600.0), Adjust::Hold(_)));
        assert_eq!(d.decide(-3600.0), Adjust::Step(-3600.0));
        // A good sample in between resets the count.
        assert!(matches!(d.decide(-3600.0), Adjust::Hold(_)));
        assert_eq!(d.decide(0.01), Adjust::Slew(0.01));
        assert!(matches!(d.decide(-3600.0), Adjust::Hold(_)));
    }
}
