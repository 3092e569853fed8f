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
        /// Also write the results here as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum FirmwareArg {
    Uefi,
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
        } => {
            let mut cfg = VmConfig::new(kernel, initrd);
            cfg.name = "run".into();
            cfg.append = append;
            cfg.firmware = match (&disk, firmware) {
                (None, _) | (_, FirmwareArg::Direct) => Firmware::Direct,
                (Some(_), FirmwareArg::Uefi) => Firmware::Uefi,
                (Some(_), FirmwareArg::Bios) => Firmware::Bios,
            };
            cfg.disk = disk;
            run(cfg)
        }
        Cmd::Bench {
            kernel,
            initrd,
            floor_initrd,
            runs,
            json,
        } => bench(
            &kernel,
            &initrd,
            &floor_initrd,
            runs.max(1),
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

fn run(cfg: VmConfig) -> Result<()> {
    let scripted =
        std::env::var("CI").is_ok_and(|v| v == "true") || !std::io::stdin().is_terminal();
    if !scripted {
        let _lock = berth_tests::lock::vm_lock()?;
        let accel = accel::probe(&cfg.kernel);
        let dir = berth_tests::vm::work_dir(&cfg.name)?;
        eprintln!("berth-vm: serial console follows; ctrl-a x quits, ctrl-a c is QEMU's monitor");
        let err = berth_tests::vm::qemu_command(&cfg, accel, &dir)?
            .args(["-serial", "mon:stdio"])
            .exec();
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

/// Seconds from QEMU start to the line, for one boot.
fn boot_time(kernel: &Path, initrd: &Path, line: &str, power_off: bool) -> Result<f64> {
    let mut cfg = VmConfig::new(kernel.to_path_buf(), initrd.to_path_buf());
    cfg.name = "bench".into();
    let mut vm = Vm::boot(cfg)?;
    let seen = vm.wait_for_line(line, BOOT_TIMEOUT)?;
    if power_off {
        vm.powerdown()?;
    }
    vm.wait_exit(SHUTDOWN_TIMEOUT)?;
    Ok(seen.at.as_secs_f64())
}

fn bench(
    kernel: &Path,
    initrd: &Path,
    floor: &Path,
    runs: usize,
    json: Option<&Path>,
) -> Result<()> {
    let accel = accel::probe(kernel);
    let mut floor_times = Vec::new();
    let mut berth_times = Vec::new();
    for i in 0..runs {
        floor_times.push(boot_time(kernel, floor, "floor: ready", false).context("floor boot")?);
        berth_times.push(boot_time(kernel, initrd, "berth: ready", true).context("Berth boot")?);
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
    println!(
        "boot to ready under {} ({runs} runs each, QEMU start to console line)",
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
    println!(
        "  kernel        {:>9} bytes  {:>6.2} MiB",
        size(kernel),
        mib(size(kernel))
    );
    println!(
        "  initramfs     {:>9} bytes  {:>6.2} MiB",
        size(initrd),
        mib(size(initrd))
    );
    println!(
        "  floor initrd  {:>9} bytes  {:>6.2} MiB",
        size(floor),
        mib(size(floor))
    );
    if let Some(path) = json {
        let doc = serde_json::json!({
            "accel": accel.name(),
            "runs": runs,
            "floor_seconds": floor_times,
            "berth_seconds": berth_times,
            "floor_median_seconds": fm,
            "berth_median_seconds": bm,
            "ratio": bm / fm,
            "kernel_bytes": size(kernel),
            "initramfs_bytes": size(initrd),
            "floor_initramfs_bytes": size(floor),
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
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
