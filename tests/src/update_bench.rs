//! `berth-vm bench-update`: an OS update on the test image's disk (SeaBIOS), against its
//! floor in the same guest.
//!
//! - Apply: `berth-updater apply` of a newer build's payload (an OCI layout on a
//!   read-only ISO disk): read and checked whole, the root written and read back, the
//!   kernel and initramfs on the ESP, offered. The floor: `dd` of the same root bytes
//!   (data and hash tree) from the same disk into the same partition, fsync'd. The page
//!   cache is dropped before each, so both read the ISO from the device.
//! - Downtime: from `berthctl reboot` (with one container running, stopped first) to
//!   the new version's `berth: ready`, through SeaBIOS and GRUB.
//! - The payload's size, as an `oci-archive` and as the layout's blobs.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::vm::{Firmware, Vm, VmConfig};

const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// One container, so the reboot stops something, as a real machine's does.
const USER_DATA: &str = "#cloud-config\nberth:\n  containers:\n    idle:\n      image: berth.local/busybox:latest\n      command: [\"sleep\", \"100000\"]\n";

pub struct Inputs<'a> {
    /// The test image's kernel (its directory holds `berth.raw`).
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub disk: &'a Path,
    /// A newer build's output directory: `update/` and `berth-update.tar`.
    pub newer: &'a Path,
}

pub fn run(i: &Inputs<'_>, json: Option<&Path>) -> Result<()> {
    let layout = i.newer.join("update");
    let (data, tree, data_bytes, version) = root_blobs(&layout)?;
    let work = crate::vm::work_dir("bench-update")?;
    let iso = work.join("payload.iso");
    let made = std::process::Command::new("genisoimage")
        .args(["-quiet", "-rock", "-volid", "BERTH-UPDATE", "-output"])
        .arg(&iso)
        .arg(&layout)
        .output()
        .context("genisoimage (make deps)")?;
    ensure!(
        made.status.success(),
        "genisoimage: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let ud = work.join("user-data");
    std::fs::write(&ud, USER_DATA)?;
    let mut cfg = VmConfig::new(i.kernel.to_path_buf(), i.initrd.to_path_buf());
    cfg.name = "bench-update".into();
    cfg.testd = true;
    cfg.memory_mib = 2048;
    cfg.firmware = Firmware::Bios;
    cfg.disk = Some(i.disk.to_path_buf());
    cfg.extra_args
        .extend(crate::volumes::drive_args(&iso, "payload"));
    cfg.extra_args.extend([
        "-fw_cfg".to_string(),
        format!("name=opt/berth/user-data,file={}", ud.display()),
    ]);
    let vm = Vm::boot(cfg)?;
    vm.wait_for_line("berth: ready", BOOT_TIMEOUT)?;
    let mut testd = vm.testd()?;
    let setup = "set -e; mkdir -p /run/payload; for d in /dev/vd?; do mount -t iso9660 -o ro $d /run/payload 2>/dev/null && break; done; ls /run/payload/index.json >/dev/null; \
        for u in /sys/class/block/*/uevent; do grep -qx PARTNAME=ROOT-B $u && echo /dev/$(sed -n 's/^DEVNAME=//p' $u); done; \
        for i in $(seq 300); do grep -q '\"state\": \"running\"' /run/berth/containers/status.json 2>/dev/null && exit 0; sleep 0.2; done; echo the container never ran >&2; exit 1";
    let out = testd.sh(setup)?;
    ensure!(out.success(), "setup: {}{}", out.stdout, out.stderr);
    let root_b = out.stdout.trim().to_string();
    ensure!(root_b.starts_with("/dev/"), "ROOT-B: {root_b:?}");
    // The floor: the same bytes, the same source, the same partition.
    let floor = format!(
        "set -e; sync; echo 3 > /proc/sys/vm/drop_caches; t0=$(cut -d' ' -f1 /proc/uptime); \
         dd if=/run/payload/blobs/sha256/{data} of={root_b} bs=1M conv=fsync 2>/dev/null; \
         dd if=/run/payload/blobs/sha256/{tree} of={root_b} bs=4096 seek={} conv=fsync 2>/dev/null; \
         t1=$(cut -d' ' -f1 /proc/uptime); echo $t0 $t1",
        data_bytes / 4096
    );
    let out = testd.run_with(&["sh", "-c", &floor], None, Duration::from_secs(1800))?;
    ensure!(out.success(), "floor: {}{}", out.stdout, out.stderr);
    let floor_s = crate::testd::uptime_span(&out.stdout, "floor timing")?;
    let apply = "set -e; sync; echo 3 > /proc/sys/vm/drop_caches; t0=$(cut -d' ' -f1 /proc/uptime); \
         berth-updater apply --from /run/payload >/dev/null; t1=$(cut -d' ' -f1 /proc/uptime); echo $t0 $t1";
    let out = testd.run_with(&["sh", "-c", apply], None, Duration::from_secs(1800))?;
    ensure!(out.success(), "apply: {}{}", out.stdout, out.stderr);
    let apply_s = crate::testd::uptime_span(&out.stdout, "apply timing")?;
    drop(testd);
    let readies = vm.console().matches("berth: ready").count();
    let asked = vm.elapsed_since_start();
    vm.berthctl(&["reboot"])?;
    let ready = vm.wait_for_line_count("berth: ready", readies + 1, BOOT_TIMEOUT)?;
    ensure!(
        ready.line.contains(&format!("berth {version} (slot b)")),
        "not the new version: {}",
        ready.line
    );
    let downtime_s = ready.at.saturating_sub(asked).as_secs_f64();
    let archive = std::fs::metadata(i.newer.join("berth-update.tar"))
        .map(|m| m.len())
        .unwrap_or(0);
    let blobs = dir_bytes(&layout.join("blobs/sha256"))?;
    println!("OS update, {} guest, SeaBIOS disk:", vm.accel.name());
    println!(
        "  apply (read and check, write, read back, ESP, offer): {apply_s:.2} s; floor (dd of the root, fsync): {floor_s:.2} s; apply/floor {:.2}x",
        apply_s / floor_s
    );
    println!(
        "  downtime (berthctl reboot, 1 container, to berth {version}'s ready): {downtime_s:.2} s"
    );
    println!(
        "  payload: {:.1} MB as an oci-archive, {:.1} MB of blobs",
        archive as f64 / 1e6,
        blobs as f64 / 1e6
    );
    if let Some(path) = json {
        let report = serde_json::json!({
            "accel": vm.accel.name(),
            "apply_seconds": apply_s,
            "floor_seconds": floor_s,
            "downtime_seconds": downtime_s,
            "archive_bytes": archive,
            "blob_bytes": blobs,
        });
        crate::bench_report::write(path, report)?;
    }
    Ok(())
}

/// The root's data and tree blob names, the data's size and the version, from the
/// layout's (signed) update manifest.
fn root_blobs(layout: &Path) -> Result<(String, String, u64, String)> {
    let read = |rel: &str| -> Result<serde_json::Value> {
        let path = layout.join(rel);
        serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("parsing {}", path.display()))
    };
    let blob = |digest: &serde_json::Value| -> Result<String> {
        let d = digest.as_str().context("a digest")?;
        Ok(d.strip_prefix("sha256:")
            .context("a sha256 digest")?
            .to_string())
    };
    let index = read("index.json")?;
    let oci = read(&format!(
        "blobs/sha256/{}",
        blob(&index["manifests"][0]["digest"])?
    ))?;
    let m = read(&format!("blobs/sha256/{}", blob(&oci["config"]["digest"])?))?;
    Ok((
        blob(&m["root"]["data"]["digest"])?,
        blob(&m["root"]["tree"]["digest"])?,
        m["root"]["data"]["bytes"]
            .as_u64()
            .context("root.data.bytes")?,
        m["version"].as_str().context("version")?.to_string(),
    ))
}

fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        total += e?.metadata()?.len();
    }
    Ok(total)
}
