//! GRUB for both firmware paths, from Debian's packages (fetched and unpacked into the
//! cache, never installed on the build host):
//!
//! - UEFI: Debian's Microsoft-signed shim (`shim-signed`) as `EFI/BOOT/BOOTX64.EFI`, and
//!   Debian's signed GRUB (`grub-efi-amd64-signed`) beside it as `grubx64.efi`, which is
//!   where shim looks. That GRUB's built-in prefix is `/EFI/debian`: the ESP's
//!   `EFI/debian/grub.cfg` is its configuration.
//! - BIOS: Debian's i386-pc GRUB (`grub-pc-bin`). `grub-mkimage` (from `grub-common`)
//!   makes a core image whose prefix is the same `EFI/debian` directory on the ESP, so
//!   both paths run one grub.cfg. The core image goes into a BIOS boot partition and
//!   GRUB's `boot.img` into the MBR, patched to find it (`install_bios`).
//!
//! The boot itself (which slot, its tries) is the script `berth_bootslot::grub::config`
//! writes.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::debs;

/// Where Debian's signed GRUB looks for grub.cfg, on the device it booted from.
pub const CONFIG_DIR: &str = "EFI/debian";

/// The GRUB modules the BIOS core image needs to read the ESP, load the environment
/// block, run the script and boot Linux. (The signed UEFI image is monolithic: Debian
/// built these, and more, into it.)
const BIOS_MODULES: &[&str] = &[
    "biosdisk",
    "part_gpt",
    "fat",
    "normal",
    "configfile",
    "loadenv",
    "test",
    "echo",
    "linux",
    "boot",
];

/// GRUB's files, unpacked from Debian's packages.
pub struct Grub {
    /// `usr/lib/grub/i386-pc`: boot.img and the BIOS modules.
    pc_dir: PathBuf,
    mkimage: PathBuf,
    pub shim: PathBuf,
    pub efi_grub: PathBuf,
}

impl Grub {
    pub fn fetch(cache: &Path) -> Result<Grub> {
        let unpack = |name: &str| debs::fetch_unpacked(&debs::resolve(name)?, cache);
        let pc = unpack("grub-pc-bin")?;
        let common = unpack("grub-common")?;
        let shim = unpack("shim-signed")?;
        let signed = unpack("grub-efi-amd64-signed")?;
        let grub = Grub {
            pc_dir: pc.join("usr/lib/grub/i386-pc"),
            mkimage: common.join("usr/bin/grub-mkimage"),
            shim: shim.join("usr/lib/shim/shimx64.efi.signed"),
            efi_grub: signed.join("usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed"),
        };
        for p in [
            &grub.pc_dir.join("boot.img"),
            &grub.mkimage,
            &grub.shim,
            &grub.efi_grub,
        ] {
            anyhow::ensure!(p.exists(), "{} is missing from its package", p.display());
        }
        Ok(grub)
    }

    /// The BIOS core image: GRUB's kernel and `BIOS_MODULES`, its prefix the ESP's
    /// `CONFIG_DIR` (the ESP is partition 1 of the boot disk).
    pub fn bios_core(&self, staging: &Path) -> Result<Vec<u8>> {
        let out = staging.join("core.img");
        let mut cmd = Command::new(&self.mkimage);
        cmd.arg("-d")
            .arg(&self.pc_dir)
            .args(["-O", "i386-pc", "-p"])
            .arg(format!("(hd0,gpt1)/{CONFIG_DIR}"))
            .arg("-o")
            .arg(&out)
            .args(BIOS_MODULES);
        debs::run(&mut cmd).context("making GRUB's BIOS core image with grub-mkimage")?;
        std::fs::read(&out).with_context(|| format!("reading {}", out.display()))
    }

    pub fn boot_img(&self) -> Result<Vec<u8>> {
        let p = self.pc_dir.join("boot.img");
        let img = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        if img.len() != SECTOR {
            bail!("{} is {} bytes, not one sector", p.display(), img.len());
        }
        Ok(img)
    }
}

const SECTOR: usize = 512;

// GRUB's i386-pc boot sector and core image (include/grub/i386/pc/boot.h, and the
// blocklist at the end of diskboot.S, the core image's first sector): facts of the
// format, as grub-bios-setup writes them.
/// boot.img: the LBA of the core image's first sector (8 bytes).
const KERNEL_SECTOR: usize = 0x5c;
/// boot.img: the BIOS drive to read, 0xff for "the one in DL" (the boot drive).
const BOOT_DRIVE: usize = 0x64;
/// boot.img: a 2-byte jump that forces drive 0x80 on some BIOSes; grub-bios-setup
/// replaces it with two NOPs for a hard disk.
const DRIVE_CHECK: usize = 0x66;
/// boot.img: where the MBR's disk signature and partition table start, kept as is.
const MBR_TABLE: usize = 0x1b8;
/// diskboot: the blocklist of the rest of the core image: start LBA (8 bytes), sectors
/// (2), load segment (2), in the last 12 bytes of its sector.
const BLOCKLIST: usize = SECTOR - 12;
/// The segment diskboot loads the rest of the core image to (0x800 + one sector).
const CORE_SEGMENT: u16 = 0x820;

/// The MBR's boot code and the core image, ready to write: `mbr` is the disk's current
/// first sector (its partition table is kept), `core_lba` where the core image goes.
/// Returns (new first sector, core image padded to whole sectors).
pub fn install_bios(
    boot_img: &[u8],
    mbr: &[u8; SECTOR],
    core: &[u8],
    core_lba: u64,
    room_sectors: u64,
) -> Result<([u8; SECTOR], Vec<u8>)> {
    let sectors = core.len().div_ceil(SECTOR);
    if sectors < 2 || sectors as u64 > room_sectors {
        bail!(
            "GRUB's core image is {sectors} sectors; the BIOS boot partition holds {room_sectors}"
        );
    }
    let mut core = core.to_vec();
    core.resize(sectors * SECTOR, 0);
    let rest = u16::try_from(sectors - 1).context("core image too long for one blocklist")?;
    core[BLOCKLIST..BLOCKLIST + 8].copy_from_slice(&(core_lba + 1).to_le_bytes());
    core[BLOCKLIST + 8..BLOCKLIST + 10].copy_from_slice(&rest.to_le_bytes());
    core[BLOCKLIST + 10..BLOCKLIST + 12].copy_from_slice(&CORE_SEGMENT.to_le_bytes());

    let mut first = [0u8; SECTOR];
    first.copy_from_slice(boot_img);
    first[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&core_lba.to_le_bytes());
    first[BOOT_DRIVE] = 0xff;
    first[DRIVE_CHECK] = 0x90;
    first[DRIVE_CHECK + 1] = 0x90;
    first[MBR_TABLE..].copy_from_slice(&mbr[MBR_TABLE..]);
    Ok((first, core))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_sector_points_at_the_core_and_keeps_the_table() {
        let boot = [0xaau8; SECTOR];
        let mut mbr = [0u8; SECTOR];
        mbr[0x1be] = 0x00;
        mbr[0x1c2] = 0xee; // the protective partition
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        let core = vec![7u8; 3 * SECTOR + 100];
        let (first, padded) = install_bios(&boot, &mbr, &core, 40, 2008).unwrap();
        assert_eq!(
            u64::from_le_bytes(first[0x5c..0x64].try_into().unwrap()),
            40
        );
        assert_eq!(first[0x64], 0xff);
        assert_eq!(&first[0x66..0x68], &[0x90, 0x90]);
        assert_eq!(&first[0x1b8..], &mbr[0x1b8..]);
        assert_eq!(first[0], 0xaa);
        assert_eq!(padded.len(), 4 * SECTOR);
        let bl = &padded[SECTOR - 12..SECTOR];
        assert_eq!(u64::from_le_bytes(bl[..8].try_into().unwrap()), 41);
        assert_eq!(u16::from_le_bytes(bl[8..10].try_into().unwrap()), 3);
        assert_eq!(u16::from_le_bytes(bl[10..].try_into().unwrap()), 0x820);
        assert!(install_bios(&boot, &mbr, &core, 40, 3).is_err());
    }
}
