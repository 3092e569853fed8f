//! HTTP to a metadata service on its link-local address (169.254.169.254), or to the
//! URL on the kernel command line: short timeouts, bounded bodies, and retries with
//! backoff inside a total budget, so a service that does not answer costs the boot a
//! bounded time.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::userdata::MAX_DOCUMENT;

pub const METADATA: &str = "http://169.254.169.254";

/// What came back: the status and the body (at most a document's size).
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

pub struct Http {
    agent: ureq::Agent,
}

impl Http {
    pub fn new() -> Http {
        // https (berth.config_url) is checked against the image's CA bundle, plus what
        // an earlier boot's user-data added to it.
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(Arc::new(ca_bundle())))
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(2)))
            .timeout_recv_response(Some(Duration::from_secs(5)))
            .timeout_per_read(Some(Duration::from_secs(5)))
            .user_agent(concat!("berth-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Http { agent }
    }

    /// One request; an error when no answer came (the caller may retry).
    pub fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Answer, String> {
        let result = match method {
            "PUT" => {
                let mut r = self.agent.put(url);
                for (k, v) in headers {
                    r = r.header(*k, *v);
                }
                r.send_empty()
            }
            _ => {
                let mut r = self.agent.get(url);
                for (k, v) in headers {
                    r = r.header(*k, *v);
                }
                r.call()
            }
        };
        let response = result.map_err(|e| format!("{method} {url}: {e}"))?;
        let status = response.status().as_u16();
        // One byte past a document's limit, so an oversized one is seen (and refused
        // with its size) rather than cut short.
        let limit = u64::try_from(MAX_DOCUMENT).unwrap_or(u64::MAX) + 1;
        let mut body = Vec::new();
        response
            .into_body()
            .into_reader()
            .take(limit)
            .read_to_end(&mut body)
            .map_err(|e| format!("{method} {url}: reading the answer: {e}"))?;
        Ok(Answer { status, body })
    }
}

pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The certificates of the CA bundle (none when it is missing or unreadable: https then
/// fails, saying the server's certificate is not trusted).
fn ca_bundle() -> Vec<ureq::tls::Certificate<'static>> {
    let pem = std::fs::read(CA_BUNDLE).unwrap_or_default();
    ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect()
}

/// Calls `attempt` until it gives an answer or `budget` is spent, waiting 0.5 s, 1 s,
/// 2 s ... (at most 8 s) in between; the last error after that.
pub fn with_retries<T>(
    budget: Duration,
    mut attempt: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + budget;
    let mut wait = Duration::from_millis(500);
    loop {
        match attempt() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() + wait > deadline => {
                return Err(format!("{e} (gave up after {} s)", budget.as_secs()))
            }
            Err(_) => {
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(8));
            }
        }
    }
}
