//! Leases and static entries made real: a link's addresses, MTU and routes over
//! rtnetlink, and `/etc/resolv.conf` from the static config and every lease.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use berth_netlink::{Netlink, RouteOrigin};

use crate::config::LinkConfig;
use crate::dhcp::Lease;

fn nl_err(e: berth_netlink::NetlinkError) -> String {
    e.to_string()
}

/// Configures `link` from `lease` (again, on a renewal: every step is idempotent).
pub fn lease(link: &str, lease: &Lease) -> Result<(), String> {
    let mut nl = Netlink::open().map_err(nl_err)?;
    let index = nl.link_index(link).map_err(nl_err)?;
    if let Some(mtu) = lease.mtu {
        nl.set_mtu(index, u32::from(mtu)).map_err(nl_err)?;
    }
    nl.add_address(index, lease.address, lease.prefix)
        .map_err(nl_err)?;
    // Option 121, when present, replaces the router option (RFC 3442).
    if lease.routes.is_empty() {
        if let Some(router) = lease.routers.first() {
            nl.replace_route(Ipv4Addr::UNSPECIFIED, 0, *router, index, RouteOrigin::Dhcp)
                .map_err(nl_err)?;
        }
    } else {
        for (dest, prefix, gateway) in &lease.routes {
            nl.replace_route(*dest, *prefix, *gateway, index, RouteOrigin::Dhcp)
                .map_err(nl_err)?;
        }
    }
    Ok(())
}

/// Takes a lost lease's address away (its routes go with it).
pub fn drop_lease(link: &str, lease: &Lease) -> Result<(), String> {
    let mut nl = Netlink::open().map_err(nl_err)?;
    let index = nl.link_index(link).map_err(nl_err)?;
    nl.delete_address(index, lease.address, lease.prefix)
        .map_err(nl_err)
}

/// Resolvers from one place (the static config, a link's entry, a lease).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Resolvers {
    pub servers: Vec<IpAddr>,
    pub search: Vec<String>,
}

impl From<&Lease> for Resolvers {
    /// A lease's servers, and its search list (option 119), else its domain name.
    fn from(l: &Lease) -> Resolvers {
        Resolvers {
            servers: l.dns.iter().map(|a| IpAddr::V4(*a)).collect(),
            search: if l.search.is_empty() {
                l.domain.iter().cloned().collect()
            } else {
                l.search.clone()
            },
        }
    }
}

/// resolv.conf's text for these sources in order (nameservers at most 3, as libc
/// reads; duplicates once).
pub fn resolv_conf(sources: &[Resolvers]) -> String {
    let mut servers: Vec<IpAddr> = Vec::new();
    let mut search: Vec<&str> = Vec::new();
    for r in sources {
        for s in &r.servers {
            if !servers.contains(s) {
                servers.push(*s);
            }
        }
        for d in &r.search {
            if !search.contains(&d.as_str()) {
                search.push(d);
            }
        }
    }
    let mut text = String::from("# written by berth-net (static config and DHCP)\n");
    for s in servers.iter().take(3) {
        text += &format!("nameserver {s}\n");
    }
    if !search.is_empty() {
        text += &format!("search {}\n", search.join(" "));
    }
    text
}

/// Applies a link's static entry: MTU, addresses, then routes (their gateways are on
/// the addresses' prefixes). Idempotent.
pub fn static_link(link: &str, entry: &LinkConfig) -> Result<(), String> {
    let mut nl = Netlink::open().map_err(nl_err)?;
    let index = nl.link_index(link).map_err(nl_err)?;
    if let Some(mtu) = entry.mtu {
        nl.set_mtu(index, mtu).map_err(nl_err)?;
    }
    for a in &entry.addresses {
        nl.add_address(index, a.addr(), a.prefix_len())
            .map_err(nl_err)?;
    }
    for r in &entry.routes {
        nl.replace_route(
            r.to.addr(),
            r.to.prefix_len(),
            r.via,
            index,
            RouteOrigin::Static,
        )
        .map_err(nl_err)?;
    }
    Ok(())
}

/// Takes a static entry's addresses away (their routes go with them).
pub fn unapply_static(link: &str, entry: &LinkConfig) -> Result<(), String> {
    let mut nl = Netlink::open().map_err(nl_err)?;
    let index = nl.link_index(link).map_err(nl_err)?;
    for a in &entry.addresses {
        nl.delete_address(index, a.addr(), a.prefix_len())
            .map_err(nl_err)?;
    }
    Ok(())
}

/// Writes resolv.conf durably through berth-persist (readers never see half of it).
pub fn write_resolv_conf(path: &Path, text: &str) -> Result<(), String> {
    berth_persist::write_file(path, text.as_bytes(), 0o644).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn lease(dns: &[[u8; 4]], domain: Option<&str>, search: &[&str]) -> Lease {
        Lease {
            address: Ipv4Addr::new(10, 0, 2, 15),
            prefix: 24,
            server: Ipv4Addr::new(10, 0, 2, 2),
            routers: vec![],
            dns: dns.iter().map(|a| Ipv4Addr::from(*a)).collect(),
            domain: domain.map(str::to_string),
            search: search.iter().map(|s| s.to_string()).collect(),
            hostname: None,
            mtu: None,
            ntp: vec![],
            routes: vec![],
            lease_time: Duration::from_secs(60),
            renew_after: Duration::from_secs(30),
            rebind_after: Duration::from_secs(50),
        }
    }

    #[test]
    fn resolv_conf_merges_the_links() {
        let a = lease(&[[10, 0, 2, 3]], Some("c.internal"), &[]);
        let b = lease(
            &[[10, 0, 2, 3], [10, 1, 0, 3], [8, 8, 8, 8], [1, 1, 1, 1]],
            None,
            &["a.example", "b.example"],
        );
        let configured = Resolvers {
            servers: vec!["2001:db8::53".parse().unwrap()],
            search: vec!["corp.example".into()],
        };
        let text = resolv_conf(&[configured, (&a).into(), (&b).into()]);
        assert_eq!(
            text,
            "# written by berth-net (static config and DHCP)\nnameserver 2001:db8::53\n\
             nameserver 10.0.2.3\nnameserver 10.1.0.3\n\
             search corp.example c.internal a.example b.example\n"
        );
    }
}
