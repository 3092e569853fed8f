//! `berth-updater`: reads a Berth OS update payload, checks its signature and version
//! against this machine's trusted keys, and writes its root into a slot's partition.
//!
//! `check --from PATH` reads an OCI layout directory or an `oci-archive` and says whether
//! the payload would be applied, and why not. `write-root --from PATH --partition DEV`
//! also streams the root into DEV (each block checked against the signed hash tree before
//! it is written) and reads it back. Choosing the slot, writing its kernel and initramfs
//! to the ESP and offering it for a trial are the apply path's next steps (init's).

mod payload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use berth_update::{apply, Keyring, Policy, Verified, Version};
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
        Command::WriteRoot { payload, partition } => {
            let (mut source, verified) = check(&payload)?;
            let written = write_root(&mut source, &verified, &partition)?;
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
    let keys = Keyring::load(&c.keys).map_err(|e| e.to_string())?;
    let payload = Payload::open(&c.from).map_err(|e| format!("{}: {e}", c.from.display()))?;
    let policy = Policy {
        running: &running,
        allow_downgrade: c.allow_downgrade,
    };
    let verified = berth_update::verify(
        &keys,
        &payload.manifest,
        payload.signature.as_deref(),
        policy,
    )
    .map_err(|e| format!("{}: refused: {e}", c.from.display()))?;
    Ok((payload, verified))
}

fn write_root(
    source: &mut Payload,
    v: &Verified,
    partition: &Path,
) -> Result<apply::Written, String> {
    let what = |e: &dyn std::fmt::Display| format!("{}: {e}", partition.display());
    let slot = std::fs::File::options()
        .read(true)
        .write(true)
        .open(partition)
        .map_err(|e| what(&e))?;
    let capacity = size_of(&slot).map_err(|e| what(&e))?;
    let written =
        apply::write_root(source, &v.manifest.root, &slot, capacity).map_err(|e| what(&e))?;
    apply::read_back(&v.manifest.root, &slot).map_err(|e| what(&e))?;
    Ok(written)
}

/// A partition's size: a block device's from seeking to its end, a file's from its
/// metadata.
fn size_of(f: &std::fs::File) -> std::io::Result<u64> {
    use std::io::Seek;
    let meta = f.metadata()?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    let mut f = f;
    let end = f.seek(std::io::SeekFrom::End(0))?;
    f.seek(std::io::SeekFrom::Start(0))?;
    Ok(end)
}
