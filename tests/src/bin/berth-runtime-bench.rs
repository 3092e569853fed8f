//! berth-runtime-bench: in the test image, times create + start + wait + delete of one
//! bundle with berth-runtime, crun and runc, interleaved, and prints JSON (median and
//! minimum milliseconds, peak RSS of each runtime's processes). `make bench` runs it
//! through testd in a cgroup-v2 guest.
//!
//! Beside them, the namespace floor: busybox `unshare` into the same five namespaces the
//! bundle asks for (mount, UTS, IPC, network, PID), `chroot` into its rootfs and exec of
//! `/bin/true`. What the kernel charges for isolation alone, without a runtime's mounts,
//! cgroup, capabilities, seccomp or state.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

struct Runtime {
    name: &'static str,
    /// The floor is no OCI runtime: it runs once, with the arguments the bundle gives.
    floor: bool,
    bin: &'static str,
    /// The guest's root is an initramfs, where pivot_root cannot work: crun and runc
    /// need telling; berth-runtime notices by itself.
    create_extra: &'static [&'static str],
    times: Vec<Duration>,
    peak_rss_kb: i64,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(50);
    let bundle = PathBuf::from(args.get(2).map_or("/tmp/bench", String::as_str));
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!("berth-runtime-bench: subreaper: {e}");
        return ExitCode::FAILURE;
    }
    let mut runtimes = vec![
        Runtime {
            name: "berth-runtime",
            floor: false,
            bin: "/usr/bin/berth-runtime",
            create_extra: &[],
            times: Vec::new(),
            peak_rss_kb: 0,
        },
        Runtime {
            name: "crun",
            floor: false,
            bin: "/usr/bin/crun",
            create_extra: &["--no-pivot"],
            times: Vec::new(),
            peak_rss_kb: 0,
        },
        Runtime {
            name: "runc",
            floor: false,
            bin: "/usr/sbin/runc",
            create_extra: &["--no-pivot"],
            times: Vec::new(),
            peak_rss_kb: 0,
        },
        Runtime {
            name: "namespace floor",
            floor: true,
            bin: "/usr/bin/busybox",
            create_extra: &[],
            times: Vec::new(),
            peak_rss_kb: 0,
        },
    ];
    for i in 0..runs {
        for rt in &mut runtimes {
            match once(rt, &bundle, i) {
                Ok(d) => rt.times.push(d),
                Err(e) => {
                    eprintln!("berth-runtime-bench: {} run {i}: {e}", rt.name);
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    let report: Vec<serde_json::Value> = runtimes
        .iter_mut()
        .map(|rt| {
            rt.times.sort();
            serde_json::json!({
                "runtime": rt.name,
                "runs": rt.times.len(),
                "median_ms": ms(rt.times[rt.times.len() / 2]),
                "min_ms": ms(rt.times[0]),
                "peak_rss_kb": rt.peak_rss_kb,
            })
        })
        .collect();
    println!("{}", serde_json::Value::Array(report));
    ExitCode::SUCCESS
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One invocation; its exit must be 0. Tracks the peak RSS (wait4's rusage).
fn invoke(rt: &mut Runtime, args: &[&str]) -> Result<(), String> {
    // stderr to a file: a pipe left unread could hold up a runtime whose container
    // process inherits it.
    let err_path = format!("/tmp/bench-{}.err", rt.name);
    let err_file = std::fs::File::create(&err_path).map_err(|e| format!("{err_path}: {e}"))?;
    let child = Command::new(rt.bin)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(err_file)
        .spawn()
        .map_err(|e| format!("{} {}: {e}", rt.bin, args.join(" ")))?;
    let pid = i32::try_from(child.id()).map_err(|e| e.to_string())?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child `pid`.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `status` and `usage` are valid for writes during the call.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if rc < 0 {
        return Err(format!("wait4: {}", std::io::Error::last_os_error()));
    }
    rt.peak_rss_kb = rt.peak_rss_kb.max(usage.ru_maxrss);
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        let err = std::fs::read_to_string(&err_path).unwrap_or_default();
        return Err(format!(
            "{} {}: status {status}: {}",
            rt.bin,
            args.join(" "),
            err.trim()
        ));
    }
    Ok(())
}

/// `unshare -m -u -i -n -p -f` (it forks into the new PID namespace and waits), then
/// `chroot ROOTFS /bin/true`.
fn floor_once(rt: &mut Runtime, bundle: &Path) -> Result<Duration, String> {
    let rootfs = bundle.join("rootfs").to_string_lossy().into_owned();
    let t0 = Instant::now();
    invoke(
        rt,
        &[
            "unshare",
            "-m",
            "-u",
            "-i",
            "-n",
            "-p",
            "-f",
            "/usr/bin/busybox",
            "chroot",
            &rootfs,
            "/bin/true",
        ],
    )?;
    Ok(t0.elapsed())
}

fn once(rt: &mut Runtime, bundle: &Path, i: usize) -> Result<Duration, String> {
    if rt.floor {
        return floor_once(rt, bundle);
    }
    let root = format!("/run/bench-{}", rt.name);
    let id = format!("b{i}");
    let pid_file = format!("/tmp/bench-{}.pid", rt.name);
    let bundle = bundle.to_string_lossy().into_owned();
    let t0 = Instant::now();
    let mut create = vec![
        "--root",
        root.as_str(),
        "create",
        "--bundle",
        bundle.as_str(),
        "--pid-file",
        pid_file.as_str(),
    ];
    create.extend(rt.create_extra);
    create.push(&id);
    invoke(rt, &create)?;
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .map_err(|e| format!("{pid_file}: {e}"))?
        .trim()
        .parse()
        .map_err(|e| format!("{pid_file}: {e}"))?;
    // The container's init was re-parented to us (a subreaper) when create exited.
    // Reap it as soon as it ends, while `start` may still run: runc's start waits until
    // its container is no longer a zombie.
    let reaper = std::thread::spawn(move || waitpid(Pid::from_raw(pid), None));
    invoke(rt, &["--root", &root, "start", &id])?;
    match reaper.join() {
        Ok(Ok(WaitStatus::Exited(_, 0))) => {}
        other => return Err(format!("container {id} ended with {other:?}")),
    }
    invoke(rt, &["--root", &root, "delete", &id])?;
    Ok(t0.elapsed())
}
