//! What the VM test files share: where the image is, and booting to `berth: ready`.

#![allow(dead_code)]

pub mod metadata;
pub mod pki;
pub mod ssh;

use std::path::PathBuf;
use std::time::Duration;

use berth_tests::vm::{Vm, VmConfig};

pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// The test image `make test` built (BERTH_TEST_IMAGE, relative to the workspace root).
/// A VM test that passes without booting anything would prove nothing, so a missing
/// image fails the test.
pub fn image_dir() -> PathBuf {
    match std::env::var_os("BERTH_TEST_IMAGE") {
        Some(dir) => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(dir),
        None => panic!("BERTH_TEST_IMAGE is not set: run `make test` (it builds out/test first)"),
    }
}

pub fn manifest() -> serde_json::Value {
    let path = image_dir().join("manifest.json");
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_slice(&text).expect("manifest.json is JSON")
}

/// Where the partition `label` starts in the test image's disk, from the manifest.
pub fn partition_offset(label: &str) -> u64 {
    let m = manifest();
    m["disk"]["partitions"]
        .as_array()
        .expect("disk.partitions in the manifest")
        .iter()
        .find(|p| p["label"] == label)
        .unwrap_or_else(|| panic!("{label} in the manifest"))["offset"]
        .as_u64()
        .expect("a partition offset")
}

/// A direct-kernel VM of the test image, with testd.
pub fn config(name: &str) -> VmConfig {
    let dir = image_dir();
    let kernel = dir.join("vmlinuz");
    let initrd = dir.join("initrd.img");
    assert!(
        kernel.exists() && initrd.exists(),
        "no image in {}: run `make image-test`",
        dir.display()
    );
    VmConfig {
        name: name.to_string(),
        testd: true,
        ..VmConfig::new(kernel, initrd)
    }
}

/// Whether a `berth: ready` line says every wanted service is ready, and at least
/// `least` of them (the agent, the network, testd and the daemon in the test image). The
/// count itself varies: sshd, log forwarding and the autoupdater start and, with nothing
/// to do, exit at about the moment the line is printed.
pub fn all_services_ready(ready: &str, least: u32) -> bool {
    let Some(counts) = ready
        .split("services ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
    else {
        return false;
    };
    match counts
        .split_once('/')
        .map(|(a, b)| (a.parse::<u32>(), b.parse::<u32>()))
    {
        Some((Ok(up), Ok(wanted))) => {
            up == wanted && up >= least && ready.contains(&format!("{up}/{wanted} ready)"))
        }
        _ => false,
    }
}

pub fn boot(cfg: VmConfig) -> Vm {
    let vm = Vm::boot(cfg).expect("starting QEMU");
    vm.wait_for_line("berth: ready", BOOT_TIMEOUT)
        .expect("booting to `berth: ready`");
    vm
}

/// The kernel command line the image's bootloaders pass, for direct-kernel boots of the
/// disk (the harness adds its own console=).
pub fn disk_cmdline() -> String {
    let m = manifest();
    let c = m["disk"]["cmdline"]
        .as_str()
        .expect("disk.cmdline in the manifest");
    c.split_whitespace()
        .filter(|w| !w.starts_with("console="))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Boots the test image's disk (a 2 GiB overlay in `dir`, kept across boots) to
/// `berth: ready`: the verified root and btrfs /var, as a real machine runs.
pub fn boot_disk(name: &str, dir: &std::path::Path) -> Vm {
    new_disk(dir);
    boot_disk_again(name, dir)
}

/// Boots the disk an earlier [`boot_disk`] made in `dir` again (a reboot, after a
/// clean power-off).
pub fn boot_disk_again(name: &str, dir: &std::path::Path) -> Vm {
    boot(disk_config(name, dir))
}

/// The config [`boot_disk_again`] boots, for tests that add to it (a network, say);
/// the disk must exist (see [`new_disk`]).
pub fn disk_config(name: &str, dir: &std::path::Path) -> VmConfig {
    let mut cfg = direct_disk_boot(name, &dir.join("disk.qcow2"));
    cfg.disk_persistent = true;
    cfg
}

/// The kernel loaded directly with the initramfs a disk boots (stage 1 only, as the
/// ESP's), the bootloader's command line, and `disk` (through a throwaway overlay unless
/// the caller makes it persistent).
pub fn direct_disk_boot(name: &str, disk: &std::path::Path) -> VmConfig {
    let mut cfg = config(name);
    cfg.initrd = image_dir().join("initrd-stage1.img");
    cfg.disk = Some(disk.to_path_buf());
    cfg.append = disk_cmdline();
    cfg
}

/// A fresh 2 GiB overlay of the test image's disk in `dir`.
pub fn new_disk(dir: &std::path::Path) {
    berth_tests::vm::create_overlay(
        &image_dir().join("berth.raw"),
        &dir.join("disk.qcow2"),
        Some("2G"),
    )
    .expect("creating the disk overlay");
}

/// A clean power-off (ACPI), waited for. When /var was on the DATA partition, it was
/// unmounted (not merely remounted read-only), with nothing left holding it.
pub fn power_off(mut vm: Vm) {
    vm.powerdown().expect("system_powerdown");
    vm.wait_exit(SHUTDOWN_TIMEOUT).expect("clean poweroff");
    let console = vm.console();
    if console.contains("/var: btrfs on") {
        let shutdown = &console[console.rfind("shutdown: poweroff").unwrap_or(0)..];
        assert!(
            shutdown.contains("shutdown: unmounted /var\n")
                || shutdown.contains("shutdown: unmounted /var\r\n"),
            "/var was not unmounted at shutdown:\n{shutdown}"
        );
    }
}

/// Waits (30 s at most) for `berthctl ps` in the guest to list the container `name` as
/// running, and fails the test with the last listing otherwise.
pub fn assert_running(testd: &mut berth_tests::testd::TestdClient, name: &str) {
    let mut ps = String::new();
    for _ in 0..60 {
        let out = testd.sh("berthctl ps").expect("berthctl ps");
        ps = format!("{}{}", out.stdout, out.stderr);
        if ps
            .lines()
            .any(|l| l.contains(name) && l.contains("running"))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("{name} is not running:\n{ps}");
}

#[test]
fn all_services_ready_reads_the_ready_line() {
    let line = |s: &str| {
        format!("berth: ready (berth 0.1.0, boot 8887 ms, hostname typed, addresses none, {s})")
    };
    assert!(all_services_ready(&line("services 4/4 ready"), 4));
    assert!(all_services_ready(&line("services 5/5 ready"), 4));
    assert!(!all_services_ready(&line("services 3/3 ready"), 4));
    assert!(!all_services_ready(
        &line("services 3/4 ready; not ready: berth-net"),
        4
    ));
    assert!(!all_services_ready("berth: ready (no count)", 4));
}
