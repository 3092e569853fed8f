//! `berth-updater`: reads a Berth OS update payload, checks its signature and version
//! against this machine's trusted keys, and writes its root into a slot's partition.
//!
//! `check --from PATH` reads an OCI layout directory or an `oci-archive` and says whether
//! the payload would be applied, and why not. `write-root --from PATH --partition DEV`
//! also streams the root into DEV (each block checked against the signed hash tree before
//! it is written) and reads it back. `apply --from PATH`, on a running Berth machine,
//! writes the payload into the slot that did not boot and offers it for a trial boot.

mod apply;
mod payload;

use std::path::PathBuf;
use std::process::ExitCode;

use berth_update::{Verified, Version};
use clap::{Args, Parser, Subcommand};

use payload::Payload;

#[derive(Parser, Debug)]
#[command(
    name = "berth-updater",
    version,
    about = "Checks and writes Berth update payloads"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Checks a payload: its form, its signature, its version.
    Check(Checked),
    /// On a running Berth machine: writes the payload into the slot that did not boot
    /// and offers it for a trial boot (the next reboot tries it).
    Apply {
        /// An OCI image layout directory, or an oci-archive file.
        #[arg(long)]
        from: PathBuf,
        /// The trusted public keys (minisign's `*.pub`).
        #[arg(long, default_value = berth_update::KEYS_DIR)]
        keys: PathBuf,
        /// Apply a version older than the running one.
        #[arg(long)]
        allow_downgrade: bool,
        /// Boot attempts the new version's trial gets.
        #[arg(long, default_value_t = berth_bootslot::state::DEFAULT_TRIES)]
        tries: u8,
    },
    /// Checks a payload, then writes its root into a partition and reads it back.
    WriteRoot {
        #[command(flatten)]
        payload: Checked,
        /// The slot's partition (a block device, or a file in tests).
        #[arg(long)]
        partition: PathBuf,
    },
}

#[derive(Args, Debug)]
struct Checked {
    /// An OCI image layout directory, or an oci-archive file.
    #[arg(long)]
    from: PathBuf,
    /// The trusted public keys (minisign's `*.pub`).
    #[arg(long, default_value = berth_update::KEYS_DIR)]
    keys: PathBuf,
    /// The running version (default: this build's).
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    running: String,
    /// Apply a version older than the running one.
    #[arg(long)]
    allow_downgrade: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-updater: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Check(c) => {
            let (_, verified) = check(&c)?;
            println!(
                "berth-updater: berth {} (build {}) signed by {}: can be applied",
                verified.manifest.version, verified.manifest.build_id, verified.key
            );
            Ok(())
        }
        Command::Apply {
            from,
            keys,
            allow_downgrade,
            tries,
        } => {
            let done = apply::apply(&apply::Request {
                from: &from,
                keys: &keys,
                allow_downgrade,
                tries,
            })?;
            println!(
                "berth-updater: berth {} written into slot {} ({}: {} bytes of root and hash tree, read back) and offered for a trial boot: it is tried at the next reboot",
                done.version,
                done.slot,
                done.partition.display(),
                done.written.data_bytes + done.written.tree_bytes
            );
            Ok(())
        }
        Command::WriteRoot { payload, partition } => {
            let (mut source, verified) = check(&payload)?;
            let written = apply::write_root(&mut source, &verified, &partition)?;
            println!(
                "berth-updater: berth {} written to {} ({} bytes of data, {} of hash tree) and read back",
                verified.manifest.version,
                partition.display(),
                written.data_bytes,
                written.tree_bytes
            );
            Ok(())
        }
    }
}

fn check(c: &Checked) -> Result<(Payload, Verified), String> {
    let running = Version::parse(&c.running).map_err(|e| format!("--running: {e}"))?;
    payload::open_verified(&c.from, &c.keys, &running, c.allow_downgrade)
}
