//! berthctl's container verbs, shaped like docker's, over the container daemon's API
//! (`org.berth.Runtime1` on `/run/berth/runtime.sock`).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use berth_control::{ContainerInfo, ContainerStats, ImageInfo, RuntimeProxy};

use crate::Failure;
use clap::Subcommand;

use crate::{print_raw, print_table, sleep};

#[derive(Subcommand)]
pub enum Cmd {
    /// List containers (running ones; -a: all).
    Ps {
        #[arg(short, long)]
        all: bool,
    },
    /// Declare a container (kept across reboots) and start it.
    Run(Box<RunArgs>),
    /// Start stopped containers.
    Start { names: Vec<String> },
    /// Stop containers (they stay stopped until started).
    Stop { names: Vec<String> },
    /// Restart containers.
    Restart { names: Vec<String> },
    /// Remove containers made with `run` (-f: even running ones).
    Rm {
        #[arg(short, long)]
        force: bool,
        names: Vec<String>,
    },
    /// Show a container's output.
    Logs {
        name: String,
        /// Keep printing new output.
        #[arg(short, long)]
        follow: bool,
        /// How many lines to show first (all: everything kept).
        #[arg(long, short = 'n', default_value = "all")]
        tail: String,
        /// Prefix each line with its time.
        #[arg(short, long)]
        timestamps: bool,
    },
    /// Run a command in a running container.
    Exec {
        /// Keep stdin open (it always is; accepted as in docker).
        #[arg(short, long)]
        interactive: bool,
        /// A terminal for the command.
        #[arg(short, long)]
        tty: bool,
        #[arg(short, long)]
        env: Vec<String>,
        #[arg(short, long)]
        workdir: Option<String>,
        name: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// A privileged shell for emergencies: a throwaway container (the built-in busybox,
    /// or IMAGE) in the host's pid, network and ipc namespaces, the host's root
    /// read-only at /host and /var read-write at /host/var; removed when it exits.
    /// `debug [IMAGE] [-- COMMAND...]`; logged on the console with who asked.
    Debug {
        image: Option<String>,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Pull an image.
    Pull { reference: String },
    /// List images.
    Images,
    /// Remove images.
    Rmi { references: Vec<String> },
    /// Everything about a container, as JSON.
    Inspect { names: Vec<String> },
    /// Resource use of the running containers.
    Stats,
    /// Read the declarations again (the daemon also notices changes by itself).
    Reload,
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// Return once it runs (otherwise: follow its output until it ends).
    #[arg(short, long)]
    detach: bool,
    #[arg(long)]
    name: Option<String>,
    /// hostport:containerport[/proto]
    #[arg(short, long)]
    publish: Vec<String>,
    /// name:/path[:ro], /var/...:/path[:ro], tmpfs:/path
    #[arg(short, long)]
    volume: Vec<String>,
    /// KEY=VALUE
    #[arg(short, long)]
    env: Vec<String>,
    /// no, always, unless-stopped, on-failure[:N]
    #[arg(long)]
    restart: Option<String>,
    /// bridge, host, none
    #[arg(long)]
    network: Option<String>,
    #[arg(short, long)]
    memory: Option<String>,
    #[arg(long)]
    cpus: Option<f64>,
    #[arg(long)]
    pids_limit: Option<i64>,
    #[arg(short, long)]
    user: Option<String>,
    #[arg(short, long)]
    workdir: Option<String>,
    #[arg(long)]
    hostname: Option<String>,
    #[arg(long)]
    entrypoint: Option<String>,
    #[arg(long)]
    privileged: bool,
    #[arg(long)]
    cap_add: Vec<String>,
    #[arg(long)]
    cap_drop: Vec<String>,
    #[arg(long)]
    read_only: bool,
    /// May reach the cloud metadata address (required with --network host)
    #[arg(long)]
    allow_metadata: bool,
    image: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// A TOML string (a JSON string is a valid TOML basic string: same escapes).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

fn list(items: &[String]) -> String {
    let q: Vec<String> = items.iter().map(|s| quoted(s)).collect();
    format!("[{}]", q.join(", "))
}

/// The declaration `run`'s flags describe, in the format of /etc/berth/containers.d
/// (the daemon checks it, and its errors name the key).
pub fn declaration(a: &RunArgs) -> Result<String, String> {
    let mut t = format!("image = {}\n", quoted(&a.image));
    if !a.command.is_empty() {
        t += &format!("command = {}\n", list(&a.command));
    }
    if let Some(e) = &a.entrypoint {
        t += &format!("entrypoint = {}\n", list(std::slice::from_ref(e)));
    }
    if !a.env.is_empty() {
        let mut pairs = Vec::new();
        for kv in &a.env {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("-e {kv:?}: expected KEY=VALUE"))?;
            pairs.push(format!("{} = {}", quoted(k), quoted(v)));
        }
        t += &format!("env = {{ {} }}\n", pairs.join(", "));
    }
    for (key, value) in [
        ("working_dir", &a.workdir),
        ("user", &a.user),
        ("hostname", &a.hostname),
        ("network", &a.network),
        ("restart", &a.restart),
        ("memory", &a.memory),
    ] {
        if let Some(v) = value {
            t += &format!("{key} = {}\n", quoted(v));
        }
    }
    for (key, values) in [
        ("ports", &a.publish),
        ("volumes", &a.volume),
        ("cap_add", &a.cap_add),
        ("cap_drop", &a.cap_drop),
    ] {
        if !values.is_empty() {
            t += &format!("{key} = {}\n", list(values));
        }
    }
    if let Some(c) = a.cpus {
        t += &format!("cpus = {c}\n");
    }
    if let Some(p) = a.pids_limit {
        t += &format!("pids = {p}\n");
    }
    if a.privileged {
        t += "privileged = true\n";
    }
    if a.read_only {
        t += "read_only = true\n";
    }
    if a.allow_metadata {
        t += "allow_metadata = true\n";
    }
    Ok(t)
}

/// A name for a container run without --name: the image's last path part and a
/// number from the clock (docker picks two random words).
fn generated_name(image: &str) -> String {
    let base = image
        .rsplit('/')
        .next()
        .unwrap_or("c")
        .split([':', '@'])
        .next()
        .unwrap_or("c");
    let base: String = base
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_micros())
        .unwrap_or(0);
    format!("{base}-{n:06}")
}

pub async fn run(rt: &RuntimeProxy<'_>, cmd: Cmd, json: bool) -> Result<ExitCode, Failure> {
    match cmd {
        Cmd::Ps { all } => {
            let list: Vec<ContainerInfo> = rt
                .containers()
                .await?
                .into_iter()
                .filter(|c| all || c.state == "running")
                .collect();
            print_containers(&list, json);
        }
        Cmd::Run(a) => {
            let name = a.name.clone().unwrap_or_else(|| generated_name(&a.image));
            rt.run(&name, &declaration(&a)?).await?;
            let info = wait_for(rt, &name, |c| c.state != "waiting").await?;
            if info.state == "failed" {
                return Err(format!("{name}: {}", info.error).into());
            }
            if a.detach {
                println!("{name}");
            } else {
                return follow_until_done(rt, &name).await;
            }
        }
        Cmd::Start { names } => each(&names, |n| rt.start(n)).await?,
        Cmd::Stop { names } => each(&names, |n| rt.stop(n)).await?,
        Cmd::Restart { names } => each(&names, |n| rt.restart(n)).await?,
        Cmd::Rm { force, names } => each(&names, |n| rt.remove(n, force)).await?,
        Cmd::Logs {
            name,
            follow,
            tail,
            timestamps,
        } => {
            let lines = match tail.as_str() {
                "all" => u32::MAX,
                n => n
                    .parse()
                    .map_err(|_| format!("--tail {n:?}: a number or \"all\""))?,
            };
            let mut offset = 0;
            if lines != u32::MAX {
                let first = rt.read_log(&name, 0, lines.max(1)).await?;
                print_log(&first.text, timestamps, json);
                offset = first.next_offset;
            }
            loop {
                let chunk = rt.read_log(&name, offset, 0).await?;
                print_log(&chunk.text, timestamps, json);
                let more = chunk.next_offset > offset;
                offset = chunk.next_offset;
                if !more {
                    if !follow {
                        break;
                    }
                    sleep(Duration::from_millis(250));
                }
            }
        }
        Cmd::Exec { .. } => return run_local(cmd),
        Cmd::Debug { image, command } => return debug(rt, image.as_deref(), command).await,
        Cmd::Pull { reference } => pull(rt, &reference, json).await?,
        Cmd::Images => {
            let images = rt.images().await?;
            print_images(&images, json);
        }
        Cmd::Rmi { references } => {
            for r in references {
                for removed in rt.remove_image(&r).await? {
                    println!("Untagged: {removed}");
                }
            }
        }
        Cmd::Inspect { names } => {
            let mut out = Vec::new();
            for n in names {
                let text = rt.inspect(&n).await?;
                out.push(
                    serde_json::from_str::<serde_json::Value>(&text).map_err(|e| e.to_string())?,
                );
            }
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        }
        Cmd::Reload => rt.reload().await?,
        Cmd::Stats => {
            // CPU use over one second, as docker's first sample does.
            let first = rt.stats().await?;
            let t0 = Instant::now();
            sleep(Duration::from_secs(1));
            let second = rt.stats().await?;
            print_stats(&first, &second, t0.elapsed(), json);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The verbs that need no daemon (exec runs berth-runtime here).
pub fn run_local(cmd: Cmd) -> Result<ExitCode, Failure> {
    match cmd {
        Cmd::Exec {
            tty,
            env,
            workdir,
            name,
            command,
            ..
        } => exec(&name, tty, &env, workdir.as_deref(), &command),
        _ => Err("this command needs the container daemon".into()),
    }
}

/// Applies a change to each name, printing each done (as docker does).
async fn each<'a, F, Fut>(names: &'a [String], f: F) -> Result<(), Failure>
where
    F: Fn(&'a str) -> Fut,
    Fut: std::future::Future<Output = Result<(), berth_control::ApiError>>,
{
    if names.is_empty() {
        return Err("name at least one container".into());
    }
    let mut failed = Vec::new();
    let mut code = 1;
    for n in names {
        match f(n).await {
            Ok(()) => println!("{n}"),
            Err(e) => {
                eprintln!("berthctl: {n}: {}", e.message());
                code = code.max(e.exit_code());
                failed.push(n.as_str());
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure {
            message: format!("failed: {}", failed.join(" ")),
            code,
        })
    }
}

async fn find(rt: &RuntimeProxy<'_>, name: &str) -> Result<ContainerInfo, Failure> {
    rt.containers()
        .await?
        .into_iter()
        .find(|c| c.name == name)
        .ok_or_else(|| Failure {
            message: format!("no container named {name:?}"),
            code: berth_control::ApiError::NotFound(String::new()).exit_code(),
        })
}

/// Polls until `done` holds for the container (a start can include a pull).
async fn wait_for(
    rt: &RuntimeProxy<'_>,
    name: &str,
    done: impl Fn(&ContainerInfo) -> bool,
) -> Result<ContainerInfo, Failure> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let c = find(rt, name).await?;
        if done(&c) || Instant::now() > deadline {
            return Ok(c);
        }
        sleep(Duration::from_millis(100));
    }
}

/// `run` without -d: the container's output until it stops running; its exit code.
async fn follow_until_done(rt: &RuntimeProxy<'_>, name: &str) -> Result<ExitCode, Failure> {
    let mut offset = 0;
    loop {
        let c = find(rt, name).await?;
        let chunk = rt.read_log(name, offset, 0).await?;
        print_log(&chunk.text, false, false);
        let more = chunk.next_offset > offset;
        offset = chunk.next_offset;
        if c.state != "running" && !more {
            return Ok(ExitCode::from(u8::try_from(c.exit_code).unwrap_or(255)));
        }
        if !more {
            sleep(Duration::from_millis(200));
        }
    }
}

/// Log records (JSON lines) as the container wrote them: stdout to stdout, stderr to
/// stderr; `--json` passes the records through.
fn print_log(text: &str, timestamps: bool, json: bool) {
    if json {
        return print_raw(text);
    }
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    for line in text.lines() {
        let Ok(rec) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let log = rec["log"].as_str().unwrap_or_default();
        let prefix = if timestamps {
            format!("{} ", rec["time"].as_str().unwrap_or_default())
        } else {
            String::new()
        };
        let text = format!("{prefix}{log}");
        let _ = if rec["stream"] == "stderr" {
            err.write_all(text.as_bytes())
        } else {
            out.write_all(text.as_bytes())
        };
    }
    let _ = out.flush();
}

/// Runs `berth-runtime exec` here (exec needs the container's namespaces, so only
/// inside the host); its exit code is the command's.
fn exec(
    name: &str,
    tty: bool,
    env: &[String],
    workdir: Option<&str>,
    command: &[String],
) -> Result<ExitCode, Failure> {
    // The name goes before berth-runtime's `--`: one that reads as an option is not
    // a container's.
    if name.is_empty() || name.starts_with('-') || name.contains('/') {
        return Err(Failure {
            message: format!("{name:?} is not a container name"),
            code: 5,
        });
    }
    if tty {
        return Ok(crate::console::exec_with_terminal(
            name, env, workdir, command,
        )?);
    }
    let status = exec_command(name, env, workdir)
        .arg("--")
        .args(command)
        .status()
        .map_err(|e| format!("running {RUNTIME_BINARY}: {e}"))?;
    Ok(ExitCode::from(
        status
            .code()
            .and_then(|c| u8::try_from(c).ok())
            .unwrap_or(255),
    ))
}

/// `berthctl debug`: the daemon makes the container (created, never started), the
/// command runs in it as `exec` runs one (a terminal when ours is one), and the
/// container is removed (by the daemon too, should this process die first).
async fn debug(
    rt: &RuntimeProxy<'_>,
    image: Option<&str>,
    command: Vec<String>,
) -> Result<ExitCode, Failure> {
    let name = format!("debug-{}", std::process::id());
    rt.debug_create(&name, image.unwrap_or(""), &who(), std::process::id())
        .await?;
    let tty = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let command = if command.is_empty() {
        vec!["sh".to_string()]
    } else {
        command
    };
    let result = exec(&name, tty, &[], None, &command);
    if let Err(e) = rt.debug_remove(&name).await {
        eprintln!("berthctl: removing {name}: {}", Failure::from(e).message);
    }
    result
}

/// Who runs this, for the debug session's log line: the SSH key sshd accepted (its
/// `ExposeAuthInfo` file: `publickey TYPE BASE64`) and the client's address; nothing
/// on the machine itself. The daemon takes only what parses.
fn who() -> String {
    use std::io::Read;
    let mut who = String::new();
    if let Some(path) = std::env::var_os("SSH_USER_AUTH") {
        let mut text = String::new();
        if let Ok(f) = std::fs::File::open(path) {
            let _ = f.take(16 * 1024).read_to_string(&mut text);
        }
        if let Some(key) = text.lines().find_map(|l| l.strip_prefix("publickey ")) {
            who += &format!("key {key}\n");
        }
    }
    if let Ok(c) = std::env::var("SSH_CONNECTION") {
        who += &format!("from {c}\n");
    }
    who
}

pub const RUNTIME_BINARY: &str = "/usr/bin/berth-runtime";
/// The daemon's runtime state (`berth-daemon --runtime-root`).
pub const RUNTIME_ROOT: &str = "/run/berth/runtime";

/// `berth-runtime --root ... exec [-e ...] [--cwd ...] NAME` (the command follows).
pub fn exec_command(name: &str, env: &[String], workdir: Option<&str>) -> std::process::Command {
    let mut c = std::process::Command::new(RUNTIME_BINARY);
    c.args(["--root", RUNTIME_ROOT, "exec"]);
    for e in env {
        c.arg("--env").arg(e);
    }
    if let Some(w) = workdir {
        c.arg("--cwd").arg(w);
    }
    c.arg(name);
    c
}

async fn pull(rt: &RuntimeProxy<'_>, reference: &str, json: bool) -> Result<(), Failure> {
    let job = rt.pull(reference).await?;
    let bar = !json && std::io::stderr().is_terminal();
    loop {
        let s = rt.pull_status(job).await?;
        if bar {
            // Whole thirtieths, computed in integers (bytes_done <= bytes_total).
            let filled = usize::try_from(
                s.bytes_done.min(s.bytes_total).saturating_mul(30) / s.bytes_total.max(1),
            )
            .unwrap_or(30);
            eprint!(
                "\r{}: [{}{}] {:.1}/{:.1} MB",
                s.reference,
                "=".repeat(filled),
                " ".repeat(30 - filled),
                s.bytes_done as f64 / 1e6,
                s.bytes_total as f64 / 1e6
            );
        }
        if s.finished {
            if bar {
                eprintln!();
            }
            if !s.error.is_empty() {
                return Err(format!("pulling {}: {}", s.reference, s.error).into());
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            } else {
                println!("{}: pulled {}", s.reference, s.id);
            }
            return Ok(());
        }
        sleep(Duration::from_millis(200));
    }
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.into()
    }
}

fn print_containers(list: &[ContainerInfo], json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(list).unwrap_or_default());
        return;
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|c| {
            let state = match c.state.as_str() {
                "exited" => format!("exited ({})", c.exit_code),
                s => s.to_string(),
            };
            vec![
                c.name.clone(),
                c.image.clone(),
                state,
                if c.pid == 0 {
                    "-".into()
                } else {
                    c.pid.to_string()
                },
                c.restarts.to_string(),
                dash(&c.started_at),
                dash(&c.ports.join(", ")),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME", "IMAGE", "STATE", "PID", "RESTARTS", "STARTED", "PORTS",
        ],
        &rows,
    );
}

fn print_images(list: &[ImageInfo], json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(list).unwrap_or_default());
        return;
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| {
            let id = i.id.strip_prefix("sha256:").unwrap_or(&i.id);
            vec![
                i.reference.clone(),
                id.chars().take(12).collect(),
                format!("{:.1} MB", i.size as f64 / 1e6),
            ]
        })
        .collect();
    print_table(&["REFERENCE", "IMAGE ID", "SIZE"], &rows);
}

fn print_stats(first: &[ContainerStats], second: &[ContainerStats], took: Duration, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(second).unwrap_or_default()
        );
        return;
    }
    let rows: Vec<Vec<String>> = second
        .iter()
        .map(|s| {
            let before = first
                .iter()
                .find(|f| f.name == s.name)
                .map_or(s.cpu_usec, |f| f.cpu_usec);
            let cpu = s.cpu_usec.saturating_sub(before) as f64 / took.as_micros().max(1) as f64;
            let limit = if s.memory_limit == 0 {
                "-".to_string()
            } else {
                format!("{:.1} MiB", s.memory_limit as f64 / 1048576.0)
            };
            vec![
                s.name.clone(),
                format!("{:.2}%", cpu * 100.0),
                format!("{:.1} MiB", s.memory_bytes as f64 / 1048576.0),
                limit,
                s.pids.to_string(),
            ]
        })
        .collect();
    print_table(&["NAME", "CPU", "MEMORY", "LIMIT", "PIDS"], &rows);
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn run_flags_become_a_declaration() {
        let t = T::parse_from([
            "x",
            "-p",
            "8080:80",
            "-e",
            "A=b \"c\"",
            "-v",
            "data:/data",
            "--restart",
            "always",
            "--memory",
            "64M",
            "busybox",
            "httpd",
            "-f",
        ]);
        let text = declaration(&t.run).unwrap();
        let v: toml_check::Value = toml_check::parse(&text);
        assert_eq!(v["image"], "busybox");
        assert_eq!(v["command"], serde_json::json!(["httpd", "-f"]));
        assert_eq!(v["env"]["A"], "b \"c\"");
        assert_eq!(v["ports"], serde_json::json!(["8080:80"]));
        assert_eq!(v["restart"], "always");
        let bad = T::parse_from(["x", "-e", "NOEQUALS", "busybox"]);
        assert!(declaration(&bad.run).unwrap_err().contains("KEY=VALUE"));
        assert!(generated_name("registry.example/team/web:1.2").starts_with("web-"));
    }

    /// The declaration parsed back (as the daemon would).
    mod toml_check {
        pub type Value = serde_json::Value;
        pub fn parse(text: &str) -> Value {
            let t: toml::Value = toml::from_str(text).unwrap();
            serde_json::to_value(t).unwrap()
        }
    }
}
