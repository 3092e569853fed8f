//! `/etc/berth/metrics.toml`: user-data's `berth.metrics`, as the agent writes it; the
//! daemon serves the Prometheus endpoint from it (off when the file is absent).
//!
//! ```toml
//! listen = "0.0.0.0:9100"
//! token = "a-long-random-secret"    # optional: scrapes must send `Authorization: Bearer`
//! [tls]                             # optional: HTTPS with this certificate chain and key
//! cert = "-----BEGIN CERTIFICATE-----\n..."
//! key = "-----BEGIN PRIVATE KEY-----\n..."
//! ```

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Where the agent writes it (0600: it may hold the token and the key).
pub const CONFIG_PATH: &str = "/etc/berth/metrics.toml";
/// A bearer token shorter than this is guessable; longer is not a token.
pub const TOKEN_LEN: std::ops::RangeInclusive<usize> = 16..=256;
/// A PEM certificate chain or key larger than this is not one.
pub const MAX_PEM: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `ADDRESS:PORT` to listen on (`0.0.0.0:9100`, `[::]:9100`, `10.0.0.5:9100`).
    pub listen: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
}

/// The server's certificate chain and private key, PEM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert: String,
    pub key: String,
}

pub use crate::Invalid;

fn invalid(key: &'static str, why: impl Into<String>) -> Invalid {
    Invalid {
        section: "metrics",
        key,
        why: why.into(),
    }
}

impl MetricsConfig {
    pub fn parse(text: &str) -> Result<MetricsConfig, String> {
        let c: MetricsConfig = toml::from_str(text).map_err(|e| e.message().to_string())?;
        c.check().map_err(|e| e.to_string())?;
        Ok(c)
    }

    /// None when the file is absent (metrics off).
    pub fn load(path: &Path) -> Result<Option<MetricsConfig>, String> {
        let Some(text) = crate::read_settings(path, 4 * MAX_PEM as u64)? else {
            return Ok(None);
        };
        MetricsConfig::parse(&text)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn address(&self) -> Result<SocketAddr, Invalid> {
        self.listen.parse().map_err(|_| {
            invalid(
                "listen",
                format!("{:?} is not ADDRESS:PORT (like 0.0.0.0:9100)", self.listen),
            )
        })
    }

    /// Every value well formed; the first that is not, named. (The certificate and key
    /// are parsed for real by the daemon, which says on the console what it refused.)
    pub fn check(&self) -> Result<(), Invalid> {
        if self.address()?.port() == 0 {
            return Err(invalid("listen", "the port must not be 0"));
        }
        if let Some(t) = &self.token {
            if !TOKEN_LEN.contains(&t.len()) || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(invalid(
                    "token",
                    format!(
                        "{} to {} printable characters without blanks",
                        TOKEN_LEN.start(),
                        TOKEN_LEN.end()
                    ),
                ));
            }
        }
        if let Some(tls) = &self.tls {
            for (key, pem, marker) in [
                ("tls.cert", &tls.cert, "-----BEGIN CERTIFICATE-----"),
                ("tls.key", &tls.key, "PRIVATE KEY-----"),
            ] {
                if pem.len() > MAX_PEM || !pem.contains(marker) {
                    return Err(invalid(
                        key,
                        format!("PEM text with {marker} (at most {MAX_PEM} bytes)"),
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

    #[test]
    fn a_listen_address_is_needed_and_checked() {
        let c = MetricsConfig::parse("listen = \"0.0.0.0:9100\"\n").unwrap();
        assert_eq!(c.address().unwrap().port(), 9100);
        assert!(MetricsConfig::parse("listen = \"[::]:9100\"\n").is_ok());
        for bad in [
            "listen = \"9100\"",
            "listen = \"0.0.0.0:0\"",
            "",
            "port = 9100",
        ] {
            assert!(MetricsConfig::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tokens_and_pem_are_checked() {
        let ok = "listen = \"127.0.0.1:9100\"\ntoken = \"0123456789abcdef\"\n";
        assert!(MetricsConfig::parse(ok).is_ok());
        let short = "listen = \"127.0.0.1:9100\"\ntoken = \"short\"\n";
        assert!(MetricsConfig::parse(short)
            .unwrap_err()
            .contains("berth.metrics.token"));
        let blank = "listen = \"127.0.0.1:9100\"\ntoken = \"0123456789 abcdef\"\n";
        assert!(MetricsConfig::parse(blank).is_err());
        let tls = "listen = \"127.0.0.1:9100\"\n[tls]\ncert = \"nope\"\nkey = \"-----BEGIN PRIVATE KEY-----\"\n";
        assert!(MetricsConfig::parse(tls).unwrap_err().contains("tls.cert"));
    }

    #[test]
    fn absent_is_off() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(MetricsConfig::load(&t.path().join("none")), Ok(None));
        std::fs::write(t.path().join("m"), "listen = \"0.0.0.0:9100\"\n").unwrap();
        assert!(MetricsConfig::load(&t.path().join("m")).unwrap().is_some());
    }
}
