//! A DHCP server for one guest NIC, in the test process: QEMU's `-netdev socket,udp=`
//! hands each ethernet frame over as a UDP datagram on 127.0.0.1, so the server sees
//! the guest's broadcasts and answers with frames of its own (ARP for its address, and
//! DHCP OFFER/ACK with the options a cloud's server gives: router, DNS, domain, MTU,
//! a short lease so renewals happen while the test watches).

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode};
use dhcproto::{Decodable, Encodable};

pub const SERVER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 15);
pub const DNS: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 53);
pub const MTU: u16 = 1460;
const SERVER_MAC: [u8; 6] = [0x52, 0x54, 0, 0xff, 0, 1];

pub struct Dhcpd {
    /// QEMU's end: `-netdev socket,id=..,udp=127.0.0.1:{server_port},localaddr=127.0.0.1:{qemu_port}`.
    pub server_port: u16,
    pub qemu_port: u16,
    /// ACKs sent (the first lease, then each renewal).
    pub acks: Arc<AtomicUsize>,
}

impl Dhcpd {
    pub fn netdev(&self, id: &str) -> String {
        format!(
            "socket,id={id},udp=127.0.0.1:{},localaddr=127.0.0.1:{}",
            self.server_port, self.qemu_port
        )
    }
}

/// Starts the server (a thread) handing out `lease_secs` leases.
pub fn start(lease_secs: u32) -> Dhcpd {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let server_port = socket.local_addr().unwrap().port();
    let qemu_port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let acks = Arc::new(AtomicUsize::new(0));
    let counter = acks.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok(n) = socket.recv(&mut buf) {
            let reply = answer(&buf[..n], lease_secs, &counter);
            if let Some(frame) = reply {
                let _ = socket.send_to(&frame, ("127.0.0.1", qemu_port));
            }
        }
    });
    Dhcpd {
        server_port,
        qemu_port,
        acks,
    }
}

/// The frame answering `frame`, if it asks something of us.
fn answer(frame: &[u8], lease_secs: u32, acks: &AtomicUsize) -> Option<Vec<u8>> {
    if frame.len() < 14 {
        return None;
    }
    let src_mac: [u8; 6] = frame[6..12].try_into().ok()?;
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0806 => arp_reply(&frame[14..], src_mac),
        0x0800 => {
            let ip = &frame[14..];
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            if ip.get(9) != Some(&17) {
                return None;
            }
            let udp = ip.get(ihl..)?;
            if u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]) != 67 {
                return None;
            }
            let request = Message::decode(&mut dhcproto::Decoder::new(udp.get(8..)?)).ok()?;
            let kind = match request.opts().msg_type()? {
                MessageType::Discover => MessageType::Offer,
                MessageType::Request => {
                    acks.fetch_add(1, Ordering::SeqCst);
                    MessageType::Ack
                }
                _ => return None,
            };
            let dhcp = reply(&request, kind, lease_secs).to_vec().ok()?;
            Some(ethernet(src_mac, 0x0800, &ipv4_udp(&dhcp)))
        }
        _ => None,
    }
}

fn reply(request: &Message, kind: MessageType, lease_secs: u32) -> Message {
    let mut m = Message::new_with_id(
        request.xid(),
        Ipv4Addr::UNSPECIFIED,
        CLIENT,
        SERVER,
        Ipv4Addr::UNSPECIFIED,
        request.chaddr(),
    );
    m.set_opcode(Opcode::BootReply);
    m.set_flags(request.flags());
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    o.insert(DhcpOption::ServerIdentifier(SERVER));
    o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
    o.insert(DhcpOption::Router(vec![SERVER]));
    o.insert(DhcpOption::DomainNameServer(vec![DNS]));
    o.insert(DhcpOption::DomainName("test.internal".into()));
    o.insert(DhcpOption::InterfaceMtu(MTU));
    o.insert(DhcpOption::AddressLeaseTime(lease_secs));
    m
}

/// Who-has SERVER? SERVER is at SERVER_MAC.
fn arp_reply(arp: &[u8], asker: [u8; 6]) -> Option<Vec<u8>> {
    if arp.len() < 28 || arp[6..8] != [0, 1] || arp[24..28] != SERVER.octets() {
        return None;
    }
    let mut r = Vec::with_capacity(28);
    r.extend_from_slice(&arp[0..6]); // htype, ptype, hlen, plen
    r.extend_from_slice(&[0, 2]); // reply
    r.extend_from_slice(&SERVER_MAC);
    r.extend_from_slice(&SERVER.octets());
    r.extend_from_slice(&arp[8..14]); // the asker's MAC
    r.extend_from_slice(&arp[14..18]); // and address
    Some(ethernet(asker, 0x0806, &r))
}

/// A UDP datagram 67 -> 68 from SERVER to the broadcast address (no UDP checksum, which
/// IPv4 allows).
fn ipv4_udp(payload: &[u8]) -> Vec<u8> {
    let udp_len = u16::try_from(8 + payload.len()).unwrap();
    let total = 20 + udp_len;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&SERVER.octets());
    ip.extend_from_slice(&Ipv4Addr::BROADCAST.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(&67u16.to_be_bytes());
    ip.extend_from_slice(&68u16.to_be_bytes());
    ip.extend_from_slice(&udp_len.to_be_bytes());
    ip.extend_from_slice(&[0, 0]);
    ip.extend_from_slice(payload);
    ip
}

fn ethernet(dst: [u8; 6], kind: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&SERVER_MAC);
    f.extend_from_slice(&kind.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(0)
}
