//! berthctl: the operator's command line for a Berth host.
//!
//! A library so the image needs no second copy of the D-Bus code: there, berthctl is a
//! link to init, which runs [`main`] when called by that name. The `berthctl` binary
//! built here is the same thing for the host side.
//!
//! Inside the guest it talks to init on `/run/berth/init.sock`; from the host,
//! `--vm PATH` talks through the unix socket QEMU made for the VM's virtio-serial port
//! `org.berth.control` (`-chardev socket,id=ctl,path=PATH,server=on,wait=off -device
//! virtserialport,chardev=ctl,name=org.berth.control`): to init, or, after a
//! `BERTH-ROUTE` line, to the container daemon or the agent (init bridges the session),
//! so container verbs and `config` work from a hypervisor without any network. Tables
//! by default, `--json` for scripts.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use berth_control::{BootPhase, InitProxy, ProcessMemory, RuntimeProxy, ServiceStatus, SlotStatus};
use clap::{Parser, Subcommand};

mod config;
mod console;
mod containers;
mod events;
pub mod login;
mod update;

#[derive(Parser)]
#[command(name = "berthctl", version, about = "Control a Berth host")]
struct Cli {
    /// Talk to a VM through its control port's host socket instead of the local init.
    #[arg(long, global = true, value_name = "PATH")]
    vm: Option<PathBuf>,
    /// Init's socket inside the guest.
    #[arg(long, global = true, value_name = "PATH", default_value = berth_control::INIT_SOCKET)]
    socket: PathBuf,
    /// The container daemon's socket.
    #[arg(long, global = true, value_name = "PATH", default_value = berth_control::RUNTIME_SOCKET)]
    runtime_socket: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Give up when the connection is not up after this many seconds.
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 30)]
    timeout: u64,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List the host's services (as `service list`).
    Services,
    /// The host's services (init's): list, start, stop, restart, logs.
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Reboot the host.
    Reboot,
    /// Power the host off.
    Poweroff,
    /// How long each boot phase took.
    BootTime,
    /// What init and each service's processes hold in memory (RSS and PSS), and the sum.
    Memory,
    /// The boot slots: each one's version, root hash, state and tries left, and which
    /// one booted.
    Slots,
    /// Boot the other slot from now on (on a trial boot: end the trial as failed), and
    /// reboot into it.
    Rollback,
    /// OS updates: check, apply (into the other slot, tried at the next reboot),
    /// status.
    #[command(subcommand)]
    Update(update::Cmd),
    /// What the config agent applied at this boot, from where, and what it skipped.
    Config,
    /// What happens on the machine: containers, images, services, updates (as
    /// `docker events`).
    Events(events::Args),
    #[command(flatten)]
    Container(Box<containers::Cmd>),
}

#[derive(Subcommand)]
enum ServiceCmd {
    /// List the services.
    List,
    /// Start a service.
    Start(Target),
    /// Stop a service (it stays stopped until started).
    Stop(Target),
    /// Restart a service.
    Restart(Target),
    /// Show a service's log.
    Logs {
        name: String,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
        /// How many lines to show first.
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: u32,
    },
}

#[derive(clap::Args)]
struct Target {
    name: String,
    /// Return at once instead of waiting for the service to settle.
    #[arg(long)]
    no_wait: bool,
}

/// How long start/restart wait for a service to become ready or fail.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Why berthctl failed, and its exit code: 1, or the code of the daemon's named error
/// (`ApiError::exit_code`: 3 not found, 4 already exists, 5 invalid, 6 busy, 7 timeout).
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: u8,
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure { message, code: 1 }
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Failure {
        Failure::from(message.to_string())
    }
}

impl From<berth_control::ApiError> for Failure {
    fn from(e: berth_control::ApiError) -> Failure {
        Failure {
            message: e.message(),
            code: e.exit_code(),
        }
    }
}

/// Runs berthctl with these arguments (the first is the program name).
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    console::hold_resizes();
    let cli = Cli::parse_from(args);
    match berth_control::zbus::block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berthctl: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    let connected = watchdog(Duration::from_secs(cli.timeout), cli.vm.is_some());
    if let Cmd::Config = cli.command {
        let conn = match &cli.vm {
            Some(path) => berth_control::vm_client(path, berth_control::ROUTE_AGENT).await,
            None => berth_control::connect(std::path::Path::new(berth_control::AGENT_SOCKET)).await,
        }
        .map_err(|e| format!("{e} (is berth-agent running?)"))?;
        connected.store(true, std::sync::atomic::Ordering::SeqCst);
        let agent = berth_control::AgentProxy::new(&conn)
            .await
            .map_err(|e| e.to_string())?;
        config::run(&agent, cli.json).await?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Cmd::Container(cmd) = cli.command {
        let cmd = *cmd;
        let local_only = matches!(
            cmd,
            containers::Cmd::Exec { .. } | containers::Cmd::Debug { .. }
        );
        if cli.vm.is_some() && local_only {
            return Err(
                "exec and debug run berth-runtime on the machine itself: use them there, or \
                 over SSH (`ssh -t HOST exec -it NAME sh`)"
                    .into(),
            );
        }
        // exec needs no daemon: it runs berth-runtime here.
        let conn = if matches!(cmd, containers::Cmd::Exec { .. }) {
            None
        } else {
            let conn = match &cli.vm {
                // Through the VM's control port: init bridges the session to the daemon.
                Some(path) => berth_control::vm_client(path, berth_control::ROUTE_RUNTIME).await,
                None => berth_control::connect(&cli.runtime_socket).await,
            };
            Some(conn.map_err(|e| format!("{e} (is berth-daemon running?)"))?)
        };
        connected.store(true, std::sync::atomic::Ordering::SeqCst);
        let Some(conn) = conn else {
            return containers::run_local(cmd);
        };
        let rt = RuntimeProxy::new(&conn).await.map_err(|e| e.to_string())?;
        return containers::run(&rt, cmd, cli.json).await;
    }
    let conn = match &cli.vm {
        Some(path) => berth_control::vm_client(path, b"").await,
        None => berth_control::connect(&cli.socket).await,
    }
    .map_err(|e| e.to_string())?;
    connected.store(true, std::sync::atomic::Ordering::SeqCst);
    let init = InitProxy::new(&conn).await.map_err(|e| e.to_string())?;
    let err = error_text;
    let service = match cli.command {
        Cmd::Services => ServiceCmd::List,
        Cmd::Service(s) => s,
        Cmd::Reboot => {
            init.reboot().await.map_err(err)?;
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Poweroff => {
            init.power_off().await.map_err(err)?;
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::BootTime => {
            let phases = init.boot_timeline().await.map_err(err)?;
            print_timeline(&phases, cli.json);
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Memory => {
            let rows = init.memory().await.map_err(err)?;
            print_memory(&rows, cli.json);
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Slots => {
            let slots = init.slots().await.map_err(err)?;
            print_slots(&slots, cli.json);
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Rollback => {
            init.rollback().await.map_err(err)?;
            println!("rolling back: rebooting");
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Update(u) => {
            update::run(&init, u, cli.json).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Events(args) => {
            events::run(&init, args, cli.json).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Container(_) | Cmd::Config => return Err("unreachable: handled above".into()),
    };
    match service {
        ServiceCmd::List => {
            let list = init.services().await.map_err(err)?;
            print_services(&list, cli.json);
        }
        ServiceCmd::Start(t) => {
            init.start(&t.name).await.map_err(err)?;
            if !t.no_wait {
                return Ok(settle(&init, &t.name, None, cli.json).await?);
            }
        }
        ServiceCmd::Restart(t) => {
            let before = find(&init, &t.name).await?;
            init.restart(&t.name).await.map_err(err)?;
            if !t.no_wait {
                return Ok(settle(&init, &t.name, Some(before.restarts), cli.json).await?);
            }
        }
        ServiceCmd::Stop(t) => {
            init.stop(&t.name).await.map_err(err)?;
            if !t.no_wait {
                let deadline = Instant::now() + SETTLE_TIMEOUT;
                loop {
                    let s = find(&init, &t.name).await?;
                    if s.pid == 0 || Instant::now() > deadline {
                        print_services(&[s], cli.json);
                        break;
                    }
                    sleep(Duration::from_millis(100));
                }
            }
        }
        ServiceCmd::Logs {
            name,
            follow,
            lines,
        } => {
            let first = init.read_log(&name, 0, lines.max(1)).await.map_err(err)?;
            print_raw(&first.text);
            let mut offset = first.next_offset;
            if follow {
                loop {
                    sleep(Duration::from_millis(250));
                    let chunk = init.read_log(&name, offset, 0).await.map_err(err)?;
                    print_raw(&chunk.text);
                    offset = chunk.next_offset;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A D-Bus error as the operator should read it: the server's message when it gave one.
fn error_text(e: berth_control::zbus::Error) -> String {
    match e {
        berth_control::zbus::Error::MethodError(_, Some(msg), _) => msg,
        other => other.to_string(),
    }
}

/// Ends the process if the connection (its D-Bus handshake) is not up in time: a VM
/// that is not running Berth, or not yet, would otherwise leave us waiting forever.
/// (Each call has its own timeout once connected.)
fn watchdog(timeout: Duration, vm: bool) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let connected = std::sync::Arc::new(AtomicBool::new(false));
    let flag = connected.clone();
    std::thread::spawn(move || {
        std::thread::sleep(timeout);
        if !flag.load(Ordering::SeqCst) {
            let hint = if vm {
                " (is the VM up, and running Berth?)"
            } else {
                ""
            };
            eprintln!("berthctl: no answer within {} s{hint}", timeout.as_secs());
            std::process::exit(1);
        }
    });
    connected
}

async fn find(init: &InitProxy<'_>, name: &str) -> Result<ServiceStatus, String> {
    init.services()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| format!("no service named {name:?}"))
}

/// Waits until the service is ready (success) or failing/restarting after this request.
async fn settle(
    init: &InitProxy<'_>,
    name: &str,
    restarts_before: Option<u32>,
    json: bool,
) -> Result<ExitCode, String> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let s = find(init, name).await?;
        let restarted = restarts_before.is_none_or(|r| s.restarts > r);
        let done = match s.state.as_str() {
            "ready" => restarted,
            "failed" | "restarting" | "inactive" | "done" => restarted,
            _ => false,
        };
        if done || Instant::now() > deadline {
            print_services(std::slice::from_ref(&s), json);
            return Ok(if s.state == "ready" {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        sleep(Duration::from_millis(100));
    }
}

fn sleep(d: Duration) {
    std::thread::sleep(d);
}

fn print_raw(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

fn print_services(list: &[ServiceStatus], json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(list).unwrap_or_default());
        return;
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.state.clone(),
                if s.pid == 0 {
                    "-".into()
                } else {
                    s.pid.to_string()
                },
                s.restarts.to_string(),
                if s.last_exit.is_empty() {
                    "-".into()
                } else {
                    s.last_exit.clone()
                },
                s.status.clone(),
            ]
        })
        .collect();
    print_table(
        &["NAME", "STATE", "PID", "RESTARTS", "LAST EXIT", "STATUS"],
        &rows,
    );
}

fn print_memory(rows: &[ProcessMemory], json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(rows).unwrap_or_default());
        return;
    }
    let kb = |v: u64| format!("{v} KB");
    let mut table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.service.clone(),
                r.pid.to_string(),
                r.command.clone(),
                kb(r.rss_kb),
                kb(r.pss_kb),
            ]
        })
        .collect();
    table.push(vec![
        "total".into(),
        String::new(),
        format!("{} processes", rows.len()),
        kb(rows.iter().map(|r| r.rss_kb).sum()),
        kb(rows.iter().map(|r| r.pss_kb).sum()),
    ]);
    print_table(&["SERVICE", "PID", "COMMAND", "RSS", "PSS"], &table);
}

fn print_slots(slots: &[SlotStatus], json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(slots).unwrap_or_default()
        );
        return;
    }
    let rows: Vec<Vec<String>> = slots
        .iter()
        .map(|s| {
            let dash = |v: &str| {
                if v.is_empty() {
                    "-".to_string()
                } else {
                    v.to_string()
                }
            };
            let state = match s.state.as_str() {
                "trial" => format!("trial ({} tries left)", s.tries_left),
                "bad" => format!("bad ({})", s.why),
                other => other.to_string(),
            };
            vec![
                format!("{}{}", s.slot, if s.booted { " *" } else { "" }),
                dash(&s.version),
                dash(&s.build_id),
                dash(&s.root_hash),
                state,
            ]
        })
        .collect();
    print_table(&["SLOT", "VERSION", "BUILD", "ROOT HASH", "STATE"], &rows);
    println!("* booted this time");
}

fn print_timeline(phases: &[BootPhase], json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(phases).unwrap_or_default()
        );
        return;
    }
    let mut prev = 0;
    let mut rows: Vec<Vec<String>> = phases
        .iter()
        .map(|p| {
            let took = p.end_ms.saturating_sub(prev);
            prev = p.end_ms;
            vec![
                p.name.clone(),
                format!("{took} ms"),
                format!("{} ms", p.end_ms),
            ]
        })
        .collect();
    rows.push(vec!["total".into(), format!("{prev} ms"), String::new()]);
    print_table(&["PHASE", "TOOK", "ENDED AT"], &rows);
}

/// Left-aligned columns, two spaces apart (the last column unpadded).
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_string()
    };
    let mut text = line(header.to_vec()) + "\n";
    for row in rows {
        text.push_str(&line(row.iter().map(String::as_str).collect()));
        text.push('\n');
    }
    print_raw(&text);
}
