//! `make bench`'s image pull: one multi-layer image (a few hundred MB unpacked) in
//! Debian's docker-registry on 127.0.0.1, pulled and unpacked by berth-store, by
//! `skopeo copy` into containers-storage and by `podman pull`, interleaved runs, each
//! from an empty store; and the floor: reading and decompressing the same blobs to
//! /dev/null. Medians, ratios and peak RSS printed (and written as JSON with --json).

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use berth_store::Digest;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("floor") {
        return floor(&args[2..]);
    }
    // Made in a child, so this process stays small: a child inherits its parent's
    // peak RSS into its own (getrusage(2)), which would swamp every figure.
    if args.get(1).map(String::as_str) == Some("make-image") {
        return match args
            .get(2)
            .map(|d| make_image(Path::new(d), 4, 20, 4 << 20))
        {
            Some(Ok(())) => ExitCode::SUCCESS,
            Some(Err(e)) => {
                eprintln!("berth-store-bench: {e}");
                ExitCode::FAILURE
            }
            None => ExitCode::FAILURE,
        };
    }
    let runs: usize = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    let json = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    match bench(runs.max(1), json.as_deref()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-store-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The floor's child mode: decompress each blob file to nothing, one after another.
fn floor(files: &[String]) -> ExitCode {
    for f in files {
        let Ok(file) = std::fs::File::open(f) else {
            return ExitCode::FAILURE;
        };
        let Ok(mut r) = berth_store::compression::decompressed(std::io::BufReader::new(file))
        else {
            return ExitCode::FAILURE;
        };
        if std::io::copy(&mut r, &mut std::io::sink()).is_err() {
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// Pseudo-random bytes with some repetition (compresses about 2:1, like binaries).
fn content(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        // Half the bytes from a small alphabet, half random.
        out.extend_from_slice(&[b[0], b[1] & 0x0f, b[2], b[3] & 0x0f]);
    }
    out.truncate(n);
    out
}

/// An OCI layout with `layers` layers of `files` files of `size` bytes each.
fn make_image(dir: &Path, layers: usize, files: usize, size: usize) -> Result<()> {
    std::fs::create_dir_all(dir.join("blobs/sha256"))?;
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let blob = |data: &[u8]| -> Result<Digest> {
        let d = Digest::of(data);
        std::fs::write(dir.join("blobs/sha256").join(d.hex()), data)?;
        Ok(d)
    };
    let mut diff_ids = Vec::new();
    let mut descs = Vec::new();
    for l in 0..layers {
        let mut b = tar::Builder::new(Vec::new());
        for f in 0..files {
            let data = content(size, (l * 1000 + f) as u64 + 1);
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h.set_cksum();
            b.append_data(&mut h, format!("layer{l}/file{f}"), &data[..])?;
        }
        let tar = b.into_inner()?;
        diff_ids.push(Digest::of(&tar).to_string());
        // The last layer zstd, the others gzip, as images come today.
        let (compressed, media) = if l + 1 == layers {
            (
                zstd::encode_all(&tar[..], 3)?,
                "application/vnd.oci.image.layer.v1.tar+zstd",
            )
        } else {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(&tar)?;
            (enc.finish()?, "application/vnd.oci.image.layer.v1.tar+gzip")
        };
        let d = blob(&compressed)?;
        descs.push(serde_json::json!({"mediaType": media, "digest": d.to_string(), "size": compressed.len()}));
    }
    let config = serde_json::json!({"architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"]}, "rootfs": {"type": "layers", "diff_ids": diff_ids}})
    .to_string();
    let cd = blob(config.as_bytes())?;
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": config.len()},
        "layers": descs})
    .to_string();
    let md = blob(manifest.as_bytes())?;
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": md.to_string(), "size": manifest.len(), "annotations": {"org.opencontainers.image.ref.name": "1"}}]});
    std::fs::write(dir.join("index.json"), index.to_string())?;
    Ok(())
}

/// Runs a command to completion: (wall time, peak RSS in KB of it and its children).
fn timed(cmd: &mut Command) -> Result<(Duration, i64)> {
    let start = Instant::now();
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    let pid = child.id();
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child `pid`.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; `status` and `usage` outlive the call.
    let rc = unsafe { libc::wait4(i32::try_from(pid)?, &raw mut status, 0, &raw mut usage) };
    let elapsed = start.elapsed();
    if rc < 0 || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        let mut err = String::new();
        if let Some(mut e) = child.stderr {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        return Err(format!("{cmd:?} failed: {err}").into());
    }
    Ok((elapsed, usage.ru_maxrss))
}

/// A scratch directory removed on drop (unmounting what podman and skopeo left).
struct Scratch(PathBuf);

impl Scratch {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench(runs: usize, json: Option<&Path>) -> Result<()> {
    let work =
        Scratch(std::env::temp_dir().join(format!("berth-store-bench-{}", std::process::id())));
    std::fs::create_dir_all(work.path())?;
    let layout = work.path().join("layout");
    eprintln!("berth-store-bench: making a 4-layer image (about 320 MB unpacked)");
    let made = Command::new(std::env::current_exe()?)
        .arg("make-image")
        .arg(&layout)
        .status()?;
    if !made.success() {
        return Err("making the image failed".into());
    }
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let data = work.path().join("registry");
    let config = work.path().join("registry.yml");
    std::fs::write(
        &config,
        format!("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n", data.display()),
    )?;
    let mut registry = Command::new("/usr/bin/docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let result = (|| -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("the registry did not start".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let image = format!("127.0.0.1:{port}/bench/image:1");
        let out = Command::new("skopeo")
            .args(["--insecure-policy", "copy", "-q", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:1", layout.display()))
            .arg(format!("docker://{image}"))
            .output()?;
        if !out.status.success() {
            return Err(format!("skopeo push: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        let blobs: Vec<String> = std::fs::read_dir(layout.join("blobs/sha256"))?
            .flatten()
            .filter(|e| e.metadata().is_ok_and(|m| m.len() > 1 << 20))
            .map(|e| e.path().display().to_string())
            .collect();
        let regs = work.path().join("registries.toml");
        std::fs::write(
            &regs,
            format!("[registry.\"127.0.0.1:{port}\"]\ninsecure = true\n"),
        )?;
        let me = std::env::current_exe()?;
        let store_bin = me.with_file_name("berth-store");
        let names = ["berth-store", "skopeo", "podman", "floor"];
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
        let mut rss = vec![0i64; names.len()];
        for run in 0..runs {
            for (i, name) in names.iter().enumerate() {
                let dir = work.path().join(format!("run-{name}-{run}"));
                std::fs::create_dir_all(&dir)?;
                let mut cmd = match *name {
                    "berth-store" => {
                        let mut c = Command::new(&store_bin);
                        c.arg("--root")
                            .arg(dir.join("store"))
                            .arg("--registries")
                            .arg(&regs)
                            .args([
                                "--min-free-mib",
                                "0",
                                "--min-free-percent",
                                "0",
                                "pull",
                                &image,
                            ]);
                        c
                    }
                    "skopeo" => {
                        let mut c = Command::new("skopeo");
                        c.args(["--insecure-policy", "copy", "-q", "--src-tls-verify=false"])
                            .arg(format!("docker://{image}"))
                            .arg(format!(
                                "containers-storage:[overlay@{}+{}]bench/image:1",
                                dir.join("root").display(),
                                dir.join("runroot").display()
                            ));
                        c
                    }
                    "podman" => {
                        let mut c = Command::new("podman");
                        c.arg("--root")
                            .arg(dir.join("root"))
                            .arg("--runroot")
                            .arg(dir.join("runroot"))
                            .args([
                                "--storage-driver",
                                "overlay",
                                "pull",
                                "-q",
                                "--tls-verify=false",
                                &image,
                            ]);
                        c
                    }
                    _ => {
                        let mut c = Command::new(&me);
                        c.arg("floor").args(&blobs);
                        c
                    }
                };
                // Everything on disk before the clock starts, as each run would find it.
                let _ = Command::new("sync").status();
                let (t, kb) = timed(&mut cmd)?;
                times[i].push(t.as_secs_f64() * 1000.0);
                rss[i] = rss[i].max(kb);
                // Remove what the run stored (containers-storage's overlay mounts first).
                let _ = Command::new("umount")
                    .arg("-R")
                    .arg(dir.join("root/overlay"))
                    .stderr(Stdio::null())
                    .status();
                let _ = Command::new("sh")
                    .arg("-c")
                    .arg(format!(
                        "umount $(grep ' {}' /proc/mounts | cut -d' ' -f2) 2>/dev/null; rm -rf {}",
                        dir.display(),
                        dir.display()
                    ))
                    .status();
            }
        }
        let medians: Vec<f64> = times.iter_mut().map(|v| median(v)).collect();
        println!("pull + unpack of a 4-layer image (320 MB unpacked, 3 gzip + 1 zstd layers) from docker-registry on 127.0.0.1, {runs} runs each, interleaved");
        println!("  {:<14} {:>10} {:>12}", "tool", "median", "peak RSS");
        for (i, name) in names.iter().enumerate() {
            println!("  {:<14} {:>8.0}ms {:>9} KB", name, medians[i], rss[i]);
        }
        println!(
            "  ratio berth-store/skopeo: {:.2}x, berth-store/podman: {:.2}x, berth-store/floor: {:.2}x (below 1: faster)",
            medians[0] / medians[1],
            medians[0] / medians[2],
            medians[0] / medians[3]
        );
        if let Some(path) = json {
            let report: Vec<serde_json::Value> = names
                .iter()
                .enumerate()
                .map(|(i, n)| serde_json::json!({"tool": n, "median_ms": medians[i], "runs_ms": times[i], "peak_rss_kb": rss[i]}))
                .collect();
            // The commit `make bench` measured (it sets BERTH_COMMIT for every bench).
            let doc = serde_json::json!({
                "commit": std::env::var("BERTH_COMMIT")
                    .ok()
                    .filter(|c| !c.is_empty())
                    .unwrap_or_else(|| "unknown".into()),
                "date": berth_schema::time::now_rfc3339(),
                "results": report,
            });
            std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
        }
        Ok(())
    })();
    let _ = registry.kill();
    let _ = registry.wait();
    result
}
