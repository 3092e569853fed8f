//! The Prometheus endpoint, on when user-data's `berth.metrics` says where to listen
//! (`/etc/berth/metrics.toml`). A scrape (`GET /metrics`) reads everything fresh:
//! the machine's figures (`host`, node_exporter's names), init's services and the
//! booted version (`system`), each container's cgroup (`containers`, cAdvisor's
//! names), the image store and the pulls. Optional bearer token and TLS.
//!
//! It runs in the daemon, on its own threads, beside the API: the daemon already holds
//! what the containers' figures need (names, images, cgroups, links), so no other
//! process is kept in memory for it. The HTTP it speaks is the small part of HTTP/1.1
//! a scraper uses (one GET, then close), written here rather than linking a server.

#[cfg(test)]
mod alloc_count;
mod containers;
mod exposition;
mod host;
mod system;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_schema::metrics::MetricsConfig;

use crate::api::Shared;
pub use containers::Figures;
use exposition::{Exposition, Kind};

/// Each link's /proc/net/dev counters.
pub type NetDev = Vec<(String, Vec<u64>)>;

/// Files under /proc, /sys and the cgroups that a scrape reads are small; this much of
/// one is plenty.
const MAX_FILE: u64 = 1 << 20;
/// Scrapes served at once; more connections are closed at once.
const MAX_CONNECTIONS: usize = 4;
/// A request's head (request line and headers) larger than this is refused.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request, and to read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The store's figures walk its layer records: once per this long at most.
const STORE_EVERY: Duration = Duration::from_secs(30);

pub(crate) fn read_bounded(path: &Path) -> Option<String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE).read_to_string(&mut text))
        .ok()?;
    Some(text)
}

/// Pulls by the API and by container starts, since the daemon started.
pub struct Pulls {
    ok: AtomicU64,
    failed: AtomicU64,
    micros: AtomicU64,
}

pub static PULLS: Pulls = Pulls {
    ok: AtomicU64::new(0),
    failed: AtomicU64::new(0),
    micros: AtomicU64::new(0),
};

impl Pulls {
    pub fn record(&self, took: Duration, ok: bool) {
        let counter = if ok { &self.ok } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.micros.fetch_add(micros, Ordering::Relaxed);
    }
}

struct Endpoint {
    shared: Arc<Shared>,
    token: Option<String>,
    tls: Option<Arc<rustls::ServerConfig>>,
    store: Mutex<Option<(Instant, berth_store::store::Usage)>>,
    busy: AtomicUsize,
}

/// Listens where `config` says and serves scrapes on their own threads. An error
/// (the address taken, a bad certificate) is the caller's to say; the daemon runs on.
pub fn start(config: &MetricsConfig, shared: Arc<Shared>) -> Result<SocketAddr, String> {
    let address = config.address().map_err(|e| e.to_string())?;
    let tls = config
        .tls
        .as_ref()
        .map(server_config)
        .transpose()?
        .map(Arc::new);
    let listener =
        TcpListener::bind(address).map_err(|e| format!("listening on {address}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let endpoint = Arc::new(Endpoint {
        shared,
        token: config.token.clone(),
        tls,
        store: Mutex::new(None),
        busy: AtomicUsize::new(0),
    });
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || accept_loop(&listener, &endpoint))
        .map_err(|e| format!("starting the metrics thread: {e}"))?;
    Ok(bound)
}

fn server_config(tls: &berth_schema::metrics::Tls) -> Result<rustls::ServerConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(tls.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("berth.metrics.tls.cert: {e}"))?;
    if certs.is_empty() {
        return Err("berth.metrics.tls.cert: no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(tls.key.as_bytes())
        .map_err(|e| format!("berth.metrics.tls.key: {e}"))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("berth.metrics.tls: {e}"))
}

fn accept_loop(listener: &TcpListener, endpoint: &Arc<Endpoint>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else {
            continue;
        };
        if endpoint.busy.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            endpoint.busy.fetch_sub(1, Ordering::SeqCst);
            continue; // dropped: closed at once
        }
        let serving = endpoint.clone();
        let spawned = std::thread::Builder::new()
            .name("scrape".into())
            .spawn(move || {
                serving.connection(stream);
                serving.busy.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            endpoint.busy.fetch_sub(1, Ordering::SeqCst);
            eprintln!("berth-daemon: metrics: cannot start a thread for a scrape");
        }
    }
}

impl Endpoint {
    fn connection(&self, stream: TcpStream) {
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
        match &self.tls {
            None => self.exchange(stream),
            Some(config) => {
                let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                    return;
                };
                let mut tls = rustls::StreamOwned::new(conn, stream);
                self.exchange(&mut tls);
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        }
    }

    /// One request, one answer.
    fn exchange(&self, mut io: impl Read + Write) {
        let (status, extra, body): (&str, &str, Vec<u8>) = match read_head(&mut io) {
            Err(Refusal::Io) => return,
            Err(Refusal::TooLarge) => ("431 Request Header Fields Too Large", "", Vec::new()),
            Err(Refusal::Malformed) => ("400 Bad Request", "", Vec::new()),
            Ok(head) => self.answer(&head),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
            if status.starts_with("200") {
                exposition::CONTENT_TYPE
            } else {
                "text/plain; charset=utf-8"
            },
            body.len()
        );
        let _ = io.write_all(head.as_bytes());
        let _ = io.write_all(&body);
        let _ = io.flush();
    }

    fn answer(&self, head: &Head) -> (&'static str, &'static str, Vec<u8>) {
        if head.method != "GET" {
            return ("405 Method Not Allowed", "Allow: GET\r\n", Vec::new());
        }
        if let Some(token) = &self.token {
            let given = head
                .authorization
                .as_deref()
                .and_then(|a| a.strip_prefix("Bearer "));
            if !given.is_some_and(|g| same(g.trim().as_bytes(), token.as_bytes())) {
                return (
                    "401 Unauthorized",
                    "WWW-Authenticate: Bearer realm=\"berth\"\r\n",
                    b"a bearer token is needed\n".to_vec(),
                );
            }
        }
        if head.path != "/metrics" && !head.path.starts_with("/metrics?") {
            return ("404 Not Found", "", b"metrics are at /metrics\n".to_vec());
        }
        ("200 OK", "", self.scrape().into_bytes())
    }

    /// Everything, read now.
    fn scrape(&self) -> String {
        let started = Instant::now();
        let mut e = Exposition::with_capacity(64 * 1024);
        let links = read_bounded(Path::new("/proc/net/dev"))
            .map(|t| host::parse_netdev(&t))
            .unwrap_or_default();
        host::write(&mut e, &links);
        system::write(&mut e);
        // What the rows need, copied out: the supervisor's publish never waits on a
        // scrape's file reads.
        let snapshot: Vec<containers::Seen> = match self.shared.containers.lock() {
            Ok(c) => c.values().map(containers::Seen::of).collect(),
            Err(_) => Vec::new(),
        };
        containers::write(&mut e, &snapshot, &links);
        self.store_rows(&mut e);
        pull_rows(&mut e);
        process_rows(&mut e);
        e.single(
            "berth_scrape_duration_seconds",
            Kind::Gauge,
            "How long this scrape took to gather, up to this line.",
            started.elapsed().as_secs_f64(),
        );
        e.finish()
    }

    fn store_rows(&self, e: &mut Exposition) {
        let Ok(mut cached) = self.store.lock() else {
            return;
        };
        let fresh = cached
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < STORE_EVERY);
        if !fresh {
            match berth_store::store::Store::open(&self.shared.store, Default::default())
                .and_then(|s| s.usage())
            {
                Ok(u) => *cached = Some((Instant::now(), u)),
                Err(err) => eprintln!("berth-daemon: metrics: the image store: {err}"),
            }
        }
        let Some((_, u)) = cached.as_ref() else {
            return;
        };
        for (name, help, value) in [
            (
                "berth_store_images",
                "Image references in the store.",
                u.images as u64,
            ),
            (
                "berth_store_layers",
                "Layers in the store.",
                u.layers as u64,
            ),
            (
                "berth_store_layer_bytes",
                "Unpacked bytes of the store's layers.",
                u.layer_bytes,
            ),
            (
                "berth_store_container_roots",
                "Containers' writable root filesystems.",
                u.containers as u64,
            ),
        ] {
            e.single(name, Kind::Gauge, help, value);
        }
    }
}

fn pull_rows(e: &mut Exposition) {
    e.family(
        "berth_image_pulls_total",
        Kind::Counter,
        "Image pulls since the daemon started, by result.",
    );
    let ok = PULLS.ok.load(Ordering::Relaxed);
    let failed = PULLS.failed.load(Ordering::Relaxed);
    e.sample("berth_image_pulls_total", &[("result", "ok")], ok);
    e.sample("berth_image_pulls_total", &[("result", "failed")], failed);
    e.family(
        "berth_image_pull_duration_seconds",
        Kind::Summary,
        "Time spent pulling images.",
    );
    let seconds = PULLS.micros.load(Ordering::Relaxed) as f64 / 1e6;
    e.sample("berth_image_pull_duration_seconds_sum", &[], seconds);
    e.sample("berth_image_pull_duration_seconds_count", &[], ok + failed);
}

/// The daemon's own CPU and memory (the standard `process_` names exporters use).
fn process_rows(e: &mut Exposition) {
    // /proc/self/stat: utime and stime are fields 14 and 15, after the `(comm)` that
    // may hold blanks.
    if let Some(stat) = read_bounded(Path::new("/proc/self/stat")) {
        let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // Field 3 (state) is index 0 here, so 14 and 15 are 11 and 12.
        e.single(
            "process_cpu_seconds_total",
            Kind::Counter,
            "The daemon's user and system CPU time in seconds.",
            (ticks(11) + ticks(12)) as f64 / 100.0,
        );
    }
    if let Some(status) = read_bounded(Path::new("/proc/self/status")) {
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        e.single(
            "process_resident_memory_bytes",
            Kind::Gauge,
            "The daemon's resident memory size in bytes.",
            kb * 1024,
        );
    }
}

/// The parts of a request the endpoint looks at.
#[derive(Debug, PartialEq)]
struct Head {
    method: String,
    path: String,
    authorization: Option<String>,
}

#[derive(Debug, PartialEq)]
enum Refusal {
    /// Nothing to answer: the client went away or took too long.
    Io,
    TooLarge,
    Malformed,
}

/// Reads up to the blank line that ends a request's head (never more than
/// [`MAX_HEAD`]); a body, which a GET has none of, is not read.
fn read_head(io: &mut impl Read) -> Result<Head, Refusal> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // The whole head within IO_TIMEOUT (each read has it too): a client trickling a
    // byte at a time cannot hold a slot.
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        if Instant::now() > deadline {
            return Err(Refusal::Io);
        }
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end);
            break;
        }
        if buf.len() >= MAX_HEAD {
            return Err(Refusal::TooLarge);
        }
        let n = io.read(&mut chunk).map_err(|_| Refusal::Io)?;
        if n == 0 {
            return Err(Refusal::Io);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    parse_head(&buf)
}

fn parse_head(buf: &[u8]) -> Result<Head, Refusal> {
    let text = std::str::from_utf8(buf).map_err(|_| Refusal::Malformed)?;
    let mut lines = text.split("\r\n");
    let mut request = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(path), Some(version), None) = (
        request.next(),
        request.next(),
        request.next(),
        request.next(),
    ) else {
        return Err(Refusal::Malformed);
    };
    if !version.starts_with("HTTP/1.") || !path.starts_with('/') {
        return Err(Refusal::Malformed);
    }
    let mut authorization = None;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(Refusal::Malformed)?;
        if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(value.trim().to_string());
        }
    }
    Ok(Head {
        method: method.to_string(),
        path: path.to_string(),
        authorization,
    })
}

/// Compares a token in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads_are_parsed_and_bounded() {
        let head =
            parse_head(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer abc").unwrap();
        assert_eq!(
            head,
            Head {
                method: "GET".into(),
                path: "/metrics".into(),
                authorization: Some("Bearer abc".into()),
            }
        );
        for bad in [
            &b"GET /metrics\r\n"[..],
            b"GET metrics HTTP/1.1",
            b"GET / HTTP/1.1\r\nno colon",
            b"\xff",
        ] {
            assert_eq!(parse_head(bad), Err(Refusal::Malformed), "{bad:?}");
        }
        let mut huge = std::io::Cursor::new(vec![b'a'; 3 * MAX_HEAD]);
        assert_eq!(read_head(&mut huge), Err(Refusal::TooLarge));
        let mut cut = std::io::Cursor::new(b"GET / HTTP/1.1\r\n".to_vec());
        assert_eq!(read_head(&mut cut), Err(Refusal::Io));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same(b"0123456789abcdef", b"0123456789abcdeF"));
        assert!(!same(b"0123456789abcdef", b"0123456789abcde"));
    }
}

#[cfg(test)]
mod served {
    use super::*;

    fn get(at: SocketAddr, head: &str) -> String {
        let mut s = TcpStream::connect(at).unwrap();
        s.write_all(format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{head}\r\n").as_bytes())
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn a_scrape_answers_with_the_token_only() {
        let t = tempfile::tempdir().unwrap();
        let shared = Arc::new(Shared::new(
            t.path().join("logs"),
            t.path().join("store"),
            t.path().join("registries.toml"),
        ));
        let config =
            MetricsConfig::parse("listen = \"127.0.0.1:9\"\ntoken = \"0123456789abcdef\"\n")
                .unwrap();
        let config = MetricsConfig {
            listen: "127.0.0.1:0".into(),
            ..config
        };
        let at = start(&config, shared).unwrap();
        let refused = get(at, "");
        assert!(refused.starts_with("HTTP/1.1 401 "), "{refused}");
        let wrong = get(at, "Authorization: Bearer 0123456789abcdeX\r\n");
        assert!(wrong.starts_with("HTTP/1.1 401 "), "{wrong}");
        let ok = get(at, "Authorization: Bearer 0123456789abcdef\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("\r\nContent-Type: text/plain; version=0.0.4"),
            "{ok}"
        );
        let body = ok.split_once("\r\n\r\n").unwrap().1;
        assert!(body.contains("\nnode_memory_MemAvailable_bytes "), "{body}");
        assert!(body.contains("node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"}"));
        assert!(body.contains("\nprocess_resident_memory_bytes "));
        if std::env::var_os("BERTH_DUMP_METRICS").is_some() {
            std::fs::write("/tmp/berth-metrics.txt", body).unwrap();
        }
    }
}
