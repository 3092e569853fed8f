//! `berth-vm bench-demo`: the demo machine (`make run`'s user-data on the production
//! disk, through OVMF) at shrinking memory sizes, and what Berth's own processes hold on
//! it.
//!
//! - The smallest machine: 256 MiB first (the size Berth promises), then smaller steps
//!   until one does not serve the demo's page; the smallest that served is reported.
//!   Every size is a first boot of a fresh 4 GiB disk (DATA made then), the boot that
//!   needs the most.
//! - Memory: on the 256 MiB machine, idle after its page was served, `berthctl memory`
//!   lists init and every service's processes with RSS and PSS.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::vm::{Firmware, Vm, VmConfig};

/// The first is the goal; the rest look for the floor below it.
const SIZES_MIB: [u32; 5] = [256, 192, 160, 128, 112];
const BOOT_PATIENCE: Duration = Duration::from_secs(150);
const PAGE_PATIENCE: Duration = Duration::from_secs(90);
/// After the page: the agent done, the daemon settled.
const IDLE_SETTLE: Duration = Duration::from_secs(10);

pub struct Inputs<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    /// The production image's raw disk.
    pub disk: &'a Path,
    pub user_data: &'a Path,
}

/// How one size went.
struct Outcome {
    mib: u32,
    served: Served,
}

pub fn run(i: &Inputs<'_>, json: Option<&Path>) -> Result<()> {
    let mut outcomes = Vec::new();
    let mut memory = None;
    for mib in SIZES_MIB {
        eprintln!("berth-vm: the demo in {mib} MiB");
        let (served, rows) = boot_demo(i, mib, memory.is_none())?;
        if let Some(rows) = rows {
            memory = Some(rows);
        }
        let failed = served.is_err();
        outcomes.push(Outcome { mib, served });
        if failed {
            break;
        }
    }
    let smallest = outcomes
        .iter()
        .filter(|o| o.served.is_ok())
        .map(|o| o.mib)
        .min();
    println!("the demo (make run's user-data, production disk through OVMF, first boot):");
    for o in &outcomes {
        match &o.served {
            Ok(s) => println!(
                "  {:>4} MiB: page served {s:.2} s after QEMU started",
                o.mib
            ),
            Err(e) => println!("  {:>4} MiB: no page: {e}", o.mib),
        }
    }
    match smallest {
        Some(m) => println!("  smallest machine that served it: {m} MiB"),
        None => println!("  no size served it"),
    }
    let rows = memory.unwrap_or_default();
    let rss: u64 = rows.iter().map(|r| r.rss_kb).sum();
    let pss: u64 = rows.iter().map(|r| r.pss_kb).sum();
    println!(
        "Berth's own processes, idle on the {} MiB demo machine (berthctl memory):",
        SIZES_MIB[0]
    );
    for r in &rows {
        println!(
            "  {:<20} {:<16} {:>7} KB RSS {:>7} KB PSS",
            r.service, r.command, r.rss_kb, r.pss_kb
        );
    }
    println!(
        "  total, {} processes: {rss} KB RSS ({:.1} MB), {pss} KB PSS ({:.1} MB)",
        rows.len(),
        rss as f64 / 1000.0,
        pss as f64 / 1000.0
    );
    if let Some(path) = json {
        let doc = serde_json::json!({
            "sizes": outcomes.iter().map(|o| serde_json::json!({
                "mib": o.mib,
                "served_seconds": o.served.as_ref().ok(),
                "error": o.served.as_ref().err(),
            })).collect::<Vec<_>>(),
            "smallest_mib": smallest,
            "processes": rows,
            "rss_kb_total": rss,
            "pss_kb_total": pss,
        });
        crate::bench_report::write(path, doc)?;
    }
    Ok(())
}

/// Seconds from QEMU's start to the page, or why it did not come.
type Served = Result<f64, String>;

/// One first boot at `mib`: whether the page came, and (when asked) the memory rows.
fn boot_demo(
    i: &Inputs<'_>,
    mib: u32,
    want_memory: bool,
) -> Result<(Served, Option<Vec<berth_control::ProcessMemory>>)> {
    let dir = crate::vm::work_dir(&format!("bench-demo-{mib}"))?;
    let disk = dir.join("disk.qcow2");
    crate::vm::create_overlay(i.disk, &disk, Some("4G"))?;
    let port = crate::http::free_port();
    let mut cfg = VmConfig::new(i.kernel.to_path_buf(), i.initrd.to_path_buf());
    cfg.name = format!("bench-demo-{mib}");
    cfg.memory_mib = mib;
    cfg.firmware = Firmware::Uefi;
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
    if let Err(e) = vm.wait_for_line("berth: ready", BOOT_PATIENCE) {
        return Ok((Err(format!("not ready: {}", last_words(&vm, &e))), None));
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

/// The error, and the console's last line (an OOM kill or a panic says itself there).
fn last_words(vm: &Vm, e: &anyhow::Error) -> String {
    let console = vm.console();
    let last = console
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    let short: String = format!("{e:#}").chars().take(120).collect();
    format!("{short}; console's last line: {last:?}")
}
