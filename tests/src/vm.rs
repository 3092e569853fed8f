//! One QEMU guest: started with the kernel and initramfs under test, its serial console
//! in a file, QMP for power buttons and keys, and testd when asked. Holds the VM lock
//! for its whole life.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde_json::json;

use crate::accel::{self, Accel};
use crate::console::Console;
use crate::lock::{vm_lock, VmLock};
use crate::qmp::Qmp;
use crate::testd::{TestdClient, PORT_NAME};

#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Names the work directory.
    pub name: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Extra kernel arguments; `console=ttyS0` is always there.
    pub append: String,
    pub memory_mib: u32,
    pub smp: u32,
    /// A guest reset ends QEMU (its SHUTDOWN event says guest-reset) instead of
    /// rebooting.
    pub no_reboot: bool,
    /// Adds the virtio-serial port berth-testd talks on.
    pub testd: bool,
    /// Adds the virtio-serial port `org.berth.control` (init's control API), so
    /// `Vm::berthctl` works.
    pub control: bool,
    pub extra_args: Vec<String>,
    /// How the kernel is loaded.
    pub firmware: Firmware,
    /// A disk image to attach, through a qcow2 overlay in the work directory (the image
    /// itself is never written).
    pub disk: Option<PathBuf>,
    pub disk_bus: DiskBus,
    /// Attach `disk` itself (a qcow2 or raw image the test owns and boots again) instead of a
    /// throwaway overlay.
    pub disk_persistent: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// QEMU loads `kernel` and `initrd` itself (`-kernel`): fastest, for tests where
    /// the firmware is not what is under test.
    Direct,
    /// SeaBIOS boots the disk.
    Bios,
    /// OVMF boots the disk.
    Uefi,
    /// OVMF with Secure Boot enforcing: Microsoft's keys enrolled (as on a cloud's
    /// shielded VMs), SMM, and a flash only SMM may write.
    UefiSecureBoot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskBus {
    Virtio,
    /// What EC2 Nitro presents.
    Nvme,
    /// virtio-scsi, what GCE presents.
    Scsi,
}

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
pub const OVMF_CODE_SECBOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
/// Variables with Microsoft's UEFI CA enrolled and Secure Boot on (Debian's ovmf).
pub const OVMF_VARS_MS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";

impl VmConfig {
    pub fn new(kernel: PathBuf, initrd: PathBuf) -> Self {
        VmConfig {
            name: "vm".into(),
            kernel,
            initrd,
            append: String::new(),
            memory_mib: 512,
            smp: 1,
            no_reboot: false,
            testd: false,
            control: true,
            extra_args: Vec::new(),
            firmware: Firmware::Direct,
            disk: None,
            disk_bus: DiskBus::Virtio,
            disk_persistent: false,
        }
    }
}

pub use crate::console::LineSeen;

#[derive(Debug)]
pub struct ExitReport {
    pub status: ExitStatus,
    /// From QEMU's start.
    pub after: Duration,
    pub shutdown_reasons: Vec<String>,
}

pub struct Vm {
    child: Child,
    dir: PathBuf,
    console: Console,
    testd_socket: Option<PathBuf>,
    control_socket: Option<PathBuf>,
    qmp: Qmp,
    started: Instant,
    pub accel: Accel,
    _lock: VmLock,
}

impl Vm {
    /// Starts QEMU (after taking the VM lock, which the Vm holds until dropped) and
    /// connects to its QMP socket. The work directory is kept and its path printed, so a
    /// failed test leaves its console log behind.
    pub fn boot(cfg: VmConfig) -> Result<Vm> {
        let lock = vm_lock()?;
        let accel = accel::probe(&cfg.kernel);
        let dir = work_dir(&cfg.name)?;
        eprintln!("berth-tests: VM {} in {}", cfg.name, dir.display());
        let console_path = dir.join("console.log");
        let qmp_path = dir.join("qmp.sock");
        let testd_socket = cfg.testd.then(|| dir.join("testd.sock"));
        let control_socket = cfg.control.then(|| dir.join("control.sock"));
        let stderr_path = dir.join("qemu.stderr");
        let mut cmd = qemu_command(&cfg, accel, &dir)?;
        cmd.arg("-serial")
            .arg(format!("file:{}", console_path.display()))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(&stderr_path)
                    .with_context(|| format!("creating {}", stderr_path.display()))?,
            );
        serial_ports(&mut cmd, testd_socket.as_deref(), control_socket.as_deref());
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .context("starting qemu-system-x86_64 (is `make deps` done?)")?;
        let qmp = match Qmp::connect(&qmp_path, Duration::from_secs(10)) {
            Ok(q) => q,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                return Err(e).context(format!(
                    "QEMU did not come up (work dir {}): {}",
                    dir.display(),
                    stderr.trim()
                ));
            }
        };
        Ok(Vm {
            child,
            dir,
            console: Console::new(console_path, started),
            testd_socket,
            control_socket,
            qmp,
            started,
            accel,
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn console_path(&self) -> &Path {
        self.console.path()
    }

    /// The whole serial console so far.
    pub fn console(&self) -> String {
        self.console.read()
    }

    pub fn elapsed_since_start(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits for a console line containing `pattern` (a prefix is a substring too); the
    /// answer says when it was first seen, from QEMU's start.
    pub fn wait_for_line(&self, pattern: &str, timeout: Duration) -> Result<LineSeen> {
        self.wait_for_line_count(pattern, 1, timeout)
    }

    /// Waits for the `n`th console line containing `pattern`.
    pub fn wait_for_line_count(
        &self,
        pattern: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<LineSeen> {
        self.console
            .wait_for_line_count(pattern, n, timeout, || self.qemu_exited())
    }

    /// Asked without reaping (WNOWAIT), so `wait_exit` still gets the status and this
    /// works through `&self`.
    fn qemu_exited(&self) -> bool {
        let Ok(pid) = i32::try_from(self.child.id()) else {
            return true;
        };
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        !matches!(
            waitid(Id::Pid(Pid::from_raw(pid)), flags),
            Ok(WaitStatus::StillAlive)
        )
    }

    pub fn qmp(&mut self) -> &mut Qmp {
        &mut self.qmp
    }

    /// ACPI power button (what clouds send on "stop").
    pub fn powerdown(&mut self) -> Result<()> {
        self.qmp.execute("system_powerdown", None).map(drop)
    }

    pub fn send_ctrl_alt_del(&mut self) -> Result<()> {
        let keys = json!({ "keys": [
            { "type": "qcode", "data": "ctrl" },
            { "type": "qcode", "data": "alt" },
            { "type": "qcode", "data": "delete" },
        ]});
        self.qmp.execute("send-key", Some(keys)).map(drop)
    }

    /// Waits for QEMU to exit by itself (after the guest powered off, or reset under
    /// `no_reboot`).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitReport> {
        let deadline = Instant::now() + timeout;
        loop {
            let exited = self.child.try_wait().context("waiting for QEMU")?;
            if let Some(status) = exited {
                let after = self.started.elapsed();
                self.qmp.drain(Duration::from_secs(2));
                return Ok(ExitReport {
                    status,
                    after,
                    shutdown_reasons: self.qmp.shutdown_reasons(),
                });
            }
            if Instant::now() >= deadline {
                bail!(
                    "QEMU still running {} s after asking; console in {}, last lines:\n{}",
                    timeout.as_secs(),
                    self.console.path().display(),
                    self.console.tail(30)
                );
            }
            // Keep reading QMP so its events are not lost when QEMU closes the socket.
            // Once closed, draining returns at once: sleep instead of spinning.
            if self.qmp.is_closed() {
                std::thread::sleep(Duration::from_millis(20));
            } else {
                self.qmp.drain(Duration::from_millis(50));
            }
        }
    }

    /// Power cut: SIGKILL, no chance for the guest to sync.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The host end of the VM's control port (`berthctl --vm PATH`).
    pub fn control_socket(&self) -> Option<&Path> {
        self.control_socket.as_deref()
    }

    /// Runs `berthctl --vm <control socket> ARGS` on the host; fails unless it exits 0.
    pub fn berthctl(&self, args: &[&str]) -> Result<String> {
        let out = self.berthctl_output(args)?;
        anyhow::ensure!(
            out.status.success(),
            "berthctl {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs berthctl against this VM and returns whatever it did.
    pub fn berthctl_output(&self, args: &[&str]) -> Result<std::process::Output> {
        let sock = self
            .control_socket
            .as_deref()
            .context("this VM was booted without the control port (VmConfig::control)")?;
        Command::new(berthctl_path()?)
            .arg("--vm")
            .arg(sock)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running berthctl")
    }

    pub fn testd(&self) -> Result<TestdClient> {
        let sock = self
            .testd_socket
            .as_deref()
            .context("this VM was booted without testd (VmConfig::testd)")?;
        TestdClient::connect(sock)
    }
}

/// A virtio-serial controller with the ports asked for (testd's, init's control port),
/// each on a unix socket QEMU listens on; wait=off so QEMU boots without the harness
/// connected.
pub fn serial_ports(cmd: &mut Command, testd: Option<&Path>, control: Option<&Path>) {
    let ports = [
        ("testd", testd, PORT_NAME),
        ("control", control, CONTROL_PORT),
    ];
    if ports.iter().all(|(_, sock, _)| sock.is_none()) {
        return;
    }
    cmd.args(["-device", "virtio-serial-pci,id=vser"]);
    for (id, sock, name) in ports {
        let Some(sock) = sock else { continue };
        cmd.arg("-chardev")
            .arg(format!(
                "socket,id={id},path={},server=on,wait=off",
                sock.display()
            ))
            .arg("-device")
            .arg(format!(
                "virtserialport,bus=vser.0,chardev={id},name={name}"
            ));
    }
}

/// The name init's control port has in the guest (berth_control::CONTROL_PORT).
pub const CONTROL_PORT: &str = "org.berth.control";

/// The built `berthctl` (beside this test binary's directory, as cargo lays them out).
pub fn berthctl_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("BERTHCTL") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("finding the test binary")?;
    exe.ancestors()
        .skip(1)
        .take(3)
        .map(|d| d.join("berthctl"))
        .find(|p| p.is_file())
        .context("berthctl is not built (cargo build --release -p berth-ctl), or set BERTHCTL")
}

impl Drop for Vm {
    /// Ends QEMU and says how long this VM ran, on stderr past libtest's capture, so
    /// `make test`'s log shows where the suite's minutes go.
    fn drop(&mut self) {
        self.kill();
        let name = self.dir.file_name().unwrap_or_default().to_string_lossy();
        let _ = writeln!(
            std::io::stderr(),
            "berth-tests: VM {name} ran {:.1} s",
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// QEMU with the machine, memory, firmware or kernel, and disk of `cfg`; the caller
/// adds the console (a file for tests, the terminal for `make run`). `dir` holds the
/// disk overlay and the UEFI variables.
pub fn qemu_command(cfg: &VmConfig, accel: Accel, dir: &Path) -> Result<Command> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(accel.qemu_args())
        .args([
            "-machine",
            "q35",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
        ])
        .args([
            "-m",
            &cfg.memory_mib.to_string(),
            "-smp",
            &cfg.smp.to_string(),
        ])
        .args(&cfg.extra_args);
    if cfg.no_reboot {
        cmd.arg("-no-reboot");
    }
    boot_args(&mut cmd, cfg, dir)?;
    if let Some(image) = &cfg.disk {
        let attached = if cfg.disk_persistent {
            image.clone()
        } else {
            let overlay = dir.join("disk.qcow2");
            create_overlay(image, &overlay, None)?;
            overlay
        };
        disk_args(&mut cmd, &attached, cfg.disk_bus);
    }
    Ok(cmd)
}

fn boot_args(cmd: &mut Command, cfg: &VmConfig, dir: &Path) -> Result<()> {
    match cfg.firmware {
        Firmware::Direct => {
            cmd.arg("-kernel")
                .arg(&cfg.kernel)
                .arg("-initrd")
                .arg(&cfg.initrd)
                .arg("-append")
                .arg(format!("console=ttyS0 {}", cfg.append).trim());
        }
        Firmware::Bios => {}
        Firmware::Uefi | Firmware::UefiSecureBoot => {
            let secure = cfg.firmware == Firmware::UefiSecureBoot;
            let (code, vars_image) = if secure {
                (OVMF_CODE_SECBOOT, OVMF_VARS_MS)
            } else {
                (OVMF_CODE, OVMF_VARS)
            };
            // OVMF keeps its variables in a writable flash: a copy per VM.
            let vars = dir.join("OVMF_VARS.fd");
            std::fs::copy(vars_image, &vars)
                .with_context(|| format!("copying {vars_image} (make deps installs ovmf)"))?;
            if secure {
                cmd.args(["-machine", "smm=on"])
                    .args(["-global", "driver=cfi.pflash01,property=secure,value=on"]);
            }
            cmd.arg("-drive")
                .arg(format!("if=pflash,format=raw,readonly=on,file={code}"))
                .arg("-drive")
                .arg(format!("if=pflash,format=raw,file={}", vars.display()));
        }
    }
    Ok(())
}

/// A qcow2 overlay of `image` (raw or qcow2) at `overlay`; `size` (e.g. "2G") makes the
/// virtual disk larger than the image, as clouds do.
pub fn create_overlay(image: &Path, overlay: &Path, size: Option<&str>) -> Result<()> {
    let image =
        std::fs::canonicalize(image).with_context(|| format!("disk image {}", image.display()))?;
    let format = if image.extension().is_some_and(|e| e == "qcow2") {
        "qcow2"
    } else {
        "raw"
    };
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
        .arg(&image)
        .arg(overlay)
        .args(size)
        .status()
        .context("running qemu-img")?;
    if !status.success() {
        bail!(
            "qemu-img could not create an overlay of {}",
            image.display()
        );
    }
    Ok(())
}

/// Attaches a disk image on the chosen bus.
fn disk_args(cmd: &mut Command, image: &Path, bus: DiskBus) {
    // A persistent disk may be raw (a test that changes it between boots with host
    // tools); overlays are always qcow2.
    let format = if image.extension().is_some_and(|e| e == "raw") {
        "raw"
    } else {
        "qcow2"
    };
    cmd.arg("-drive").arg(format!(
        "file={},if=none,id=disk0,format={format}",
        image.display()
    ));
    // bootindex=1: the firmware boots this disk before others a test attaches (a
    // volume, a payload) that it might try first. Not 0: QEMU gives that to -kernel's
    // option ROM.
    match bus {
        DiskBus::Virtio => cmd.args(["-device", "virtio-blk-pci,drive=disk0,bootindex=1"]),
        DiskBus::Nvme => cmd.args(["-device", "nvme,drive=disk0,serial=berth0,bootindex=1"]),
        DiskBus::Scsi => cmd.args([
            "-device",
            "virtio-scsi-pci,id=scsi0",
            "-device",
            "scsi-hd,drive=disk0,bus=scsi0.0,bootindex=1",
        ]),
    };
}

/// A fresh directory under the system temp dir, kept after the run for inspection.
pub fn work_dir(name: &str) -> Result<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let dir = std::env::temp_dir()
        .join("berth-vm")
        .join(format!("{name}-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
