//! Blocking rtnetlink: the few link, address and route requests Berth makes (a bridge,
//! veth pairs moved into container namespaces, addresses, default routes), on
//! netlink-packet-route's message types and netlink-sys's socket.
//!
//! Why not rtnetlink: it needs an async runtime (tokio, or smol's global executor with
//! its threads) for what is a request and its acknowledgement; the daemon is a plain
//! loop. The request/ack exchange here is the whole of what it would do for us.
//!
//! A socket works in the network namespace it was opened in: open one inside a
//! container's namespace (from a thread that entered it) to configure its side.

pub mod nft;

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Socket(std::io::Error),
    /// The kernel refused a request.
    #[error("{what}: {source}")]
    Refused {
        what: String,
        source: std::io::Error,
    },
    #[error("{what}: unreadable answer from the kernel: {problem}")]
    Decode { what: String, problem: String },
    #[error("no link named {0:?}")]
    NoSuchLink(String),
}

pub type Result<T> = std::result::Result<T, NetlinkError>;

/// Who a route comes from, as `ip route` shows it (`proto dhcp`, `proto static`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteOrigin {
    Dhcp,
    Static,
}

/// A route netlink socket in the calling thread's network namespace.
pub struct Netlink {
    socket: Socket,
    sequence: u32,
}

impl Netlink {
    pub fn open() -> Result<Netlink> {
        let socket = route_socket()?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Socket)?;
        Ok(Netlink {
            socket,
            sequence: 0,
        })
    }

    /// Sends `message` and collects the answers until the acknowledgement (or the end
    /// of a dump); a refusal becomes an error naming `what`.
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        what: &str,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags | NLM_F_REQUEST | NLM_F_ACK;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(|e| refused(what, e))?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut answers = Vec::new();
        loop {
            let mut data: Vec<u8> = Vec::with_capacity(64 * 1024);
            self.socket
                .recv(&mut data, 0)
                .map_err(|e| refused(what, e))?;
            let mut offset = 0;
            while offset < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| NetlinkError::Decode {
                        what: what.to_string(),
                        problem: e.to_string(),
                    })?;
                let length = reply.header.length as usize;
                if length == 0 {
                    break;
                }
                offset += length;
                if reply.header.sequence_number != self.sequence {
                    continue; // a late answer to an earlier request
                }
                match reply.payload {
                    NetlinkPayload::Error(e) => match e.code {
                        None if !dump => return Ok(answers),
                        None => {}
                        Some(code) => {
                            return Err(refused(
                                what,
                                std::io::Error::from_raw_os_error(-code.get()),
                            ))
                        }
                    },
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::InnerMessage(m) => answers.push(m),
                    _ => {}
                }
            }
        }
    }

    /// The index of link `name`.
    pub fn link_index(&mut self, name: &str) -> Result<u32> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(
            RouteNetlinkMessage::GetLink(m),
            0,
            &format!("looking up link {name}"),
        ) {
            Ok(answers) => answers
                .into_iter()
                .find_map(|a| match a {
                    RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                    _ => None,
                })
                .ok_or_else(|| NetlinkError::NoSuchLink(name.to_string())),
            Err(NetlinkError::Refused { source, .. })
                if source.raw_os_error() == Some(19) /* ENODEV */ =>
            {
                Err(NetlinkError::NoSuchLink(name.to_string()))
            }
            Err(e) => Err(e),
        }
    }

    /// Creates bridge `name` (an existing one is fine).
    pub fn add_bridge(&mut self, name: &str) -> Result<()> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        m.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        match self.request(
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("creating bridge {name}"),
        ) {
            Err(NetlinkError::Refused { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    /// Creates the veth pair `host` / `peer`, with `peer` moved at once into the network
    /// namespace `netns` (an open /proc/PID/ns/net or bind-mounted namespace file) and,
    /// there, named `peer_name_inside`, with the hardware address `peer_mac`.
    pub fn add_veth_into(
        &mut self,
        host: &str,
        peer_name_inside: &str,
        peer_mac: [u8; 6],
        netns: BorrowedFd<'_>,
    ) -> Result<()> {
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(peer_name_inside.to_string()));
        peer.attributes
            .push(LinkAttribute::Address(peer_mac.to_vec()));
        peer.attributes
            .push(LinkAttribute::NetNsFd(netns.as_raw_fd()));
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(host.to_string()));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.request(
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("creating veth {host} (peer {peer_name_inside} in the container)"),
        )
        .map(|_| ())
    }

    /// Deletes link `name` (a missing one is fine).
    pub fn delete_link(&mut self, name: &str) -> Result<()> {
        let index = match self.link_index(name) {
            Ok(i) => i,
            Err(NetlinkError::NoSuchLink(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.request(
            RouteNetlinkMessage::DelLink(m),
            0,
            &format!("deleting link {name}"),
        )
        .map(|_| ())
    }

    /// Brings link `index` up, optionally enslaving it to bridge `master`.
    pub fn set_up(&mut self, index: u32, master: Option<u32>) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        if let Some(master) = master {
            m.attributes.push(LinkAttribute::Controller(master));
        }
        self.request(
            RouteNetlinkMessage::SetLink(m),
            0,
            &format!("bringing link {index} up"),
        )
        .map(|_| ())
    }

    /// Adds `address/prefix` (IPv4 or IPv6) to link `index` (already there is fine).
    pub fn add_address(
        &mut self,
        index: u32,
        address: impl Into<IpAddr>,
        prefix: u8,
    ) -> Result<()> {
        let address = address.into();
        match self.request(
            RouteNetlinkMessage::NewAddress(address_message(index, address, prefix)),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("adding {address}/{prefix} to link {index}"),
        ) {
            Err(NetlinkError::Refused { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    /// Sets link `index`'s MTU.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Mtu(mtu));
        self.request(
            RouteNetlinkMessage::SetLink(m),
            0,
            &format!("setting link {index}'s MTU to {mtu}"),
        )
        .map(|_| ())
    }

    /// Removes `address/prefix` from link `index` (its prefix route goes with it).
    pub fn delete_address(
        &mut self,
        index: u32,
        address: impl Into<IpAddr>,
        prefix: u8,
    ) -> Result<()> {
        let address = address.into();
        self.request(
            RouteNetlinkMessage::DelAddress(address_message(index, address, prefix)),
            0,
            &format!("removing {address}/{prefix} from link {index}"),
        )
        .map(|_| ())
    }

    /// A route to `destination/prefix` out of link `index`, through `gateway` (or on the
    /// link when it is unspecified, as DHCP option 121 says); an existing one is
    /// replaced. Destination and gateway are both IPv4 or both IPv6.
    pub fn replace_route(
        &mut self,
        destination: impl Into<IpAddr>,
        prefix: u8,
        gateway: impl Into<IpAddr>,
        index: u32,
        origin: RouteOrigin,
    ) -> Result<()> {
        let (destination, gateway) = (destination.into(), gateway.into());
        let what = format!("adding the route {destination}/{prefix} via {gateway} on link {index}");
        if destination.is_ipv4() != gateway.is_ipv4() {
            return Err(refused(
                &what,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "mixed address families"),
            ));
        }
        let mut m = RouteMessage::default();
        m.header.address_family = family(destination);
        m.header.destination_prefix_length = prefix;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = match origin {
            RouteOrigin::Dhcp => RouteProtocol::Dhcp,
            RouteOrigin::Static => RouteProtocol::Static,
        };
        m.header.kind = RouteType::Unicast;
        if prefix > 0 {
            m.attributes
                .push(RouteAttribute::Destination(route_address(destination)));
        }
        if gateway.is_unspecified() {
            m.header.scope = RouteScope::Link;
        } else {
            m.header.scope = RouteScope::Universe;
            m.attributes
                .push(RouteAttribute::Gateway(route_address(gateway)));
        }
        m.attributes.push(RouteAttribute::Oif(index));
        self.request(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_REPLACE,
            &what,
        )
        .map(|_| ())
    }

    /// A default IPv4 route through `gateway`.
    pub fn add_default_route(&mut self, gateway: Ipv4Addr) -> Result<()> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.scope = RouteScope::Universe;
        m.header.kind = RouteType::Unicast;
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        self.request(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("adding a default route via {gateway}"),
        )
        .map(|_| ())
    }
}

/// A route netlink socket bound to a port the kernel picks.
fn route_socket() -> Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
    socket.bind_auto().map_err(NetlinkError::Socket)?;
    Ok(socket)
}

/// RTNLGRP_LINK (linux/rtnetlink.h): the kernel's announcements of links added,
/// removed and changed.
const RTNLGRP_LINK: u32 = 1;

/// A socket on which the kernel announces links as they come, change and go (hot-plug),
/// so nobody has to poll /sys/class/net.
pub struct LinkEvents {
    socket: Socket,
}

impl LinkEvents {
    pub fn open() -> Result<LinkEvents> {
        let socket = route_socket()?;
        socket
            .add_membership(RTNLGRP_LINK)
            .map_err(NetlinkError::Socket)?;
        socket
            .set_non_blocking(true)
            .map_err(NetlinkError::Socket)?;
        Ok(LinkEvents { socket })
    }

    /// Takes what arrived; true when anything did. An overrun (ENOBUFS: announcements
    /// were lost) counts as something, since the caller looks at the links afresh.
    pub fn drain(&mut self) -> bool {
        let mut any = false;
        loop {
            let mut data: Vec<u8> = Vec::with_capacity(64 * 1024);
            match self.socket.recv(&mut data, 0) {
                Ok(0) => return any,
                Ok(_) => any = true,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return any,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => any = true,
            }
        }
    }
}

impl std::os::fd::AsFd for LinkEvents {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

/// `address/prefix` on link `index`, as RTM_NEWADDR and RTM_DELADDR carry it.
fn address_message(index: u32, address: IpAddr, prefix: u8) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = family(address);
    m.header.prefix_len = prefix;
    m.header.index = index;
    m.attributes.push(AddressAttribute::Local(address));
    m.attributes.push(AddressAttribute::Address(address));
    m
}

fn family(address: IpAddr) -> AddressFamily {
    match address {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn route_address(address: IpAddr) -> RouteAddress {
    match address {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

fn refused(what: &str, source: std::io::Error) -> NetlinkError {
    NetlinkError::Refused {
        what: what.to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_found_and_a_missing_link_is_named() {
        let mut nl = Netlink::open().unwrap();
        assert_eq!(nl.link_index("lo").unwrap(), 1);
        match nl.link_index("no-such-link0") {
            Err(NetlinkError::NoSuchLink(n)) => assert_eq!(n, "no-such-link0"),
            other => panic!("{other:?}"),
        }
        // Deleting what is not there is not an error (teardown is idempotent).
        nl.delete_link("no-such-link0").unwrap();
    }

    #[test]
    fn link_events_are_heard() {
        // Needs its own network namespace to add a link without touching the host's.
        if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
            eprintln!("no network namespace here (not root?): skipped");
            return;
        }
        let mut events = LinkEvents::open().unwrap();
        assert!(!events.drain());
        let mut nl = Netlink::open().unwrap();
        if let Err(e) = nl.add_bridge("evtest0") {
            eprintln!("no bridges in this kernel ({e}): skipped");
            return;
        }
        assert!(events.drain());
        assert!(!events.drain());
        nl.delete_link("evtest0").unwrap();
        assert!(events.drain());
    }
}
