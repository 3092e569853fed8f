//! Finding a volume by its filesystem label without blkid: the label read straight from
//! the superblock of ISO 9660 and FAT filesystems, the two that NoCloud and config
//! drives use. Then a read-only mount of it.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub device: PathBuf,
    pub fs: &'static str,
    pub label: String,
}

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("creating the mount point {path}: {source}")]
    MountPoint {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mounting {device} ({fs}) read-only on {path}: {errno}")]
    Mount {
        device: PathBuf,
        fs: &'static str,
        path: PathBuf,
        errno: nix::errno::Errno,
    },
}

/// ECMA-119 8.4: the primary volume descriptor is sector 16 (2048-byte sectors), type 1,
/// "CD001", with the 32-byte volume identifier at offset 40.
const ISO_PVD: u64 = 16 * 2048;

/// The filesystem and label of what `head` (the first bytes of a device) and the PVD
/// sector hold, if it is ISO 9660 or FAT.
pub fn probe(boot_sector: &[u8], iso_pvd: &[u8]) -> Option<(&'static str, String)> {
    if iso_pvd.len() >= 72 && iso_pvd[0] == 1 && &iso_pvd[1..6] == b"CD001" {
        return Some(("iso9660", trimmed(&iso_pvd[40..72])));
    }
    fat_label(boot_sector).map(|l| ("vfat", l))
}

/// The boot sector's volume label (Microsoft's FAT specification, "BPB"): FAT32 keeps
/// its extended boot record at 64, FAT12/16 at 36; a boot signature 0x29 says the label
/// field (11 bytes, 7 further on) is there. The sector ends in 55 AA.
fn fat_label(b: &[u8]) -> Option<String> {
    if b.len() < 512 || b[510..512] != [0x55, 0xaa] {
        return None;
    }
    let bytes_per_sector = u16::from_le_bytes([b[11], b[12]]);
    if !matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096) {
        return None;
    }
    let fat_size_16 = u16::from_le_bytes([b[22], b[23]]);
    let ebr = if fat_size_16 == 0 { 64 } else { 36 };
    (b[ebr + 2] == 0x29).then(|| trimmed(&b[ebr + 7..ebr + 18]))
}

fn trimmed(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches([' ', '\0'])
        .to_string()
}

/// Every block device whose ISO 9660 or FAT label is `label` (case-insensitively, as
/// FAT stores labels upper-case: `config-2` is `CONFIG-2` there).
pub fn with_label(sys_class_block: &Path, dev: &Path, label: &str) -> Vec<Volume> {
    let Ok(entries) = std::fs::read_dir(sys_class_block) else {
        return vec![];
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("loop") && !n.starts_with("ram"))
        .collect();
    names.sort();
    names
        .into_iter()
        .filter_map(|name| {
            let device = dev.join(&name);
            let (fs, found) = probe_device(&device)?;
            found.eq_ignore_ascii_case(label).then_some(Volume {
                device,
                fs,
                label: found,
            })
        })
        .collect()
}

fn probe_device(device: &Path) -> Option<(&'static str, String)> {
    let mut f = File::open(device).ok()?;
    let mut boot = vec![0u8; 512];
    f.read_exact(&mut boot).ok()?;
    let mut pvd = vec![0u8; 80];
    if f.read_exact_at(&mut pvd, ISO_PVD).is_err() {
        pvd.clear();
    }
    probe(&boot, &pvd)
}

/// A volume mounted read-only until dropped.
pub struct Mounted {
    pub path: PathBuf,
}

impl Volume {
    pub fn mount_read_only(&self, path: &Path) -> Result<Mounted, VolumeError> {
        std::fs::create_dir_all(path).map_err(|source| VolumeError::MountPoint {
            path: path.to_path_buf(),
            source,
        })?;
        mount(
            Some(&self.device),
            path,
            Some(self.fs),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(|errno| VolumeError::Mount {
            device: self.device.clone(),
            fs: self.fs,
            path: path.to_path_buf(),
            errno,
        })?;
        Ok(Mounted {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = umount2(&self.path, MntFlags::MNT_DETACH) {
            eprintln!("berth-agent: unmounting {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_of_iso_and_fat() {
        let mut pvd = vec![0u8; 80];
        pvd[0] = 1;
        pvd[1..6].copy_from_slice(b"CD001");
        pvd[40..72].copy_from_slice(format!("{:<32}", "config-2").as_bytes());
        assert_eq!(probe(&[], &pvd), Some(("iso9660", "config-2".into())));

        let mut fat32 = vec![0u8; 512];
        fat32[11..13].copy_from_slice(&512u16.to_le_bytes());
        fat32[66] = 0x29;
        fat32[71..82].copy_from_slice(b"CONFIG-2   ");
        fat32[510..512].copy_from_slice(&[0x55, 0xaa]);
        assert_eq!(probe(&fat32, &[]), Some(("vfat", "CONFIG-2".into())));

        let mut fat16 = fat32.clone();
        fat16[22] = 32; // a FAT16 size: the label sits at 43
        fat16[38] = 0x29;
        fat16[43..54].copy_from_slice(b"CIDATA     ");
        assert_eq!(probe(&fat16, &[]), Some(("vfat", "CIDATA".into())));

        let mut unsigned = fat32.clone();
        unsigned[510] = 0;
        assert_eq!(probe(&unsigned, &[0u8; 80]), None);
    }

    #[test]
    fn devices_found_by_label() {
        let t = tempfile::tempdir().unwrap();
        let (sys, dev) = (t.path().join("sys"), t.path().join("dev"));
        std::fs::create_dir_all(&sys).unwrap();
        std::fs::create_dir_all(&dev).unwrap();
        let mut image = vec![0u8; 40 * 1024];
        let pvd = usize::try_from(ISO_PVD).unwrap();
        image[pvd] = 1;
        image[pvd + 1..pvd + 6].copy_from_slice(b"CD001");
        image[pvd + 40..pvd + 48].copy_from_slice(b"config-2");
        for (name, data) in [("vdb", image), ("vda", vec![0u8; 40 * 1024])] {
            std::fs::create_dir(sys.join(name)).unwrap();
            std::fs::write(dev.join(name), data).unwrap();
        }
        let found = with_label(&sys, &dev, "CONFIG-2");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].device, dev.join("vdb"));
        assert!(with_label(&sys, &dev, "cidata").is_empty());
    }
}
