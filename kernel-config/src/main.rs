//! `kernel-config-check --config PATH [--modules-dir DIR] [--fragment PATH]`: verifies a
//! kernel config against Berth's fragment. Prints one line per unmet requirement and
//! exits 1 if there is any; with `--modules-dir` (a lib/modules/<release> directory
//! indexed by depmod) prints the modules an initramfs must carry, one per line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kernel_config::{check, parse_fragment, KernelConfig, FRAGMENT};

#[derive(Parser, Debug)]
#[command(
    name = "kernel-config-check",
    version,
    about = "Checks a kernel config against berth.config"
)]
struct Args {
    /// The kernel's config (/boot/config-<release>).
    #[arg(long)]
    config: PathBuf,
    /// Print the modules to carry, closed over this module index.
    #[arg(long)]
    modules_dir: Option<PathBuf>,
    /// Another fragment instead of the built-in berth.config.
    #[arg(long)]
    fragment: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kernel-config-check: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<ExitCode, String> {
    let text = match &args.fragment {
        Some(p) => {
            std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))?
        }
        None => FRAGMENT.to_string(),
    };
    let fragment = parse_fragment(&text).map_err(|e| e.to_string())?;
    let config = KernelConfig::load(&args.config).map_err(|e| e.to_string())?;
    let report = check(&fragment, &config);
    for v in &report.violations {
        println!("unmet: {v}");
    }
    if let Some(dir) = &args.modules_dir {
        let index = kmod::ModuleIndex::load(dir).map_err(|e| e.to_string())?;
        let closure = index.closure(&report.modules).map_err(|e| {
            format!(
                "{e} (listed in the fragment, missing from {})",
                dir.display()
            )
        })?;
        println!(
            "# {} modules to carry ({} listed, early: {})",
            closure.len(),
            report.modules.len(),
            report.early.join(" ")
        );
        for m in closure {
            println!("{m}");
        }
    }
    if report.violations.is_empty() {
        eprintln!(
            "kernel-config-check: {} requirements met",
            fragment.requirements.len()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "kernel-config-check: {} requirement(s) unmet",
            report.violations.len()
        );
        Ok(ExitCode::from(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Args::command().debug_assert();
    }
}
