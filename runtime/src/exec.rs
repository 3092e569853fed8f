//! `exec`: another process in a running container (what `podman exec` and conmon call):
//! it joins the container init's namespaces and cgroup, takes the process settings
//! (from `--process FILE`, an OCI process document, or the command line), and execs.
//!
//! Joining a pid namespace only applies to children, so the runtime forks twice: the
//! middle process joins the namespaces and forks the one that execs, reports its pid
//! and exits. The runtime is a child subreaper, so it can wait for the process when
//! not detached. The pid and any error before exec come back as typed messages
//! (`handshake`) over a close-on-exec socket pair.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{ForkResult, Pid};
use oci_spec::runtime::Process;

use crate::error::{config, io, sys, Error, Result};
use crate::handshake::{at, Channel, Failure, HandshakeError, Message, Stage, STEP_TIMEOUT};
use crate::state::{Saved, Status};
use crate::{cgroup, process};

pub struct ExecOptions<'a> {
    pub root: &'a Path,
    pub id: &'a str,
    pub process_file: Option<&'a Path>,
    /// The command when there is no process file.
    pub args: &'a [String],
    pub env: &'a [String],
    pub cwd: Option<&'a Path>,
    pub tty: bool,
    pub console_socket: Option<&'a Path>,
    pub detach: bool,
    pub pid_file: Option<&'a Path>,
}

/// The namespaces a process joins, in a workable order: user first (the others belong
/// to it), mount last, so the others' /proc paths still resolve on the host.
const NAMESPACES: [(&str, CloneFlags); 7] = [
    ("user", CloneFlags::CLONE_NEWUSER),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

fn load_process(opts: &ExecOptions<'_>, saved: &Saved) -> Result<Process> {
    if let Some(path) = opts.process_file {
        let text = std::fs::read(path).map_err(io(path))?;
        return serde_json::from_slice(&text).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            source: e,
        });
    }
    if opts.args.is_empty() {
        return Err(config("exec", "no command and no --process"));
    }
    // The container's own process settings, with this command.
    let spec = crate::container::load_spec(&saved.bundle)?;
    let mut p = spec
        .process()
        .clone()
        .ok_or_else(|| config("process", "missing"))?;
    p.set_args(Some(opts.args.to_vec()));
    p.set_terminal(Some(opts.tty));
    let mut env = p.env().clone().unwrap_or_default();
    env.extend(opts.env.iter().cloned());
    p.set_env(Some(env));
    if let Some(cwd) = opts.cwd {
        p.set_cwd(cwd.to_path_buf());
    }
    Ok(p)
}

/// Returns the exit code to leave with (0 when detached).
pub fn exec(opts: &ExecOptions<'_>) -> Result<i32> {
    let saved = Saved::load(opts.root, opts.id)?;
    let status = saved.status(opts.root);
    // A created container too, as runc allows: its init holds the namespaces and the
    // root while it waits for `start` (berthctl debug's containers are never started).
    if status != Status::Running && status != Status::Created {
        return Err(Error::WrongState {
            id: opts.id.into(),
            status: status.as_str(),
            action: "exec",
            needed: "created or running",
        });
    }
    let process = load_process(opts, &saved)?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(config("process.args", "missing or empty"));
    }
    let spec = crate::container::load_spec(&saved.bundle)?;
    let seccomp = crate::seccomp::for_spec(&spec)?;
    let labels = crate::lsm::Labels::for_process(&process, crate::lsm::Host::probe())?;
    // The host's /proc, for the labels: the process sets them in its own attr files.
    let proc = labels.open_host_proc()?;
    let outside = Outside {
        seccomp: &seccomp,
        labels: &labels,
        proc: proc.as_ref(),
    };
    // Open the namespaces now: once the middle process has joined the mount namespace,
    // the host's /proc/PID paths are gone.
    let mut nss: Vec<(OwnedFd, CloneFlags)> = Vec::new();
    for (name, flag) in NAMESPACES {
        let ours = std::fs::read_link(format!("/proc/self/ns/{name}")).ok();
        let path = PathBuf::from(format!("/proc/{}/ns/{name}", saved.pid));
        let theirs = std::fs::read_link(&path).map_err(io(&path))?;
        if ours.as_ref() == Some(&theirs) {
            continue; // shared with the host: nothing to join
        }
        let fd = nix::fcntl::open(&path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(sys(format!("opening {}", path.display())))?;
        nss.push((fd, flag));
    }
    nix::sys::prctl::set_child_subreaper(true).map_err(sys("prctl(PR_SET_CHILD_SUBREAPER)"))?;
    let (mut parent_end, mut child_end) = Channel::pair().map_err(handshake_error)?;
    // SAFETY: the runtime is single-threaded (it never starts a thread), as fork needs.
    match unsafe { crate::sys::fork() }.map_err(sys("fork"))? {
        ForkResult::Child => {
            drop(parent_end);
            let failure = match middle(opts, &saved, &process, &nss, &outside, &mut child_end) {
                Ok(never) => match never {},
                Err(f) => f,
            };
            // Both the middle process and the one it forked hold this end.
            let _ = failure.report(&mut child_end);
            std::process::exit(1);
        }
        ForkResult::Parent { child } => {
            drop(child_end);
            let (pid, failed) = collect_reports(&mut parent_end);
            let _ = waitpid(child, None);
            if let Some(e) = failed {
                if let Some(p) = pid {
                    // A broken handshake may leave it waiting: it must not outlive us.
                    if !matches!(e, Error::Init { .. }) {
                        let _ = kill(p, Signal::SIGKILL);
                    }
                    let _ = waitpid(p, None);
                }
                return Err(e);
            }
            let pid = pid
                .ok_or_else(|| Error::Setup("the exec'd process was not started".into()))?
                .as_raw();
            if let Some(pf) = opts.pid_file {
                std::fs::write(pf, pid.to_string()).map_err(io(pf))?;
            }
            if opts.detach {
                return Ok(0);
            }
            Ok(match waitpid(Pid::from_raw(pid), None) {
                Ok(WaitStatus::Exited(_, c)) => c,
                Ok(WaitStatus::Signaled(_, s, _)) => 128 + s as i32,
                _ => 255,
            })
        }
    }
}

fn handshake_error(source: HandshakeError) -> Error {
    Error::Handshake {
        peer: "exec's child processes",
        source,
    }
}

/// Reads until both children have closed the channel (the middle process exits, the
/// process execs): the process's pid, and the first failure reported or met.
fn collect_reports(chan: &mut Channel) -> (Option<Pid>, Option<Error>) {
    let mut pid = None;
    loop {
        let failed = match chan.recv_or_eof(STEP_TIMEOUT) {
            Ok(None) => return (pid, None),
            Ok(Some(Message::Pid { pid: p })) if pid.is_none() && p > 0 => {
                pid = Some(Pid::from_raw(p));
                continue;
            }
            Ok(Some(msg)) => match crate::handshake::reported(msg) {
                Err(e) => e,
                Ok(other) => handshake_error(HandshakeError::Unexpected {
                    got: other.kind(),
                    wanted: "pid or error",
                }),
            },
            Err(e) => handshake_error(e),
        };
        return (pid, Some(failed));
    }
}

/// What the process takes from the runtime, prepared on the host's side.
struct Outside<'a> {
    seccomp: &'a [seccompiler::BpfProgram],
    labels: &'a crate::lsm::Labels,
    /// The host's /proc when there are labels to set.
    proc: Option<&'a OwnedFd>,
}

/// The middle process: joins, forks the process, reports its pid, exits.
fn middle(
    opts: &ExecOptions<'_>,
    saved: &Saved,
    process: &Process,
    nss: &[(OwnedFd, CloneFlags)],
    outside: &Outside<'_>,
    chan: &mut Channel,
) -> std::result::Result<std::convert::Infallible, Failure> {
    let console = join(opts, saved, process, nss).map_err(at(Stage::Joining))?;
    // SAFETY: still single-threaded: this is the first fork's child, which starts no
    // thread either.
    match unsafe { crate::sys::fork() }
        .map_err(sys("fork"))
        .map_err(at(Stage::Joining))?
    {
        ForkResult::Parent { child } => {
            chan.send(&Message::Pid {
                pid: child.as_raw(),
            })
            .map_err(handshake_error)
            .map_err(at(Stage::Joining))?;
            std::process::exit(0);
        }
        ForkResult::Child => run_process(process, console, outside).map_err(at(Stage::Process)),
    }
}

/// The container's cgroup, the console socket (opened from the host), its namespaces.
fn join(
    opts: &ExecOptions<'_>,
    saved: &Saved,
    process: &Process,
    nss: &[(OwnedFd, CloneFlags)],
) -> Result<Option<std::os::unix::net::UnixStream>> {
    if let Some(cg) = &saved.cgroup {
        cgroup::add(cg, i32::try_from(std::process::id()).unwrap_or(0))?;
    }
    let console = match (process.terminal() == Some(true), opts.console_socket) {
        (true, Some(path)) => Some(crate::console::connect(path)?),
        (true, None) => return Err(config("process.terminal", "needs --console-socket")),
        (false, _) => None,
    };
    for (fd, flag) in nss {
        nix::sched::setns(fd, *flag).map_err(sys(format!("setns({flag:?})")))?;
    }
    Ok(console)
}

fn run_process(
    process: &Process,
    console: Option<std::os::unix::net::UnixStream>,
    outside: &Outside<'_>,
) -> Result<std::convert::Infallible> {
    nix::unistd::setsid().map_err(sys("setsid"))?;
    if let Some(proc) = outside.proc {
        outside.labels.apply(std::os::fd::AsFd::as_fd(proc))?;
    }
    process::rlimits(process)?;
    process::oom_score_adj(process)?;
    let caps = process.capabilities().as_ref();
    process::bounding(caps)?;
    process::user(process)?;
    if let Some(socket) = console {
        crate::console::setup(socket, process.console_size().as_ref())?;
    }
    let cwd = process.cwd();
    nix::unistd::chdir(cwd).map_err(sys(format!("chdir {}", cwd.display())))?;
    let program = process::Program::prepare(process)?;
    process::finish_and_exec(program, process, outside.seccomp)
}
