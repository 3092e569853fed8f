//! The EFI system partition: a FAT32 file made with `mkfs.vfat` and filled with mtools
//! (no mount, no root). Both firmware paths boot GRUB (see `grub`): under UEFI through
//! Debian's signed shim and GRUB in `EFI/BOOT/`, under BIOS from the core image in the
//! BIOS boot partition. Both run `EFI/debian/grub.cfg`, which picks the slot from the
//! environment block `berth/grubenv` and boots `berth/<slot>/` (its kernel, initramfs
//! and `boot.cfg`, the command line with that slot's root hash).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use berth_bootslot::{envblock, grub as script, BootState, EnvBlock};

use crate::debs::run;
use crate::grub::{Grub, CONFIG_DIR};

/// FAT has no 1970: a fixed 2020-01-01 stands in for "no time" on every file we copy.
const FIXED_MTIME: u64 = 1_577_836_800;

/// What slot A boots.
pub struct BootEntry<'a> {
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    pub cmdline: &'a str,
    /// Its `slot.json`: version, build and root hash (none for the boot floor).
    pub info: Option<&'a berth_bootslot::SlotInfo>,
}

/// Builds the ESP image at `out` (`size_mib` MiB; the FAT volume id derived from `seed`,
/// a digest of the inputs).
pub fn build(
    out: &Path,
    size_mib: u64,
    seed: &[u8; 32],
    entry: &BootEntry<'_>,
    grub: &Grub,
    staging: &Path,
) -> Result<()> {
    let tree = staging.join("esp");
    if tree.exists() {
        std::fs::remove_dir_all(&tree)?;
    }
    let put = |rel: &str, data: &[u8]| -> Result<()> {
        let p = tree.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, data).with_context(|| format!("writing {}", p.display()))?;
        let f = std::fs::File::options().write(true).open(&p)?;
        f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(FIXED_MTIME))?;
        Ok(())
    };
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    put("EFI/BOOT/BOOTX64.EFI", &read(&grub.shim)?)?;
    put("EFI/BOOT/grubx64.efi", &read(&grub.efi_grub)?)?;
    put(
        &format!("{CONFIG_DIR}/grub.cfg"),
        script::config().as_bytes(),
    )?;
    // A new disk: slot A by default, nothing on trial.
    let mut env = EnvBlock::default();
    BootState::default().store(&mut env)?;
    put(
        &format!("{}/{}", script::DIR, script::ENV_FILE),
        &env.to_bytes(envblock::SIZE)?,
    )?;
    let slot = format!("{}/a", script::DIR);
    let boot_cfg = script::slot_config(entry.cmdline)
        .with_context(|| format!("a command line GRUB cannot quote: {:?}", entry.cmdline))?;
    put(
        &format!("{slot}/{}", script::SLOT_CONFIG),
        boot_cfg.as_bytes(),
    )?;
    if let Some(info) = entry.info {
        put(
            &format!("{slot}/{}", berth_bootslot::slotinfo::FILE),
            &info.to_bytes()?,
        )?;
    }
    put(&format!("{slot}/vmlinuz"), &read(entry.vmlinuz)?)?;
    put(&format!("{slot}/initrd.img"), &read(entry.initrd)?)?;

    let id = crate::digest(&[seed, b"esp-volume-id"]);
    let volume_id = u32::from_be_bytes([id[0], id[1], id[2], id[3]]);
    let _ = std::fs::remove_file(out);
    run(Command::new("mkfs.vfat")
        .args([
            "-C",
            "--invariant",
            "-F",
            "32",
            "-s",
            "1",
            "-n",
            "EFI-SYSTEM",
        ])
        .arg("-i")
        .arg(format!("{volume_id:08X}"))
        .arg(out)
        .arg((size_mib * 1024).to_string()))
    .context("making the ESP's FAT32 (make deps installs dosfstools)")?;
    let mut copy = Command::new("mcopy");
    copy.env("MTOOLS_SKIP_CHECK", "1")
        .args(["-s", "-m", "-i"])
        .arg(out);
    for entry in sorted_entries(&tree)? {
        copy.arg(entry);
    }
    copy.arg("::/");
    run(&mut copy).context("copying the ESP's files with mcopy (make deps installs mtools)")?;
    Ok(())
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .collect();
    v.sort();
    Ok(v)
}
