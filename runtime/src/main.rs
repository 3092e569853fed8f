//! `berth-runtime`: the container runtime. Only `--version` exists yet; the OCI core, the
//! image store and the daemon arrive with their issues (5, 6, 7).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version") | Some("-v") => {
            println!("berth-runtime {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        other => {
            eprintln!(
                "berth-runtime: {} is not implemented yet",
                other.unwrap_or("(no command)")
            );
            ExitCode::from(2)
        }
    }
}
