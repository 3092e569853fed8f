//! `berthctl update check | apply | status`: the OS update, carried out by init's
//! `berth-updater` service (one at a time) and followed through its status.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use berth_control::{InitProxy, SlotStatus, UpdateRequest, UpdateStatus};
use clap::Subcommand;

use crate::{error_text, Failure};

#[derive(Subcommand)]
pub enum Cmd {
    /// Whether the payload at REF (or --file) is newer than the running version, and
    /// signed by a key this machine trusts.
    Check(Source),
    /// Writes the payload into the slot that did not boot and offers it for a trial at
    /// the next reboot; shows the progress until it is done.
    Apply {
        #[command(flatten)]
        source: Source,
        /// Apply a version older than the running one.
        #[arg(long)]
        allow_downgrade: bool,
        /// Return once the update started (`update status` follows it).
        #[arg(long)]
        no_wait: bool,
    },
    /// The running version, what an update is doing (with its progress), what waits for
    /// a reboot, and the last error.
    Status,
}

#[derive(clap::Args)]
pub struct Source {
    /// A registry reference: REGISTRY/REPOSITORY:TAG (registries.toml's mirrors, auth
    /// and CAs apply).
    #[arg(conflicts_with = "file")]
    reference: Option<String>,
    /// An OCI layout directory or an oci-archive on the machine.
    #[arg(long)]
    file: Option<PathBuf>,
}

impl Source {
    fn text(&self) -> Result<String, Failure> {
        match (&self.reference, &self.file) {
            (Some(r), _) => Ok(r.clone()),
            (None, Some(p)) if p.is_absolute() => Ok(p.display().to_string()),
            (None, Some(p)) => {
                Err(format!("--file {}: an absolute path on the machine", p.display()).into())
            }
            (None, None) => {
                Err("name a registry reference (REGISTRY/REPOSITORY:TAG) or --file PATH".into())
            }
        }
    }
}

/// An apply is minutes at most; a check, a manifest and a signature.
const WAIT: Duration = Duration::from_secs(3600);

pub async fn run(init: &InitProxy<'_>, cmd: Cmd, json: bool) -> Result<(), Failure> {
    match cmd {
        Cmd::Status => {
            let status = init.update_status().await.map_err(error_text)?;
            let slots = init.slots().await.map_err(error_text)?;
            print_status(&status, &slots, json);
            Ok(())
        }
        Cmd::Check(source) => {
            let done = start_and_wait(init, "check", &source, false, true, json).await?;
            if !json {
                match done.state.as_str() {
                    "available" => {
                        println!("berth {} is available from {}", done.version, done.source)
                    }
                    _ => println!(
                        "up to date: {} offers berth {}, not newer than the running version",
                        done.source, done.version
                    ),
                }
            }
            Ok(())
        }
        Cmd::Apply {
            source,
            allow_downgrade,
            no_wait,
        } => {
            let done =
                start_and_wait(init, "apply", &source, allow_downgrade, !no_wait, json).await?;
            if !json && !no_wait {
                println!(
                    "berth {} written into slot {}: it is tried at the next reboot (berthctl reboot)",
                    done.version, done.slot
                );
            }
            Ok(())
        }
    }
}

/// Starts the request; when `wait`, follows its status to the end (a bar on a
/// terminal, a line per step otherwise) and fails as it failed.
async fn start_and_wait(
    init: &InitProxy<'_>,
    action: &str,
    source: &Source,
    allow_downgrade: bool,
    wait: bool,
    json: bool,
) -> Result<UpdateStatus, Failure> {
    let request = UpdateRequest {
        action: action.into(),
        source: source.text()?,
        allow_downgrade,
        id: 0,
    };
    let id = init.update_start(&request).await.map_err(error_text)?;
    if !wait {
        if json {
            println!("{}", serde_json::json!({ "id": id }));
        } else {
            println!("update {id} started: berthctl update status follows it");
        }
        return Ok(UpdateStatus::default());
    }
    let bar = !json && std::io::stdout().is_terminal();
    let mut last_step = String::new();
    let done = berth_control::wait_update(init, id, WAIT, |s| {
        if bar {
            print!("\r\x1b[K{}", progress_line(s));
            let _ = std::io::Write::flush(&mut std::io::stdout());
        } else if !json && s.step != last_step && !s.step.is_empty() {
            println!("{}", progress_line(s));
        }
        last_step.clone_from(&s.step);
    })
    .await;
    if bar {
        println!();
    }
    let s = done?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
    }
    if s.state == "failed" {
        return Err(format!("update {action} failed: {}", s.error).into());
    }
    Ok(s)
}

/// `applying root [#######.............] 35% 12/35 MiB`.
pub fn progress_line(s: &UpdateStatus) -> String {
    let mut line = format!("{} {}", s.state, s.step);
    if let Some(pct) = (s.done.min(s.total) * 100).checked_div(s.total) {
        let filled = usize::try_from(pct / 5).unwrap_or(20);
        line.push_str(&format!(
            " [{}{}] {pct:3}% {}/{} MiB",
            "#".repeat(filled),
            ".".repeat(20 - filled),
            s.done >> 20,
            s.total >> 20
        ));
    }
    line
}

fn print_status(s: &UpdateStatus, slots: &[SlotStatus], json: bool) {
    let booted = slots.iter().find(|x| x.booted);
    let pending = slots.iter().find(|x| !x.booted && x.state == "trial");
    if json {
        let v = serde_json::json!({
            "running": booted.map(|b| b.version.clone()),
            "slot": booted.map(|b| b.slot.clone()),
            "pending_reboot": pending.map(|p| serde_json::json!({"slot": p.slot, "version": p.version})),
            "update": s,
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return;
    }
    if let Some(b) = booted {
        let how = match b.state.as_str() {
            "trial" => format!(", on trial: {} boot attempts left", b.tries_left),
            "active" => ", blessed".to_string(),
            _ => String::new(),
        };
        println!("running:   berth {} (slot {}{how})", b.version, b.slot);
    }
    if let Some(bad) = slots
        .iter()
        .find(|x| !x.booted && x.state == "bad" && !x.version.is_empty())
    {
        println!(
            "rollback:  berth {} in slot {} lost its trial ({})",
            bad.version, bad.slot, bad.why
        );
    }
    let what = match s.state.as_str() {
        "idle" => "idle: no update asked for since this boot".to_string(),
        "available" => format!("berth {} available from {}", s.version, s.source),
        "up-to-date" => format!("up to date ({} offers berth {})", s.source, s.version),
        "applied" => format!(
            "berth {} from {} written into slot {}",
            s.version, s.source, s.slot
        ),
        "failed" => format!(
            "failed ({})",
            if s.source.is_empty() { "-" } else { &s.source }
        ),
        _ => progress_line(s),
    };
    println!("update:    {what}");
    match pending {
        Some(p) => println!(
            "pending:   berth {} in slot {} is tried at the next reboot",
            p.version, p.slot
        ),
        None => println!("pending:   nothing"),
    }
    if !s.error.is_empty() {
        println!("error:     {}", s.error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_line_has_a_bar_only_for_a_step_with_a_size() {
        let mut s = UpdateStatus {
            state: "applying".into(),
            step: "root".into(),
            done: 9 << 20,
            total: 36 << 20,
            ..UpdateStatus::default()
        };
        assert_eq!(
            progress_line(&s),
            "applying root [#####...............]  25% 9/36 MiB"
        );
        s.done = s.total + 1;
        assert!(progress_line(&s).contains("[####################] 100%"));
        s.step = "offer".into();
        s.total = 0;
        assert_eq!(progress_line(&s), "applying offer");
    }

    #[test]
    fn a_source_is_a_reference_or_an_absolute_file() {
        let src = |reference: Option<&str>, file: Option<&str>| Source {
            reference: reference.map(String::from),
            file: file.map(PathBuf::from),
        };
        assert_eq!(
            src(Some("r.example/os:1"), None).text().unwrap(),
            "r.example/os:1"
        );
        assert_eq!(src(None, Some("/run/p.tar")).text().unwrap(), "/run/p.tar");
        assert!(src(None, Some("p.tar")).text().is_err());
        assert!(src(None, None).text().is_err());
    }
}
