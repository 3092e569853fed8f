//! A DHCP server for one guest NIC, in the test process: QEMU's `-netdev socket,udp=`
//! hands each ethernet frame over as a UDP datagram on 127.0.0.1, so the server sees
//! the guest's broadcasts and answers with frames of its own (ARP for its address, and
//! DHCP OFFER/ACK with the options a cloud's server gives: router, DNS, domain, MTU,
//! a short lease so renewals happen while the test watches), and NTP on its own address
//! (named in option 42) with a clock [`CLOCK_AHEAD`] ahead of the host's.

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode};
use dhcproto::{Decodable, Encodable};

pub const SERVER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 15);
pub const DNS: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 53);
pub const MTU: u16 = 1460;
/// How far ahead of the host's clock the server's NTP answers are.
pub const CLOCK_AHEAD: Duration = Duration::from_secs(3600);
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
            let dst_port = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
            if dst_port == 123 && ip.get(16..20)? == SERVER.octets() {
                let client = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
                let src_port = u16::from_be_bytes([udp[0], udp[1]]);
                let ntp = ntp_reply(udp.get(8..)?)?;
                return Some(ethernet(
                    src_mac,
                    0x0800,
                    &ipv4_udp(123, client, src_port, &ntp),
                ));
            }
            if dst_port != 67 {
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
            Some(ethernet(
                src_mac,
                0x0800,
                &ipv4_udp(67, Ipv4Addr::BROADCAST, 68, &dhcp),
            ))
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
    o.insert(DhcpOption::NtpServers(vec![SERVER]));
    m
}

/// An SNTP server's answer (RFC 5905 7.3: version 4, mode 4, stratum 2; the request's
/// transmit time as origin; receive and transmit times from a clock CLOCK_AHEAD ahead).
fn ntp_reply(request: &[u8]) -> Option<Vec<u8>> {
    if request.len() < 48 || request[0] & 7 != 3 {
        return None;
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()? + CLOCK_AHEAD;
    let ntp = ((now.as_secs() + 2_208_988_800) << 32)
        | ((u64::from(now.subsec_nanos()) << 32) / 1_000_000_000);
    let mut r = vec![0u8; 48];
    r[0] = (4 << 3) | 4;
    r[1] = 2;
    r[12..16].copy_from_slice(b"TEST");
    r[24..32].copy_from_slice(&request[40..48]);
    r[32..40].copy_from_slice(&ntp.to_be_bytes());
    r[40..48].copy_from_slice(&ntp.to_be_bytes());
    Some(r)
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

/// A UDP datagram from SERVER (no UDP checksum, which IPv4 allows).
fn ipv4_udp(src_port: u16, dst: Ipv4Addr, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len = u16::try_from(8 + payload.len()).unwrap();
    let total = 20 + udp_len;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&SERVER.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(&src_port.to_be_bytes());
    ip.extend_from_slice(&dst_port.to_be_bytes());
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
