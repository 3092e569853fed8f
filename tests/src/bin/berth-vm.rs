//! berth-vm: boots a Berth kernel + initramfs for people and scripts.
//!
//! `berth-vm run`: on a terminal, QEMU takes it over (serial console, ctrl-a x quits).
//! Without a terminal or with CI=true: boot, wait for `berth: ready`, press the ACPI
//! power button, and exit 0 only if the guest powered itself off.
//!
//! `berth-vm bench`: time from QEMU's start to `berth: ready` beside the kernel-only
//! floor (an initramfs that prints `floor: ready` and powers off), same kernel, same
//! QEMU, alternating runs.

use std::io::IsTerminal;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use berth_tests::accel;
use berth_tests::vm::{Firmware, Vm, VmConfig};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "berth-vm", about = "Boot Berth in QEMU")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    Run {
        #[arg(long)]
        kernel: PathBuf,
        #[arg(long)]
        initrd: PathBuf,
        /// Extra kernel command line (direct boots only).
        #[arg(long, default_value = "")]
        append: String,
        /// Boot this disk image (through a throwaway overlay) with the firmware.
        #[arg(long)]
        disk: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "uefi")]
        firmware: FirmwareArg,
        /// User-data for the agent, through QEMU's fw_cfg (`opt/berth/user-data`).
        #[arg(long)]
        user_data: Option<PathBuf>,
        /// Forward 127.0.0.1:HOST on this machine to the guest's GUEST port
        /// (`HOST:GUEST`, TCP), on a restricted user network (the guest reaches nothing
        /// else). Without a terminal, the forwarded port is asked for `/` once ready.
        #[arg(long, value_name = "HOST:GUEST")]
        forward: Vec<String>,
    },
    Bench {
        #[arg(long)]
        kernel: PathBuf,
        #[arg(long)]
        initrd: PathBuf,
        #[arg(long)]
        floor_initrd: PathBuf,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Boot Berth's disk and the floor's disk through the firmware instead of
        /// `-kernel` (both or neither).
        #[arg(long, requires = "floor_disk")]
        disk: Option<PathBuf>,
        #[arg(long, requires = "disk")]
        floor_disk: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "uefi")]
        firmware: FirmwareArg,
        /// Also write the results here as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// The container daemon in the test image's disk: its RSS idle and with 100 idle
    /// containers (busybox sleep), and the time to start those 100.
    BenchDaemon {
        #[arg(long)]
        kernel: PathBuf,
        #[arg(long)]
        initrd: PathBuf,
        /// The test image's disk (the built-in busybox image is on its root).
        #[arg(long)]
        disk: PathBuf,
        #[arg(long, default_value_t = 100)]
        containers: usize,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// An OS update on the test image's disk: berth-updater apply against dd of the
    /// same root, the reboot's downtime, the payload's size.
    /// Log forwarding's throughput on this machine: berth-logforward against rsyslog's
    /// imfile, each shipping the same container log to one rsyslog receiver.
    BenchLogforward {
        #[arg(long, default_value_t = 200_000)]
        lines: u64,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// The demo machine on the production disk: the smallest memory size that serves
    /// its page (256 MiB first, then smaller), and Berth's own processes' memory there.
    BenchDemo {
        #[arg(long)]
        kernel: PathBuf,
        #[arg(long)]
        initrd: PathBuf,
        /// The production image's raw disk.
        #[arg(long)]
        disk: PathBuf,
        #[arg(long)]
        user_data: PathBuf,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Every performance goal, its figure from the JSON files `make bench` wrote in DIR,
    /// and its bound, as one table.
    BenchSummary {
        #[arg(long, default_value = "out")]
        dir: PathBuf,
    },
    BenchUpdate {
        #[arg(long)]
        kernel: PathBuf,
        #[arg(long)]
        initrd: PathBuf,
        /// The test image's disk.
        #[arg(long)]
        disk: PathBuf,
        /// A newer build's output directory (`image-build image --version ...`).
        #[arg(long)]
        newer: PathBuf,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// create + start + wait + delete of /bin/true: berth-runtime against crun and runc,
    /// in the test image (cgroup v2), interleaved.
    BenchRuntimes {
        /// The test image's kernel and initramfs (they carry crun, runc and the bench).
        #[arg(long)]
        kernel: PathBuf,
        #[arg(long)]
        initrd: PathBuf,
        #[arg(long, default_value_t = 50)]
        runs: usize,
        /// Leave the binaries on the guest's writable root: each runtime then takes its
        /// CVE-2019-5736 defence (a read-only clone or a memfd copy) on every start.
        #[arg(long)]
        writable: bool,
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum FirmwareArg {
    Uefi,
    /// OVMF with Secure Boot enforcing (Microsoft's keys enrolled).
    Secureboot,
    Bios,
    /// QEMU loads the kernel and initramfs itself.
    Direct,
}

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Cmd::Run {
            kernel,
            initrd,
            append,
            disk,
            firmware,
            user_data,
            forward,
        } => {
            let mut cfg = VmConfig::new(kernel, initrd);
            cfg.name = "run".into();
            cfg.append = append;
            if let Some(path) = &user_data {
                cfg.extra_args.push("-fw_cfg".into());
                cfg.extra_args
                    .push(format!("name=opt/berth/user-data,file={}", path.display()));
            }
            let mut ports = Vec::new();
            if !forward.is_empty() {
                let mut netdev = String::from("user,id=run0,restrict=on");
                for f in &forward {
                    let (host, guest) = match f
                        .split_once(':')
                        .map(|(h, g)| (h.parse::<u16>(), g.parse::<u16>()))
                    {
                        Some((Ok(h), Ok(g))) => (h, g),
                        _ => {
                            eprintln!("berth-vm: --forward {f:?}: expected HOST:GUEST ports");
                            return ExitCode::from(2);
                        }
                    };
                    netdev += &format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}");
                    ports.push(host);
                }
                cfg.extra_args.extend([
                    "-netdev".into(),
                    netdev,
                    "-device".into(),
                    "virtio-net-pci,netdev=run0".into(),
                ]);
            }
            cfg.firmware = match (&disk, firmware) {
                (None, _) | (_, FirmwareArg::Direct) => Firmware::Direct,
                (Some(_), FirmwareArg::Uefi) => Firmware::Uefi,
                (Some(_), FirmwareArg::Secureboot) => Firmware::UefiSecureBoot,
                (Some(_), FirmwareArg::Bios) => Firmware::Bios,
            };
            cfg.disk = disk;
            run(cfg, &ports)
        }
        Cmd::Bench {
            kernel,
            initrd,
            floor_initrd,
            runs,
            json,
            disk,
            floor_disk,
            firmware,
        } => {
            let setup = Bench {
                kernel,
                initrd,
                floor_initrd,
                disks: disk.zip(floor_disk),
                firmware: match firmware {
                    FirmwareArg::Uefi => Firmware::Uefi,
                    FirmwareArg::Secureboot => Firmware::UefiSecureBoot,
                    FirmwareArg::Bios => Firmware::Bios,
                    FirmwareArg::Direct => Firmware::Direct,
                },
            };
            bench(&setup, runs.max(1), json.as_deref())
        }
        Cmd::BenchRuntimes {
            kernel,
            initrd,
            runs,
            writable,
            json,
        } => bench_runtimes(kernel, initrd, runs.max(1), writable, json.as_deref()),
        Cmd::BenchDaemon {
            kernel,
            initrd,
            disk,
            containers,
            json,
        } => bench_daemon(kernel, initrd, &disk, containers.max(1), json.as_deref()),
        Cmd::BenchLogforward { lines, json } => {
            let exe = std::env::current_exe().unwrap_or_default();
            berth_tests::logforward_bench::run(
                &berth_tests::logforward_bench::agent_beside(&exe),
                lines.max(1),
                json.as_deref(),
            )
        }
        Cmd::BenchDemo {
            kernel,
            initrd,
            disk,
            user_data,
            json,
        } => berth_tests::demo_bench::run(
            &berth_tests::demo_bench::Inputs {
                kernel: &kernel,
                initrd: &initrd,
                disk: &disk,
                user_data: &user_data,
            },
            json.as_deref(),
        ),
        Cmd::BenchSummary { dir } => {
            let missed = berth_tests::bench_report::summary(&dir);
            println!("  goals missed: {missed}");
            Ok(())
        }
        Cmd::BenchUpdate {
            kernel,
            initrd,
            disk,
            newer,
            json,
        } => berth_tests::update_bench::run(
            &berth_tests::update_bench::Inputs {
                kernel: &kernel,
                initrd: &initrd,
                disk: &disk,
                newer: &newer,
            },
            json.as_deref(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-vm: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(mut cfg: VmConfig, forwarded: &[u16]) -> Result<()> {
    // A disk larger than the image, as clouds give, so first boot creates DATA for /var.
    if let Some(image) = cfg.disk.take() {
        let overlay = berth_tests::vm::work_dir("run-disk")?.join("disk.qcow2");
        berth_tests::vm::create_overlay(&image, &overlay, Some("4G"))?;
        cfg.disk = Some(overlay);
        cfg.disk_persistent = true;
    }
    let scripted =
        std::env::var("CI").is_ok_and(|v| v == "true") || !std::io::stdin().is_terminal();
    if !scripted {
        let lock = berth_tests::lock::vm_lock()?;
        lock.keep_across_exec()?;
        let accel = accel::probe(&cfg.kernel);
        let dir = berth_tests::vm::work_dir(&cfg.name)?;
        let control = dir.join("control.sock");
        eprintln!(
            "berth-vm: control: target/release/berthctl --vm {} services",
            control.display()
        );
        eprintln!("berth-vm: serial console follows; ctrl-a x quits, ctrl-a c is QEMU's monitor");
        let mut cmd = berth_tests::vm::qemu_command(&cfg, accel, &dir)?;
        berth_tests::vm::serial_ports(&mut cmd, None, cfg.control.then_some(control.as_path()));
        let err = cmd.args(["-serial", "mon:stdio"]).exec();
        bail!("starting qemu-system-x86_64: {err}");
    }
    let mut vm = Vm::boot(cfg)?;
    let ready = vm.wait_for_line("berth: ready", BOOT_TIMEOUT);
    print!("{}", vm.console());
    let ready = ready?;
    println!(
        "berth-vm: `berth: ready` after {:.2} s ({}); pressing the power button",
        ready.at.as_secs_f64(),
        vm.accel.name()
    );
    for port in forwarded {
        match berth_tests::http::get_patiently(*port, Duration::from_secs(60)) {
            Ok(body) => println!("berth-vm: GET http://127.0.0.1:{port}/ -> {}", body.trim()),
            Err(e) => println!("berth-vm: GET http://127.0.0.1:{port}/: no answer: {e}"),
        }
    }
    let printed = vm.console().len();
    vm.powerdown()?;
    let exit = vm.wait_exit(SHUTDOWN_TIMEOUT);
    print!("{}", vm.console().get(printed..).unwrap_or_default());
    let exit = exit?;
    if !exit.shutdown_reasons.iter().any(|r| r == "guest-shutdown") {
        bail!(
            "QEMU stopped without a guest poweroff (events: {:?})",
            exit.shutdown_reasons
        );
    }
    println!(
        "berth-vm: powered off cleanly after {:.2} s",
        exit.after.as_secs_f64()
    );
    Ok(())
}

/// What `bench` boots.
struct Bench {
    kernel: PathBuf,
    initrd: PathBuf,
    floor_initrd: PathBuf,
    /// (Berth's disk, the floor's disk) for firmware boots.
    disks: Option<(PathBuf, PathBuf)>,
    firmware: Firmware,
}

/// Seconds from QEMU start to the line, for one boot.
fn boot_time(cfg: VmConfig, line: &str, power_off: bool) -> Result<f64> {
    let mut vm = Vm::boot(cfg)?;
    let seen = vm.wait_for_line(line, BOOT_TIMEOUT)?;
    if power_off {
        vm.powerdown()?;
    }
    vm.wait_exit(SHUTDOWN_TIMEOUT)?;
    Ok(seen.at.as_secs_f64())
}

/// The two VM configurations: direct kernel boots, or both disks through the same
/// firmware and bootloader. Berth's disk is a 2 GiB overlay that has done its first boot
/// already (DATA exists), as every boot after the first finds it.
fn bench_configs(b: &Bench, scratch: &Path) -> Result<(VmConfig, VmConfig)> {
    let mut floor = VmConfig::new(b.kernel.clone(), b.floor_initrd.clone());
    let mut berth = VmConfig::new(b.kernel.clone(), b.initrd.clone());
    floor.name = "bench-floor".into();
    berth.name = "bench-berth".into();
    if let Some((disk, floor_disk)) = &b.disks {
        floor.firmware = b.firmware;
        floor.disk = Some(floor_disk.clone());
        berth.firmware = b.firmware;
        let warm = scratch.join("berth-warm.qcow2");
        berth_tests::vm::create_overlay(disk, &warm, Some("2G"))?;
        berth.disk = Some(warm);
        berth.disk_persistent = true;
        eprintln!("berth-vm: first boot of Berth's disk (not measured)");
        boot_time(berth.clone(), "berth: ready", true).context("Berth's first boot")?;
    }
    Ok((floor, berth))
}

fn bench(b: &Bench, runs: usize, json: Option<&Path>) -> Result<()> {
    let accel = accel::probe(&b.kernel);
    let scratch = berth_tests::vm::work_dir("bench")?;
    let (floor_cfg, berth_cfg) = bench_configs(b, &scratch)?;
    let mut floor_times = Vec::new();
    let mut berth_times = Vec::new();
    for i in 0..runs {
        floor_times
            .push(boot_time(floor_cfg.clone(), "floor: ready", false).context("floor boot")?);
        berth_times.push(boot_time(berth_cfg.clone(), "berth: ready", true).context("Berth boot")?);
        eprintln!(
            "berth-vm: run {}/{runs}: floor {:.2} s, berth {:.2} s",
            i + 1,
            floor_times[i],
            berth_times[i]
        );
    }
    let (fm, bm) = (median(&mut floor_times), median(&mut berth_times));
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let how = match (&b.disks, b.firmware) {
        (None, _) | (_, Firmware::Direct) => "-kernel",
        (Some(_), Firmware::Uefi) => "disk through OVMF + shim + GRUB",
        (Some(_), Firmware::UefiSecureBoot) => {
            "disk through OVMF (Secure Boot) + signed shim + signed GRUB"
        }
        (Some(_), Firmware::Bios) => "disk through SeaBIOS + GRUB",
    };
    println!(
        "boot to ready under {}, {how} ({runs} runs each, QEMU start to console line)",
        accel.name()
    );
    println!("  {:<28} {:>8} {:>8}", "", "median", "min");
    println!(
        "  {:<28} {:>7.2}s {:>7.2}s",
        "kernel-only floor",
        fm,
        min(&floor_times)
    );
    println!(
        "  {:<28} {:>7.2}s {:>7.2}s",
        "berth: ready",
        bm,
        min(&berth_times)
    );
    println!(
        "  ratio berth/floor: {:.2}x (Berth's own cost: {:+.2} s)",
        bm / fm,
        bm - fm
    );
    println!("sizes");
    for (name, p) in [
        ("kernel", &b.kernel),
        ("initramfs", &b.initrd),
        ("floor initrd", &b.floor_initrd),
    ] {
        println!(
            "  {name:<13} {:>9} bytes  {:>6.2} MiB",
            size(p),
            mib(size(p))
        );
    }
    if let Some(path) = json {
        let doc = serde_json::json!({
            "accel": accel.name(),
            "boot": how,
            "runs": runs,
            "floor_seconds": floor_times,
            "berth_seconds": berth_times,
            "floor_median_seconds": fm,
            "berth_median_seconds": bm,
            "floor_min_seconds": min(&floor_times),
            "berth_min_seconds": min(&berth_times),
            "ratio": bm / fm,
            "kernel_bytes": size(&b.kernel),
            "initramfs_bytes": size(&b.initrd),
            "floor_initramfs_bytes": size(&b.floor_initrd),
        });
        berth_tests::bench_report::write(path, doc)?;
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

/// The bundle every runtime runs: busybox's `true` with `runc spec`'s usual isolation.
const BENCH_CONFIG: &str = r#"{
  "ociVersion": "1.0.2",
  "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["/bin/true"],
    "env": ["PATH=/bin"], "cwd": "/",
    "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]},
    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}], "noNewPrivileges": true},
  "root": {"path": "rootfs", "readonly": true},
  "hostname": "bench",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
  ],
  "linux": {
    "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
    "resources": {"pids": {"limit": 100}},
    "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sysrq-trigger", "/sys/firmware"],
    "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys"]
  }
}"#;

fn bench_runtimes(
    kernel: PathBuf,
    initrd: PathBuf,
    runs: usize,
    writable: bool,
    json: Option<&Path>,
) -> Result<()> {
    let mut cfg = VmConfig::new(kernel, initrd);
    cfg.name = "bench-runtimes".into();
    cfg.testd = true;
    let vm = Vm::boot(cfg)?;
    vm.wait_for_line("berth: ready", BOOT_TIMEOUT)?;
    let mut testd = vm.testd()?;
    // By default the runtimes' binaries on read-only mounts, as on Berth's verified root:
    // each runtime then skips its CVE-2019-5736 defence, as it would there.
    let bundle =
        "set -e; d=/tmp/bench; mkdir -p $d/rootfs/bin $d/rootfs/proc $d/rootfs/dev $d/rootfs/sys; \
        cp /usr/bin/busybox $d/rootfs/bin/; ln -sf busybox $d/rootfs/bin/true";
    let read_only = "; for b in /usr/bin/berth-runtime /usr/bin/crun /usr/sbin/runc; do \
        mount --bind $b $b; mount -o remount,bind,ro $b; done";
    let setup = if writable {
        bundle.to_string()
    } else {
        format!("{bundle}{read_only}")
    };
    let out = testd.sh(&setup)?;
    anyhow::ensure!(out.exit_code == Some(0), "bundle setup: {}", out.stderr);
    let out = testd.run_with(
        &["sh", "-c", "cat > /tmp/bench/config.json"],
        Some(BENCH_CONFIG),
        Duration::from_secs(30),
    )?;
    anyhow::ensure!(out.exit_code == Some(0), "config: {}", out.stderr);
    eprintln!(
        "berth-vm: {runs} runs of each runtime, interleaved, in the guest ({})",
        vm.accel.name()
    );
    let out = testd.run_with(
        &["berth-runtime-bench", &runs.to_string(), "/tmp/bench"],
        None,
        Duration::from_secs(3600),
    )?;
    anyhow::ensure!(
        out.exit_code == Some(0),
        "berth-runtime-bench: {}",
        out.stderr
    );
    let report: Vec<serde_json::Value> = serde_json::from_str(out.stdout.trim())?;
    let median = |name: &str| {
        report
            .iter()
            .find(|r| r["runtime"] == name)
            .and_then(|r| r["median_ms"].as_f64())
            .unwrap_or(f64::NAN)
    };
    println!(
        "create + start + wait + delete of /bin/true, {runs} runs each, interleaved, cgroup-v2 guest under {}, binaries {}",
        vm.accel.name(),
        if writable { "writable" } else { "read-only" }
    );
    println!(
        "  {:<16} {:>10} {:>10} {:>14}",
        "runtime", "median", "min", "peak RSS"
    );
    for r in &report {
        println!(
            "  {:<16} {:>8.2}ms {:>8.2}ms {:>11} KB",
            r["runtime"].as_str().unwrap_or("?"),
            r["median_ms"].as_f64().unwrap_or(f64::NAN),
            r["min_ms"].as_f64().unwrap_or(f64::NAN),
            r["peak_rss_kb"].as_i64().unwrap_or(0)
        );
    }
    let ours = median("berth-runtime");
    println!(
        "  ratio berth-runtime/crun: {:.2}x, berth-runtime/runc: {:.2}x (below 1: faster)",
        ours / median("crun"),
        ours / median("runc")
    );
    println!(
        "  ratio berth-runtime/namespace floor (unshare + chroot + exec): {:.2}x",
        ours / median("namespace floor")
    );
    if let Some(path) = json {
        berth_tests::bench_report::write(path, serde_json::Value::Array(report))?;
    }
    Ok(())
}

/// The daemon's resident memory (VmRSS, KiB) and thread count, found through init.
fn daemon_memory(testd: &mut berth_tests::testd::TestdClient) -> Result<(u64, u64)> {
    let out = testd.sh(
        "pid=$(head -1 /sys/fs/cgroup/berth/berth-daemon/main/cgroup.procs); \
         grep -E '^(VmRSS|Threads):' /proc/$pid/status",
    )?;
    let field = |name: &str| -> Result<u64> {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no {name} in {:?}", out.stdout))
    };
    Ok((field("VmRSS:")?, field("Threads:")?))
}

/// Seconds between the two /proc/uptime readings a timing script printed ("t0 t1").
fn bench_daemon(
    kernel: PathBuf,
    initrd: PathBuf,
    disk: &Path,
    count: usize,
    json: Option<&Path>,
) -> Result<()> {
    let overlay = berth_tests::vm::work_dir("bench-daemon-disk")?.join("disk.qcow2");
    berth_tests::vm::create_overlay(disk, &overlay, Some("4G"))?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(kernel.with_file_name("manifest.json"))?)?;
    let mut cfg = VmConfig::new(kernel, initrd);
    cfg.name = "bench-daemon".into();
    cfg.testd = true;
    cfg.memory_mib = 2048;
    cfg.disk = Some(overlay);
    cfg.disk_persistent = true;
    cfg.append = manifest["disk"]["cmdline"]
        .as_str()
        .context("disk.cmdline in the manifest")?
        .split_whitespace()
        .filter(|w| !w.starts_with("console="))
        .collect::<Vec<_>>()
        .join(" ");
    let vm = Vm::boot(cfg)?;
    vm.wait_for_line("berth: ready", BOOT_TIMEOUT)?;
    let mut testd = vm.testd()?;
    // Idle: settled after importing the built-in image.
    let out = testd.sh("for i in $(seq 100); do grep -q '{' /run/berth/containers/status.json 2>/dev/null && break; sleep 0.2; done; sleep 2")?;
    anyhow::ensure!(out.exit_code == Some(0), "daemon not up: {}", out.stderr);
    let (idle_kb, idle_threads) = daemon_memory(&mut testd)?;
    // The Prometheus endpoint on (the daemon reads its settings when it starts), for
    // the cost of a scrape with every container running.
    let out = testd.sh(
        "set -e; printf 'listen = \"127.0.0.1:9100\"\n' > /etc/berth/metrics.toml; \
         berthctl service restart berth-daemon >/dev/null; \
         for i in $(seq 100); do wget -q -O /dev/null http://127.0.0.1:9100/metrics && break; sleep 0.2; done",
    )?;
    anyhow::ensure!(out.exit_code == Some(0), "metrics endpoint: {}", out.stderr);
    // The declarations staged, then moved in at once and the daemon told (SIGHUP):
    // timed in the guest, until status.json says all run.
    let script = format!(
        "set -e; mkdir -p /tmp/decls /etc/berth/containers.d; \
         for i in $(seq {count}); do printf 'image = \"berth.local/busybox:latest\"\ncommand = [\"sleep\", \"100000\"]\nnetwork = \"none\"\nrestart = \"always\"\n' > /tmp/decls/idle$i.toml; done; \
         pid=$(head -1 /sys/fs/cgroup/berth/berth-daemon/main/cgroup.procs); \
         t0=$(cut -d' ' -f1 /proc/uptime); mv /tmp/decls/*.toml /etc/berth/containers.d/; kill -HUP $pid; \
         n=0; while [ $n -lt {count} ]; do sleep 0.1; n=$(grep -c '\"state\": \"running\"' /run/berth/containers/status.json || true); \
           if grep -q '\"state\": \"failed\"' /run/berth/containers/status.json; then grep -m3 error /run/berth/containers/status.json; exit 1; fi; done; \
         t1=$(cut -d' ' -f1 /proc/uptime); echo $t0 $t1"
    );
    eprintln!(
        "berth-vm: starting {count} containers through the daemon ({})",
        vm.accel.name()
    );
    let out = testd.run_with(&["sh", "-c", &script], None, Duration::from_secs(3600))?;
    anyhow::ensure!(
        out.exit_code == Some(0),
        "starting: {}{}",
        out.stdout,
        out.stderr
    );
    let start_s = berth_tests::testd::uptime_span(&out.stdout, "timing")?;
    std::thread::sleep(Duration::from_secs(3));
    let (busy_kb, busy_threads) = daemon_memory(&mut testd)?;
    // 20 scrapes of everything: the wall time each, and the daemon's CPU time (its
    // utime + stime, in 10 ms ticks) over all of them.
    let scrape_script = "set -e; pid=$(head -1 /sys/fs/cgroup/berth/berth-daemon/main/cgroup.procs); \
         cpu() { awk '{print $14+$15}' /proc/$pid/stat; }; \
         wget -q -O /tmp/scrape http://127.0.0.1:9100/metrics; c0=$(cpu); t0=$(cut -d' ' -f1 /proc/uptime); \
         for i in $(seq 20); do wget -q -O /dev/null http://127.0.0.1:9100/metrics; done; \
         t1=$(cut -d' ' -f1 /proc/uptime); c1=$(cpu); \
         echo $t0 $t1 $c0 $c1 $(wc -c < /tmp/scrape) $(grep -c '^container_cpu_usage_seconds_total' /tmp/scrape)";
    let out = testd.sh(scrape_script)?;
    anyhow::ensure!(
        out.exit_code == Some(0),
        "scrapes: {}{}",
        out.stdout,
        out.stderr
    );
    let figures: Vec<f64> = out
        .stdout
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    anyhow::ensure!(figures.len() == 6, "scrape figures: {}", out.stdout);
    let scrape_ms = (figures[1] - figures[0]) * 1000.0 / 20.0;
    let scrape_cpu_ms = (figures[3] - figures[2]) * 10.0 / 20.0;
    let (scrape_bytes, scraped) = (figures[4], figures[5]);
    // The floor: the same number of `berth-runtime create` + `start` of busybox sleep from
    // one prepared bundle, in a shell loop: no image store, no rootfs per container, no
    // config to build, no logs.
    let floor_setup =
        "set -e; d=/tmp/floor; mkdir -p $d/rootfs/bin $d/rootfs/proc $d/rootfs/dev $d/rootfs/sys; \
        cp /usr/bin/busybox $d/rootfs/bin/; ln -sf busybox $d/rootfs/bin/sleep";
    let out = testd.sh(floor_setup)?;
    anyhow::ensure!(out.exit_code == Some(0), "floor setup: {}", out.stderr);
    let config = BENCH_CONFIG.replace(
        r#""args": ["/bin/true"]"#,
        r#""args": ["/bin/sleep", "100000"]"#,
    );
    anyhow::ensure!(config != BENCH_CONFIG, "the floor's config kept /bin/true");
    let out = testd.run_with(
        &["sh", "-c", "cat > /tmp/floor/config.json"],
        Some(&config),
        Duration::from_secs(30),
    )?;
    anyhow::ensure!(out.exit_code == Some(0), "floor config: {}", out.stderr);
    let floor_script = format!(
        "set -e; t0=$(cut -d' ' -f1 /proc/uptime); for i in $(seq {count}); do \
         berth-runtime --root /run/floor create --bundle /tmp/floor f$i </dev/null >/dev/null 2>&1; \
         berth-runtime --root /run/floor start f$i; done; t1=$(cut -d' ' -f1 /proc/uptime); echo $t0 $t1"
    );
    let out = testd.run_with(
        &["sh", "-c", &floor_script],
        None,
        Duration::from_secs(3600),
    )?;
    anyhow::ensure!(
        out.exit_code == Some(0),
        "floor: {}{}",
        out.stdout,
        out.stderr
    );
    let floor_s = berth_tests::testd::uptime_span(&out.stdout, "floor timing")?;
    let procs = testd.sh(
        "find /sys/fs/cgroup/berth/berth-daemon/containers -mindepth 1 -maxdepth 1 -type d | wc -l",
    )?;
    println!(
        "container daemon, {} guest, {count} idle containers (busybox sleep, network none):",
        vm.accel.name()
    );
    println!("  daemon RSS idle:            {idle_kb} KB ({idle_threads} threads)");
    println!(
        "  daemon RSS with {count}:        {busy_kb} KB ({busy_threads} threads), {:.1} KB per container",
        busy_kb.saturating_sub(idle_kb) as f64 / count as f64
    );
    println!(
        "  time to start {count}:         {start_s:.2} s ({:.0} ms per container; cgroups listed: {})",
        start_s * 1000.0 / count as f64,
        procs.stdout.trim()
    );
    println!(
        "  floor (berth-runtime create + start in a shell loop): {floor_s:.2} s; daemon/floor {:.2}x",
        start_s / floor_s
    );
    println!(
        "  a metrics scrape with {count}:  {scrape_ms:.1} ms wall, {scrape_cpu_ms:.1} ms of the daemon's CPU, \
         {scrape_bytes:.0} bytes, {scraped:.0} containers in it"
    );
    if let Some(path) = json {
        let report = serde_json::json!({
            "accel": vm.accel.name(),
            "containers": count,
            "scrape_ms": scrape_ms,
            "scrape_cpu_ms": scrape_cpu_ms,
            "scrape_bytes": scrape_bytes,
            "floor_seconds": floor_s,
            "idle_rss_kb": idle_kb,
            "idle_threads": idle_threads,
            "busy_rss_kb": busy_kb,
            "busy_threads": busy_threads,
            "start_seconds": start_s,
        });
        berth_tests::bench_report::write(path, report)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0]), 4.0);
    }
}
