//! End-to-end tests: the real kernel and the test-variant initramfs booted in QEMU.
//!
//! `make test` builds the images and sets BERTH_TEST_IMAGE (out/test). Run directly
//! without it, these tests fail with a message saying so: a VM test that passes without
//! booting anything would prove nothing.

use std::path::PathBuf;
use std::time::Duration;

use crate::common::{boot, config, image_dir, BOOT_TIMEOUT, SHUTDOWN_TIMEOUT};
use berth_tests::testd::TestdClient;

/// One machine for the checks that leave it as it was: boot, the mounts, loopback,
/// orphans reaped, drivers loaded; then the ACPI powerdown.
#[test]
fn boots_to_ready_reaps_orphans_loads_drivers_and_powers_off_on_acpi_powerdown() {
    let mut cfg = config("powerdown");
    cfg.append = "berth.hostname=vmtest".to_string();
    let mut vm = boot(cfg);
    let ready = vm.wait_for_line("berth: ready", BOOT_TIMEOUT).unwrap();
    assert!(ready.line.contains("hostname vmtest"), "{}", ready.line);

    let mut testd = vm.testd().expect("connecting to berth-testd");
    let hostname = testd.run(&["hostname"]).unwrap();
    assert_eq!(hostname.stdout.trim(), "vmtest");
    // The mounts init owes every process.
    let mounts = testd.run(&["cat", "/proc/self/mounts"]).unwrap().stdout;
    for (target, fstype) in [
        ("/proc", "proc"),
        ("/sys", "sysfs"),
        ("/dev", "devtmpfs"),
        ("/dev/pts", "devpts"),
        ("/dev/shm", "tmpfs"),
        ("/run", "tmpfs"),
        ("/sys/fs/cgroup", "cgroup2"),
    ] {
        assert!(
            mounts.lines().any(|l| l.split(' ').nth(1) == Some(target) && l.split(' ').nth(2) == Some(fstype)),
            "{target} ({fstype}) not mounted:\n{mounts}"
        );
    }
    // Loopback is up: a listener on 127.0.0.1 is reachable.
    let lo = testd
        .run(&[
            "cat",
            "/sys/class/net/lo/operstate",
            "/sys/class/net/lo/flags",
        ])
        .unwrap()
        .stdout;
    let flags = lo.lines().nth(1).unwrap_or("0x0").trim_start_matches("0x");
    assert_eq!(
        u32::from_str_radix(flags, 16).unwrap() & 1,
        1,
        "lo is not IFF_UP: {lo}"
    );
    orphaned_zombies_are_reaped_by_init(&mut testd);
    drivers_load_by_modalias_and_on_demand_through_the_modprobe_helper(&mut testd);
    drop(testd);

    vm.powerdown().expect("system_powerdown");
    let exit = vm
        .wait_exit(SHUTDOWN_TIMEOUT)
        .expect("QEMU exits by itself after the guest powers off");
    let console = vm.console();
    assert!(console.contains("power button pressed"), "{console}");
    for step in [
        "shutdown: poweroff: stopping services",
        "shutdown: syncing filesystems",
        "shutdown: powering off",
    ] {
        assert!(console.contains(step), "console lacks {step:?}:\n{console}");
    }
    assert!(
        exit.shutdown_reasons.iter().any(|r| r == "guest-shutdown"),
        "expected a guest-initiated poweroff, saw {:?}",
        exit.shutdown_reasons
    );
    assert!(!console.contains("berth: fatal"), "{console}");
    assert!(!console.contains("Kernel panic"), "{console}");
}

fn orphaned_zombies_are_reaped_by_init(testd: &mut TestdClient) {
    // The shell exits at once; its background child is re-parented to PID 1 and exits
    // two seconds later. Unreaped, it would stay in /proc as a zombie (state Z). Its
    // output goes to /dev/null so testd's pipes close when the shell exits.
    let out = testd
        .sh("sleep 2 </dev/null >/dev/null 2>&1 & echo $!")
        .unwrap();
    let pid: u32 = out.stdout.trim().parse().expect("pid of the orphan");
    let status = testd
        .run(&["cat", &format!("/proc/{pid}/status")])
        .unwrap()
        .stdout;
    assert!(
        status.lines().any(|l| l == "PPid:\t1"),
        "orphan not re-parented to init:\n{status}"
    );
    let mut gone = false;
    for _ in 0..50 {
        if !testd
            .run(&["test", "-e", &format!("/proc/{pid}")])
            .unwrap()
            .success()
        {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let zombies = testd
        .sh("grep -l '^State:.*Z' /proc/[0-9]*/status || true")
        .unwrap()
        .stdout;
    assert!(
        gone,
        "orphan {pid} still in /proc after it exited; zombies: {zombies}"
    );
    assert!(zombies.trim().is_empty(), "zombies left: {zombies}");
}

fn drivers_load_by_modalias_and_on_demand_through_the_modprobe_helper(testd: &mut TestdClient) {
    let helper = testd
        .run(&["cat", "/proc/sys/kernel/modprobe"])
        .unwrap()
        .stdout;
    assert_eq!(helper.trim(), "/sbin/modprobe");
    let modules = testd.run(&["cat", "/proc/modules"]).unwrap().stdout;
    // Coldplug: the virtio-serial port testd talks through, and the power button.
    for m in ["virtio_pci", "virtio_console", "button", "evdev"] {
        assert!(
            modules.lines().any(|l| l.starts_with(&format!("{m} "))),
            "{m} not loaded:\n{modules}"
        );
    }
    // Early list: erofs with libcrc32c and its crc32c softdep.
    for m in ["erofs", "libcrc32c", "dm_verity"] {
        assert!(
            modules.lines().any(|l| l.starts_with(&format!("{m} "))),
            "{m} not loaded:\n{modules}"
        );
    }
    assert!(
        !modules.lines().any(|l| l.starts_with("isofs ")),
        "isofs loaded before it was asked for"
    );
    // Mounting an unknown filesystem type makes the kernel ask for fs-iso9660; the mount
    // itself fails (no such device), but the module must now be there.
    let _ = testd.sh("mkdir -p /mnt && mount -t iso9660 /dev/null /mnt");
    let filesystems = testd.run(&["cat", "/proc/filesystems"]).unwrap().stdout;
    assert!(
        filesystems.contains("iso9660"),
        "fs-iso9660 was not loaded on demand:\n{filesystems}"
    );
}

#[test]
fn kernel_config_check_passes_for_the_shipped_kernel() {
    let dir = image_dir();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest.json"))
            .unwrap();
    let modules_dir = manifest["kernel"]["modules_dir"]
        .as_str()
        .expect("modules_dir in the manifest");
    let checker =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/kernel-config-check");
    let out = std::process::Command::new(&checker)
        .arg("--config")
        .arg(dir.join("kernel.config"))
        .arg("--modules-dir")
        .arg(modules_dir)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", checker.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What it prints is what the image carries.
    let carried: Vec<&str> = manifest["initramfs"]["modules"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    for m in &carried {
        assert!(
            stdout.lines().any(|l| l.trim() == *m),
            "{m} carried but not printed by the checker:\n{stdout}"
        );
    }
    for m in [
        "virtio_pci",
        "crc32c_generic",
        "libcrc32c",
        "erofs",
        "virtio_blk",
        "nvme",
    ] {
        assert!(
            carried.contains(&m),
            "{m} missing from the initramfs: {carried:?}"
        );
    }
}

#[test]
fn sigrtmin_plus_3_halts_like_systemd() {
    let vm = boot(config("halt"));
    let mut testd = vm.testd().expect("connecting to berth-testd");
    // glibc's SIGRTMIN is 34 (the kernel's 32 plus the two glibc keeps): RTMIN+3 is 37.
    // The reply may never come: init ends testd on the way down.
    let _ = testd.run_with(&["kill", "-37", "1"], None, Duration::from_secs(5));
    vm.wait_for_line("shutdown: halting", SHUTDOWN_TIMEOUT)
        .expect("init halts on SIGRTMIN+3");
    vm.wait_for_line("reboot: System halted", SHUTDOWN_TIMEOUT)
        .expect("the kernel halts");
    let console = vm.console();
    assert!(
        console.contains("shutdown: halt: stopping services"),
        "{console}"
    );
}

#[test]
fn berth_vm_run_without_a_terminal_boots_and_powers_off() {
    // What `make run` does under CI: no TTY, so boot the disk through UEFI, wait for
    // ready, power off, exit 0.
    let dir = image_dir();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth-vm"))
        .args(["run", "--kernel"])
        .arg(dir.join("vmlinuz"))
        .arg("--initrd")
        .arg(dir.join("initrd.img"))
        .arg("--disk")
        .arg(dir.join("berth.raw"))
        .args(["--firmware", "uefi"])
        .env("CI", "true")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running berth-vm");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("berth: ready"), "{stdout}");
    assert!(stdout.contains("shutdown: powering off"), "{stdout}");
    assert!(stdout.contains("berth-vm: powered off cleanly"), "{stdout}");
    // make run gives the disk room to grow, so the demo's first boot makes /var.
    assert!(
        stdout.contains("/var: btrfs on /dev/vda4, DATA partition created, formatted"),
        "{stdout}"
    );
}
