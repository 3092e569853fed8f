//! The host's network (berth-net) on Berth's disk, three NICs: one on QEMU's restricted
//! user network (its DHCP server gives an address and mask, nothing more), one on a link
//! to a DHCP server in the test process (router, DNS, domain, MTU 1460, a 20 s lease:
//! the renewal is watched; NTP server in option 42, whose clock is an hour ahead), and one on a network with no DHCP server, which holds the
//! boot no longer than berth-net's bound. And an OpenStack config drive whose
//! `network_data.json` makes the second NIC static.

#[path = "support/dhcpd.rs"]
mod dhcpd;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::{boot, disk_config, new_disk};
use berth_tests::testd::TestdClient;

fn sh(testd: &mut TestdClient, script: &str) -> String {
    let out = testd.sh(script).unwrap();
    format!("{}{}", out.stdout, out.stderr)
}

/// The guest's link names by MAC (the kernel names them in probe order).
fn link_named(testd: &mut TestdClient) -> impl Fn(&str) -> String {
    let links = sh(
        testd,
        "for l in /sys/class/net/*; do echo \"$(basename $l) $(cat $l/address)\"; done",
    );
    move |mac: &str| -> String {
        links
            .lines()
            .find(|l| l.ends_with(mac))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("no link with {mac}: {links}"))
            .to_string()
    }
}

fn has(addrs: &str, name: &str, cidr: &str) -> bool {
    addrs
        .lines()
        .any(|l| l.contains(&format!(" {name} ")) && l.contains(cidr))
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
    let link = link_named(&mut testd);
    let (first, second, silent) = (
        link("52:54:00:00:00:10"),
        link("52:54:00:00:00:11"),
        link("52:54:00:00:00:12"),
    );
    assert!(has(&addrs, &first, "10.0.2.15/24"), "{addrs}");
    assert!(has(&addrs, &second, "10.9.0.15/24"), "{addrs}");
    assert!(
        !addrs.lines().any(|l| l.contains(&format!(" {silent} "))),
        "{addrs}"
    );
    // IPv6: the kernel's SLAAC from the user network's router advertisements (prefix
    // fec0::/64), the address made from the MAC (EUI-64).
    let v6 = sh(&mut testd, "cat /proc/net/if_inet6");
    assert!(
        v6.lines()
            .any(|l| l.starts_with("fec0000000000000505400fffe000010") && l.ends_with(&first)),
        "{v6}"
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
    // The clock: stepped at boot to the time server option 42 named (an hour ahead).
    assert!(log.contains("time servers: 10.9.0.1"), "{log}");
    // About an hour: the guest's clock starts from the RTC, whole seconds behind.
    let stepped: f64 = log
        .split("clock stepped ")
        .nth(1)
        .and_then(|rest| rest.split(" s").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no step in {log}"));
    assert!((stepped - 3600.0).abs() < 10.0, "{log}");
    let guest: u64 = sh(&mut testd, "date +%s").trim().parse().unwrap();
    let expected = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        + dhcpd::CLOCK_AHEAD;
    assert!(
        guest.abs_diff(expected.as_secs()) < 30,
        "guest clock {guest}, expected about {}",
        expected.as_secs()
    );
    // The silent link gave up within the bound and said so; the boot went on.
    let log = sh(&mut testd, "berthctl service logs -n 50 berth-net");
    assert!(
        log.contains(&format!("no lease yet on {silent} after 10 s")),
        "{log}"
    );
    assert!(console.contains("berth: ready"), "{console}");
}

/// The second NIC by OpenStack's `network_data.json` on a config drive (FAT, `config-2`,
/// with the instance's user-data and metadata too):
/// static IPv4 and IPv6 addresses, routes, MTU and a resolver, no DHCP on it even though
/// a DHCP server is there to answer; the first NIC keeps DHCP as its network says.
const NETWORK_DATA: &str = r#"{
  "links": [
    {"id": "tap0", "type": "ovs", "ethernet_mac_address": "52:54:00:00:00:20", "mtu": null},
    {"id": "tap1", "type": "phy", "ethernet_mac_address": "52:54:00:00:00:21", "mtu": 1400}
  ],
  "networks": [
    {"id": "n0", "link": "tap0", "type": "ipv4_dhcp", "network_id": "a"},
    {"id": "n1", "link": "tap1", "type": "ipv4", "ip_address": "10.9.0.77",
     "netmask": "255.255.255.0",
     "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.9.0.1"},
                {"network": "192.168.50.0", "netmask": "255.255.255.0", "gateway": "10.9.0.254"}],
     "services": [{"type": "dns", "address": "10.9.0.54"}]},
    {"id": "n2", "link": "tap1", "type": "ipv6", "ip_address": "2001:db8:9::77/64"}
  ],
  "services": [{"type": "dns", "address": "10.9.0.55"}]
}"#;

/// The drive's user-data: its own hostname and a container.
const CONFIG_DRIVE_USER_DATA: &[u8] = b"#cloud-config\nhostname: from-config-drive\nberth:\n  \
containers:\n    ticker:\n      image: berth.local/busybox:latest\n      \
command: [\"sh\", \"-c\", \"while true; do echo tick; sleep 1; done\"]\n      network: none\n";

#[test]
fn a_config_drive_makes_the_second_link_static() {
    let t = tempfile::tempdir().unwrap();
    new_disk(t.path());
    let drive = t.path().join("config-drive.img");
    berth_tests::volumes::fat(
        &drive,
        "config-2",
        &[
            (
                "openstack/latest/network_data.json",
                NETWORK_DATA.as_bytes(),
            ),
            (
                "openstack/latest/meta_data.json",
                br#"{"uuid": "5d2f6c3a-9d2e-4c55-8f0e-3b7f1c2a9e10", "hostname": "vm-7.novalocal"}"#,
            ),
            ("openstack/latest/user_data", CONFIG_DRIVE_USER_DATA),
        ],
    )
    .unwrap();
    let server = dhcpd::start(600);
    let mut cfg = disk_config("network-static", t.path());
    cfg.extra_args = [
        "-netdev",
        "user,id=n0,restrict=on",
        "-device",
        "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:20",
        "-netdev",
        &server.netdev("n1"),
        "-device",
        "virtio-net-pci,netdev=n1,mac=52:54:00:00:00:21",
        // An empty PCIe slot for the NIC hot-plugged below (q35 has no hot-plug on its
        // root bus).
        "-device",
        "pcie-root-port,id=hp0,bus=pcie.0,chassis=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(berth_tests::volumes::drive_args(&drive, "cfg"))
    .collect();
    let mut vm = boot(cfg);
    let console = vm.console();
    let mut testd = vm.testd().expect("testd");
    let link = link_named(&mut testd);
    let (first, second) = (link("52:54:00:00:00:20"), link("52:54:00:00:00:21"));

    // The agent found the drive and handed the settings over; berth-net applied them.
    let agent = sh(&mut testd, "berthctl service logs -n 20 berth-agent");
    assert!(
        agent.contains("datasource: config drive (/dev/vd"),
        "{agent}"
    );
    let log = sh(&mut testd, "berthctl service logs -n 50 berth-net");
    assert!(
        log.contains(&format!("{second}: static config for 52:54:00:00:00:21")),
        "{log}"
    );
    let addrs = sh(&mut testd, "ip -4 -o addr show");
    assert!(has(&addrs, &first, "10.0.2.15/24"), "{addrs}");
    assert!(has(&addrs, &second, "10.9.0.77/24"), "{addrs}");
    assert!(
        !addrs.contains("10.9.0.15"),
        "a lease on the static link: {addrs}"
    );
    let v6 = sh(&mut testd, "cat /proc/net/if_inet6");
    assert!(
        v6.lines()
            .any(|l| l.starts_with("20010db8000900000000000000000077") && l.ends_with(&second)),
        "{v6}"
    );
    let routes = sh(&mut testd, "ip route");
    assert!(
        routes.contains(&format!("default via 10.9.0.1 dev {second}")),
        "{routes}"
    );
    assert!(
        routes.contains(&format!("192.168.50.0/24 via 10.9.0.254 dev {second}")),
        "{routes}"
    );
    let mtu = sh(&mut testd, &format!("cat /sys/class/net/{second}/mtu"));
    assert_eq!(mtu.trim(), "1400");
    // The host's resolver first, then the link's.
    let resolv = sh(&mut testd, "cat /etc/resolv.conf");
    assert!(
        resolv.contains("nameserver 10.9.0.55\nnameserver 10.9.0.54\n"),
        "{resolv}"
    );
    // What berth-net says it has, for the agent and operators.
    let state = sh(&mut testd, "cat /run/berth/network-state.json");
    let state: serde_json::Value = serde_json::from_str(&state).expect(&state);
    let links = state["links"].as_array().unwrap();
    let of = |name: &str| links.iter().find(|l| l["name"] == name).unwrap().clone();
    assert_eq!(of(&first)["lease"]["address"], "10.0.2.15/24", "{state}");
    assert_eq!(of(&second)["dhcp4"], false, "{state}");
    // berth-net started after the agent had read the drive: the static link never
    // asked for a lease, and the ready line shows its static address.
    assert_eq!(server.acks.load(Ordering::SeqCst), 0);
    let ready = console
        .lines()
        .find(|l| l.starts_with("berth: ready"))
        .unwrap_or_else(|| panic!("no ready line: {console}"));
    assert!(ready.contains(&format!("{second}=10.9.0.77")), "{ready}");
    // The drive's user-data: its hostname, its container.
    assert!(ready.contains("hostname from-config-drive,"), "{ready}");
    crate::common::assert_running(&mut testd, "ticker");

    // A NIC plugged in now is heard of (RTNLGRP_LINK), brought up and leased.
    vm.qmp()
        .execute(
            "netdev_add",
            Some(serde_json::json!({
                "type": "user", "id": "hp", "restrict": true, "net": "10.5.0.0/24"
            })),
        )
        .unwrap();
    vm.qmp()
        .execute(
            "device_add",
            Some(serde_json::json!({
                "driver": "virtio-net-pci", "id": "hpnic", "netdev": "hp",
                "mac": "52:54:00:00:00:22", "bus": "hp0"
            })),
        )
        .unwrap();
    let plugged = Instant::now();
    loop {
        let addrs = sh(&mut testd, "ip -4 -o addr show");
        if addrs.contains("10.5.0.15/24") {
            eprintln!("hot-plugged NIC leased after {:?}", plugged.elapsed());
            break;
        }
        assert!(
            plugged.elapsed() < Duration::from_secs(60),
            "no lease on the hot-plugged NIC: {addrs}\n{}",
            sh(&mut testd, "berthctl service logs -n 30 berth-net")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let third = link_named(&mut testd)("52:54:00:00:00:22");
    let log = sh(&mut testd, "berthctl service logs -n 50 berth-net");
    assert!(log.contains(&format!("{third}: up")), "{log}");
}
