//! Which links are the host's ethernet: from sysfs, as udev would see them. A link with
//! a `device` (a NIC driver bound it: virtio-net, e1000, ENA, gVNIC, xen-netfront) and
//! ARPHRD_ETHER; not loopback, bridges, veth pairs or other virtual links, which have no
//! device.

use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub mac: [u8; 6],
}

/// ARPHRD_ETHER (linux/if_arp.h).
const ARPHRD_ETHER: &str = "1";

/// The ethernet links under `sys_class_net` (normally /sys/class/net), by name.
pub fn ethernet(sys_class_net: &Path) -> Vec<Link> {
    let Ok(entries) = std::fs::read_dir(sys_class_net) else {
        return vec![];
    };
    let mut out: Vec<Link> = entries
        .flatten()
        .filter_map(|e| {
            let dir = e.path();
            let kind = std::fs::read_to_string(dir.join("type")).ok()?;
            if kind.trim() != ARPHRD_ETHER || !dir.join("device").exists() {
                return None;
            }
            let mac = parse_mac(std::fs::read_to_string(dir.join("address")).ok()?.trim())?;
            Some(Link {
                name: e.file_name().to_string_lossy().into_owned(),
                mac,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ethernet_links_with_a_device() {
        let t = tempfile::tempdir().unwrap();
        let link = |name: &str, kind: &str, mac: &str, device: bool| {
            let d = t.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("type"), format!("{kind}\n")).unwrap();
            std::fs::write(d.join("address"), format!("{mac}\n")).unwrap();
            if device {
                std::fs::create_dir(d.join("device")).unwrap();
            }
        };
        link("lo", "772", "00:00:00:00:00:00", false);
        link("eth1", "1", "52:54:00:12:34:57", true);
        link("eth0", "1", "52:54:00:12:34:56", true);
        link("berth0", "1", "aa:bb:cc:dd:ee:ff", false);
        let found = ethernet(t.path());
        let names: Vec<&str> = found.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["eth0", "eth1"]);
        assert_eq!(found[0].mac, [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(parse_mac("52:54:00:12:34"), None);
        assert_eq!(parse_mac("52:54:00:12:34:56:78"), None);
    }
}
