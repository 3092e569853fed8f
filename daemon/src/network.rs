//! Bridge networking: a bridge (`berth0`, the pool's first address), and per container
//! a network namespace kept at `/run/berth/netns/NAME` with a veth pair (its end named
//! `eth0` inside), an address from the pool and a default route through the bridge.
//! NAT and published ports are one nftables table, `inet berth`, replaced whole (one
//! `nft -f -` transaction) whenever the set of containers or ports changes.
//!
//! Why the `nft` binary rather than netlink: nftables' netlink protocol is a batch of
//! expression bytecode per rule; the only Rust crates that speak it are GPL-3
//! (rustables) or link GPL libnftnl. The binary (GPL-2, shipped beside ours, not linked)
//! reads the ruleset language operators already read with `nft list table inet berth`.
//!
//! What the rules do: outgoing traffic from the pool is masqueraded; each published port
//! is a DNAT to its container; nothing from outside reaches a container unless it is a
//! published port's DNAT or a reply; and containers cannot reach the cloud metadata
//! address unless their declaration says `allow_metadata` (it hands out the instance's
//! credentials).
//!
//! Containers hold CAP_NET_RAW (Docker's default set), so they can forge any frame. A
//! second table, `bridge berth`, checks every frame as it enters the bridge from a
//! container's port, before the host or another container sees it: its source MAC must
//! be the one the daemon gave that container, an IPv4 packet's source address and an ARP
//! packet's sender must be the container's own, and nothing but IPv4 and ARP passes (the
//! bridge is IPv4 only: no IPv6 router advertisement, no IPv6 metadata address, no
//! VLAN-tagged frame). So no container can speak as a neighbour allowed to reach the
//! metadata service, poison the host's ARP cache or the bridge's forwarding table, or
//! change the host's routes. Frames from a port the daemon does not know are dropped.
//!
//! Addresses a container published on 127.0.0.0/8 would be DNAT'd before the kernel's
//! martian check if a frame to 127.0.0.1 arrived on a NIC: such packets are dropped first
//! (priority raw), whatever interface but `lo` they arrive on.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

pub use berth_schema::bridge::{load_config, BridgeConfig, Pool};

use crate::declaration::{Port, Protocol};

/// The cloud metadata address (EC2, GCE, OpenStack, Azure, Oracle, DigitalOcean).
pub const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// EC2's metadata service over IPv6 (Nitro instances). Containers have no IPv6 on the
/// bridge at all; the rule naming it guards against that ever changing unnoticed.
pub const METADATA_V6: &str = "fd00:ec2::254";
/// What a container's end of its veth pair is called inside.
const INSIDE: &str = "eth0";

/// The host end of a container's veth pair: short (IFNAMSIZ is 16) and stable.
pub fn host_link(container: &str) -> String {
    // FNV-1a: a stable, well-spread 32-bit hash of the name.
    let hash = container.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("vb{hash:08x}")
}

/// The hardware address of a container's end: locally administered, unicast (the first
/// octet's two low bits 1 and 0), then the container's IPv4 address, so that the bridge
/// rules know it without asking the namespace, and it stays across daemon restarts.
pub fn container_mac(address: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = address.octets();
    [0x02, 0x62, a, b, c, d]
}

fn mac_text(mac: [u8; 6]) -> String {
    let parts: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

/// What the rules need to know of one attached container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub address: Ipv4Addr,
    pub ports: Vec<Port>,
    pub allow_metadata: bool,
}

pub struct Bridge {
    name: String,
    pool: Pool,
    netns_dir: PathBuf,
    ready: bool,
    /// Attached containers by name.
    attached: BTreeMap<String, Attached>,
    /// The ruleset last applied (nft runs only when it changes).
    applied: Option<String>,
}

impl Bridge {
    pub fn new(config: &BridgeConfig, netns_dir: PathBuf) -> Result<Bridge, String> {
        if config.name.is_empty() || config.name.len() > 15 || config.name.contains(['/', ' ']) {
            return Err(format!("bridge name {:?} is not a link name", config.name));
        }
        Ok(Bridge {
            name: config.name.clone(),
            pool: Pool::parse(&config.subnet)?,
            netns_dir,
            ready: false,
            attached: BTreeMap::new(),
            applied: None,
        })
    }

    pub fn netns_path(&self, container: &str) -> PathBuf {
        self.netns_dir.join(container)
    }

    /// The bridge with its address, up, and forwarding on.
    fn ensure_bridge(&mut self) -> Result<(), String> {
        if self.ready {
            return Ok(());
        }
        let mut nl = berth_netlink::Netlink::open().map_err(|e| e.to_string())?;
        nl.add_bridge(&self.name).map_err(|e| e.to_string())?;
        let index = nl.link_index(&self.name).map_err(|e| e.to_string())?;
        nl.add_address(index, self.pool.gateway(), self.pool.prefix)
            .map_err(|e| e.to_string())?;
        // The bridge carries IPv4 only. With IPv6 on, the host would take router
        // advertisements on it and route through a container (the CVE-2020-13401 class);
        // the bridge table drops them too, this makes sure the host never listens.
        for (key, value) in [("accept_ra", "0"), ("disable_ipv6", "1")] {
            let path = format!("/proc/sys/net/ipv6/conf/{}/{key}", self.name);
            match std::fs::write(&path, value) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(format!("{path}: {e}"))
                }
                _ => {}
            }
        }
        nl.set_up(index, None).map_err(|e| e.to_string())?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|e| format!("enabling IPv4 forwarding: {e}"))?;
        self.ready = true;
        Ok(())
    }

    /// Takes back a container that is already attached (its namespace survived a daemon
    /// restart): its address is kept.
    pub fn adopt(&mut self, container: &str, address: Ipv4Addr, attached: Attached) {
        if self.netns_path(container).exists() && self.pool.contains(address) {
            self.ready = false; // checked again before the next attach
            self.attached.insert(container.to_string(), attached);
        }
    }

    pub fn address(&self, container: &str) -> Option<Ipv4Addr> {
        self.attached.get(container).map(|a| a.address)
    }

    /// Gives `container` its namespace, veth pair and address (or keeps those it has);
    /// returns the namespace file for its OCI config.
    pub fn attach(
        &mut self,
        container: &str,
        ports: &[Port],
        allow_metadata: bool,
    ) -> Result<PathBuf, String> {
        for p in ports {
            let clash = self.attached.iter().find(|(other, a)| {
                other.as_str() != container
                    && a.ports.iter().any(|q| {
                        q.host_port == p.host_port
                            && q.protocol == p.protocol
                            && (q.host_ip.is_none()
                                || p.host_ip.is_none()
                                || q.host_ip == p.host_ip)
                    })
            });
            if let Some((other, _)) = clash {
                return Err(format!(
                    "host port {} is already published by container {other}",
                    p.host_port
                ));
            }
        }
        self.ensure_bridge()?;
        let path = self.netns_path(container);
        if let Some(a) = self.attached.get_mut(container) {
            if path.exists() {
                a.ports = ports.to_vec();
                a.allow_metadata = allow_metadata;
                return Ok(path);
            }
        }
        self.attached.remove(container);
        let address = self
            .pool
            .allocate(self.attached.values().map(|a| &a.address))
            .ok_or_else(|| format!("the pool {} has no free address", self.pool.text()))?;
        self.plumb(container, &path, address)
            .inspect_err(|_| self.teardown(container))?;
        self.attached.insert(
            container.to_string(),
            Attached {
                address,
                ports: ports.to_vec(),
                allow_metadata,
            },
        );
        // Before the container runs: its port accepts frames only once the rules know it.
        if let Err(e) = self.apply_rules() {
            self.detach(container);
            return Err(e);
        }
        Ok(path)
    }

    fn plumb(&self, container: &str, path: &Path, address: Ipv4Addr) -> Result<(), String> {
        crate::netns::create(path)?;
        let ns = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let host = host_link(container);
        let mut nl = berth_netlink::Netlink::open().map_err(|e| e.to_string())?;
        nl.delete_link(&host).map_err(|e| e.to_string())?; // a leftover
        nl.add_veth_into(&host, INSIDE, container_mac(address), ns.as_fd())
            .map_err(|e| e.to_string())?;
        // A bridge port takes no part in IPv6 itself (see ensure_bridge).
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{host}/disable_ipv6"), "1");
        let bridge = nl.link_index(&self.name).map_err(|e| e.to_string())?;
        let index = nl.link_index(&host).map_err(|e| e.to_string())?;
        nl.set_up(index, Some(bridge)).map_err(|e| e.to_string())?;
        let (prefix, gateway) = (self.pool.prefix, self.pool.gateway());
        crate::netns::run_in(&ns, move || {
            let mut nl = berth_netlink::Netlink::open().map_err(|e| e.to_string())?;
            let lo = nl.link_index("lo").map_err(|e| e.to_string())?;
            nl.set_up(lo, None).map_err(|e| e.to_string())?;
            let eth = nl.link_index(INSIDE).map_err(|e| e.to_string())?;
            nl.add_address(eth, address, prefix)
                .map_err(|e| e.to_string())?;
            nl.set_up(eth, None).map_err(|e| e.to_string())?;
            nl.add_default_route(gateway).map_err(|e| e.to_string())
        })
    }

    /// Removes a container's veth pair (its peer goes with it) and namespace; its
    /// address returns to the pool.
    pub fn detach(&mut self, container: &str) {
        self.teardown(container);
        self.attached.remove(container);
    }

    fn teardown(&self, container: &str) {
        if let Ok(mut nl) = berth_netlink::Netlink::open() {
            let _ = nl.delete_link(&host_link(container));
        }
        crate::netns::remove(&self.netns_path(container));
    }

    /// Applies the ruleset for the attached containers when it changed.
    pub fn apply_rules(&mut self) -> Result<(), String> {
        if self.attached.is_empty() && self.applied.is_none() {
            return Ok(()); // nothing on the bridge yet: no table to write
        }
        let rules = ruleset(&self.name, self.pool, &self.attached);
        if self.applied.as_deref() == Some(rules.as_str()) {
            return Ok(());
        }
        nft(&rules)?;
        self.applied = Some(rules);
        Ok(())
    }
}

/// The rules, in one transaction.
fn nft(script: &str) -> Result<(), String> {
    berth_netlink::nft::apply(script)
}

/// The `inet berth` and `bridge berth` tables for these containers (replacing any
/// earlier ones, in one transaction).
pub fn ruleset(bridge: &str, pool: Pool, attached: &BTreeMap<String, Attached>) -> String {
    let mut dnat = String::new();
    for (name, a) in attached {
        for p in &a.ports {
            let proto = match p.protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
            };
            let daddr = p
                .host_ip
                .map(|ip| format!("ip daddr {ip} "))
                .unwrap_or_default();
            dnat += &format!(
                "    iifname != \"{bridge}\" {daddr}{proto} dport {} dnat ip to {}:{} comment \"{name}\"\n",
                p.host_port, a.address, p.container_port
            );
        }
    }
    let allowed: Vec<String> = attached
        .values()
        .filter(|a| a.allow_metadata)
        .map(|a| a.address.to_string())
        .collect();
    let metadata = if allowed.is_empty() {
        format!("    iifname \"{bridge}\" ip daddr {METADATA} drop\n")
    } else {
        format!(
            "    iifname \"{bridge}\" ip daddr {METADATA} ip saddr != {{ {} }} drop\n",
            allowed.join(", ")
        )
    };
    format!(
        "table inet berth {{}}\n\
         delete table inet berth\n\
         table inet berth {{\n\
         \x20 chain guard {{\n\
         \x20   type filter hook prerouting priority raw; policy accept;\n\
         \x20   iifname != \"lo\" ip daddr 127.0.0.0/8 drop\n\
         \x20   iifname != \"lo\" ip6 daddr ::1 drop\n\
         \x20 }}\n\
         \x20 chain prerouting {{\n\
         \x20   type nat hook prerouting priority dstnat; policy accept;\n\
         {dnat}\
         \x20 }}\n\
         \x20 chain postrouting {{\n\
         \x20   type nat hook postrouting priority srcnat; policy accept;\n\
         \x20   ip saddr {pool} oifname != \"{bridge}\" masquerade\n\
         \x20 }}\n\
         \x20 chain forward {{\n\
         \x20   type filter hook forward priority filter; policy accept;\n\
         {metadata}\
         \x20   iifname \"{bridge}\" ip6 daddr {METADATA_V6} drop\n\
         \x20   oifname \"{bridge}\" ct state established,related accept\n\
         \x20   oifname \"{bridge}\" ct status dnat accept\n\
         \x20   oifname \"{bridge}\" iifname != \"{bridge}\" drop\n\
         \x20 }}\n\
         }}\n\
         {ports}",
        pool = pool.text(),
        ports = port_rules(attached),
    )
}

/// The `bridge berth` table: what may enter the bridge from each container's port.
fn port_rules(attached: &BTreeMap<String, Attached>) -> String {
    let mut rules = String::new();
    let mut known = Vec::new();
    for (name, a) in attached {
        let port = host_link(name);
        let (mac, ip) = (mac_text(container_mac(a.address)), a.address);
        for check in [
            format!("ether saddr != {mac}"),
            "ether type != { ip, arp }".to_string(),
            format!("ip saddr != {ip}"),
            format!("arp saddr ip != {ip}"),
            format!("arp saddr ether != {mac}"),
        ] {
            rules += &format!("    iifname \"{port}\" {check} drop comment \"{name}\"\n");
        }
        known.push(format!("\"{port}\""));
    }
    let unknown = if known.is_empty() {
        "    drop\n".to_string()
    } else {
        format!("    iifname != {{ {} }} drop\n", known.join(", "))
    };
    format!(
        "table bridge berth {{}}\n\
         delete table bridge berth\n\
         table bridge berth {{\n\
         \x20 chain ports {{\n\
         \x20   type filter hook prerouting priority -300; policy accept;\n\
         {rules}{unknown}\
         \x20 }}\n\
         }}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    #[test]
    fn the_ruleset_publishes_declared_ports_only_and_guards_metadata() {
        let mut attached = BTreeMap::new();
        attached.insert(
            "web".to_string(),
            Attached {
                address: Ipv4Addr::new(10, 88, 0, 2),
                ports: vec![crate::declaration::parse_port("8080:80").unwrap()],
                allow_metadata: false,
            },
        );
        attached.insert(
            "agent".to_string(),
            Attached {
                address: Ipv4Addr::new(10, 88, 0, 3),
                ports: vec![crate::declaration::parse_port("127.0.0.1:5353:53/udp").unwrap()],
                allow_metadata: true,
            },
        );
        let r = ruleset("berth0", Pool::parse("10.88.0.0/16").unwrap(), &attached);
        assert!(
            r.contains("iifname != \"berth0\" tcp dport 8080 dnat ip to 10.88.0.2:80"),
            "{r}"
        );
        assert!(
            r.contains("ip daddr 127.0.0.1 udp dport 5353 dnat ip to 10.88.0.3:53"),
            "{r}"
        );
        assert_eq!(r.matches("dnat ip to").count(), 2, "{r}");
        assert!(
            r.contains("ip daddr 169.254.169.254 ip saddr != { 10.88.0.3 } drop"),
            "{r}"
        );
        assert!(
            r.contains("ip saddr 10.88.0.0/16 oifname != \"berth0\" masquerade"),
            "{r}"
        );
        // Replaced whole: the table is made (so delete cannot fail), deleted, rewritten.
        assert!(
            r.starts_with("table inet berth {}\ndelete table inet berth\n"),
            "{r}"
        );
        // Nothing arriving anywhere but on lo reaches 127.0.0.0/8 (before any DNAT).
        assert!(
            r.contains(
                "priority raw; policy accept;\n    iifname != \"lo\" ip daddr 127.0.0.0/8 drop"
            ),
            "{r}"
        );
        assert!(r.contains("ip6 daddr fd00:ec2::254 drop"), "{r}");
        // Each container's port admits only its own MAC and address, IPv4 and ARP.
        let web = host_link("web");
        for check in [
            "ether saddr != 02:62:0a:58:00:02 drop",
            "ether type != { ip, arp } drop",
            "ip saddr != 10.88.0.2 drop",
            "arp saddr ip != 10.88.0.2 drop",
            "arp saddr ether != 02:62:0a:58:00:02 drop",
        ] {
            assert!(
                r.contains(&format!("iifname \"{web}\" {check}")),
                "{check}\n{r}"
            );
        }
        let agent = host_link("agent");
        assert!(
            r.contains(&format!("iifname \"{agent}\" ip saddr != 10.88.0.3 drop")),
            "{r}"
        );
        assert!(
            r.contains(&format!("iifname != {{ \"{agent}\", \"{web}\" }} drop")),
            "{r}"
        );
        // The kernel takes it (in a network namespace of its own; root only).
        if rustix_is_root() {
            nft_in_scratch_namespace(&r);
        }
        attached.clear();
        let r = ruleset("berth0", Pool::parse("10.88.0.0/16").unwrap(), &attached);
        assert!(
            r.contains("iifname \"berth0\" ip daddr 169.254.169.254 drop"),
            "{r}"
        );
        assert!(!r.contains("dnat ip to"), "{r}");
    }

    fn rustix_is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    /// Loads `rules` with the real nft into a throwaway network namespace.
    fn nft_in_scratch_namespace(rules: &str) {
        let mut child = Command::new("unshare")
            .args(["--net", "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("unshare and nft");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(rules.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft refused:\n{}\n{rules}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn host_links_are_short_and_distinct() {
        assert_eq!(host_link("web").len(), 10);
        assert_ne!(host_link("web"), host_link("web2"));
    }
}
