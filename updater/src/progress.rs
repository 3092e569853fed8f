//! What an apply is doing, for the operator: [`UpdateStatus`] in
//! [`berth_control::UPDATE_STATUS`], rewritten at each step and, while the root is
//! written or read back, at most twice a second.
//!
//! For the power-cut tests, `BERTH_UPDATER_HALT_AT=STEP` stops the apply as `STEP`
//! begins (`root-half`: halfway through the root; `applied`: after the offer) with the
//! state `halted`, and waits there for the test to cut the machine's power. Whoever can
//! set the updater's environment is root already, and nothing is written while it waits.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use berth_control::UpdateStatus;

pub const HALT_ENV: &str = "BERTH_UPDATER_HALT_AT";

/// How often the status file is rewritten while bytes move.
const EVERY: Duration = Duration::from_millis(500);

pub struct Progress {
    status: UpdateStatus,
    /// None: nothing written (the build host's `check` and `write-root`).
    path: Option<PathBuf>,
    halt_at: Option<String>,
    last_write: Option<Instant>,
    halted_half: bool,
    /// The state and step of the last event recorded (`berthctl events`).
    last_event: (String, String),
}

impl Progress {
    pub fn new(path: Option<PathBuf>) -> Progress {
        Progress {
            status: UpdateStatus::default(),
            path,
            halt_at: std::env::var(HALT_ENV).ok().filter(|s| !s.is_empty()),
            last_write: None,
            halted_half: false,
            last_event: Default::default(),
        }
    }

    /// A status written nowhere (and never halted).
    pub fn silent() -> Progress {
        Progress {
            halt_at: None,
            ..Progress::new(None)
        }
    }

    pub fn state(&mut self, state: &str) {
        self.status.state = state.to_string();
        self.write();
    }

    /// The request being answered, and where its payload comes from.
    pub fn request(&mut self, id: u64, source: &str) {
        self.status.id = id;
        self.status.source = source.to_string();
    }

    pub fn version(&mut self, version: &str) {
        self.status.version = version.to_string();
    }

    pub fn slot(&mut self, slot: &str) {
        self.status.slot = slot.to_string();
    }

    /// A step of the apply begins: `total` bytes to move (0: a step without a size).
    pub fn step(&mut self, step: &str, total: u64) {
        self.status.state = "applying".into();
        self.status.step = step.to_string();
        self.status.done = 0;
        self.status.total = total;
        self.halted_half = false;
        self.write();
        self.halt_if(step);
    }

    /// `done` bytes of the step moved.
    pub fn advance(&mut self, done: u64) {
        self.status.done = done;
        if self.last_write.is_none_or(|t| t.elapsed() >= EVERY) {
            self.write();
        }
        if !self.halted_half && self.status.total > 0 && done * 2 >= self.status.total {
            self.halted_half = true;
            let half = format!("{}-half", self.status.step);
            self.halt_if(&half);
        }
    }

    pub fn applied(&mut self) {
        self.status.state = "applied".into();
        self.status.step.clear();
        self.status.error.clear();
        self.write();
        self.halt_if("applied");
    }

    pub fn failed(&mut self, error: &str) {
        self.status.state = "failed".into();
        self.status.error = error.to_string();
        self.write();
    }

    fn write(&mut self) {
        let Some(path) = &self.path else { return };
        self.status.at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.last_write = Some(Instant::now());
        // The status is for the operator; an update does not stop because /run is full.
        let written = serde_json::to_vec(&self.status)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                berth_persist::write_file(path, &bytes, 0o644).map_err(|e| e.to_string())
            });
        if let Err(e) = written {
            eprintln!("berth-updater: {}: {e}", path.display());
        }
        self.record_event();
    }

    /// An event in init's ring when the state or the step changed (not for each
    /// block written).
    fn record_event(&mut self) {
        let now = (self.status.state.clone(), self.status.step.clone());
        if now == self.last_event {
            return;
        }
        let s = &self.status;
        let mut e = berth_control::Event::new("update", &s.state, &s.version);
        for (key, value) in [
            ("step", &s.step),
            ("slot", &s.slot),
            ("source", &s.source),
            ("error", &s.error),
        ] {
            if !value.is_empty() {
                e = e.with(key, value);
            }
        }
        eprintln!("berth-updater: event: {}", e.line());
        berth_control::events::send(e);
        self.last_event = now;
    }

    fn halt_if(&mut self, here: &str) {
        if self.halt_at.as_deref() != Some(here) {
            return;
        }
        self.status.state = "halted".into();
        self.status.step = here.to_string();
        self.write();
        eprintln!("berth-updater: halted at {here} ({HALT_ENV}), waiting for the power cut");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_follows_the_steps_and_keeps_the_last_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("update.json");
        let mut p = Progress::new(Some(path.clone()));
        p.halt_at = None;
        let read =
            || -> UpdateStatus { serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap() };
        p.version("0.2.0");
        p.slot("b");
        p.step("root", 1000);
        let s = read();
        assert_eq!(
            (
                s.state.as_str(),
                s.step.as_str(),
                s.total,
                s.version.as_str()
            ),
            ("applying", "root", 1000, "0.2.0")
        );
        p.advance(400);
        // Within the half second: not rewritten yet.
        assert_eq!(read().done, 0);
        p.failed("b: no room");
        let s = read();
        assert_eq!(
            (s.state.as_str(), s.error.as_str(), s.done),
            ("failed", "b: no room", 400)
        );
    }
}
