//! `berth-net`: a service of init that keeps the host's ethernet links configured by
//! DHCPv4 (see the library). Ready (sd_notify) once every link present at start has a
//! lease, or after `BOOT_WAIT`; releases its leases on SIGTERM.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use berth_net::dhcp::{Action, Client, Destination};
use berth_net::links::Link;
use berth_net::{apply, links, socket, BOOT_WAIT};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// How often sysfs is looked at for links that appeared (hot-plug) or went.
const SCAN_EVERY: Duration = Duration::from_secs(2);
const RESOLV_CONF: &str = "/etc/resolv.conf";

struct Managed {
    link: Link,
    socket: UdpSocket,
    client: Client,
    present_at_start: bool,
}

fn say(msg: &str) {
    eprintln!("berth-net: {msg}");
}

/// A transaction ID per link: unpredictable enough that another host's answers are not
/// taken for ours (from the kernel's random pool).
fn xid() -> u32 {
    let mut b = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    u32::from_ne_bytes(b)
}

fn notify(text: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Ok(s) = std::os::unix::net::UnixDatagram::unbound() {
        let _ = s.send_to(text.as_bytes(), path);
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say(&e);
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.thread_block()
        .map_err(|e| format!("blocking signals: {e}"))?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| format!("signalfd: {e}"))?;
    let start = Instant::now();
    let mut managed: BTreeMap<String, Managed> = BTreeMap::new();
    scan(&mut managed, true);
    let mut next_scan = start + SCAN_EVERY;
    let mut ready = false;
    loop {
        let now = Instant::now();
        if now >= next_scan {
            scan(&mut managed, false);
            next_scan = now + SCAN_EVERY;
        }
        if !ready {
            let waiting: Vec<&str> = managed
                .values()
                .filter(|m| m.present_at_start && m.client.lease().is_none())
                .map(|m| m.link.name.as_str())
                .collect();
            if waiting.is_empty() || now >= start + BOOT_WAIT {
                if !waiting.is_empty() {
                    say(&format!(
                        "no lease yet on {} after {} s; going on (still asking)",
                        waiting.join(", "),
                        BOOT_WAIT.as_secs()
                    ));
                }
                notify("READY=1\nSTATUS=links configured\n");
                ready = true;
            }
        }
        let deadline = managed
            .values()
            .map(|m| m.client.deadline())
            .chain([next_scan])
            .chain((!ready).then_some(start + BOOT_WAIT))
            .min()
            .unwrap_or(next_scan);
        let readable = wait(&signals, &managed, deadline);
        if readable.signal {
            say("releasing the leases");
            let names: Vec<String> = managed.keys().cloned().collect();
            for name in names {
                if let Some(m) = managed.get_mut(&name) {
                    let actions = m.client.release(Instant::now());
                    handle(&name, m, actions);
                }
            }
            write_resolv(&managed);
            return Ok(());
        }
        let now = Instant::now();
        let mut changed = false;
        for (name, m) in managed.iter_mut() {
            let mut actions = Vec::new();
            if readable.links.contains(name) {
                let mut buf = [0u8; 1500];
                while let Ok((n, _)) = m.socket.recv_from(&mut buf) {
                    actions.extend(m.client.on_packet(&buf[..n], now));
                }
            }
            actions.extend(m.client.on_timeout(now));
            changed |= handle(name, m, actions);
        }
        if changed {
            write_resolv(&managed);
        }
    }
}

/// Carries out a client's actions; true when a lease came or went.
fn handle(name: &str, m: &mut Managed, actions: Vec<Action>) -> bool {
    let mut changed = false;
    for a in actions {
        match a {
            Action::Send(bytes, dest) => {
                let to = match dest {
                    Destination::Broadcast => Ipv4Addr::BROADCAST,
                    Destination::Server(s) => s,
                };
                if let Err(e) = m
                    .socket
                    .send_to(&bytes, SocketAddrV4::new(to, socket::SERVER_PORT))
                {
                    say(&format!("{name}: sending to {to}: {e}"));
                }
            }
            Action::Apply(lease) => {
                let via = lease
                    .routers
                    .first()
                    .map(|r| format!(" via {r}"))
                    .unwrap_or_default();
                match apply::lease(name, &lease) {
                    Ok(()) => say(&format!(
                        "{name}: {}/{}{via}, dns {:?}, mtu {}, lease {} s",
                        lease.address,
                        lease.prefix,
                        lease.dns,
                        lease.mtu.map_or("-".into(), |m| m.to_string()),
                        lease.lease_time.as_secs()
                    )),
                    Err(e) => say(&format!("{name}: applying the lease: {e}")),
                }
                changed = true;
            }
            Action::Drop(lease) => {
                if let Err(e) = apply::drop_lease(name, &lease) {
                    say(&format!("{name}: removing {}: {e}", lease.address));
                } else {
                    say(&format!("{name}: lease of {} ended", lease.address));
                }
                changed = true;
            }
        }
    }
    changed
}

fn write_resolv(managed: &BTreeMap<String, Managed>) {
    let leases: Vec<_> = managed.values().filter_map(|m| m.client.lease()).collect();
    if leases.iter().all(|l| l.dns.is_empty()) {
        return; // nothing to say: keep what is there (a static one, or the last good one)
    }
    if let Err(e) = apply::write_resolv_conf(
        Path::new(RESOLV_CONF),
        &apply::resolv_conf(leases.into_iter()),
    ) {
        say(&format!("resolv.conf: {e}"));
    }
}

/// Picks up new ethernet links (up, a socket, a client) and forgets vanished ones.
fn scan(managed: &mut BTreeMap<String, Managed>, first: bool) {
    let found = links::ethernet(Path::new("/sys/class/net"));
    managed.retain(|name, _| {
        let keep = found.iter().any(|l| &l.name == name);
        if !keep {
            say(&format!("{name}: gone"));
        }
        keep
    });
    for link in found {
        if managed.contains_key(&link.name) {
            continue;
        }
        match bring_up(&link) {
            Ok(socket) => {
                say(&format!("{}: up, asking for a lease", link.name));
                managed.insert(
                    link.name.clone(),
                    Managed {
                        client: Client::new(link.mac, xid(), Instant::now()),
                        link,
                        socket,
                        present_at_start: first,
                    },
                );
            }
            Err(e) => say(&format!("{}: {e}", link.name)),
        }
    }
}

fn bring_up(link: &Link) -> Result<UdpSocket, String> {
    let mut nl = berth_netlink::Netlink::open().map_err(|e| e.to_string())?;
    let index = nl.link_index(&link.name).map_err(|e| e.to_string())?;
    nl.set_up(index, None).map_err(|e| e.to_string())?;
    socket::open(&link.name)
}

#[derive(Default)]
struct Readable {
    signal: bool,
    links: Vec<String>,
}

fn wait(signals: &SignalFd, managed: &BTreeMap<String, Managed>, deadline: Instant) -> Readable {
    use rustix::event::{PollFd, PollFlags};
    let timeout = deadline.saturating_duration_since(Instant::now());
    let mut fds = vec![PollFd::new(signals, PollFlags::IN)];
    let names: Vec<&String> = managed.keys().collect();
    for m in managed.values() {
        fds.push(PollFd::from_borrowed_fd(m.socket.as_fd(), PollFlags::IN));
    }
    let ts = rustix::event::Timespec {
        tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    if rustix::event::poll(&mut fds, Some(&ts)).is_err() {
        return Readable::default();
    }
    Readable {
        signal: !fds[0].revents().is_empty(),
        links: names
            .iter()
            .enumerate()
            .filter(|(i, _)| !fds[i + 1].revents().is_empty())
            .map(|(_, n)| (*n).clone())
            .collect(),
    }
}
