//! `berth-updater auto`: automatic updates, as user-data's `berth.update` asks
//! (`/etc/berth/update.toml`). Off without a `source`.
//!
//! At start, with a FleetLock server, it waits until this boot is no longer a trial
//! (blessed, or rolled back) and gives the fleet's reboot slot back. Then, every
//! `check_interval` (jittered by a tenth either way, the first check within a minute of
//! boot), it asks init for a check of `SOURCE:TAG` and, when a newer version is there,
//! for an apply: the same `berth-updater run` service `berthctl update` starts, so
//! operators and the schedule never write at once. A version that already lost a
//! trial on this machine is not tried again. Once applied, the reboot waits for the
//! window (UTC), then for a FleetLock slot, then init reboots (stopping the containers
//! first, as any reboot does).

use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::time::{Duration, SystemTime};

use berth_control::{InitProxy, SlotStatus, UpdateRequest, UpdateStatus};
use berth_schema::update::{Policy, Reboot, UpdateConfig, Window, CONFIG_PATH};

use crate::fleetlock::FleetLock;

/// How often a refused FleetLock request, and a closed window, are looked at again.
const RETRY: Duration = Duration::from_secs(10);
/// How long one check or apply may take before the schedule gives up on it.
const PATIENCE: Duration = Duration::from_secs(3600);
/// The first check comes within this of the start (or the interval, if shorter).
const FIRST_CHECK: Duration = Duration::from_secs(60);

pub fn run() -> Result<(), String> {
    // A broken setting of automatic updates is the operator's to fix: said, and the
    // service ends as done, so neither the boot's ready line nor a trial's health waits
    // on it (a new OS version is not rolled back for its user-data).
    if let Err(e) = schedule() {
        println!("berth-updater: automatic updates stopped: {e}");
    }
    Ok(())
}

fn schedule() -> Result<(), String> {
    let Some(config) = UpdateConfig::load(Path::new(CONFIG_PATH))? else {
        println!("berth-updater: automatic updates are off (no berth.update in user-data)");
        return Ok(());
    };
    let Some(reference) = config.reference() else {
        println!("berth-updater: automatic updates are off (no berth.update.source)");
        return Ok(());
    };
    let window = match &config.reboot {
        Some(Reboot::Window { window }) => Some(window.parse::<Window>()?),
        _ => None,
    };
    let never = config.reboot == Some(Reboot::Policy(Policy::Never));
    let http = crate::payload::registry_client()?;
    let fleet = match config.fleetlock_url.as_deref() {
        Some(url) => Some(FleetLock::new(
            url,
            &node_id()?,
            config.fleetlock_group.as_deref().unwrap_or("default"),
        )),
        None => None,
    };
    println!(
        "berth-updater: automatic updates from {reference}, every {} s, reboot {}{}",
        config.interval().as_secs(),
        match (&window, never) {
            (_, true) => "never (by the operator)".to_string(),
            (Some(_), _) => format!("in the window {:?} (UTC)", window_text(&config)),
            (None, _) => "immediately".to_string(),
        },
        if fleet.is_some() {
            ", with FleetLock"
        } else {
            ""
        }
    );
    // Ready now, before waiting on the trial: the trial's health waits for every
    // service to be ready (or done), so waiting first would hold both forever. When
    // automatic updates are off, the service exits 0 without this and is done.
    berth_net::notify("READY=1\nSTATUS=automatic updates on\n");
    if let Some(f) = &fleet {
        wait_not_on_trial()?;
        retry("FleetLock steady-state", || f.steady_state(http.http()));
        println!("berth-updater: FleetLock: steady state reported");
    }
    let mut wait = jittered(config.interval().min(FIRST_CHECK), 0.0, 1.0);
    loop {
        std::thread::sleep(wait);
        wait = jittered(config.interval(), 0.9, 1.1);
        let applied = match check_and_apply(&reference) {
            Ok(Some(v)) => v,
            Ok(None) => continue,
            Err(e) => {
                eprintln!("berth-updater: automatic update: {e}");
                continue;
            }
        };
        if never {
            println!(
                "berth-updater: berth {applied} waits for a reboot (berth.update.reboot: never)"
            );
            continue;
        }
        loop {
            if let Some(w) = &window {
                if !w.contains(now()) {
                    println!("berth-updater: berth {applied}: waiting for the reboot window");
                    while !w.contains(now()) {
                        std::thread::sleep(RETRY);
                    }
                }
            }
            let Some(f) = &fleet else { break };
            retry("FleetLock pre-reboot", || f.pre_reboot(http.http()));
            if window.as_ref().is_none_or(|w| w.contains(now())) {
                println!("berth-updater: FleetLock: reboot slot taken");
                break;
            }
            // The slot came after the window closed: give it back, wait for the next.
            retry("FleetLock steady-state", || f.steady_state(http.http()));
            println!("berth-updater: FleetLock: the slot came after the window closed; given back");
        }
        println!("berth-updater: rebooting into berth {applied}");
        init_call(|init| async move { init.reboot().await })?;
        return Ok(());
    }
}

fn window_text(c: &UpdateConfig) -> String {
    match &c.reboot {
        Some(Reboot::Window { window }) => window.clone(),
        _ => String::new(),
    }
}

/// One check, and an apply when it finds a version newer than the running one that
/// did not lose a trial here and is not already waiting for a reboot. The version
/// applied (or waiting), if any.
fn check_and_apply(reference: &str) -> Result<Option<String>, String> {
    let checked = request("check", reference)?;
    if checked.state != "available" {
        return Ok(None);
    }
    let version = checked.version;
    let slots = init_call(|init| async move { init.slots().await })?;
    if let Some(other) = slots.iter().find(|s| !s.booted) {
        let same = other.version == version;
        match other.state.as_str() {
            "bad" if same => {
                println!(
                    "berth-updater: berth {version} lost its trial here ({}): not tried again",
                    other.why
                );
                return Ok(None);
            }
            // Kept in the other slot while an older one runs: an operator rolled back
            // from it. Theirs to take again (berthctl update apply).
            "good" if same => {
                println!(
                    "berth-updater: berth {version} was rolled back from here: not applied again automatically"
                );
                return Ok(None);
            }
            "trial" if same => return Ok(Some(version)),
            "trial" => {
                println!(
                    "berth-updater: berth {} waits for its trial: berth {version} comes after it",
                    other.version
                );
                return Ok(None);
            }
            _ => {}
        }
    }
    println!("berth-updater: berth {version} is available from {reference}: applying");
    let applied = request("apply", reference)?;
    if applied.state != "applied" {
        return Err(format!("apply of berth {version}: {}", applied.error));
    }
    Ok(Some(applied.version))
}

/// Asks init for `action` and waits for its end.
fn request(action: &str, source: &str) -> Result<UpdateStatus, String> {
    let r = UpdateRequest {
        action: action.into(),
        source: source.into(),
        allow_downgrade: false,
        id: 0,
    };
    let id = init_call(|init| {
        let r = r.clone();
        async move { init.update_start(&r).await }
    })?;
    let done = zbus::block_on(async {
        let conn = crate::apply::connect_init().await?;
        let init = InitProxy::new(&conn)
            .await
            .map_err(|e| format!("init's API: {e}"))?;
        berth_control::wait_update(&init, id, PATIENCE, |_| {}).await
    })?;
    if done.state == "failed" {
        return Err(format!("{action} of {source}: {}", done.error));
    }
    Ok(done)
}

/// Until init says the booted slot is not on trial (blessed, or a rollback happened).
fn wait_not_on_trial() -> Result<(), String> {
    let mut said = false;
    loop {
        let slots: Vec<SlotStatus> = init_call(|init| async move { init.slots().await })?;
        let trial = slots.iter().any(|s| s.booted && s.state == "trial");
        if !trial {
            return Ok(());
        }
        if !said {
            println!("berth-updater: this boot is a trial: the fleet's slot is given back once it is blessed");
            said = true;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Runs `what` until it succeeds, saying why not each time.
fn retry(name: &str, mut what: impl FnMut() -> Result<(), String>) {
    loop {
        match what() {
            Ok(()) => return,
            Err(e) => eprintln!("berth-updater: {name}: {e}; again in {} s", RETRY.as_secs()),
        }
        std::thread::sleep(RETRY);
    }
}

/// One call on init's API, on a connection of its own.
fn init_call<T, F, Fut>(call: F) -> Result<T, String>
where
    F: FnOnce(InitProxy<'static>) -> Fut,
    Fut: std::future::Future<Output = zbus::Result<T>>,
{
    zbus::block_on(async {
        let conn = crate::apply::connect_init().await?;
        let init = InitProxy::new(&conn)
            .await
            .map_err(|e| format!("init's API: {e}"))?;
        call(init).await.map_err(|e| match e {
            zbus::Error::MethodError(_, Some(msg), _) => msg,
            other => other.to_string(),
        })
    })
}

/// Where a machine whose host name is a default keeps its lock id.
const NODE_ID: &str = "/var/lib/berth/fleetlock-id";

/// This machine's name for the lock server: its host name as the cloud gave it, which
/// an operator recognises. A default name many machines share (`berth`, `localhost`)
/// would let them take one slot together: then an id made once and kept on /var.
fn node_id() -> Result<String, String> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if !host.is_empty() && host != "berth" && host != "localhost" {
        return Ok(host);
    }
    let path = Path::new(NODE_ID);
    if let Ok(id) = std::fs::read_to_string(path) {
        let id = id.trim();
        if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(id.to_string());
        }
    }
    let random = || {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    };
    let id = format!("{:016x}{:016x}", random(), random());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    berth_persist::write_file(path, id.as_bytes(), 0o644).map_err(|e| e.to_string())?;
    Ok(id)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `base` scaled by a random factor in `[low, high)`, so a fleet does not check (or
/// reboot) in step. The randomness is the standard library's per-process hash seed,
/// from the OS: no crate needed for a spread.
fn jittered(base: Duration, low: f64, high: f64) -> Duration {
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let unit = (r >> 11) as f64 / (1u64 << 53) as f64;
    base.mul_f64(low + (high - low) * unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_its_bounds() {
        let base = Duration::from_secs(100);
        for _ in 0..200 {
            let j = jittered(base, 0.9, 1.1);
            assert!(
                j >= Duration::from_secs(90) && j < Duration::from_secs(110),
                "{j:?}"
            );
        }
        assert!(jittered(base, 0.0, 1.0) < base);
    }

    #[test]
    fn fleetlock_speaks_zincatis_body() {
        let f = FleetLock::new("http://lock.example:8080/", "node-1", "workers");
        let v: serde_json::Value = serde_json::from_str(&f.body()).unwrap();
        assert_eq!(v["client_params"]["id"], "node-1");
        assert_eq!(v["client_params"]["group"], "workers");
    }
}
