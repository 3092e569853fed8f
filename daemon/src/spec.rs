//! A declaration and its image's config into an OCI runtime config (`config.json`),
//! with what `docker run` gives a container by default: its capability set, the default
//! seccomp profile, the standard mounts, masked and read-only paths, device rules.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::declaration::{Declaration, Network, Volume};

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("container {name}: {problem}")]
    Invalid { name: String, problem: String },
}

/// What the daemon adds from outside the declaration.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub rootfs: PathBuf,
    /// cgroup path below /sys/fs/cgroup.
    pub cgroup: Option<String>,
    /// A network namespace to join (bridge networking), else one of its own or none.
    pub netns: Option<PathBuf>,
    /// Files the daemon writes for the container, bound read-only at these targets
    /// (/etc/resolv.conf, /etc/hosts, /etc/hostname).
    pub etc_files: Vec<(PathBuf, &'static str)>,
    /// Named volumes resolved to their host directories (`volumes::prepare`: paths of
    /// descriptors the daemon holds).
    pub volume_dirs: BTreeMap<String, PathBuf>,
    /// Bind sources as declared, to what the runtime mounts instead: the source
    /// resolved without following symlinks and pinned (`volumes::prepare`). A bind
    /// source missing here is refused, never mounted by its declared path.
    pub bind_sources: BTreeMap<PathBuf, PathBuf>,
    /// RLIMIT_NOFILE for the container (soft = hard), as docker passes its own: the
    /// daemon's hard limit. None: inherited.
    pub nofile: Option<u64>,
}

/// The user a process runs as: numbers, from `user` resolved in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// `user` ("uid", "uid:gid", "name", "name:group") against the image's /etc/passwd and
/// /etc/group (their text, if the image has them).
pub fn resolve_user(user: &str, passwd: &str, group: &str) -> Result<User, String> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let entry = |text: &str, name: &str| -> Option<Vec<String>> {
        text.lines()
            .map(|l| l.split(':').map(str::to_string).collect::<Vec<_>>())
            .find(|f| {
                f.first().map(String::as_str) == Some(name)
                    || f.get(2).map(String::as_str) == Some(name)
            })
    };
    let (uid, primary) = match u.parse::<u32>() {
        Ok(n) => (
            n,
            entry(passwd, u)
                .and_then(|f| f.get(3)?.parse().ok())
                .unwrap_or(0),
        ),
        Err(_) => {
            let f = entry(passwd, u)
                .ok_or_else(|| format!("no user {u:?} in the image's /etc/passwd"))?;
            let uid = f
                .get(2)
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("bad /etc/passwd entry for {u:?}"))?;
            let gid = f
                .get(3)
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("bad /etc/passwd entry for {u:?}"))?;
            (uid, gid)
        }
    };
    let gid = match g {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => entry(group, g)
                .and_then(|f| f.get(2)?.parse().ok())
                .ok_or_else(|| format!("no group {g:?} in the image's /etc/group"))?,
        },
    };
    // Supplementary groups: those listing the user by name.
    let name = entry(passwd, u).and_then(|f| f.first().cloned());
    let mut additional: Vec<u32> = match &name {
        Some(n) => group
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .filter(|f| f.get(3).is_some_and(|m| m.split(',').any(|x| x == n)))
            .filter_map(|f| f.get(2)?.parse().ok())
            .filter(|g| *g != gid)
            .collect(),
        None => Vec::new(),
    };
    additional.sort_unstable();
    additional.dedup();
    Ok(User {
        uid,
        gid,
        additional_gids: additional,
    })
}

/// The process's argv, as docker combines them: a declared entrypoint replaces the
/// image's and drops its Cmd; a declared command replaces the image's Cmd.
pub fn argv(decl: &Declaration, image: &Value) -> Vec<String> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (entry, cmd) = match &decl.entrypoint {
        Some(e) => (e.clone(), decl.command.clone().unwrap_or_default()),
        None => (
            strings(&image["Entrypoint"]),
            decl.command
                .clone()
                .unwrap_or_else(|| strings(&image["Cmd"])),
        ),
    };
    entry.into_iter().chain(cmd).collect()
}

/// The environment: the image's, the declaration's over it, PATH and HOSTNAME if unset.
pub fn environment(decl: &Declaration, image: &Value, hostname: &str) -> Vec<String> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut set = |k: &str, v: &str, env: &mut BTreeMap<String, String>| {
        if env.insert(k.to_string(), v.to_string()).is_none() {
            order.push(k.to_string());
        }
    };
    set(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        &mut env,
    );
    set("HOSTNAME", hostname, &mut env);
    for kv in image["Env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if let Some((k, v)) = kv.split_once('=') {
            set(k, v, &mut env);
        }
    }
    for (k, v) in &decl.env {
        set(k, v, &mut env);
    }
    order.iter().map(|k| format!("{k}={}", env[k])).collect()
}

/// Device rules as docker sets them: nothing but mknod, then the standard nodes and
/// terminals.
fn device_rules() -> Value {
    let c = |major: i64, minor: Option<i64>, access: &str| json!({"allow": true, "type": "c", "major": major, "minor": minor.unwrap_or(-1), "access": access});
    json!([
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "access": "m"},
        {"allow": true, "type": "b", "access": "m"},
        c(1, Some(3), "rwm"), c(1, Some(5), "rwm"), c(1, Some(7), "rwm"), c(1, Some(8), "rwm"),
        c(1, Some(9), "rwm"), c(5, Some(0), "rwm"), c(5, Some(1), "rwm"), c(5, Some(2), "rwm"),
        c(136, None, "rwm"), c(10, Some(200), "rwm")
    ])
}

const MASKED: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READ_ONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The OCI runtime config for `decl` running as `user`, its image config `image`.
pub fn build(
    decl: &Declaration,
    image: &Value,
    user: &User,
    ctx: &Context,
) -> Result<Value, SpecError> {
    let invalid = |problem: String| SpecError::Invalid {
        name: decl.name.clone(),
        problem,
    };
    let image_config = &image["config"];
    let args = argv(decl, image_config);
    if args.is_empty() {
        return Err(invalid(
            "no command: the image has no Entrypoint or Cmd, and the declaration sets none".into(),
        ));
    }
    let hostname = decl.hostname.clone().unwrap_or_else(|| decl.name.clone());
    let caps = crate::caps::effective(decl.privileged, &decl.cap_add, &decl.cap_drop);
    let cwd = working_dir(decl, image_config).map_err(invalid)?;
    let mounts = mounts(decl, ctx).map_err(invalid)?;
    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": user.uid, "gid": user.gid, "additionalGids": user.additional_gids},
            "args": args,
            "env": environment(decl, image_config, &hostname),
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": ctx.nofile.map_or_else(|| json!([]), |n| json!([{"type": "RLIMIT_NOFILE", "hard": n, "soft": n}])),
            "noNewPrivileges": false,
            "oomScoreAdj": 0
        },
        "root": {"path": ctx.rootfs, "readonly": decl.read_only},
        "hostname": hostname,
        "mounts": mounts,
        "linux": linux(decl, ctx, &caps)
    }))
}

/// The declared working directory, else the image's, else /; absolute.
fn working_dir(decl: &Declaration, image_config: &Value) -> Result<String, String> {
    let cwd = decl
        .working_dir
        .clone()
        .or_else(|| {
            image_config["WorkingDir"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(format!("working_dir {cwd:?} is not absolute"));
    }
    Ok(cwd)
}

/// docker's standard mounts, the daemon's /etc files, then the declared volumes.
fn mounts(decl: &Declaration, ctx: &Context) -> Result<Vec<Value>, String> {
    let sys_ro = if decl.privileged { "rw" } else { "ro" };
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", sys_ro]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", sys_ro]}),
    ];
    for (source, target) in &ctx.etc_files {
        mounts.push(json!({"destination": target, "type": "bind", "source": source, "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}));
    }
    for v in &decl.volumes {
        mounts.push(volume_mount(v, ctx)?);
    }
    Ok(mounts)
}

/// One declared volume as a mount: named volumes and bind sources by what the daemon
/// resolved and holds, never by their declared path.
fn volume_mount(v: &Volume, ctx: &Context) -> Result<Value, String> {
    let bind = |target: &PathBuf, source: &Path, read_only: bool| {
        let mut o = vec!["rbind", "nosuid", "nodev"];
        if read_only {
            o.push("ro");
        }
        json!({"destination": target, "type": "bind", "source": source, "options": o})
    };
    Ok(match v {
        Volume::Named {
            name,
            target,
            read_only,
        } => {
            let dir = ctx
                .volume_dirs
                .get(name)
                .ok_or_else(|| format!("volume {name} has no directory"))?;
            bind(target, dir, *read_only)
        }
        Volume::Bind {
            source,
            target,
            read_only,
        } => {
            let pinned = ctx
                .bind_sources
                .get(source)
                .ok_or_else(|| format!("bind source {} was not checked", source.display()))?;
            bind(target, pinned, *read_only)
        }
        Volume::Tmpfs { target } => {
            json!({"destination": target, "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]})
        }
    })
}

/// The spec's `linux`: namespaces, resources, masked and read-only paths, cgroup,
/// seccomp.
fn linux(decl: &Declaration, ctx: &Context, caps: &[String]) -> Value {
    let mut linux = json!({
        "namespaces": namespaces(decl, ctx),
        "resources": resources(decl),
        "maskedPaths": if decl.privileged { json!([]) } else { json!(MASKED) },
        "readonlyPaths": if decl.privileged { json!([]) } else { json!(READ_ONLY) },
    });
    if let Some(cg) = &ctx.cgroup {
        linux["cgroupsPath"] = json!(cg);
    }
    if decl.seccomp && !decl.privileged {
        linux["seccomp"] = crate::seccomp::default_profile(caps);
    }
    linux
}

/// Its own pid, ipc, uts, mount and cgroup namespaces; the network as declared.
fn namespaces(decl: &Declaration, ctx: &Context) -> Vec<Value> {
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
        json!({"type": "cgroup"}),
    ];
    match (decl.network, &ctx.netns) {
        (Network::Host, _) => {}
        (_, Some(path)) => namespaces.push(json!({"type": "network", "path": path})),
        (_, None) => namespaces.push(json!({"type": "network"})),
    }
    namespaces
}

/// Device rules, memory (swap included), CPU quota, pids.
fn resources(decl: &Declaration) -> Value {
    let mut resources = json!({"devices": if decl.privileged { json!([{"allow": true, "access": "rwm"}]) } else { device_rules() }});
    if let Some(m) = decl.memory {
        resources["memory"] = json!({"limit": m, "swap": m});
    }
    if let Some(mc) = decl.millicpus {
        resources["cpu"] = json!({"quota": mc * 100, "period": 100_000});
    }
    if let Some(p) = decl.pids {
        resources["pids"] = json!({"limit": p});
    }
    resources
}

/// The most of an image's /etc/passwd or /etc/group read: far above any real one.
pub const MAX_ROOT_FILE: u64 = 1 << 20;

/// Why a file of the image's root was not read.
#[derive(Debug, thiserror::Error)]
pub enum RootFileError {
    #[error("{path}: {op}: {errno}")]
    Sys {
        path: PathBuf,
        op: &'static str,
        errno: rustix::io::Errno,
    },
    #[error("{path}: not a regular file")]
    NotRegular { path: PathBuf },
    #[error("{path}: over {limit} bytes")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{path}: not UTF-8")]
    NotText { path: PathBuf },
}

/// Reads a file of the image's root (its /etc/passwd, /etc/group) without following a
/// symlink out of it: None when missing, unreadable, or not a regular file of at most
/// [`MAX_ROOT_FILE`] bytes (see [`read_file_in_root`]).
pub fn read_in_root(rootfs: &Path, rel: &str) -> Option<String> {
    read_file_in_root(rootfs, rel).ok()
}

/// As [`read_in_root`], saying why not. The image is hostile: the file is opened
/// non-blocking (a FIFO planted there must not hang the daemon in open(2) or read(2)),
/// must be a regular file, and is read up to the cap only.
pub fn read_file_in_root(rootfs: &Path, rel: &str) -> Result<String, RootFileError> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let path = rootfs.join(rel.trim_start_matches('/'));
    let fail = |op: &'static str| {
        let path = path.clone();
        move |errno| RootFileError::Sys { path, op, errno }
    };
    let root = rustix::fs::open(
        rootfs,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(fail("opening the root"))?;
    let fd = rustix::fs::openat2(
        &root,
        rel.trim_start_matches('/'),
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(fail("openat2"))?;
    let st = rustix::fs::fstat(&fd).map_err(fail("fstat"))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(RootFileError::NotRegular { path });
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(std::fs::File::from(fd), MAX_ROOT_FILE + 1),
        &mut bytes,
    )
    .map_err(|e| {
        fail("read")(rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO))
    })?;
    if bytes.len() as u64 > MAX_ROOT_FILE {
        // Cut short, a passwd could resolve a name to the wrong entry: refused whole.
        return Err(RootFileError::TooLarge {
            path,
            limit: MAX_ROOT_FILE,
        });
    }
    String::from_utf8(bytes).map_err(|_| RootFileError::NotText { path })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33::/var/www:/bin/false\n";
    const GROUP: &str = "root:x:0:\nwww:x:33:\nlogs:x:4:www,other\n";

    #[test]
    fn users_resolve_against_the_image() {
        assert_eq!(
            resolve_user("www", PASSWD, GROUP).unwrap(),
            User {
                uid: 33,
                gid: 33,
                additional_gids: vec![4]
            }
        );
        assert_eq!(
            resolve_user("1000", PASSWD, GROUP).unwrap(),
            User {
                uid: 1000,
                gid: 0,
                additional_gids: vec![]
            }
        );
        assert_eq!(resolve_user("www:logs", PASSWD, GROUP).unwrap().gid, 4);
        assert_eq!(
            resolve_user("5:7", "", "").unwrap(),
            User {
                uid: 5,
                gid: 7,
                additional_gids: vec![]
            }
        );
        assert!(resolve_user("nobody", PASSWD, GROUP)
            .unwrap_err()
            .contains("nobody"));
    }

    /// A root with /etc, and the path of its /etc/passwd.
    fn rootfs() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        let passwd = dir.path().join("etc/passwd");
        (dir, passwd)
    }

    /// `read_file_in_root` in a thread: None when it has not returned within 5 s.
    fn read_within_5s(root: &Path) -> Option<Result<String, RootFileError>> {
        let root = root.to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(read_file_in_root(&root, "/etc/passwd"));
        });
        rx.recv_timeout(std::time::Duration::from_secs(5)).ok()
    }

    #[test]
    fn a_fifo_at_etc_passwd_is_refused_at_once() {
        let (dir, passwd) = rootfs();
        nix::unistd::mkfifo(&passwd, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let got = read_within_5s(dir.path());
        // Without O_NONBLOCK, open(2) of a FIFO with no writer blocks: the daemon with it.
        let got = got.expect("reading a FIFO at /etc/passwd blocked");
        assert!(
            matches!(got, Err(RootFileError::NotRegular { .. })),
            "{got:?}"
        );
        assert_eq!(read_in_root(dir.path(), "/etc/passwd"), None);
        // The fallback: a numeric user still resolves without the image's files.
        let text = read_in_root(dir.path(), "/etc/passwd").unwrap_or_default();
        assert_eq!(resolve_user("1000", &text, "").unwrap().uid, 1000);
    }

    #[test]
    fn an_oversized_passwd_is_refused_not_cut_short() {
        let (dir, passwd) = rootfs();
        let line = "u:x:1:1::/:/bin/sh\n";
        let big = line.repeat(usize::try_from(MAX_ROOT_FILE).unwrap() / line.len() + 1);
        std::fs::write(&passwd, big).unwrap();
        let got = read_file_in_root(dir.path(), "/etc/passwd");
        assert!(
            matches!(got, Err(RootFileError::TooLarge { .. })),
            "{got:?}"
        );
        // At the cap exactly, it is read.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&passwd)
            .unwrap();
        f.set_len(MAX_ROOT_FILE).unwrap();
        assert_eq!(
            read_file_in_root(dir.path(), "/etc/passwd").unwrap().len() as u64,
            MAX_ROOT_FILE
        );
    }

    #[test]
    fn a_symlink_out_of_the_root_resolves_in_it() {
        let (dir, passwd) = rootfs();
        std::os::unix::fs::symlink("/etc/hostname", &passwd).unwrap();
        // /etc/hostname of the root: missing there, never the host's.
        assert!(matches!(
            read_file_in_root(dir.path(), "/etc/passwd"),
            Err(RootFileError::Sys { .. })
        ));
        std::fs::write(dir.path().join("etc/group"), "g:x:5:\n").unwrap();
        assert_eq!(read_in_root(dir.path(), "etc/group").unwrap(), "g:x:5:\n");
    }

    #[test]
    fn argv_and_env_combine_as_docker_does() {
        let image =
            json!({"Entrypoint": ["/entry"], "Cmd": ["serve"], "Env": ["PATH=/opt/bin", "A=1"]});
        let mut d =
            crate::declaration::Declaration::parse("web", "image = \"x\"", Path::new("web.toml"))
                .unwrap();
        assert_eq!(argv(&d, &image), ["/entry", "serve"]);
        d.command = Some(vec!["other".into()]);
        assert_eq!(argv(&d, &image), ["/entry", "other"]);
        d.entrypoint = Some(vec!["/bin/sh".into()]);
        d.command = None;
        assert_eq!(argv(&d, &image), ["/bin/sh"]);
        d.env.insert("A".into(), "2".into());
        assert_eq!(
            environment(&d, &image, "web"),
            ["PATH=/opt/bin", "HOSTNAME=web", "A=2"]
        );
    }
}
