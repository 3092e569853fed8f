//! The Prometheus endpoint, scraped by Debian's own Prometheus on this machine through
//! a hostfwd, over TLS with a test CA (made here with openssl) and a bearer token. A
//! guest runs two containers: `hog`, which is made to fill 48 MiB of its /dev/shm, and
//! `oomer`, which outgrows its 16 MiB limit. Checked: `promtool check metrics` takes a
//! scrape (but for node_exporter's own camelCase meminfo names), Prometheus sees
//! `up == 1`, hog's working set rising and oomer's OOM kill, and `/var`'s free space is
//! df's. A scrape without the token is refused. The same boot has `crasher`, which
//! exits 3 a moment after each start: `berthctl events` shows its start, die (with the
//! code) and restart in order, and oomer's OOM kill. One boot for all.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{assert_running, boot, disk_config, new_disk, pki};
use berth_tests::http::free_port;

const TOKEN: &str = "metrics-test-token-0123456789";
const MIB: f64 = 1024.0 * 1024.0;

fn user_data(cert: &str, key: &str) -> String {
    format!(
        "#cloud-config\n\
         berth:\n  metrics:\n    listen: 0.0.0.0:9100\n    token: {TOKEN}\n    tls:\n      \
         cert: |\n{}      key: |\n{}  \
         containers:\n    hog:\n      image: berth.local/busybox:latest\n      \
         command: [\"sh\", \"-c\", \"echo hog up; exec sleep 100000\"]\n      restart: always\n    \
         oomer:\n      image: berth.local/busybox:latest\n      memory: 16M\n      restart: \"no\"\n      \
         command: [\"sh\", \"-c\", \"sleep 5; echo eating; dd if=/dev/zero of=/dev/null bs=64M count=1; echo survived\"]\n    \
         crasher:\n      image: berth.local/busybox:latest\n      restart: on-failure\n      \
         command: [\"sh\", \"-c\", \"sleep 1; exit 3\"]\n",
        pki::yaml_block(cert, 8),
        pki::yaml_block(key, 8),
    )
}

/// `GET path` over TLS (the test CA) with `token`, if any: the status line and body.
fn scrape_tls(port: u16, ca: &Path, token: Option<&str>) -> Result<(String, String), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| e.to_string())? {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let sock = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        tls,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    match tls.read_to_end(&mut raw) {
        Ok(_) => {}
        Err(e) if !raw.is_empty() && e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(e.to_string()),
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or(format!("no HTTP answer: {text:?}"))?;
    Ok((
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    ))
}

/// The value of the sample whose line starts with `series` (name and labels, as
/// written), in a scrape.
fn value(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Percent-encodes a PromQL query for a URL.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Prometheus on this machine, scraping the guest every 2 s; killed when dropped.
struct Prometheus {
    child: std::process::Child,
    port: u16,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(dir: &Path, target: u16) -> Prometheus {
        let port = free_port();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 2s\n  scrape_timeout: 2s\n\
                 scrape_configs:\n  - job_name: berth\n    scheme: https\n    \
                 authorization:\n      credentials: {TOKEN}\n    \
                 tls_config:\n      ca_file: {}\n    \
                 static_configs:\n      - targets: [\"127.0.0.1:{target}\"]\n",
                dir.join("ca.pem").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian's prometheus package)");
        Prometheus { child, port }
    }

    /// An instant query's first value, if the query has one.
    fn query(&self, q: &str) -> Option<f64> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            s,
            "GET /api/v1/query?query={} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n",
            encode(q)
        )
        .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let body = text.split_once("\r\n\r\n")?.1;
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Waits (`patience` at most) for `q`'s value to satisfy `ok`; the last value.
    fn wait_for(&self, q: &str, patience: Duration, ok: impl Fn(f64) -> bool) -> Option<f64> {
        let deadline = Instant::now() + patience;
        loop {
            let v = self.query(q);
            if v.is_some_and(&ok) || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// promtool's complaints about a scrape: none may be left but node_exporter's own
/// meminfo names (`node_memory_MemTotal_bytes` is camelCase, and is what dashboards use).
fn promtool_complaints(scrape: &str, dir: &Path) -> Vec<String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    std::fs::write(dir.join("scrape.txt"), scrape).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // 0: clean; 3: lint problems only (1 would be a parse error).
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "promtool failed ({:?}): {text}",
        out.status
    );
    text.lines()
        .filter(|l| {
            !(l.starts_with("node_memory_")
                && l.ends_with("metric names should be written in 'snake_case' not 'camelCase'"))
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn prometheus_scrapes_host_services_and_containers() {
    let t = tempfile::tempdir().unwrap();
    let (cert, key) = pki::make(t.path(), "127.0.0.1");
    let ud = t.path().join("user-data");
    std::fs::write(&ud, user_data(&cert, &key)).unwrap();
    let port = free_port();
    new_disk(t.path());
    let mut cfg = disk_config("metrics", t.path());
    cfg.extra_args = vec![
        "-fw_cfg".into(),
        format!("name=opt/berth/user-data,file={}", ud.display()),
        "-netdev".into(),
        format!("user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:9100"),
        "-device".into(),
        "virtio-net-pci,netdev=n0".into(),
    ];
    let vm = boot(cfg);
    let mut testd = vm.testd().expect("testd");
    assert_running(&mut testd, "hog");
    let ca: PathBuf = t.path().join("ca.pem");

    // Without the token: refused, over TLS.
    let deadline = Instant::now() + Duration::from_secs(60);
    let refused = loop {
        match scrape_tls(port, &ca, None) {
            Ok(answer) => break answer,
            Err(e) if Instant::now() > deadline => panic!("no endpoint: {e}\n{}", vm.console()),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    };
    assert!(refused.0.contains(" 401 "), "{refused:?}");
    let (status, scrape) = scrape_tls(port, &ca, Some(TOKEN)).expect("scrape");
    assert!(status.contains(" 200 "), "{status}");

    let left = promtool_complaints(&scrape, t.path());
    assert!(left.is_empty(), "promtool: {left:?}");
    for series in [
        "node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"}",
        "node_memory_MemAvailable_bytes",
        "node_network_receive_bytes_total{device=\"eth0\"}",
        "node_load1",
        "node_boot_time_seconds",
        "berth_service_state{service=\"berth-daemon\",state=\"ready\"}",
        "container_cpu_usage_seconds_total{name=\"hog\",image=\"berth.local/busybox:latest\"}",
        "container_network_receive_bytes_total{name=\"hog\",image=\"berth.local/busybox:latest\",interface=\"eth0\"}",
        "berth_container_state{name=\"hog\",state=\"running\"}",
        "berth_store_images",
    ] {
        assert!(value(&scrape, series).is_some(), "no {series} in:\n{scrape}");
    }
    assert_eq!(
        value(
            &scrape,
            "berth_service_state{service=\"berth-daemon\",state=\"ready\"}"
        ),
        Some(1.0)
    );
    assert!(scrape.contains("\nberth_info{version=\""), "{scrape}");

    // /var's free space is df's (the same statfs, a moment apart).
    let df = testd.sh("df -B1 /var | tail -n 1").expect("df");
    let avail: f64 = df
        .stdout
        .split_whitespace()
        .nth(3)
        .and_then(|v| v.parse().ok())
        .expect("df's Available");
    let (_, again) = scrape_tls(port, &ca, Some(TOKEN)).expect("scrape");
    let series = again
        .lines()
        .find(|l| {
            l.starts_with("node_filesystem_avail_bytes{") && l.contains("mountpoint=\"/var\"}")
        })
        .unwrap_or_else(|| panic!("no /var in:\n{again}"));
    let ours: f64 = series.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(
        (ours - avail).abs() <= (avail * 0.005).max(MIB),
        "/var available: ours {ours}, df {avail}"
    );

    // Prometheus itself: the target is up.
    let prometheus = Prometheus::start(t.path(), port);
    let up = prometheus.wait_for("up{job=\"berth\"}", Duration::from_secs(90), |v| v == 1.0);
    assert_eq!(
        up,
        Some(1.0),
        "prometheus: {}",
        std::fs::read_to_string(t.path().join("prometheus.log")).unwrap_or_default()
    );

    // hog's working set rises by what it writes to its /dev/shm (a tmpfs: anonymous
    // memory the cgroup is charged for).
    let ws = "container_memory_working_set_bytes{name=\"hog\"}";
    let before = prometheus
        .wait_for(ws, Duration::from_secs(30), |_| true)
        .expect("hog's working set");
    let fill = testd
        .sh("berthctl exec hog dd if=/dev/zero of=/dev/shm/fill bs=1048576 count=48 2>&1")
        .expect("exec");
    assert!(fill.success(), "{} {}", fill.stdout, fill.stderr);
    let after = prometheus.wait_for(ws, Duration::from_secs(30), |v| v >= before + 40.0 * MIB);
    assert!(
        after.is_some_and(|v| v >= before + 40.0 * MIB),
        "working set {before} then {after:?}"
    );

    // oomer's OOM kill is counted.
    let oom = prometheus.wait_for(
        "container_oom_events_total{name=\"oomer\"}",
        Duration::from_secs(90),
        |v| v >= 1.0,
    );
    if !oom.is_some_and(|v| v >= 1.0) {
        let why = testd
            .sh(
                "berthctl ps -a; berthctl logs oomer; berthctl inspect oomer; \
                 cat /sys/fs/cgroup/berth/berth-daemon/containers/oomer/memory.events \
                 /sys/fs/cgroup/berth/berth-daemon/containers/oomer/memory.max; \
                 berthctl service logs berth-daemon -n 80",
            )
            .map(|o| format!("{}{}", o.stdout, o.stderr))
            .unwrap_or_default();
        panic!("oom events {oom:?}\n{why}");
    }

    // berthctl events: crasher's start, die (code 3) and restart, in order, then its
    // next start; oomer's OOM kill.
    let events = testd
        .sh("berthctl events --since 10m --until now")
        .expect("berthctl events");
    assert!(events.success(), "{} {}", events.stdout, events.stderr);
    let crasher: Vec<&str> = events
        .stdout
        .lines()
        .filter_map(|l| l.split_once(" container ").map(|(_, e)| e))
        .filter(|e| e.split(' ').nth(1) == Some("crasher"))
        .collect();
    let actions: Vec<&str> = crasher.iter().filter_map(|e| e.split(' ').next()).collect();
    assert!(
        actions.len() >= 4 && actions[..4] == ["start", "die", "restart", "start"],
        "{}",
        events.stdout
    );
    assert!(crasher[1].contains("exitCode=3"), "{}", events.stdout);
    assert!(
        events.stdout.contains(" container oom oomer ("),
        "{}",
        events.stdout
    );
    let json = testd
        .sh("berthctl events --json --since 10m --until now")
        .expect("berthctl events --json");
    let first: serde_json::Value =
        serde_json::from_str(json.stdout.lines().next().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}: {}", json.stdout));
    assert!(
        first["Type"].is_string() && first["Actor"]["ID"].is_string() && first["timeNano"].is_u64(),
        "{first}"
    );
    // --since takes only a time.
    let bad = testd
        .sh("berthctl events --since yesterday")
        .expect("berthctl");
    assert!(
        !bad.success() && bad.stderr.contains("is not a time"),
        "{}",
        bad.stderr
    );

    // What a scrape costs: the daemon's CPU time over 20 scrapes, its memory after.
    let cpu = |s: &str| value(s, "process_cpu_seconds_total").unwrap_or(0.0);
    let (_, first) = scrape_tls(port, &ca, Some(TOKEN)).expect("scrape");
    let mut last = first.clone();
    for _ in 0..20 {
        last = scrape_tls(port, &ca, Some(TOKEN)).expect("scrape").1;
    }
    eprintln!(
        "measure: metrics: scrape {} bytes, gathered in {:.1} ms, daemon CPU {:.1} ms per scrape \
         (TLS included, TCG guest), daemon RSS {:.1} MB",
        last.len(),
        value(&last, "berth_scrape_duration_seconds").unwrap_or(0.0) * 1000.0,
        (cpu(&last) - cpu(&first)) * 1000.0 / 20.0,
        value(&last, "process_resident_memory_bytes").unwrap_or(0.0) / 1e6
    );
}
