//! Container logs: every container's stdout and stderr pipes read by one thread (epoll), line
//! by line, into `/var/log/berth/containers/NAME.log` as JSON lines docker's json-file
//! driver would recognise (`{"log":"...\n","stream":"stdout","time":"RFC 3339"}`), so
//! `berthctl logs` can show stream and time. Rotated to `NAME.log.1` past a size.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rustix::buffer::spare_capacity;
use rustix::event::epoll;

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

/// One thread reads every container's pipes (epoll), so a hundred containers cost the
/// daemon one thread, not two hundred.
struct Pumps {
    epoll: OwnedFd,
    pipes: Mutex<HashMap<u64, Pipe>>,
    next: AtomicU64,
}

struct Pipe {
    fd: OwnedFd,
    stream: &'static str,
    log: Arc<Mutex<LogFile>>,
    /// The start of a line whose end has not come yet.
    partial: Vec<u8>,
}

static PUMPS: OnceLock<Option<Arc<Pumps>>> = OnceLock::new();

fn pumps() -> Option<&'static Arc<Pumps>> {
    PUMPS
        .get_or_init(|| {
            let epoll = match epoll::create(epoll::CreateFlags::CLOEXEC) {
                Ok(fd) => fd,
                Err(e) => {
                    eprintln!("berth-daemon: logs: epoll: {e}");
                    return None;
                }
            };
            let pumps = Arc::new(Pumps {
                epoll,
                pipes: Mutex::new(HashMap::new()),
                next: AtomicU64::new(1),
            });
            let worker = pumps.clone();
            match std::thread::Builder::new()
                .name("logs".into())
                .spawn(move || worker.run())
            {
                Ok(_) => Some(pumps),
                Err(e) => {
                    eprintln!("berth-daemon: logs: starting the log thread: {e}");
                    None
                }
            }
        })
        .as_ref()
}

impl Pumps {
    fn run(&self) {
        let mut events = Vec::with_capacity(64);
        loop {
            events.clear();
            if let Err(e) = epoll::wait(&self.epoll, spare_capacity(&mut events), None) {
                if e != rustix::io::Errno::INTR {
                    eprintln!("berth-daemon: logs: epoll_wait: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                continue;
            }
            let Ok(mut pipes) = self.pipes.lock() else {
                return;
            };
            for ev in &events {
                let token = ev.data.u64();
                let open = pipes.get_mut(&token).is_some_and(Pipe::drain);
                if !open {
                    if let Some(p) = pipes.remove(&token) {
                        let _ = epoll::delete(&self.epoll, &p.fd);
                    }
                }
            }
        }
    }
}

impl Pipe {
    /// Reads what is there; false once the writers are gone (what was left is logged).
    fn drain(&mut self) -> bool {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match rustix::io::read(&self.fd, &mut buf) {
                Ok(0) => {
                    if !self.partial.is_empty() {
                        let rest = std::mem::take(&mut self.partial);
                        self.write(&rest);
                    }
                    return false;
                }
                Ok(n) => self.take(&buf[..n]),
                Err(rustix::io::Errno::AGAIN) => return true,
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => return false,
            }
        }
    }

    /// Whole lines become records; a line longer than MAX_LINE is split.
    fn take(&mut self, mut data: &[u8]) {
        while let Some(i) = data.iter().position(|b| *b == b'\n') {
            let mut line = std::mem::take(&mut self.partial);
            line.extend_from_slice(&data[..=i]);
            self.write(&line);
            data = &data[i + 1..];
        }
        self.partial.extend_from_slice(data);
        while self.partial.len() >= MAX_LINE {
            let rest = self.partial.split_off(MAX_LINE);
            let line = std::mem::replace(&mut self.partial, rest);
            self.write(&line);
        }
    }

    fn write(&self, line: &[u8]) {
        if let Ok(mut l) = self.log.lock() {
            l.write_line(self.stream, &String::from_utf8_lossy(line));
        }
    }
}

/// Logs what comes out of `pipe` until its writers are gone, one record per line.
pub fn pump(pipe: OwnedFd, stream: &'static str, log: Arc<Mutex<LogFile>>) {
    let Some(pumps) = pumps() else {
        return; // said when the thread failed; the pipe closes (the writer gets EPIPE)
    };
    if let Err(e) = rustix::fs::fcntl_setfl(&pipe, rustix::fs::OFlags::NONBLOCK) {
        eprintln!("berth-daemon: logs: O_NONBLOCK: {e}");
    }
    let token = pumps.next.fetch_add(1, Ordering::Relaxed);
    let Ok(mut pipes) = pumps.pipes.lock() else {
        return;
    };
    let flags = epoll::EventFlags::IN | epoll::EventFlags::RDHUP;
    if let Err(e) = epoll::add(&pumps.epoll, &pipe, epoll::EventData::new_u64(token), flags) {
        eprintln!("berth-daemon: logs: epoll_ctl: {e}");
        return;
    }
    pipes.insert(
        token,
        Pipe {
            fd: pipe,
            stream,
            log,
            partial: Vec::new(),
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_json_records_and_rotate() {
        let t = tempfile::tempdir().unwrap();
        let log = LogFile::open(t.path(), "web", 200).unwrap();
        let (r, w) = rustix::pipe::pipe().unwrap();
        pump(r, "stdout", log.clone());
        let mut w = std::fs::File::from(w);
        writeln!(w, "hello").unwrap();
        writeln!(w, "{}", "x".repeat(300)).unwrap();
        write!(w, "after").unwrap();
        drop(w);
        // The last line has no newline: logged when the writer is gone.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !std::fs::read_to_string(t.path().join("web.log"))
            .unwrap_or_default()
            .contains("after")
        {
            assert!(std::time::Instant::now() < deadline, "not logged");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let old = std::fs::read_to_string(t.path().join("web.log.1")).unwrap();
        let first: serde_json::Value = serde_json::from_str(old.lines().next().unwrap()).unwrap();
        assert_eq!(first["log"], "hello\n");
        assert_eq!(first["stream"], "stdout");
        assert!(first["time"].as_str().unwrap().ends_with('Z'));
        let now = std::fs::read_to_string(t.path().join("web.log")).unwrap();
        assert!(now.contains("after"), "{now}");
    }
}
