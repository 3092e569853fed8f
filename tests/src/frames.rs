//! Hand-made Ethernet frames for the network isolation tests: what a container holding
//! CAP_NET_RAW can put on the wire. Built here, byte by byte, because the point is to
//! send what no well-behaved stack would (a packet to 127.0.0.1 on a NIC, a router
//! advertisement from a container); sent by `berth-testsvc` in the guest.
//!
//! Formats: Ethernet II; IPv4 (RFC 791) with its header checksum; TCP (RFC 9293) with
//! the pseudo-header checksum; IPv6 (RFC 8200); ICMPv6 router advertisement (RFC 4861
//! section 4.2) with the source link-layer address option, checksum over the IPv6
//! pseudo-header (RFC 4443).

use std::net::{Ipv4Addr, Ipv6Addr};

pub type Mac = [u8; 6];

/// `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<Mac> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).ok())
        .collect::<Option<_>>()?;
    parts.try_into().ok()
}

/// The ones' complement sum of 16-bit words (RFC 1071), folded and inverted.
fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let bytes: Vec<u8> = chunks.concat();
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(u16::MAX)
}

fn ethernet(dst: Mac, src: Mac, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A TCP SYN from `src:sport` to `dst:dport`, in an Ethernet frame.
pub fn tcp_syn(
    (src_mac, dst_mac): (Mac, Mac),
    (src, sport): (Ipv4Addr, u16),
    (dst, dport): (Ipv4Addr, u16),
) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(20);
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&dport.to_be_bytes());
    tcp.extend_from_slice(&0x1000_0000u32.to_be_bytes()); // sequence number
    tcp.extend_from_slice(&0u32.to_be_bytes()); // acknowledgment
    tcp.extend_from_slice(&[0x50, 0x02]); // data offset 5 words; SYN
    tcp.extend_from_slice(&64240u16.to_be_bytes()); // window
    tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&20u16.to_be_bytes());
    let sum = checksum(&[&pseudo, &tcp]);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());

    let mut ip = vec![0x45, 0, 0, 40, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0];
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(&tcp);
    ethernet(dst_mac, src_mac, 0x0800, &ip)
}

/// Whether `frame` is a TCP SYN+ACK from `from:from_port` to port `to_port`.
pub fn is_syn_ack(frame: &[u8], (from, from_port): (Ipv4Addr, u16), to_port: u16) -> bool {
    let Some(ip) = frame.get(14..) else {
        return false;
    };
    if frame.get(12..14) != Some(&[0x08, 0x00]) || ip.len() < 20 || ip[9] != 6 {
        return false;
    }
    let header = usize::from(ip[0] & 0x0f) * 4;
    let Some(tcp) = ip.get(header..header + 20) else {
        return false;
    };
    ip[12..16] == from.octets()
        && tcp[0..2] == from_port.to_be_bytes()
        && tcp[2..4] == to_port.to_be_bytes()
        && tcp[13] & 0x12 == 0x12
}

/// The link-local address a host with `mac` gives itself (modified EUI-64, RFC 4291).
pub fn link_local(mac: Mac) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a[0] = 0xfe;
    a[1] = 0x80;
    a[8..11].copy_from_slice(&[mac[0] ^ 0x02, mac[1], mac[2]]);
    a[11] = 0xff;
    a[12] = 0xfe;
    a[13..16].copy_from_slice(&mac[3..6]);
    Ipv6Addr::from(a)
}

/// A router advertisement from `mac` to all nodes: "I am a default router for 1800 s".
pub fn router_advert(mac: Mac) -> Vec<u8> {
    let src = link_local(mac);
    let dst: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut icmp = vec![134, 0, 0, 0, 64, 0];
    icmp.extend_from_slice(&1800u16.to_be_bytes()); // router lifetime
    icmp.extend_from_slice(&[0; 8]); // reachable time, retransmission timer
    icmp.extend_from_slice(&[1, 1]); // option: source link-layer address, 8 bytes
    icmp.extend_from_slice(&mac);
    let len = u16::try_from(icmp.len()).unwrap_or(0);
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&u32::from(len).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    let sum = checksum(&[&pseudo, &icmp]);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());

    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&len.to_be_bytes());
    ip.extend_from_slice(&[58, 255]); // next header ICMPv6, hop limit 255 (RFC 4861 checks it)
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    ip.extend_from_slice(&icmp);
    ethernet([0x33, 0x33, 0, 0, 0, 1], mac, 0x86dd, &ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify_to_zero() {
        let f = tcp_syn(
            ([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]),
            (Ipv4Addr::new(192, 0, 2, 2), 40000),
            (Ipv4Addr::LOCALHOST, 9090),
        );
        assert_eq!(f.len(), 14 + 40);
        let ip = &f[14..34];
        assert_eq!(checksum(&[ip]), 0, "IPv4 header");
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&ip[12..20]);
        pseudo.extend_from_slice(&[0, 6, 0, 20]);
        assert_eq!(checksum(&[&pseudo, &f[34..]]), 0, "TCP");

        let mac = parse_mac("02:62:0a:58:00:02").unwrap();
        let ra = router_advert(mac);
        let ip6 = &ra[14..54];
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&ip6[8..40]);
        pseudo.extend_from_slice(&[0, 0, 0, 24, 0, 0, 0, 58]);
        assert_eq!(checksum(&[&pseudo, &ra[54..]]), 0, "ICMPv6");
        assert_eq!(link_local(mac).to_string(), "fe80::62:aff:fe58:2");
    }

    #[test]
    fn a_syn_ack_is_recognised() {
        let mut f = tcp_syn(
            ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]),
            (Ipv4Addr::LOCALHOST, 9090),
            (Ipv4Addr::new(192, 0, 2, 2), 40000),
        );
        assert!(!is_syn_ack(&f, (Ipv4Addr::LOCALHOST, 9090), 40000));
        f[14 + 20 + 13] = 0x12;
        assert!(is_syn_ack(&f, (Ipv4Addr::LOCALHOST, 9090), 40000));
        assert!(!is_syn_ack(&f, (Ipv4Addr::LOCALHOST, 9091), 40000));
        assert!(!is_syn_ack(&f[..30], (Ipv4Addr::LOCALHOST, 9090), 40000));
        assert_eq!(parse_mac("02:00:00:00:00:0g"), None);
    }
}
