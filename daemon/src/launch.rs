//! Bringing one container up: its image (pulled when missing), its writable rootfs, the
//! files the daemon gives it (/etc/hostname, /etc/hosts, /etc/resolv.conf), its OCI
//! config, then `berth-runtime create` and `start`. Its stdout and stderr are pipes
//! whose read ends the daemon pumps into the log and keeps in init's fd store.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::declaration::Declaration;
use crate::fdstore::Notifier;
use crate::spec::{self, Context};
use crate::supervisor::Paths;

pub const LOG_MAX_BYTES: u64 = 10 << 20;

/// `berth-runtime --root ROOT`.
pub fn runtime(paths: &Paths) -> Command {
    let mut c = Command::new(&paths.runtime);
    c.arg("--root").arg(&paths.runtime_root);
    c
}

/// `berth-runtime delete --force NAME`, for a container that ended (or a leftover).
pub fn delete(paths: &Paths, name: &str) {
    let _ = runtime(paths)
        .args(["delete", "--force", name])
        .stderr(Stdio::null())
        .status();
}

/// The fd store names of a container's log pipes.
pub fn pipe_names(name: &str) -> [String; 2] {
    [format!("{name}.stdout"), format!("{name}.stderr")]
}

/// Pumps a container's log pipes (fresh, or handed back by init) into its log file.
pub fn pump_logs(paths: &Paths, name: &str, stdout: Option<OwnedFd>, stderr: Option<OwnedFd>) {
    let log = match crate::logs::LogFile::open(&paths.log_dir, name, LOG_MAX_BYTES) {
        Ok(l) => l,
        Err(e) => {
            // Still drained (a full pipe would stop the container), just not kept.
            eprintln!("berth-daemon: {name}: log file: {e}; its output is dropped");
            crate::logs::LogFile::discard()
        }
    };
    if let Some(fd) = stdout {
        crate::logs::pump(fd, "stdout", log.clone());
    }
    if let Some(fd) = stderr {
        crate::logs::pump(fd, "stderr", log);
    }
}

/// Sets up and starts the container `decl` declares: returns its pid. `netns`: the
/// namespace to join (bridge networking: made and plumbed by `network`).
pub fn start(
    paths: &Paths,
    decl: &Declaration,
    cgroup_parent: Option<&str>,
    netns: Option<PathBuf>,
    notifier: Option<&Notifier>,
) -> Result<i32, String> {
    let name = decl.name.as_str();
    let (run, sources) = prepare(paths, decl, cgroup_parent, netns, |cfg| cfg)?;
    let started = create_and_start(paths, name, &run.join("bundle"), &run.join("pid"), notifier);
    drop(sources);
    started
}

/// A `berthctl debug` container (supervisor/debug.rs): its bundle, then `create` only.
pub fn create_debug(
    paths: &Paths,
    decl: &Declaration,
    cgroup_parent: Option<&str>,
) -> Result<(), String> {
    let (run, sources) = prepare(
        paths,
        decl,
        cgroup_parent,
        None,
        crate::supervisor::debug::host_view,
    )?;
    let created = crate::supervisor::debug::create(paths, &decl.name, &run.join("bundle"));
    drop(sources);
    created
}

/// Everything before `berth-runtime create`: the image (pulled when missing), the
/// rootfs, the /etc files, the volumes (held open until `create` has mounted them: the
/// second value), and the OCI config (`adjust`ed) in `RUN/bundle`. Returns RUN.
fn prepare(
    paths: &Paths,
    decl: &Declaration,
    cgroup_parent: Option<&str>,
    netns: Option<PathBuf>,
    adjust: fn(serde_json::Value) -> serde_json::Value,
) -> Result<(PathBuf, crate::volumes::Sources), String> {
    let name = decl.name.as_str();
    let store = berth_store::store::Store::open(&paths.store, Default::default())
        .map_err(|e| e.to_string())?;
    let _lock = store
        .lock(berth_store::store::LockKind::Shared)
        .map_err(|e| e.to_string())?;
    let image = match store.find(&decl.image) {
        Ok(i) => i,
        Err(berth_store::store::StoreError::NoSuchImage(_)) => {
            eprintln!("berth-daemon: {name}: pulling {}", decl.image);
            let r =
                berth_store::reference::Reference::parse(&decl.image).map_err(|e| e.to_string())?;
            let config = berth_store::registry::Config::load(&paths.registries)
                .map_err(|e| e.to_string())?;
            let client = berth_store::registry::Client::new(config).map_err(|e| e.to_string())?;
            let started = std::time::Instant::now();
            let pulled = berth_store::pull::pull(&store, &client, &r, &|_| {});
            crate::metrics::PULLS.record(started.elapsed(), pulled.is_ok());
            let pulled = pulled.map_err(|e| e.to_string());
            let id = pulled
                .as_ref()
                .map(|i| i.id.to_string())
                .map_err(Clone::clone);
            crate::record(crate::api::pull_event(&decl.image, &id));
            pulled?
        }
        Err(e) => return Err(e.to_string()),
    };
    let config: serde_json::Value =
        serde_json::from_slice(&store.blob(&image.id).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    // The rootfs persists across restarts, as a docker container's writable layer.
    let rootfs = store
        .ensure_rootfs(&decl.image, name)
        .map_err(|e| e.to_string())?;
    let passwd = spec::read_in_root(&rootfs, "/etc/passwd").unwrap_or_default();
    let group = spec::read_in_root(&rootfs, "/etc/group").unwrap_or_default();
    let user = spec::resolve_user(decl.user.as_deref().unwrap_or("0"), &passwd, &group)?;
    let run = paths.run_dir.join(name);
    std::fs::create_dir_all(&run).map_err(|e| format!("{}: {e}", run.display()))?;
    // Checked without following symlinks and held open until `create` has mounted them.
    let sources =
        crate::volumes::prepare_default(&paths.volumes, decl).map_err(|e| e.to_string())?;
    let ctx = Context {
        rootfs,
        cgroup: cgroup_parent.map(|p| format!("{p}/{name}")),
        netns,
        etc_files: etc_files(decl, &run)?,
        volume_dirs: sources.named.clone(),
        bind_sources: sources.binds.clone(),
        nofile: nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .ok()
            .map(|(_, hard)| hard),
    };
    let cfg = adjust(spec::build(decl, &config, &user, &ctx).map_err(|e| e.to_string())?);
    let bundle = run.join("bundle");
    std::fs::create_dir_all(&bundle).map_err(|e| format!("{}: {e}", bundle.display()))?;
    std::fs::write(bundle.join("config.json"), cfg.to_string()).map_err(|e| e.to_string())?;
    // A leftover of an earlier run (the daemon restarted, or the container died). Only
    // then: one process fewer per start.
    if berth_runtime::state::dir(&paths.runtime_root, name).exists() {
        delete(paths, name);
    }
    Ok((run, sources))
}

/// /etc/hostname, /etc/hosts, /etc/resolv.conf for the container, in `run`.
fn etc_files(decl: &Declaration, run: &Path) -> Result<Vec<(PathBuf, &'static str)>, String> {
    let hostname = decl.hostname.clone().unwrap_or_else(|| decl.name.clone());
    let mut files = Vec::new();
    for (file, target, text) in [
        ("hostname", "/etc/hostname", format!("{hostname}\n")),
        (
            "hosts",
            "/etc/hosts",
            format!("127.0.0.1 localhost\n::1 localhost\n127.0.1.1 {hostname}\n"),
        ),
        (
            "resolv.conf",
            "/etc/resolv.conf",
            std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        ),
    ] {
        let p = run.join(file);
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
        files.push((p, target));
    }
    Ok(files)
}

/// `berth-runtime create` with fresh log pipes, then `start`. The pipes' read ends go to
/// init's fd store before anything is written to them, so output survives the daemon.
fn create_and_start(
    paths: &Paths,
    name: &str,
    bundle: &Path,
    pid_file: &Path,
    notifier: Option<&Notifier>,
) -> Result<i32, String> {
    let (out_r, out_w) = rustix::pipe::pipe().map_err(|e| e.to_string())?;
    let (err_r, err_w) = rustix::pipe::pipe().map_err(|e| e.to_string())?;
    if let Some(n) = notifier {
        let [out_name, err_name] = pipe_names(name);
        for (fd_name, fd) in [(out_name, &out_r), (err_name, &err_r)] {
            if let Err(e) = n.store(&fd_name, &[fd.as_fd()]) {
                eprintln!("berth-daemon: {name}: keeping its log pipe in init: {e}");
            }
        }
    }
    let created = runtime(paths)
        .arg("create")
        .arg("--bundle")
        .arg(bundle)
        .arg("--pid-file")
        .arg(pid_file)
        .arg(name)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w))
        .status()
        .map_err(|e| format!("running {}: {e}", paths.runtime.display()))?
        .success();
    // (The Command, and with it the daemon's copies of the write ends, is gone: the
    // pipes end when the container's last process does.)
    pump_logs(paths, name, Some(out_r), Some(err_r));
    if !created {
        return Err("berth-runtime create failed (its message is in the container's log)".into());
    }
    let pid: i32 = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .ok_or("no pid file from berth-runtime create")?;
    let out = runtime(paths)
        .args(["start", name])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "berth-runtime start: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(pid)
}
