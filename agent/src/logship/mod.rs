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

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use berth_schema::logs::LogsConfig;

/// Where the cursors are kept.
pub const STATE_DIR: &str = "/var/lib/berth/logforward";

fn say(msg: &str) {
    eprintln!("berth-logforward: {msg}");
}

pub fn run() -> ExitCode {
    let config = match LogsConfig::load(Path::new(berth_schema::logs::CONFIG_PATH)) {
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
    if let Err(e) = std::fs::create_dir_all(STATE_DIR) {
        say(&format!("{STATE_DIR}: {e}"));
        return ExitCode::FAILURE;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for forward in &config.forward {
        let mut worker = match worker::Worker::new(forward, Path::new(STATE_DIR)) {
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
