//! The harness against a real kernel, without Berth: a tiny initramfs made here with
//! cpio(1) and busybox proves that booting, the console file, QMP, the exit report and
//! (with the kernel's virtio modules) berth-testd work, whatever state init is in.
//!
//! The kernel is $BERTH_KERNEL, else the Debian kernel unpacked in /tmp/k; with neither
//! the tests say so and pass, as they test the harness, not Berth.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use berth_tests::vm::{Vm, VmConfig};

const DEFAULT_KERNEL: &str = "/tmp/k/x/boot/vmlinuz-6.1.0-56-amd64";
const BUSYBOX: &str = "/bin/busybox";
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn floor_initramfs_boots_prints_and_powers_off_by_itself() {
    let Some(kernel) = kernel() else { return };
    let root = tempfile::tempdir().unwrap();
    write_init(
        root.path(),
        "/bin/busybox echo floor: ready\n/bin/busybox poweroff -f\n",
    );
    let initrd = root.path().join("floor.img");
    make_initramfs(&root.path().join("root"), &initrd);

    let mut cfg = VmConfig::new(kernel, initrd);
    cfg.name = "harness-floor".into();
    let mut vm = Vm::boot(cfg).expect("starting QEMU");
    let ready = vm
        .wait_for_line("floor: ready", BOOT_TIMEOUT)
        .expect("the floor's /init runs");
    let exit = vm
        .wait_exit(EXIT_TIMEOUT)
        .expect("QEMU exits after the guest powers off");
    eprintln!(
        "harness: `floor: ready` after {:.2} s under {}, QEMU gone after {:.2} s ({:?})",
        ready.at.as_secs_f64(),
        vm.accel.name(),
        exit.after.as_secs_f64(),
        exit.shutdown_reasons
    );
    assert_eq!(ready.line, "floor: ready");
    assert!(exit.status.success(), "{:?}", exit.status);
    assert_eq!(exit.shutdown_reasons, ["guest-shutdown"]);
}

#[test]
fn waiting_for_a_line_ends_when_qemu_exits_and_quotes_the_console() {
    let Some(kernel) = kernel() else { return };
    let root = tempfile::tempdir().unwrap();
    write_init(root.path(), "/bin/busybox echo never reached\n");
    let initrd = root.path().join("floor.img");
    make_initramfs(&root.path().join("root"), &initrd);

    let mut cfg = VmConfig::new(kernel, initrd);
    cfg.name = "harness-panic".into();
    // No init to run: the kernel panics, resets at once, and QEMU exits.
    cfg.append = "panic=-1 rdinit=/nonexistent".into();
    cfg.no_reboot = true;
    let mut vm = Vm::boot(cfg).expect("starting QEMU");
    let err = vm
        .wait_for_line("floor: ready", BOOT_TIMEOUT)
        .unwrap_err()
        .to_string();
    assert!(err.contains("QEMU already exited"), "{err}");
    assert!(err.contains("Kernel panic"), "{err}");
    assert!(
        vm.elapsed_since_start() < BOOT_TIMEOUT / 2,
        "waited for the timeout instead of noticing the exit"
    );
    let exit = vm.wait_exit(EXIT_TIMEOUT).unwrap();
    assert_eq!(exit.shutdown_reasons, ["guest-reset"]);
}

#[test]
fn testd_runs_commands_in_a_minimal_guest() {
    let Some(kernel) = kernel() else { return };
    let Some(modules) = modules_dir(&kernel) else {
        eprintln!("skipped: no lib/modules beside {}", kernel.display());
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let rootfs = root.path().join("root");
    let mut script = String::from(
        "export PATH=/bin LD_LIBRARY_PATH=/lib/x86_64-linux-gnu\n\
         busybox mount -t proc proc /proc\nbusybox mount -t sysfs sys /sys\n\
         busybox mount -t devtmpfs dev /dev\n",
    );
    // testd starts before the driver, as it may in Berth: it must wait for the port.
    script.push_str("/usr/bin/berth-testd &\n");
    for ko in add_modules(&modules, &["virtio_pci", "virtio_console"], &rootfs) {
        script.push_str(&format!("busybox insmod /{ko}\n"));
    }
    script.push_str("busybox echo floor: ready\nwait\n");
    write_init(root.path(), &script);
    add_with_libraries(Path::new(env!("CARGO_BIN_EXE_berth-testd")), &rootfs);
    let initrd = root.path().join("testd.img");
    make_initramfs(&rootfs, &initrd);

    let mut cfg = VmConfig::new(kernel, initrd);
    cfg.name = "harness-testd".into();
    cfg.testd = true;
    let mut vm = Vm::boot(cfg).expect("starting QEMU");
    vm.wait_for_line("floor: ready", BOOT_TIMEOUT)
        .expect("the guest's /init runs");
    let mut testd = vm.testd().expect("berth-testd answers");
    let out = testd.sh("echo $((6 * 7)); echo oops >&2; exit 5").unwrap();
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str(), out.exit_code),
        ("42\n", "oops\n", Some(5))
    );
    let out = testd
        .run_with(&["busybox", "wc", "-l"], Some("a\nb\n"), EXIT_TIMEOUT)
        .unwrap();
    assert_eq!(out.stdout.trim(), "2");
    let err = testd
        .run_with(&["busybox", "sleep", "30"], None, Duration::from_secs(1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("timed out"), "{err}");
    assert!(vm.console().contains("berth-testd: serving on /dev/vport"));
    // The answer may never come: the guest is gone by then.
    let _ = testd.run_with(&["busybox", "poweroff", "-f"], None, Duration::from_secs(5));
    let exit = vm.wait_exit(EXIT_TIMEOUT).expect("QEMU exits");
    assert_eq!(exit.shutdown_reasons, ["guest-shutdown"]);
}

fn kernel() -> Option<PathBuf> {
    let kernel = std::env::var_os("BERTH_KERNEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_KERNEL));
    if !kernel.is_file() {
        eprintln!(
            "skipped: no kernel at {} (set BERTH_KERNEL)",
            kernel.display()
        );
        return None;
    }
    if !Path::new(BUSYBOX).is_file() {
        eprintln!("skipped: no {BUSYBOX} (busybox-static)");
        return None;
    }
    Some(kernel)
}

/// `<dir>/root` with busybox, its applet directories, and `/init` running `body`.
fn write_init(dir: &Path, body: &str) {
    let root = dir.join("root");
    for d in ["bin", "proc", "sys", "dev", "usr/bin"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    install(
        &root.join("init"),
        format!("#!/bin/busybox sh\n{body}").as_bytes(),
    );
    // Applets the scripts name without the busybox prefix.
    for applet in ["sh", "echo", "sleep", "true"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
}

fn install(path: &Path, content: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A newc archive of `root`, every file owned by root, as the kernel unpacks it.
fn make_initramfs(root: &Path, out: &Path) {
    let list = Command::new("find")
        .arg(".")
        .current_dir(root)
        .output()
        .expect("running find");
    let mut cpio = Command::new("cpio")
        .args(["--quiet", "-o", "-H", "newc", "-R", "0:0"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(out).unwrap())
        .spawn()
        .expect("running cpio (apt install cpio)");
    cpio.stdin.take().unwrap().write_all(&list.stdout).unwrap();
    assert!(cpio.wait().unwrap().success(), "cpio failed");
}

/// `/lib/modules/<version>` of an unpacked Debian kernel package: the kernel file is
/// `boot/vmlinuz-<version>` beside `lib/`.
fn modules_dir(kernel: &Path) -> Option<PathBuf> {
    let version = kernel.file_name()?.to_str()?.strip_prefix("vmlinuz-")?;
    let dir = kernel.parent()?.parent()?.join("lib/modules").join(version);
    dir.join("modules.dep").is_file().then_some(dir)
}

/// Copies `wanted` and what they depend on (modules.dep) into `rootfs`; returns their
/// paths in the order to load them, dependencies first.
fn add_modules(modules: &Path, wanted: &[&str], rootfs: &Path) -> Vec<String> {
    let dep = std::fs::read_to_string(modules.join("modules.dep")).unwrap();
    let deps_of = |ko: &str| -> Vec<String> {
        dep.lines()
            .find_map(|l| l.strip_prefix(ko)?.strip_prefix(':'))
            .map(|rest| rest.split_whitespace().map(String::from).collect())
            .unwrap_or_default()
    };
    let mut order = Vec::new();
    for name in wanted {
        let ko = dep
            .lines()
            .filter_map(|l| l.split(':').next())
            .find(|p| p.rsplit('/').next() == Some(&format!("{name}.ko")))
            .unwrap_or_else(|| panic!("{name}.ko not in modules.dep"))
            .to_string();
        // modules.dep lists every dependency, nearest last; load from the far end.
        for m in deps_of(&ko).into_iter().rev().chain([ko]) {
            if !order.contains(&m) {
                order.push(m);
            }
        }
    }
    for ko in &order {
        let to = rootfs.join(ko);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(modules.join(ko), &to).unwrap();
    }
    order
}

/// The binary at /usr/bin and the shared libraries ldd lists at their own paths.
fn add_with_libraries(binary: &Path, rootfs: &Path) {
    std::fs::copy(
        binary,
        rootfs.join("usr/bin").join(binary.file_name().unwrap()),
    )
    .unwrap();
    let ldd = Command::new("ldd")
        .arg(binary)
        .output()
        .expect("running ldd");
    let text = String::from_utf8_lossy(&ldd.stdout);
    for lib in text.split_whitespace().filter(|w| w.starts_with('/')) {
        let to = rootfs.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(lib, &to).unwrap();
    }
}
