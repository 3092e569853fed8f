//! First-boot storage: DATA created over the free space of a disk larger than the image,
//! btrfs with its subvolumes on /var, kept across reboots, grown with the disk, and
//! intact after power cuts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{boot, direct_disk_boot, image_dir, SHUTDOWN_TIMEOUT};
use berth_tests::testd::TestdClient;
use berth_tests::vm::{create_overlay, Vm, VmConfig};

/// A 2 GiB disk (the image is 578 MiB) the test keeps across boots.
fn fresh_disk(dir: &Path) -> PathBuf {
    let disk = dir.join("disk.qcow2");
    create_overlay(&image_dir().join("berth.raw"), &disk, Some("2G")).unwrap();
    disk
}

fn disk_config(name: &str, disk: &Path) -> VmConfig {
    let mut cfg = direct_disk_boot(name, disk);
    cfg.disk_persistent = true;
    cfg
}

fn power_off(mut vm: Vm) {
    vm.powerdown().unwrap();
    vm.wait_exit(SHUTDOWN_TIMEOUT).expect("clean poweroff");
}

fn var_line(testd: &mut TestdClient) -> String {
    let mounts = testd.run(&["cat", "/proc/self/mounts"]).unwrap().stdout;
    mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some("/var"))
        .unwrap_or_default()
        .to_string()
}

/// Size of /var in KiB, as df reports it.
fn var_kib(testd: &mut TestdClient) -> u64 {
    let df = testd.run(&["df", "-k", "/var"]).unwrap().stdout;
    df.lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("df output: {df}"))
}

/// The GPT header's disk GUID, read from the guest's disk.
fn disk_guid(testd: &mut TestdClient) -> String {
    let out = testd
        .sh("dd if=/dev/vda bs=1 skip=568 count=16 2>/dev/null | od -An -tx1")
        .unwrap();
    out.stdout.split_whitespace().collect()
}

#[test]
fn first_boot_makes_var_which_survives_reboots_and_grows_with_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let disk = fresh_disk(dir.path());

    let vm = boot(disk_config("storage-first", &disk));
    let console = vm.console();
    assert!(
        console.contains("/var: btrfs on /dev/vda4, DATA partition created, formatted"),
        "{console}"
    );
    let mut testd = vm.testd().unwrap();
    let var = var_line(&mut testd);
    assert!(var.starts_with("/dev/vda4 /var btrfs "), "{var}");
    // Subvolume roots are inode 256 on btrfs.
    for sub in [
        "/var/lib/berth/containers",
        "/var/lib/berth/volumes",
        "/var/log",
    ] {
        let ino = testd.run(&["stat", "-c", "%i", sub]).unwrap().stdout;
        assert_eq!(ino.trim(), "256", "{sub} is not a subvolume");
    }
    // Images and volumes are root's alone (set-uid files from images out of users' reach).
    for sub in ["/var/lib/berth/containers", "/var/lib/berth/volumes"] {
        let mode = testd.run(&["stat", "-c", "%a", sub]).unwrap().stdout;
        assert_eq!(mode.trim(), "700", "{sub}");
    }
    let image_guid = {
        let raw = std::fs::read(image_dir().join("berth.raw")).unwrap();
        raw[568..584]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let guid = disk_guid(&mut testd);
    assert_eq!(guid.len(), 32, "{guid}");
    assert_ne!(
        guid, image_guid,
        "the disk GUID was not randomised on first boot"
    );
    let write = testd
        .sh("echo kept > /var/lib/keep.txt && dd if=/var/lib/keep.txt of=/var/lib/keep conv=fsync 2>/dev/null")
        .unwrap();
    assert!(write.success(), "{write:?}");
    let size_before = var_kib(&mut testd);
    drop(testd);
    power_off(vm);

    let vm = boot(disk_config("storage-second", &disk));
    let console = vm.console();
    assert!(console.contains("/var: btrfs on /dev/vda4"), "{console}");
    assert!(
        !console.contains("formatted"),
        "DATA was formatted again:\n{console}"
    );
    let mut testd = vm.testd().unwrap();
    assert_eq!(
        testd.run(&["cat", "/var/lib/keep"]).unwrap().stdout,
        "kept\n"
    );
    assert_eq!(
        disk_guid(&mut testd),
        guid,
        "the disk GUID changed on a later boot"
    );
    drop(testd);
    power_off(vm);

    let resized = std::process::Command::new("qemu-img")
        .args(["resize", "-q"])
        .arg(&disk)
        .arg("+1G")
        .status()
        .unwrap();
    assert!(resized.success());
    let vm = boot(disk_config("storage-grown", &disk));
    let console = vm.console();
    assert!(console.contains("grown to fill the disk"), "{console}");
    let mut testd = vm.testd().unwrap();
    let size_after = var_kib(&mut testd);
    assert!(
        size_after >= size_before + 900 * 1024,
        "/var grew from {size_before} KiB to only {size_after} KiB"
    );
    assert_eq!(
        testd.run(&["cat", "/var/lib/keep"]).unwrap().stdout,
        "kept\n"
    );
    drop(testd);
    power_off(vm);
}

#[test]
fn power_cuts_while_writing_lose_no_fsynced_file() {
    const ROUNDS: usize = 5;
    const FILES: usize = 10;
    let dir = tempfile::tempdir().unwrap();
    let disk = fresh_disk(dir.path());
    let mut kept: Vec<(String, String)> = Vec::new();
    for round in 0..=ROUNDS {
        let mut vm = boot(disk_config(&format!("power-cut-{round}"), &disk));
        let mut testd = vm.testd().unwrap();
        let var = var_line(&mut testd);
        assert!(
            var.contains(" /var btrfs "),
            "round {round}: /var is not the btrfs DATA: {var}"
        );
        for (path, content) in &kept {
            let got = testd.run(&["cat", path]).unwrap();
            assert_eq!(
                &got.stdout, content,
                "round {round}: {path} lost or changed after a power cut"
            );
        }
        if round == ROUNDS {
            break;
        }
        // A writer that is still busy when the power goes...
        let bg = testd
            .sh("mkdir -p /var/cut && (i=0; while true; do i=$((i+1)); echo busy-$i > /var/cut/bg-$i; done) </dev/null >/dev/null 2>&1 &")
            .unwrap();
        assert!(bg.success(), "{bg:?}");
        // ...and files whose fsync returned before it.
        for i in 0..FILES {
            let path = format!("/var/cut/r{round}-{i}");
            let content = format!("round {round} file {i}\n");
            let script = format!(
                "printf '{}' > {path}.tmp && dd if={path}.tmp of={path} conv=fsync 2>/dev/null",
                content.replace('\n', "\\n")
            );
            let out = testd.sh(&script).unwrap();
            assert!(out.success(), "{out:?}");
            kept.push((path, content));
        }
        drop(testd);
        vm.kill();
        std::thread::sleep(Duration::from_millis(100));
    }
}
