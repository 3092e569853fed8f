//! A DHCP client's UDP socket on one link: port 68 bound to the device (so one socket per
//! link, and broadcasts leave by that link before it has an address), broadcast allowed.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};

use nix::sys::socket::{
    bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
};

pub const CLIENT_PORT: u16 = 68;
pub const SERVER_PORT: u16 = 67;

pub fn open(link: &str) -> Result<UdpSocket, String> {
    let fd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| format!("{link}: socket: {e}"))?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| format!("{link}: SO_REUSEADDR: {e}"))?;
    setsockopt(&fd, sockopt::Broadcast, &true).map_err(|e| format!("{link}: SO_BROADCAST: {e}"))?;
    setsockopt(&fd, sockopt::BindToDevice, &OsString::from(link))
        .map_err(|e| format!("{link}: SO_BINDTODEVICE: {e}"))?;
    let addr = SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT));
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)
        .map_err(|e| format!("{link}: binding port {CLIENT_PORT}: {e}"))?;
    Ok(UdpSocket::from(fd))
}
