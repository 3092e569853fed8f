//! `berth-daemon`: keeps the declared containers running (a service of init, with a
//! delegated cgroup; `berth-runtime daemon` runs it).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "berth-daemon",
    version,
    about = "Keeps Berth's declared containers running"
)]
struct Cli {
    #[arg(long, default_value = "/etc/berth/containers.d")]
    declarations: PathBuf,
    /// Declarations made through the API (`berthctl run`).
    #[arg(long, default_value = "/var/lib/berth/containers.d")]
    api_declarations: PathBuf,
    /// What must survive reboots (operators' stops of `unless-stopped` containers).
    #[arg(long, default_value = "/var/lib/berth/daemon")]
    state_dir: PathBuf,
    #[arg(long, default_value = berth_store::store::DEFAULT_ROOT)]
    store: PathBuf,
    #[arg(long, default_value = berth_store::registry::CONFIG_PATH)]
    registries: PathBuf,
    #[arg(long, default_value = "/run/berth/runtime")]
    runtime_root: PathBuf,
    /// berth-runtime (default: beside this binary).
    #[arg(long)]
    runtime: Option<PathBuf>,
    #[arg(long, default_value = "/run/berth/containers")]
    run_dir: PathBuf,
    #[arg(long, default_value = "/var/log/berth/containers")]
    log_dir: PathBuf,
    #[arg(long, default_value = "/usr/share/berth/images")]
    builtin_images: PathBuf,
    #[arg(long, default_value = berth_daemon::volumes::DEFAULT_DIR)]
    volumes: PathBuf,
    #[arg(long, default_value = berth_control::RUNTIME_SOCKET)]
    socket: PathBuf,
    /// Bridge settings: `[bridge]` with `name` and `subnet` (default berth0, 10.88.0.0/16).
    #[arg(long, default_value = berth_schema::bridge::CONFIG_PATH)]
    network_config: PathBuf,
    #[arg(long, default_value = "/run/berth/netns")]
    netns_dir: PathBuf,
    /// The Prometheus endpoint's settings (user-data's `berth.metrics`); off without.
    #[arg(long, default_value = berth_schema::metrics::CONFIG_PATH)]
    metrics_config: PathBuf,
}

fn main() -> ExitCode {
    // SAFETY: first thing in main, before any thread is started and before anything
    // opens a descriptor: the process is single-threaded and fds 3... are init's.
    let stored = unsafe { berth_daemon::fdstore::take_listen_fds() };
    let cli = Cli::parse();
    let runtime = cli.runtime.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("berth-runtime")))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("/usr/bin/berth-runtime"))
    });
    let mut sup = berth_daemon::supervisor::Supervisor::new(berth_daemon::supervisor::Paths {
        declarations: cli.declarations,
        api_declarations: cli.api_declarations,
        state_dir: cli.state_dir,
        store: cli.store,
        registries: cli.registries,
        runtime_root: cli.runtime_root,
        runtime,
        run_dir: cli.run_dir,
        log_dir: cli.log_dir,
        builtin_images: cli.builtin_images,
        volumes: cli.volumes,
        socket: cli.socket,
        network_config: cli.network_config,
        netns_dir: cli.netns_dir,
        metrics_config: cli.metrics_config,
    });
    match sup.run(stored) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-daemon: {e}");
            ExitCode::FAILURE
        }
    }
}
