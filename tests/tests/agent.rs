//! The config agent on Berth's disk: the demo's user-data through QEMU's fw_cfg (a
//! hostname and a container serving a page on a published port, fetched from the host);
//! a NoCloud volume (ISO 9660: the metadata's hostname, a container, a file); and
//! user-data broken
//! every way we could think of, each time reaching `berth: ready` and saying what it
//! skipped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{boot, disk_config, new_disk};
use berth_tests::http::{free_port, get_patiently};
use berth_tests::testd::TestdClient;
use berth_tests::vm::Vm;

fn sh(testd: &mut TestdClient, script: &str) -> String {
    let out = testd.sh(script).unwrap();
    format!("{}{}", out.stdout, out.stderr)
}

fn ready_line(vm: &Vm) -> String {
    let console = vm.console();
    console
        .lines()
        .find(|l| l.starts_with("berth: ready"))
        .unwrap_or_else(|| panic!("no ready line: {console}"))
        .to_string()
}

/// A restricted user network forwarding 127.0.0.1:`port` to the guest's 8080.
fn forwarding(port: u16) -> Vec<String> {
    [
        "-netdev",
        &format!("user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:8080"),
        "-device",
        "virtio-net-pci,netdev=n0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn fw_cfg(path: &Path) -> Vec<String> {
    vec![
        "-fw_cfg".into(),
        format!("name=opt/berth/user-data,file={}", path.display()),
    ]
}

#[test]
fn the_demo_through_fw_cfg_serves_its_page() {
    let demo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../demo/user-data.yaml");
    let t = tempfile::tempdir().unwrap();
    new_disk(t.path());
    let port = free_port();
    let mut cfg = disk_config("agent-demo", t.path());
    cfg.extra_args = forwarding(port);
    cfg.extra_args.extend(fw_cfg(&demo));
    let vm = boot(cfg);
    let body = get_patiently(port, Duration::from_secs(90)).unwrap_or_else(|e| {
        panic!("the demo page: {e}\n{}", vm.console());
    });
    assert_eq!(body.trim(), "hello from a Berth container");
    let ready = ready_line(&vm);
    assert!(ready.contains("hostname berth-demo"), "{ready}");
    let console = vm.console();
    assert!(
        console.contains("berth-agent: config from QEMU fw_cfg opt/berth/user-data: 3 items applied, 0 failed, 0 errors, 0 warnings"),
        "{console}"
    );
}

#[test]
fn nocloud_gives_the_hostname_a_file_and_a_container() {
    let t = tempfile::tempdir().unwrap();
    new_disk(t.path());
    // ISO 9660 here (the config drive test uses FAT).
    let volume = t.path().join("cidata.iso");
    berth_tests::volumes::iso(
        &volume,
        "cidata",
        &[
            (
                "meta-data",
                b"instance-id: iid-nocloud-1\nlocal-hostname: nocloud-host\n",
            ),
            (
                "user-data",
                b"#cloud-config\nwrite_files:\n  - path: /etc/berth/note\n    content: from-nocloud\n\
berth:\n  containers:\n    ticker:\n      image: berth.local/busybox:latest\n      \
command: [\"sh\", \"-c\", \"while true; do echo tick; sleep 1; done\"]\n      network: none\n",
            ),
        ],
    )
    .unwrap();
    let mut cfg = disk_config("agent-nocloud", t.path());
    cfg.extra_args = berth_tests::volumes::drive_args(&volume, "cidata");
    let vm = boot(cfg);
    let mut testd = vm.testd().expect("testd");
    assert!(ready_line(&vm).contains("hostname nocloud-host"));
    assert_eq!(sh(&mut testd, "cat /etc/berth/note"), "from-nocloud");
    let report = sh(&mut testd, "cat /run/berth/agent/report.json");
    let report: serde_json::Value = serde_json::from_str(&report).expect(&report);
    assert_eq!(report["instance_id"], "iid-nocloud-1", "{report}");
    assert!(report["source"]
        .as_str()
        .unwrap()
        .starts_with("NoCloud (/dev/vd"));
    crate::common::assert_running(&mut testd, "ticker");
    // berthctl config, over the agent's API.
    let config = sh(&mut testd, "berthctl config");
    assert!(config.starts_with("source: NoCloud (/dev/vd"), "{config}");
    assert!(config.contains("(instance iid-nocloud-1)"), "{config}");
    assert!(config.contains("ok     hostname"), "{config}");
    assert!(config.contains("container ticker"), "{config}");
    // Kept for the boots that find no datasource.
    let kept = sh(&mut testd, "cat /var/lib/berth/agent/datasource.json");
    assert!(kept.contains("iid-nocloud-1"), "{kept}");
    drop(testd);
    crate::common::power_off(vm);

    // The next boot, without the volume, applies the kept copy.
    let cfg = disk_config("agent-nocloud-again", t.path());
    let vm = boot(cfg);
    assert!(ready_line(&vm).contains("hostname nocloud-host"));
    let console = vm.console();
    assert!(
        console.contains("berth-agent: config from NoCloud (/dev/vd"),
        "{console}"
    );
    let mut testd = vm.testd().expect("testd");
    assert_eq!(sh(&mut testd, "cat /etc/berth/note"), "from-nocloud");
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn broken_user_data_never_stops_the_boot() {
    let mut big = b"#cloud-config\nhostname: big\n# ".to_vec();
    big.resize(1 << 20, b'x');
    big.extend_from_slice(b"\n");
    // Booted: the bounds that meet the real machine (the fw_cfg read, the inflate) and a
    // partly valid document (the rest applied, the error over the API). The parser's
    // other refusals (broken YAML, a wrong first line, bytes neither text nor gzip) are
    // the agent's unit tests: a boot each would test the same path again.
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "wrong-types",
            b"#cloud-config\nhostname: [1, 2]\nfqdn: typed.example\n".to_vec(),
            "error: hostname: invalid type",
        ),
        ("one-mebibyte", big, "is larger than 1048576 bytes"),
        (
            "gzip-bomb",
            gzip(&vec![b'a'; 64 << 20]),
            "inflates to more than",
        ),
    ];
    for (name, data, said) in cases {
        let t = tempfile::tempdir().unwrap();
        new_disk(t.path());
        let path = t.path().join("user-data");
        std::fs::write(&path, &data).unwrap();
        let mut cfg = disk_config(&format!("agent-{name}"), t.path());
        cfg.extra_args = fw_cfg(&path);
        let vm = boot(cfg);
        let ready = ready_line(&vm);
        let console = vm.console();
        assert!(
            console.contains(said),
            "{name}: {said:?} not on the console:\n{console}"
        );
        assert!(
            crate::common::all_services_ready(&ready, 4),
            "{name}: {ready}"
        );
        if name == "wrong-types" {
            // The valid key applied (the hostname is fqdn's first label), the bad one
            // reported over the API with its key path.
            assert!(ready.contains("hostname typed"), "{ready}");
            let mut testd = vm.testd().expect("testd");
            let config = sh(&mut testd, "berthctl config");
            assert!(
                config.contains("errors (skipped):\n  hostname: invalid type"),
                "{config}"
            );
        }
        crate::common::power_off(vm);
    }
}
