//! Berth's host network settings beside DHCP: which links get static addresses, routes,
//! MTU, resolvers and time servers. The agent (issue 9) turns a datasource's network
//! description into this (OpenStack's `network_data.json`: [`openstack`]; cloud-config
//! network v1 and v2: [`cloud_config`]) and writes it to [`CONFIG_PATH`]; berth-net
//! applies it whenever the file changes.
//!
//! A link no entry matches keeps Berth's default: a DHCPv4 lease (and the kernel's
//! SLAAC). A link an entry matches gets exactly what the entry says.

pub mod cloud_config;
pub mod openstack;

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::links::{parse_mac, Link};

/// Where the agent writes the settings, and berth-net reads them.
pub const CONFIG_PATH: &str = "/run/berth/network.json";
/// Made by the agent once its local datasources are read (and their settings written
/// to [`CONFIG_PATH`]): berth-net waits for it, boundedly, before asking DHCP.
pub const AGENT_LOCAL_DONE: &str = "/run/berth/agent-local.done";
/// How long berth-net waits for [`AGENT_LOCAL_DONE`].
pub const AGENT_LOCAL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Where the settings came from, for the log (e.g. `config-drive network_data.json`).
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub links: Vec<LinkConfig>,
    /// Resolvers for the whole host (OpenStack's top-level `services`, cloud-config v1's
    /// `nameserver` entry), before those of links and leases.
    #[serde(default)]
    pub nameservers: Vec<IpAddr>,
    #[serde(default)]
    pub search: Vec<String>,
    /// Time servers (names or addresses), before those of leases and the cloud's own.
    #[serde(default)]
    pub ntp: Vec<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    #[serde(rename = "match")]
    pub matches: LinkMatch,
    #[serde(default)]
    pub dhcp4: bool,
    /// DHCPv6 asked for: berth-net has no DHCPv6 client; the kernel's SLAAC applies.
    #[serde(default)]
    pub dhcp6: bool,
    /// Addresses with their prefix length (`10.0.0.5/24`, `2001:db8::5/64`).
    #[serde(default)]
    pub addresses: Vec<IpNet>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub nameservers: Vec<IpAddr>,
    #[serde(default)]
    pub search: Vec<String>,
}

/// Which link an entry is for: by MAC, by name (`*` and `?` as in a shell), or both.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub to: IpNet,
    /// The gateway; unspecified (`0.0.0.0`, `::`) for a route on the link.
    pub via: IpAddr,
}

/// A MAC address written `aa:bb:cc:dd:ee:ff` (any case).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("not valid JSON: {0}")]
    Syntax(String),
}

impl ConfigError {
    pub(crate) fn at(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl NetworkConfig {
    /// Reads the JSON form (what [`CONFIG_PATH`] holds), checked.
    pub fn from_json(text: &str) -> Result<NetworkConfig, ConfigError> {
        let config: NetworkConfig =
            serde_json::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        config.check()?;
        Ok(config)
    }

    pub fn to_json(&self) -> String {
        // Serializing plain structs of strings, numbers and addresses cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The first entry that matches `link`.
    pub fn for_link(&self, link: &Link) -> Option<&LinkConfig> {
        self.links.iter().find(|c| c.matches.matches(link))
    }

    /// What no parser checks by type: an entry matches something, MTU in range, a
    /// route's gateway in the family of its destination.
    pub fn check(&self) -> Result<(), ConfigError> {
        for (i, link) in self.links.iter().enumerate() {
            let at = |what: &str| format!("links[{i}].{what}");
            if link.matches.mac.is_none() && link.matches.name.is_none() {
                return Err(ConfigError::at(at("match"), "needs a mac or a name"));
            }
            if let Some(mtu) = link.mtu {
                if !(68..=65535).contains(&mtu) {
                    return Err(ConfigError::at(
                        at("mtu"),
                        format!("{mtu} is outside 68..=65535"),
                    ));
                }
            }
            for (r, route) in link.routes.iter().enumerate() {
                if route.to.addr().is_ipv4() != route.via.is_ipv4() {
                    return Err(ConfigError::at(
                        at(&format!("routes[{r}]")),
                        format!("{} via {}: mixed IPv4 and IPv6", route.to, route.via),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl LinkMatch {
    pub fn matches(&self, link: &Link) -> bool {
        self.mac.is_none_or(|m| m.0 == link.mac)
            && self.name.as_deref().is_none_or(|n| glob(n, &link.name))
            && (self.mac.is_some() || self.name.is_some())
    }
}

impl fmt::Display for LinkMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.name, &self.mac) {
            (Some(n), Some(m)) => write!(f, "{n} ({m})"),
            (Some(n), None) => f.write_str(n),
            (None, Some(m)) => write!(f, "{m}"),
            (None, None) => f.write_str("(nothing)"),
        }
    }
}

/// Shell-style `*` and `?` matching for link names (netplan's `match: name: en*`).
fn glob(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

impl FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Mac, String> {
        parse_mac(&s.to_ascii_lowercase())
            .map(Mac)
            .ok_or_else(|| format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Mac, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The prefix length of a netmask (`255.255.255.0` → 24, `ffff:ffff::` → 32); None
/// when its ones are not contiguous.
pub fn netmask_prefix(mask: IpAddr) -> Option<u8> {
    let (bits, width) = match mask {
        IpAddr::V4(m) => (u128::from(u32::from(m)) << 96, 32),
        IpAddr::V6(m) => (u128::from(m), 128),
    };
    let ones = bits.leading_ones();
    let contiguous = bits.checked_shl(ones).unwrap_or(0) == 0 && ones <= width;
    u8::try_from(ones).ok().filter(|_| contiguous)
}

/// `address` with `netmask` (or with its own `/prefix`) as an [`IpNet`].
pub fn address_with_mask(
    path: &str,
    address: &str,
    netmask: Option<&str>,
) -> Result<IpNet, ConfigError> {
    if address.contains('/') {
        return address
            .parse()
            .map_err(|_| ConfigError::at(path, format!("{address:?} is not an address/prefix")));
    }
    let ip: IpAddr = address
        .parse()
        .map_err(|_| ConfigError::at(path, format!("{address:?} is not an IP address")))?;
    let prefix = match netmask {
        None => return Err(ConfigError::at(path, format!("{address} has no netmask"))),
        // Some write the prefix length as the netmask ("24").
        Some(m) if m.parse::<u8>().is_ok() => m.parse::<u8>().unwrap_or(0),
        Some(m) => m
            .parse::<IpAddr>()
            .ok()
            .filter(|m| m.is_ipv4() == ip.is_ipv4())
            .and_then(netmask_prefix)
            .ok_or_else(|| ConfigError::at(path, format!("{m:?} is not a netmask for {ip}")))?,
    };
    IpNet::new(ip, prefix)
        .map_err(|_| ConfigError::at(path, format!("prefix {prefix} is too long for {ip}")))
}

#[cfg(test)]
mod tests;
