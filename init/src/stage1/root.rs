//! Finding the root: the partition whose GPT name is the command line's `berth.root=`,
//! on exactly one disk. Linux puts a GPT partition's name in its uevent as PARTNAME.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// GPT names Berth's image and first boot give their partitions.
pub const BERTH_LABELS: &[&str] = &["EFI-SYSTEM", "ROOT-A", "ROOT-B", "DATA"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Kernel name, e.g. `vda2`; its node is /dev/<name>.
    pub name: String,
    /// The whole disk it is on, e.g. `vda`.
    pub disk: String,
    pub label: String,
    pub major: u32,
    pub minor: u32,
}

impl Partition {
    pub fn dev_path(&self) -> PathBuf {
        Path::new("/dev").join(&self.name)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FindError {
    #[error("no partition named {0} yet")]
    NotFound(String),
    #[error("Berth partitions on more than one disk ({0}); refusing to guess which to boot: detach the others or wipe their Berth partitions")]
    SeveralDisks(String),
}

/// Every partition with a GPT name under `sys_class_block` (/sys/class/block).
pub fn partitions(sys_class_block: &Path) -> Vec<Partition> {
    let Ok(entries) = std::fs::read_dir(sys_class_block) else {
        return Vec::new();
    };
    let mut found: Vec<Partition> = entries
        .flatten()
        .filter_map(|e| read_partition(&e.path()))
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

fn read_partition(dir: &Path) -> Option<Partition> {
    let uevent = std::fs::read_to_string(dir.join("uevent")).ok()?;
    let field = |key: &str| {
        uevent
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .map(str::to_string)
    };
    if field("DEVTYPE").as_deref() != Some("partition") {
        return None;
    }
    let label = field("PARTNAME")?;
    let name = field("DEVNAME")?;
    let major = field("MAJOR")?.parse().ok()?;
    let minor = field("MINOR")?.parse().ok()?;
    // /sys/class/block/vda2 links to .../block/vda/vda2: the parent is the disk.
    let real = std::fs::canonicalize(dir).ok()?;
    let disk = real.parent()?.file_name()?.to_string_lossy().into_owned();
    Some(Partition {
        name,
        disk,
        label,
        major,
        minor,
    })
}

/// The partition named `label`, provided Berth's partitions sit on a single disk (with two
/// Berth disks attached, first boot could claim the wrong one, as Fedora CoreOS warns).
pub fn find(parts: &[Partition], label: &str) -> Result<Partition, FindError> {
    let disks: BTreeSet<&str> = parts
        .iter()
        .filter(|p| BERTH_LABELS.contains(&p.label.as_str()))
        .map(|p| p.disk.as_str())
        .collect();
    if disks.len() > 1 {
        return Err(FindError::SeveralDisks(
            disks.into_iter().collect::<Vec<_>>().join(", "),
        ));
    }
    parts
        .iter()
        .find(|p| p.label == label)
        .cloned()
        .ok_or_else(|| FindError::NotFound(label.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(name: &str, disk: &str, label: &str) -> Partition {
        Partition {
            name: name.into(),
            disk: disk.into(),
            label: label.into(),
            major: 254,
            minor: 2,
        }
    }

    #[test]
    fn finds_the_label_on_one_disk() {
        let parts = [
            part("vda1", "vda", "EFI-SYSTEM"),
            part("vda2", "vda", "ROOT-A"),
            part("vdb1", "vdb", "scratch"),
        ];
        assert_eq!(find(&parts, "ROOT-A").unwrap().name, "vda2");
        assert_eq!(
            find(&parts, "ROOT-B"),
            Err(FindError::NotFound("ROOT-B".into()))
        );
    }

    #[test]
    fn refuses_two_berth_disks() {
        let parts = [part("vda2", "vda", "ROOT-A"), part("vdb2", "vdb", "ROOT-A")];
        let err = find(&parts, "ROOT-A").unwrap_err();
        assert_eq!(err, FindError::SeveralDisks("vda, vdb".into()));
        assert!(err.to_string().contains("refusing to guess"));
    }

    #[test]
    fn reads_sysfs_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("devices/virtio1/block/vda/vda2");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(
            dev.join("uevent"),
            "MAJOR=254\nMINOR=2\nDEVNAME=vda2\nDEVTYPE=partition\nPARTN=2\nPARTNAME=ROOT-A\n",
        )
        .unwrap();
        let disk = dir.path().join("devices/virtio1/block/vda");
        std::fs::write(
            disk.join("uevent"),
            "MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n",
        )
        .unwrap();
        let class = dir.path().join("class");
        std::fs::create_dir_all(&class).unwrap();
        std::os::unix::fs::symlink(&dev, class.join("vda2")).unwrap();
        std::os::unix::fs::symlink(&disk, class.join("vda")).unwrap();
        assert_eq!(partitions(&class), vec![part("vda2", "vda", "ROOT-A")]);
    }
}
