//! Bridge networking in the guest: a container on the bridge serves a published port
//! that answers from the host through QEMU's hostfwd; a port it listens on but does not
//! publish does not answer; it reaches a server outside the guest through NAT but not
//! the cloud metadata address, which a container declared with `allow_metadata` does
//! reach; its resolv.conf is the host's.
//!
//! The guest's network is QEMU's user network, restricted: it reaches only what the test
//! forwards. The "outside" and the metadata service are test servers on 127.0.0.1,
//! forwarded with guestfwd (QEMU 7.2 takes guestfwd addresses inside the user network
//! only, hence 169.254.169.0/24). The guest's own address comes from that network's DHCP
//! server, through berth-net.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use berth_tests::http::{free_port, get};
use berth_tests::testd::TestdClient;
use common::{boot, disk_config, new_disk};

fn sh(testd: &mut TestdClient, script: &str) -> (i32, String) {
    let out = testd.sh(script).unwrap();
    let signal = out
        .signal
        .map(|s| format!("(killed by signal {s})"))
        .unwrap_or_default();
    (
        out.exit_code.unwrap_or(-1),
        format!("{}{}{signal}", out.stdout, out.stderr),
    )
}

/// A one-line HTTP server on 127.0.0.1 answering every request with `body`.
fn serve(body: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut s = stream;
            let mut buf = [0u8; 1024];
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn bridge_containers_publish_ports_reach_out_through_nat_but_not_metadata() {
    let outside = serve("outer-ok\n");
    let metadata = serve("metadata-ok\n");
    let published = free_port();
    let unpublished = free_port();
    let t = tempfile::tempdir().unwrap();
    new_disk(t.path());
    let mut cfg = disk_config("bridge", t.path());
    let netdev = format!(
        "user,id=n0,restrict=on,net=169.254.169.0/24,host=169.254.169.2,dhcpstart=169.254.169.15,\
         hostfwd=tcp:127.0.0.1:{published}-:8080,hostfwd=tcp:127.0.0.1:{unpublished}-:8081,\
         guestfwd=tcp:169.254.169.4:8000-cmd:socat - TCP:127.0.0.1:{outside},\
         guestfwd=tcp:169.254.169.254:80-cmd:socat - TCP:127.0.0.1:{metadata}"
    );
    cfg.extra_args = vec![
        "-netdev".into(),
        netdev,
        "-device".into(),
        "virtio-net-pci,netdev=n0".into(),
    ];
    let vm = boot(cfg);
    let mut testd = vm.testd().expect("testd");

    // The host's side: its lease (berth-net, before the ready line; a restricted user
    // network hands out no router or DNS, so resolv.conf is written here), the API.
    let (code, out) = sh(
        &mut testd,
        "ip -4 -o addr show eth0 | grep -q 169.254.169.15/24 && \
         echo 'nameserver 169.254.169.4' > /etc/resolv.conf && \
         for i in $(seq 150); do [ -S /run/berth/runtime.sock ] && break; sleep 0.2; done",
    );
    assert_eq!(code, 0, "{out}");

    let (code, out) = sh(
        &mut testd,
        r#"mkdir -p /etc/berth/containers.d && cd /etc/berth/containers.d &&
printf '%s\n' 'image = "berth.local/busybox:latest"' \
  'command = ["sh", "-c", "mkdir -p /www && echo hello-from-bridge > /www/index.html && httpd -p 8081 -h /www && exec httpd -f -p 80 -h /www"]' \
  'ports = ["8080:80"]' 'restart = "always"' > web.toml &&
printf '%s\n' 'image = "berth.local/busybox:latest"' 'command = ["sleep", "100000"]' \
  'allow_metadata = true' > meta.toml &&
berthctl reload"#,
    );
    assert_eq!(code, 0, "{out}");
    let deadline = Instant::now() + Duration::from_secs(90);
    let ps = loop {
        let (_, ps) = sh(&mut testd, "berthctl --json ps");
        let list: serde_json::Value = serde_json::from_str(&ps).unwrap_or_default();
        let running = list
            .as_array()
            .map(|l| l.iter().filter(|c| c["state"] == "running").count())
            .unwrap_or(0);
        if running == 2 {
            break list;
        }
        if Instant::now() > deadline {
            let (_, log) = sh(&mut testd, "berthctl service logs -n 60 berth-daemon");
            panic!("containers not running: {ps}\n{log}");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let address = |name: &str| {
        ps.as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["address"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    let (web, meta) = (address("web"), address("meta"));
    assert!(
        web.starts_with("10.88.0.") && meta.starts_with("10.88.0."),
        "{ps}"
    );
    assert_ne!(web, meta);

    // The published port answers from the host (hostfwd -> eth0:8080 -> DNAT -> :80).
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        match get(published) {
            Ok(b) => break b,
            Err(e) if Instant::now() > deadline => {
                let (_, rules) = sh(&mut testd, "nft list table inet berth");
                panic!("published port: {e}\n{rules}");
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    };
    assert_eq!(body.trim(), "hello-from-bridge");
    // Its unpublished port does not.
    assert!(get(unpublished).is_err(), "an unpublished port answered");

    // Out through NAT, but not to the metadata address; the allowed one reaches it.
    // (In the containers: the test image's own busybox-static crashes in glibc's
    // resolver, which finds the image's NSS modules and cannot load them statically.)
    let http = |container: &str, address: &str, port: u16| {
        format!(
            "berthctl exec {container} sh -c \"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {address} {port}\""
        )
    };
    let (code, out) = sh(&mut testd, &http("web", "169.254.169.4", 8000));
    assert!(code == 0 && out.contains("outer-ok"), "{code}: {out}");
    let (_, out) = sh(&mut testd, &http("web", "169.254.169.254", 80));
    assert!(
        !out.contains("metadata-ok"),
        "the metadata address answered a container: {out}"
    );
    let (code, out) = sh(&mut testd, &http("meta", "169.254.169.254", 80));
    assert!(code == 0 && out.contains("metadata-ok"), "{code}: {out}");
    // DNS as the host has it.
    let (_, out) = sh(&mut testd, "berthctl exec web cat /etc/resolv.conf");
    assert_eq!(out.trim(), "nameserver 169.254.169.4");

    // Removed: its namespace and its rules go.
    let (code, out) = sh(
        &mut testd,
        "rm /etc/berth/containers.d/web.toml && berthctl reload && \
         for i in $(seq 50); do [ -e /run/berth/netns/web ] || break; sleep 0.2; done; \
         ls /run/berth/netns; nft list table inet berth",
    );
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("8080") && !out.contains("web"), "{out}");
    assert!(out.contains("meta"), "{out}");
    assert!(
        get(published).is_err(),
        "a removed container's port answered"
    );
}
