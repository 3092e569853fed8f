//! The health watch of a trial boot, on the boot slots' thread (`slots::start`; it talks
//! to the container daemon, which must never stall PID 1's loop). The boot is healthy when `berth: ready`
//! was printed, every autostart service is ready, and every declared container is
//! running (or exited 0: a one-shot job that finished). Healthy for the settle time
//! without a break: the slot is blessed. Not so by the timeout: the trial fails, naming
//! the item that was not healthy, and the machine reboots into the other slot.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_control::{ContainerInfo, ServiceStatus};

use super::control::{Request, Requester, Snapshot};
use super::slots::{HealthClock, HealthSettings, Slots, Verdict, UPDATE_SETTINGS};
use crate::shutdown::Action;
use crate::{info, log, warn};

/// How often the watch looks.
const LOOK_EVERY: Duration = Duration::from_secs(2);
/// The container daemon's service: without it defined there are no containers to wait for.
const DAEMON_SERVICE: &str = "berth-daemon";

/// Runs on the slots' thread until the trial is blessed or failed.
pub fn watch(slots: &Slots, snapshot: &Mutex<Snapshot>, requester: &Requester) {
    // The clock starts at `berth: ready` (the settings are the agent's, written by then).
    while !snapshot.lock().is_ok_and(|s| s.ready) {
        std::thread::sleep(LOOK_EVERY / 4);
    }
    let settings = HealthSettings::read(Path::new(UPDATE_SETTINGS));
    info!(
        "boot slots: health watch: blessing slot {} after {} s healthy (giving up after {} s)",
        slots.booted.name(),
        settings.settle.as_secs(),
        settings.timeout.as_secs()
    );
    let mut clock = HealthClock::new(settings, Instant::now());
    loop {
        let services = snapshot
            .lock()
            .map(|s| s.services.clone())
            .unwrap_or_default();
        let look = look(&services);
        match clock.observe(look, Instant::now()) {
            Verdict::Wait => std::thread::sleep(LOOK_EVERY),
            Verdict::Bless => {
                match slots.bless() {
                    Ok(()) => log::bare(format_args!(
                        "berth: slot {} blessed: healthy for {} s; it boots from now on",
                        slots.booted.name(),
                        settings.settle.as_secs()
                    )),
                    Err(e) => warn!("boot slots: blessing slot {}: {e}", slots.booted.name()),
                }
                return;
            }
            Verdict::Fail(why) => {
                log::bare(format_args!(
                    "berth: slot {} failed its trial: {why}; rebooting into slot {}",
                    slots.booted.name(),
                    slots.booted.other().name()
                ));
                if let Err(e) = slots.fail(&why) {
                    warn!("boot slots: recording the failed trial: {e}");
                }
                if !requester.send(Request::Shutdown(Action::Reboot)) {
                    warn!("boot slots: init took no reboot request");
                }
                return;
            }
        }
    }
}

/// `Ok` when every service and container is as it should be, else the first that is not.
fn look(services: &[ServiceStatus]) -> Result<(), String> {
    for s in services.iter().filter(|s| s.autostart) {
        // `done`: it exited 0 by itself, its work finished (as a container that exited
        // 0 below).
        if s.state != "ready" && s.state != "done" {
            return Err(format!("service {} is {}", s.name, s.state));
        }
    }
    if !services.iter().any(|s| s.name == DAEMON_SERVICE) {
        return Ok(());
    }
    let containers = containers().map_err(|e| format!("the container daemon: {e}"))?;
    containers_healthy(&containers)
}

fn containers_healthy(containers: &[ContainerInfo]) -> Result<(), String> {
    for c in containers {
        let done = c.state == "exited" && c.exit_code == 0;
        if c.state != "running" && !done {
            let why = if c.error.is_empty() {
                String::new()
            } else {
                format!(" ({})", c.error)
            };
            return Err(format!("container {} is {}{why}", c.name, c.state));
        }
    }
    Ok(())
}

fn containers() -> Result<Vec<ContainerInfo>, String> {
    zbus::block_on(async {
        let conn = berth_control::connect(Path::new(berth_control::RUNTIME_SOCKET))
            .await
            .map_err(|e| e.to_string())?;
        let proxy = berth_control::RuntimeProxy::new(&conn)
            .await
            .map_err(|e| e.to_string())?;
        proxy.containers().await.map_err(|e| e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(name: &str, state: &str, exit_code: i32) -> ContainerInfo {
        ContainerInfo {
            name: name.into(),
            image: "x".into(),
            state: state.into(),
            pid: 0,
            restarts: 0,
            exit_code,
            error: String::new(),
            started_at: String::new(),
            ports: vec![],
            network: String::new(),
            address: String::new(),
            source: String::new(),
        }
    }

    #[test]
    fn running_or_finished_containers_are_healthy_others_are_named() {
        assert!(
            containers_healthy(&[container("a", "running", -1), container("b", "exited", 0)])
                .is_ok()
        );
        let e = containers_healthy(&[container("a", "running", -1), container("web", "exited", 1)]);
        assert_eq!(e.unwrap_err(), "container web is exited");
        let mut failed = container("db", "failed", -1);
        failed.error = "pulling x: not found".into();
        assert_eq!(
            containers_healthy(&[failed]).unwrap_err(),
            "container db is failed (pulling x: not found)"
        );
    }
}
