//! Service output: each service's stdout and stderr come to init through pipes; init
//! writes every line with a UTC timestamp and the stream to `/var/log/berth/<name>.log`
//! (`2026-11-25T11:41:55.123Z stderr message`), rotates the file to `<name>.log.1` when it
//! passes the service's `log_max_bytes`, and keeps the last lines in memory for the
//! console when the service fails.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

/// Lines kept for the console when a service fails.
pub const TAIL_LINES: usize = 10;
/// What one wakeup reads from one pipe; the rest waits for the next turn of the loop.
const MAX_READ_PER_WAKEUP: usize = 64 * 1024;
/// A line longer than this is cut (and continued on the next line).
const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// The read end of a service's stdout or stderr, with the part of a line not yet ended.
pub struct Pipe {
    fd: OwnedFd,
    pub stream: Stream,
    partial: Vec<u8>,
}

impl Pipe {
    pub fn new(fd: OwnedFd, stream: Stream) -> Self {
        Self {
            fd,
            stream,
            partial: Vec::new(),
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Reads what is there (the fd is non-blocking) into `log`, at most
    /// `MAX_READ_PER_WAKEUP` so a chatty service cannot keep PID 1 from its other work;
    /// false at end of file.
    pub fn drain(&mut self, log: &mut ServiceLog) -> bool {
        let mut buf = [0u8; 8192];
        let mut taken = 0;
        while taken < MAX_READ_PER_WAKEUP {
            match nix::unistd::read(&self.fd, &mut buf) {
                Ok(0) => {
                    if !self.partial.is_empty() {
                        let rest = std::mem::take(&mut self.partial);
                        log.line(self.stream, &rest);
                    }
                    return false;
                }
                Ok(n) => {
                    taken += n;
                    self.take(&buf[..n], log);
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => return true,
                Err(_) => return false,
            }
        }
        true
    }

    fn take(&mut self, mut data: &[u8], log: &mut ServiceLog) {
        while let Some(nl) = data.iter().position(|b| *b == b'\n') {
            self.partial.extend_from_slice(&data[..nl]);
            let line = std::mem::take(&mut self.partial);
            log.line(self.stream, &line);
            data = &data[nl + 1..];
        }
        self.partial.extend_from_slice(data);
        while self.partial.len() >= MAX_LINE {
            let rest = self.partial.split_off(MAX_LINE);
            let line = std::mem::replace(&mut self.partial, rest);
            log.line(self.stream, &line);
        }
    }
}

/// One service's log file and its recent lines.
pub struct ServiceLog {
    pub path: PathBuf,
    max_bytes: u64,
    file: Option<File>,
    size: u64,
    tail: VecDeque<String>,
    /// The file could not be written: said once, then only the memory tail is kept.
    broken: bool,
}

impl ServiceLog {
    pub fn new(path: PathBuf, max_bytes: u64) -> Self {
        Self {
            path,
            max_bytes,
            file: None,
            size: 0,
            tail: VecDeque::new(),
            broken: false,
        }
    }

    /// Writes one line, stamped. Init's own notes use `Stream::Stderr` and a `[init]` tag.
    pub fn line(&mut self, stream: Stream, text: &[u8]) {
        let text = String::from_utf8_lossy(text);
        let text = text.trim_end_matches('\r');
        let entry = format!("{} {} {}\n", utc_now(), stream.as_str(), text);
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(text.to_string());
        self.write(entry.as_bytes());
    }

    fn write(&mut self, bytes: &[u8]) {
        if self.broken {
            return;
        }
        let len = bytes.len() as u64;
        if self.file.is_some() && self.size + len > self.max_bytes {
            self.rotate();
        }
        if self.file.is_none() {
            if let Err(e) = self.open() {
                crate::warn!(
                    "log {}: {e}; keeping only the last lines in memory",
                    self.path.display()
                );
                self.broken = true;
                return;
            }
        }
        if let Some(f) = &mut self.file {
            if f.write_all(bytes).is_ok() {
                self.size += len;
            }
        }
    }

    fn open(&mut self) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = f.metadata()?.len();
        self.file = Some(f);
        Ok(())
    }

    /// `<name>.log` becomes `<name>.log.1` (replacing the older one); a new file starts.
    fn rotate(&mut self) {
        self.file = None;
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        if let Err(e) = std::fs::rename(&self.path, &old) {
            crate::warn!("rotating {}: {e}", self.path.display());
        }
        self.size = 0;
    }

    /// Syncs and closes the file for good (shutdown: /var is about to be unmounted, and an
    /// open file would keep it busy); later lines are kept in memory only.
    pub fn close(&mut self) {
        if let Some(f) = self.file.take() {
            let _ = f.sync_all();
        }
        self.broken = true;
    }

    /// Forgets the remembered lines (a new run of the service begins).
    pub fn clear_tail(&mut self) {
        self.tail.clear();
    }

    /// The last lines, oldest first.
    pub fn tail(&self) -> impl Iterator<Item = &str> {
        self.tail.iter().map(String::as_str)
    }
}

/// Now as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn utc_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format_utc(now.as_secs(), now.subsec_millis())
}

/// Days since 1970-01-01 to a civil date: the well-known proleptic Gregorian conversion
/// (H. Hinnant, "chrono-Compatible Low-Level Date Algorithms", days_from_civil's inverse).
fn format_utc(secs: u64, millis: u32) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc() {
        assert_eq!(format_utc(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_utc(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(format_utc(1_795_613_715, 123), "2026-11-25T13:35:15.123Z");
    }

    #[test]
    fn splits_lines_keeps_the_tail_and_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log/svc.log");
        let mut log = ServiceLog::new(path.clone(), 4096);
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut pipe = Pipe::new(r, Stream::Stderr);
        nix::unistd::write(&w, b"one\ntwo\r\nthr").unwrap();
        drop(w);
        assert!(!pipe.drain(&mut log));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].ends_with("Z stderr one"), "{text}");
        assert!(lines[2].ends_with(" stderr thr"), "{text}");
        for i in 0..200 {
            log.line(
                Stream::Stdout,
                format!("line {i} of some length").as_bytes(),
            );
        }
        let rotated = dir.path().join("log/svc.log.1");
        assert!(rotated.exists());
        assert!(std::fs::metadata(&path).unwrap().len() <= 4096);
        let tail: Vec<&str> = log.tail().collect();
        assert_eq!(tail.len(), TAIL_LINES);
        assert_eq!(tail.last(), Some(&"line 199 of some length"));
    }
}
