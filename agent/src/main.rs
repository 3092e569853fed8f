//! `berth-agent`: the config agent. Only `--version` exists yet; datasources, formats
//! and applying arrive with issue 9.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version") | Some("-v") => {
            println!("berth-agent {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        other => {
            eprintln!(
                "berth-agent: {} is not implemented yet",
                other.unwrap_or("(no command)")
            );
            ExitCode::from(2)
        }
    }
}
