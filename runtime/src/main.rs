//! `berth-runtime`: runc's command line over Berth's OCI runtime, as podman and
//! containerd call it (`create --bundle B --pid-file P ID`, `start ID`, `state ID`,
//! `kill ID [SIGNAL]`, `delete [--force] ID`, `run`, `list`, `features`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use berth_runtime::container::{self, CreateOptions};
use berth_runtime::state::{self, Saved};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "berth-runtime",
    version,
    about = "Berth's OCI container runtime"
)]
struct Cli {
    /// Where container state lives.
    #[arg(long, global = true, default_value = state::DEFAULT_ROOT)]
    root: PathBuf,
    /// Also write errors to this file (runc's --log).
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// text or json (runc's --log-format).
    #[arg(long, global = true, default_value = "text")]
    log_format: String,
    #[arg(long, global = true)]
    debug: bool,
    /// cgroupsPath is systemd's slice:prefix:name (mapped to a cgroupfs path).
    #[arg(long, global = true)]
    systemd_cgroup: bool,
    /// crun's form, which podman passes: cgroupfs, systemd (as --systemd-cgroup), or
    /// disabled (no cgroup, as podman's --cgroups=disabled means).
    #[arg(long, global = true, value_parser = ["cgroupfs", "systemd", "disabled"])]
    cgroup_manager: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a container from a bundle; it waits for `start`.
    Create(CreateArgs),
    /// Run a created container's program.
    Start { id: String },
    /// Print a container's OCI state.
    State { id: String },
    /// Send a signal (default SIGTERM) to a container.
    Kill {
        id: String,
        signal: Option<String>,
        #[arg(long = "signal", short = 's')]
        signal_flag: Option<String>,
        /// Every process in the container's cgroup.
        #[arg(long, short = 'a')]
        all: bool,
    },
    /// Remove a stopped container.
    Delete {
        id: String,
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// Create, start and wait; exits with the container's status.
    Run(CreateArgs),
    /// Run another process in a running container.
    Exec(ExecArgs),
    /// The container's processes.
    Ps {
        id: String,
        /// table or json (a list of pids, as runc prints).
        #[arg(long, short = 'f', default_value = "table")]
        format: String,
        /// Accepted for runc compatibility (ps(1) options are not used).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// List containers.
    List {
        #[arg(long, short = 'f', default_value = "table")]
        format: String,
        #[arg(long, short = 'q')]
        quiet: bool,
    },
    /// What this runtime supports (runtime-spec features.json).
    Features,
    /// Container images: pull, import, ls, rm, inspect, gc, df (handed to `berth-store`,
    /// which keeps HTTP, TLS and decompression out of this binary).
    Image {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// The daemon that keeps the declared containers running (handed to `berth-daemon`).
    Daemon {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

#[derive(clap::Args)]
struct ExecArgs {
    id: String,
    /// The command (when there is no --process).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
    /// An OCI process document (JSON) describing what to run.
    #[arg(long, short = 'p')]
    process: Option<PathBuf>,
    #[arg(long, short = 't')]
    tty: bool,
    #[arg(long)]
    console_socket: Option<PathBuf>,
    /// Return once the process runs, without waiting.
    #[arg(long, short = 'd')]
    detach: bool,
    #[arg(long)]
    pid_file: Option<PathBuf>,
    #[arg(long, short = 'e')]
    env: Vec<String>,
    #[arg(long)]
    cwd: Option<PathBuf>,
    /// Accepted for runc compatibility.
    #[arg(long)]
    no_new_privs: bool,
}

#[derive(clap::Args)]
struct CreateArgs {
    id: String,
    #[arg(long, short = 'b', default_value = ".")]
    bundle: PathBuf,
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Not supported yet: refused when the config asks for a terminal.
    #[arg(long)]
    console_socket: Option<PathBuf>,
    /// Accepted for runc compatibility (detached is how create always works).
    #[arg(long, short = 'd')]
    detach: bool,
    #[arg(long)]
    no_pivot: bool,
    #[arg(long)]
    no_new_keyring: bool,
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match args.get(1).and_then(|a| a.to_str()) {
        Some("image") => return hand_over("berth-store", &args[2..]),
        Some("daemon") => return hand_over("berth-daemon", &args[2..]),
        _ => {}
    }
    // Commands that start processes in a container run from a read-only view of this
    // binary (see sys::reexec_read_only); state, kill, delete, list need not.
    let spawns = args
        .iter()
        .skip(1)
        .any(|a| matches!(a.to_str(), Some("create" | "run" | "exec")));
    if spawns {
        if let Err(e) = berth_runtime::sys::reexec_read_only() {
            eprintln!("berth-runtime: re-executing from a read-only view of itself: {e}");
            return ExitCode::FAILURE;
        }
    }
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            report(&cli, &e.to_string());
            ExitCode::FAILURE
        }
    }
}

/// Runs `binary` (next to this one, else from PATH) with `args`.
fn hand_over(binary: &str, args: &[std::ffi::OsString]) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(binary)))
        .filter(|p| p.exists());
    let program = sibling.unwrap_or_else(|| PathBuf::from(binary));
    let err = std::process::Command::new(&program).args(args).exec();
    eprintln!("berth-runtime: running {}: {err}", program.display());
    ExitCode::FAILURE
}

/// On stderr, and in --log in the requested format (conmon and podman read it).
fn report(cli: &Cli, msg: &str) {
    eprintln!("berth-runtime: {msg}");
    if let Some(path) = &cli.log {
        let line = if cli.log_format == "json" {
            serde_json::json!({"level": "error", "msg": msg}).to_string()
        } else {
            format!("level=error msg={msg:?}")
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

fn run(cli: &Cli) -> berth_runtime::Result<ExitCode> {
    let root = cli.root.as_path();
    match &cli.command {
        Cmd::Create(a) => {
            container::create(&options(cli, a))?;
        }
        Cmd::Run(a) => {
            let code = container::run(&options(cli, a))?;
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(255)));
        }
        Cmd::Start { id } => container::start(root, id)?,
        Cmd::Image { args } => return Ok(hand_over("berth-store", args)),
        Cmd::Daemon { args } => return Ok(hand_over("berth-daemon", args)),
        Cmd::Exec(a) => {
            let code = berth_runtime::exec::exec(&berth_runtime::exec::ExecOptions {
                root,
                id: &a.id,
                process_file: a.process.as_deref(),
                args: &a.command,
                env: &a.env,
                cwd: a.cwd.as_deref(),
                tty: a.tty,
                console_socket: a.console_socket.as_deref(),
                detach: a.detach,
                pid_file: a.pid_file.as_deref(),
            })?;
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(255)));
        }
        Cmd::State { id } => {
            let saved = Saved::load(root, id)?;
            let status = saved.status(root);
            println!(
                "{}",
                serde_json::to_string_pretty(&saved.oci(status)).unwrap_or_default()
            );
        }
        Cmd::Kill {
            id,
            signal,
            signal_flag,
            all,
        } => {
            let name = signal_flag
                .as_deref()
                .or(signal.as_deref())
                .unwrap_or("SIGTERM");
            container::kill_container(root, id, container::parse_signal(name)?, *all)?;
        }
        Cmd::Delete { id, force } => container::delete(root, id, *force)?,
        Cmd::Ps { id, format, .. } => {
            let pids = container::processes(root, id)?;
            if format == "json" {
                println!("{}", serde_json::to_string(&pids).unwrap_or_default());
            } else {
                println!("PID   CMD");
                for p in pids {
                    let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                    let cmd: Vec<String> = cmd
                        .split(|b| *b == 0)
                        .filter(|a| !a.is_empty())
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect();
                    println!("{p:<5} {}", cmd.join(" "));
                }
            }
        }
        Cmd::List { format, quiet } => list(root, format, *quiet),
        Cmd::Features => println!("{}", features()),
    }
    Ok(ExitCode::SUCCESS)
}

fn options<'a>(cli: &'a Cli, a: &'a CreateArgs) -> CreateOptions<'a> {
    CreateOptions {
        root: &cli.root,
        id: &a.id,
        bundle: &a.bundle,
        pid_file: a.pid_file.as_deref(),
        systemd_cgroup: cli.systemd_cgroup || cli.cgroup_manager.as_deref() == Some("systemd"),
        no_cgroup: cli.cgroup_manager.as_deref() == Some("disabled"),
        console_socket: a.console_socket.as_deref(),
    }
}

fn list(root: &std::path::Path, format: &str, quiet: bool) {
    let all = state::list(root);
    if quiet {
        for s in &all {
            println!("{}", s.id);
        }
    } else if format == "json" {
        let states: Vec<_> = all.iter().map(|s| s.oci(s.status(root))).collect();
        println!("{}", serde_json::to_string(&states).unwrap_or_default());
    } else {
        println!(
            "{:<20} {:<8} {:<10} {:<40} CREATED",
            "ID", "PID", "STATUS", "BUNDLE"
        );
        for s in &all {
            let st = s.status(root);
            let pid = if st == state::Status::Stopped {
                0
            } else {
                s.pid
            };
            println!(
                "{:<20} {:<8} {:<10} {:<40} {}",
                s.id,
                pid,
                st.as_str(),
                s.bundle.display(),
                s.created
            );
        }
    }
}

/// runtime-spec features.json: what this build implements (the rest is refused).
fn features() -> String {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": oci_spec_version(),
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": ["ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec",
            "sync", "async", "dirsync", "remount", "mand", "nomand", "atime", "noatime",
            "diratime", "nodiratime", "relatime", "norelatime", "strictatime", "nostrictatime",
            "bind", "rbind", "private", "rprivate", "slave", "rslave", "shared", "rshared",
            "unbindable", "runbindable"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": caps::all().iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "cgroup": {"v1": false, "v2": true, "systemd": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD",
                    "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_TRAP", "SCMP_ACT_TRACE", "SCMP_ACT_LOG"],
                "operators": ["SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE",
                    "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ"],
                "archs": ["SCMP_ARCH_X86_64"]
            },
            // process.apparmorProfile is applied; SELinux only as a process label
            // (linux.mountLabel is refused), so it is not claimed.
            "apparmor": {"enabled": true},
            "selinux": {"enabled": false}
        }
    })
    .to_string()
}

fn oci_spec_version() -> &'static str {
    oci_spec::runtime::VERSION
}
