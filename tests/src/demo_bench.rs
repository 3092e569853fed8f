//! `berth-vm bench-demo`: the demo machine (`make run`'s user-data on the production
//! disk) at different memory sizes, through OVMF and through SeaBIOS, and what Berth's
//! own processes hold on it.
//!
//! - The smallest machine, per firmware: 256 MiB first (the size Berth promises). When
//!   it serves the demo's page, smaller steps follow until one does not; when it does
//!   not, larger steps until one does. Every size is a first boot of a fresh 4 GiB disk
//!   (DATA made then), the boot that needs the most. A boot that fails says where: the
//!   bootloader, the kernel, or Berth.
//! - Memory: on the first machine that served (256 MiB through OVMF when it can), idle
//!   after its page, `berthctl memory` lists init and every service's processes with
//!   RSS and PSS.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::vm::{Firmware, Vm, VmConfig};

const GOAL_MIB: u32 = 256;
const SMALLER_MIB: [u32; 5] = [224, 192, 160, 128, 96];
const LARGER_MIB: [u32; 4] = [320, 384, 448, 512];
const BOOT_PATIENCE: Duration = Duration::from_secs(120);
const PAGE_PATIENCE: Duration = Duration::from_secs(90);
/// After the page: the agent done, the daemon settled.
const IDLE_SETTLE: Duration = Duration::from_secs(10);
/// Console lines that end a boot early: the bootloader giving up on the slot, a kernel
/// panic, the OOM killer.
const FAILURES: [&str; 4] = [
    "did not boot",
    "Kernel panic",
    "Out of memory",
    "berth: fatal:",
];

pub struct Inputs<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    /// The production image's raw disk.
    pub disk: &'a Path,
    pub user_data: &'a Path,
}

/// Seconds from QEMU's start to the page, or why it did not come.
type Served = Result<f64, String>;

/// How one size went.
struct Outcome {
    firmware: Firmware,
    mib: u32,
    served: Served,
}

fn firmware_name(f: Firmware) -> &'static str {
    match f {
        Firmware::Uefi => "uefi",
        Firmware::Bios => "bios",
        Firmware::UefiSecureBoot => "secureboot",
        Firmware::Direct => "direct",
    }
}

pub fn run(i: &Inputs<'_>, json: Option<&Path>) -> Result<()> {
    let mut outcomes = Vec::new();
    let mut memory: Option<(Firmware, u32, Vec<berth_control::ProcessMemory>)> = None;
    for firmware in [Firmware::Uefi, Firmware::Bios] {
        let mut try_size = |mib: u32, outcomes: &mut Vec<Outcome>| -> Result<bool> {
            eprintln!(
                "berth-vm: the demo in {mib} MiB ({})",
                firmware_name(firmware)
            );
            let (served, rows) = boot_demo(i, firmware, mib, memory.is_none())?;
            if let Some(rows) = rows {
                memory = Some((firmware, mib, rows));
            }
            let ok = served.is_ok();
            outcomes.push(Outcome {
                firmware,
                mib,
                served,
            });
            Ok(ok)
        };
        let steps: &[u32] = if try_size(GOAL_MIB, &mut outcomes)? {
            &SMALLER_MIB
        } else {
            &LARGER_MIB
        };
        let going_down = steps[0] < GOAL_MIB;
        for &mib in steps {
            let served = try_size(mib, &mut outcomes)?;
            // Down: stop at the first failure. Up: stop at the first success.
            if served != going_down {
                break;
            }
        }
    }
    let smallest = |f: Firmware| {
        outcomes
            .iter()
            .filter(|o| o.firmware == f && o.served.is_ok())
            .map(|o| o.mib)
            .min()
    };
    println!("the demo (make run's user-data, production disk, first boot):");
    for o in &outcomes {
        match &o.served {
            Ok(s) => println!(
                "  {:<5} {:>4} MiB: page served {s:.2} s after QEMU started",
                firmware_name(o.firmware),
                o.mib
            ),
            Err(e) => println!(
                "  {:<5} {:>4} MiB: no page: {e}",
                firmware_name(o.firmware),
                o.mib
            ),
        }
    }
    for f in [Firmware::Uefi, Firmware::Bios] {
        match smallest(f) {
            Some(m) => println!(
                "  smallest machine that served it, {}: {m} MiB",
                firmware_name(f)
            ),
            None => println!("  no size served it through {}", firmware_name(f)),
        }
    }
    let (mem_firmware, mem_mib, rows) = memory.unwrap_or((Firmware::Uefi, 0, Vec::new()));
    let rss: u64 = rows.iter().map(|r| r.rss_kb).sum();
    let pss: u64 = rows.iter().map(|r| r.pss_kb).sum();
    println!(
        "Berth's own processes, idle on the {mem_mib} MiB demo machine ({}), berthctl memory:",
        firmware_name(mem_firmware)
    );
    for r in &rows {
        println!(
            "  {:<20} {:<16} {:>7} KB RSS {:>7} KB PSS",
            r.service, r.command, r.rss_kb, r.pss_kb
        );
    }
    // smaps counts in KiB ("kB").
    println!(
        "  total, {} processes: {rss} KB RSS ({:.1} MB), {pss} KB PSS ({:.1} MB)",
        rows.len(),
        rss as f64 * 1024.0 / 1e6,
        pss as f64 * 1024.0 / 1e6
    );
    if let Some(path) = json {
        let smallest_any = [smallest(Firmware::Uefi), smallest(Firmware::Bios)]
            .into_iter()
            .flatten()
            .min();
        let doc = serde_json::json!({
            "sizes": outcomes.iter().map(|o| serde_json::json!({
                "firmware": firmware_name(o.firmware),
                "mib": o.mib,
                "served_seconds": o.served.as_ref().ok(),
                "error": o.served.as_ref().err(),
            })).collect::<Vec<_>>(),
            "smallest_mib": smallest_any,
            "smallest_mib_uefi": smallest(Firmware::Uefi),
            "smallest_mib_bios": smallest(Firmware::Bios),
            "memory_measured_on": {"firmware": firmware_name(mem_firmware), "mib": mem_mib},
            "processes": rows,
            // No machine served: nothing measured, not zero.
            "rss_kb_total": (!rows.is_empty()).then_some(rss),
            "pss_kb_total": (!rows.is_empty()).then_some(pss),
        });
        crate::bench_report::write(path, doc)?;
    }
    Ok(())
}

/// One first boot at `mib`: whether the page came, and (when asked) the memory rows.
fn boot_demo(
    i: &Inputs<'_>,
    firmware: Firmware,
    mib: u32,
    want_memory: bool,
) -> Result<(Served, Option<Vec<berth_control::ProcessMemory>>)> {
    let name = format!("bench-demo-{}-{mib}", firmware_name(firmware));
    let dir = crate::vm::work_dir(&format!("{name}-disk"))?;
    let disk = dir.join("disk.qcow2");
    crate::vm::create_overlay(i.disk, &disk, Some("4G"))?;
    let port = crate::http::free_port();
    let mut cfg = VmConfig::new(i.kernel.to_path_buf(), i.initrd.to_path_buf());
    cfg.name = name;
    cfg.memory_mib = mib;
    cfg.firmware = firmware;
    cfg.disk = Some(disk);
    cfg.disk_persistent = true;
    cfg.extra_args.extend([
        "-fw_cfg".to_string(),
        format!("name=opt/berth/user-data,file={}", i.user_data.display()),
        "-netdev".into(),
        format!("user,id=demo0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:8080"),
        "-device".into(),
        "virtio-net-pci,netdev=demo0".into(),
    ]);
    let vm = Vm::boot(cfg)?;
    if let Err(why) = ready_or_failure(&vm) {
        return Ok((Err(why), None));
    }
    let body = match crate::http::get_patiently(port, PAGE_PATIENCE) {
        Ok(body) => body,
        Err(e) => return Ok((Err(format!("ready, but no page: {e}")), None)),
    };
    let served = vm.elapsed_since_start().as_secs_f64();
    if !body.contains("hello from a Berth container") {
        return Ok((Err(format!("not the demo's page: {body:?}")), None));
    }
    if !want_memory {
        return Ok((Ok(served), None));
    }
    std::thread::sleep(IDLE_SETTLE);
    let out = vm.berthctl(&["memory", "--json"])?;
    let rows: Vec<berth_control::ProcessMemory> =
        serde_json::from_str(&out).with_context(|| format!("berthctl memory: {out}"))?;
    anyhow::ensure!(
        rows.iter().any(|r| r.service == "init") && rows.len() > 1,
        "berthctl memory listed too little: {out}"
    );
    Ok((Ok(served), Some(rows)))
}

/// Waits for `berth: ready`; a failure line on the console (or the patience running
/// out) ends the wait early with that line.
fn ready_or_failure(vm: &Vm) -> Result<(), String> {
    let deadline = Instant::now() + BOOT_PATIENCE;
    loop {
        let console = vm.console();
        if console.contains("berth: ready") {
            return Ok(());
        }
        let lines: Vec<&str> = console.lines().collect();
        if let Some(at) = lines
            .iter()
            .position(|l| FAILURES.iter().any(|f| l.contains(f)))
        {
            // The bootloader's own error before it gave up says why (ANSI codes cut).
            let why = lines[..at]
                .iter()
                .find_map(|l| l.find("error").map(|i| &l[i..]));
            let failure = lines[at].trim();
            return Err(match why {
                Some(why) => format!("{} / {failure}", why.trim()),
                None => failure.to_string(),
            });
        }
        if Instant::now() > deadline {
            let last = console
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            return Err(format!(
                "not ready after {} s; console's last line: {:?}",
                BOOT_PATIENCE.as_secs(),
                last.trim()
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
