//! cloud-config's `network:` key, versions 1 and 2 (cloud-init's "Networking config
//! Version 1" and the netplan-like "Version 2"), the subset operators write for cloud
//! VMs: physical links / ethernets by MAC or name, `dhcp4`/`dhcp6`, addresses, gateways
//! and routes, nameservers, MTU. Bonds, bridges, VLANs and the rest are named in a
//! warning and left alone; so is every key Berth does not know.
//!
//! Generic over the serde format: the agent reads YAML, the tests JSON.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

use super::{address_with_mask, ConfigError, LinkConfig, LinkMatch, Mac, NetworkConfig, Route};

/// Keys we do not read, kept so that each is named in a warning.
type Unknown = BTreeMap<String, serde_json::Value>;

/// One value or a list of them (v1 allows `address: 10.0.0.2` and `address: [..]`).
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(v) => vec![v],
            OneOrMany::Many(v) => v,
        }
    }
}

impl<T> Default for OneOrMany<T> {
    fn default() -> Self {
        OneOrMany::Many(Vec::new())
    }
}

/// The `network:` value: `{version: 1, config: [...]}`, `{version: 2, ethernets: ...}`,
/// or `{config: disabled}` (leave the network to Berth's defaults).
pub fn parse(value: serde_json::Value) -> Result<(NetworkConfig, Vec<String>), ConfigError> {
    if value.get("config").and_then(|c| c.as_str()) == Some("disabled") {
        let config = NetworkConfig {
            source: "cloud-config network (disabled)".into(),
            ..NetworkConfig::default()
        };
        return Ok((config, vec![]));
    }
    let version = value
        .get("version")
        .ok_or_else(|| ConfigError::at("network.version", "missing (1 or 2)"))?;
    let (config, warnings) = match version.as_u64() {
        Some(1) => v1(serde_json::from_value(value).map_err(|e| typed("network", e))?)?,
        Some(2) => v2(serde_json::from_value(value).map_err(|e| typed("network", e))?)?,
        _ => {
            return Err(ConfigError::at(
                "network.version",
                format!("{version} is not 1 or 2"),
            ))
        }
    };
    config.check()?;
    Ok((config, warnings))
}

fn typed(at: &str, e: serde_json::Error) -> ConfigError {
    ConfigError::at(at, e.to_string())
}

fn unknown(at: &str, extra: &Unknown, warnings: &mut Vec<String>) {
    for key in extra.keys() {
        warnings.push(format!("{at}.{key}: not a key Berth knows; ignored"));
    }
}

fn parse_ip(at: &str, text: &str) -> Result<IpAddr, ConfigError> {
    text.parse()
        .map_err(|_| ConfigError::at(at, format!("{text:?} is not an IP address")))
}

// ---- version 1 ----

#[derive(Deserialize)]
struct V1 {
    #[serde(rename = "version")]
    _version: u8,
    #[serde(default)]
    config: Vec<serde_json::Value>,
    #[serde(flatten)]
    extra: Unknown,
}

#[derive(Deserialize)]
struct V1Physical {
    name: String,
    mac_address: Option<Mac>,
    mtu: Option<u32>,
    #[serde(default)]
    subnets: Vec<V1Subnet>,
    #[serde(flatten)]
    extra: Unknown,
}

#[derive(Deserialize)]
struct V1Subnet {
    #[serde(rename = "type")]
    kind: String,
    address: Option<String>,
    netmask: Option<String>,
    gateway: Option<String>,
    #[serde(default)]
    dns_nameservers: Vec<String>,
    #[serde(default)]
    dns_search: Vec<String>,
    #[serde(default)]
    routes: Vec<V1Route>,
    #[serde(flatten)]
    extra: Unknown,
}

#[derive(Deserialize)]
struct V1Route {
    #[serde(alias = "destination")]
    network: String,
    netmask: Option<String>,
    gateway: String,
}

#[derive(Deserialize)]
struct V1Nameserver {
    #[serde(default)]
    address: OneOrMany<String>,
    #[serde(default)]
    search: OneOrMany<String>,
}

fn v1(doc: V1) -> Result<(NetworkConfig, Vec<String>), ConfigError> {
    let mut warnings = Vec::new();
    unknown("network", &doc.extra, &mut warnings);
    let mut config = NetworkConfig {
        source: "cloud-config network v1".into(),
        ..NetworkConfig::default()
    };
    for (i, entry) in doc.config.into_iter().enumerate() {
        let at = format!("network.config[{i}]");
        let kind = entry
            .get("type")
            .and_then(|t| t.as_str())
            .unwrap_or("")
            .to_string();
        match kind.as_str() {
            "physical" => {
                let p: V1Physical = serde_json::from_value(entry).map_err(|e| typed(&at, e))?;
                config.links.push(v1_physical(&at, p, &mut warnings)?);
            }
            "nameserver" => {
                let n: V1Nameserver = serde_json::from_value(entry).map_err(|e| typed(&at, e))?;
                for a in n.address.into_vec() {
                    config
                        .nameservers
                        .push(parse_ip(&format!("{at}.address"), &a)?);
                }
                config.search.extend(n.search.into_vec());
            }
            "" => return Err(ConfigError::at(format!("{at}.type"), "missing")),
            other => warnings.push(format!(
                "{at}: type {other:?} is not supported (physical and nameserver are); left alone"
            )),
        }
    }
    Ok((config, warnings))
}

fn v1_physical(
    at: &str,
    p: V1Physical,
    warnings: &mut Vec<String>,
) -> Result<LinkConfig, ConfigError> {
    unknown(at, &p.extra, warnings);
    let mut link = LinkConfig {
        // The MAC finds the link when given; the name is what cloud-init would rename
        // it to, which Berth does not do.
        matches: match p.mac_address {
            Some(mac) => LinkMatch {
                mac: Some(mac),
                name: None,
            },
            None => LinkMatch {
                mac: None,
                name: Some(p.name.clone()),
            },
        },
        mtu: p.mtu,
        ..LinkConfig::default()
    };
    for (s, subnet) in p.subnets.into_iter().enumerate() {
        let at = format!("{at}.subnets[{s}]");
        unknown(&at, &subnet.extra, warnings);
        match subnet.kind.as_str() {
            "dhcp" | "dhcp4" => link.dhcp4 = true,
            "dhcp6" | "ipv6_dhcpv6-stateful" | "ipv6_dhcpv6-stateless" | "ipv6_slaac" => {
                link.dhcp6 = true
            }
            "static" | "static6" => {
                let address = subnet
                    .address
                    .as_deref()
                    .ok_or_else(|| ConfigError::at(format!("{at}.address"), "missing"))?;
                let net = address_with_mask(
                    &format!("{at}.address"),
                    address,
                    subnet.netmask.as_deref(),
                )?;
                link.addresses.push(net);
                if let Some(gw) = &subnet.gateway {
                    link.routes
                        .push(default_via(parse_ip(&format!("{at}.gateway"), gw)?));
                }
            }
            "manual" => {}
            other => {
                return Err(ConfigError::at(
                    format!("{at}.type"),
                    format!("{other:?} is not dhcp, dhcp4, dhcp6, static, static6 or manual"),
                ))
            }
        }
        for (d, dns) in subnet.dns_nameservers.iter().enumerate() {
            link.nameservers
                .push(parse_ip(&format!("{at}.dns_nameservers[{d}]"), dns)?);
        }
        link.search.extend(subnet.dns_search);
        for (r, route) in subnet.routes.iter().enumerate() {
            let at = format!("{at}.routes[{r}]");
            let to = address_with_mask(&at, &route.network, route.netmask.as_deref())?;
            link.routes.push(Route {
                to: to.trunc(),
                via: parse_ip(&at, &route.gateway)?,
            });
        }
    }
    Ok(link)
}

fn default_via(gateway: IpAddr) -> Route {
    let to = match gateway {
        IpAddr::V4(_) => IpNet::V4(ipnet::Ipv4Net::default()),
        IpAddr::V6(_) => IpNet::V6(ipnet::Ipv6Net::default()),
    };
    Route { to, via: gateway }
}

// ---- version 2 ----

#[derive(Deserialize)]
struct V2 {
    #[serde(rename = "version")]
    _version: u8,
    #[serde(default)]
    ethernets: BTreeMap<String, V2Ethernet>,
    /// Only one renderer exists here.
    #[serde(default)]
    renderer: Option<String>,
    #[serde(flatten)]
    extra: Unknown,
}

#[derive(Deserialize)]
struct V2Ethernet {
    #[serde(rename = "match")]
    matches: Option<V2Match>,
    #[serde(rename = "set-name")]
    set_name: Option<String>,
    dhcp4: Option<bool>,
    dhcp6: Option<bool>,
    #[serde(default)]
    addresses: Vec<String>,
    gateway4: Option<String>,
    gateway6: Option<String>,
    #[serde(default)]
    routes: Vec<V2Route>,
    nameservers: Option<V2Nameservers>,
    mtu: Option<u32>,
    #[serde(flatten)]
    extra: Unknown,
}

#[derive(Deserialize)]
struct V2Match {
    macaddress: Option<Mac>,
    name: Option<String>,
    #[serde(flatten)]
    extra: Unknown,
}

#[derive(Deserialize)]
struct V2Route {
    to: String,
    via: String,
    #[serde(flatten)]
    extra: Unknown,
}

#[derive(Deserialize)]
struct V2Nameservers {
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    search: Vec<String>,
}

fn v2(doc: V2) -> Result<(NetworkConfig, Vec<String>), ConfigError> {
    let mut warnings = Vec::new();
    for key in doc.extra.keys() {
        let what = match key.as_str() {
            "bonds" | "bridges" | "vlans" | "wifis" | "tunnels" => "is not supported",
            _ => "is not a key Berth knows",
        };
        warnings.push(format!("network.{key}: {what}; ignored"));
    }
    if let Some(r) = doc.renderer.filter(|r| r != "networkd") {
        warnings.push(format!(
            "network.renderer: {r:?} ignored (berth-net configures the links)"
        ));
    }
    let mut config = NetworkConfig {
        source: "cloud-config network v2".into(),
        ..NetworkConfig::default()
    };
    for (id, e) in doc.ethernets {
        let at = format!("network.ethernets.{id}");
        unknown(&at, &e.extra, &mut warnings);
        let matches = match e.matches {
            Some(m) => {
                unknown(&format!("{at}.match"), &m.extra, &mut warnings);
                if m.macaddress.is_none() && m.name.is_none() {
                    return Err(ConfigError::at(
                        format!("{at}.match"),
                        "needs macaddress or name",
                    ));
                }
                LinkMatch {
                    mac: m.macaddress,
                    name: m.name,
                }
            }
            None => LinkMatch {
                mac: None,
                name: Some(id.clone()),
            },
        };
        if let Some(n) = e.set_name {
            warnings.push(format!(
                "{at}.set-name: links keep the kernel's names; {n:?} not applied"
            ));
        }
        let mut link = LinkConfig {
            matches,
            dhcp4: e.dhcp4.unwrap_or(false),
            dhcp6: e.dhcp6.unwrap_or(false),
            mtu: e.mtu,
            ..LinkConfig::default()
        };
        for (i, a) in e.addresses.iter().enumerate() {
            link.addresses
                .push(address_with_mask(&format!("{at}.addresses[{i}]"), a, None)?);
        }
        for (key, gw) in [("gateway4", &e.gateway4), ("gateway6", &e.gateway6)] {
            if let Some(gw) = gw {
                link.routes
                    .push(default_via(parse_ip(&format!("{at}.{key}"), gw)?));
            }
        }
        for (r, route) in e.routes.iter().enumerate() {
            let at = format!("{at}.routes[{r}]");
            unknown(&at, &route.extra, &mut warnings);
            let to = match route.to.as_str() {
                "default" | "0.0.0.0/0" => IpNet::V4(ipnet::Ipv4Net::default()),
                "::/0" => IpNet::V6(ipnet::Ipv6Net::default()),
                other => address_with_mask(&format!("{at}.to"), other, None)?.trunc(),
            };
            let via = parse_ip(&format!("{at}.via"), &route.via)?;
            // `default` is IPv4 unless the gateway says otherwise.
            let to = if route.to == "default" && via.is_ipv6() {
                IpNet::V6(ipnet::Ipv6Net::default())
            } else {
                to
            };
            link.routes.push(Route { to, via });
        }
        if let Some(ns) = e.nameservers {
            for (d, a) in ns.addresses.iter().enumerate() {
                link.nameservers
                    .push(parse_ip(&format!("{at}.nameservers.addresses[{d}]"), a)?);
            }
            link.search = ns.search;
        }
        config.links.push(link);
    }
    Ok((config, warnings))
}
