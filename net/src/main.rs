//! `berth-net`: a service of init that keeps the host's ethernet links configured: the
//! static config the agent writes (`/run/berth/network.json`, followed with inotify), a
//! DHCPv4 lease on every other link (see the library). Ready (sd_notify) once every link
//! present at start is configured, or after `BOOT_WAIT`; releases its leases on SIGTERM.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_net::apply::Resolvers;
use berth_net::config::{
    LinkConfig, NetworkConfig, AGENT_LOCAL_DONE, AGENT_LOCAL_WAIT, CONFIG_PATH,
};
use berth_net::dhcp::{Action, Client, Destination};
use berth_net::links::Link;
use berth_net::timesync::{self, Servers};
use berth_net::{apply, links, notify, say, socket, BOOT_WAIT};
use berth_netlink::LinkEvents;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// Links come and go as the kernel announces them (RTNLGRP_LINK); sysfs is looked at
/// again this often besides, and every 2 s when the announcements cannot be heard.
const SCAN_EVERY: Duration = Duration::from_secs(30);
const SCAN_EVERY_UNHEARD: Duration = Duration::from_secs(2);
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// What each link has (addresses, leases with their hostname and time servers), for the
/// agent and operators.
const STATE_PATH: &str = "/run/berth/network-state.json";

struct Managed {
    link: Link,
    socket: UdpSocket,
    /// The DHCPv4 client, unless the static config turns DHCP off for this link.
    client: Option<Client>,
    /// The static config entry applied to this link, if one matches it.
    entry: Option<LinkConfig>,
    present_at_start: bool,
}

impl Managed {
    /// Configured enough for the boot to go on: a static address, a lease, or nothing
    /// asked for (DHCP off and no address: the entry wants the link up and bare).
    fn configured(&self) -> bool {
        let static_addresses = self.entry.as_ref().is_some_and(|e| !e.addresses.is_empty());
        match &self.client {
            Some(c) => static_addresses || c.lease().is_some(),
            None => true,
        }
    }
}

struct Net {
    managed: BTreeMap<String, Managed>,
    config: NetworkConfig,
    /// The cloud's own time servers (from DMI), after the configured and leased ones.
    cloud_ntp: Vec<String>,
    time: Arc<Servers>,
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
    let config_path = Path::new(CONFIG_PATH);
    let watch = watch_config(config_path)?;
    wait_for_agent();
    let start = Instant::now();
    let time = Arc::new(Servers::default());
    timesync::spawn(time.clone());
    let mut net = Net {
        managed: BTreeMap::new(),
        config: read_config(config_path).unwrap_or_default(),
        cloud_ntp: timesync::cloud_servers(Path::new("/sys/class/dmi/id")),
        time,
    };
    // Listening before the first look, so no link slips in between.
    let mut events = match LinkEvents::open() {
        Ok(e) => Some(e),
        Err(e) => {
            say(&format!(
                "link announcements: {e}; looking at sysfs every 2 s instead"
            ));
            None
        }
    };
    let scan_every = if events.is_some() {
        SCAN_EVERY
    } else {
        SCAN_EVERY_UNHEARD
    };
    scan(&mut net, true);
    after_change(&net);
    let mut next_scan = start + scan_every;
    let mut ready = false;
    let mut links_announced = false;
    loop {
        let now = Instant::now();
        if now >= next_scan || links_announced {
            if scan(&mut net, false) {
                after_change(&net);
            }
            next_scan = now + scan_every;
        }
        if !ready {
            let waiting: Vec<&str> = net
                .managed
                .values()
                .filter(|m| m.present_at_start && !m.configured())
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
        let deadline = net
            .managed
            .values()
            .filter_map(|m| m.client.as_ref().map(Client::deadline))
            .chain([next_scan])
            .chain((!ready).then_some(start + BOOT_WAIT))
            .min()
            .unwrap_or(next_scan);
        let readable = wait(&signals, &watch, events.as_ref(), &net.managed, deadline);
        links_announced = readable.announced && events.as_mut().is_some_and(LinkEvents::drain);
        if readable.signal {
            say("releasing the leases");
            for (name, m) in net.managed.iter_mut() {
                if let Some(client) = m.client.as_mut() {
                    let actions = client.release(Instant::now());
                    handle(name, &m.socket, actions);
                }
            }
            write_resolv(&net);
            return Ok(());
        }
        let mut changed = false;
        if readable.config && config_changed(&watch) {
            changed |= reload(&mut net, config_path);
        }
        let now = Instant::now();
        for (name, m) in net.managed.iter_mut() {
            let mut actions = Vec::new();
            let Some(client) = m.client.as_mut() else {
                continue;
            };
            if readable.links.contains(name) {
                let mut buf = [0u8; 1500];
                while let Ok((n, _)) = m.socket.recv_from(&mut buf) {
                    actions.extend(client.on_packet(&buf[..n], now));
                }
            }
            actions.extend(client.on_timeout(now));
            changed |= handle(name, &m.socket, actions);
        }
        if changed {
            after_change(&net);
        }
    }
}

fn after_change(net: &Net) {
    write_resolv(net);
    write_state(net);
    net.time.set(time_servers(net));
}

/// Time servers in order of trust: the static config's, each lease's (option 42), the
/// cloud's own.
fn time_servers(net: &Net) -> Vec<String> {
    let leased = net
        .managed
        .values()
        .filter_map(|m| m.client.as_ref().and_then(Client::lease))
        .flat_map(|l| l.ntp.iter().map(|a| a.to_string()));
    let mut out: Vec<String> = Vec::new();
    for s in net
        .config
        .ntp
        .iter()
        .cloned()
        .chain(leased)
        .chain(net.cloud_ntp.iter().cloned())
    {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// Waits (boundedly) for the agent to have read its local datasources, so a link their
/// settings make static never asks DHCP first; without an agent, the wait runs out.
fn wait_for_agent() {
    let marker = Path::new(AGENT_LOCAL_DONE);
    let deadline = Instant::now() + AGENT_LOCAL_WAIT;
    while !marker.exists() {
        if Instant::now() >= deadline {
            say(&format!(
                "the agent has not read its datasources after {} s; going on",
                AGENT_LOCAL_WAIT.as_secs()
            ));
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The static config at `path`: none when there is no file; an error (said, and the
/// caller keeps what it had) when it does not parse.
fn read_config(path: &Path) -> Option<NetworkConfig> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(Default::default()),
        Err(e) => {
            say(&format!("{}: {e}", path.display()));
            return None;
        }
    };
    match NetworkConfig::from_json(&text) {
        Ok(c) => {
            say(&format!(
                "static config from {} ({}): {} link entries",
                path.display(),
                if c.source.is_empty() {
                    "no source named"
                } else {
                    &c.source
                },
                c.links.len()
            ));
            Some(c)
        }
        Err(e) => {
            say(&format!(
                "{}: {e}; keeping the config as it was",
                path.display()
            ));
            None
        }
    }
}

/// Reads the config again and moves each link to what it now says; true when
/// something changed.
fn reload(net: &mut Net, path: &Path) -> bool {
    let Some(config) = read_config(path) else {
        return false;
    };
    if config == net.config {
        return false;
    }
    net.config = config;
    for (name, m) in net.managed.iter_mut() {
        configure(name, m, &net.config);
    }
    true
}

/// Brings a link to what the config says for it: its static entry (or none), and a DHCP
/// client when the entry asks for one or there is no entry.
fn configure(name: &str, m: &mut Managed, config: &NetworkConfig) {
    let wanted = config.for_link(&m.link).cloned();
    if wanted == m.entry && (m.client.is_some() || m.entry.is_some()) {
        return;
    }
    if let Some(old) = m.entry.take() {
        if let Err(e) = apply::unapply_static(name, &old) {
            say(&format!("{name}: removing the old static addresses: {e}"));
        }
    }
    let dhcp = wanted.as_ref().is_none_or(|e| e.dhcp4);
    match (&mut m.client, dhcp) {
        (None, true) => {
            say(&format!("{name}: asking for a lease"));
            m.client = Some(Client::new(m.link.mac, xid(), Instant::now()));
        }
        (Some(client), false) => {
            let actions = client.release(Instant::now());
            handle(name, &m.socket, actions);
            m.client = None;
        }
        _ => {}
    }
    if let Some(entry) = &wanted {
        if entry.dhcp6 {
            say(&format!(
                "{name}: DHCPv6 asked for: no DHCPv6 client, SLAAC addresses only"
            ));
        }
        let addresses: Vec<String> = entry.addresses.iter().map(|a| a.to_string()).collect();
        match apply::static_link(name, entry) {
            Ok(()) => say(&format!(
                "{name}: static config for {}: addresses [{}], {} routes, mtu {}, dhcp4 {}",
                entry.matches,
                addresses.join(", "),
                entry.routes.len(),
                entry.mtu.map_or("-".into(), |m| m.to_string()),
                if entry.dhcp4 { "on" } else { "off" },
            )),
            Err(e) => say(&format!("{name}: applying the static config: {e}")),
        }
    }
    m.entry = wanted;
}

/// Carries out a client's actions; true when a lease came or went.
fn handle(name: &str, udp: &UdpSocket, actions: Vec<Action>) -> bool {
    let mut changed = false;
    for a in actions {
        match a {
            Action::Send(bytes, dest) => {
                let to = match dest {
                    Destination::Broadcast => Ipv4Addr::BROADCAST,
                    Destination::Server(s) => s,
                };
                if let Err(e) = udp.send_to(&bytes, SocketAddrV4::new(to, socket::SERVER_PORT)) {
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

/// resolv.conf from the static config (the host's resolvers, then each link entry's)
/// and every lease.
fn write_resolv(net: &Net) {
    let mut sources = vec![Resolvers {
        servers: net.config.nameservers.clone(),
        search: net.config.search.clone(),
    }];
    for m in net.managed.values() {
        if let Some(e) = &m.entry {
            sources.push(Resolvers {
                servers: e.nameservers.clone(),
                search: e.search.clone(),
            });
        }
        if let Some(lease) = m.client.as_ref().and_then(Client::lease) {
            sources.push(lease.into());
        }
    }
    if sources.iter().all(|s| s.servers.is_empty()) {
        return; // nothing to say: keep what is there (the last good one)
    }
    if let Err(e) = apply::write_resolv_conf(Path::new(RESOLV_CONF), &apply::resolv_conf(&sources))
    {
        say(&format!("resolv.conf: {e}"));
    }
}

/// What each link has, as JSON at [`STATE_PATH`]: the agent takes the hostname a lease
/// offers (option 12) when the user-data names none, and the time servers.
fn write_state(net: &Net) {
    let links: Vec<serde_json::Value> = net
        .managed
        .values()
        .map(|m| {
            let lease = m.client.as_ref().and_then(Client::lease).map(|l| {
                serde_json::json!({
                    "address": format!("{}/{}", l.address, l.prefix),
                    "server": l.server,
                    "routers": l.routers,
                    "dns": l.dns,
                    "domain": l.domain,
                    "hostname": l.hostname,
                    "ntp": l.ntp,
                    "mtu": l.mtu,
                    "lease_seconds": l.lease_time.as_secs(),
                })
            });
            serde_json::json!({
                "name": m.link.name,
                "mac": berth_net::config::Mac(m.link.mac).to_string(),
                "dhcp4": m.client.is_some(),
                "static": m.entry,
                "lease": lease,
            })
        })
        .collect();
    let text = serde_json::json!({ "links": links }).to_string();
    if let Err(e) = berth_persist::write_file(Path::new(STATE_PATH), text.as_bytes(), 0o644) {
        say(&e.to_string());
    }
}

/// Picks up new ethernet links (up, a socket, their config) and forgets vanished ones;
/// true when the set changed.
fn scan(net: &mut Net, first: bool) -> bool {
    let found = links::ethernet(Path::new("/sys/class/net"));
    let before = net.managed.len();
    net.managed.retain(|name, _| {
        let keep = found.iter().any(|l| &l.name == name);
        if !keep {
            say(&format!("{name}: gone"));
        }
        keep
    });
    let mut changed = net.managed.len() != before;
    for link in found {
        if net.managed.contains_key(&link.name) {
            continue;
        }
        match bring_up(&link) {
            Ok(socket) => {
                say(&format!("{}: up", link.name));
                let name = link.name.clone();
                let mut m = Managed {
                    link,
                    socket,
                    client: None,
                    entry: None,
                    present_at_start: first,
                };
                configure(&name, &mut m, &net.config);
                net.managed.insert(name, m);
                changed = true;
            }
            Err(e) => say(&format!("{}: {e}", link.name)),
        }
    }
    changed
}

/// An inotify watch on the config's directory (the agent replaces the file by a rename,
/// and may write it before or after we start).
fn watch_config(path: &Path) -> Result<Inotify, String> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
        .map_err(|e| format!("inotify: {e}"))?;
    inotify
        .add_watch(
            dir,
            AddWatchFlags::IN_CLOSE_WRITE
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_DELETE
                | AddWatchFlags::IN_MOVED_FROM,
        )
        .map_err(|e| format!("watching {}: {e}", dir.display()))?;
    Ok(inotify)
}

/// Drains the watch; true when one of the events was about the config file.
fn config_changed(watch: &Inotify) -> bool {
    let file = Path::new(CONFIG_PATH).file_name();
    let mut hit = false;
    while let Ok(events) = watch.read_events() {
        if events.is_empty() {
            break;
        }
        hit |= events.iter().any(|e| e.name.as_deref() == file);
    }
    hit
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
    config: bool,
    announced: bool,
    links: Vec<String>,
}

fn wait(
    signals: &SignalFd,
    watch: &Inotify,
    events: Option<&LinkEvents>,
    managed: &BTreeMap<String, Managed>,
    deadline: Instant,
) -> Readable {
    use rustix::event::{PollFd, PollFlags};
    let timeout = deadline.saturating_duration_since(Instant::now());
    let mut fds = vec![
        PollFd::new(signals, PollFlags::IN),
        PollFd::new(watch, PollFlags::IN),
    ];
    // Without announcements, an fd that never becomes readable keeps the indices.
    match events {
        Some(e) => fds.push(PollFd::new(e, PollFlags::IN)),
        None => fds.push(PollFd::new(watch, PollFlags::empty())),
    }
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
        config: !fds[1].revents().is_empty(),
        announced: events.is_some() && !fds[2].revents().is_empty(),
        links: names
            .iter()
            .enumerate()
            .filter(|(i, _)| !fds[i + 3].revents().is_empty())
            .map(|(_, n)| (*n).clone())
            .collect(),
    }
}
