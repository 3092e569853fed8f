//! The container's filesystem view, built in its new mount namespace: the rootfs bound
//! onto itself, the spec's mounts inside it, device nodes, then pivot_root, masked and
//! read-only paths. Runs in the container's init process before it execs.

use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};

use crate::error::{config, io, sys, Error, Result};

/// The devices every container gets (runtime-spec "Default Devices").
const DEFAULT_DEVICES: [(&str, u64, u64); 6] = [
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

/// `dest` inside `rootfs`, refusing `..` that would climb out and resolving symlinks
/// already inside the rootfs against the rootfs (not the host).
pub fn in_rootfs(rootfs: &Path, dest: &Path) -> Result<PathBuf> {
    let mut out = rootfs.to_path_buf();
    let mut hops = 0;
    let mut parts: Vec<PathBuf> = dest
        .components()
        .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
        .map(|c| PathBuf::from(c.as_os_str()))
        .collect();
    parts.reverse();
    while let Some(part) = parts.pop() {
        if part == Path::new("..") {
            if out != rootfs {
                out.pop();
            }
            continue;
        }
        let next = out.join(&part);
        match std::fs::read_link(&next) {
            Ok(target) => {
                hops += 1;
                if hops > 40 {
                    return Err(config(
                        "mounts",
                        format!("{}: too many symlinks", dest.display()),
                    ));
                }
                if target.is_absolute() {
                    out = rootfs.to_path_buf();
                }
                let mut more: Vec<PathBuf> = target
                    .components()
                    .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
                    .map(|c| PathBuf::from(c.as_os_str()))
                    .collect();
                more.reverse();
                parts.extend(more);
            }
            Err(_) => out = next,
        }
    }
    Ok(out)
}

/// Mount flags and the data string from OCI mount options (mount(8) names).
pub fn parse_options(options: &[String]) -> Result<(MsFlags, MsFlags, String)> {
    let mut flags = MsFlags::empty();
    let mut propagation = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        let (set, clear, prop) = match o.as_str() {
            "ro" => (MsFlags::MS_RDONLY, false, false),
            "rw" => (MsFlags::MS_RDONLY, true, false),
            "nosuid" => (MsFlags::MS_NOSUID, false, false),
            "suid" => (MsFlags::MS_NOSUID, true, false),
            "nodev" => (MsFlags::MS_NODEV, false, false),
            "dev" => (MsFlags::MS_NODEV, true, false),
            "noexec" => (MsFlags::MS_NOEXEC, false, false),
            "exec" => (MsFlags::MS_NOEXEC, true, false),
            "sync" => (MsFlags::MS_SYNCHRONOUS, false, false),
            "async" => (MsFlags::MS_SYNCHRONOUS, true, false),
            "dirsync" => (MsFlags::MS_DIRSYNC, false, false),
            "remount" => (MsFlags::MS_REMOUNT, false, false),
            "mand" => (MsFlags::MS_MANDLOCK, false, false),
            "nomand" => (MsFlags::MS_MANDLOCK, true, false),
            "atime" => (MsFlags::MS_NOATIME, true, false),
            "noatime" => (MsFlags::MS_NOATIME, false, false),
            "diratime" => (MsFlags::MS_NODIRATIME, true, false),
            "nodiratime" => (MsFlags::MS_NODIRATIME, false, false),
            "relatime" => (MsFlags::MS_RELATIME, false, false),
            "norelatime" => (MsFlags::MS_RELATIME, true, false),
            "strictatime" => (MsFlags::MS_STRICTATIME, false, false),
            "nostrictatime" => (MsFlags::MS_STRICTATIME, true, false),
            "bind" => (MsFlags::MS_BIND, false, false),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, false, false),
            "private" => (MsFlags::MS_PRIVATE, false, true),
            "rprivate" => (MsFlags::MS_PRIVATE | MsFlags::MS_REC, false, true),
            "slave" => (MsFlags::MS_SLAVE, false, true),
            "rslave" => (MsFlags::MS_SLAVE | MsFlags::MS_REC, false, true),
            "shared" => (MsFlags::MS_SHARED, false, true),
            "rshared" => (MsFlags::MS_SHARED | MsFlags::MS_REC, false, true),
            "unbindable" => (MsFlags::MS_UNBINDABLE, false, true),
            "runbindable" => (MsFlags::MS_UNBINDABLE | MsFlags::MS_REC, false, true),
            // Options runc accepts that need no flag here.
            "defaults" | "tmpcopyup" | "idmap" | "ridmap" => continue,
            other => {
                if other.is_empty() || other.contains(',') {
                    return Err(config(
                        "mounts.options",
                        format!("{other:?} is not a mount option"),
                    ));
                }
                data.push(other.to_string());
                continue;
            }
        };
        if prop {
            propagation |= set;
        } else if clear {
            flags.remove(set);
        } else {
            flags |= set;
        }
    }
    Ok((flags, propagation, data.join(",")))
}

/// Propagation for the container's view of `/` (linux.rootfsPropagation; rslave by
/// default, so host unmounts reach it but nothing flows back).
pub fn root_propagation(spec: &Spec) -> Result<MsFlags> {
    let prop = spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().clone());
    Ok(match prop.as_deref() {
        None | Some("") | Some("rslave") => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        Some("slave") => MsFlags::MS_SLAVE,
        Some("private") => MsFlags::MS_PRIVATE,
        Some("rprivate") => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        Some("shared") => MsFlags::MS_SHARED,
        Some("rshared") => MsFlags::MS_SHARED | MsFlags::MS_REC,
        Some("unbindable") => MsFlags::MS_UNBINDABLE,
        Some("runbindable") => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        Some(other) => {
            return Err(config(
                "linux.rootfsPropagation",
                format!("{other:?} is not a propagation"),
            ))
        }
    })
}

/// Set in a container's init that runs in its own user namespace: mounts there carry
/// locked flags (nosuid, nodev, noexec, atime) that a remount must keep, and device
/// nodes cannot be made (they are bound from the host instead, as runc does).
static IN_USER_NAMESPACE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_in_user_namespace() {
    IN_USER_NAMESPACE.store(true, std::sync::atomic::Ordering::SeqCst);
}

fn in_user_namespace() -> bool {
    IN_USER_NAMESPACE.load(std::sync::atomic::Ordering::SeqCst)
}

/// The flags a bind remount in a user namespace may not drop (mount_namespaces(7),
/// "locked" mount flags), as they stand on `target` now.
fn locked_flags(target: &Path) -> MsFlags {
    use nix::sys::statvfs::FsFlags;
    let Ok(st) = nix::sys::statvfs::statvfs(target) else {
        return MsFlags::empty();
    };
    let f = st.flags();
    [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ]
    .into_iter()
    .filter(|(st, _)| f.contains(*st))
    .fold(MsFlags::empty(), |acc, (_, ms)| acc | ms)
}

fn mnt(
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    mut flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    if in_user_namespace() && flags.contains(MsFlags::MS_REMOUNT | MsFlags::MS_BIND) {
        flags |= locked_flags(target);
    }
    mount(src, target, fstype, flags, data).map_err(sys(format!(
        "mounting {} on {}",
        fstype.or(src.and_then(|s| s.to_str())).unwrap_or("?"),
        target.display()
    )))
}

/// Prepares the rootfs and everything mounted in it, ready for pivot_root.
pub fn prepare_rootfs(spec: &Spec, rootfs: &Path) -> Result<()> {
    mnt(None, Path::new("/"), None, root_propagation(spec)?, None)?;
    mnt(
        Some(rootfs),
        rootfs,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    for m in spec.mounts().as_deref().unwrap_or_default() {
        mount_one(m, rootfs)?;
    }
    create_devices(spec, rootfs)?;
    dev_symlinks(rootfs);
    Ok(())
}

fn mount_one(m: &Mount, rootfs: &Path) -> Result<()> {
    let dest = m.destination();
    if !dest.is_absolute() {
        return Err(config(
            "mounts.destination",
            format!("{} is not absolute", dest.display()),
        ));
    }
    let target = in_rootfs(rootfs, dest)?;
    let options = m.options().clone().unwrap_or_default();
    let (mut flags, propagation, data) = parse_options(&options)?;
    let mut fstype = m.typ().clone().unwrap_or_else(|| "none".into());
    let bind = flags.contains(MsFlags::MS_BIND) || fstype == "bind";
    let source = m.source().clone();
    if bind {
        flags |= MsFlags::MS_BIND;
        let src = source.as_deref().ok_or_else(|| {
            config(
                "mounts.source",
                format!("bind mount on {} has no source", dest.display()),
            )
        })?;
        let meta = std::fs::metadata(src).map_err(io(src))?;
        make_mount_point(&target, meta.is_dir())?;
        mnt(
            Some(src),
            &target,
            None,
            flags & (MsFlags::MS_BIND | MsFlags::MS_REC),
            None,
        )?;
        // A bind mount takes its other flags only on a remount.
        let rest = flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !rest.is_empty() {
            mnt(
                None,
                &target,
                None,
                rest | MsFlags::MS_BIND | MsFlags::MS_REMOUNT,
                None,
            )?;
        }
    } else {
        // Berth is cgroup-v2 only: a "cgroup" mount is the unified hierarchy, which
        // hybrid hosts offer too (v1 hierarchies cannot be mounted a second time).
        if fstype == "cgroup" {
            fstype = "cgroup2".into();
        }
        make_mount_point(&target, true)?;
        let src = source.unwrap_or_else(|| PathBuf::from(&fstype));
        let data = (!data.is_empty()).then_some(data.as_str());
        match mnt(Some(&src), &target, Some(&fstype), flags, data) {
            // Without its own network namespace a container may not mount sysfs: bind
            // the host's read-only instead, as runc does.
            Err(Error::Sys {
                errno: nix::errno::Errno::EPERM,
                ..
            }) if fstype == "sysfs" => bind_read_only(Path::new("/sys"), &target)?,
            // Likewise cgroup2 in a user namespace without its own cgroup namespace.
            Err(Error::Sys {
                errno: nix::errno::Errno::EPERM,
                ..
            }) if fstype == "cgroup2" && in_user_namespace() => {
                bind_read_only(Path::new("/sys/fs/cgroup"), &target)?;
            }
            other => other?,
        }
    }
    if !propagation.is_empty() {
        mnt(None, &target, None, propagation, None)?;
    }
    Ok(())
}

fn make_mount_point(target: &Path, dir: bool) -> Result<()> {
    if dir {
        std::fs::create_dir_all(target).map_err(io(target))
    } else {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        if !target.exists() {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o644)
                .open(target)
                .map_err(io(target))?;
        }
        Ok(())
    }
}

struct Node {
    path: PathBuf,
    kind: SFlag,
    major: u64,
    minor: u64,
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
}

fn create_devices(spec: &Spec, rootfs: &Path) -> Result<()> {
    let dev = rootfs.join("dev");
    std::fs::create_dir_all(&dev).map_err(io(&dev))?;
    let mut nodes: Vec<Node> = DEFAULT_DEVICES
        .iter()
        .map(|(p, major, minor)| Node {
            path: PathBuf::from(p),
            kind: SFlag::S_IFCHR,
            major: *major,
            minor: *minor,
            mode: 0o666,
            uid: None,
            gid: None,
        })
        .collect();
    let devices: &[LinuxDevice] = spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().as_deref())
        .unwrap_or_default();
    for d in devices {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(config(
                    "linux.devices.type",
                    "\"a\" is only for device cgroup rules",
                ))
            }
        };
        let major =
            u64::try_from(d.major()).map_err(|_| config("linux.devices.major", "negative"))?;
        let minor =
            u64::try_from(d.minor()).map_err(|_| config("linux.devices.minor", "negative"))?;
        nodes.retain(|n| n.path != *d.path());
        nodes.push(Node {
            path: d.path().clone(),
            kind,
            major,
            minor,
            mode: d.file_mode().unwrap_or(0o666),
            uid: d.uid(),
            gid: d.gid(),
        });
    }
    for Node {
        path,
        kind,
        major,
        minor,
        mode,
        uid,
        gid,
    } in nodes
    {
        let target = in_rootfs(rootfs, &path)?;
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let _ = std::fs::remove_file(&target);
        if in_user_namespace() {
            // mknod is not allowed there: the host's node, bound onto an empty file.
            bind_device(&path, &target)?;
            continue;
        }
        mknod(
            &target,
            kind,
            Mode::from_bits_truncate(mode),
            makedev(major, minor),
        )
        .map_err(sys(format!("mknod {}", target.display())))?;
        // mknod applies the umask; the spec's mode is meant exactly.
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            &target,
            Mode::from_bits_truncate(mode),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(sys(format!("chmod {}", target.display())))?;
        if uid.is_some() || gid.is_some() {
            nix::unistd::chown(
                &target,
                uid.map(nix::unistd::Uid::from_raw),
                gid.map(nix::unistd::Gid::from_raw),
            )
            .map_err(sys(format!("chown {}", target.display())))?;
        }
    }
    Ok(())
}

fn bind_device(host: &Path, target: &Path) -> Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(target)
        .map_err(io(target))?;
    mnt(Some(host), target, None, MsFlags::MS_BIND, None)
}

/// /dev/fd, stdin, stdout, stderr and ptmx, as every container expects them.
fn dev_symlinks(rootfs: &Path) {
    for (link, target) in [
        ("dev/fd", "/proc/self/fd"),
        ("dev/stdin", "/proc/self/fd/0"),
        ("dev/stdout", "/proc/self/fd/1"),
        ("dev/stderr", "/proc/self/fd/2"),
        ("dev/ptmx", "pts/ptmx"),
        ("dev/core", "/proc/kcore"),
    ] {
        let path = rootfs.join(link);
        if path.symlink_metadata().is_err() {
            let _ = symlink(target, &path);
        }
    }
}

/// Makes `rootfs` the root: pivot_root(".", ".") stacks the old root on the new one,
/// which is then detached (the approach of pivot_root(2)'s NOTES).
/// pivot_root(2) cannot leave the initial ramfs/tmpfs root (an initramfs-only system,
/// as the test image booted without a disk is): there, as with runc's --no-pivot, the
/// rootfs is moved over / and chrooted into instead.
pub fn pivot(rootfs: &Path) -> Result<()> {
    nix::unistd::chdir(rootfs).map_err(sys(format!("chdir {}", rootfs.display())))?;
    match nix::unistd::pivot_root(".", ".") {
        Ok(()) => {}
        Err(nix::errno::Errno::EINVAL) if root_is_initramfs() => return move_root(),
        Err(e) => return Err(sys("pivot_root")(e)),
    }
    // The old root must not propagate its unmount back to the host.
    mnt(
        None,
        Path::new("."),
        None,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None,
    )?;
    umount2(".", MntFlags::MNT_DETACH).map_err(sys("detaching the old root"))?;
    nix::unistd::chdir("/").map_err(sys("chdir /"))
}

fn root_is_initramfs() -> bool {
    use nix::sys::statfs::{statfs, FsType, TMPFS_MAGIC};
    // RAMFS_MAGIC from linux/magic.h (nix does not name it).
    const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);
    statfs("/")
        .is_ok_and(|s| s.filesystem_type() == RAMFS_MAGIC || s.filesystem_type() == TMPFS_MAGIC)
}

fn move_root() -> Result<()> {
    mnt(
        Some(Path::new(".")),
        Path::new("/"),
        None,
        MsFlags::MS_MOVE,
        None,
    )?;
    nix::unistd::chroot(".").map_err(sys("chroot"))?;
    nix::unistd::chdir("/").map_err(sys("chdir /"))
}

/// Masked paths (runtime-spec linux.maskedPaths): a directory gets an empty read-only
/// tmpfs, a file /dev/null over it; what does not exist is skipped.
pub fn mask(paths: &[String]) -> Result<()> {
    for p in paths {
        let path = Path::new(p);
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => mnt(
                Some(Path::new("tmpfs")),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None,
            )?,
            Ok(_) => mnt(
                Some(Path::new("/dev/null")),
                path,
                None,
                MsFlags::MS_BIND,
                None,
            )?,
            Err(_) => {}
        }
    }
    Ok(())
}

/// Read-only paths: bound onto themselves, then remounted read-only.
pub fn read_only(paths: &[String]) -> Result<()> {
    for p in paths {
        let path = Path::new(p);
        if path.exists() {
            bind_read_only(path, path)?;
        }
    }
    Ok(())
}

/// `src` bound (recursively) on `target`, then remounted read-only, nosuid, nodev, noexec.
fn bind_read_only(src: &Path, target: &Path) -> Result<()> {
    mnt(
        Some(src),
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    let ro = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC;
    mnt(None, target, None, ro, None)
}

/// root.readonly: the new / remounted read-only.
pub fn root_read_only() -> Result<()> {
    mnt(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_to_flags_and_data() {
        let opts: Vec<String> = [
            "nosuid",
            "strictatime",
            "mode=755",
            "size=65536k",
            "rprivate",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (flags, prop, data) = parse_options(&opts).unwrap();
        assert_eq!(flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(prop, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(data, "mode=755,size=65536k");
        let (flags, _, _) = parse_options(&["ro".into(), "rw".into()]).unwrap();
        assert!(flags.is_empty());
        assert!(parse_options(&["".into()]).is_err());
    }

    #[test]
    fn paths_stay_in_the_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        symlink("/etc", root.join("abs")).unwrap();
        symlink("../../../..", root.join("etc/up")).unwrap();
        assert_eq!(
            in_rootfs(root, Path::new("/../../x")).unwrap(),
            root.join("x")
        );
        assert_eq!(
            in_rootfs(root, Path::new("/abs/passwd")).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            in_rootfs(root, Path::new("/etc/up/tmp")).unwrap(),
            root.join("tmp")
        );
        symlink("loop", root.join("loop")).unwrap();
        assert!(in_rootfs(root, Path::new("/loop")).is_err());
    }
}
