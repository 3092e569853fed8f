//! A/B boot slots end to end, through the real firmware and GRUB, under OVMF and under
//! SeaBIOS alike: a second version put into slot B by `image-build write-slot` (the
//! machine off, as the update issue's in-guest path will do it online) survives a power
//! cut during its trial, is blessed after its settle time, and is left by `berthctl
//! rollback`; a slot B whose kernel panics goes back to A with the rollback line. Under
//! SeaBIOS also a slot B whose root fails dm-verity, whose health check fails, or whose
//! init hangs until the watchdog resets the machine (Linux's side of a trial, the same
//! under either firmware). One disk per firmware, changed between boots; one QEMU per
//! step.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::common::{config, image_dir, BOOT_TIMEOUT, SHUTDOWN_TIMEOUT};
use berth_tests::vm::{Firmware, Vm, VmConfig};

/// The settle time and the health timeout the tests' user-data sets.
pub(crate) const HEALTHY: &str =
    "#cloud-config\nberth:\n  update:\n    health_seconds: 3\n    health_timeout_seconds: 10\n";
/// A boot that goes through one reboot (a panic or a fatal stage 1 waits `panic=`: the
/// image says 10 s, the panic and dm-verity trials here 1 s).
const TWO_BOOTS: Duration = Duration::from_secs(240);

pub(crate) struct SlotDisk {
    dir: PathBuf,
    firmware: Firmware,
}

impl SlotDisk {
    pub(crate) fn new(name: &str, firmware: Firmware) -> SlotDisk {
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

    pub(crate) fn config(&self, name: &str, user_data: &str) -> VmConfig {
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
pub(crate) fn slots(vm: &Vm) -> Vec<(String, String, bool)> {
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

pub(crate) fn off(mut vm: Vm) {
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

/// A good version, through a power cut: the cut in the middle of its first trial boot
/// spends one try and the next boot goes on with the trial; it is blessed after its
/// settle time and kept; then `berthctl rollback` makes A the next boot, B still good.
fn good_version_survives_a_power_cut_then_berthctl_rollback(disk: &SlotDisk) {
    disk.write_b("0.1.1-good", "", 2);
    let mut vm = disk.boot("cut", HEALTHY);
    vm.wait_for_line("on trial", BOOT_TIMEOUT).unwrap();
    vm.kill();
    drop(vm); // the VM lock
    let vm = disk.boot("good", HEALTHY);
    vm.wait_for_line("berth: slot b blessed", BOOT_TIMEOUT)
        .expect("the trial goes on after the power cut, and b is blessed");
    let console = vm.console();
    assert!(
        console.contains("berth.slot=b berth.trial"),
        "not a trial boot of b"
    );
    assert!(console.contains("boot attempts left after this one: 0"));
    let s = slots(&vm);
    assert_eq!(s[1], ("active".into(), "0.1.1-good".into(), true), "{s:?}");
    assert_eq!(s[0].0, "good", "{s:?}");

    vm.berthctl(&["rollback"]).expect("berthctl rollback");
    vm.wait_for_line_count("berth: ready", 2, TWO_BOOTS)
        .expect("booting again after the rollback");
    let s = slots(&vm);
    assert_eq!((s[0].0.as_str(), s[0].2), ("active", true), "{s:?}");
    assert_eq!(s[1].0, "good", "{s:?}");
    off(vm);
}

/// No init: the kernel finds nothing to run and panics; `panic=1` reboots it.
fn a_panicking_kernel_returns_to_a(disk: &SlotDisk) {
    // panic=1: the kernel reboots a second after its panic, not the image's ten.
    disk.write_b("0.1.2-panics", "rdinit=/nonexistent panic=1", 1);
    let vm = disk.boot("panic", HEALTHY);
    let panic = vm
        .wait_for_line("Kernel panic", BOOT_TIMEOUT)
        .expect("slot b's kernel panics");
    let (line, ready) = rolled_back(&vm, "0.1.2-panics");
    say(&format!(
        "{:?}: back on A, ready, {:.1} s after slot b's kernel panicked",
        disk.firmware,
        (ready - panic.at).as_secs_f64()
    ));
    assert!(line.contains("ran out of boot attempts"), "{line}");
    let s = slots(&vm);
    assert_eq!((s[0].0.as_str(), s[0].2), ("active", true), "{s:?}");
    assert_eq!(s[1].0, "bad", "{s:?}");
    off(vm);
}

/// A root that fails dm-verity: stage 1 stops, and on a trial reboots.
fn a_root_failing_dm_verity_returns_to_a(disk: &SlotDisk) {
    // panic=1: stage 1's reboot on a trial waits what the kernel's panic would.
    disk.write_b("0.1.3-corrupt", "panic=1", 1);
    disk.corrupt_root_b();
    let vm = disk.boot("verity", HEALTHY);
    let fatal = vm
        .wait_for_line("berth: fatal:", BOOT_TIMEOUT)
        .expect("stage 1 refuses the root");
    assert!(fatal.line.contains("dm-verity"), "{}", fatal.line);
    let (_, ready) = rolled_back(&vm, "0.1.3-corrupt");
    say(&format!(
        "{:?}: back on A, ready, {:.1} s after slot b's root failed dm-verity",
        disk.firmware,
        (ready - fatal.at).as_secs_f64()
    ));
    off(vm);
}

/// A declared container that never runs: the health check fails it, naming it.
fn a_failed_health_check_returns_to_a(disk: &SlotDisk) {
    disk.write_b("0.1.4-unhealthy", "", 1);
    let ud =
        format!("{HEALTHY}  containers:\n    never:\n      image: berth.local/does-not-exist:1\n");
    let vm = disk.boot("health", &ud);
    let failed = vm
        .wait_for_line("berth: slot b failed its trial", TWO_BOOTS)
        .expect("the health check fails the trial");
    assert!(failed.line.contains("container never"), "{}", failed.line);
    let (line, ready) = rolled_back(&vm, "0.1.4-unhealthy");
    assert!(
        line.contains("health check failed: container never"),
        "{line}"
    );
    say(&format!(
        "{:?}: back on A, ready, {:.1} s after slot b failed its health check",
        disk.firmware,
        (ready - failed.at).as_secs_f64()
    ));
    off(vm);
}

/// init's main loop stops (held under ptrace by berth-testd, as a hang would hold it):
/// nobody feeds the watchdog, it resets the machine, and the trial's only try is spent.
fn a_hung_init_is_reset_by_the_watchdog_and_returns_to_a(disk: &SlotDisk) {
    disk.write_b("0.1.8-hangs", "", 1);
    // A settle time longer than the watchdog's: the hang comes before the blessing.
    let ud = HEALTHY.replace("health_seconds: 3", "health_seconds: 120");
    let mut cfg = disk.config("hang", &ud);
    cfg.testd = true;
    let vm = crate::common::boot(cfg);
    assert!(vm
        .console()
        .contains("watchdog: /dev/watchdog armed (i6300ESB"));
    let mut testd = vm.testd().unwrap();
    let out = testd.run(&["/usr/bin/berth-testd", "stop-init"]).unwrap();
    assert!(out.success(), "{out:?}");
    drop(testd);
    let stopped = vm.elapsed_since_start();
    let (line, ready) = rolled_back(&vm, "0.1.8-hangs");
    assert!(line.contains("ran out of boot attempts"), "{line}");
    say(&format!(
        "{:?}: back on A, ready, {:.1} s after init stopped (the watchdog's 30 s included)",
        disk.firmware,
        (ready - stopped).as_secs_f64()
    ));
    off(vm);
}

/// What depends on the firmware is GRUB's part: the tries it spends and the slot it
/// picks. A power cut and a panicking kernel cover both under OVMF. A root failing
/// dm-verity and a failed health check end a trial on Linux's side, the same under
/// either firmware: they run once, under SeaBIOS below (one boot each saved).
#[test]
fn uefi_trial_bless_rollback_and_a_failed_trial_returns_to_a() {
    let disk = SlotDisk::new("slots-uefi", Firmware::Uefi);
    good_version_survives_a_power_cut_then_berthctl_rollback(&disk);
    a_panicking_kernel_returns_to_a(&disk);
}

/// The same under SeaBIOS (GRUB's i386-pc build reads and writes the same block), and
/// every way a trial fails on Linux's side: a root failing dm-verity, a failed health
/// check, and a hang (the watchdog does not depend on the firmware either).
#[test]
fn bios_trial_bless_rollback_and_every_failed_trial_returns_to_a() {
    let disk = SlotDisk::new("slots-bios", Firmware::Bios);
    good_version_survives_a_power_cut_then_berthctl_rollback(&disk);
    a_panicking_kernel_returns_to_a(&disk);
    a_root_failing_dm_verity_returns_to_a(&disk);
    a_failed_health_check_returns_to_a(&disk);
    a_hung_init_is_reset_by_the_watchdog_and_returns_to_a(&disk);
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
    // A new version in slot B with one byte of its kernel changed: shim's verifier
    // refuses it, GRUB says so and reboots, the trial's only try is spent, and A boots
    // with the rollback line: slot selection and rollback under Secure Boot too. Then
    // the slot-A boot that followed is checked for the signed chain's work (one boot
    // for both).
    disk.write_b("0.1.6-changed", "", 1);
    change_kernel_byte(&disk);
    let mut cfg = disk.config("changed", HEALTHY);
    cfg.testd = true;
    let vm = Vm::boot(cfg).expect("starting QEMU");
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
    off(vm);
}
