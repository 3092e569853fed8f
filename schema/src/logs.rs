//! `/etc/berth/logs.toml`: user-data's `berth.logs`, as the agent writes it; the
//! berth-logforward service ships the machine's logs to each `forward` target (off
//! when the file is absent or has none).
//!
//! ```toml
//! [[forward]]
//! url = "tls://logs.example.com:6514"   # or tcp://HOST:601, udp://HOST:514
//! ca = "-----BEGIN CERTIFICATE-----\n..." # tls://: trust this CA (else the machine's)
//! format = "rfc5424"                     # the one format (the default)
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Where the agent writes it.
pub const CONFIG_PATH: &str = "/etc/berth/logs.toml";
/// More targets than this is a mistake (each one reads every log again).
pub const MAX_FORWARDS: usize = 4;
/// A CA bundle larger than this is not one.
pub const MAX_PEM: usize = 64 * 1024;

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsConfig {
    #[serde(default)]
    pub forward: Vec<Forward>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    #[serde(default = "rfc5424")]
    pub format: String,
}

fn rfc5424() -> String {
    "rfc5424".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// RFC 6587 octet counting.
    Tcp,
    /// RFC 5425.
    Tls,
    /// RFC 5426: one message per datagram, no delivery guarantee.
    Udp,
}

/// Where a forward goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub transport: Transport,
    /// A name or an address (an IPv6 one without its brackets).
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = match self.transport {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Udp => "udp",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// What is wrong with one forward: its index and key, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("berth.logs.forward[{index}].{key}: {why}")]
pub struct Invalid {
    pub index: usize,
    pub key: &'static str,
    pub why: String,
}

impl Forward {
    pub fn target(&self) -> Result<Target, String> {
        let (scheme, rest) = self
            .url
            .split_once("://")
            .ok_or("SCHEME://HOST:PORT, with tcp, tls or udp")?;
        let transport = match scheme {
            "tcp" => Transport::Tcp,
            "tls" => Transport::Tls,
            "udp" => Transport::Udp,
            other => return Err(format!("{other:?}: the scheme is tcp, tls or udp")),
        };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, port) = v6.split_once("]:").ok_or("[ADDRESS]:PORT for IPv6")?;
            (host, port)
        } else {
            rest.rsplit_once(':')
                .ok_or("HOST:PORT (the port is needed)")?
        };
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{port:?} is not a port"))?;
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b));
        if !host_ok {
            return Err(format!("{host:?} is not a host name or address"));
        }
        Ok(Target {
            transport,
            host: host.to_string(),
            port,
        })
    }
}

impl LogsConfig {
    pub fn parse(text: &str) -> Result<LogsConfig, String> {
        let c: LogsConfig = toml::from_str(text).map_err(|e| e.message().to_string())?;
        c.check().map_err(|e| e.to_string())?;
        Ok(c)
    }

    /// None when the file is absent (forwarding off).
    pub fn load(path: &Path) -> Result<Option<LogsConfig>, String> {
        let Some(text) = crate::read_settings(path, (MAX_FORWARDS * (MAX_PEM + 1024)) as u64)?
        else {
            return Ok(None);
        };
        LogsConfig::parse(&text)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Every forward well formed; the first that is not, named.
    pub fn check(&self) -> Result<(), Invalid> {
        if self.forward.len() > MAX_FORWARDS {
            return Err(Invalid {
                index: MAX_FORWARDS,
                key: "url",
                why: format!("at most {MAX_FORWARDS} forwards"),
            });
        }
        for (index, f) in self.forward.iter().enumerate() {
            let bad = |key, why: String| Invalid { index, key, why };
            let target = f.target().map_err(|why| bad("url", why))?;
            if f.format != "rfc5424" {
                return Err(bad(
                    "format",
                    format!("{:?}: the format is rfc5424", f.format),
                ));
            }
            if let Some(ca) = &f.ca {
                if target.transport != Transport::Tls {
                    return Err(bad("ca", "only a tls:// forward takes a CA".into()));
                }
                if ca.len() > MAX_PEM || !ca.contains("-----BEGIN CERTIFICATE-----") {
                    return Err(bad(
                        "ca",
                        format!("PEM certificates (at most {MAX_PEM} bytes)"),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(url: &str) -> Forward {
        Forward {
            url: url.into(),
            ca: None,
            format: rfc5424(),
        }
    }

    #[test]
    fn urls_name_a_transport_host_and_port() {
        let t = forward("tcp://logs.example.com:601").target().unwrap();
        assert_eq!(
            (t.transport, t.host.as_str(), t.port),
            (Transport::Tcp, "logs.example.com", 601)
        );
        let t = forward("udp://[fd00::1]:514").target().unwrap();
        assert_eq!((t.transport, t.host.as_str()), (Transport::Udp, "fd00::1"));
        assert_eq!(t.to_string(), "udp://[fd00::1]:514");
        for bad in [
            "logs:601",
            "http://logs:80",
            "tcp://logs",
            "tcp://:601",
            "tcp://logs:0",
            "tcp://a b:601",
            "tls://logs:x",
        ] {
            assert!(forward(bad).target().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_config_is_checked_whole() {
        let ok = "[[forward]]\nurl = \"tls://10.0.0.1:6514\"\nca = \"-----BEGIN CERTIFICATE-----\\nx\"\n";
        assert_eq!(LogsConfig::parse(ok).unwrap().forward[0].format, "rfc5424");
        let ca_on_tcp =
            "[[forward]]\nurl = \"tcp://10.0.0.1:601\"\nca = \"-----BEGIN CERTIFICATE-----\"\n";
        assert!(LogsConfig::parse(ca_on_tcp)
            .unwrap_err()
            .contains("forward[0].ca"));
        let json = "[[forward]]\nurl = \"tcp://10.0.0.1:601\"\nformat = \"json\"\n";
        assert!(LogsConfig::parse(json)
            .unwrap_err()
            .contains("forward[0].format"));
        let many = "[[forward]]\nurl = \"tcp://a:1\"\n".repeat(MAX_FORWARDS + 1);
        assert!(LogsConfig::parse(&many).is_err());
        let t = tempfile::tempdir().unwrap();
        assert_eq!(LogsConfig::load(&t.path().join("none")), Ok(None));
    }
}
