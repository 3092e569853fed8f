//! The runtime's unsafe calls, each with its reason.

use nix::errno::Errno;
use nix::unistd::ForkResult;

/// fork(2), for a child that goes on to allocate and use std until it execs.
///
/// # Safety
///
/// The calling process must be single-threaded: a lock (the allocator's, stdio's, the
/// environment's) held by another thread at the fork stays held forever in the child,
/// which would then deadlock on its first use. The runtime never starts a thread, so
/// every caller in this crate meets this; a caller that does not must exec or `_exit`
/// at once in the child, touching nothing else.
pub unsafe fn fork() -> Result<ForkResult, Errno> {
    // SAFETY: the caller guarantees a single-threaded process (see # Safety), so no
    // lock can be held by a thread the child does not have.
    unsafe { nix::unistd::fork() }
}

/// Restores SIGPIPE's default action before exec (Rust's runtime ignores it, and an
/// ignored signal stays ignored across exec).
pub fn default_sigpipe() -> Result<(), Errno> {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: SIG_DFL installs no handler code.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }.map(|_| ())
}

/// seccomp(SECCOMP_SET_MODE_FILTER, 0, prog): our own call rather than seccompiler's
/// apply_filter, which would also force no_new_privs (crates.md) where the config may
/// not ask for it.
pub fn seccomp_set_filter(program: &[seccompiler::sock_filter]) -> Result<(), Errno> {
    let len = u16::try_from(program.len()).map_err(|_| Errno::E2BIG)?;
    let prog = libc::sock_fprog {
        len,
        filter: program.as_ptr().cast_mut().cast::<libc::sock_filter>(),
    };
    // SAFETY: `prog` points at `program`, a valid BPF program that outlives the call;
    // seccompiler's sock_filter has libc's layout (u16 code, u8 jt, u8 jf, u32 k).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            std::ptr::from_ref(&prog),
        )
    };
    Errno::result(rc).map(|_| ())
}

/// Makes `fd` (a terminal) the calling session leader's controlling terminal.
pub fn set_controlling_tty(fd: std::os::fd::BorrowedFd<'_>) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    // SAFETY: TIOCSCTTY takes an int argument (0: do not steal); `fd` is open.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) };
    Errno::result(rc).map(|_| ())
}

/// Sets a terminal's size (TIOCSWINSZ).
pub fn set_window_size(fd: std::os::fd::BorrowedFd<'_>, rows: u16, cols: u16) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize`, which lives across the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, std::ptr::from_ref(&ws)) };
    Errno::result(rc).map(|_| ())
}

/// `fd` as stdin, stdout and stderr.
pub fn onto_stdio(fd: std::os::fd::BorrowedFd<'_>) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    for target in 0..3 {
        // SAFETY: dup2 onto the standard descriptors, which this process owns; `fd` is open.
        let rc = unsafe { libc::dup2(fd.as_raw_fd(), target) };
        Errno::result(rc)?;
    }
    Ok(())
}

/// Marks a process already running from its sealed copy.
pub const SEALED_ENV: &str = "_BERTH_RUNTIME_SEALED";

/// Re-executes the runtime so that no process a container can see runs from a binary
/// it could write through /proc/PID/exe (CVE-2019-5736). Skipped when the binary sits
/// on a read-only mount (Berth's verified root). Otherwise, from a detached read-only
/// clone of the binary's mount (open_tree + mount_setattr: no copy, the page cache is
/// shared, and nothing appears in any mount table), or where that is refused, from a
/// sealed memfd copy. Returns only when it did not re-execute.
pub fn reexec_read_only() -> Result<(), Errno> {
    if std::env::var_os(SEALED_ENV).is_some() {
        return Ok(());
    }
    let exe = std::path::Path::new("/proc/self/exe");
    let st = nix::sys::statvfs::statvfs(exe)?;
    if st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY) {
        return Ok(());
    }
    let args: Vec<std::ffi::CString> = std::env::args_os()
        .filter_map(|a| {
            std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(a.as_os_str())).ok()
        })
        .collect();
    let mut env: Vec<std::ffi::CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.into_encoded_bytes();
            kv.push(b'=');
            kv.extend(v.into_encoded_bytes());
            std::ffi::CString::new(kv).ok()
        })
        .collect();
    env.push(c"_BERTH_RUNTIME_SEALED=1".to_owned());
    if let Ok(fd) = read_only_clone(exe) {
        // On success this does not return; on failure, the copy below.
        let _ = nix::unistd::fexecve(&fd, &args, &env);
    }
    let fd = sealed_copy(exe)?;
    nix::unistd::fexecve(&fd, &args, &env)?;
    Ok(())
}

/// struct mount_attr (linux/mount.h), for mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_ATTR_RDONLY: u64 = 1;

/// An O_PATH descriptor of `file` on a detached, read-only clone of its mount.
fn read_only_clone(file: &std::path::Path) -> Result<std::os::fd::OwnedFd, Errno> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let path = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(file.as_os_str()))
        .map_err(|_| Errno::EINVAL)?;
    // SAFETY: open_tree(2) reads the NUL-terminated path, which outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    let fd = i32::try_from(Errno::result(rc)?).map_err(|_| Errno::EBADF)?;
    // SAFETY: open_tree returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr(2) reads one mount_attr, which lives across the call; the
    // empty path with AT_EMPTY_PATH means the descriptor's own mount.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            std::ptr::from_ref(&attr),
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(rc)?;
    Ok(fd)
}

const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x04;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;

/// A detached copy of the mount tree at `path` (of the mounts below it too when
/// `recursive`), as open_tree(OPEN_TREE_CLONE) makes it: it holds the very directory
/// `path` named when it was called, and can be attached in another mount namespace.
pub fn clone_tree(path: &std::path::Path, recursive: bool) -> Result<std::os::fd::OwnedFd, Errno> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let cpath = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
        .map_err(|_| Errno::EINVAL)?;
    let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    // SAFETY: open_tree(2) reads the NUL-terminated path, which outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, cpath.as_ptr(), flags) };
    let fd = i32::try_from(Errno::result(rc)?).map_err(|_| Errno::EBADF)?;
    // SAFETY: open_tree returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Attaches the detached tree `tree` (from [`clone_tree`]) on what `target` (an
/// O_PATH descriptor) holds: move_mount(2) with both paths empty, so nothing is
/// resolved by name.
pub fn attach_tree(
    tree: std::os::fd::BorrowedFd<'_>,
    target: std::os::fd::BorrowedFd<'_>,
) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    // SAFETY: move_mount(2) reads two NUL-terminated (empty) paths, static here; the
    // descriptors are open for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    Errno::result(rc).map(|_| ())
}

/// A sealed memfd copy of `file`.
fn sealed_copy(file: &std::path::Path) -> Result<std::os::fd::OwnedFd, Errno> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let fd = memfd_create(
        c"berth-runtime",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let mut src =
        std::fs::File::open(file).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
    let mut dst = std::fs::File::from(fd);
    std::io::copy(&mut src, &mut dst)
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
    let seals = SealFlag::F_SEAL_SEAL
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_WRITE;
    fcntl(&dst, FcntlArg::F_ADD_SEALS(seals))?;
    Ok(dst.into())
}

/// fork(2) that also creates the namespaces in `flags` (CLONE_NEWUSER, CLONE_NEWPID)
/// for the child, so a new pid namespace is owned by a new user namespace created in
/// the same call (the container's root may then mount its /proc).
///
/// # Safety
///
/// As for [`fork`]: the calling process must be single-threaded. Here glibc's fork
/// handlers do not run either, so no atfork handler may be registered.
pub unsafe fn fork_into(flags: nix::sched::CloneFlags) -> Result<ForkResult, Errno> {
    if flags.is_empty() {
        // SAFETY: the caller guarantees a single-threaded process, as `fork` needs.
        return unsafe { fork() };
    }
    // SAFETY: the caller guarantees a single-threaded process. clone(2) with no stack, no tid pointers and SIGCHLD behaves as fork(2),
    // plus the namespace flags. glibc's fork handlers do not run: no thread or atfork
    // handler exists in this process, and glibc (>= 2.34) asks the kernel for the
    // thread id where it needs it rather than trusting its cached copy.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::c_long::from(flags.bits()) | libc::c_long::from(libc::SIGCHLD),
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        )
    };
    match Errno::result(rc)? {
        0 => Ok(ForkResult::Child),
        pid => Ok(ForkResult::Parent {
            child: nix::unistd::Pid::from_raw(i32::try_from(pid).map_err(|_| Errno::EOVERFLOW)?),
        }),
    }
}

/// bpf(2) command numbers, program and attach types, flags (linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The head of `union bpf_attr` for BPF_PROG_LOAD (the kernel zero-fills the rest).
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

/// `union bpf_attr` for BPF_PROG_ATTACH.
#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &T) -> Result<libc::c_long, Errno> {
    // SAFETY: `attr` is a #[repr(C)] prefix of union bpf_attr for `cmd`, alive across
    // the call; its size is passed, so the kernel reads no further.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_ref(attr),
            std::mem::size_of::<T>(),
        )
    };
    Errno::result(rc)
}

/// Loads a BPF_PROG_TYPE_CGROUP_DEVICE program. On failure, the verifier's log.
pub fn load_device_program(
    insns: &[crate::devices::Insn],
) -> Result<std::os::fd::OwnedFd, (Errno, String)> {
    use std::os::fd::FromRawFd;
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(insns.len()).map_err(|_| (Errno::E2BIG, String::new()))?,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
    };
    let fd = match bpf(BPF_PROG_LOAD, &attr) {
        Ok(fd) => fd,
        Err(e) => {
            // Again with the verifier's log, to say why.
            attr.log_level = 1;
            attr.log_size = u32::try_from(log.len()).unwrap_or(0);
            attr.log_buf = log.as_mut_ptr() as u64;
            let _ = bpf(BPF_PROG_LOAD, &attr);
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            return Err((e, String::from_utf8_lossy(&log[..end]).trim().to_string()));
        }
    };
    let fd = i32::try_from(fd).map_err(|_| (Errno::EBADF, String::new()))?;
    // SAFETY: BPF_PROG_LOAD returned a new descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Attaches a device program to a cgroup directory (alongside any on its ancestors,
/// which must all allow too). The cgroup keeps the program once the fds are closed.
pub fn attach_device_program(
    cgroup: std::os::fd::BorrowedFd<'_>,
    prog: std::os::fd::BorrowedFd<'_>,
) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    let attr = ProgAttachAttr {
        target_fd: u32::try_from(cgroup.as_raw_fd()).map_err(|_| Errno::EBADF)?,
        attach_bpf_fd: u32::try_from(prog.as_raw_fd()).map_err(|_| Errno::EBADF)?,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    bpf(BPF_PROG_ATTACH, &attr).map(|_| ())
}
