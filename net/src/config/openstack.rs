//! OpenStack's `network_data.json` (config drive `openstack/latest/network_data.json`,
//! or the metadata service's same path): `links` (by MAC), `networks` on them (`ipv4`,
//! `ipv6` static; `ipv4_dhcp`; `ipv6_dhcp`, `ipv6_slaac`, `ipv6_dhcpv6-stateful`,
//! `ipv6_dhcpv6-stateless`), their `routes`, and `services` of type `dns`. Field names
//! from Nova's `nova/virt/netutils.py` output as documented in the OpenStack metadata
//! service's network_data.json format. Fields Berth does not use (ids, `vif_id`,
//! `network_id`) are Nova's bookkeeping and are passed over.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

use super::{address_with_mask, ConfigError, LinkConfig, LinkMatch, NetworkConfig, Route};

#[derive(Deserialize)]
struct NetworkData {
    #[serde(default)]
    links: Vec<OsLink>,
    #[serde(default)]
    networks: Vec<OsNetwork>,
    #[serde(default)]
    services: Vec<OsService>,
}

#[derive(Deserialize)]
struct OsLink {
    id: String,
    #[serde(rename = "type", default)]
    kind: String,
    ethernet_mac_address: Option<String>,
    mtu: Option<u32>,
}

#[derive(Deserialize)]
struct OsNetwork {
    #[serde(default)]
    id: String,
    link: String,
    #[serde(rename = "type")]
    kind: String,
    ip_address: Option<String>,
    netmask: Option<String>,
    #[serde(default)]
    routes: Vec<OsRoute>,
    #[serde(default)]
    services: Vec<OsService>,
}

#[derive(Deserialize)]
struct OsRoute {
    network: String,
    netmask: String,
    gateway: String,
}

#[derive(Deserialize)]
struct OsService {
    #[serde(rename = "type")]
    kind: String,
    address: String,
}

/// Link types that are aggregates of others; every other type (`phy`, `ovs`, `bridge`,
/// `tap`, `vif`, `vhostuser`, `hw_veb`, ...) is a NIC as the guest sees it.
const UNSUPPORTED_LINKS: [&str; 2] = ["bond", "vlan"];

/// The settings in `text`, and warnings for what Berth does not do (bonds, VLANs,
/// DHCPv6, services other than DNS).
pub fn parse(text: &str) -> Result<(NetworkConfig, Vec<String>), ConfigError> {
    let data: NetworkData =
        serde_json::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
    let mut warnings = Vec::new();
    let mut links: BTreeMap<&str, LinkConfig> = BTreeMap::new();
    let mut order = Vec::new();
    for (i, l) in data.links.iter().enumerate() {
        if UNSUPPORTED_LINKS.contains(&l.kind.as_str()) {
            warnings.push(format!(
                "links[{i}] ({}): {} links are not supported; left alone",
                l.id, l.kind
            ));
            continue;
        }
        let Some(mac) = &l.ethernet_mac_address else {
            warnings.push(format!(
                "links[{i}] ({}): no ethernet_mac_address to find it by; left alone",
                l.id
            ));
            continue;
        };
        let mac = mac
            .parse()
            .map_err(|e: String| ConfigError::at(format!("links[{i}].ethernet_mac_address"), e))?;
        links.insert(
            &l.id,
            LinkConfig {
                matches: LinkMatch {
                    mac: Some(mac),
                    name: None,
                },
                mtu: l.mtu,
                ..LinkConfig::default()
            },
        );
        order.push(l.id.as_str());
    }
    for (i, n) in data.networks.iter().enumerate() {
        let at = |what: &str| format!("networks[{i}].{what}");
        let Some(link) = links.get_mut(n.link.as_str()) else {
            warnings.push(format!(
                "networks[{i}] ({}): on link {:?}, which is not configured; left alone",
                n.id, n.link
            ));
            continue;
        };
        match n.kind.as_str() {
            "ipv4" | "ipv6" => {
                let address = n
                    .ip_address
                    .as_deref()
                    .ok_or_else(|| ConfigError::at(at("ip_address"), "missing"))?;
                link.addresses.push(address_with_mask(
                    &at("ip_address"),
                    address,
                    n.netmask.as_deref(),
                )?);
            }
            "ipv4_dhcp" => link.dhcp4 = true,
            "ipv6_dhcp" | "ipv6_dhcpv6-stateful" | "ipv6_dhcpv6-stateless" => {
                link.dhcp6 = true;
                warnings.push(format!(
                    "networks[{i}] ({}): {}: no DHCPv6 client; the link gets SLAAC addresses only",
                    n.id, n.kind
                ));
            }
            // The kernel does SLAAC on every link already.
            "ipv6_slaac" => link.dhcp6 = true,
            other => {
                warnings.push(format!(
                    "networks[{i}] ({}): type {other:?} is not known; left alone",
                    n.id
                ));
                continue;
            }
        }
        for (r, route) in n.routes.iter().enumerate() {
            link.routes
                .push(route_of(&at(&format!("routes[{r}]")), route)?);
        }
        for (s, service) in n.services.iter().enumerate() {
            if let Some(dns) = dns_of(&at(&format!("services[{s}]")), service, &mut warnings)? {
                link.nameservers.push(dns);
            }
        }
    }
    let mut config = NetworkConfig {
        source: "OpenStack network_data.json".into(),
        ..NetworkConfig::default()
    };
    for (s, service) in data.services.iter().enumerate() {
        if let Some(dns) = dns_of(&format!("services[{s}]"), service, &mut warnings)? {
            config.nameservers.push(dns);
        }
    }
    for id in order {
        if let Some(link) = links.remove(id) {
            config.links.push(link);
        }
    }
    config.check()?;
    Ok((config, warnings))
}

fn route_of(at: &str, r: &OsRoute) -> Result<Route, ConfigError> {
    let to: IpNet = address_with_mask(at, &r.network, Some(&r.netmask))?;
    let via: IpAddr = r
        .gateway
        .parse()
        .map_err(|_| ConfigError::at(at, format!("gateway {:?} is not an address", r.gateway)))?;
    Ok(Route {
        to: to.trunc(),
        via,
    })
}

fn dns_of(
    at: &str,
    s: &OsService,
    warnings: &mut Vec<String>,
) -> Result<Option<IpAddr>, ConfigError> {
    if s.kind != "dns" {
        warnings.push(format!("{at}: service type {:?} is not used", s.kind));
        return Ok(None);
    }
    s.address
        .parse()
        .map(Some)
        .map_err(|_| ConfigError::at(at, format!("dns address {:?} is not an address", s.address)))
}
