//! The berth-logforward service (`berth-agent logforward`): ships everything Berth
//! keeps (the kernel's messages and init's lines, each service's log, each
//! container's output) to the syslog receivers of user-data's `berth.logs.forward`, as
//! RFC 5424 messages, at least once: a cursor per source and receiver is kept on /var
//! (`/var/lib/berth/logforward/`), so an outage of the receiver, a restart of the
//! service or a reboot resumes where the receiver's last acknowledged line was.
//!
//! - `sources`: the logs, followed across rotations; gaps counted;
//! - `syslog`: the messages and their framing;
//! - `conn`: TCP, TLS and UDP connections;
//! - `worker`: one receiver's loop, its cursors and what counts as delivered.

mod conn;
mod sources;
mod sys;
pub mod syslog;
mod worker;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use berth_schema::logs::LogsConfig;

/// Where the cursors are kept.
pub const STATE_DIR: &str = "/var/lib/berth/logforward";

/// Where the forwarder reads and keeps things: the machine's paths, or the same under
/// another root (`--root DIR`, for benchmarks on a build machine: no kernel log then).
#[derive(Debug, Clone)]
pub struct Paths {
    pub config: PathBuf,
    pub state: PathBuf,
    pub service_logs: PathBuf,
    pub container_logs: PathBuf,
    /// Whether /dev/kmsg is a source.
    pub kernel: bool,
}

impl Paths {
    pub fn under(root: &Path) -> Paths {
        let at = |p: &str| root.join(p.trim_start_matches('/'));
        Paths {
            config: at(berth_schema::logs::CONFIG_PATH),
            state: at(STATE_DIR),
            service_logs: at(sources::SERVICE_LOGS),
            container_logs: at(sources::CONTAINER_LOGS),
            kernel: root == Path::new("/"),
        }
    }
}

fn say(msg: &str) {
    eprintln!("berth-logforward: {msg}");
}

pub fn run(args: &[String]) -> ExitCode {
    let root = match args {
        [] => PathBuf::from("/"),
        [flag, dir] if flag == "--root" => PathBuf::from(dir),
        _ => {
            say("usage: berth-agent logforward [--root DIR]");
            return ExitCode::from(2);
        }
    };
    let paths = Paths::under(&root);
    let config = match LogsConfig::load(&paths.config) {
        Ok(Some(c)) if !c.forward.is_empty() => c,
        Ok(_) => {
            say("off (no berth.logs.forward in user-data)");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            say(&e);
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::fs::create_dir_all(&paths.state) {
        say(&format!("{}: {e}", paths.state.display()));
        return ExitCode::FAILURE;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for forward in &config.forward {
        let mut worker = match worker::Worker::new(forward, &paths) {
            Ok(w) => w,
            Err(e) => {
                say(&format!("{}: {e}", forward.url));
                return ExitCode::FAILURE;
            }
        };
        say(&format!("forwarding to {}", worker.target()));
        let stop = stop.clone();
        let spawned = std::thread::Builder::new()
            .name("forward".into())
            .spawn(move || worker.run(&stop));
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                say(&format!("starting a thread: {e}"));
                return ExitCode::FAILURE;
            }
        }
    }
    berth_net::notify("READY=1\nSTATUS=forwarding\n");
    crate::wait_for_stop();
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = t.join();
    }
    ExitCode::SUCCESS
}
