//! The container's filesystem view, built in its new mount namespace: the rootfs bound
//! onto itself, the spec's mounts inside it, device nodes, then pivot_root, masked and
//! read-only paths. Runs in the container's init process before it execs.
//!
//! Every path under the rootfs is resolved in it (`inroot`): mount(2), mknodat and
//! symlinkat act on descriptors of what the path resolved to, never on a host path
//! built by joining the rootfs and a destination an image can redirect with a symlink.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknodat, Mode, SFlag};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};

use crate::error::{config, sys, Error, Result};
use crate::inroot::{fd_path, in_root, Leaf, Root};

/// The devices every container gets (runtime-spec "Default Devices").
const DEFAULT_DEVICES: [(&str, u64, u64); 6] = [
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

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
/// "locked" mount flags), as they stand on the mount `statvfs` describes.
fn locked_flags(st: nix::Result<nix::sys::statvfs::Statvfs>) -> MsFlags {
    use nix::sys::statvfs::FsFlags;
    let Ok(st) = st else {
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

fn needs_locked(flags: MsFlags) -> bool {
    in_user_namespace() && flags.contains(MsFlags::MS_REMOUNT | MsFlags::MS_BIND)
}

/// mount(2) on a host path the runtime trusts (`/`, the rootfs, `.` while pivoting).
fn mnt(
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    mut flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    if needs_locked(flags) {
        flags |= locked_flags(nix::sys::statvfs::statvfs(target));
    }
    mount(src, target, fstype, flags, data).map_err(sys(format!(
        "mounting {} on {}",
        fstype.or(src.and_then(|s| s.to_str())).unwrap_or("?"),
        target.display()
    )))
}

/// mount(2) on what `fd` holds, through its /proc/self/fd path; `dest` names it in
/// errors.
fn mount_fd(
    src: Option<&Path>,
    fd: &OwnedFd,
    dest: &Path,
    fstype: Option<&str>,
    mut flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    if needs_locked(flags) {
        flags |= locked_flags(nix::sys::statvfs::fstatvfs(fd));
    }
    mount(src, &fd_path(fd), fstype, flags, data).map_err(sys(format!(
        "mounting {} on {}",
        fstype.or(src.and_then(|s| s.to_str())).unwrap_or("?"),
        dest.display()
    )))
}

/// mount(2) on `dest`, resolved in `root` right before the call: after an earlier
/// mount there, that resolves to the new mount (a remount, a propagation change).
fn mnt_at(
    root: &Root,
    dest: &Path,
    src: Option<&Path>,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    let fd = root.open_in(dest)?;
    mount_fd(src, &fd, dest, fstype, flags, data)
}

/// Whether `m` is a bind mount, and a recursive one.
fn bind_kind(m: &Mount) -> Result<Option<bool>> {
    let (flags, _, _) = parse_options(&m.options().clone().unwrap_or_default())?;
    let bind = flags.contains(MsFlags::MS_BIND) || m.typ().as_deref() == Some("bind");
    Ok(bind.then_some(flags.contains(MsFlags::MS_REC)))
}

/// Each bind mount's source as a detached mount tree (None for other mounts), made by
/// the runtime in its own mount namespace before the container's init leaves it. The
/// source is resolved once, here, as the caller named it (a daemon's
/// /proc/PID/fd/N pin included, which only resolves to a usable mount in the caller's
/// namespace); the init attaches the tree it holds, not whatever the path names later.
/// Where open_tree(2) does not exist, every entry is None: the init mounts by path.
pub fn bind_trees(spec: &Spec) -> Result<Vec<Option<OwnedFd>>> {
    let mut trees = Vec::new();
    for m in spec.mounts().as_deref().unwrap_or_default() {
        let (Some(recursive), Some(src)) = (bind_kind(m)?, m.source().as_deref()) else {
            trees.push(None);
            continue;
        };
        match crate::sys::clone_tree(src, recursive) {
            Ok(fd) => trees.push(Some(fd)),
            Err(nix::errno::Errno::ENOSYS) => return Ok(Vec::new()),
            Err(e) => return Err(sys(format!("opening the bind source {}", src.display()))(e)),
        }
    }
    Ok(trees)
}

/// Prepares the rootfs and everything mounted in it, ready for pivot_root. `trees`:
/// from [`bind_trees`], or empty to mount bind sources by path.
pub fn prepare_rootfs(spec: &Spec, rootfs: &Path, trees: &[Option<OwnedFd>]) -> Result<()> {
    mnt(
        None,
        Path::new("/"),
        None,
        before_pivot(root_propagation(spec)?),
        None,
    )?;
    parent_mount_private(rootfs)?;
    mnt(
        Some(rootfs),
        rootfs,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    // Opened once the rootfs is bound onto itself: mounts made through it land on the
    // mount pivot_root will take.
    let root = Root::open(rootfs)?;
    for (i, m) in spec
        .mounts()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        mount_one(m, &root, trees.get(i).and_then(Option::as_ref))?;
    }
    create_devices(spec, &root)?;
    dev_symlinks(&root)
}

/// The requested linux.rootfsPropagation, applied to the container's `/` once pivoted
/// (before, it would land on the rootfs's parent mount instead). Unset, the rslave of
/// [`prepare_rootfs`] stands, and so do the mounts' own propagation options.
pub fn apply_root_propagation(spec: &Spec) -> Result<()> {
    let requested = spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().as_deref())
        .is_some_and(|p| !p.is_empty());
    if !requested {
        return Ok(());
    }
    mnt(None, Path::new("/"), None, root_propagation(spec)?, None)
}

/// The propagation for `/` while the rootfs is built: the requested one (a shared
/// bind source then stays a peer of the host's, as bidirectional mounts need), except
/// that an unbindable one is private until after pivot_root, as mount(2) refuses to
/// bind (the rootfs, bind sources) from an unbindable mount.
fn before_pivot(propagation: MsFlags) -> MsFlags {
    if propagation.contains(MsFlags::MS_UNBINDABLE) {
        (propagation - MsFlags::MS_UNBINDABLE) | MsFlags::MS_PRIVATE
    } else {
        propagation
    }
}

/// Makes the mount holding `rootfs` private (in this mount namespace) when it is
/// shared. pivot_root(2) refuses (EINVAL) a new root whose parent mount is shared, and
/// a bind of the rootfs from a shared mount would itself be shared, its mounts seen by
/// the mount's other peers. rootfsPropagation "shared" or "rshared", or a host whose
/// mounts are shared (systemd makes them so), leave it shared.
fn parent_mount_private(rootfs: &Path) -> Result<()> {
    let info = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(info).map_err(crate::error::io(info))?;
    let Some((mount_point, shared)) = mount_of(&text, rootfs) else {
        return Ok(());
    };
    if !shared {
        return Ok(());
    }
    mnt(None, &mount_point, None, MsFlags::MS_PRIVATE, None)
}

/// The mount `path` (absolute, canonical) lies on, by mountinfo's text (proc(5),
/// /proc/pid/mountinfo): its mount point and whether it is shared. The deepest mount
/// point above `path` wins; of mounts stacked on one point, the last listed (the top).
fn mount_of(mountinfo: &str, path: &Path) -> Option<(PathBuf, bool)> {
    let mut best: Option<(PathBuf, bool)> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(point), Some(optional)) = (fields.get(4), fields.get(6..)) else {
            continue;
        };
        let point = PathBuf::from(unescape_mountinfo(point));
        if !path.starts_with(&point) {
            continue;
        }
        if best
            .as_ref()
            .is_some_and(|(b, _)| b.components().count() > point.components().count())
        {
            continue;
        }
        // Optional fields ("shared:N", "master:N", ...) end at the "-" separator.
        let shared = optional
            .iter()
            .take_while(|f| **f != "-")
            .any(|f| f.starts_with("shared:"));
        best = Some((point, shared));
    }
    best
}

/// mountinfo writes space, tab, newline and backslash in paths as octal escapes (\040).
fn unescape_mountinfo(field: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match octal {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    std::ffi::OsString::from_vec(out)
}

fn is_dir(fd: &OwnedFd) -> bool {
    nix::sys::stat::fstat(fd)
        .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR)
}

fn mount_one(m: &Mount, root: &Root, tree: Option<&OwnedFd>) -> Result<()> {
    let dest = m.destination();
    if !dest.is_absolute() {
        return Err(config(
            "mounts.destination",
            format!("{} is not absolute", dest.display()),
        ));
    }
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
        bind_mount(root, src, tree, dest, flags)?;
    } else {
        // Berth is cgroup-v2 only: a "cgroup" mount is the unified hierarchy, which
        // hybrid hosts offer too (v1 hierarchies cannot be mounted a second time).
        if fstype == "cgroup" {
            fstype = "cgroup2".into();
        }
        let target = root.make(dest, Leaf::Dir)?;
        let src = source.unwrap_or_else(|| PathBuf::from(&fstype));
        let data = (!data.is_empty()).then_some(data.as_str());
        match mount_fd(Some(&src), &target, dest, Some(&fstype), flags, data) {
            // Without its own network namespace a container may not mount sysfs: bind
            // the host's read-only instead, as runc does.
            Err(Error::Sys {
                errno: nix::errno::Errno::EPERM,
                ..
            }) if fstype == "sysfs" => bind_read_only(root, Path::new("/sys"), dest)?,
            // Likewise cgroup2 in a user namespace without its own cgroup namespace.
            Err(Error::Sys {
                errno: nix::errno::Errno::EPERM,
                ..
            }) if fstype == "cgroup2" && in_user_namespace() => {
                bind_read_only(root, Path::new("/sys/fs/cgroup"), dest)?;
            }
            other => other?,
        }
    }
    if !propagation.is_empty() {
        mnt_at(root, dest, None, None, propagation, None)?;
    }
    Ok(())
}

/// A bind mount of the host path `src` (the spec's: the runtime's caller chose it) on
/// `dest` in the root: the detached `tree` the runtime cloned from it, or else the
/// source opened once and bound through its descriptor, so what was checked (a
/// directory or not) is what gets mounted.
fn bind_mount(
    root: &Root,
    src: &Path,
    tree: Option<&OwnedFd>,
    dest: &Path,
    flags: MsFlags,
) -> Result<()> {
    let opened;
    let src_fd = match tree {
        Some(t) => t,
        None => {
            opened = nix::fcntl::open(src, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
                .map_err(sys(format!("opening the bind source {}", src.display())))?;
            &opened
        }
    };
    let leaf = if is_dir(src_fd) {
        Leaf::Dir
    } else {
        Leaf::File
    };
    let target = root.make(dest, leaf)?;
    match tree {
        Some(t) => crate::sys::attach_tree(t.as_fd(), target.as_fd())
            .map_err(sys("attaching the bind source's tree")),
        None => mount_fd(
            Some(&fd_path(src_fd)),
            &target,
            dest,
            None,
            flags & (MsFlags::MS_BIND | MsFlags::MS_REC),
            None,
        ),
    }
    .map_err(|e| match e {
        Error::Sys { errno, .. } => Error::Sys {
            op: format!("binding {} on {}", src.display(), dest.display()),
            errno,
        },
        other => other,
    })?;
    // A bind mount takes its other flags only on a remount.
    let rest = flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
    if rest.is_empty() {
        return Ok(());
    }
    mnt_at(
        root,
        dest,
        None,
        None,
        rest | MsFlags::MS_BIND | MsFlags::MS_REMOUNT,
        None,
    )
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

fn nodes(spec: &Spec) -> Result<Vec<Node>> {
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
    Ok(nodes)
}

fn create_devices(spec: &Spec, root: &Root) -> Result<()> {
    root.make(Path::new("/dev"), Leaf::Dir)?;
    for node in nodes(spec)? {
        let (dir, name) = root.parent(&node.path)?;
        // Whatever the image put there goes, a symlink included (removed, not followed).
        let _ = nix::unistd::unlinkat(
            &dir,
            name.as_os_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
        if in_user_namespace() {
            // mknod is not allowed there: the host's node, bound onto an empty file.
            root.make(&node.path, Leaf::File)?;
            mnt_at(
                root,
                &node.path,
                Some(&node.path),
                None,
                MsFlags::MS_BIND,
                None,
            )?;
        } else {
            make_node(&dir, &name, &node)?;
        }
    }
    Ok(())
}

/// mknodat in the in-root directory `dir`, with the spec's mode exactly (the umask is
/// cleared around the call; the init is single-threaded) and owner.
fn make_node(dir: &OwnedFd, name: &OsStr, node: &Node) -> Result<()> {
    let old = nix::sys::stat::umask(Mode::empty());
    let made = mknodat(
        dir,
        name,
        node.kind,
        Mode::from_bits_truncate(node.mode),
        makedev(node.major, node.minor),
    );
    nix::sys::stat::umask(old);
    made.map_err(in_root(&node.path, "mknod"))?;
    if node.uid.is_some() || node.gid.is_some() {
        nix::unistd::fchownat(
            dir,
            name,
            node.uid.map(nix::unistd::Uid::from_raw),
            node.gid.map(nix::unistd::Gid::from_raw),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(in_root(&node.path, "chown"))?;
    }
    Ok(())
}

/// /dev/fd, stdin, stdout, stderr, ptmx and core, as every container expects them,
/// made in the in-root /dev; what the image already has there stays.
fn dev_symlinks(root: &Root) -> Result<()> {
    let dev = root.open_in(Path::new("/dev"))?;
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
        ("core", "/proc/kcore"),
    ] {
        match nix::unistd::symlinkat(target, dev.as_fd(), link) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(in_root(&Path::new("/dev").join(link), "symlink")(e)),
        }
    }
    Ok(())
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

/// Masked paths (runtime-spec linux.maskedPaths), after pivot_root: a directory gets an
/// empty read-only tmpfs, a file /dev/null over it; what does not exist is skipped.
/// Resolved in the new root too, so no magic link can point them elsewhere.
pub fn mask(paths: &[String]) -> Result<()> {
    let root = Root::open(Path::new("/"))?;
    for p in paths {
        let path = Path::new(p);
        let fd = match root.resolve(path) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::ENOENT) => continue,
            Err(e) => return Err(in_root(path, "resolving")(e)),
        };
        if is_dir(&fd) {
            mount_fd(
                Some(Path::new("tmpfs")),
                &fd,
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None,
            )?;
        } else {
            let null = root.open_in(Path::new("/dev/null"))?;
            mount_fd(
                Some(&fd_path(&null)),
                &fd,
                path,
                None,
                MsFlags::MS_BIND,
                None,
            )?;
        }
    }
    Ok(())
}

/// Read-only paths, after pivot_root: bound onto themselves, then remounted read-only.
pub fn read_only(paths: &[String]) -> Result<()> {
    let root = Root::open(Path::new("/"))?;
    for p in paths {
        let path = Path::new(p);
        let fd = match root.resolve(path) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::ENOENT) => continue,
            Err(e) => return Err(in_root(path, "resolving")(e)),
        };
        // Read-only and otherwise as the mount was (runc keeps its flags too).
        mnt_at(
            &root,
            path,
            Some(&fd_path(&fd)),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        let kept = locked_flags(nix::sys::statvfs::fstatvfs(&fd));
        let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | kept;
        mnt_at(&root, path, None, None, ro, None)?;
    }
    Ok(())
}

/// `src` bound (recursively) on `dest` in `root`, then remounted read-only, nosuid,
/// nodev, noexec: the host's /sys or cgroup tree standing in for a mount the container
/// may not make.
fn bind_read_only(root: &Root, src: &Path, dest: &Path) -> Result<()> {
    mnt_at(
        root,
        dest,
        Some(src),
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
    mnt_at(root, dest, None, None, ro, None)
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
    fn the_mount_under_a_path_is_the_deepest_and_topmost() {
        let info = concat!(
            "22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n",
            "30 22 0:26 / /srv rw shared:5 - tmpfs tmpfs rw\n",
            "31 30 0:27 / /srv rw - tmpfs tmpfs rw\n",
            "32 22 0:28 / /srv/my\\040box rw shared:7 master:2 - tmpfs tmpfs rw\n",
            "33 22 0:29 / /srvx rw shared:9 - tmpfs tmpfs rw\n",
        );
        let of = |p: &str| mount_of(info, Path::new(p));
        assert_eq!(of("/srv/a/rootfs"), Some((PathBuf::from("/srv"), false)));
        assert_eq!(
            of("/srv/my box/rootfs"),
            Some((PathBuf::from("/srv/my box"), true))
        );
        assert_eq!(of("/srvx"), Some((PathBuf::from("/srvx"), true)));
        assert_eq!(of("/var/lib"), Some((PathBuf::from("/"), true)));
    }
}
