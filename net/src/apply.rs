//! A lease made real: the link's address, MTU and routes over rtnetlink, and
//! `/etc/resolv.conf` from every link's lease.

use std::net::Ipv4Addr;
use std::path::Path;

use berth_netlink::Netlink;

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
            nl.replace_route(Ipv4Addr::UNSPECIFIED, 0, *router, index)
                .map_err(nl_err)?;
        }
    } else {
        for (dest, prefix, gateway) in &lease.routes {
            nl.replace_route(*dest, *prefix, *gateway, index)
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

/// resolv.conf's text for these leases (nameservers in link order, at most 3 as libc
/// reads; search domains from option 119, else each lease's domain name).
pub fn resolv_conf<'a>(leases: impl Iterator<Item = &'a Lease>) -> String {
    let mut servers: Vec<Ipv4Addr> = Vec::new();
    let mut search: Vec<String> = Vec::new();
    for l in leases {
        for s in &l.dns {
            if !servers.contains(s) {
                servers.push(*s);
            }
        }
        let domains = if l.search.is_empty() {
            l.domain.iter().cloned().collect()
        } else {
            l.search.clone()
        };
        for d in domains {
            if !search.contains(&d) {
                search.push(d);
            }
        }
    }
    let mut text = String::from("# written by berth-net from DHCP\n");
    for s in servers.iter().take(3) {
        text += &format!("nameserver {s}\n");
    }
    if !search.is_empty() {
        text += &format!("search {}\n", search.join(" "));
    }
    text
}

/// Writes resolv.conf through a rename (readers never see half of it).
pub fn write_resolv_conf(path: &Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("berth-net.tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
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
        let text = resolv_conf([a, b].iter());
        assert_eq!(
            text,
            "# written by berth-net from DHCP\nnameserver 10.0.2.3\nnameserver 10.1.0.3\n\
             nameserver 8.8.8.8\nsearch c.internal a.example b.example\n"
        );
    }
}
