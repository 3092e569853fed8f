//! `berth-agent`: the config agent. So far it reads an OpenStack config drive's
//! `network_data.json` and hands it to berth-net as Berth's network settings
//! (`/run/berth/network.json`); platform detection, the other datasources, user-data
//! formats and applying them arrive with issue 9.

mod datasource;
mod volumes;

use std::path::Path;
use std::process::ExitCode;

use berth_net::config::{openstack, NetworkConfig, CONFIG_PATH};
use nix::sys::signal::{SigSet, Signal};

/// Where datasource volumes are mounted while they are read.
const MOUNT_DIR: &str = "/run/berth/agent/mnt";

fn say(msg: &str) {
    eprintln!("berth-agent: {msg}");
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version") | Some("-v") => {
            println!("berth-agent {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        None => {
            run();
            berth_net::notify("READY=1\nSTATUS=config applied\n");
            // The agent stays, as init's service (its API on /run/berth/agent.sock and
            // the network datasources come with issue 9), until asked to stop.
            wait_for_stop();
            ExitCode::SUCCESS
        }
        Some(other) => {
            say(&format!("unknown argument {other:?} (only --version)"));
            ExitCode::from(2)
        }
    }
}

/// Never fails the boot: each problem is said and the machine goes on with defaults.
fn run() {
    let drive = match datasource::config_drive::read(Path::new(MOUNT_DIR)) {
        Ok(Some(d)) => d,
        Ok(None) => return,
        Err(e) => {
            say(&format!("config drive: {e}"));
            return;
        }
    };
    say(&format!("config drive on {}", drive.device.display()));
    // Said rather than passed over: the formats and applying them are issue 9's.
    for (name, bytes) in [
        ("meta_data.json", drive.meta_data.as_ref().map(String::len)),
        ("user_data", drive.user_data.as_ref().map(Vec::len)),
    ] {
        if let Some(n) = bytes {
            say(&format!("{name} ({n} bytes) is not applied yet"));
        }
    }
    let Some(text) = drive.network_data else {
        return;
    };
    match openstack::parse(&text) {
        Ok((config, warnings)) => {
            for w in warnings {
                say(&format!("network_data.json: {w}"));
            }
            write_network(&config, Path::new(CONFIG_PATH));
        }
        Err(e) => say(&format!(
            "network_data.json: {e}; the links keep DHCP (Berth's default)"
        )),
    }
}

fn wait_for_stop() {
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

/// Hands the settings to berth-net (it follows the file), replacing it by a rename so
/// it never reads half of one.
fn write_network(config: &NetworkConfig, path: &Path) {
    let tmp = path.with_extension("json.tmp");
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&tmp, config.to_json()))
        .and_then(|()| std::fs::rename(&tmp, path));
    match written {
        Ok(()) => say(&format!(
            "network settings ({} link entries) handed to berth-net",
            config.links.len()
        )),
        Err(e) => say(&format!("writing {}: {e}", path.display())),
    }
}
