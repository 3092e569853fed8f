//! The guest's serial console as QEMU writes it to a file: waiting for a line, and when
//! it first appeared counted from QEMU's start (what boot-time figures are made of).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// How often the file is read again while waiting. Short: `LineSeen::at` is only as
/// precise as this.
const POLL: Duration = Duration::from_millis(10);
/// Console lines quoted in a "not seen" error.
const TAIL_LINES: usize = 40;

/// A console line and when it was first seen, counted from QEMU's start.
#[derive(Debug, Clone)]
pub struct LineSeen {
    pub line: String,
    pub at: Duration,
}

/// A console log file being written by a QEMU started at `started`.
#[derive(Debug, Clone)]
pub struct Console {
    path: PathBuf,
    started: Instant,
}

impl Console {
    pub fn new(path: PathBuf, started: Instant) -> Self {
        Console { path, started }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Everything so far; serial output is bytes, not always UTF-8.
    pub fn read(&self) -> String {
        std::fs::read(&self.path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits for the `n`th (from 1) line containing `pattern`. `exited` says whether the
    /// writer is gone, which ends the wait early: nothing more will come.
    pub fn wait_for_line_count(
        &self,
        pattern: &str,
        n: usize,
        timeout: Duration,
        exited: impl Fn() -> bool,
    ) -> Result<LineSeen> {
        let deadline = Instant::now() + timeout;
        loop {
            // Asked before reading, so a line written just before QEMU exited is still
            // found on this pass.
            let gone = exited();
            let text = self.read();
            if let Some(line) = nth_line_with(&text, pattern, n, gone) {
                return Ok(LineSeen {
                    line: line.to_string(),
                    at: self.started.elapsed(),
                });
            }
            if gone || Instant::now() >= deadline {
                bail!(
                    "no console line with {pattern:?} (#{n}) after {:.1} s{}; console in {}, last lines:\n{}",
                    self.started.elapsed().as_secs_f64(),
                    if gone { ", QEMU already exited" } else { ", QEMU still running" },
                    self.path.display(),
                    tail(&text, TAIL_LINES)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// The last `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> String {
        tail(&self.read(), n)
    }
}

/// Only complete lines count while QEMU runs: a line still being written could match
/// on its first part and be returned cut short. Once it exited, the last line is as
/// complete as it will ever be.
fn nth_line_with<'a>(text: &'a str, pattern: &str, n: usize, finished: bool) -> Option<&'a str> {
    let complete = if finished {
        text
    } else {
        &text[..text.rfind('\n').map_or(0, |i| i + 1)]
    };
    complete
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| l.contains(pattern))
        .nth(n.saturating_sub(1))
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn finds_a_line_appended_later_and_counts_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        std::fs::write(&path, "[    0.1] booting\n").unwrap();
        let console = Console::new(path.clone(), Instant::now());
        let writer = std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            std::thread::sleep(Duration::from_millis(100));
            // Half a line first: it must not be taken for the whole one.
            f.write_all(b"berth: re").unwrap();
            std::thread::sleep(Duration::from_millis(100));
            f.write_all(b"ady hostname x\r\nberth: ready again\n")
                .unwrap();
        });
        let seen = console
            .wait_for_line_count("berth: re", 1, Duration::from_secs(5), || false)
            .unwrap();
        assert_eq!(seen.line, "berth: ready hostname x");
        assert!(seen.at >= Duration::from_millis(150), "{:?}", seen.at);
        writer.join().unwrap();
        let second = console
            .wait_for_line_count("berth: ready", 2, Duration::from_secs(1), || false)
            .unwrap();
        assert_eq!(second.line, "berth: ready again");
    }

    #[test]
    fn gives_up_at_once_when_the_writer_exited_and_quotes_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let lines: String = (0..100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, lines).unwrap();
        let console = Console::new(path, Instant::now());
        let started = Instant::now();
        let err = console
            .wait_for_line_count("never", 1, Duration::from_secs(30), || true)
            .unwrap_err()
            .to_string();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(err.contains("QEMU already exited"), "{err}");
        assert!(err.contains("line 99") && err.contains("line 60"), "{err}");
        assert!(!err.contains("line 59\n"), "{err}");
    }

    #[test]
    fn times_out_while_the_writer_runs() {
        let dir = tempfile::tempdir().unwrap();
        let console = Console::new(dir.path().join("missing.log"), Instant::now());
        let err = console
            .wait_for_line_count("x", 1, Duration::from_millis(50), || false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("still running"), "{err}");
    }
}
