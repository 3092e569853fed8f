//! Pulls from a real registry: Debian's `docker-registry` on 127.0.0.1, loaded with
//! skopeo from OCI layouts these tests build (multi-layer with gzip, zstd and plain
//! layers and whiteouts; a multi-platform index), then a tampered blob and a connection
//! dropped mid-layer (through a proxy that cuts it once).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{gzip, gzipped, layer, oci_layout, zstd, E};
use berth_store::Digest;

struct Registry {
    child: Child,
    port: u16,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn registry() -> Registry {
    registry_with("")
}

/// A registry whose config ends with `extra` (an `auth:` or `tls:` section).
fn registry_with(extra: &str) -> Registry {
    registry_on(extra, None)
}

/// A registry serving the storage of `shared` (another registry's) when given.
fn registry_on(extra: &str, shared: Option<&Path>) -> Registry {
    assert!(
        Path::new("/usr/bin/docker-registry").exists(),
        "docker-registry missing: `make deps` installs it"
    );
    let dir = tempfile::tempdir().unwrap();
    let data = shared.map_or_else(|| dir.path().join("data"), Path::to_path_buf);
    let port = free_port();
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{extra}",
            data.display()
        ),
    )
    .unwrap();
    let child = Command::new("/usr/bin/docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the registry did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Registry {
        child,
        port,
        data,
        _dir: dir,
    }
}

/// skopeo copy from an OCI layout into the registry.
fn push(layout: &Path, tag: &str, port: u16, dest: &str, all: bool) {
    let mut cmd = Command::new("skopeo");
    cmd.args(["--insecure-policy", "copy", "--dest-tls-verify=false", "-q"]);
    if all {
        cmd.arg("--all");
    }
    let out = cmd
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://127.0.0.1:{port}/{dest}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn store_cli(root: &Path, registries: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_berth-store"))
        .arg("--root")
        .arg(root)
        .args(["--min-free-mib", "0", "--min-free-percent", "0"])
        .args(args)
        .arg("--registries")
        .arg(registries)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A registries.toml marking `host` insecure (plain HTTP).
fn insecure(dir: &Path, host: &str) -> PathBuf {
    let path = dir.join("registries.toml");
    std::fs::write(&path, format!("[registry.\"{host}\"]\ninsecure = true\n")).unwrap();
    path
}

/// Incompressible bytes (xorshift), so a layer is as large on the wire as on disk.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

#[test]
fn a_multi_layer_image_pulls_with_gzip_zstd_and_whiteouts() {
    let reg = registry();
    let t = tempfile::tempdir().unwrap();
    let l1 = layer(&[
        E::File("bin/tool", 0o755, b"v1"),
        E::File("etc/old.conf", 0o644, b"old"),
        E::File("etc/keep.conf", 0o644, b"keep"),
    ]);
    let l2 = layer(&[
        E::File("bin/tool", 0o755, b"v2"),
        E::File("etc/.wh.old.conf", 0o644, b""),
    ]);
    let l3 = layer(&[E::File("data/blob", 0o644, &noise(300_000, 7))]);
    let layout = t.path().join("layout");
    let (config, _) = oci_layout(
        &layout,
        &[
            gzipped(&l1),
            (
                l2.clone(),
                zstd(&l2),
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
            gzipped(&l3),
        ],
        serde_json::json!({"org.opencontainers.image.ref.name": "v1"}),
    );
    push(&layout, "v1", reg.port, "test/app:v1", false);
    let host = format!("127.0.0.1:{}", reg.port);
    let regs = insecure(t.path(), &host);
    let root = t.path().join("store");
    let reference = format!("{host}/test/app:v1");
    let (ok, out, err) = store_cli(&root, &regs, &["pull", &reference]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("{reference} {config}"));
    let (ok, out, err) = store_cli(&root, &regs, &["rootfs", "create", &reference, "c"]);
    assert!(ok, "{err}");
    let rootfs = PathBuf::from(out.trim());
    assert_eq!(std::fs::read(rootfs.join("bin/tool")).unwrap(), b"v2");
    assert!(!rootfs.join("etc/old.conf").exists());
    assert_eq!(
        std::fs::read(rootfs.join("data/blob")).unwrap(),
        noise(300_000, 7)
    );
    assert!(store_cli(&root, &regs, &["rootfs", "rm", "c"]).0);
    // A second pull finds every layer stored and downloads nothing.
    let (ok, _, err) = store_cli(&root, &regs, &["pull", &reference]);
    assert!(ok, "{err}");
    // Without the insecure mark, plain HTTP is not used: the TLS handshake fails.
    let plain = t.path().join("none.toml");
    std::fs::write(&plain, "").unwrap();
    let (ok, _, err) = store_cli(&t.path().join("store2"), &plain, &["pull", &reference]);
    assert!(!ok);
    assert!(err.contains("https://127.0.0.1"), "{err}");
}

#[test]
fn an_index_resolves_to_linux_amd64() {
    let reg = registry();
    let t = tempfile::tempdir().unwrap();
    // Two single-image layouts, merged into one index with platforms.
    let amd = layer(&[E::File("arch", 0o644, b"amd64")]);
    let arm = layer(&[E::File("arch", 0o644, b"arm64")]);
    let layout = t.path().join("layout");
    let (_, amd_manifest) = oci_layout(&layout, &[gzipped(&amd)], serde_json::json!({}));
    let (_, arm_manifest) = oci_layout(&layout, &[gzipped(&arm)], serde_json::json!({}));
    let size = |d: &Digest| {
        std::fs::metadata(layout.join("blobs/sha256").join(d.hex()))
            .unwrap()
            .len()
    };
    let inner = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm_manifest.to_string(), "size": size(&arm_manifest),
             "platform": {"os": "linux", "architecture": "arm64"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd_manifest.to_string(), "size": size(&amd_manifest),
             "platform": {"os": "linux", "architecture": "amd64"}}
        ]
    })
    .to_string();
    let inner_d = crate::common::blob(&layout, inner.as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": inner_d.to_string(),
                       "size": inner.len(), "annotations": {"org.opencontainers.image.ref.name": "multi"}}]
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    push(&layout, "multi", reg.port, "test/multi:1", true);
    let host = format!("127.0.0.1:{}", reg.port);
    let regs = insecure(t.path(), &host);
    let root = t.path().join("store");
    let reference = format!("{host}/test/multi:1");
    let (ok, _, err) = store_cli(&root, &regs, &["pull", &reference]);
    assert!(ok, "{err}");
    let (ok, out, err) = store_cli(&root, &regs, &["rootfs", "create", &reference, "c"]);
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read(Path::new(out.trim()).join("arch")).unwrap(),
        b"amd64"
    );
    assert!(store_cli(&root, &regs, &["rootfs", "rm", "c"]).0);
}

#[test]
fn a_tampered_blob_is_rejected_and_nothing_is_stored() {
    let reg = registry();
    let t = tempfile::tempdir().unwrap();
    let l1 = layer(&[E::File("a", 0o644, b"good layer")]);
    let l2 = layer(&[E::File("b", 0o644, &noise(50_000, 3))]);
    let layout = t.path().join("layout");
    oci_layout(
        &layout,
        &[gzipped(&l1), gzipped(&l2)],
        serde_json::json!({"org.opencontainers.image.ref.name": "t"}),
    );
    push(&layout, "t", reg.port, "test/tampered:t", false);
    // Flip a byte of the second layer in the registry's own storage.
    let d = Digest::of(&gzip(&l2));
    let stored = reg
        .data
        .join("docker/registry/v2/blobs/sha256")
        .join(&d.hex()[..2])
        .join(d.hex())
        .join("data");
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[1024] ^= 0x55;
    std::fs::write(&stored, bytes).unwrap();
    let host = format!("127.0.0.1:{}", reg.port);
    let regs = insecure(t.path(), &host);
    let root = t.path().join("store");
    let (ok, _, err) = store_cli(&root, &regs, &["pull", &format!("{host}/test/tampered:t")]);
    assert!(!ok);
    assert!(
        err.contains("digest mismatch") && err.contains(&d.to_string()),
        "{err}"
    );
    let (_, out, _) = store_cli(&root, &regs, &["--json", "ls"]);
    assert_eq!(out.trim(), "[]");
    let left: Vec<_> = std::fs::read_dir(root.join("layers")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
}

/// Forwards 127.0.0.1:port to the registry; the first response carrying `cut_on` in
/// its request is cut after `after` bytes.
fn cutting_proxy(registry: u16, cut_on: String, after: usize) -> (u16, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cut = Arc::new(AtomicBool::new(false));
    let cut2 = cut.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(("127.0.0.1", registry)) else {
                continue;
            };
            let armed = Arc::new(AtomicBool::new(false));
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (armed_w, cut_on) = (armed.clone(), cut_on.clone());
            let cut_w = cut2.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                while let Ok(n) = c_in.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if !cut_w.load(Ordering::SeqCst)
                        && String::from_utf8_lossy(&buf[..n]).contains(&cut_on)
                    {
                        armed_w.store(true, Ordering::SeqCst);
                    }
                    if s_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
            let (mut s_in, mut c_out) = (server, client);
            let cut_r = cut2.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                let mut sent = 0;
                while let Ok(n) = s_in.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if armed.load(Ordering::SeqCst)
                        && !cut_r.load(Ordering::SeqCst)
                        && sent + n > after
                    {
                        let _ = c_out.write_all(&buf[..after.saturating_sub(sent)]);
                        cut_r.store(true, Ordering::SeqCst);
                        let _ = c_out.shutdown(std::net::Shutdown::Both);
                        let _ = s_in.shutdown(std::net::Shutdown::Both);
                        break;
                    }
                    sent += n;
                    if c_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    (port, cut)
}

#[test]
fn a_connection_dropped_mid_layer_is_resumed() {
    let reg = registry();
    let t = tempfile::tempdir().unwrap();
    let big = layer(&[E::File("big", 0o644, &noise(2_000_000, 11))]);
    let layout = t.path().join("layout");
    oci_layout(
        &layout,
        &[gzipped(&big)],
        serde_json::json!({"org.opencontainers.image.ref.name": "big"}),
    );
    push(&layout, "big", reg.port, "test/big:1", false);
    let blob = Digest::of(&gzip(&big));
    let (port, cut) = cutting_proxy(reg.port, blob.to_string(), 300_000);
    let host = format!("127.0.0.1:{port}");
    let regs = insecure(t.path(), &host);
    let root = t.path().join("store");
    let reference = format!("{host}/test/big:1");
    let (ok, _, err) = store_cli(&root, &regs, &["pull", &reference]);
    assert!(ok, "{err}");
    assert!(
        cut.load(Ordering::SeqCst),
        "the proxy never cut the download"
    );
    assert!(err.contains("resuming at byte"), "{err}");
    let (ok, out, err) = store_cli(&root, &regs, &["rootfs", "create", &reference, "c"]);
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read(Path::new(out.trim()).join("big")).unwrap(),
        noise(2_000_000, 11)
    );
    assert!(store_cli(&root, &regs, &["rootfs", "rm", "c"]).0);
}

/// A token server as Docker Hub's auth service behaves (distribution's "Token
/// Authentication Specification"): GET /token?service=S&scope=repository:NAME:pull
/// answers {"token": JWT}, the JWT signed ES256 with a key whose certificate the
/// registry trusts (carried in the header's x5c). Repositories under `private/` need
/// basic credentials user:secret; the rest are anonymous.
struct TokenServer {
    port: u16,
    cert_pem: PathBuf,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn b64url(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn token_server(dir: &Path) -> TokenServer {
    let key_pem = dir.join("key.pem");
    let cert_pem = dir.join("cert.pem");
    let key_der = dir.join("key.der");
    let cert_der = dir.join("cert.der");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        key_pem.to_str().unwrap(),
        "-out",
        cert_pem.to_str().unwrap(),
        "-days",
        "2",
        "-subj",
        "/CN=berth-test-token",
    ]);
    openssl(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        key_pem.to_str().unwrap(),
        "-outform",
        "DER",
        "-out",
        key_der.to_str().unwrap(),
    ]);
    openssl(&[
        "x509",
        "-in",
        cert_pem.to_str().unwrap(),
        "-outform",
        "DER",
        "-out",
        cert_der.to_str().unwrap(),
    ]);
    let rng = ring::rand::SystemRandom::new();
    let key = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &std::fs::read(&key_der).unwrap(),
        &rng,
    )
    .unwrap();
    let x5c = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&cert_der).unwrap())
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let req = String::from_utf8_lossy(&req).into_owned();
            let target = req
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string();
            let query = target.split_once('?').map(|(_, q)| q).unwrap_or_default();
            let param = |k: &str| {
                query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                    .unwrap_or_default()
                    .replace("%3A", ":")
                    .replace("%2F", "/")
            };
            let scope = param("scope");
            let service = param("service");
            let name = scope.split(':').nth(1).unwrap_or_default().to_string();
            let authorized = req.lines().any(|l| {
                l.to_ascii_lowercase().starts_with("authorization: basic ")
                    && l.ends_with(&{
                        use base64::Engine as _;
                        base64::engine::general_purpose::STANDARD.encode("user:secret")
                    })
            });
            let response = if name.starts_with("private/") && !authorized {
                "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_string()
            } else {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [x5c]});
                let claims = serde_json::json!({
                    "iss": "berth-test-issuer", "sub": "", "aud": service,
                    "exp": now + 600, "nbf": now - 10, "iat": now, "jti": format!("{now}-{name}"),
                    "access": [{"type": "repository", "name": name, "actions": ["pull"]}]
                });
                let signing_input = format!(
                    "{}.{}",
                    b64url(header.to_string().as_bytes()),
                    b64url(claims.to_string().as_bytes())
                );
                let sig = key.sign(&rng, signing_input.as_bytes()).unwrap();
                let body = serde_json::json!({"token": format!("{signing_input}.{}", b64url(sig.as_ref()))}).to_string();
                format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
            };
            let _ = conn.write_all(response.as_bytes());
        }
    });
    TokenServer { port, cert_pem }
}

#[test]
fn token_auth_as_docker_hub_does_it() {
    let t = tempfile::tempdir().unwrap();
    let tokens = token_server(t.path());
    let auth = format!(
        "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: berth-test-registry\n    issuer: berth-test-issuer\n    rootcertbundle: {}\n",
        tokens.port,
        tokens.cert_pem.display()
    );
    // Loaded while open: pushing goes through a second registry on the same storage.
    let reg = registry_with(&auth);
    let open = registry_on("", Some(&reg.data));
    let open_port = open.port;
    let l = layer(&[E::File("hello", 0o644, b"token")]);
    let layout = t.path().join("layout");
    oci_layout(
        &layout,
        &[gzipped(&l)],
        serde_json::json!({"org.opencontainers.image.ref.name": "1"}),
    );
    push(&layout, "1", open_port, "public/app:1", false);
    push(&layout, "1", open_port, "private/app:1", false);
    drop(open);

    let host = format!("127.0.0.1:{}", reg.port);
    let root = t.path().join("store");
    // Anonymous: the challenge, a token for the scope, the pull.
    let regs = insecure(t.path(), &host);
    let (ok, _, err) = store_cli(&root, &regs, &["pull", &format!("{host}/public/app:1")]);
    assert!(ok, "{err}");
    // A private repository: refused without credentials, saying where they go...
    let (ok, _, err) = store_cli(&root, &regs, &["pull", &format!("{host}/private/app:1")]);
    assert!(!ok);
    assert!(
        err.contains("authentication failed") && err.contains("401"),
        "{err}"
    );
    // ...and pulled with them.
    let creds = t.path().join("creds.toml");
    std::fs::write(
        &creds,
        format!(
            "[registry.\"{host}\"]\ninsecure = true\nusername = \"user\"\npassword = \"secret\"\n"
        ),
    )
    .unwrap();
    let (ok, _, err) = store_cli(&root, &creds, &["pull", &format!("{host}/private/app:1")]);
    assert!(ok, "{err}");
}

/// A test CA (ca.pem) and a leaf for 127.0.0.1 it signed (leaf.pem, leaf.key) in `dir`.
fn tls_certs(dir: &Path) {
    let p = |n: &str| dir.join(n).display().to_string();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.pem"),
        "-days",
        "2",
        "-subj",
        "/CN=berth-test-ca",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &p("leaf.key"),
        "-out",
        &p("leaf.csr"),
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p("leaf.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-out",
        &p("leaf.pem"),
        "-days",
        "2",
        "-extfile",
        &p("leaf.ext"),
    ]);
}

#[test]
fn https_with_an_extra_ca_a_docker_schema2_manifest_and_a_mirror() {
    let t = tempfile::tempdir().unwrap();
    let p = |n: &str| t.path().join(n).display().to_string();
    tls_certs(t.path());
    let reg = registry_with(&format!(
        "  tls:\n    certificate: {}\n    key: {}\n",
        p("leaf.pem"),
        p("leaf.key")
    ));
    let l = layer(&[E::File("proto", 0o644, b"https")]);
    let layout = t.path().join("layout");
    let (config, _) = oci_layout(
        &layout,
        &[gzipped(&l)],
        serde_json::json!({"org.opencontainers.image.ref.name": "s2"}),
    );
    // Docker's schema2 manifest rather than an OCI one.
    let out = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "-q",
            "--dest-tls-verify=false",
            "--format",
            "v2s2",
        ])
        .arg(format!("oci:{}:s2", layout.display()))
        .arg(format!("docker://127.0.0.1:{}/test/s2:1", reg.port))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let host = format!("127.0.0.1:{}", reg.port);
    let reference = format!("{host}/test/s2:1");
    // The image's CA bundle does not know the test CA: refused.
    let none = t.path().join("none.toml");
    std::fs::write(&none, "").unwrap();
    let (ok, _, err) = store_cli(&t.path().join("s1"), &none, &["pull", &reference]);
    assert!(!ok);
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );
    // With it as an extra CA: pulled over HTTPS.
    let with_ca = t.path().join("ca.toml");
    std::fs::write(&with_ca, format!("ca_files = [\"{}\"]\n", p("ca.pem"))).unwrap();
    let (ok, out, err) = store_cli(&t.path().join("s2"), &with_ca, &["pull", &reference]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("{reference} {config}"));
    // A registry known only through its mirror: the mirror answers, nothing else is asked.
    let mirrored = t.path().join("mirror.toml");
    std::fs::write(
        &mirrored,
        format!(
            "ca_files = [\"{}\"]\n[registry.\"registry.invalid\"]\nmirrors = [\"{host}\"]\n",
            p("ca.pem")
        ),
    )
    .unwrap();
    let (ok, out, err) = store_cli(
        &t.path().join("s3"),
        &mirrored,
        &["pull", "registry.invalid/test/s2:1"],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("registry.invalid/test/s2:1 {config}"));
}

#[test]
fn two_pulls_of_one_image_at_once_both_succeed() {
    let reg = registry();
    let t = tempfile::tempdir().unwrap();
    let l1 = layer(&[E::File("a", 0o644, &noise(400_000, 5))]);
    let l2 = layer(&[E::File("b", 0o644, &noise(400_000, 6))]);
    let layout = t.path().join("layout");
    oci_layout(
        &layout,
        &[gzipped(&l1), gzipped(&l2)],
        serde_json::json!({"org.opencontainers.image.ref.name": "c"}),
    );
    push(&layout, "c", reg.port, "test/concurrent:1", false);
    let host = format!("127.0.0.1:{}", reg.port);
    let regs = insecure(t.path(), &host);
    let root = t.path().join("store");
    let reference = format!("{host}/test/concurrent:1");
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_berth-store"))
            .arg("--root")
            .arg(&root)
            .args([
                "--min-free-mib",
                "0",
                "--min-free-percent",
                "0",
                "--registries",
            ])
            .arg(&regs)
            .args(["pull", &reference])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (_, out, _) = store_cli(&root, &regs, &["--json", "ls"]);
    let images: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(images.as_array().unwrap().len(), 1, "{out}");
    assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
}

/// A plain-HTTP "token endpoint" that records every byte it is sent (and answers 401).
fn recording_server() -> (u16, Arc<std::sync::Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = conn.read(&mut buf) {
                record.lock().unwrap().extend_from_slice(&buf[..n]);
                if record.lock().unwrap().windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let _ = conn.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (port, seen)
}

#[test]
fn a_plain_http_token_realm_of_an_https_registry_is_refused_and_sent_nothing() {
    let t = tempfile::tempdir().unwrap();
    let p = |n: &str| t.path().join(n).display().to_string();
    tls_certs(t.path());
    let (realm_port, seen) = recording_server();
    // An HTTPS registry whose challenge sends clients to a plain-HTTP realm.
    let reg = registry_with(&format!(
        "  tls:\n    certificate: {}\n    key: {}\nauth:\n  token:\n    realm: http://127.0.0.1:{realm_port}/token\n    service: berth-test\n    issuer: berth-test\n    rootcertbundle: {}\n",
        p("leaf.pem"),
        p("leaf.key"),
        p("ca.pem"),
    ));
    let host = format!("127.0.0.1:{}", reg.port);
    let regs = t.path().join("creds.toml");
    std::fs::write(
        &regs,
        format!(
            "ca_files = [\"{}\"]\n[registry.\"{host}\"]\nusername = \"user\"\npassword = \"hunter2-secret\"\n",
            p("ca.pem")
        ),
    )
    .unwrap();
    let (ok, _, err) = store_cli(
        &t.path().join("store"),
        &regs,
        &["pull", &format!("{host}/test/app:1")],
    );
    assert!(!ok);
    assert!(
        err.contains("refused") && err.contains("plain HTTP"),
        "{err}"
    );
    // Nothing at all went to the realm: no credentials, not even a connection.
    std::thread::sleep(Duration::from_millis(200));
    let seen = seen.lock().unwrap();
    assert!(
        seen.is_empty(),
        "the realm was sent: {}",
        String::from_utf8_lossy(&seen)
    );
}
