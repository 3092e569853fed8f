//! The EFI system partition: a FAT32 file made with `mkfs.vfat` and filled with mtools
//! (no mount, no root), booting under UEFI through systemd-boot (Boot Loader Spec entry)
//! and under BIOS through syslinux (installed into the same FAT by its mtools-based
//! installer; the disk's MBR code is syslinux's gptmbr.bin, see disk.rs).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};

use crate::debs::run;

pub const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
/// FAT has no 1970: a fixed 2020-01-01 stands in for "no time" on every file we copy.
const FIXED_MTIME: u64 = 1_577_836_800;

/// What slot A boots.
pub struct BootEntry<'a> {
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    pub cmdline: &'a str,
}

/// Builds the ESP image at `out` (`size_mib` MiB; the FAT volume id derived from `seed`,
/// a digest of the inputs).
pub fn build(
    out: &Path,
    size_mib: u64,
    seed: &[u8; 32],
    entry: &BootEntry<'_>,
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
    put(
        "EFI/BOOT/BOOTX64.EFI",
        &read(Path::new(SYSTEMD_BOOT))
            .context("systemd-boot (make deps installs systemd-boot-efi)")?,
    )?;
    put(
        "loader/loader.conf",
        b"default berth-a.conf\ntimeout 0\nconsole-mode keep\n",
    )?;
    put(
        "loader/entries/berth-a.conf",
        format!(
            "title Berth (slot A)\nlinux /berth/a/vmlinuz\ninitrd /berth/a/initrd.img\noptions {}\n",
            entry.cmdline
        )
        .as_bytes(),
    )?;
    put(
        "syslinux/syslinux.cfg",
        format!(
            "DEFAULT berth-a\nPROMPT 0\nTIMEOUT 0\nLABEL berth-a\n  LINUX /berth/a/vmlinuz\n  INITRD /berth/a/initrd.img\n  APPEND {}\n",
            entry.cmdline
        )
        .as_bytes(),
    )?;
    put("berth/a/vmlinuz", &read(entry.vmlinuz)?)?;
    put("berth/a/initrd.img", &read(entry.initrd)?)?;

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
    run(Command::new("syslinux")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["--install", "--directory", "/syslinux"])
        .arg(out))
    .context("installing syslinux into the ESP (make deps installs syslinux)")?;
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
