//! /var on the DATA partition. First boot (as Bottlerocket and Flatcar do it): move the
//! GPT's backup header to the disk's real end (clouds hand out disks larger than the
//! image), add DATA over the free space and tell the kernel with BLKPG (the root is
//! open, so a whole-table reread fails), randomise the disk GUID, `mkfs.btrfs -K`, create
//! the subvolumes. Every boot: grow DATA and the filesystem if the disk grew, mount /var.
//!
//! Never destructive: an existing DATA partition is only grown, mkfs runs only on a
//! partition with no btrfs on it, and mkfs.btrfs itself refuses to overwrite another
//! filesystem's signature (we never pass -f).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use gptman::{GPTPartitionEntry, GPT};
use nix::mount::{mount, MsFlags};

use crate::stage1::root;
use crate::sys::{blkpg, btrfs};
use crate::{info, warn};

pub const DATA_LABEL: &str = "DATA";
pub const VAR: &str = "/var";
/// Subvolumes under /var: what the runtime and logs keep, each snapshot-able alone.
pub const SUBVOLUMES: &[&str] = &["lib/berth/containers", "lib/berth/volumes", "log"];
pub const MKFS_BTRFS: &str = "/usr/sbin/mkfs.btrfs";
/// 0FC63DAF-8483-4772-8E79-3D69D8477DE4 (Linux filesystem data) as GPT stores it: the
/// first three fields little-endian.
const LINUX_DATA_TYPE: [u8; 16] = [
    0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d, 0xe4,
];
/// Partitions start on 1 MiB boundaries.
const ALIGN_BYTES: u64 = 1024 * 1024;
/// "_BHRfS_M" at 64 KiB + 0x40: the btrfs superblock's magic.
const BTRFS_MAGIC_OFFSET: u64 = 0x10040;
const BTRFS_MAGIC: &[u8; 8] = b"_BHRfS_M";

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("finding the boot disk: {0}")]
    Disk(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the partition table of {path}: {source}")]
    Gpt {
        path: PathBuf,
        source: gptman::Error,
    },
    #[error("{0}")]
    Layout(String),
    #[error("telling the kernel about DATA (partition {number} of {disk}): {errno}")]
    Blkpg {
        disk: String,
        number: u32,
        errno: nix::errno::Errno,
    },
    #[error("DATA (partition {0}) did not appear in /dev")]
    NoNode(u32),
    #[error("mkfs.btrfs on {dev}: {reason}")]
    Mkfs { dev: PathBuf, reason: String },
    #[error("mounting {dev} (btrfs) on /var: {errno}")]
    Mount {
        dev: PathBuf,
        errno: nix::errno::Errno,
    },
    #[error("btrfs {what} on /var: {errno}")]
    Btrfs {
        what: String,
        errno: nix::errno::Errno,
    },
}

/// What happened, for the console.
#[derive(Debug, Default)]
pub struct Outcome {
    pub created: bool,
    pub formatted: bool,
    pub grown: bool,
    pub dev: PathBuf,
}

/// Prepares and mounts /var from the DATA partition on the disk holding `root_label`.
pub fn mount_var(root_label: &str) -> Result<Outcome, StorageError> {
    let parts = root::partitions(Path::new("/sys/class/block"));
    let root = root::find(&parts, root_label).map_err(|e| StorageError::Disk(e.to_string()))?;
    let disk_path = Path::new("/dev").join(&root.disk);
    let mut disk = File::options()
        .read(true)
        .write(true)
        .open(&disk_path)
        .map_err(|source| StorageError::Io {
            what: "opening",
            path: disk_path.clone(),
            source,
        })?;
    let (number, mut outcome) = update_table(&mut disk, &disk_path, &root.disk)?;
    let dev = wait_for_node(&root.disk, number)?;
    outcome.dev = dev.clone();
    if !has_btrfs(&dev)? {
        mkfs(&dev)?;
        outcome.formatted = true;
    }
    mount(
        Some(&dev),
        VAR,
        Some("btrfs"),
        MsFlags::MS_NOATIME | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        None::<&str>,
    )
    .map_err(|errno| StorageError::Mount {
        dev: dev.clone(),
        errno,
    })?;
    ensure_subvolumes()?;
    if outcome.grown {
        let var = open_dir(Path::new(VAR))?;
        btrfs::resize_to_max(&var).map_err(|errno| StorageError::Btrfs {
            what: "resize max".into(),
            errno,
        })?;
    }
    Ok(outcome)
}

/// Moves the backup GPT to the disk's end, adds or grows DATA, and tells the kernel.
/// Returns DATA's partition number.
fn update_table(
    disk: &mut File,
    path: &Path,
    disk_name: &str,
) -> Result<(u32, Outcome), StorageError> {
    let gpt_err = |source| StorageError::Gpt {
        path: path.to_path_buf(),
        source,
    };
    let mut gpt = GPT::find_from(disk).map_err(gpt_err)?;
    let sectors = disk
        .seek(SeekFrom::End(0))
        .map_err(|source| StorageError::Io {
            what: "sizing",
            path: path.to_path_buf(),
            source,
        })?
        / gpt.sector_size;
    let mut outcome = Outcome::default();
    let mut changed = false;
    if gpt.header.backup_lba != sectors.saturating_sub(1) {
        gpt.header
            .update_from(disk, gpt.sector_size)
            .map_err(gpt_err)?;
        changed = true;
        outcome.grown = true;
    }
    let last = gpt.header.last_usable_lba;
    let existing = gpt
        .iter()
        .find(|(_, p)| p.is_used() && p.partition_name.as_str() == DATA_LABEL)
        .map(|(i, p)| (i, p.starting_lba, p.ending_lba));
    let number = match existing {
        Some((i, _, end)) if end < last => {
            gpt[i].ending_lba = last;
            changed = true;
            outcome.grown = true;
            i
        }
        Some((i, _, _)) => i,
        None => {
            let i = create_data_entry(&mut gpt)?;
            gpt.header.disk_guid = random_guid().map_err(|source| StorageError::Io {
                what: "reading",
                path: "/dev/urandom".into(),
                source,
            })?;
            changed = true;
            outcome.created = true;
            i
        }
    };
    if changed {
        gpt.write_into(disk).map_err(gpt_err)?;
        fix_protective_mbr(disk, sectors).map_err(|source| StorageError::Io {
            what: "updating the protective MBR of",
            path: path.to_path_buf(),
            source,
        })?;
        disk.sync_all().map_err(|source| StorageError::Io {
            what: "syncing",
            path: path.to_path_buf(),
            source,
        })?;
        let entry = &gpt[number];
        let start = entry.starting_lba * gpt.sector_size;
        let len = (entry.ending_lba + 1).saturating_sub(entry.starting_lba) * gpt.sector_size;
        let result = if outcome.created {
            blkpg::add_partition(disk, number, start, len)
        } else {
            blkpg::resize_partition(disk, number, start, len)
        };
        result.map_err(|errno| StorageError::Blkpg {
            disk: disk_name.to_string(),
            number,
            errno,
        })?;
    }
    Ok((number, outcome))
}

/// DATA over the free space after the last partition, 1 MiB aligned.
fn create_data_entry(gpt: &mut GPT) -> Result<u32, StorageError> {
    let align = ALIGN_BYTES / gpt.sector_size;
    let after = gpt
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(_, p)| p.ending_lba)
        .max()
        .unwrap_or(0);
    let start = (after + 1).div_ceil(align) * align;
    let end = gpt.header.last_usable_lba;
    if end <= start + align {
        return Err(StorageError::Layout(format!(
            "no free space after the image's partitions for DATA (LBA {start}..{end})"
        )));
    }
    let number = gpt
        .iter()
        .find(|(_, p)| p.is_unused())
        .map(|(i, _)| i)
        .ok_or_else(|| StorageError::Layout("no free GPT entry for DATA".into()))?;
    let guid = random_guid().map_err(|source| StorageError::Io {
        what: "reading",
        path: "/dev/urandom".into(),
        source,
    })?;
    gpt[number] = GPTPartitionEntry {
        partition_type_guid: LINUX_DATA_TYPE,
        unique_partition_guid: guid,
        starting_lba: start,
        ending_lba: end,
        attribute_bits: 0,
        partition_name: DATA_LABEL.into(),
    };
    Ok(number)
}

/// The protective MBR's single 0xEE entry must span the (grown) disk, capped at 2^32-1
/// sectors; the boot code before it (GRUB's boot sector) is left alone.
fn fix_protective_mbr(disk: &mut File, sectors: u64) -> std::io::Result<()> {
    let mut mbr = [0u8; 512];
    disk.seek(SeekFrom::Start(0))?;
    disk.read_exact(&mut mbr)?;
    if mbr[446 + 4] != 0xee {
        return Ok(());
    }
    let size = u32::try_from(sectors.saturating_sub(1)).unwrap_or(u32::MAX);
    mbr[446 + 12..446 + 16].copy_from_slice(&size.to_le_bytes());
    disk.seek(SeekFrom::Start(0))?;
    disk.write_all(&mbr)
}

fn random_guid() -> std::io::Result<[u8; 16]> {
    let mut g = [0u8; 16];
    File::open("/dev/urandom")?.read_exact(&mut g)?;
    // Version 4, RFC 4122 variant (the version sits in the little-endian third field).
    g[7] = (g[7] & 0x0f) | 0x40;
    g[8] = (g[8] & 0x3f) | 0x80;
    Ok(g)
}

/// /dev/<name> of partition `number` of `disk`, once devtmpfs has it.
fn wait_for_node(disk: &str, number: u32) -> Result<PathBuf, StorageError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let dir = Path::new("/sys/class/block").join(disk);
    loop {
        let found = std::fs::read_dir(&dir).ok().and_then(|entries| {
            entries.flatten().find_map(|e| {
                let n = std::fs::read_to_string(e.path().join("partition")).ok()?;
                (n.trim() == number.to_string()).then(|| Path::new("/dev").join(e.file_name()))
            })
        });
        if let Some(dev) = found.filter(|d| d.exists()) {
            return Ok(dev);
        }
        if Instant::now() >= deadline {
            return Err(StorageError::NoNode(number));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn has_btrfs(dev: &Path) -> Result<bool, StorageError> {
    let io = |source| StorageError::Io {
        what: "reading",
        path: dev.to_path_buf(),
        source,
    };
    let mut f = File::open(dev).map_err(io)?;
    let mut magic = [0u8; 8];
    f.seek(SeekFrom::Start(BTRFS_MAGIC_OFFSET)).map_err(io)?;
    match f.read_exact(&mut magic) {
        Ok(()) => Ok(&magic == BTRFS_MAGIC),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(io(e)),
    }
}

/// -K: no discard (trimming a large cloud disk can take minutes).
fn mkfs(dev: &Path) -> Result<(), StorageError> {
    info!("formatting {} as btrfs for /var", dev.display());
    let out = Command::new(MKFS_BTRFS)
        .args(["-q", "-K", "-L", DATA_LABEL])
        .arg(dev)
        .output()
        .map_err(|e| StorageError::Mkfs {
            dev: dev.to_path_buf(),
            reason: format!("running {MKFS_BTRFS}: {e}"),
        })?;
    if !out.status.success() {
        return Err(StorageError::Mkfs {
            dev: dev.to_path_buf(),
            reason: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(())
}

/// Creates the subvolumes that are missing (all of them on first boot).
fn ensure_subvolumes() -> Result<(), StorageError> {
    for sub in SUBVOLUMES {
        let path = Path::new(VAR).join(sub);
        if path.exists() {
            continue;
        }
        let (parent, name) = match (path.parent(), path.file_name()) {
            (Some(p), Some(n)) => (p.to_path_buf(), n.to_string_lossy().into_owned()),
            _ => continue,
        };
        std::fs::create_dir_all(&parent).map_err(|source| StorageError::Io {
            what: "creating",
            path: parent.clone(),
            source,
        })?;
        let dir = open_dir(&parent)?;
        btrfs::create_subvolume(&dir, &name).map_err(|errno| StorageError::Btrfs {
            what: format!("subvolume create {}", path.display()),
            errno,
        })?;
    }
    // Images' files (set-uid ones included) and volumes are root's alone: no host user
    // may walk into them (the CVE-2021-41091 class). Every boot, so an older /var is
    // closed too; the store checks its own top directory again when it opens it.
    // No container runs yet at this point of the boot, but one of the last boot may have
    // left a symlink in its place: only a real directory is changed.
    for sub in ROOT_ONLY {
        let path = Path::new(VAR).join(sub);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {
                let mode = std::fs::Permissions::from_mode(0o700);
                if let Err(e) = std::fs::set_permissions(&path, mode) {
                    crate::warn!("{}: making it root's alone: {e}", path.display());
                }
            }
            Ok(_) => crate::warn!("{}: not a directory; left alone", path.display()),
            Err(e) => crate::warn!("{}: {e}", path.display()),
        }
    }
    Ok(())
}

/// Subvolumes only root may enter.
const ROOT_ONLY: &[&str] = &["lib/berth/containers", "lib/berth/volumes"];

fn open_dir(path: &Path) -> Result<File, StorageError> {
    File::open(path).map_err(|source| StorageError::Io {
        what: "opening",
        path: path.to_path_buf(),
        source,
    })
}

/// Logs what `mount_var` did, or why /var falls back to a tmpfs.
pub fn report(result: &Result<Outcome, StorageError>) {
    match result {
        Ok(o) => info!(
            "/var: btrfs on {}{}{}{}",
            o.dev.display(),
            if o.created {
                ", DATA partition created"
            } else {
                ""
            },
            if o.formatted { ", formatted" } else { "" },
            if o.grown {
                ", grown to fill the disk"
            } else {
                ""
            }
        ),
        Err(e) => {
            warn!("/var: {e}; using a tmpfs instead: NOTHING WRITTEN TO /var WILL SURVIVE A REBOOT")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// ROOT-A in the first 8 MiB, as in the shipped image's layout.
    fn root_a() -> GPTPartitionEntry {
        GPTPartitionEntry {
            partition_type_guid: [2; 16],
            unique_partition_guid: [3; 16],
            starting_lba: 2048,
            ending_lba: 16383,
            attribute_bits: 0,
            partition_name: "ROOT-A".into(),
        }
    }

    /// A 64 MiB image with one partition in its first 8 MiB, as the shipped image has
    /// ESP and root slots; then the "disk" grows to 128 MiB.
    fn image() -> Cursor<Vec<u8>> {
        let mut cur = Cursor::new(vec![0u8; 64 << 20]);
        let mut gpt = GPT::new_from(&mut cur, 512, [1; 16]).unwrap();
        gpt[1] = root_a();
        gpt.write_into(&mut cur).unwrap();
        cur
    }

    #[test]
    fn data_fills_the_free_space_aligned() {
        let mut cur = image();
        let mut gpt = GPT::find_from(&mut cur).unwrap();
        let n = create_data_entry(&mut gpt).unwrap();
        assert_eq!(n, 2);
        assert_eq!(gpt[n].starting_lba, 16384);
        assert_eq!(gpt[n].ending_lba, gpt.header.last_usable_lba);
        assert_eq!(gpt[n].partition_name.as_str(), "DATA");
        assert_eq!(gpt[n].partition_type_guid, LINUX_DATA_TYPE);
    }

    #[test]
    fn backup_header_follows_a_grown_disk() {
        let mut cur = image();
        cur.get_mut().resize(128 << 20, 0);
        let mut gpt = GPT::find_from(&mut cur).unwrap();
        let sectors = (128u64 << 20) / 512;
        assert_ne!(gpt.header.backup_lba, sectors - 1);
        gpt.header.update_from(&mut cur, 512).unwrap();
        assert_eq!(gpt.header.backup_lba, sectors - 1);
        gpt.write_into(&mut cur).unwrap();
        let again = GPT::find_from(&mut cur).unwrap();
        assert_eq!(again.header.last_usable_lba, sectors - 34);
        assert_eq!(again[1].partition_name.as_str(), "ROOT-A");
    }

    #[test]
    fn refuses_when_there_is_no_room() {
        let mut cur = Cursor::new(vec![0u8; 9 << 20]);
        let mut gpt = GPT::new_from(&mut cur, 512, [1; 16]).unwrap();
        gpt[1] = root_a();
        assert!(matches!(
            create_data_entry(&mut gpt),
            Err(StorageError::Layout(_))
        ));
    }

    #[test]
    fn guids_are_random_v4() {
        let (a, b) = (random_guid().unwrap(), random_guid().unwrap());
        assert_ne!(a, b);
        assert_eq!(a[7] >> 4, 4);
    }
}
