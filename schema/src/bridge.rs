//! The container bridge's settings, `/etc/berth/network.toml`'s `[bridge]`: read by the
//! daemon (which makes the bridge) and by the agent (whose SSH server may forward only
//! into the bridge's pool).

use std::net::Ipv4Addr;
use std::path::Path;

use serde::Deserialize;

/// Where the bridge's settings are.
pub const CONFIG_PATH: &str = "/etc/berth/network.toml";

/// `/etc/berth/network.toml`'s `[bridge]` (every key optional).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    #[serde(default = "default_bridge")]
    pub name: String,
    /// The pool: `10.88.0.0/16` by default (podman's).
    #[serde(default = "default_subnet")]
    pub subnet: String,
}

fn default_bridge() -> String {
    "berth0".into()
}

fn default_subnet() -> String {
    "10.88.0.0/16".into()
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            name: default_bridge(),
            subnet: default_subnet(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    bridge: Option<BridgeConfig>,
}

/// The bridge's settings from `path` (defaults when it is missing).
pub fn load_config(path: &Path) -> Result<BridgeConfig, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str::<ConfigFile>(&text)
            .map(|c| c.bridge.unwrap_or_default())
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BridgeConfig::default()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// An IPv4 pool: network address and prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Pool {
    pub fn parse(s: &str) -> Result<Pool, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("subnet {s:?}: expected ADDRESS/PREFIX"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("subnet {s:?}: {addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (8..=30).contains(p))
            .ok_or_else(|| format!("subnet {s:?}: the prefix must be 8 to 30"))?;
        let mask = u32::MAX << (32 - prefix);
        Ok(Pool {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }

    /// The bridge's own address: the first in the pool.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(a) & mask == u32::from(self.network)
    }

    /// The lowest address that is neither the network, the gateway, the broadcast, nor
    /// in `taken`.
    pub fn allocate<'a>(&self, taken: impl Iterator<Item = &'a Ipv4Addr>) -> Option<Ipv4Addr> {
        let taken: std::collections::BTreeSet<u32> = taken.map(|a| u32::from(*a)).collect();
        let first = u32::from(self.network) + 2;
        let broadcast = u32::from(self.network) | (u32::MAX >> self.prefix);
        (first..broadcast)
            .find(|a| !taken.contains(a))
            .map(Ipv4Addr::from)
    }

    pub fn text(&self) -> String {
        format!("{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_parse_and_allocate_past_the_gateway() {
        let p = Pool::parse("10.88.7.9/16").unwrap();
        assert_eq!(p.network, Ipv4Addr::new(10, 88, 0, 0));
        assert_eq!(p.gateway(), Ipv4Addr::new(10, 88, 0, 1));
        let taken = [Ipv4Addr::new(10, 88, 0, 2)];
        assert_eq!(p.allocate(taken.iter()), Some(Ipv4Addr::new(10, 88, 0, 3)));
        let small = Pool::parse("192.168.5.0/30").unwrap();
        let one = small.allocate([].iter()).unwrap();
        assert_eq!(one, Ipv4Addr::new(192, 168, 5, 2));
        assert_eq!(small.allocate([one].iter()), None, "only .2 fits in a /30");
        for bad in ["10.88.0.0", "10.88.0.0/33", "10.88.0.0/31", "ten/16"] {
            assert!(Pool::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_defaults_and_refusals() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("network.toml");
        assert_eq!(load_config(&p).unwrap(), BridgeConfig::default());
        std::fs::write(&p, "[bridge]\nsubnet = \"172.30.0.0/24\"\n").unwrap();
        assert_eq!(load_config(&p).unwrap().subnet, "172.30.0.0/24");
        std::fs::write(&p, "[bridge]\nsubnett = \"x\"\n").unwrap();
        assert!(load_config(&p).unwrap_err().contains("subnett"));
    }
}
