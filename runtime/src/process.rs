//! The container process's own settings, applied in its init just before exec:
//! rlimits, oom_score_adj, no_new_privs, capabilities, user and groups, umask, cwd, and
//! the program resolved against the container's PATH.

use std::collections::HashSet;
use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability};
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{LinuxCapabilities, Process};

use crate::error::{config, io, sys, Error, Result};

pub fn rlimits(process: &Process) -> Result<()> {
    for r in process.rlimits().as_deref().unwrap_or_default() {
        let resource = rlimit_resource(&format!("{:?}", r.typ()))?;
        nix::sys::resource::setrlimit(resource, r.soft(), r.hard()).map_err(sys(format!(
            "setrlimit {:?} {}/{}",
            r.typ(),
            r.soft(),
            r.hard()
        )))?;
    }
    Ok(())
}

fn rlimit_resource(name: &str) -> Result<nix::sys::resource::Resource> {
    use nix::sys::resource::Resource as R;
    // oci-spec's variant names (RlimitNofile...) to the kernel's resources.
    Ok(
        match name.to_ascii_uppercase().trim_start_matches("RLIMIT") {
            "AS" => R::RLIMIT_AS,
            "CORE" => R::RLIMIT_CORE,
            "CPU" => R::RLIMIT_CPU,
            "DATA" => R::RLIMIT_DATA,
            "FSIZE" => R::RLIMIT_FSIZE,
            "LOCKS" => R::RLIMIT_LOCKS,
            "MEMLOCK" => R::RLIMIT_MEMLOCK,
            "MSGQUEUE" => R::RLIMIT_MSGQUEUE,
            "NICE" => R::RLIMIT_NICE,
            "NOFILE" => R::RLIMIT_NOFILE,
            "NPROC" => R::RLIMIT_NPROC,
            "RSS" => R::RLIMIT_RSS,
            "RTPRIO" => R::RLIMIT_RTPRIO,
            "RTTIME" => R::RLIMIT_RTTIME,
            "SIGPENDING" => R::RLIMIT_SIGPENDING,
            "STACK" => R::RLIMIT_STACK,
            other => {
                return Err(config(
                    "process.rlimits.type",
                    format!("{other} is not an rlimit"),
                ))
            }
        },
    )
}

pub fn oom_score_adj(process: &Process) -> Result<()> {
    if let Some(adj) = process.oom_score_adj() {
        let path = Path::new("/proc/self/oom_score_adj");
        std::fs::write(path, adj.to_string()).map_err(io(path))?;
    }
    Ok(())
}

fn cap_set(
    list: &Option<oci_spec::runtime::Capabilities>,
    field: &str,
) -> Result<HashSet<Capability>> {
    let mut out = HashSet::new();
    for c in list.iter().flatten() {
        let name = serde_json::to_value(c)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let cap: Capability = name.parse().map_err(|_| {
            config(
                field,
                format!("{name} is not a capability this runtime knows"),
            )
        })?;
        out.insert(cap);
    }
    Ok(out)
}

/// Drops from the bounding set what the spec does not keep. Done while still uid 0.
pub fn bounding(caps: Option<&LinuxCapabilities>) -> Result<()> {
    let Some(c) = caps else { return Ok(()) };
    let keep = cap_set(c.bounding(), "process.capabilities.bounding")?;
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| Error::Setup(format!("dropping {cap} from the bounding set: {e}")))?;
        }
    }
    Ok(())
}

/// The user and groups, keeping capabilities across the uid change (PR_SET_KEEPCAPS) so
/// `capabilities` decides what remains.
pub fn user(process: &Process) -> Result<()> {
    let u = process.user();
    let groups: Vec<Gid> = u
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| Gid::from_raw(*g))
        .collect();
    nix::sys::prctl::set_keepcaps(true).map_err(sys("prctl(PR_SET_KEEPCAPS)"))?;
    nix::unistd::setgroups(&groups).map_err(sys("setgroups"))?;
    let gid = Gid::from_raw(u.gid());
    nix::unistd::setresgid(gid, gid, gid).map_err(sys(format!("setresgid {gid}")))?;
    let uid = Uid::from_raw(u.uid());
    nix::unistd::setresuid(uid, uid, uid).map_err(sys(format!("setresuid {uid}")))?;
    nix::sys::prctl::set_keepcaps(false).map_err(sys("prctl(PR_SET_KEEPCAPS)"))?;
    if let Some(mask) = u.umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    }
    Ok(())
}

/// Effective, permitted, inheritable, ambient: in that order, so each set stays within
/// the one the kernel checks it against.
pub fn capabilities(caps: Option<&LinuxCapabilities>) -> Result<()> {
    let Some(c) = caps else {
        // No capabilities object: the process gets none (runtime-spec).
        for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
            caps::clear(None, set)
                .map_err(|e| Error::Setup(format!("clearing capabilities: {e}")))?;
        }
        return Ok(());
    };
    let permitted = cap_set(c.permitted(), "process.capabilities.permitted")?;
    let inheritable = cap_set(c.inheritable(), "process.capabilities.inheritable")?;
    let ambient = raisable_ambient(
        &cap_set(c.ambient(), "process.capabilities.ambient")?,
        &permitted,
        &inheritable,
    );
    let steps = [
        (
            CapSet::Effective,
            cap_set(c.effective(), "process.capabilities.effective")?,
        ),
        (CapSet::Permitted, permitted),
        (CapSet::Inheritable, inheritable),
        (CapSet::Ambient, ambient),
    ];
    for (set, want) in steps {
        caps::set(None, set, &want)
            .map_err(|e| Error::Setup(format!("setting the {set:?} capabilities: {e}")))?;
    }
    Ok(())
}

/// The ambient capabilities the kernel can raise: those also permitted and inheritable
/// (capabilities(7), PR_CAP_AMBIENT_RAISE). The others are left out, as runc leaves
/// them: `runc spec` lists ambient capabilities and no inheritable ones, and making them
/// inheritable would hand them to any program whose file grants them (why runc stopped
/// setting inheritable, CVE-2022-29162). `create` warns about them (`unraisable_ambient`).
fn raisable_ambient(
    ambient: &HashSet<Capability>,
    permitted: &HashSet<Capability>,
    inheritable: &HashSet<Capability>,
) -> HashSet<Capability> {
    ambient
        .iter()
        .filter(|a| permitted.contains(a) && inheritable.contains(a))
        .copied()
        .collect()
}

/// The ambient capabilities listed that will not be raised, sorted by name, for
/// `create`'s warning (on the runtime's stderr, not the container's).
pub fn unraisable_ambient(process: &Process) -> Result<Vec<String>> {
    let Some(c) = process.capabilities() else {
        return Ok(Vec::new());
    };
    let ambient = cap_set(c.ambient(), "process.capabilities.ambient")?;
    let permitted = cap_set(c.permitted(), "process.capabilities.permitted")?;
    let inheritable = cap_set(c.inheritable(), "process.capabilities.inheritable")?;
    let raised = raisable_ambient(&ambient, &permitted, &inheritable);
    let mut left: Vec<String> = ambient
        .difference(&raised)
        .map(ToString::to_string)
        .collect();
    left.sort();
    Ok(left)
}

pub fn no_new_privileges(process: &Process) -> Result<()> {
    if process.no_new_privileges() == Some(true) {
        nix::sys::prctl::set_no_new_privs().map_err(sys("prctl(PR_SET_NO_NEW_PRIVS)"))?;
    }
    Ok(())
}

/// The last steps before the program, shared by a container's init and `exec`:
/// no_new_privs, capabilities and the seccomp filter, then exec. The program is
/// resolved and its arguments built first, so that the filter sees as few of the
/// runtime's own calls as possible (seccomp_unotify aside, a filter cannot be lifted).
///
/// With no_new_privs the filter goes in last, after the capabilities, so only execve
/// (and the seccomp calls that stack the profile's further programs) follows it.
/// Without, the kernel wants CAP_SYS_ADMIN (seccomp(2), EACCES) and the user change has
/// cleared the effective set: CAP_SYS_ADMIN is raised again from the permitted set
/// (kept by PR_SET_KEEPCAPS) for the install, and the capabilities set afterwards.
/// Then capget/capset, prctl(PR_CAP_AMBIENT) and execve follow the filter: a profile
/// that denies those cannot start a program that keeps privileges, as with runc (which
/// installs it earlier still).
pub fn finish_and_exec(
    program: Program,
    process: &Process,
    seccomp: &[seccompiler::BpfProgram],
) -> Result<std::convert::Infallible> {
    let caps = process.capabilities().as_ref();
    no_new_privileges(process)?;
    if process.no_new_privileges() == Some(true) {
        capabilities(caps)?;
        crate::seccomp::install(seccomp)?;
    } else {
        if !seccomp.is_empty() {
            hold_sys_admin()?;
        }
        crate::seccomp::install(seccomp)?;
        capabilities(caps)?;
    }
    program.exec()
}

/// CAP_SYS_ADMIN back into the effective set: a change from uid 0 to another user
/// empties it even with PR_SET_KEEPCAPS (capabilities(7), "Effect of user ID changes
/// on capabilities"), the permitted set still holds it.
fn hold_sys_admin() -> Result<()> {
    caps::raise(None, CapSet::Effective, Capability::CAP_SYS_ADMIN).map_err(|e| {
        Error::Setup(format!(
            "raising CAP_SYS_ADMIN to install the seccomp filter: {e}"
        ))
    })
}

/// `args[0]` as execve needs it: a path (which must be an executable file), or looked
/// up in the container's PATH.
pub fn resolve(program: &str, env: &[String]) -> Result<PathBuf> {
    if program.contains('/') {
        let path = PathBuf::from(program);
        let meta = std::fs::metadata(&path).map_err(io(&path))?;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            return Err(Error::Setup(format!(
                "{program}: not an executable file in the container"
            )));
        }
        return Ok(path);
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| {
            Error::Setup(format!(
                "{program}: not found in the container's PATH ({path})"
            ))
        })
}

/// The program, its arguments and environment as execve takes them, resolved while the
/// runtime still listens (`create` fails on a program that is not there, as runc's does).
pub struct Program {
    path: PathBuf,
    c_path: CString,
    args: Vec<CString>,
    env: Vec<CString>,
}

impl Program {
    /// Resolves the program in the container's PATH and resets SIGPIPE: everything
    /// exec needs but execve itself.
    pub fn prepare(process: &Process) -> Result<Self> {
        let args = process.args().clone().unwrap_or_default();
        let program = args
            .first()
            .ok_or_else(|| config("process.args", "is empty"))?;
        let env = process.env().clone().unwrap_or_default();
        let path = resolve(program, &env)?;
        let cstr = |s: &str| {
            CString::new(s).map_err(|_| config("process", format!("{s:?} holds a NUL byte")))
        };
        let c_path = cstr(&path.to_string_lossy())?;
        let args = args.iter().map(|a| cstr(a)).collect::<Result<Vec<_>>>()?;
        let env = env.iter().map(|e| cstr(e)).collect::<Result<Vec<_>>>()?;
        crate::sys::default_sigpipe().map_err(sys("resetting SIGPIPE"))?;
        Ok(Program {
            path,
            c_path,
            args,
            env,
        })
    }

    fn exec(self) -> Result<std::convert::Infallible> {
        nix::unistd::execve(&self.c_path, &self.args, &self.env)
            .map_err(sys(format!("exec {}", self.path.display())))
    }
}
