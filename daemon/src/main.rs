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
}

fn main() -> ExitCode {
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
        store: cli.store,
        registries: cli.registries,
        runtime_root: cli.runtime_root,
        runtime,
        run_dir: cli.run_dir,
        log_dir: cli.log_dir,
        builtin_images: cli.builtin_images,
        volumes: cli.volumes,
    });
    match sup.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-daemon: {e}");
            ExitCode::FAILURE
        }
    }
}
