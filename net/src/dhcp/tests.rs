//! The state machine against a scripted server: acquire, renew, rebind, expire, NAK,
//! release, and the options a lease carries.

use super::*;

const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const ME: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

fn sent(actions: &[Action]) -> Vec<(Message, Destination)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(b, d) => Some((Message::from_bytes(b).unwrap(), *d)),
            _ => None,
        })
        .collect()
}

/// The server's answer of `kind` to `request`, with a 60 s lease.
fn answer(request: &Message, kind: MessageType, lease_secs: u32) -> Vec<u8> {
    let mut m = Message::new_with_id(
        request.xid(),
        Ipv4Addr::UNSPECIFIED,
        ME,
        SERVER,
        Ipv4Addr::UNSPECIFIED,
        request.chaddr(),
    );
    m.set_opcode(Opcode::BootReply);
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    o.insert(DhcpOption::ServerIdentifier(SERVER));
    o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
    o.insert(DhcpOption::Router(vec![SERVER]));
    o.insert(DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
        10, 0, 2, 3,
    )]));
    o.insert(DhcpOption::InterfaceMtu(1460));
    o.insert(DhcpOption::DomainName("example.internal".into()));
    o.insert(DhcpOption::AddressLeaseTime(lease_secs));
    o.insert(DhcpOption::ClasslessStaticRoute(vec![
        ("169.254.169.254/32".parse().unwrap(), Ipv4Addr::UNSPECIFIED),
        ("0.0.0.0/0".parse().unwrap(), SERVER),
    ]));
    m.to_vec().unwrap()
}

fn bound(now: Instant, lease_secs: u32) -> (Client, Lease) {
    let mut c = Client::new(MAC, 7, now);
    let out = c.on_timeout(now);
    let (discover, dest) = sent(&out).remove(0);
    assert_eq!(dest, Destination::Broadcast);
    assert_eq!(discover.opts().msg_type(), Some(MessageType::Discover));
    assert!(discover.flags().broadcast());
    let out = c.on_packet(&answer(&discover, MessageType::Offer, lease_secs), now);
    let (request, _) = sent(&out).remove(0);
    assert_eq!(request.opts().msg_type(), Some(MessageType::Request));
    assert_eq!(
        request.opts().get(OptionCode::RequestedIpAddress),
        Some(&DhcpOption::RequestedIpAddress(ME))
    );
    let out = c.on_packet(&answer(&request, MessageType::Ack, lease_secs), now);
    let lease = match &out[..] {
        [Action::Apply(l)] => l.clone(),
        other => panic!("{other:?}"),
    };
    (c, lease)
}

#[test]
fn a_lease_is_acquired_with_its_options() {
    let now = Instant::now();
    let (_, lease) = bound(now, 60);
    assert_eq!(lease.address, ME);
    assert_eq!(lease.prefix, 24);
    assert_eq!(lease.routers, vec![SERVER]);
    assert_eq!(lease.dns, vec![Ipv4Addr::new(10, 0, 2, 3)]);
    assert_eq!(lease.mtu, Some(1460));
    assert_eq!(lease.domain.as_deref(), Some("example.internal"));
    assert_eq!(
        lease.routes,
        vec![
            (Ipv4Addr::new(169, 254, 169, 254), 32, Ipv4Addr::UNSPECIFIED),
            (Ipv4Addr::UNSPECIFIED, 0, SERVER)
        ]
    );
    assert_eq!(lease.renew_after, Duration::from_secs(30));
    assert_eq!(lease.rebind_after, Duration::from_millis(52_500));
}

#[test]
fn renews_at_t1_from_the_server_and_rebinds_at_t2() {
    let t0 = Instant::now();
    let (mut c, _) = bound(t0, 120);
    assert!(c.on_timeout(t0 + Duration::from_secs(59)).is_empty());
    let t1 = t0 + Duration::from_secs(60);
    assert_eq!(c.deadline(), t1);
    let (renew, dest) = sent(&c.on_timeout(t1)).remove(0);
    assert_eq!(dest, Destination::Server(SERVER), "renewing is unicast");
    assert_eq!(renew.ciaddr(), ME);
    assert!(renew.opts().get(OptionCode::ServerIdentifier).is_none());
    // No answer: from T2 (105 s) on it broadcasts.
    let (t, rebind) = loop {
        let t = c.deadline();
        let out = c.on_timeout(t);
        if let Some((m, Destination::Broadcast)) = sent(&out).pop() {
            break (t, m);
        }
        assert!(t < t0 + Duration::from_secs(105), "no rebinding by T2");
    };
    assert_eq!(t, t0 + Duration::from_secs(105));
    assert_eq!(rebind.opts().msg_type(), Some(MessageType::Request));
    assert_eq!(rebind.ciaddr(), ME);
    // An ACK while rebinding extends the lease from now.
    let out = c.on_packet(&answer(&rebind, MessageType::Ack, 120), t);
    assert!(matches!(&out[..], [Action::Apply(_)]), "{out:?}");
    assert_eq!(c.deadline(), t + Duration::from_secs(60));
}

#[test]
fn an_expired_lease_is_dropped_and_discovery_starts_again() {
    let t0 = Instant::now();
    let (mut c, lease) = bound(t0, 10);
    let (t, out) = loop {
        let t = c.deadline();
        let out = c.on_timeout(t);
        if out.iter().any(|a| matches!(a, Action::Drop(_))) {
            break (t, out);
        }
        assert!(t < t0 + Duration::from_secs(11), "never expired");
    };
    assert!(t >= t0 + Duration::from_secs(10));
    assert_eq!(out[0], Action::Drop(lease));
    let (m, _) = sent(&out).remove(0);
    assert_eq!(m.opts().msg_type(), Some(MessageType::Discover));
    assert!(c.lease().is_none());
}

#[test]
fn a_nak_restarts_and_strangers_are_ignored() {
    let t0 = Instant::now();
    let (mut c, _) = bound(t0, 60);
    let (renew, _) = sent(&c.on_timeout(t0 + Duration::from_secs(30))).remove(0);
    // Another client's answer (other xid) and garbage change nothing.
    let mut other = renew.clone();
    other.set_xid(99);
    assert!(c
        .on_packet(&answer(&other, MessageType::Nak, 60), t0)
        .is_empty());
    assert!(c.on_packet(b"not dhcp", t0).is_empty());
    let out = c.on_packet(&answer(&renew, MessageType::Nak, 60), t0);
    assert!(matches!(out[0], Action::Drop(_)), "{out:?}");
    assert_eq!(
        sent(&out)[0].0.opts().msg_type(),
        Some(MessageType::Discover)
    );
}

#[test]
fn discovery_backs_off_and_release_names_the_server() {
    let t0 = Instant::now();
    let mut c = Client::new(MAC, 1, t0);
    c.on_timeout(t0);
    let mut gaps = Vec::new();
    let mut last = t0;
    for _ in 0..6 {
        let t = c.deadline();
        gaps.push((t - last).as_secs());
        last = t;
        c.on_timeout(t);
    }
    assert_eq!(gaps, [4, 8, 16, 32, 64, 64]);
    let (mut c, _) = bound(t0, 60);
    let out = c.release(t0);
    let (m, dest) = sent(&out).remove(0);
    assert_eq!(m.opts().msg_type(), Some(MessageType::Release));
    assert_eq!(dest, Destination::Server(SERVER));
    assert!(matches!(out[1], Action::Drop(_)));
    assert!(c.release(t0).is_empty(), "released once");
}
