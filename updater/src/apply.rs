//! `berth-updater apply`: a payload onto this running machine, into the slot that did
//! not boot, in the order that keeps every power cut harmless:
//!
//! 1. check the payload against the trusted keys and the booted slot's version (and, from
//!    a file, read every part and check it);
//! 2. open the other slot's partition exclusively (a second apply at once stops there),
//!    then ask init to claim that slot (never booted, never rolled back to, until it is
//!    offered: what it held is about to go);
//! 3. remove its `slot.json` (init offers no slot without one), write the root into the
//!    partition, each block checked before it is written, and read it back from the
//!    device;
//! 4. write its kernel, initramfs and `boot.cfg` to the ESP, and `slot.json` last;
//! 5. ask init to offer it for a trial boot (one sector of GRUB's environment block).
//!
//! A cut before 5 leaves the running slot the default and the other one claimed; a cut
//! during 5 leaves the old sector or the new one.

use std::path::{Path, PathBuf};

use berth_bootslot::{grub, slotinfo, SlotInfo};
use berth_control::{InitProxy, SlotStatus};
use berth_update::{apply, Verified, Version};

use crate::payload::Payload;
use crate::progress::Progress;

pub struct Request<'a> {
    pub from: &'a crate::payload::Origin,
    pub keys: &'a Path,
    pub allow_downgrade: bool,
    pub tries: u8,
}

/// Files on the ESP are created 0700: vfat mounted with umask 0077 refuses a chmod to
/// anything whose read and execute bits differ from that.
const ESP_MODE: u32 = 0o700;

/// What was applied, for the operator.
pub struct Applied {
    pub version: String,
    pub slot: String,
    pub partition: PathBuf,
    pub written: apply::Written,
}

/// Applies, with `progress` told each step; a failure is recorded there too.
pub fn apply(r: &Request<'_>, progress: &mut Progress) -> Result<Applied, String> {
    progress.state("checking");
    let applied = apply_steps(r, progress);
    match &applied {
        Ok(_) => progress.applied(),
        Err(e) => progress.failed(e),
    }
    applied
}

fn apply_steps(r: &Request<'_>, progress: &mut Progress) -> Result<Applied, String> {
    zbus::block_on(async {
        let conn = connect_init().await?;
        let init = InitProxy::new(&conn)
            .await
            .map_err(|e| format!("init's API: {e}"))?;
        let (booted, running) = booted_of(&init).await?;
        let (mut payload, verified) =
            crate::payload::open_verified(r.from, r.keys, &running, r.allow_downgrade)?;
        progress.version(&verified.manifest.version.to_string());
        if !(1..=berth_bootslot::state::MAX_TRIES).contains(&r.tries) {
            return Err(format!(
                "--tries {}: a trial has 1 to {} tries",
                r.tries,
                berth_bootslot::state::MAX_TRIES
            ));
        }
        if let crate::payload::Origin::File(path) = r.from {
            // Read twice, since a file is cheap to read again: a changed part is refused
            // here, before the other slot is claimed or touched. (From a registry, the
            // parts are fetched once, by the signed digests a registry checks on push;
            // a block that still differs stops the write at that block.)
            progress.step("verify", verified.manifest.root.data.bytes);
            apply::check_parts(&mut payload, &verified.manifest, &mut |n| {
                progress.advance(n)
            })
            .map_err(|e| format!("{}: refused: {e}", path.display()))?;
        }
        // The other slot's partition, found and held exclusively before the claim: a
        // second apply running at once stops here, and a missing partition leaves the
        // slot unclaimed (and its version still there to roll back to).
        let slot = booted.other();
        let partition = find_partition(Path::new("/sys/class/block"), slot.partlabel())?;
        let device = open_partition(&partition, true)?;
        progress.step("claim", 0);
        let name = init
            .claim_slot()
            .await
            .map_err(|e| format!("claiming the other slot: {e}"))?;
        if name != slot.name() {
            return Err(format!(
                "init claimed slot {name:?}, not {} (the slot that did not boot)",
                slot.name()
            ));
        }
        progress.slot(&name);
        let esp_dir = Path::new(grub::ESP_MOUNT).join(grub::DIR).join(slot.name());
        // The slot is incomplete from now until its slot.json is back: init offers no
        // slot without one, whatever fails in between.
        remove_if_there(&esp_dir.join(slotinfo::FILE))?;
        let written = write_root_to(&mut payload, &verified, &partition, &device, progress)?;
        write_esp(&mut payload, &verified, slot, &esp_dir, progress)?;
        progress.step("offer", 0);
        init.offer_slot(r.tries)
            .await
            .map_err(|e| format!("offering slot {name}: {e}"))?;
        Ok(Applied {
            version: verified.manifest.version.to_string(),
            slot: name,
            partition,
            written,
        })
    })
}

/// The booted slot's version, as init knows it.
pub fn booted_version() -> Result<Version, String> {
    zbus::block_on(async {
        let conn = connect_init().await?;
        let init = InitProxy::new(&conn)
            .await
            .map_err(|e| format!("init's API: {e}"))?;
        Ok(booted_of(&init).await?.1)
    })
}

pub(crate) async fn connect_init() -> Result<zbus::Connection, String> {
    berth_control::connect(Path::new(berth_control::INIT_SOCKET))
        .await
        .map_err(|e| format!("connecting to init: {e}"))
}

/// The booted slot and its version, as init knows them.
async fn booted_of(init: &InitProxy<'_>) -> Result<(berth_bootslot::Slot, Version), String> {
    let slots = init
        .slots()
        .await
        .map_err(|e| format!("the boot slots: {e}"))?;
    let booted = booted(&slots)?;
    let slot = match booted.slot.as_str() {
        "a" => berth_bootslot::Slot::A,
        "b" => berth_bootslot::Slot::B,
        other => return Err(format!("init booted a slot named {other:?}")),
    };
    let version =
        Version::parse(&booted.version).map_err(|e| format!("the booted slot's version: {e}"))?;
    Ok((slot, version))
}

fn booted(slots: &[SlotStatus]) -> Result<&SlotStatus, String> {
    slots
        .iter()
        .find(|s| s.booted)
        .ok_or_else(|| "init knows of no booted slot".to_string())
}

/// The block device whose partition name is `label`: exactly one (two disks holding
/// Berth's partitions are refused, as stage 1 refuses them).
pub fn find_partition(sys_block: &Path, label: &str) -> Result<PathBuf, String> {
    let mut found = Vec::new();
    let entries =
        std::fs::read_dir(sys_block).map_err(|e| format!("{}: {e}", sys_block.display()))?;
    for entry in entries.flatten() {
        let Ok(uevent) = std::fs::read_to_string(entry.path().join("uevent")) else {
            continue;
        };
        let value = |key: &str| {
            uevent
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_string)
        };
        if value("PARTNAME").as_deref() == Some(label) {
            if let Some(dev) = value("DEVNAME") {
                found.push(PathBuf::from("/dev").join(dev));
            }
        }
    }
    match &found[..] {
        [one] => Ok(one.clone()),
        [] => Err(format!("no partition named {label}")),
        many => Err(format!("{} partitions named {label}: {many:?}", many.len())),
    }
}

/// Opens the slot's partition for writing; `exclusive` (a block device only: O_EXCL
/// there fails with EBUSY while anyone else holds it exclusively or has it mounted).
fn open_partition(partition: &Path, exclusive: bool) -> Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::File::options();
    options.read(true).write(true);
    if exclusive {
        options.custom_flags(libc::O_EXCL);
    }
    options
        .open(partition)
        .map_err(|e| format!("{}: {e}", partition.display()))
}

/// `write-root`: into a partition (or a file standing for one), without the claim.
pub fn write_root(
    source: &mut Payload,
    v: &Verified,
    partition: &Path,
) -> Result<apply::Written, String> {
    let device = open_partition(partition, false)?;
    write_root_to(source, v, partition, &device, &mut Progress::silent())
}

fn write_root_to(
    source: &mut Payload,
    v: &Verified,
    partition: &Path,
    slot: &std::fs::File,
    progress: &mut Progress,
) -> Result<apply::Written, String> {
    let what = |e: &dyn std::fmt::Display| format!("{}: {e}", partition.display());
    let root = &v.manifest.root;
    let capacity = size_of(slot).map_err(|e| what(&e))?;
    progress.step("root", root.data.bytes);
    let written = apply::write_root(source, root, slot, capacity, &mut |n| progress.advance(n))
        .map_err(|e| what(&e))?;
    progress.step("read-back", root.data.bytes);
    apply::read_back(root, slot, &mut |n| progress.advance(n)).map_err(|e| what(&e))?;
    Ok(written)
}

fn remove_if_there(path: &Path) -> Result<(), String> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// What a power cut during an earlier apply left in the slot's directory: the durable
/// writes' temporary files (`.NAME.PID.N.tmp`), megabytes each on a 64 MiB ESP.
fn remove_leftovers(dir: &Path) -> Result<(), String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".tmp") {
            remove_if_there(&entry.path())?;
        }
    }
    Ok(())
}

/// The slot's files on the ESP (its `slot.json` is already gone): leftovers of an
/// interrupted apply and the old version's files removed, then the kernel and initramfs (each checked against its
/// digest), the command line, and slot.json last.
fn write_esp(
    source: &mut Payload,
    v: &Verified,
    slot: berth_bootslot::Slot,
    dir: &Path,
    progress: &mut Progress,
) -> Result<(), String> {
    let m = &v.manifest;
    let info_path = dir.join(slotinfo::FILE);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    remove_leftovers(dir)?;
    // The slot was claimed and its slot.json is gone: nothing boots these any more. Gone
    // first, the ESP needs room for one new file's temporary copy, not for a third copy
    // of a slot beside the two.
    for old in ["vmlinuz", "initrd.img", grub::SLOT_CONFIG] {
        remove_if_there(&dir.join(old))?;
    }
    progress.step("kernel", m.kernel.bytes);
    let kernel = apply::read_part(source, &m.kernel, "kernel").map_err(|e| e.to_string())?;
    put(&dir.join("vmlinuz"), &kernel)?;
    drop(kernel);
    progress.step("initramfs", m.initramfs.bytes);
    let initrd = apply::read_part(source, &m.initramfs, "initramfs").map_err(|e| e.to_string())?;
    put(&dir.join("initrd.img"), &initrd)?;
    drop(initrd);
    progress.step("boot-config", 0);
    let cmdline = grub::slot_cmdline(
        &m.cmdline,
        slot,
        &m.root.root_hash,
        &m.root.salt,
        m.root.data_blocks,
        "",
    );
    let boot_cfg = grub::slot_config(&cmdline)
        .ok_or_else(|| format!("a command line GRUB cannot quote: {cmdline:?}"))?;
    put(&dir.join(grub::SLOT_CONFIG), boot_cfg.as_bytes())?;
    let info = SlotInfo {
        version: m.version.to_string(),
        build_id: m.build_id.clone(),
        root_hash: m.root.root_hash.clone(),
    };
    let bytes = info.to_bytes().map_err(|e| e.to_string())?;
    progress.step("slot-info", 0);
    put(&info_path, &bytes)
}

fn put(path: &Path, data: &[u8]) -> Result<(), String> {
    // The helper's error names the path.
    berth_persist::write_file(path, data, ESP_MODE).map_err(|e| e.to_string())
}

/// A partition's size: a block device's from seeking to its end, a file's from its
/// metadata.
fn size_of(f: &std::fs::File) -> std::io::Result<u64> {
    use std::io::Seek;
    let meta = f.metadata()?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    let mut f = f;
    let end = f.seek(std::io::SeekFrom::End(0))?;
    f.seek(std::io::SeekFrom::Start(0))?;
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_applys_temporary_files_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            ".vmlinuz.412.0.tmp",
            ".initrd.img.412.1.tmp",
            "vmlinuz",
            "boot.cfg",
        ] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        remove_leftovers(dir.path()).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["boot.cfg", "vmlinuz"]);
        remove_leftovers(&dir.path().join("missing")).unwrap();
    }

    #[test]
    fn the_partition_is_found_by_its_name_and_only_once() {
        let sys = tempfile::tempdir().unwrap();
        for (dev, name) in [
            ("vda1", "EFI-SYSTEM"),
            ("vda2", "ROOT-A"),
            ("vda3", "ROOT-B"),
            ("vda", ""),
        ] {
            std::fs::create_dir(sys.path().join(dev)).unwrap();
            let part = if name.is_empty() {
                String::new()
            } else {
                format!("PARTNAME={name}\n")
            };
            std::fs::write(
                sys.path().join(dev).join("uevent"),
                format!("MAJOR=254\nDEVNAME={dev}\nDEVTYPE=partition\n{part}"),
            )
            .unwrap();
        }
        assert_eq!(
            find_partition(sys.path(), "ROOT-B").unwrap(),
            PathBuf::from("/dev/vda3")
        );
        assert!(find_partition(sys.path(), "ROOT-C").is_err());
        std::fs::create_dir(sys.path().join("vdb3")).unwrap();
        std::fs::write(
            sys.path().join("vdb3/uevent"),
            "DEVNAME=vdb3\nPARTNAME=ROOT-B\n",
        )
        .unwrap();
        assert!(find_partition(sys.path(), "ROOT-B")
            .unwrap_err()
            .contains("2 partitions"));
    }
}
