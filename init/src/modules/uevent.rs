//! Kernel uevents (NETLINK_KOBJECT_UEVENT): devices that appear after boot (hot-plugged
//! disks and NICs, input devices created by a driver we just loaded) get their driver
//! loaded the moment the kernel announces them.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    bind, recv, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

/// The multicast group the kernel sends uevents to (udev listens on the same one).
const KERNEL_GROUP: u32 = 1;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Uevent {
    pub action: String,
    pub devpath: String,
    pub subsystem: String,
    pub modalias: Option<String>,
    pub devname: Option<String>,
}

impl Uevent {
    /// Parses one kernel uevent datagram: `ACTION@DEVPATH\0KEY=VALUE\0...`. Messages from
    /// udev's own netlink group start with `libudev` and are ignored (None).
    pub fn parse(buf: &[u8]) -> Option<Self> {
        let mut fields = buf.split(|b| *b == 0).filter(|f| !f.is_empty());
        let header = std::str::from_utf8(fields.next()?).ok()?;
        if !header.contains('@') {
            return None;
        }
        let mut ev = Uevent::default();
        for field in fields {
            let Ok(field) = std::str::from_utf8(field) else {
                continue;
            };
            let Some((key, value)) = field.split_once('=') else {
                continue;
            };
            match key {
                "ACTION" => ev.action = value.to_string(),
                "DEVPATH" => ev.devpath = value.to_string(),
                "SUBSYSTEM" => ev.subsystem = value.to_string(),
                "MODALIAS" => ev.modalias = Some(value.to_string()),
                "DEVNAME" => ev.devname = Some(value.to_string()),
                _ => {}
            }
        }
        Some(ev)
    }
}

pub struct UeventSocket {
    fd: OwnedFd,
}

impl UeventSocket {
    pub fn open() -> Result<Self, Errno> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::NetlinkKObjectUEvent,
        )?;
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &NetlinkAddr::new(0, KERNEL_GROUP),
        )?;
        Ok(Self { fd })
    }

    /// Every uevent queued now (non-blocking).
    pub fn drain(&self) -> Vec<Uevent> {
        let mut events = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match recv(
                std::os::fd::AsRawFd::as_raw_fd(&self.fd),
                &mut buf,
                MsgFlags::empty(),
            ) {
                Ok(0) => break,
                Ok(n) => events.extend(buf.get(..n).and_then(Uevent::parse)),
                Err(Errno::EINTR) => continue,
                // EAGAIN: drained. ENOBUFS: the kernel dropped events while we were
                // busy; later coldplug passes and retries cover what was lost.
                Err(_) => break,
            }
        }
        events
    }
}

impl AsFd for UeventSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_uevent() {
        let msg = b"add@/devices/pci0000:00/0000:00:04.0/virtio1\0ACTION=add\0DEVPATH=/devices/pci0000:00/0000:00:04.0/virtio1\0SUBSYSTEM=virtio\0MODALIAS=virtio:d00000003v00001AF4\0SEQNUM=1234\0";
        let ev = Uevent::parse(msg).unwrap();
        assert_eq!(ev.action, "add");
        assert_eq!(ev.subsystem, "virtio");
        assert_eq!(ev.modalias.as_deref(), Some("virtio:d00000003v00001AF4"));
        assert_eq!(ev.devname, None);
    }

    #[test]
    fn ignores_udev_messages_and_garbage() {
        assert_eq!(Uevent::parse(b"libudev\0\xfe\xed"), None);
        assert_eq!(Uevent::parse(b""), None);
        assert_eq!(Uevent::parse(b"\0\0"), None);
    }
}
