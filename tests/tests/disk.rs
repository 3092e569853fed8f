//! The disk image: BIOS and UEFI boot of one image, the dm-verity root, the disk on
//! NVMe and virtio-scsi, corruption detection, and reproducible builds.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{
    boot, config, direct_disk_boot, image_dir, manifest, BOOT_TIMEOUT, SHUTDOWN_TIMEOUT,
};
use berth_tests::testd::TestdClient;
use berth_tests::vm::{DiskBus, Firmware, Vm, VmConfig};

fn raw_disk() -> PathBuf {
    image_dir().join("berth.raw")
}

fn firmware_config(name: &str, firmware: Firmware) -> VmConfig {
    let mut cfg = config(name);
    cfg.firmware = firmware;
    cfg.disk = Some(raw_disk());
    cfg
}

fn direct_disk_config(name: &str, bus: DiskBus) -> VmConfig {
    let mut cfg = direct_disk_boot(name, &raw_disk());
    cfg.disk_bus = bus;
    cfg
}

/// The root is the dm-verity device, erofs, read-only, and a write to it fails; /etc is
/// the tmpfs seeded from the image.
pub(crate) fn assert_verified_read_only_root(testd: &mut TestdClient) {
    let mounts = testd.run(&["cat", "/proc/self/mounts"]).unwrap().stdout;
    let root = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some("/"))
        .unwrap_or_else(|| panic!("no / in mounts:\n{mounts}"));
    let fields: Vec<&str> = root.split(' ').collect();
    assert_eq!(fields[0], "/dev/dm-0", "{root}");
    assert_eq!(fields[2], "erofs", "{root}");
    assert!(fields[3].split(',').any(|o| o == "ro"), "{root}");
    let dm_name = testd
        .run(&["cat", "/sys/block/dm-0/dm/name"])
        .unwrap()
        .stdout;
    assert_eq!(dm_name.trim(), "root");
    let table_target = testd
        .run(&["cat", "/sys/block/dm-0/dm/uuid"])
        .unwrap()
        .stdout;
    assert_eq!(table_target.trim(), "BERTH-VERITY-ROOT-A");
    // The key its update payloads must be signed with, and only that one.
    let keys = testd.run(&["ls", berth_update::KEYS_DIR]).unwrap().stdout;
    let key_id = crate::common::manifest()["update"]["key_id"]
        .as_str()
        .map(str::to_string);
    assert_eq!(
        Some(keys.trim().to_string()),
        key_id.map(|id| format!("{id}.pub"))
    );
    let write = testd.sh("echo x > /usr/lib/berth-write-probe").unwrap();
    assert!(!write.success(), "writing under /usr succeeded");
    assert!(write.stderr.contains("Read-only"), "{}", write.stderr);
    let etc = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some("/etc"))
        .unwrap_or("");
    assert!(etc.starts_with("tmpfs /etc tmpfs"), "{etc}");
    let hosts = testd.run(&["cat", "/etc/hosts"]).unwrap().stdout;
    assert!(hosts.contains("localhost"), "{hosts}");
    let etc_write = testd.sh("echo ok > /etc/probe && cat /etc/probe").unwrap();
    assert_eq!(etc_write.stdout.trim(), "ok");
}

/// GRUB's script (berth-bootslot) booted slot A: GRUB names the kernel it loaded in
/// BOOT_IMAGE, the script adds the slot, and the slot's boot.cfg carries panic=10.
pub(crate) fn assert_booted_by_grub(cmdline: &str) {
    assert!(
        cmdline.contains("/berth/a/vmlinuz") && cmdline.contains("BOOT_IMAGE="),
        "not booted by GRUB: {cmdline}"
    );
    assert!(cmdline.contains("berth.slot=a"), "{cmdline}");
    assert!(cmdline.contains("panic=10"), "{cmdline}");
}

fn power_off(vm: &mut Vm) {
    vm.powerdown().unwrap();
    let exit = vm.wait_exit(SHUTDOWN_TIMEOUT).expect("clean poweroff");
    assert!(
        exit.shutdown_reasons.iter().any(|r| r == "guest-shutdown"),
        "{:?}",
        exit.shutdown_reasons
    );
}

// UEFI's boot of the raw disk to a verified root is checked under Secure Boot, by
// slots::secure_boot_runs_the_signed_chain_and_refuses_a_changed_kernel.

/// The qcow2 image, as `qemu-img` users and OpenStack's Glance take it.
#[test]
fn bios_boots_the_same_disk_as_qcow2() {
    let mut cfg = firmware_config("bios", Firmware::Bios);
    cfg.disk = Some(image_dir().join("berth.qcow2"));
    let mut vm = boot(cfg);
    let mut testd = vm.testd().unwrap();
    assert_verified_read_only_root(&mut testd);
    let cmdline = testd.run(&["cat", "/proc/cmdline"]).unwrap().stdout;
    assert_booted_by_grub(&cmdline);
    power_off(&mut vm);
}

#[test]
fn boots_from_nvme_as_on_ec2_nitro() {
    let mut vm = boot(direct_disk_config("nvme", DiskBus::Nvme));
    let console = vm.console();
    assert!(
        console.contains("root ROOT-A is /dev/nvme0n1p2"),
        "{console}"
    );
    assert_verified_read_only_root(&mut vm.testd().unwrap());
    power_off(&mut vm);
}

/// GCE's way: the disk.raw inside the import tarball, on virtio-scsi, through UEFI.
#[test]
fn the_gce_tarballs_disk_boots_from_virtio_scsi_through_uefi() {
    let scratch = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("tar")
        .arg("-xzSf")
        .arg(image_dir().join("berth-gce.tar.gz"))
        .arg("-C")
        .arg(scratch.path())
        .status()
        .unwrap();
    assert!(status.success(), "unpacking the GCE tarball");
    let mut cfg = firmware_config("gce", Firmware::Uefi);
    cfg.disk = Some(scratch.path().join("disk.raw"));
    cfg.disk_bus = DiskBus::Scsi;
    let mut vm = boot(cfg);
    let console = vm.console();
    assert!(console.contains("root ROOT-A is /dev/sda2"), "{console}");
    let mut testd = vm.testd().unwrap();
    assert_verified_read_only_root(&mut testd);
    let cmdline = testd.run(&["cat", "/proc/cmdline"]).unwrap().stdout;
    assert_booted_by_grub(&cmdline);
    power_off(&mut vm);
}

#[test]
fn a_flipped_byte_in_root_a_stops_the_boot_naming_dm_verity() {
    let offset = crate::common::partition_offset("ROOT-A");
    let scratch = tempfile::tempdir().unwrap();
    let copy = scratch.path().join("corrupt.raw");
    let status = std::process::Command::new("cp")
        .arg("--sparse=always")
        .arg(raw_disk())
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    // One byte inside the erofs superblock (offset 1024 of the filesystem): the first
    // block stage 1 reads when it mounts the root.
    flip_byte(&copy, offset + 1024 + 16);
    let mut cfg = direct_disk_config("verity-corrupt", DiskBus::Virtio);
    cfg.disk = Some(copy);
    cfg.testd = false;
    let mut vm = Vm::boot(cfg).unwrap();
    let fatal = vm
        .wait_for_line("berth: fatal:", BOOT_TIMEOUT)
        .expect("a fatal line for the corrupted root");
    assert!(
        fatal.line.contains("dm-verity") && fatal.line.contains("ROOT-A"),
        "{}",
        fatal.line
    );
    // Give a wrong boot time to go on; it must not.
    std::thread::sleep(Duration::from_secs(2));
    let console = vm.console();
    assert!(!console.contains("berth: ready"), "{console}");
    assert!(
        !console.contains("stage 2 on the verified root"),
        "{console}"
    );
    assert!(
        console.contains("device-mapper: verity"),
        "the kernel did not report the corruption:\n{console}"
    );
    // Stopped in stage 1, the machine still answers the power button (a cloud's stop):
    // the stage-1 initramfs carries the ACPI button's driver.
    vm.powerdown().unwrap();
    let exit = vm
        .wait_exit(SHUTDOWN_TIMEOUT)
        .expect("the power button ends the emergency");
    assert!(
        exit.shutdown_reasons.iter().any(|r| r == "guest-shutdown"),
        "{exit:?}\n{}",
        vm.console()
    );
}

pub(crate) fn flip_byte(path: &Path, at: u64) {
    let mut f = std::fs::File::options()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    std::io::Read::read_exact(&mut f, &mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0xff]).unwrap();
}

/// Builds the test image into `out` with the binaries as they are now.
fn build_image(out: &Path) -> serde_json::Value {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let built = std::process::Command::new(workspace.join("target/release/image-build"))
        .current_dir(&workspace)
        .args(["image", "--variant", "test", "--out"])
        .arg(out)
        .output()
        .expect("running image-build");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn the_same_inputs_give_the_same_root_and_root_hash() {
    // Two builds here rather than one compared with out/test: `cargo test` may have
    // rebuilt the binaries since (dev-dependency features), which are inputs.
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (build_image(one.path()), build_image(two.path()));
    let hash = &a["disk"]["root"]["root_hash"];
    assert_eq!(hash.as_str().map(str::len), Some(64), "{hash}");
    assert_eq!(hash, &b["disk"]["root"]["root_hash"]);
    assert_eq!(a["disk"]["root"]["uuid"], b["disk"]["root"]["uuid"]);
    assert_eq!(a["disk"]["cmdline"], b["disk"]["cmdline"]);
    let ra = std::fs::read(one.path().join(".build/root.img")).unwrap();
    let rb = std::fs::read(two.path().join(".build/root.img")).unwrap();
    assert!(ra == rb, "root filesystem images differ");
}

#[test]
fn image_sizes_are_in_bounds() {
    let m = manifest();
    let qcow2 = m["disk"]["qcow2_bytes"].as_u64().unwrap();
    assert!(qcow2 < 100 * 1024 * 1024, "qcow2 is {qcow2} bytes");
    // The disk boots the stage-1 initramfs: the root's finders only, a fraction of the
    // whole tree; every disk boot in these tests goes through it.
    let full = m["initramfs"]["bytes"].as_u64().unwrap();
    let stage1 = &m["disk_initramfs"];
    let bytes = stage1["bytes"].as_u64().unwrap();
    assert!(bytes * 2 < full, "stage 1 {bytes} bytes against {full}");
    let modules: Vec<&str> = stage1["modules"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for needed in [
        "dm_verity",
        "sha256_ssse3",
        "erofs",
        "virtio_blk",
        "nvme",
        "virtio_scsi",
    ] {
        assert!(modules.contains(&needed), "{needed}: {modules:?}");
    }
    assert!(!modules.contains(&"btrfs"), "{modules:?}");
    assert_eq!(
        std::fs::metadata(image_dir().join("initrd-stage1.img"))
            .unwrap()
            .len(),
        bytes
    );
    let gce = std::fs::metadata(image_dir().join("berth-gce.tar.gz"))
        .unwrap()
        .len();
    assert!(
        gce > 0 && gce < 100 * 1024 * 1024,
        "GCE tarball is {gce} bytes"
    );
    // GCE's importer wants disk.raw padded to whole GiB inside an oldgnu sparse tar.
    let listing = std::process::Command::new("tar")
        .args(["-tvzf"])
        .arg(image_dir().join("berth-gce.tar.gz"))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    let size: u64 = listing
        .split_whitespace()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .expect("size in tar listing");
    assert!(listing.contains("disk.raw"), "{listing}");
    assert_eq!(size % (1024 * 1024 * 1024), 0, "{listing}");
}

#[test]
fn two_disks_with_berth_partitions_stop_the_boot_instead_of_guessing() {
    let scratch = tempfile::tempdir().unwrap();
    let second = scratch.path().join("second.qcow2");
    berth_tests::vm::create_overlay(&raw_disk(), &second, None).unwrap();
    let mut cfg = direct_disk_config("two-disks", DiskBus::Virtio);
    cfg.testd = false;
    cfg.extra_args = vec![
        "-drive".into(),
        format!("file={},if=none,id=disk1,format=qcow2", second.display()),
        "-device".into(),
        "virtio-blk-pci,drive=disk1".into(),
    ];
    let vm = Vm::boot(cfg).unwrap();
    let fatal = vm
        .wait_for_line("berth: fatal:", BOOT_TIMEOUT)
        .expect("a fatal line when two disks carry Berth partitions");
    assert!(fatal.line.contains("refusing to guess"), "{}", fatal.line);
    assert!(
        fatal.line.contains("vda") && fatal.line.contains("vdb"),
        "{}",
        fatal.line
    );
    let console = vm.console();
    assert!(!console.contains("berth: ready"), "{console}");
    assert!(!console.contains("mounted read-only"), "{console}");
}
