//! A DHCPv4 client's state machine (RFC 2131), with no I/O: it is given packets and the
//! time, and answers with packets to send and leases to apply or drop. The wire format
//! is dhcproto's. Kept free of sockets so a scripted server can drive it in tests.
//!
//! INIT -> (DISCOVER) SELECTING -> (REQUEST) REQUESTING -> BOUND; at T1 RENEWING
//! (REQUEST unicast to the server), at T2 REBINDING (REQUEST broadcast), at expiry back
//! to INIT with the address dropped. A NAK restarts. Retransmissions back off 4 s, 8 s,
//! ... 64 s (RFC 2131 4.1), with up to a second of jitter left out (one client per link).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable};

/// What the client asks the server for (option 55).
const WANTED: &[OptionCode] = &[
    OptionCode::SubnetMask,
    OptionCode::Router,
    OptionCode::DomainNameServer,
    OptionCode::Hostname,
    OptionCode::DomainName,
    OptionCode::InterfaceMtu,
    OptionCode::NtpServers,
    OptionCode::DomainSearch,
    OptionCode::ClasslessStaticRoute,
];

const FIRST_RETRY: Duration = Duration::from_secs(4);
const MAX_RETRY: Duration = Duration::from_secs(64);

/// What a lease gives the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub server: Ipv4Addr,
    pub routers: Vec<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub hostname: Option<String>,
    pub mtu: Option<u16>,
    pub ntp: Vec<Ipv4Addr>,
    /// Option 121: (destination, prefix, gateway). When present, routers are ignored
    /// (RFC 3442).
    pub routes: Vec<(Ipv4Addr, u8, Ipv4Addr)>,
    pub lease_time: Duration,
    pub renew_after: Duration,
    pub rebind_after: Duration,
}

/// Where a packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Broadcast,
    Server(Ipv4Addr),
}

#[derive(Debug, PartialEq)]
pub enum Action {
    Send(Vec<u8>, Destination),
    /// Configure (or update) the link from this lease.
    Apply(Lease),
    /// The lease is gone (expired, refused): remove its address and routes.
    Drop(Lease),
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    Init,
    Selecting,
    Requesting { offer: Box<Lease> },
    Bound,
    Renewing,
    Rebinding,
}

pub struct Client {
    mac: [u8; 6],
    xid: u32,
    state: State,
    lease: Option<(Lease, Instant)>,
    /// When the current exchange started (the `secs` field) and the next resend.
    started: Instant,
    next: Instant,
    retry: Duration,
}

impl Client {
    pub fn new(mac: [u8; 6], xid: u32, now: Instant) -> Client {
        Client {
            mac,
            xid,
            state: State::Init,
            lease: None,
            started: now,
            next: now,
            retry: FIRST_RETRY,
        }
    }

    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref().map(|(l, _)| l)
    }

    /// When `on_timeout` wants to be called next.
    pub fn deadline(&self) -> Instant {
        self.next
    }

    fn message(&self, kind: MessageType, ciaddr: Ipv4Addr, now: Instant) -> Message {
        let mut m = Message::new_with_id(
            self.xid,
            ciaddr,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &self.mac,
        );
        m.set_opcode(Opcode::BootRequest);
        let secs = u16::try_from(now.saturating_duration_since(self.started).as_secs())
            .unwrap_or(u16::MAX);
        m.set_secs(secs);
        if ciaddr.is_unspecified() {
            // No address yet: the answer must be broadcast to reach us.
            m.set_flags(Flags::default().set_broadcast());
        }
        let opts = m.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        let mut id = vec![1u8]; // hardware type ethernet, then the MAC (RFC 2132 9.14)
        id.extend_from_slice(&self.mac);
        opts.insert(DhcpOption::ClientIdentifier(id));
        opts.insert(DhcpOption::ParameterRequestList(WANTED.to_vec()));
        m
    }

    fn encode(m: &Message) -> Vec<u8> {
        m.to_vec().unwrap_or_default()
    }

    fn discover(&mut self, now: Instant) -> Vec<Action> {
        self.state = State::Selecting;
        self.started = now;
        self.retry = FIRST_RETRY;
        self.next = now + self.retry;
        let m = self.message(MessageType::Discover, Ipv4Addr::UNSPECIFIED, now);
        vec![Action::Send(Self::encode(&m), Destination::Broadcast)]
    }

    fn request_offer(&self, offer: &Lease, now: Instant) -> Vec<u8> {
        let mut m = self.message(MessageType::Request, Ipv4Addr::UNSPECIFIED, now);
        m.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(offer.address));
        m.opts_mut()
            .insert(DhcpOption::ServerIdentifier(offer.server));
        Self::encode(&m)
    }

    /// A renewing/rebinding REQUEST: from our address, no server id (RFC 2131 4.3.2).
    fn request_extend(&self, lease: &Lease, now: Instant) -> Vec<u8> {
        Self::encode(&self.message(MessageType::Request, lease.address, now))
    }

    /// The RELEASE to send at shutdown, if there is a lease.
    pub fn release(&mut self, now: Instant) -> Vec<Action> {
        let Some((lease, _)) = self.lease.take() else {
            return vec![];
        };
        self.state = State::Init;
        let mut m = self.message(MessageType::Release, lease.address, now);
        m.opts_mut()
            .insert(DhcpOption::ServerIdentifier(lease.server));
        vec![
            Action::Send(Self::encode(&m), Destination::Server(lease.server)),
            Action::Drop(lease),
        ]
    }

    /// The time has come for whatever is due.
    pub fn on_timeout(&mut self, now: Instant) -> Vec<Action> {
        if now < self.next {
            return vec![];
        }
        // An expired lease is gone whatever we were doing.
        if let Some((lease, got)) = &self.lease {
            if now >= *got + lease.lease_time {
                let lease = lease.clone();
                self.lease = None;
                let mut out = vec![Action::Drop(lease)];
                out.extend(self.discover(now));
                return out;
            }
        }
        match self.state.clone() {
            State::Init => self.discover(now),
            State::Selecting => {
                self.backoff(now);
                let m = self.message(MessageType::Discover, Ipv4Addr::UNSPECIFIED, now);
                vec![Action::Send(Self::encode(&m), Destination::Broadcast)]
            }
            State::Requesting { offer } => {
                if now.saturating_duration_since(self.started) > MAX_RETRY * 2 {
                    return self.discover(now); // the server went quiet: start over
                }
                self.backoff(now);
                vec![Action::Send(
                    self.request_offer(&offer, now),
                    Destination::Broadcast,
                )]
            }
            State::Bound | State::Renewing | State::Rebinding => self.extend(now),
        }
    }

    /// Bound, renewing or rebinding: the next REQUEST, or the switch to rebinding.
    fn extend(&mut self, now: Instant) -> Vec<Action> {
        let Some((lease, got)) = self.lease.clone() else {
            return self.discover(now);
        };
        let rebind_at = got + lease.rebind_after;
        let expires = got + lease.lease_time;
        let (state, dest, until) = if now < rebind_at {
            (
                State::Renewing,
                Destination::Server(lease.server),
                rebind_at,
            )
        } else {
            (State::Rebinding, Destination::Broadcast, expires)
        };
        if self.state == State::Bound {
            self.started = now;
        }
        self.state = state;
        // Half the remaining time, at least a minute (RFC 2131 4.4.5), but never past
        // the next boundary.
        let half = until.saturating_duration_since(now) / 2;
        self.next = (now + half.max(Duration::from_secs(60))).min(until);
        vec![Action::Send(self.request_extend(&lease, now), dest)]
    }

    fn backoff(&mut self, now: Instant) {
        self.retry = (self.retry * 2).min(MAX_RETRY);
        self.next = now + self.retry;
    }

    /// A packet arrived on the link.
    pub fn on_packet(&mut self, data: &[u8], now: Instant) -> Vec<Action> {
        let Ok(m) = Message::from_bytes(data) else {
            return vec![];
        };
        if m.opcode() != Opcode::BootReply
            || m.xid() != self.xid
            || m.chaddr().get(..6) != Some(&self.mac[..])
        {
            return vec![];
        }
        let Some(kind) = m.opts().msg_type() else {
            return vec![];
        };
        match (&self.state, kind) {
            (State::Selecting, MessageType::Offer) => {
                let Some(offer) = lease_from(&m) else {
                    return vec![];
                };
                let packet = self.request_offer(&offer, now);
                self.state = State::Requesting {
                    offer: Box::new(offer),
                };
                self.retry = FIRST_RETRY;
                self.next = now + self.retry;
                vec![Action::Send(packet, Destination::Broadcast)]
            }
            (State::Requesting { .. } | State::Renewing | State::Rebinding, MessageType::Ack) => {
                let Some(lease) = lease_from(&m) else {
                    return vec![];
                };
                self.state = State::Bound;
                self.next = now + lease.renew_after;
                self.lease = Some((lease.clone(), now));
                vec![Action::Apply(lease)]
            }
            (State::Requesting { .. } | State::Renewing | State::Rebinding, MessageType::Nak) => {
                let mut out = Vec::new();
                if let Some((lease, _)) = self.lease.take() {
                    out.push(Action::Drop(lease));
                }
                out.extend(self.discover(now));
                out
            }
            _ => vec![],
        }
    }
}

/// The lease an OFFER or ACK describes (None when it lacks an address or server).
fn lease_from(m: &Message) -> Option<Lease> {
    let address = m.yiaddr();
    if address.is_unspecified() {
        return None;
    }
    let opts = m.opts();
    let ip = |code| match opts.get(code) {
        Some(DhcpOption::SubnetMask(a) | DhcpOption::ServerIdentifier(a)) => Some(*a),
        _ => None,
    };
    let ips = |code| match opts.get(code) {
        Some(
            DhcpOption::Router(v) | DhcpOption::DomainNameServer(v) | DhcpOption::NtpServers(v),
        ) => v.clone(),
        _ => vec![],
    };
    let server = ip(OptionCode::ServerIdentifier).unwrap_or(m.siaddr());
    if server.is_unspecified() {
        return None;
    }
    let prefix = ip(OptionCode::SubnetMask).map_or_else(
        || default_prefix(address),
        |mask| u8::try_from(u32::from(mask).leading_ones()).unwrap_or(32),
    );
    let secs = |code| match opts.get(code) {
        Some(
            DhcpOption::AddressLeaseTime(s) | DhcpOption::Renewal(s) | DhcpOption::Rebinding(s),
        ) => Some(Duration::from_secs(u64::from(*s))),
        _ => None,
    };
    // No lease time: a day, as many clients assume; an infinite lease never renews.
    let lease_time = secs(OptionCode::AddressLeaseTime).unwrap_or(Duration::from_secs(86400));
    let renew_after = secs(OptionCode::Renewal).unwrap_or(lease_time / 2);
    let rebind_after = secs(OptionCode::Rebinding).unwrap_or(lease_time * 7 / 8);
    let text = |code| match opts.get(code) {
        Some(DhcpOption::DomainName(s) | DhcpOption::Hostname(s)) => Some(s.clone()),
        _ => None,
    };
    let search = match opts.get(OptionCode::DomainSearch) {
        Some(DhcpOption::DomainSearch(names)) => names
            .iter()
            .map(|n| n.to_string().trim_end_matches('.').to_string())
            .collect(),
        _ => vec![],
    };
    let routes = match opts.get(OptionCode::ClasslessStaticRoute) {
        Some(DhcpOption::ClasslessStaticRoute(r)) => r
            .iter()
            .map(|(net, gw)| (net.network(), net.prefix_len(), *gw))
            .collect(),
        _ => vec![],
    };
    Some(Lease {
        address,
        prefix,
        server,
        routers: ips(OptionCode::Router),
        dns: ips(OptionCode::DomainNameServer),
        domain: text(OptionCode::DomainName),
        search,
        hostname: text(OptionCode::Hostname),
        mtu: match opts.get(OptionCode::InterfaceMtu) {
            Some(DhcpOption::InterfaceMtu(m)) if *m >= 576 => Some(*m),
            _ => None,
        },
        ntp: ips(OptionCode::NtpServers),
        routes,
        lease_time,
        renew_after: renew_after.min(lease_time),
        rebind_after: rebind_after.clamp(renew_after.min(lease_time), lease_time),
    })
}

/// The classful prefix, for a server that sends no mask.
fn default_prefix(a: Ipv4Addr) -> u8 {
    match a.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        _ => 24,
    }
}

#[cfg(test)]
mod tests;
