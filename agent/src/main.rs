//! `berth-agent`: the config agent. At boot it finds the machine's datasource (an
//! OpenStack config drive, a NoCloud volume, QEMU's fw_cfg; the network ones come next),
//! keeps what it gave under /var/lib/berth/agent (applied again on a boot that finds
//! none), reads the user-data (`#cloud-config`, MIME multipart, TOML, gzip), says what it
//! skipped and why, applies the rest item by item, and hands network and time settings
//! to berth-net and container declarations to the daemon. A broken document never stops
//! the boot: the machine comes up with the defaults plus whatever was valid.

mod api;
mod apply;
mod datasource;
mod http;
mod inroot;
mod logship;
mod settings;
mod ssh;
mod userdata;
mod volumes;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use berth_net::config::NetworkConfig;
use nix::sys::signal::{SigSet, Signal};
use serde::{Deserialize, Serialize};

use datasource::Fetched;
use settings::Report;

/// What the agent keeps between boots. Written under /var, which containers share: every
/// write goes through [`inroot`] (no symlink followed), as user-data's files do.
const STATE_DIR: &str = "/var/lib/berth/agent";
/// The kept user-data is read back at most this large (what the agent would take).
const MAX_KEPT: u64 = userdata::MAX_DOCUMENT as u64;
/// The last boot's report (source, problems, item statuses), for `berthctl config`.
const REPORT: &str = "/run/berth/agent/report.json";

fn say(msg: &str) {
    eprintln!("berth-agent: {msg}");
}

/// Said on the console too: what an operator must see (what was skipped, and why).
fn announce(msg: &str) {
    say(msg);
    if let Ok(mut c) = std::fs::OpenOptions::new().write(true).open("/dev/console") {
        let _ = writeln!(c, "berth-agent: {msg}");
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version") | Some("-v") => {
            println!("berth-agent {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        None => {
            let report = run();
            local_phase_done();
            if let Err(e) = api::serve(report) {
                say(&format!("API: {e}; `berthctl config` will not answer"));
            }
            berth_net::notify("READY=1\nSTATUS=config applied\n");
            // The agent stays, as init's service (its API on /run/berth/agent.sock and
            // the network datasources come next), until asked to stop.
            wait_for_stop();
            ExitCode::SUCCESS
        }
        // The berth-sshd service (src/ssh/server.rs).
        Some("sshd") => ssh::server::run(),
        // The berth-logforward service (src/logship/).
        Some("logforward") => logship::run(&args[1..]),
        Some(other) => {
            say(&format!(
                "unknown argument {other:?} (only --version, sshd, logforward)"
            ));
            ExitCode::from(2)
        }
    }
}

/// What was kept of the last datasource.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Kept {
    source: String,
    instance_id: Option<String>,
    hostname: Option<String>,
    network: Option<NetworkConfig>,
    /// The metadata's SSH keys (a kept copy from before they were read: none).
    #[serde(default)]
    public_keys: Vec<String>,
}

#[derive(Serialize)]
struct BootReport<'a> {
    source: &'a str,
    instance_id: Option<&'a str>,
    problems: &'a Report,
    applied: &'a [apply::Status],
}

/// Never fails the boot: each problem is said and the machine goes on with defaults.
/// Returns the report (JSON) the API serves.
fn run() -> String {
    let state = Path::new(STATE_DIR);
    let found = datasource::find_local(&announce).or_else(|| {
        // berth-net waits for this (boundedly) so that a local datasource's static
        // network settings are in place before it asks DHCP; a cloud's metadata service
        // needs the network up.
        local_phase_done();
        let platform = berth_net::platform::detect(Path::new(berth_net::platform::DMI));
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        let config_url = datasource::url::from_cmdline(&cmdline);
        let (budget, refused) = datasource::budget_from_cmdline(&cmdline);
        if let Some(why) = refused {
            say(&why);
        }
        match (&config_url, platform) {
            (Some(u), _) => say(&format!("fetching {u} (berth.config_url)")),
            (None, berth_net::platform::Platform::Other) => {}
            (None, p) => say(&format!("{p:?}: asking its metadata service")),
        }
        datasource::find_network(platform, config_url.as_deref(), budget, &announce)
    });
    let (kept, user_data) = match found {
        Some(f) => {
            for p in &f.problems {
                announce(p);
            }
            keep(state, &f)
        }
        None => match load_kept(state) {
            Some(k) => {
                say(&format!(
                    "no datasource this boot: applying the kept copy from {}",
                    k.0.source
                ));
                k
            }
            None => {
                let why = "no datasource: the defaults stay (DHCP on every link, no containers)";
                say(why);
                let none = BootReport {
                    source: "none",
                    instance_id: None,
                    problems: &Report::default(),
                    applied: &[],
                };
                return serde_json::to_string_pretty(&none).unwrap_or_default();
            }
        },
    };
    let (settings, report) = match &user_data {
        Some(raw) => userdata::parse(raw),
        None => (settings::Settings::default(), Report::default()),
    };
    for e in &report.errors {
        announce(&format!("error: {e} (skipped)"));
    }
    for w in &report.warnings {
        announce(&format!("warning: {w}"));
    }
    let applied = apply::apply(
        &settings,
        kept.network.as_ref(),
        kept.hostname.as_deref(),
        &kept.public_keys,
        &apply::Targets::host(),
    );
    for s in &applied {
        if s.ok {
            say(&format!("{}: {}", s.item, s.detail));
        } else {
            announce(&format!("{}: failed: {}", s.item, s.detail));
        }
    }
    let failed = applied.iter().filter(|s| !s.ok).count();
    announce(&format!(
        "config from {}: {} items applied, {failed} failed, {} errors, {} warnings",
        kept.source,
        applied.len() - failed,
        report.errors.len(),
        report.warnings.len()
    ));
    let boot = BootReport {
        source: &kept.source,
        instance_id: kept.instance_id.as_deref(),
        problems: &report,
        applied: &applied,
    };
    let json = serde_json::to_string_pretty(&boot).unwrap_or_default();
    if let Err(e) = write(Path::new(REPORT), json.as_bytes(), 0o644) {
        say(&e);
    }
    json
}

/// Tells berth-net the local datasources have been read (and their network settings
/// written).
fn local_phase_done() {
    let path = Path::new(berth_net::config::AGENT_LOCAL_DONE);
    if let Err(e) = write(path, b"", 0o644) {
        say(&e);
    }
}

/// Keeps what the datasource gave (a later boot without it applies the same), saying
/// when this is a new instance.
fn keep(state: &Path, f: &Fetched) -> (Kept, Option<Vec<u8>>) {
    let before = load_kept(state);
    if let (Some((old, _)), Some(new)) = (&before, &f.instance_id) {
        if old.instance_id.as_deref() != Some(new) {
            say(&format!(
                "a new instance ({new}; was {})",
                old.instance_id.as_deref().unwrap_or("unknown")
            ));
        }
    }
    let kept = Kept {
        source: f.source.clone(),
        instance_id: f.instance_id.clone(),
        hostname: f.hostname.clone(),
        network: f.network.clone(),
        public_keys: f.public_keys.clone(),
    };
    // 0600: the user-data may hold passwords (berth.registries).
    let saved = serde_json::to_vec_pretty(&kept)
        .map_err(|e| e.to_string())
        .and_then(|json| write(&state.join("datasource.json"), &json, 0o600))
        .and_then(|()| match &f.user_data {
            Some(d) => write(&state.join("user-data"), d, 0o600),
            None => root("/")
                .and_then(|r| r.remove(&state.join("user-data")))
                .map_err(|e| e.to_string()),
        });
    if let Err(e) = saved {
        say(&format!("keeping the config for the next boots: {e}"));
    }
    say(&format!("datasource: {}", f.source));
    (kept, f.user_data.clone())
}

fn load_kept(state: &Path) -> Option<(Kept, Option<Vec<u8>>)> {
    let root = root("/").ok()?;
    let json = match root.read(&state.join("datasource.json"), MAX_KEPT) {
        Ok(j) => j,
        Err(e) if e.is_not_found() => return None,
        Err(e) => {
            say(&format!("{e}; not used"));
            return None;
        }
    };
    let kept: Kept = match serde_json::from_slice(&json) {
        Ok(k) => k,
        Err(e) => {
            say(&format!(
                "{}/datasource.json: {e}; not used",
                state.display()
            ));
            return None;
        }
    };
    let user_data = match root.read(&state.join("user-data"), MAX_KEPT) {
        Ok(d) => Some(d),
        Err(e) if e.is_not_found() => None,
        Err(e) => {
            say(&format!("{e}; no user-data kept"));
            None
        }
    };
    Some((kept, user_data))
}

fn root(path: &str) -> Result<inroot::Root, inroot::InRootError> {
    inroot::Root::open(Path::new(path))
}

/// Replaces `path` durably (berth-persist), never through a symlink.
fn write(path: &Path, data: &[u8], mode: u32) -> Result<(), String> {
    root("/")
        .and_then(|r| r.replace(path, data, mode, None))
        .map_err(|e| e.to_string())
}

pub(crate) fn wait_for_stop() {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    if let Err(e) = mask.thread_block() {
        say(&format!("blocking signals: {e}"));
        return;
    }
    if let Err(e) = mask.wait() {
        say(&format!("waiting for a signal: {e}"));
    }
}
