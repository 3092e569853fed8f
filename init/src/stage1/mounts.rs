//! The API filesystems every Linux userspace expects, mounted before anything else.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("creating mount point {path}: {source}")]
    MkDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mounting {fstype} on {target}: {errno}")]
    Mount {
        fstype: &'static str,
        target: PathBuf,
        errno: Errno,
    },
}

/// One filesystem init mounts at boot.
#[derive(Debug, Clone, Copy)]
pub struct ApiMount {
    pub fstype: &'static str,
    pub target: &'static str,
    pub flags: MsFlags,
    pub data: &'static str,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// In mount order: each target's parent is mounted before it.
pub const API_MOUNTS: &[ApiMount] = &[
    ApiMount {
        fstype: "proc",
        target: "/proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    ApiMount {
        fstype: "sysfs",
        target: "/sys",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    ApiMount {
        fstype: "devtmpfs",
        target: "/dev",
        flags: MsFlags::MS_NOSUID,
        data: "mode=0755",
    },
    // gid 5 is Debian's `tty` group; ptmxmode lets unprivileged users open /dev/pts/ptmx.
    ApiMount {
        fstype: "devpts",
        target: "/dev/pts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "gid=5,mode=0620,ptmxmode=0666",
    },
    ApiMount {
        fstype: "tmpfs",
        target: "/dev/shm",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=1777",
    },
    ApiMount {
        fstype: "tmpfs",
        target: "/run",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=0755",
    },
    // nsdelegate: container runtimes may manage the cgroups below a namespace's root;
    // memory_recursiveprot: memory.min/low protect whole subtrees, as systemd mounts it.
    ApiMount {
        fstype: "cgroup2",
        target: "/sys/fs/cgroup",
        flags: NOSUID_NODEV_NOEXEC,
        data: "nsdelegate,memory_recursiveprot",
    },
];

/// Mounts `m` below `root` (`/` at boot; a test passes a scratch dir). An already
/// mounted target (EBUSY: the kernel may have mounted devtmpfs itself) counts as done.
pub fn mount_api(root: &Path, m: &ApiMount) -> Result<(), MountError> {
    let target = root.join(m.target.trim_start_matches('/'));
    std::fs::create_dir_all(&target).map_err(|source| MountError::MkDir {
        path: target.clone(),
        source,
    })?;
    let data = (!m.data.is_empty()).then_some(m.data);
    match mount(Some(m.fstype), &target, Some(m.fstype), m.flags, data) {
        Ok(()) | Err(Errno::EBUSY) => Ok(()),
        Err(errno) => Err(MountError::Mount {
            fstype: m.fstype,
            target,
            errno,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_come_before_children() {
        for (i, m) in API_MOUNTS.iter().enumerate() {
            for later in &API_MOUNTS[i + 1..] {
                assert!(
                    !Path::new(m.target).starts_with(later.target),
                    "{} must be mounted after {}",
                    m.target,
                    later.target
                );
            }
        }
    }
}
