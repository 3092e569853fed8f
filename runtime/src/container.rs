//! The OCI lifecycle (runtime-spec "Lifecycle"): create, start, state, kill, delete.
//!
//! `create` forks the container's init: it enters its namespaces, builds its root, and
//! then blocks opening `<root>/<id>/exec.fifo` for writing. `start` opens the FIFO for
//! reading, which lets it exec the program; the FIFO's removal marks it running. The
//! two processes lead each other through the setup with typed messages (`handshake`):
//! the parent learns of any setup error with its stage and message, removes what it
//! made, and exits non-zero.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{ForkResult, Pid};
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, Spec};

use crate::error::{config, io, sys, Error, Result};
use crate::handshake::{at, Channel, Failure, HandshakeError, Message, Stage, STEP_TIMEOUT};
use crate::state::{self, Saved, Status, EXEC_FIFO};
use crate::{cgroup, mounts, process};

pub struct CreateOptions<'a> {
    pub root: &'a Path,
    pub id: &'a str,
    pub bundle: &'a Path,
    pub pid_file: Option<&'a Path>,
    pub systemd_cgroup: bool,
    /// No cgroup at all (podman --cgroups=disabled); resources are then refused.
    pub no_cgroup: bool,
    /// Where to send the terminal's master side when process.terminal is set.
    pub console_socket: Option<&'a Path>,
}

/// The bundle's config.json, checked for what this runtime cannot do.
pub fn load_spec(bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    // serde_json directly (not Spec::load) for its line and column in errors.
    let text = std::fs::read(&path).map_err(io(&path))?;
    let spec: Spec = serde_json::from_slice(&text).map_err(|e| Error::Json {
        path: path.clone(),
        source: e,
    })?;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| config("process", "missing"))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(config("process.args", "missing or empty"));
    }
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| config("root", "missing"))?;
    let rootfs = bundle.join(root.path());
    if !rootfs.is_dir() {
        return Err(config(
            "root.path",
            format!("{} is not a directory", rootfs.display()),
        ));
    }
    let nss = namespaces(&spec);
    if nss.iter().any(|n| n.typ() == LinuxNamespaceType::Time) {
        return Err(Error::Unsupported(
            "linux.namespaces: time namespaces are not supported yet".into(),
        ));
    }
    if nss
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_none())
    {
        check_id_mappings(&spec)?;
    }
    Ok(spec)
}

/// A new user namespace needs uid and gid mappings that give it a root (the
/// container's init becomes uid 0 in it to build its mounts).
fn check_id_mappings(spec: &Spec) -> Result<()> {
    let linux = spec.linux().as_ref();
    for (key, maps) in [
        (
            "linux.uidMappings",
            linux.and_then(|l| l.uid_mappings().as_deref()),
        ),
        (
            "linux.gidMappings",
            linux.and_then(|l| l.gid_mappings().as_deref()),
        ),
    ] {
        let maps = maps.unwrap_or_default();
        if maps.is_empty() {
            return Err(config(key, "a new user namespace needs mappings"));
        }
        if maps.iter().any(|m| m.size() == 0) {
            return Err(config(key, "a mapping of size 0"));
        }
        if !maps.iter().any(|m| m.container_id() == 0) {
            return Err(config(key, "container id 0 (root) is not mapped"));
        }
    }
    Ok(())
}

/// Writes a new user namespace's maps (user_namespaces(7): one write per file, lines
/// of "inside outside count"). The runtime, root in the parent namespace, may map any
/// ids and keep setgroups allowed.
fn write_id_mappings(pid: i32, spec: &Spec) -> Result<()> {
    let linux = spec.linux().as_ref();
    for (file, maps) in [
        ("uid_map", linux.and_then(|l| l.uid_mappings().as_deref())),
        ("gid_map", linux.and_then(|l| l.gid_mappings().as_deref())),
    ] {
        let text: String = maps
            .unwrap_or_default()
            .iter()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect();
        let path = PathBuf::from(format!("/proc/{pid}/{file}"));
        std::fs::write(&path, text).map_err(io(&path))?;
    }
    Ok(())
}

fn namespaces(spec: &Spec) -> &[LinuxNamespace] {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_deref())
        .unwrap_or_default()
}

fn clone_flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => CloneFlags::empty(),
    }
}

/// The namespace's name under /proc/PID/ns.
fn proc_name(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

/// Joins, in the runtime itself, the namespaces given by path that its child should be
/// born in: pid (which applies only to children) and net, ipc, uts, cgroup (which a
/// child in a new user namespace would no longer have the right to join). Returns the
/// runtime's own, to go back to right after the fork.
fn join_for_fork(nss: &[LinuxNamespace]) -> Result<Vec<(OwnedFd, CloneFlags)>> {
    let mut own = Vec::new();
    for ns in nss.iter().filter(|n| n.path().is_some()).filter(|n| {
        !matches!(
            n.typ(),
            LinuxNamespaceType::Mount | LinuxNamespaceType::User
        )
    }) {
        let path = format!("/proc/self/ns/{}", proc_name(ns.typ()));
        let fd = nix::fcntl::open(
            path.as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys(format!("opening {path}")));
        let joined = fd.and_then(|fd| join(ns).map(|()| fd));
        match joined {
            Ok(fd) => own.push((fd, clone_flag(ns.typ()))),
            Err(e) => {
                return_to(&own);
                return Err(e);
            }
        }
    }
    Ok(own)
}

fn return_to(own: &[(OwnedFd, CloneFlags)]) {
    for (fd, flag) in own {
        if let Err(e) = nix::sched::setns(fd, *flag) {
            eprintln!("berth-runtime: warning: returning to the runtime's {flag:?}: {e}");
        }
    }
}

fn join(ns: &LinuxNamespace) -> Result<()> {
    let Some(path) = ns.path() else { return Ok(()) };
    let fd = nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(sys(format!("opening namespace {}", path.display())))?;
    nix::sched::setns(fd, clone_flag(ns.typ()))
        .map_err(sys(format!("joining namespace {}", path.display())))
}

/// Now as RFC 3339 UTC with nanoseconds (the OCI state's `created`, as runc writes it).
pub fn now_rfc3339() -> String {
    berth_schema::time::now_rfc3339()
}

/// `create`: returns the container init's pid once it waits for `start`.
pub fn create(opts: &CreateOptions<'_>) -> Result<i32> {
    state::check_id(opts.id)?;
    let bundle = std::fs::canonicalize(opts.bundle).map_err(io(opts.bundle))?;
    let spec = load_spec(&bundle)?;
    let rootfs = bundle.join(
        spec.root()
            .as_ref()
            .map(|r| r.path().clone())
            .unwrap_or_default(),
    );
    let rootfs = std::fs::canonicalize(&rootfs).map_err(io(&rootfs))?;
    let cgroup_dir = cgroup::plan(&spec, opts.id, opts.systemd_cgroup, opts.no_cgroup)?;
    std::fs::create_dir_all(opts.root).map_err(io(opts.root))?;
    let dir = state::dir(opts.root, opts.id);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Error::Exists(opts.id.to_string()))
        }
        Err(e) => return Err(io(&dir)(e)),
    }
    let result = create_in(opts, &spec, &bundle, &rootfs, cgroup_dir.as_deref(), &dir);
    if result.is_err() {
        if let Some(cg) = &cgroup_dir {
            cgroup::remove(cg);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn create_in(
    opts: &CreateOptions<'_>,
    spec: &Spec,
    bundle: &Path,
    rootfs: &Path,
    cgroup_dir: Option<&Path>,
    dir: &Path,
) -> Result<i32> {
    let fifo = make_exec_fifo(dir)?;
    if let Some(cg) = cgroup_dir {
        let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
        cgroup::create(cg, resources)?;
    }
    // Compiled here, so a bad profile fails `create` before anything runs.
    let seccomp = crate::seccomp::for_spec(spec)?;
    let labels = crate::lsm::Labels::for_container(spec, crate::lsm::Host::probe())?;
    if let Some(p) = spec.process() {
        let left = process::unraisable_ambient(p)?;
        if !left.is_empty() {
            eprintln!(
                "berth-runtime: warning: process.capabilities.ambient {}: not raised, not both permitted and inheritable",
                left.join(", ")
            );
        }
    }
    let (parent_end, child_end) = Channel::pair().map_err(handshake_error)?;
    let nss = namespaces(spec);
    let fork_flags = fork_flags(nss);
    let trees = pinned_bind_trees(spec)?;
    let own_namespaces = join_for_fork(nss)?;
    // SAFETY: the runtime is single-threaded (it never starts a thread) and registers
    // no atfork handler, as fork_into needs.
    let forked =
        unsafe { crate::sys::fork_into(fork_flags) }.map_err(sys(format!("clone({fork_flags:?})")));
    if !matches!(forked, Ok(ForkResult::Child)) {
        return_to(&own_namespaces);
    }
    match forked? {
        ForkResult::Child => {
            drop(parent_end);
            let init = Init {
                spec,
                rootfs,
                trees: &trees,
                fifo: &fifo,
                seccomp: &seccomp,
                labels: &labels,
                console_socket: opts.console_socket,
            };
            init_main(&init, child_end)
        }
        ForkResult::Parent { child } => {
            drop(child_end);
            let launched = Launched {
                opts,
                spec,
                bundle,
                child,
                fork_flags,
                cgroup_dir,
            };
            launched.await_ready(parent_end)?;
            // An init whose state cannot be saved would wait on the FIFO forever.
            record_created(opts, spec, bundle, rootfs, cgroup_dir, child.as_raw())
                .inspect_err(|_| launched.abandon())
        }
    }
}

/// `<dir>/exec.fifo`, which the container's init opens to wait for `start`.
fn make_exec_fifo(dir: &Path) -> Result<PathBuf> {
    let fifo = dir.join(EXEC_FIFO);
    nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o622))
        .map_err(sys(format!("mkfifo {}", fifo.display())))?;
    // Writable by the container's user (it opens it after dropping to that user), as
    // runc's is; only root can read it, which is what `start` does. Set past the umask.
    std::fs::set_permissions(&fifo, std::os::unix::fs::PermissionsExt::from_mode(0o622))
        .map_err(io(&fifo))?;
    Ok(fifo)
}

/// New pid and user namespaces come with the fork (the pid namespace then belongs to
/// the user namespace); namespaces given by path are joined around it.
fn fork_flags(nss: &[LinuxNamespace]) -> CloneFlags {
    let new = |t| nss.iter().any(|n| n.typ() == t && n.path().is_none());
    let mut flags = CloneFlags::empty();
    if new(LinuxNamespaceType::Pid) {
        flags |= CloneFlags::CLONE_NEWPID;
    }
    if new(LinuxNamespaceType::User) {
        flags |= CloneFlags::CLONE_NEWUSER;
    }
    flags
}

/// Bind sources are pinned here, in the runtime's mount namespace (see bind_trees).
/// Not for a user namespace: a tree cloned by the host's root is not the container
/// root's to attach; its init mounts by path.
fn pinned_bind_trees(spec: &Spec) -> Result<Vec<Option<OwnedFd>>> {
    if namespaces(spec)
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::User)
    {
        return Ok(Vec::new());
    }
    mounts::bind_trees(spec)
}

/// The handshake with a container's init broke: its going away without a word is
/// said as such.
fn handshake_error(e: HandshakeError) -> Error {
    match e {
        HandshakeError::Closed => Error::Setup("the container's init died".into()),
        source => Error::Handshake {
            peer: "the container's init",
            source,
        },
    }
}

/// How long the runtime and the init wait for each other across `hooks`: the step's
/// own bound plus each hook's timeout.
fn step_timeout(hooks: Option<&Vec<oci_spec::runtime::Hook>>) -> Duration {
    hooks
        .into_iter()
        .flatten()
        .filter_map(|h| h.timeout())
        .filter_map(|t| u64::try_from(t).ok())
        .fold(STEP_TIMEOUT, |d, t| {
            d.saturating_add(Duration::from_secs(t))
        })
}

/// The runtime's side of a container init it just forked.
struct Launched<'a> {
    opts: &'a CreateOptions<'a>,
    spec: &'a Spec,
    bundle: &'a Path,
    child: Pid,
    fork_flags: CloneFlags,
    cgroup_dir: Option<&'a Path>,
}

impl Launched<'_> {
    /// Leads the init through its setup until it waits for `start`; on any failure the
    /// init is killed and reaped.
    fn await_ready(&self, mut chan: Channel) -> Result<()> {
        let result = self.handshake(&mut chan);
        if result.is_err() {
            self.abandon();
        }
        result
    }

    /// Kills and reaps the init: `create` failed after the fork.
    fn abandon(&self) {
        let _ = kill(self.child, Signal::SIGKILL);
        let _ = waitpid(self.child, None);
    }

    fn handshake(&self, chan: &mut Channel) -> Result<()> {
        self.place()?;
        send_to_init(chan, &Message::Go)?;
        let hooks = self.spec.hooks().as_ref();
        expect_from_init(chan, &Message::Namespaces, STEP_TIMEOUT)?;
        // Its namespaces exist: the runtime's hooks run now, in the runtime's
        // namespaces, with the container's state on stdin.
        let state = hook_state(
            self.opts.id,
            self.child.as_raw(),
            self.bundle,
            self.spec,
            Status::Created,
        );
        run_runtime_hooks(hooks, &state)?;
        send_to_init(chan, &Message::HookState { state })?;
        let wait = step_timeout(hooks.and_then(|h| h.create_container().as_ref()));
        expect_from_init(chan, &Message::Ready, wait)
    }

    /// Writes a new user namespace's id maps and puts the init in its cgroup.
    fn place(&self) -> Result<()> {
        let pid = self.child.as_raw();
        if self.fork_flags.contains(CloneFlags::CLONE_NEWUSER) {
            write_id_mappings(pid, self.spec)?;
        }
        self.cgroup_dir.map_or(Ok(()), |cg| cgroup::add(cg, pid))
    }
}

/// Sends to the init. A failed write (it died) is not the error to report: its own
/// report, or its silence, is read next.
fn send_to_init(chan: &mut Channel, msg: &Message) -> Result<()> {
    match chan.send(msg) {
        Ok(()) | Err(HandshakeError::Io { .. }) => Ok(()),
        Err(e) => Err(handshake_error(e)),
    }
}

/// Reads the init's next message, which must be `wanted` (its error, when it failed).
fn expect_from_init(chan: &mut Channel, wanted: &Message, wait: Duration) -> Result<()> {
    let got = chan.recv(wait).map_err(handshake_error)?;
    match crate::handshake::reported(got)? {
        got if got == *wanted => Ok(()),
        got => Err(handshake_error(HandshakeError::Unexpected {
            got: got.kind(),
            wanted: wanted.kind(),
        })),
    }
}

/// prestart (deprecated, same moment) then createRuntime, in the runtime.
fn run_runtime_hooks(hooks: Option<&oci_spec::runtime::Hooks>, state: &str) -> Result<()> {
    let Some(h) = hooks else { return Ok(()) };
    crate::hooks::run(
        "prestart",
        h.prestart().as_deref().unwrap_or_default(),
        state,
    )?;
    crate::hooks::run(
        "createRuntime",
        h.create_runtime().as_deref().unwrap_or_default(),
        state,
    )
}

/// Saves the created container's state (and its pid file): it now waits for `start`.
fn record_created(
    opts: &CreateOptions<'_>,
    spec: &Spec,
    bundle: &Path,
    rootfs: &Path,
    cgroup_dir: Option<&Path>,
    pid: i32,
) -> Result<i32> {
    let annotations: BTreeMap<String, String> = spec
        .annotations()
        .clone()
        .map(|a| a.into_iter().collect())
        .unwrap_or_default();
    let saved = Saved {
        id: opts.id.to_string(),
        pid,
        pid_start_time: state::start_time(pid).unwrap_or(0),
        bundle: bundle.to_path_buf(),
        rootfs: rootfs.to_path_buf(),
        created: now_rfc3339(),
        annotations,
        cgroup: cgroup_dir.map(Path::to_path_buf),
    };
    saved.save(opts.root)?;
    if let Some(pf) = opts.pid_file {
        std::fs::write(pf, pid.to_string()).map_err(io(pf))?;
    }
    Ok(pid)
}

/// The OCI state document for hooks.
fn hook_state(id: &str, pid: i32, bundle: &Path, spec: &Spec, status: Status) -> String {
    let annotations: BTreeMap<String, String> = spec
        .annotations()
        .clone()
        .map(|a| a.into_iter().collect())
        .unwrap_or_default();
    serde_json::json!({
        "ociVersion": oci_spec::runtime::VERSION,
        "id": id,
        "status": status.as_str(),
        "pid": pid,
        "bundle": bundle,
        "annotations": annotations,
    })
    .to_string()
}

/// What the container's init works from, between fork and exec.
struct Init<'a> {
    spec: &'a Spec,
    rootfs: &'a Path,
    trees: &'a [Option<OwnedFd>],
    fifo: &'a Path,
    seccomp: &'a [seccompiler::BpfProgram],
    labels: &'a crate::lsm::Labels,
    console_socket: Option<&'a Path>,
}

/// The container's init: sets up and execs, or reports why not and exits.
fn init_main(init: &Init<'_>, mut chan: Channel) -> ! {
    let failure = match child(init, &mut chan) {
        Ok(never) => match never {},
        Err(f) => f,
    };
    // Before "ready" the runtime reads this and reports it, after it `start` does;
    // when neither could be told, only the container's stderr can.
    let told = if started_waiting() {
        TOLD_START.load(std::sync::atomic::Ordering::SeqCst)
    } else {
        failure.report(&mut chan)
    };
    if !told {
        eprintln!("berth-runtime: container init: {}", failure.error);
    }
    std::process::exit(1);
}

/// The init's steps, in order, each failure tagged with its stage. Reports `Ready` on
/// `chan` (kept open until exec closes it) once it waits for `start`.
fn child(init: &Init<'_>, chan: &mut Channel) -> std::result::Result<Infallible, Failure> {
    let spec = init.spec;
    let outside = open_outside(init).map_err(at(Stage::Waiting))?;
    // Wait until the runtime has written our id maps and put us in our cgroup.
    expect_from_runtime(chan, &Message::Go).map_err(at(Stage::Waiting))?;
    enter_namespaces(spec).map_err(at(Stage::Namespaces))?;
    // The runtime's hooks (prestart, createRuntime) run now, in the runtime; it then
    // sends the state for ours.
    let hooks_state = hook_state_from_runtime(chan, spec).map_err(at(Stage::Namespaces))?;
    let hooks = spec.hooks().as_ref();
    if let Some(h) = hooks {
        // In the container's namespaces, before pivot_root (paths resolve in the runtime's).
        crate::hooks::run(
            "createContainer",
            h.create_container().as_deref().unwrap_or_default(),
            &hooks_state,
        )
        .map_err(at(Stage::Hooks))?;
    }
    build_root(spec, init.rootfs, init.trees).map_err(at(Stage::Rootfs))?;
    if let Some(proc) = &outside.proc {
        // For the exec; set while the runtime listens, so a profile that is not loaded
        // fails `create`.
        init.labels
            .apply(std::os::fd::AsFd::as_fd(proc))
            .map_err(at(Stage::Process))?;
    }
    set_up_process(outside.process, outside.console).map_err(at(Stage::Process))?;
    // A program that is not there fails `create`, while the runtime listens.
    let program = process::Program::prepare(outside.process).map_err(at(Stage::Process))?;
    // Set up: tell the runtime, then wait for `start`.
    chan.send(&Message::Ready)
        .map_err(|source| Error::Handshake {
            peer: "the runtime",
            source,
        })
        .map_err(at(Stage::Process))?;
    WAITING.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut started = wait_for_start(&outside.fifo, &outside.own_fds).map_err(at(Stage::Exec))?;
    let failure = match after_start(init, outside.process, program, &hooks_state) {
        Ok(never) => match never {},
        Err(f) => f,
    };
    // `start` reads the FIFO until the exec closes it: what failed is its error.
    if let Ok(line) = failure.message().encode() {
        if started.write_all(&line).is_ok() {
            TOLD_START.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    Err(failure)
}

/// From `start` to the program: the startContainer hooks, then the process's last
/// settings and the exec.
fn after_start(
    init: &Init<'_>,
    process: &oci_spec::runtime::Process,
    program: process::Program,
    hooks_state: &str,
) -> std::result::Result<Infallible, Failure> {
    if let Some(h) = init.spec.hooks() {
        // After start, in the container (paths resolve in it), before the program.
        crate::hooks::run(
            "startContainer",
            h.start_container().as_deref().unwrap_or_default(),
            hooks_state,
        )
        .map_err(at(Stage::Exec))?;
    }
    process::finish_and_exec(program, process, init.seccomp).map_err(at(Stage::Exec))
}

/// What the init opens before it changes namespaces or user.
struct Outside<'a> {
    fifo: OwnedFd,
    /// This process's /proc/self/fd, from the host's /proc: the FIFO is reopened for
    /// writing through it. Without a mount namespace the init only chroots, and the
    /// rootfs has no /proc (or, worse, one the image made).
    own_fds: OwnedFd,
    /// The host's /proc when the process has security labels to set.
    proc: Option<OwnedFd>,
    process: &'a oci_spec::runtime::Process,
    console: Option<std::os::unix::net::UnixStream>,
}

/// Paths outside the rootfs are opened first, while this process is still the host's
/// root (in a new user namespace, its root is an unprivileged host user). The FIFO is
/// reachable by path only from the host's root: hold it before pivoting.
fn open_outside<'a>(init: &Init<'a>) -> Result<Outside<'a>> {
    let fifo = nix::fcntl::open(init.fifo, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(sys(format!("opening {}", init.fifo.display())))?;
    let own_fds = nix::fcntl::open(
        "/proc/self/fd",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys("opening /proc/self/fd"))?;
    let proc = init.labels.open_host_proc()?;
    let process = init
        .spec
        .process()
        .as_ref()
        .ok_or_else(|| config("process", "missing"))?;
    let console = match (process.terminal() == Some(true), init.console_socket) {
        (true, Some(path)) => Some(crate::console::connect(path)?),
        (true, None) => return Err(config("process.terminal", "needs --console-socket")),
        (false, _) => None,
    };
    Ok(Outside {
        fifo,
        own_fds,
        proc,
        process,
        console,
    })
}

/// The runtime's next message, within `wait`.
fn recv_from_runtime(chan: &mut Channel, wait: Duration) -> Result<Message> {
    chan.recv(wait).map_err(|e| match e {
        HandshakeError::Closed => Error::Setup("the runtime went away".into()),
        source => Error::Handshake {
            peer: "the runtime",
            source,
        },
    })
}

fn out_of_order(got: &Message, wanted: &'static str) -> Error {
    Error::Handshake {
        peer: "the runtime",
        source: HandshakeError::Unexpected {
            got: got.kind(),
            wanted,
        },
    }
}

/// The runtime's next message, which must be `wanted`.
fn expect_from_runtime(chan: &mut Channel, wanted: &Message) -> Result<()> {
    match recv_from_runtime(chan, STEP_TIMEOUT)? {
        got if got == *wanted => Ok(()),
        got => Err(out_of_order(&got, wanted.kind())),
    }
}

/// Says the namespaces exist and waits (through the runtime's hooks) for the state
/// document of the container's own hooks.
fn hook_state_from_runtime(chan: &mut Channel, spec: &Spec) -> Result<String> {
    chan.send(&Message::Namespaces)
        .map_err(|source| Error::Handshake {
            peer: "the runtime",
            source,
        })?;
    let hooks = spec.hooks().as_ref();
    let wait = step_timeout(hooks.and_then(|h| h.prestart().as_ref()))
        + step_timeout(hooks.and_then(|h| h.create_runtime().as_ref()));
    match recv_from_runtime(chan, wait)? {
        Message::HookState { state } => Ok(state),
        got => Err(out_of_order(&got, "hook-state")),
    }
}

/// A new session, then the spec's namespaces: the user namespace first (the init
/// takes its root), then the mount namespace given by path, then new ones.
fn enter_namespaces(spec: &Spec) -> Result<()> {
    nix::unistd::setsid().map_err(sys("setsid"))?;
    let nss = namespaces(spec);
    if let Some(user) = nss.iter().find(|n| n.typ() == LinuxNamespaceType::User) {
        join(user)?;
        become_namespace_root()?;
        mounts::set_in_user_namespace();
    }
    let mut unshare = CloneFlags::empty();
    for ns in nss
        .iter()
        .filter(|n| !matches!(n.typ(), LinuxNamespaceType::Pid | LinuxNamespaceType::User))
    {
        match ns.path() {
            Some(_) if ns.typ() == LinuxNamespaceType::Mount => join(ns)?,
            Some(_) => {} // joined by the parent before the fork
            None => unshare |= clone_flag(ns.typ()),
        }
    }
    nix::sched::unshare(unshare).map_err(sys(format!("unshare({unshare:?})")))
}

/// The container's root (pivoted in its own mount namespace, else a chroot), its
/// sysctls, domain and host names.
fn build_root(spec: &Spec, rootfs: &Path, trees: &[Option<OwnedFd>]) -> Result<()> {
    let nss = namespaces(spec);
    let has = |t| nss.iter().any(|n: &LinuxNamespace| n.typ() == t);
    if has(LinuxNamespaceType::Mount) {
        pivot_into(spec, rootfs, trees, has(LinuxNamespaceType::Uts))?;
    } else {
        nix::unistd::chroot(rootfs).map_err(sys("chroot"))?;
        nix::unistd::chdir("/").map_err(sys("chdir /"))?;
        sysctls(spec)?;
        set_domainname(spec, has(LinuxNamespaceType::Uts))?;
    }
    if let Some(name) = spec.hostname() {
        if !has(LinuxNamespaceType::Uts) {
            return Err(config("hostname", "needs a uts namespace"));
        }
        nix::unistd::sethostname(name).map_err(sys(format!("sethostname {name}")))?;
    }
    Ok(())
}

/// Mounts the rootfs and pivots into it, then the settings that need /proc/sys
/// writable, then read-only and masked paths (runc's order) and a read-only root.
fn pivot_into(spec: &Spec, rootfs: &Path, trees: &[Option<OwnedFd>], uts: bool) -> Result<()> {
    mounts::prepare_rootfs(spec, rootfs, trees)?;
    mounts::pivot(rootfs)?;
    // Before /proc/sys turns read-only below.
    sysctls(spec)?;
    set_domainname(spec, uts)?;
    let linux = spec.linux().as_ref();
    mounts::read_only(
        linux
            .and_then(|l| l.readonly_paths().as_deref())
            .unwrap_or_default(),
    )?;
    mounts::mask(
        linux
            .and_then(|l| l.masked_paths().as_deref())
            .unwrap_or_default(),
    )?;
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        mounts::root_read_only()?;
    }
    // Last: masking and read-only paths bind, which an unbindable `/` would refuse.
    mounts::apply_root_propagation(spec)
}

/// The process's limits, capabilities, user and cwd, then its terminal.
fn set_up_process(
    process: &oci_spec::runtime::Process,
    console: Option<std::os::unix::net::UnixStream>,
) -> Result<()> {
    process::rlimits(process)?;
    process::oom_score_adj(process)?;
    let caps = process.capabilities().as_ref();
    process::bounding(caps)?;
    process::user(process)?;
    let cwd = process.cwd();
    nix::unistd::chdir(cwd).map_err(sys(format!("chdir {}", cwd.display())))?;
    if let Some(socket) = console {
        crate::console::setup(socket, process.console_size().as_ref())?;
    }
    Ok(())
}

/// Opening the FIFO for writing blocks until `start` opens it for reading. It is
/// reopened from its O_PATH descriptor through `own_fds` (this process's fd directory,
/// opened before any chroot or pivot), so nothing here resolves in the container's root.
/// The write end stays open, close-on-exec: `start` reads until the exec closes it, and
/// reads the error of any step that fails before.
fn wait_for_start(fifo: &OwnedFd, own_fds: &OwnedFd) -> Result<std::fs::File> {
    let name = fifo.as_raw_fd().to_string();
    let fifo_w = nix::fcntl::openat(
        own_fds,
        name.as_str(),
        OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys(format!(
        "reopening the exec FIFO (/proc/self/fd/{name})"
    )))?;
    let mut started = std::fs::File::from(fifo_w);
    started
        .write_all(START_BYTE)
        .map_err(|e| Error::Setup(format!("writing to the exec FIFO: {e}")))?;
    Ok(started)
}

/// What the init writes into the exec FIFO as soon as `start` opened it.
const START_BYTE: &[u8] = b"0";

/// In a user namespace, the container's init takes its root (uid and gid 0, no
/// supplementary groups) before it builds mounts: what it creates there must belong
/// to an id the namespace maps.
fn become_namespace_root() -> Result<()> {
    use nix::unistd::{Gid, Uid};
    let root_gid = Gid::from_raw(0);
    let root_uid = Uid::from_raw(0);
    nix::unistd::setresgid(root_gid, root_gid, root_gid)
        .map_err(sys("setresgid 0 in the user namespace (is gid 0 mapped?)"))?;
    nix::unistd::setresuid(root_uid, root_uid, root_uid)
        .map_err(sys("setresuid 0 in the user namespace (is uid 0 mapped?)"))?;
    // A joined namespace may have setgroups denied; then there are none to drop.
    match nix::unistd::setgroups(&[]) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => Ok(()),
        Err(e) => Err(sys("setgroups in the user namespace")(e)),
    }
}

fn sysctls(spec: &Spec) -> Result<()> {
    for (key, value) in spec
        .linux()
        .as_ref()
        .and_then(|l| l.sysctl().clone())
        .unwrap_or_default()
    {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        std::fs::write(&path, value).map_err(io(&path))?;
    }
    Ok(())
}

/// Set in the container's init once it sent `Ready`: later errors go to `start`.
static WAITING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Set once a failure after `start` was written into the exec FIFO for `start` to report.
static TOLD_START: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn started_waiting() -> bool {
    WAITING.load(std::sync::atomic::Ordering::SeqCst)
}

/// spec.domainname, through /proc/sys (written before /proc/sys may turn read-only).
fn set_domainname(spec: &Spec, uts: bool) -> Result<()> {
    let Some(name) = spec.domainname() else {
        return Ok(());
    };
    if !uts {
        return Err(config("domainname", "needs a uts namespace"));
    }
    let path = Path::new("/proc/sys/kernel/domainname");
    std::fs::write(path, name).map_err(io(path))
}

/// Opens the exec FIFO for reading (which lets the init go on) and reads what the init
/// writes until its exec closes the FIFO. Non-blocking with a poll, so an init that dies
/// before it opens its end is noticed instead of waited for; bounded in bytes.
fn read_start(fifo: &Path, saved: &Saved) -> Result<Vec<u8>> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let fd = nix::fcntl::open(
        fifo,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys(format!("opening {}", fifo.display())))?;
    let mut f = std::fs::File::from(fd);
    let limit = START_BYTE.len() + crate::handshake::MAX_MESSAGE;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match f.read(&mut chunk) {
            // Linux reports no hang-up before a writer ever opened the FIFO
            // (pipe(7)), so end of file here is the init's end closed.
            Ok(0) if !buf.is_empty() => return Ok(buf),
            Ok(0) => {}
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > limit {
                    return Err(Error::Setup(format!(
                        "the container's init wrote over {limit} bytes into the exec FIFO"
                    )));
                }
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(io(fifo)(e)),
        }
        if !saved.alive() {
            return Ok(buf);
        }
        let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(&f), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(100u8)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(sys("poll on the exec FIFO")(e)),
        }
    }
}

/// What the init wrote: the start byte alone when its program runs, followed by its
/// error when a step after `start` failed.
fn started(said: &[u8]) -> Result<()> {
    let Some(rest) = said.strip_prefix(START_BYTE) else {
        return Err(Error::Setup(
            "the container's init exited before it could start".into(),
        ));
    };
    if rest.is_empty() {
        return Ok(());
    }
    let line = rest.strip_suffix(b"\n").unwrap_or(rest);
    let msg = Message::decode(line).map_err(handshake_error)?;
    crate::handshake::reported(msg).map(|_| ())?;
    Err(handshake_error(HandshakeError::Unexpected {
        got: "a message",
        wanted: "nothing after the start byte",
    }))
}

/// `start`: lets a created container exec its program.
pub fn start(root: &Path, id: &str) -> Result<()> {
    let saved = Saved::load(root, id)?;
    let status = saved.status(root);
    if status != Status::Created {
        return Err(Error::WrongState {
            id: id.into(),
            status: status.as_str(),
            action: "start",
            needed: "created",
        });
    }
    let fifo = state::dir(root, id).join(EXEC_FIFO);
    let said = read_start(&fifo, &saved);
    std::fs::remove_file(&fifo).map_err(io(&fifo))?;
    if let Err(e) = started(&said?) {
        // The init exits right after its report: once `start` has said so, the
        // container is `stopped` to whoever asks next (delete, state).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while saved.alive() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        return Err(e);
    }
    // poststart: failures are warnings; the container runs on (runtime-spec).
    if let Ok(spec) = load_spec(&saved.bundle) {
        if let Some(h) = spec.hooks() {
            let st = hook_state(id, saved.pid, &saved.bundle, &spec, Status::Running);
            let hooks = h.poststart().as_deref().unwrap_or_default();
            if let Err(e) = crate::hooks::run("poststart", hooks, &st) {
                eprintln!("berth-runtime: warning: {e}");
            }
        }
    }
    Ok(())
}

pub fn parse_signal(text: &str) -> Result<Signal> {
    let t = text.trim();
    if let Ok(n) = t.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| config("signal", format!("{n} is not a signal")));
    }
    let upper = t.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map_err(|_| config("signal", format!("{text:?} is not a signal name")))
}

/// `kill`: a signal to the container's init (or, with `all`, every process in its cgroup).
pub fn kill_container(root: &Path, id: &str, signal: Signal, all: bool) -> Result<()> {
    let saved = Saved::load(root, id)?;
    let status = saved.status(root);
    if status == Status::Stopped {
        return Err(Error::WrongState {
            id: id.into(),
            status: status.as_str(),
            action: "kill",
            needed: "created or running",
        });
    }
    let mut pids = vec![saved.pid];
    if all {
        if let Some(cg) = &saved.cgroup {
            pids.extend(cgroup::pids(cg));
        }
    }
    pids.sort_unstable();
    pids.dedup();
    for p in pids {
        match kill(Pid::from_raw(p), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => return Err(sys(format!("kill {p} {signal}"))(e)),
        }
    }
    Ok(())
}

/// `delete`: removes a stopped container (with `force`, kills it first).
pub fn delete(root: &Path, id: &str, force: bool) -> Result<()> {
    let saved = match Saved::load(root, id) {
        Ok(s) => s,
        Err(Error::NotFound(_)) if force => return Ok(()),
        Err(e) => return Err(e),
    };
    let status = saved.status(root);
    if status != Status::Stopped {
        if !force && status == Status::Running {
            return Err(Error::WrongState {
                id: id.into(),
                status: status.as_str(),
                action: "delete",
                needed: "stopped (or --force)",
            });
        }
        let _ = kill(Pid::from_raw(saved.pid), Signal::SIGKILL);
        for _ in 0..200 {
            if !saved.alive() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    if let Some(cg) = &saved.cgroup {
        cgroup::remove(cg);
    }
    let dir = state::dir(root, id);
    std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    // poststop: after the container is gone; failures are warnings (runtime-spec).
    if let Ok(spec) = load_spec(&saved.bundle) {
        if let Some(h) = spec.hooks() {
            let st = hook_state(id, 0, &saved.bundle, &spec, Status::Stopped);
            if let Err(e) =
                crate::hooks::run("poststop", h.poststop().as_deref().unwrap_or_default(), &st)
            {
                eprintln!("berth-runtime: warning: {e}");
            }
        }
    }
    Ok(())
}

/// `run`: create, start, and wait; the container's exit code (128+signal if killed).
/// An OOM kill is said on stderr (the cgroup's memory.events counts it).
pub fn run(opts: &CreateOptions<'_>) -> Result<i32> {
    let pid = Pid::from_raw(create(opts)?);
    let started = start(opts.root, opts.id);
    let code = match waitpid(pid, None) {
        Ok(WaitStatus::Exited(_, c)) => c,
        Ok(WaitStatus::Signaled(_, s, _)) => 128 + s as i32,
        _ => 255,
    };
    if let Ok(saved) = Saved::load(opts.root, opts.id) {
        if let Some(n) = saved
            .cgroup
            .as_deref()
            .and_then(cgroup::oom_kills)
            .filter(|n| *n > 0)
        {
            eprintln!(
                "berth-runtime: container {} hit its memory limit: {n} process(es) OOM-killed",
                opts.id
            );
        }
    }
    let _ = delete(opts.root, opts.id, true);
    started.map(|()| code)
}

/// `ps`: the container's processes (its cgroup's, or without one every process in its
/// pid namespace), host pids, sorted.
pub fn processes(root: &Path, id: &str) -> Result<Vec<i32>> {
    let saved = Saved::load(root, id)?;
    if saved.status(root) == Status::Stopped {
        return Ok(Vec::new());
    }
    let mut pids = match &saved.cgroup {
        Some(cg) => cgroup::pids(cg),
        None => {
            let ns = std::fs::read_link(format!("/proc/{}/ns/pid", saved.pid)).ok();
            std::fs::read_dir("/proc")
                .map_err(io("/proc"))?
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|p| {
                    ns.is_some() && std::fs::read_link(format!("/proc/{p}/ns/pid")).ok() == ns
                })
                .collect()
        }
    };
    pids.sort_unstable();
    Ok(pids)
}
