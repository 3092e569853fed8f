//! A/B boot slots end to end, through the real firmware and GRUB: a second version put
//! into slot B by `image-build write-slot` (the machine off, as the update issue's
//! in-guest path will do it online), tried, blessed after its settle time, rolled back
//! from by `berthctl rollback`; a slot B whose kernel panics, whose root fails
//! dm-verity, or whose health check fails goes back to A with the rollback line; a power
//! cut during a trial leaves both slots bootable. One disk per firmware, changed between
//! boots; one QEMU per step.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::common::{config, image_dir, BOOT_TIMEOUT, SHUTDOWN_TIMEOUT};
use berth_tests::vm::{Firmware, Vm, VmConfig};

/// The settle time and the health timeout the tests' user-data sets.
const HEALTHY: &str =
    "#cloud-config\nberth:\n  update:\n    health_seconds: 3\n    health_timeout_seconds: 10\n";
/// A boot that goes through one reboot (a panic or a fatal stage 1 waits 10 s).
const TWO_BOOTS: Duration = Duration::from_secs(240);

struct SlotDisk {
    dir: PathBuf,
    firmware: Firmware,
}

impl SlotDisk {
    fn new(name: &str, firmware: Firmware) -> SlotDisk {
        let dir = berth_tests::vm::work_dir(name).unwrap();
        let disk = dir.join("disk.raw");
        let status = Command::new("cp")
            .arg("--sparse=always")
            .arg(image_dir().join("berth.raw"))
            .arg(&disk)
            .status()
            .unwrap();
        assert!(status.success());
        SlotDisk { dir, firmware }
    }

    fn raw(&self) -> PathBuf {
        self.dir.join("disk.raw")
    }

    /// `image-build write-slot`: the test image again, as version `version`, into B.
    fn write_b(&self, version: &str, append: &str, tries: u8) {
        let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = Command::new(workspace.join("target/release/image-build"))
            .args(["write-slot", "--slot", "b", "--disk"])
            .arg(self.raw())
            .arg("--from")
            .arg(image_dir())
            .args(["--version", version, "--append", append, "--tries"])
            .arg(tries.to_string())
            .output()
            .expect("running image-build write-slot");
        assert!(
            out.status.success(),
            "write-slot: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Room for DATA (made on the first boot), as a cloud's disk is larger than
        // the image.
        let f = std::fs::File::options()
            .write(true)
            .open(self.raw())
            .unwrap();
        if f.metadata().unwrap().len() < 1536 << 20 {
            f.set_len(1536 << 20).unwrap();
        }
    }

    /// Flips a byte of ROOT-B's erofs superblock, where stage 1 reads first.
    fn corrupt_root_b(&self) {
        let at = crate::common::partition_offset("ROOT-B") + 1024 + 16;
        crate::disk::flip_byte(&self.raw(), at);
    }

    fn config(&self, name: &str, user_data: &str) -> VmConfig {
        let mut cfg = config(name);
        cfg.testd = false;
        cfg.firmware = self.firmware;
        cfg.disk = Some(self.raw());
        cfg.disk_persistent = true;
        let ud = self.dir.join(format!("{name}.user-data"));
        std::fs::write(&ud, user_data).unwrap();
        cfg.extra_args.extend([
            "-device".to_string(),
            "i6300esb".to_string(),
            "-fw_cfg".to_string(),
            format!("name=opt/berth/user-data,file={}", ud.display()),
        ]);
        cfg
    }

    fn boot(&self, name: &str, user_data: &str) -> Vm {
        Vm::boot(self.config(name, user_data)).expect("starting QEMU")
    }
}

/// `berthctl slots --json`, as (state, version, booted) for a and b.
fn slots(vm: &Vm) -> Vec<(String, String, bool)> {
    let text = vm.berthctl(&["--json", "slots"]).expect("berthctl slots");
    let v: serde_json::Value = serde_json::from_str(&text).expect("slots JSON");
    v.as_array()
        .expect("a list")
        .iter()
        .map(|s| {
            (
                s["state"].as_str().unwrap_or("").to_string(),
                s["version"].as_str().unwrap_or("").to_string(),
                s["booted"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

/// A figure for the test log, past libtest's capture (as the harness's own lines).
fn say(what: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "berth-tests: slots: {what}");
}

fn off(mut vm: Vm) {
    vm.powerdown().unwrap();
    vm.wait_exit(SHUTDOWN_TIMEOUT).expect("clean poweroff");
}

/// The rollback line, once B lost its trial; returns it and when (from QEMU's start)
/// A was ready again.
fn rolled_back(vm: &Vm, version: &str) -> (String, Duration) {
    let seen = vm
        .wait_for_line("berth: rolled back from", TWO_BOOTS)
        .expect("the rollback line");
    assert!(
        seen.line.contains(&format!("berth {version} ")) && seen.line.contains("slot b)"),
        "{}",
        seen.line
    );
    // A's ready line: the first after the rollback line (a trial that failed its
    // health check had printed one before).
    let console = vm.console();
    let before = console
        .find("berth: rolled back from")
        .map_or(0, |at| console[..at].matches("berth: ready").count());
    let ready = vm
        .wait_for_line_count("berth: ready", before + 1, BOOT_TIMEOUT)
        .unwrap();
    assert!(vm.console().contains("berth.slot=a"), "A did not boot");
    (seen.line, ready.at)
}

fn assert_trial_panic_rolls_back(disk: &SlotDisk) {
    // No init: the kernel finds nothing to run and panics; panic=10 reboots it.
    disk.write_b("0.1.2-panics", "rdinit=/nonexistent", 1);
    let vm = disk.boot("panic", HEALTHY);
    let panic = vm
        .wait_for_line("Kernel panic", BOOT_TIMEOUT)
        .expect("slot b's kernel panics");
    let (line, ready) = rolled_back(&vm, "0.1.2-panics");
    say(&format!(
        "back on A, ready, {:.1} s after slot b's kernel panicked",
        (ready - panic.at).as_secs_f64()
    ));
    assert!(line.contains("ran out of boot attempts"), "{line}");
    let s = slots(&vm);
    assert_eq!((s[0].0.as_str(), s[0].2), ("active", true), "{s:?}");
    assert_eq!(s[1].0, "bad", "{s:?}");
    off(vm);
}

#[test]
fn uefi_trial_bless_rollback_and_every_failed_trial_returns_to_a() {
    let disk = SlotDisk::new("slots-uefi", Firmware::Uefi);

    // A good version: tried, blessed after 3 s healthy, and kept.
    disk.write_b("0.1.1-good", "", 2);
    let vm = disk.boot("good", HEALTHY);
    vm.wait_for_line("berth: slot b blessed", BOOT_TIMEOUT)
        .expect("slot b blessed");
    let console = vm.console();
    assert!(
        console.contains("berth.slot=b berth.trial"),
        "not a trial boot of b"
    );
    let s = slots(&vm);
    assert_eq!(s[1], ("active".into(), "0.1.1-good".into(), true), "{s:?}");
    assert_eq!(s[0].0, "good", "{s:?}");

    // berthctl rollback: A from the next boot on, B still good.
    vm.berthctl(&["rollback"]).expect("berthctl rollback");
    vm.wait_for_line_count("berth: ready", 2, TWO_BOOTS)
        .expect("booting again after the rollback");
    let s = slots(&vm);
    assert_eq!((s[0].0.as_str(), s[0].2), ("active", true), "{s:?}");
    assert_eq!(s[1].0, "good", "{s:?}");
    off(vm);

    // (A kernel panic: under BIOS below; here the same way out through a root that
    // fails dm-verity.)

    // A root that fails dm-verity: stage 1 stops, and on a trial reboots.
    disk.write_b("0.1.3-corrupt", "", 1);
    disk.corrupt_root_b();
    let vm = disk.boot("verity", HEALTHY);
    let fatal = vm
        .wait_for_line("berth: fatal:", BOOT_TIMEOUT)
        .expect("stage 1 refuses the root");
    assert!(fatal.line.contains("dm-verity"), "{}", fatal.line);
    let (_, ready) = rolled_back(&vm, "0.1.3-corrupt");
    say(&format!(
        "back on A, ready, {:.1} s after slot b's root failed dm-verity",
        (ready - fatal.at).as_secs_f64()
    ));
    off(vm);

    // A declared container that never runs: the health check fails it, naming it.
    disk.write_b("0.1.4-unhealthy", "", 1);
    let ud =
        format!("{HEALTHY}  containers:\n    never:\n      image: berth.local/does-not-exist:1\n");
    let vm = disk.boot("health", &ud);
    let failed = vm
        .wait_for_line("berth: slot b failed its trial", TWO_BOOTS)
        .expect("the health check fails the trial");
    assert!(failed.line.contains("container never"), "{}", failed.line);
    let (line, _) = rolled_back(&vm, "0.1.4-unhealthy");
    assert!(
        line.contains("health check failed: container never"),
        "{line}"
    );
    off(vm);

    // A power cut in the middle of a trial boot: the next boot goes on with the trial
    // (one try spent), and it is blessed.
    disk.write_b("0.1.5-cut", "", 2);
    let mut vm = disk.boot("cut", HEALTHY);
    vm.wait_for_line("on trial", BOOT_TIMEOUT).unwrap();
    vm.kill();
    drop(vm); // the VM lock
    let vm = disk.boot("after-cut", HEALTHY);
    vm.wait_for_line("berth: slot b blessed", BOOT_TIMEOUT)
        .expect("the trial goes on after the power cut");
    assert!(vm
        .console()
        .contains("boot attempts left after this one: 0"));
    let s = slots(&vm);
    assert_eq!(s[1], ("active".into(), "0.1.5-cut".into(), true), "{s:?}");
    off(vm);
}

#[test]
fn bios_a_panicking_trial_returns_to_a_and_a_good_one_is_blessed() {
    let disk = SlotDisk::new("slots-bios", Firmware::Bios);
    assert_trial_panic_rolls_back(&disk);
    // The failed slot gets a new version: tried, blessed, active.
    disk.write_b("0.1.7-good", "", 1);
    let vm = disk.boot("bios-good", HEALTHY);
    vm.wait_for_line("berth: slot b blessed", BOOT_TIMEOUT)
        .expect("slot b blessed under SeaBIOS");
    let s = slots(&vm);
    assert_eq!(s[1], ("active".into(), "0.1.7-good".into(), true), "{s:?}");
    assert_eq!(s[0].0, "good", "{s:?}");
    off(vm);
}

/// Changes one byte in the middle of slot B's kernel on the ESP (with mtools).
fn change_kernel_byte(disk: &SlotDisk) {
    let at = format!(
        "{}@@{}",
        disk.raw().display(),
        crate::common::partition_offset("EFI-SYSTEM")
    );
    let local = disk.dir.join("vmlinuz");
    let mtools = |args: &[&str]| {
        let out = Command::new(args[0])
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-i", &at])
            .args(&args[1..])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let local_s = local.to_string_lossy().into_owned();
    mtools(&["mcopy", "-o", "::/berth/b/vmlinuz", &local_s]);
    let mut k = std::fs::read(&local).unwrap();
    let mid = k.len() / 2;
    k[mid] ^= 0x01;
    std::fs::write(&local, &k).unwrap();
    mtools(&["mcopy", "-o", &local_s, "::/berth/b/vmlinuz"]);
}

#[test]
fn secure_boot_runs_the_signed_chain_and_refuses_a_changed_kernel() {
    let disk = SlotDisk::new("secureboot", Firmware::UefiSecureBoot);
    let mut cfg = disk.config("signed", HEALTHY);
    cfg.testd = true;
    let mut vm = crate::common::boot(cfg);
    let console = vm.console();
    assert!(
        console.contains("root ROOT-A verified by dm-verity")
            && console.contains("stage 2 on the verified root"),
        "{console}"
    );
    let mut testd = vm.testd().unwrap();
    crate::disk::assert_verified_read_only_root(&mut testd);
    let cmdline = testd.run(&["cat", "/proc/cmdline"]).unwrap().stdout;
    crate::disk::assert_booted_by_grub(&cmdline);
    // The SecureBoot variable (EFI global GUID): 4 attribute bytes, then 1 when on.
    let var = testd
        .sh(concat!(
            "mount -t efivarfs efivarfs /sys/firmware/efi/efivars 2>/dev/null; ",
            "od -An -tu1 /sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
        ))
        .unwrap();
    let bytes: Vec<&str> = var.stdout.split_whitespace().collect();
    assert_eq!(bytes.last(), Some(&"1"), "SecureBoot: {var:?}");
    let lockdown = testd
        .sh(concat!(
            "mount -t securityfs securityfs /sys/kernel/security 2>/dev/null; ",
            "cat /sys/kernel/security/lockdown"
        ))
        .unwrap();
    assert!(
        lockdown.stdout.contains("[integrity]") || lockdown.stdout.contains("[confidentiality]"),
        "lockdown: {lockdown:?}"
    );
    drop(testd);
    vm.powerdown().unwrap();
    vm.wait_exit(SHUTDOWN_TIMEOUT).expect("clean poweroff");
    drop(vm); // the VM lock

    // A new version in slot B with one byte of its kernel changed: shim's verifier
    // refuses it, GRUB says so and reboots, the trial's only try is spent, and A boots
    // with the rollback line: slot selection and rollback under Secure Boot too.
    disk.write_b("0.1.6-changed", "", 1);
    change_kernel_byte(&disk);
    let vm = disk.boot("changed", HEALTHY);
    vm.wait_for_line("berth: slot b did not boot", BOOT_TIMEOUT)
        .expect("GRUB refuses the changed kernel");
    let (line, _) = rolled_back(&vm, "0.1.6-changed");
    assert!(line.contains("ran out of boot attempts"), "{line}");
    let console = vm.console();
    assert!(
        console.contains("bad shim signature"),
        "not refused for its signature:\n{console}"
    );
    assert_eq!(
        console.matches("Linux version").count(),
        1,
        "only A's kernel ran"
    );
    off(vm);
}
