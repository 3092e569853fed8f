//! What init knows, asked over its API at each scrape: its services' states, restarts
//! and last exits; and, once, the booted version and slot (`berth_info`).

use std::path::Path;
use std::sync::OnceLock;

use berth_control::{ServiceStatus, SlotStatus};

use super::exposition::{Exposition, Kind};

/// A service's states (init's), one series each in `berth_service_state`.
const STATES: [&str; 8] = [
    "inactive",
    "waiting",
    "starting",
    "ready",
    "stopping",
    "restarting",
    "failed",
    "done",
];

/// The booted slot's version, build and name; asked once (they do not change during a
/// boot), and not at all when init was unreachable.
static BOOTED: OnceLock<(String, String, String)> = OnceLock::new();

fn unknown_slot() -> (String, String, String) {
    (
        env!("CARGO_PKG_VERSION").to_string(),
        String::new(),
        String::new(),
    )
}

static UNKNOWN: std::sync::LazyLock<(String, String, String)> =
    std::sync::LazyLock::new(unknown_slot);

/// init's services, and its slots when asked (None when it could not say: not yet
/// read, or no slots on this boot; `NotSupported` means none, kept as empty).
fn ask_init(want_slots: bool) -> zbus::Result<(Vec<ServiceStatus>, Option<Vec<SlotStatus>>)> {
    zbus::block_on(async {
        let conn = berth_control::connect(Path::new(berth_control::INIT_SOCKET)).await?;
        let init = berth_control::InitProxy::new(&conn).await?;
        let services = init.services().await?;
        let slots = if want_slots {
            match init.slots().await {
                Ok(s) => Some(s),
                // Booted without the slots' bootloader: there are none to wait for.
                Err(zbus::Error::MethodError(name, _, _))
                    if name.as_str() == "org.freedesktop.DBus.Error.NotSupported" =>
                {
                    Some(Vec::new())
                }
                Err(_) => None,
            }
        } else {
            None
        };
        Ok((services, slots))
    })
}

pub fn write(e: &mut Exposition) {
    let (services, slots) = match ask_init(BOOTED.get().is_none()) {
        Ok(got) => got,
        Err(err) => {
            eprintln!("berth-daemon: metrics: init's services: {err}");
            return;
        }
    };
    // Kept once init answered about the slots (a machine without them has none to
    // tell); until then the package's version, asked again at the next scrape.
    let booted = match slots {
        Some(slots) => BOOTED.get_or_init(|| {
            slots
                .iter()
                .find(|s| s.booted)
                .map(|s| (s.version.clone(), s.build_id.clone(), s.slot.clone()))
                .unwrap_or_else(unknown_slot)
        }),
        None => BOOTED.get().unwrap_or(&UNKNOWN),
    };
    e.family(
        "berth_info",
        Kind::Gauge,
        "Berth's version, build and the boot slot it runs from (empty without slots).",
    );
    e.sample(
        "berth_info",
        &[
            ("version", &booted.0),
            ("build_id", &booted.1),
            ("slot", &booted.2),
        ],
        1u64,
    );
    services_rows(e, &services);
}

fn services_rows(e: &mut Exposition, services: &[ServiceStatus]) {
    e.family(
        "berth_service_state",
        Kind::Gauge,
        "1 for the state init's service is in, 0 for the others.",
    );
    for s in services {
        for state in STATES {
            e.sample(
                "berth_service_state",
                &[("service", &s.name), ("state", state)],
                u64::from(s.state == state),
            );
        }
    }
    e.family(
        "berth_service_restarts_total",
        Kind::Counter,
        "Restarts of init's service during this boot.",
    );
    for s in services {
        e.sample(
            "berth_service_restarts_total",
            &[("service", &s.name)],
            u64::from(s.restarts),
        );
    }
    e.family(
        "berth_service_last_exit_info",
        Kind::Gauge,
        "How the service's last process ended (only services that had one).",
    );
    for s in services.iter().filter(|s| !s.last_exit.is_empty()) {
        e.sample(
            "berth_service_last_exit_info",
            &[("service", &s.name), ("last_exit", &s.last_exit)],
            1u64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_has_one_state_set() {
        let s = ServiceStatus {
            name: "berth-agent".into(),
            state: "ready".into(),
            pid: 10,
            restarts: 2,
            last_exit: "killed by SIGKILL".into(),
            status: String::new(),
            since_ms: 0,
            autostart: true,
            delegate: false,
            stored_fds: 0,
            pending_exits: 0,
        };
        let mut e = Exposition::default();
        services_rows(&mut e, &[s]);
        let t = e.finish();
        assert!(t.contains("berth_service_state{service=\"berth-agent\",state=\"ready\"} 1\n"));
        assert_eq!(t.matches("} 0\n").count(), 7, "{t}");
        assert!(t.contains("berth_service_restarts_total{service=\"berth-agent\"} 2\n"));
        assert!(t.contains("last_exit=\"killed by SIGKILL\"} 1\n"));
    }
}
