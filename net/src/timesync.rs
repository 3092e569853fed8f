//! The time-sync thread: SNTP against the servers it is given (the static config's,
//! DHCP option 42's, the cloud's own), the best of their answers turned into a step or
//! a slew by the [`Discipline`]. TLS to registries fails on a wrong clock, so this runs
//! from the first lease on.

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::platform::{self, Platform};
use crate::sntp::{self, Adjust, Discipline, Sample};
use crate::{clock, say};

/// At most this many servers are asked each poll.
const MAX_SERVERS: usize = 4;
const ANSWER_WAIT: Duration = Duration::from_secs(2);

/// EC2's time service on the link-local address every instance reaches (Amazon Time
/// Sync Service), and GCE's metadata server, which answers NTP.
pub const EC2_NTP: &str = "169.254.169.123";
pub const GCE_NTP: &str = "metadata.google.internal";

/// The time servers of the cloud `dmi` (normally /sys/class/dmi/id) says this is.
pub fn cloud_servers(dmi: &Path) -> Vec<String> {
    match platform::detect(dmi) {
        Platform::Ec2 => vec![EC2_NTP.into()],
        Platform::Gce => vec![GCE_NTP.into()],
        Platform::OpenStack | Platform::Other => vec![],
    }
}

/// The servers the thread asks, replaced by the network loop as they change.
#[derive(Default)]
pub struct Servers {
    list: Mutex<Vec<String>>,
    changed: Condvar,
}

impl Servers {
    pub fn set(&self, servers: Vec<String>) {
        let Ok(mut list) = self.list.lock() else {
            return;
        };
        if *list != servers {
            say(&format!("time servers: {}", shown(&servers)));
            *list = servers;
            self.changed.notify_all();
        }
    }

    fn get(&self) -> Vec<String> {
        self.list.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Sleeps `d`, or less when the list changes.
    fn sleep(&self, d: Duration) {
        let Ok(list) = self.list.lock() else {
            std::thread::sleep(d);
            return;
        };
        let before = list.clone();
        let _ = self.changed.wait_timeout_while(list, d, |l| *l == before);
    }
}

fn shown(servers: &[String]) -> String {
    if servers.is_empty() {
        "none".into()
    } else {
        servers.join(", ")
    }
}

pub fn spawn(servers: Arc<Servers>) {
    let started = std::thread::Builder::new()
        .name("timesync".into())
        .spawn(move || run(&servers));
    if let Err(e) = started {
        say(&format!("time sync: no thread: {e}"));
    }
}

fn run(servers: &Servers) {
    let mut discipline = Discipline::default();
    let mut poll = sntp::MIN_POLL;
    let mut retry = sntp::FIRST_RETRY;
    loop {
        let list = servers.get();
        if list.is_empty() {
            servers.sleep(sntp::MAX_POLL);
            continue;
        }
        match best_sample(&list) {
            Some((server, sample)) => {
                let adjust = discipline.decide(sample.offset);
                carry_out(&adjust, &server, &sample);
                // Poll less often while the clock holds; from the minimum after a step.
                poll = match adjust {
                    Adjust::Slew(_) => (poll * 2).min(sntp::MAX_POLL),
                    _ => sntp::MIN_POLL,
                };
                retry = sntp::FIRST_RETRY;
                servers.sleep(poll);
            }
            None => {
                servers.sleep(retry);
                retry = (retry * 2).min(sntp::MIN_POLL);
            }
        }
    }
}

fn carry_out(adjust: &Adjust, server: &str, s: &Sample) {
    let from = format!(
        "{server}, stratum {}, round trip {:.1} ms",
        s.stratum,
        s.delay * 1e3
    );
    match adjust {
        Adjust::Step(offset) => match clock::step(*offset) {
            Ok(()) => say(&format!("clock stepped {offset:+.3} s ({from})")),
            Err(e) => say(&format!("stepping the clock {offset:+.3} s: {e}")),
        },
        Adjust::Slew(offset) => match clock::slew(*offset) {
            Ok(()) if offset.abs() >= 0.01 => {
                say(&format!("clock slewing {:+.1} ms ({from})", offset * 1e3))
            }
            Ok(()) => {}
            Err(e) => say(&format!("slewing the clock {offset:+.3} s: {e}")),
        },
        Adjust::Hold(why) => say(&format!("clock left alone: {why} ({from})")),
    }
}

/// Asks each server (up to [`MAX_SERVERS`]) and keeps the answer with the shortest round
/// trip; each failure is said.
fn best_sample(servers: &[String]) -> Option<(String, Sample)> {
    let mut best: Option<(String, Sample)> = None;
    for server in servers.iter().take(MAX_SERVERS) {
        match ask(server) {
            Ok(s) if best.as_ref().is_none_or(|(_, b)| s.delay < b.delay) => {
                best = Some((server.clone(), s));
            }
            Ok(_) => {}
            Err(e) => say(&format!("time server {server}: {e}")),
        }
    }
    best
}

fn ask(server: &str) -> Result<Sample, String> {
    let address: SocketAddr = (server, sntp::PORT)
        .to_socket_addrs()
        .map_err(|e| format!("resolving: {e}"))?
        .next()
        .ok_or("resolves to no address")?;
    let local: SocketAddr = if address.is_ipv4() {
        "0.0.0.0:0".parse().map_err(|_| "address")?
    } else {
        "[::]:0".parse().map_err(|_| "address")?
    };
    let socket = UdpSocket::bind(local).map_err(|e| e.to_string())?;
    socket.connect(address).map_err(|e| e.to_string())?;
    let sent = sntp::to_ntp(SystemTime::now());
    socket
        .send(&sntp::request(sent))
        .map_err(|e| format!("sending: {e}"))?;
    let deadline = Instant::now() + ANSWER_WAIT;
    let mut buf = [0u8; 128];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no answer in {} s", ANSWER_WAIT.as_secs()));
        }
        socket
            .set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(e) => return Err(e.to_string()),
        };
        let received = sntp::to_ntp(SystemTime::now());
        match sntp::parse_reply(&buf[..n], sent, received) {
            // A late answer to an earlier request: wait for ours.
            Err(sntp::SntpError::WrongOrigin) => continue,
            other => return other.map_err(|e| e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clouds_time_servers_from_dmi() {
        let t = tempfile::tempdir().unwrap();
        let dmi = |vendor: &str| {
            std::fs::write(t.path().join("sys_vendor"), format!("{vendor}\n")).unwrap();
            cloud_servers(t.path())
        };
        assert_eq!(dmi("Amazon EC2"), [EC2_NTP]);
        assert_eq!(dmi("Google"), [GCE_NTP]);
        assert!(dmi("QEMU").is_empty());
    }
}
