//! The host's network (issue 8, first part): every ethernet link brought up as it
//! appears, a DHCPv4 lease on each (acquired, renewed, rebound, released at shutdown),
//! its address, routes (option 121 when given, else the router) and MTU applied, and
//! `/etc/resolv.conf` written from the leases.
//!
//! A service of its own (`berth-net`), not part of the agent: the agent's HTTP
//! datasources need the network up first, and a crash of either must not take the other
//! down. It is ready when every link present at start has a lease or [`BOOT_WAIT`] has
//! passed, so no cable holds the ready line.

use std::time::Duration;

pub mod apply;
pub mod clock;
pub mod config;
pub mod dhcp;
pub mod links;
pub mod platform;
pub mod sntp;
pub mod socket;
pub mod timesync;

/// How long the boot waits for the links present at start to get a lease.
pub const BOOT_WAIT: Duration = Duration::from_secs(10);

/// Tells init something (systemd's sd_notify protocol: a datagram to `$NOTIFY_SOCKET`);
/// nothing when not run as a notify service.
pub fn notify(text: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Ok(s) = std::os::unix::net::UnixDatagram::unbound() {
        let _ = s.send_to(text.as_bytes(), path);
    }
}

/// A line in berth-net's log (its stderr, which init keeps).
pub fn say(msg: &str) {
    eprintln!("berth-net: {msg}");
}
