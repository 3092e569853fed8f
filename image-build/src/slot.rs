//! `image-build write-slot`: puts a built image into the other slot of a disk image,
//! offline (the machine off), and offers it for a trial boot. A developer's and the
//! tests' way to get a second version onto a disk; a running machine updates itself.
//!
//! The slot's root goes into its partition first, then its kernel, initramfs, command
//! line and `slot.json` onto the ESP, and the environment block changes last: until
//! then GRUB boots exactly what it booted before.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use berth_bootslot::{envblock, grub as script, slotinfo, BootState, EnvBlock, Slot, SlotInfo};

use crate::debs::run;

/// What to write and how to offer it.
pub struct Request<'a> {
    /// The disk image to change (raw).
    pub disk: &'a Path,
    /// A build's output directory: vmlinuz, initrd-stage1.img, manifest.json, .build/root.img.
    pub from: &'a Path,
    pub slot: Slot,
    /// The version `slot.json` records (default: the build's).
    pub version: Option<&'a str>,
    /// Appended to the slot's command line.
    pub append: &'a str,
    pub tries: u8,
}

pub fn write(req: &Request<'_>) -> Result<()> {
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(req.from.join("manifest.json"))
            .with_context(|| format!("reading {}/manifest.json", req.from.display()))?,
    )?;
    let root = &manifest["disk"]["root"];
    let field = |name: &str| -> Result<String> {
        match &root[name] {
            serde_json::Value::String(s) => Ok(s.clone()),
            serde_json::Value::Number(n) => Ok(n.to_string()),
            _ => bail!("manifest.json has no disk.root.{name}"),
        }
    };
    let root_hash = field("root_hash")?;
    let info = SlotInfo {
        version: req
            .version
            .map(str::to_string)
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string()),
        build_id: manifest["disk"]["build_id"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| root_hash[..16.min(root_hash.len())].to_string()),
        root_hash: root_hash.clone(),
    };
    let label = req.slot.partlabel();
    let cmdline = script::slot_cmdline(
        crate::BASE_CMDLINE,
        req.slot,
        &root_hash,
        &field("salt")?,
        field("data_blocks")?.parse()?,
        req.append,
    );
    let boot_cfg = script::slot_config(&cmdline)
        .with_context(|| format!("a command line GRUB cannot quote: {cmdline:?}"))?;

    let parts = partitions(req.disk)?;
    let esp = parts
        .iter()
        .find(|p| p.0 == "EFI-SYSTEM")
        .context("the disk has no EFI-SYSTEM partition")?;
    let target = parts
        .iter()
        .find(|p| p.0 == label)
        .with_context(|| format!("the disk has no {label} partition"))?;
    let esp_at = format!("{}@@{}", req.disk.display(), esp.1);

    // The state first: a slot that is the default (booted) is never overwritten.
    let env_path = format!("::/{}/{}", script::DIR, script::ENV_FILE);
    let mut env = EnvBlock::parse(&mtools(&esp_at, "mtype", &[&env_path])?)?;
    let mut state = BootState::from_env(&env)?;
    state.offer(req.slot, req.tries)?;

    copy_into(
        req.disk,
        &req.from.join(".build/root.img"),
        target.1,
        target.2,
    )
    .with_context(|| format!("writing {label}"))?;
    let staging = tempfile::tempdir()?;
    let dir = format!("::/{}/{}", script::DIR, req.slot.name());
    let _ = mtools(&esp_at, "mmd", &[&dir]);
    for (name, bytes) in [
        ("vmlinuz", std::fs::read(req.from.join("vmlinuz"))?),
        (
            "initrd.img",
            std::fs::read(req.from.join(crate::DISK_INITRD))?,
        ),
        (script::SLOT_CONFIG, boot_cfg.into_bytes()),
        (slotinfo::FILE, info.to_bytes()?),
    ] {
        let local = staging.path().join(name);
        std::fs::write(&local, bytes)?;
        let local = local.to_string_lossy().into_owned();
        mtools(&esp_at, "mcopy", &["-o", &local, &format!("{dir}/{name}")])?;
    }
    state.store(&mut env)?;
    let local = staging.path().join(script::ENV_FILE);
    std::fs::write(&local, env.to_bytes(envblock::SIZE)?)?;
    mtools(
        &esp_at,
        "mcopy",
        &["-o", &local.to_string_lossy(), &env_path],
    )?;
    eprintln!(
        "image-build: {} {} written into slot {} of {}, on trial with {} tries",
        info.version,
        info.build_id,
        req.slot.name(),
        req.disk.display(),
        req.tries
    );
    Ok(())
}

/// Runs an mtools command on the image `at` (`disk@@offset`); its stdout.
fn mtools(at: &str, tool: &str, args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new(tool)
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-i", at])
        .args(args)
        .output()
        .with_context(|| format!("running {tool} (make deps installs mtools)"))?;
    if !out.status.success() {
        bail!(
            "{tool} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// (name, byte offset, bytes) of each partition, from `sgdisk`'s listing.
fn partitions(disk: &Path) -> Result<Vec<(String, u64, u64)>> {
    let text = run(Command::new("sgdisk").arg("--print").arg(disk))?;
    let mut parts = Vec::new();
    // "   2         133120         657407   256.0 MiB   8304  ROOT-A"
    for line in text.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 7 || cols[0].parse::<u32>().is_err() {
            continue;
        }
        let (Ok(first), Ok(last)) = (cols[1].parse::<u64>(), cols[2].parse::<u64>()) else {
            continue;
        };
        parts.push((cols[6..].join(" "), first * 512, (last + 1 - first) * 512));
    }
    Ok(parts)
}

/// Writes `src` at `offset`, within `room` bytes, and syncs. Every byte, zeros too:
/// unlike `disk::copy_at`, which fills a new sparse image and skips runs of zeros, this
/// overwrites a slot that held another version, whose bytes must not show through.
fn copy_into(disk: &Path, src: &Path, offset: u64, room: u64) -> Result<()> {
    let len = std::fs::metadata(src)
        .with_context(|| format!("reading {}", src.display()))?
        .len();
    if len > room {
        bail!(
            "{} is {len} bytes; the partition holds {room}",
            src.display()
        );
    }
    let mut input = File::open(src)?;
    let mut out = File::options().write(true).open(disk)?;
    out.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])?;
    }
    out.sync_all()?;
    Ok(())
}
