//! Bridge networking in the guest: a container on the bridge serves a published port
//! that answers from the host through QEMU's hostfwd; a port it listens on but does not
//! publish does not answer; it reaches a server outside the guest through NAT but not
//! the cloud metadata address, which a container declared with `allow_metadata` does
//! reach; its resolv.conf is the host's. And what a container holding CAP_NET_RAW could
//! try: speaking with an allowed neighbour's address to the metadata service, a frame to
//! 127.0.0.1 from the network reaching a port published on 127.0.0.1, a router
//! advertisement changing the host's routes.
//!
//! The guest's network is QEMU's user network, restricted: it reaches only what the test
//! forwards. The "outside" and the metadata service are test servers on 127.0.0.1,
//! forwarded with guestfwd (QEMU 7.2 takes guestfwd addresses inside the user network
//! only, hence 169.254.169.0/24). The guest's own address comes from that network's DHCP
//! server, through berth-net.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use crate::common::{boot, disk_config, new_disk};
use berth_tests::http::{free_port, get};
use berth_tests::testd::TestdClient;

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
  'ports = ["8080:80", "127.0.0.1:9090:80"]' 'restart = "always"' > web.toml &&
printf '%s\n' 'image = "berth.local/busybox:latest"' 'command = ["sleep", "100000"]' \
  'allow_metadata = true' > meta.toml &&
printf '%s\n' 'image = "berth.local/busybox:latest"' 'command = ["true"]' \
  'allow_metadata = true' > ghost.toml &&
printf '%s\n' 'image = "berth.local/busybox:latest"' 'command = ["sleep", "100000"]' \
  'cap_add = ["NET_ADMIN"]' > spoof.toml &&
berthctl reload"#,
    );
    assert_eq!(code, 0, "{out}");
    let deadline = Instant::now() + Duration::from_secs(90);
    let ps = loop {
        let (_, ps) = sh(&mut testd, "berthctl --json ps");
        let list: serde_json::Value = serde_json::from_str(&ps).unwrap_or_default();
        let running = |name: &str| {
            list.as_array().is_some_and(|l| {
                l.iter()
                    .any(|c| c["name"] == name && c["state"] == "running")
            })
        };
        if ["web", "meta", "spoof"].into_iter().all(running) {
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

    // Isolation. A container holds CAP_NET_RAW, and `spoof` CAP_NET_ADMIN too: it takes
    // the address of `ghost`, which may reach the metadata service but has exited (so
    // the address is spoof's alone, and no ARP race decides the outcome). The bridge's
    // port rules drop what it sends from an address that is not its own.
    let (_, all) = sh(&mut testd, "berthctl --json ps -a");
    let all: serde_json::Value = serde_json::from_str(&all).unwrap_or_default();
    let ghost = all
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == "ghost"))
        .and_then(|c| c["address"].as_str())
        .unwrap_or_default()
        .to_string();
    let (_, rules) = sh(&mut testd, "nft list table inet berth");
    assert!(
        ghost.starts_with("10.88.0.") && rules.contains(&ghost),
        "ghost's address {ghost:?} is not among the allowed: {all}\n{rules}"
    );
    let (_, out) = sh(
        &mut testd,
        &format!(
            "berthctl exec spoof sh -c \"ip addr flush dev eth0 && ip addr add {ghost}/16 dev eth0 && \
             ip route add default via 10.88.0.1 && printf 'GET / HTTP/1.0\\r\\n\\r\\n' | \
             nc -w 5 169.254.169.254 80\""
        ),
    );
    assert!(
        !out.contains("metadata-ok"),
        "a container speaking with an allowed neighbour's address reached the metadata service: {out}"
    );

    // A frame to 127.0.0.1 arriving on a NIC is not DNAT'd to the port `web` publishes on
    // 127.0.0.1:9090. The NIC is a veth whose other end is in a namespace of its own;
    // the same kind of SYN to the NIC's own address and port 8080 is answered (so the
    // path works, and only the loopback destination is refused). The veth pair goes
    // with the namespace, asynchronously: deleting vta afterwards may find it gone.
    let (code, out) = sh(
        &mut testd,
        "unshare -n sleep 600 >/dev/null 2>&1 & P=$!; sleep 0.5; \
         ip link add vta type veth && ip link set vta address 02:00:00:00:00:01 && \
         ip link set veth0 address 02:00:00:00:00:02 && ip link set veth0 netns $P && \
         ip addr add 192.0.2.1/24 dev vta && ip link set vta up && \
         nsenter -t $P -n sh -c 'ip addr add 192.0.2.2/24 dev veth0 && ip link set veth0 up' && \
         sleep 1; \
         nsenter -t $P -n berth-testsvc syn veth0 02:00:00:00:00:02 02:00:00:00:00:01 192.0.2.2 192.0.2.1 8080; \
         echo published=$?; \
         nsenter -t $P -n berth-testsvc syn veth0 02:00:00:00:00:02 02:00:00:00:00:01 192.0.2.2 127.0.0.1 9090; \
         echo loopback=$?; kill $P; wait $P 2>/dev/null; \
         ip link del vta 2>/dev/null; true",
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("published=0"),
        "the control SYN was not answered: {out}"
    );
    assert!(
        out.contains("loopback=1"),
        "a frame to 127.0.0.1 from the network reached a container: {out}"
    );

    // A router advertisement from a container changes none of the host's routes.
    let mac = {
        let o: Vec<u8> = web.split('.').filter_map(|p| p.parse().ok()).collect();
        format!("02:62:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
    };
    let router =
        berth_tests::frames::link_local(berth_tests::frames::parse_mac(&mac).expect("web's MAC"));
    let (code, out) = sh(
        &mut testd,
        &format!(
            "nsenter -n/run/berth/netns/web berth-testsvc router-advert eth0 {mac} && sleep 2 && ip -6 route"
        ),
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("sent from {router}")), "{out}");
    assert!(
        !out.contains(&format!("via {router}")),
        "the host routes through a container after its router advertisement: {out}"
    );

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
