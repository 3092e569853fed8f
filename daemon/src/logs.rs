//! Container logs: each of a container's stdout and stderr pipes read by a thread, line
//! by line, into `/var/log/berth/containers/NAME.log` as JSON lines docker's json-file
//! driver would recognise (`{"log":"...\n","stream":"stdout","time":"RFC 3339"}`), so
//! `berthctl logs` can show stream and time. Rotated to `NAME.log.1` past a size.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Lines longer than this are split (a runaway line must not grow memory).
const MAX_LINE: usize = 64 * 1024;

pub struct LogFile {
    path: PathBuf,
    max_bytes: u64,
    file: Option<std::fs::File>,
    written: u64,
}

impl LogFile {
    pub fn open(dir: &Path, name: &str, max_bytes: u64) -> std::io::Result<Arc<Mutex<LogFile>>> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let written = file.metadata().map_or(0, |m| m.len());
        Ok(Arc::new(Mutex::new(LogFile {
            path,
            max_bytes,
            file: Some(file),
            written,
        })))
    }

    /// A log that keeps nothing (when the real one cannot be opened: the pipe must
    /// still be drained).
    pub fn discard() -> Arc<Mutex<LogFile>> {
        Arc::new(Mutex::new(LogFile {
            path: PathBuf::new(),
            max_bytes: u64::MAX,
            file: None,
            written: 0,
        }))
    }

    fn write_line(&mut self, stream: &str, line: &str) {
        if self.written >= self.max_bytes {
            let old = self.path.with_extension("log.1");
            let _ = std::fs::rename(&self.path, old);
            self.file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .ok();
            self.written = 0;
        }
        let record = serde_json::json!({"log": line, "stream": stream, "time": berth_runtime::container::now_rfc3339()});
        let mut text = record.to_string();
        text.push('\n');
        if let Some(f) = self.file.as_mut() {
            if f.write_all(text.as_bytes()).is_ok() {
                self.written += text.len() as u64;
            }
        }
    }
}

/// Reads `pipe` until its writers are gone, one record per line.
pub fn pump(
    pipe: OwnedFd,
    stream: &'static str,
    log: Arc<Mutex<LogFile>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(std::fs::File::from(pipe));
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match std::io::Read::take(&mut reader, MAX_LINE as u64).read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    if let Ok(mut l) = log.lock() {
                        l.write_line(stream, &line);
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_json_records_and_rotate() {
        let t = tempfile::tempdir().unwrap();
        let log = LogFile::open(t.path(), "web", 200).unwrap();
        let (r, w) = rustix::pipe::pipe().unwrap();
        let h = pump(r, "stdout", log.clone());
        let mut w = std::fs::File::from(w);
        writeln!(w, "hello").unwrap();
        writeln!(w, "{}", "x".repeat(300)).unwrap();
        writeln!(w, "after").unwrap();
        drop(w);
        h.join().unwrap();
        let old = std::fs::read_to_string(t.path().join("web.log.1")).unwrap();
        let first: serde_json::Value = serde_json::from_str(old.lines().next().unwrap()).unwrap();
        assert_eq!(first["log"], "hello\n");
        assert_eq!(first["stream"], "stdout");
        assert!(first["time"].as_str().unwrap().ends_with('Z'));
        let now = std::fs::read_to_string(t.path().join("web.log")).unwrap();
        assert!(now.contains("after"), "{now}");
    }
}
