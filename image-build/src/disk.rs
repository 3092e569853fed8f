//! The shipped disk: a GPT image with EFI-SYSTEM, ROOT-A and ROOT-B (DATA is made on
//! first boot), partition table written by `sgdisk` on the image file, partition contents
//! copied in at their offsets; GRUB's boot sector in the protective MBR and its core
//! image in a small BIOS boot partition in the gap before the first 1 MiB-aligned one
//! (see `grub`). Then the same disk as qcow2 and as GCE's import tarball.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::debs::run;
use crate::rootfs::uuid_from;

const MIB: u64 = 1024 * 1024;
pub const ESP_MIB: u64 = 64;
/// Each root slot; the erofs image plus its hash tree must fit, with room for growth.
pub const ROOT_SLOT_MIB: u64 = 256;
/// Partition type GUIDs (UEFI spec; systemd's Discoverable Partitions Specification for
/// the x86-64 root).
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const ROOT_X86_64_TYPE: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
/// The BIOS boot partition (GRUB's core image): its GPT type ("Hah!IdontNeedEFI"), and
/// where it sits, in the sectors between the GPT's entries (LBA 2-33) and the first
/// 1 MiB-aligned partition.
const BIOS_BOOT_TYPE: &str = "21686148-6449-6E6F-744E-656564454649";
pub const BIOS_BOOT_FIRST_LBA: u64 = 40;
const BIOS_BOOT_NUMBER: usize = 5;
const BIOS_BOOT_LAST_LBA: u64 = MIB / 512 - 1;

/// GRUB for BIOS: its boot sector and core image (`grub::Grub`).
pub struct BiosBoot {
    pub boot_img: Vec<u8>,
    pub core: Vec<u8>,
}

pub struct Partition<'a> {
    pub label: &'a str,
    pub type_guid: &'a str,
    pub size_mib: u64,
    pub content: Option<&'a Path>,
}

/// Where a partition landed, for the manifest (and tests that corrupt one on purpose).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Placed {
    pub label: String,
    pub offset: u64,
    pub bytes: u64,
}

/// Writes `out`: 1 MiB for the protective MBR and primary GPT, the partitions 1 MiB
/// aligned, 1 MiB at the end for the backup GPT.
pub fn assemble(
    out: &Path,
    seed: &[u8; 32],
    parts: &[Partition<'_>],
    bios: &BiosBoot,
) -> Result<Vec<Placed>> {
    let total_mib = 2 + parts.iter().map(|p| p.size_mib).sum::<u64>();
    let _ = std::fs::remove_file(out);
    let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    file.set_len(total_mib * MIB)?;
    drop(file);
    let mut sgdisk = Command::new("sgdisk");
    sgdisk
        .arg("--clear")
        .arg(format!("--disk-guid={}", uuid_from(seed, b"disk-guid")));
    let mut start = MIB;
    for (i, p) in parts.iter().enumerate() {
        let n = i + 1;
        let first = start / 512;
        let last = (start + p.size_mib * MIB) / 512 - 1;
        sgdisk
            .arg(format!("--new={n}:{first}:{last}"))
            .arg(format!("--typecode={n}:{}", p.type_guid))
            .arg(format!("--change-name={n}:{}", p.label))
            .arg(format!(
                "--partition-guid={n}:{}",
                uuid_from(seed, p.label.as_bytes())
            ));
        start += p.size_mib * MIB;
    }
    // Number 5, after DATA's 4 (made on first boot, in the first free entry): the
    // partitions operators know keep their numbers.
    let bios_n = BIOS_BOOT_NUMBER;
    sgdisk
        .arg("--set-alignment=1")
        .arg(format!(
            "--new={bios_n}:{BIOS_BOOT_FIRST_LBA}:{BIOS_BOOT_LAST_LBA}"
        ))
        .arg(format!("--typecode={bios_n}:{BIOS_BOOT_TYPE}"))
        .arg(format!("--change-name={bios_n}:BIOS-BOOT"))
        .arg(format!(
            "--partition-guid={bios_n}:{}",
            uuid_from(seed, b"BIOS-BOOT")
        ));
    run(sgdisk.arg(out)).context("writing the partition table (make deps installs gdisk)")?;
    let mut disk = File::options().read(true).write(true).open(out)?;
    let mut start = MIB;
    let mut placed = Vec::new();
    for p in parts {
        if let Some(content) = p.content {
            copy_at(&mut disk, content, start, p.size_mib * MIB)
                .with_context(|| format!("writing partition {}", p.label))?;
        }
        placed.push(Placed {
            label: p.label.to_string(),
            offset: start,
            bytes: p.size_mib * MIB,
        });
        start += p.size_mib * MIB;
    }
    let mut mbr = [0u8; 512];
    disk.seek(SeekFrom::Start(0))?;
    disk.read_exact(&mut mbr)?;
    let room = BIOS_BOOT_LAST_LBA - BIOS_BOOT_FIRST_LBA + 1;
    let (first, core) =
        crate::grub::install_bios(&bios.boot_img, &mbr, &bios.core, BIOS_BOOT_FIRST_LBA, room)?;
    disk.seek(SeekFrom::Start(0))?;
    disk.write_all(&first)?;
    disk.seek(SeekFrom::Start(BIOS_BOOT_FIRST_LBA * 512))?;
    disk.write_all(&core)?;
    disk.sync_all()?;
    Ok(placed)
}

pub fn esp_partition(content: &Path) -> Partition<'_> {
    Partition {
        label: "EFI-SYSTEM",
        type_guid: ESP_TYPE,
        size_mib: ESP_MIB,
        content: Some(content),
    }
}

pub fn root_partition<'a>(label: &'a str, content: Option<&'a Path>) -> Partition<'a> {
    Partition {
        label,
        type_guid: ROOT_X86_64_TYPE,
        size_mib: ROOT_SLOT_MIB,
        content,
    }
}

/// Copies `src` into `disk` at `offset`, refusing to spill past `room` bytes. Runs of
/// zeros are skipped (seek), so the image stays sparse.
fn copy_at(disk: &mut File, src: &Path, offset: u64, room: u64) -> Result<()> {
    let len = std::fs::metadata(src)?.len();
    if len > room {
        bail!(
            "{} is {len} bytes; the partition holds {room}",
            src.display()
        );
    }
    let mut input = File::open(src)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = offset;
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        if chunk.iter().any(|b| *b != 0) {
            disk.seek(SeekFrom::Start(pos))?;
            disk.write_all(chunk)?;
        }
        pos += n as u64;
    }
    Ok(())
}

/// `qemu-img convert` to a compressed qcow2.
pub fn to_qcow2(raw: &Path, out: &Path) -> Result<()> {
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-c", "-f", "raw", "-O", "qcow2"])
        .arg(raw)
        .arg(out))
    .context("converting to qcow2 (make deps installs qemu-utils)")?;
    Ok(())
}

/// GCE's import format: the raw disk padded to a whole number of GiB, named disk.raw,
/// in a sparse oldgnu tar, gzip'd. Fixed owner and time for reproducibility.
pub fn to_gce_tarball(raw: &Path, staging: &Path, out: &Path) -> Result<()> {
    const GIB: u64 = 1024 * MIB;
    let dir = staging.join("gce");
    std::fs::create_dir_all(&dir)?;
    let disk = dir.join("disk.raw");
    let _ = std::fs::remove_file(&disk);
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(raw)
        .arg(&disk))?;
    let len = std::fs::metadata(&disk)?.len();
    File::options()
        .write(true)
        .open(&disk)?
        .set_len(len.div_ceil(GIB) * GIB)?;
    let tar = std::fs::canonicalize(staging)?.join("gce.tar");
    run(Command::new("tar")
        .args([
            "--format=oldgnu",
            "-S",
            "--mtime=@0",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-cf",
        ])
        .arg(&tar)
        .arg("-C")
        .arg(&dir)
        .arg("disk.raw"))
    .context("writing the GCE tarball")?;
    run(Command::new("gzip").args(["-n", "-f", "-6"]).arg(&tar))?;
    std::fs::rename(tar.with_extension("tar.gz"), out)?;
    Ok(())
}
