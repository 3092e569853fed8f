//! The host's network (berth-net) on Berth's disk, three NICs: one on QEMU's restricted
//! user network (its DHCP server gives an address and mask, nothing more), one on a link
//! to a DHCP server in the test process (router, DNS, domain, MTU 1460, a 20 s lease:
//! the renewal is watched), and one on a network with no DHCP server, which holds the
//! boot no longer than berth-net's bound.

mod common;
#[path = "support/dhcpd.rs"]
mod dhcpd;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use berth_tests::testd::TestdClient;
use common::{boot, disk_config, new_disk};

fn sh(testd: &mut TestdClient, script: &str) -> String {
    let out = testd.sh(script).unwrap();
    format!("{}{}", out.stdout, out.stderr)
}

#[test]
fn every_link_gets_its_lease_and_a_silent_one_does_not_hold_the_boot() {
    let t = tempfile::tempdir().unwrap();
    new_disk(t.path());
    let server = dhcpd::start(20);
    let mut cfg = disk_config("network", t.path());
    let netdev = server.netdev("n1");
    cfg.extra_args = [
        "-netdev",
        "user,id=n0,restrict=on",
        "-device",
        "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:10",
        "-netdev",
        &netdev,
        "-device",
        "virtio-net-pci,netdev=n1,mac=52:54:00:00:00:11",
        // A NIC on a hub nothing else is on: no DHCP server will ever answer.
        "-netdev",
        "hubport,id=n2,hubid=9",
        "-device",
        "e1000,netdev=n2,mac=52:54:00:00:00:12",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let vm = boot(cfg);
    let console = vm.console();
    let mut testd = vm.testd().expect("testd");

    let addrs = sh(&mut testd, "ip -4 -o addr show");
    // Links by MAC (the kernel names them in probe order).
    let links = sh(
        &mut testd,
        "for l in /sys/class/net/*; do echo \"$(basename $l) $(cat $l/address)\"; done",
    );
    let link = |mac: &str| -> String {
        links
            .lines()
            .find(|l| l.ends_with(mac))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("no link with {mac}: {links}"))
            .to_string()
    };
    let (first, second, silent) = (
        link("52:54:00:00:00:10"),
        link("52:54:00:00:00:11"),
        link("52:54:00:00:00:12"),
    );
    let has = |addrs: &str, name: &str, cidr: &str| {
        addrs
            .lines()
            .any(|l| l.contains(&format!(" {name} ")) && l.contains(cidr))
    };
    assert!(has(&addrs, &first, "10.0.2.15/24"), "{addrs}");
    assert!(has(&addrs, &second, "10.9.0.15/24"), "{addrs}");
    assert!(
        !addrs.lines().any(|l| l.contains(&format!(" {silent} "))),
        "{addrs}"
    );
    // What the test server's lease carried: the router, the MTU, DNS and domain.
    let routes = sh(&mut testd, "ip route");
    assert!(
        routes.contains(&format!("default via 10.9.0.1 dev {second}")),
        "{routes}"
    );
    let mtu = sh(&mut testd, &format!("cat /sys/class/net/{second}/mtu"));
    assert_eq!(mtu.trim(), dhcpd::MTU.to_string());
    let resolv = sh(&mut testd, "cat /etc/resolv.conf");
    assert!(resolv.contains("nameserver 10.9.0.53"), "{resolv}");
    assert!(resolv.contains("search test.internal"), "{resolv}");
    // The 20 s lease is renewed at T1 (10 s), unicast to the server (whose ARP the
    // server answers), and the address stays.
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.acks.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "no renewal seen");
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = sh(&mut testd, "berthctl service logs -n 50 berth-net");
    assert!(
        log.matches(&format!("{second}: 10.9.0.15/24 via 10.9.0.1"))
            .count()
            >= 2,
        "{log}"
    );
    let addrs = sh(&mut testd, "ip -4 -o addr show");
    assert!(has(&addrs, &second, "10.9.0.15/24"), "{addrs}");
    // The silent link gave up within the bound and said so; the boot went on.
    let log = sh(&mut testd, "berthctl service logs -n 50 berth-net");
    assert!(
        log.contains(&format!("no lease yet on {silent} after 10 s")),
        "{log}"
    );
    assert!(console.contains("berth: ready"), "{console}");
}
