//! `berth-updater`: reads a Berth OS update payload, checks its signature and version
//! against this machine's trusted keys, and writes it into the slot that did not boot.
//!
//! A payload comes from an OCI layout directory or an `oci-archive` (`--from PATH`), or
//! from a registry (`--ref REGISTRY/REPOSITORY:TAG`, through `registries.toml`).
//! `check` says whether it would be applied, and why not. `write-root --partition DEV`
//! streams its root into DEV (each block checked against the signed hash tree before it
//! is written) and reads it back. `apply`, on a running Berth machine, writes the payload
//! into the other slot and offers it for a trial boot. `run` is the service init starts
//! for `berthctl update`: it carries out the request init left in `/run/berth`; `auto`
//! is the automatic updates' service.

mod apply;
mod auto;
mod fleetlock;
mod payload;
mod progress;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use berth_control::{UpdateRequest, UPDATE_REQUEST, UPDATE_STATUS};
use berth_update::{Verified, Version};
use clap::{Args, Parser, Subcommand};

use payload::{Origin, Payload};
use progress::Progress;

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
        #[command(flatten)]
        source: Source,
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
    /// The service `berthctl update` starts: carries out init's request, with its
    /// progress in the status file.
    Run,
    /// The automatic updates' service: checks, applies and reboots as user-data's
    /// `berth.update` says (off without a source).
    Auto,
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
struct Source {
    /// An OCI image layout directory, or an oci-archive file.
    #[arg(long)]
    from: Option<PathBuf>,
    /// A registry reference: REGISTRY/REPOSITORY:TAG or REGISTRY/REPOSITORY@DIGEST.
    #[arg(long = "ref")]
    reference: Option<String>,
}

impl Source {
    fn origin(&self) -> Origin {
        match (&self.from, &self.reference) {
            (Some(path), _) => Origin::File(path.clone()),
            (None, Some(r)) => Origin::Registry(r.clone()),
            // clap's group requires one of them.
            (None, None) => Origin::File(PathBuf::new()),
        }
    }
}

#[derive(Args, Debug)]
struct Checked {
    #[command(flatten)]
    source: Source,
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
    let result = run(cli);
    // The last update events on their way to init's ring.
    berth_control::events::flush(std::time::Duration::from_secs(2));
    match result {
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
            source,
            keys,
            allow_downgrade,
            tries,
        } => {
            let mut progress = Progress::new(Some(UPDATE_STATUS.into()));
            progress.request(0, &source.origin().to_string());
            apply_and_say(
                &apply::Request {
                    from: &source.origin(),
                    keys: &keys,
                    allow_downgrade,
                    tries,
                },
                &mut progress,
            )
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
        Command::Run => run_request(Path::new(UPDATE_REQUEST)),
        Command::Auto => auto::run(),
    }
}

fn apply_and_say(r: &apply::Request<'_>, progress: &mut Progress) -> Result<(), String> {
    let done = apply::apply(r, progress)?;
    println!(
        "berth-updater: berth {} written into slot {} ({}: {} bytes of root and hash tree, read back) and offered for a trial boot: it is tried at the next reboot",
        done.version,
        done.slot,
        done.partition.display(),
        done.written.data_bytes + done.written.tree_bytes
    );
    Ok(())
}

/// The request init left: at most a few hundred bytes of JSON, from a root-only
/// directory.
fn read_request(path: &Path) -> Result<UpdateRequest, String> {
    use std::io::Read;
    let mut text = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(64 * 1024).read_to_end(&mut text))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn run_request(path: &Path) -> Result<(), String> {
    let mut progress = Progress::new(Some(UPDATE_STATUS.into()));
    let request = match read_request(path) {
        Ok(r) => r,
        Err(e) => {
            progress.failed(&e);
            return Err(e);
        }
    };
    let origin = if request.source.starts_with('/') {
        Origin::File(PathBuf::from(&request.source))
    } else {
        Origin::Registry(request.source.clone())
    };
    progress.request(request.id, &request.source);
    let keys = Path::new(berth_update::KEYS_DIR);
    match request.action.as_str() {
        "apply" => apply_and_say(
            &apply::Request {
                from: &origin,
                keys,
                allow_downgrade: request.allow_downgrade,
                tries: berth_bootslot::state::DEFAULT_TRIES,
            },
            &mut progress,
        ),
        "check" => {
            progress.state("checking");
            let checked = check_against_booted(&origin, keys);
            match &checked {
                Ok((version, newer)) => {
                    progress.version(version);
                    progress.state(if *newer { "available" } else { "up-to-date" });
                    println!(
                        "berth-updater: {origin}: berth {version}{}",
                        if *newer {
                            ", newer: can be applied"
                        } else {
                            ", not newer than the running version"
                        }
                    );
                }
                Err(e) => progress.failed(e),
            }
            checked.map(|_| ())
        }
        other => {
            let e = format!("{}: unknown action {other:?}", path.display());
            progress.failed(&e);
            Err(e)
        }
    }
}

/// The payload's version, signature checked, and whether it is newer than the booted
/// slot's.
fn check_against_booted(origin: &Origin, keys: &Path) -> Result<(String, bool), String> {
    let running = apply::booted_version()?;
    // Any version passes here; the comparison is the answer.
    let (_, verified) = payload::open_verified(origin, keys, &running, true)?;
    let version = &verified.manifest.version;
    Ok((version.to_string(), *version > running))
}

fn check(c: &Checked) -> Result<(Payload, Verified), String> {
    let running = Version::parse(&c.running).map_err(|e| format!("--running: {e}"))?;
    payload::open_verified(&c.source.origin(), &c.keys, &running, c.allow_downgrade)
}
