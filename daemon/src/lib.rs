//! Berth's container daemon: container declarations (`declaration`), capability sets
//! (`caps`), the default seccomp profile (`seccomp`), the OCI runtime config made from a
//! declaration and its image (`spec`), bringing a container up (`launch`), logs,
//! volumes, the restart policy (`restart`), the supervisor's loop (`supervisor`, with
//! adoption and reconciliation of declarations), what it remembers across its own
//! restarts (`status`, `fdstore`), its D-Bus API (`api`) and its Prometheus endpoint
//! (`metrics`).

pub mod api;
pub use berth_schema::{caps, declaration};
pub mod fdstore;
pub mod launch;
pub mod logs;
pub mod metrics;
pub mod netns;
pub mod network;
pub mod restart;
pub mod seccomp;
pub mod spec;
pub mod status;
pub mod supervisor;
pub mod volumes;

/// Records an event: a line in the daemon's log, and one in init's ring, which
/// `berthctl events` reads.
pub fn record(event: berth_control::Event) {
    eprintln!("berth-daemon: event: {}", event.line());
    berth_control::events::send(event);
}
