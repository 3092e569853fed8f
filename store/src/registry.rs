//! A client for the OCI distribution spec (v2 API): manifests and blobs, with
//! anonymous, bearer-token (Docker Hub's `WWW-Authenticate: Bearer realm=...` challenge,
//! token endpoint, scopes) and basic auth; mirrors; HTTPS with rustls and the CA bundle
//! (plus extra CAs), plain HTTP only for registries the config marks insecure; blob
//! downloads that resume with HTTP ranges and retry with backoff.
//!
//! Written on ureq rather than oci-client + reqwest: blocking I/O on one thread per
//! layer keeps an async runtime out of the store, and the protocol needs only a few
//! GETs (crates.md's trap: oci-client's `pull` buffers whole layers in memory).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

use crate::digest::Digest;
use crate::image::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use crate::reference::{Reference, DOCKER_HUB};

pub use berth_schema::registries::CONFIG_PATH;
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{url}: {source}")]
    Http {
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("{url}: HTTP {status}{}", if .body.is_empty() { String::new() } else { format!(": {}", .body) })]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url}: authentication failed: {why}")]
    Auth { url: String, why: String },
    #[error("{path}: {why}")]
    Config { path: PathBuf, why: String },
    #[error("{0}")]
    Protocol(String),
}

pub type Result<T> = std::result::Result<T, RegistryError>;

pub use berth_schema::registries::{Config, RegistriesError, RegistryConfig};

impl From<RegistriesError> for RegistryError {
    fn from(e: RegistriesError) -> RegistryError {
        RegistryError::Config {
            path: e.path,
            why: e.why,
        }
    }
}

pub struct Client {
    agent: ureq::Agent,
    config: Config,
    /// Bearer tokens by (host, scope).
    tokens: Mutex<HashMap<(String, String), String>>,
}

/// A manifest as fetched: its bytes, media type and digest.
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: Digest,
}

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";
const MAX_MANIFEST: u64 = 4 << 20;

fn load_certs(paths: &[PathBuf]) -> Result<Vec<ureq::tls::Certificate<'static>>> {
    let mut certs = Vec::new();
    for path in paths {
        let pem = match std::fs::read(path) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && path == Path::new(CA_BUNDLE) => {
                continue
            }
            Err(e) => {
                return Err(RegistryError::Config {
                    path: path.clone(),
                    why: e.to_string(),
                })
            }
        };
        for item in ureq::tls::parse_pem(&pem) {
            match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
                Ok(_) => {}
                Err(e) => {
                    return Err(RegistryError::Config {
                        path: path.clone(),
                        why: format!("bad PEM: {e}"),
                    })
                }
            }
        }
    }
    Ok(certs)
}

impl Client {
    pub fn new(config: Config) -> Result<Client> {
        let mut ca = vec![PathBuf::from(CA_BUNDLE)];
        ca.extend(config.ca_files.iter().cloned());
        let certs = load_certs(&ca)?;
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)))
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            // A stalled body counts as a dropped connection (and is resumed).
            .timeout_per_read(Some(Duration::from_secs(60)))
            .user_agent(concat!("berth-store/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(Client {
            agent,
            config,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The HTTP agent, with this config's CAs and timeouts, for a neighbour protocol
    /// (the updater's FleetLock) that should trust what the registries trust.
    pub fn http(&self) -> &ureq::Agent {
        &self.agent
    }

    /// The hosts to try for `r`'s registry: its mirrors, then its own API host.
    pub fn hosts(&self, r: &Reference) -> Vec<String> {
        let mut hosts = self.config.for_host(&r.registry).mirrors;
        hosts.push(r.api_host().to_string());
        hosts
    }

    fn url(&self, host: &str, path: &str) -> String {
        let insecure = self.config.for_host(host).insecure
            || (host == crate::reference::DOCKER_HUB_API
                && self.config.for_host(DOCKER_HUB).insecure);
        format!("{}://{host}{path}", if insecure { "http" } else { "https" })
    }

    /// GET with auth: anonymous first, then whatever the 401's challenge asks for.
    fn get(
        &self,
        host: &str,
        repository: &str,
        path: &str,
        accept: Option<&str>,
        range_from: Option<u64>,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        let url = self.url(host, path);
        let scope = format!("repository:{repository}:pull");
        let cached = self
            .tokens
            .lock()
            .ok()
            .and_then(|t| t.get(&(host.to_string(), scope.clone())).cloned());
        let send = |auth: Option<&str>| {
            let mut req = self.agent.get(&url);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some(from) = range_from {
                req = req.header("Range", format!("bytes={from}-"));
            }
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            req.call().map_err(|e| RegistryError::Http {
                url: url.clone(),
                source: Box::new(e),
            })
        };
        let resp = send(cached.as_deref())?;
        if resp.status().as_u16() != 401 {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let auth = self.answer(host, &scope, &challenge, &url)?;
        let resp = send(Some(&auth))?;
        if resp.status().as_u16() == 401 {
            return Err(RegistryError::Auth {
                url,
                why: "the registry refused the credentials".into(),
            });
        }
        Ok(resp)
    }

    /// An Authorization header value answering a WWW-Authenticate challenge.
    fn answer(&self, host: &str, scope: &str, challenge: &str, url: &str) -> Result<String> {
        let creds = self.credentials(host);
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        let params = parse_challenge(params);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => {
                let (u, p) = creds.ok_or_else(|| RegistryError::Auth {
                    url: url.into(),
                    why: format!(
                        "basic auth required and no credentials for {host} in {CONFIG_PATH}"
                    ),
                })?;
                Ok(basic(&u, &p))
            }
            "bearer" => {
                let realm = params.get("realm").ok_or_else(|| RegistryError::Auth {
                    url: url.into(),
                    why: "bearer challenge without a realm".into(),
                })?;
                check_realm(url, realm)?;
                let mut token_url = format!("{realm}?");
                if let Some(service) = params.get("service") {
                    token_url.push_str(&format!("service={}&", query_escape(service)));
                }
                let scope = params.get("scope").map_or(scope, String::as_str);
                token_url.push_str(&format!("scope={}", query_escape(scope)));
                let mut req = self.agent.get(&token_url);
                if let Some((u, p)) = &creds {
                    req = req.header("Authorization", basic(u, p));
                }
                let resp = req.call().map_err(|e| RegistryError::Http {
                    url: token_url.clone(),
                    source: Box::new(e),
                })?;
                let status = resp.status().as_u16();
                let body =
                    read_limited(resp.into_body(), 1 << 20).map_err(|e| RegistryError::Auth {
                        url: token_url.clone(),
                        why: e.to_string(),
                    })?;
                if status != 200 {
                    return Err(RegistryError::Auth {
                        url: token_url,
                        why: format!(
                            "token endpoint said HTTP {status}: {}",
                            String::from_utf8_lossy(&body).trim()
                        ),
                    });
                }
                #[derive(Deserialize)]
                struct Token {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let t: Token = serde_json::from_slice(&body).map_err(|e| RegistryError::Auth {
                    url: token_url.clone(),
                    why: format!("bad token response: {e}"),
                })?;
                let token = t
                    .token
                    .or(t.access_token)
                    .ok_or_else(|| RegistryError::Auth {
                        url: token_url,
                        why: "no token in the response".into(),
                    })?;
                let header = format!("Bearer {token}");
                if let Ok(mut cache) = self.tokens.lock() {
                    cache.insert((host.to_string(), scope.to_string()), header.clone());
                }
                Ok(header)
            }
            other => Err(RegistryError::Auth {
                url: url.into(),
                why: format!("unsupported auth scheme {other:?}"),
            }),
        }
    }

    fn credentials(&self, host: &str) -> Option<(String, String)> {
        let c = self.config.for_host(host);
        let c = if c.username.is_none() && host == crate::reference::DOCKER_HUB_API {
            self.config.for_host(DOCKER_HUB)
        } else {
            c
        };
        Some((c.username?, c.password.unwrap_or_default()))
    }

    /// The manifest (or index) `reference` names, checked against its digest when the
    /// reference pins one (or the registry says one).
    pub fn manifest(&self, host: &str, repository: &str, reference: &str) -> Result<Fetched> {
        let path = format!("/v2/{repository}/manifests/{reference}");
        let resp = self.get(host, repository, &path, Some(MANIFEST_ACCEPT), None)?;
        let url = self.url(host, &path);
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let media_type = header("content-type").unwrap_or_default();
        let said = header("docker-content-digest");
        let body = read_limited(resp.into_body(), MAX_MANIFEST)
            .map_err(|e| RegistryError::Protocol(format!("{url}: {e}")))?;
        if status != 200 {
            return Err(RegistryError::Status {
                url,
                status,
                body: String::from_utf8_lossy(&body).chars().take(300).collect(),
            });
        }
        let digest = Digest::of(&body);
        let expected = Digest::parse(reference)
            .ok()
            .or_else(|| said.and_then(|s| Digest::parse(&s).ok()));
        if let Some(e) = expected {
            if e != digest {
                return Err(RegistryError::Protocol(format!(
                    "{url}: manifest digest mismatch: expected {e}, got {digest}"
                )));
            }
        }
        let media_type = media_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        if ![OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST].contains(&media_type.as_str())
            && !media_type.is_empty()
            && media_type != "application/json"
        {
            return Err(RegistryError::Protocol(format!(
                "{url}: unsupported manifest type {media_type:?} (schema 1 manifests are not supported)"
            )));
        }
        Ok(Fetched {
            bytes: body,
            media_type,
            digest,
        })
    }

    /// A blob's bytes from `offset` on: a response reader and whether the server
    /// honoured the range (206) or sent it all again (200).
    pub fn blob_from(
        &self,
        host: &str,
        repository: &str,
        digest: &Digest,
        offset: u64,
    ) -> Result<(Box<dyn Read + Send>, bool)> {
        let path = format!("/v2/{repository}/blobs/{digest}");
        let resp = self.get(
            host,
            repository,
            &path,
            None,
            (offset > 0).then_some(offset),
        )?;
        let status = resp.status().as_u16();
        match status {
            200 => Ok((Box::new(resp.into_body().into_reader()), false)),
            206 => Ok((Box::new(resp.into_body().into_reader()), true)),
            _ => {
                let body = read_limited(resp.into_body(), 4096).unwrap_or_default();
                Err(RegistryError::Status {
                    url: self.url(host, &path),
                    status,
                    body: String::from_utf8_lossy(&body).chars().take(300).collect(),
                })
            }
        }
    }
}

/// Refuses a token realm that would weaken the registry's transport: a registry reached
/// over HTTPS may only send us to an HTTPS token endpoint (otherwise the credentials,
/// and the token, would cross the network in clear, to whoever answers a plain-HTTP
/// connection). Only http and https realms are followed at all.
fn check_realm(registry_url: &str, realm: &str) -> Result<()> {
    let lower = realm.to_ascii_lowercase();
    let refuse = |why: &str| {
        Err(RegistryError::Auth {
            url: registry_url.into(),
            why: format!("token realm {realm:?} refused: {why}"),
        })
    };
    if lower.starts_with("https://") {
        return Ok(());
    }
    if !lower.starts_with("http://") {
        return refuse("not an http or https URL");
    }
    if registry_url.to_ascii_lowercase().starts_with("https://") {
        return refuse("plain HTTP for a registry reached over HTTPS");
    }
    Ok(())
}

fn read_limited(body: ureq::Body, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    body.into_reader().take(limit + 1).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(std::io::Error::other(format!(
            "response larger than {limit} bytes"
        )));
    }
    Ok(out)
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// `realm="...",service="...",scope="..."` (RFC 7235 auth-params; quoted or token).
fn parse_challenge(params: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = params.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = q.char_indices();
            let mut end = q.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &q[end.min(q.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        out.insert(key, value);
        rest = next.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
    }
    out
}

/// Percent-encodes a query value (RFC 3986 unreserved characters, and `:` and `/`,
/// which scopes carry and token servers expect as they are, pass).
fn query_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_as_docker_hub_sends_them() {
        let p = parse_challenge(
            r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        );
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/nginx:pull");
        let p = parse_challenge(r#"realm=x, error="insufficient_scope""#);
        assert_eq!(p["realm"], "x");
        assert_eq!(p["error"], "insufficient_scope");
        assert_eq!(
            query_escape("repository:a/b:pull,push"),
            "repository:a/b:pull%2Cpush"
        );
        assert_eq!(basic("u", "p"), "Basic dTpw");
    }

    #[test]
    fn an_https_registry_never_sends_us_to_a_plain_http_realm() {
        let tls = "https://registry.test/v2/a/manifests/1";
        let plain = "http://registry.test:5000/v2/a/manifests/1";
        assert!(check_realm(tls, "https://auth.test/token").is_ok());
        assert!(check_realm(plain, "http://auth.test/token").is_ok());
        assert!(check_realm(plain, "https://auth.test/token").is_ok());
        for bad in [
            "http://auth.test/token",
            "HTTP://auth.test/",
            "ftp://auth.test/",
        ] {
            let e = check_realm(tls, bad).unwrap_err().to_string();
            assert!(e.contains("refused"), "{e}");
        }
    }
}
