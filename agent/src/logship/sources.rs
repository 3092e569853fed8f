//! What is shipped, read where Berth keeps it: each service's log
//! (`/var/log/berth/NAME.log`, init's lines `TIME STREAM TEXT`), each container's
//! (`/var/log/berth/containers/NAME.log`, docker's JSON lines), both rotated to
//! `NAME.log.1`; and the kernel's ring buffer (`/dev/kmsg`, where init's own lines are
//! mirrored too).
//!
//! A file position is its inode and offset, so a rotation (a rename) never confuses it.
//! The files a position points into are kept open, so the lines of a file renamed to
//! `.1` are read to its end. A file the rotation deleted before its lines were shipped
//! is dropped at once (the disk is not held beyond what the rotation keeps), and its
//! unshipped lines are counted: a gap, reported once.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where init keeps the services' logs.
pub const SERVICE_LOGS: &str = "/var/log/berth";
/// Where the daemon keeps the containers'.
pub const CONTAINER_LOGS: &str = "/var/log/berth/containers";
/// A line longer than this is taken in pieces (the writers cut lines at 64 KiB of
/// text; only an escaped JSON line gets longer). A smaller budget waits for a larger.
pub const LONGEST: usize = 64 * 1024;
/// Sources followed at most (files; the kernel's is one more).
pub const MAX_SOURCES: usize = 512;

/// A place in a rotating log: the file (by inode) and the byte after the last line
/// taken. Inode 0: nothing taken yet (start at the oldest file).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub ino: u64,
    pub offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Service(String),
    Container(String),
}

/// What reading from a position found.
#[derive(Debug, Default)]
pub struct Taken {
    /// Whole lines (without their newline), each with the position after it.
    pub lines: Vec<(Vec<u8>, Position)>,
    /// Lines that can no longer be read (their file was deleted), and how many when
    /// known; the position then moved past them.
    pub lost: Option<Option<u64>>,
    /// Where reading stands now.
    pub at: Position,
    /// More is there (the budget ran out).
    pub more: bool,
}

pub struct FileSource {
    /// `NAME.log`.
    pub path: PathBuf,
    pub origin: Origin,
    /// Open files by inode: those positions point into.
    held: BTreeMap<u64, File>,
}

fn ino_of(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

fn rotated(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

impl FileSource {
    pub fn new(path: PathBuf, origin: Origin) -> FileSource {
        FileSource {
            path,
            origin,
            held: BTreeMap::new(),
        }
    }

    /// Whether the log still exists (a removed container's is gone with it).
    pub fn exists(&self) -> bool {
        self.path.exists() || rotated(&self.path).exists()
    }

    /// Whether a file of it is still open (being read to its end).
    pub fn holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// Where a new source starts: the oldest file kept.
    fn first(&self) -> Position {
        let ino = ino_of(&rotated(&self.path))
            .or_else(|| ino_of(&self.path))
            .unwrap_or(0);
        Position { ino, offset: 0 }
    }

    /// The file after `ino` in the rotation: the current one after the rotated one;
    /// after a deleted one, the oldest that is left.
    fn next(&self, ino: u64) -> Position {
        let old = ino_of(&rotated(&self.path));
        let ino = match (old, ino_of(&self.path)) {
            (Some(o), Some(cur)) if o == ino => cur,
            (Some(o), _) if o != ino && !self.held_alive(ino) => o,
            (_, Some(cur)) => cur,
            _ => 0,
        };
        Position { ino, offset: 0 }
    }

    fn held_alive(&self, ino: u64) -> bool {
        self.held
            .get(&ino)
            .and_then(|f| f.metadata().ok())
            .is_some_and(|m| m.nlink() > 0)
    }

    /// The open file with inode `ino`: held, or found at the path or its rotated name.
    fn file(&mut self, ino: u64) -> Option<&File> {
        if !self.held.contains_key(&ino) {
            for path in [self.path.clone(), rotated(&self.path)] {
                if let Ok(f) = File::open(&path) {
                    if f.metadata().is_ok_and(|m| m.ino() == ino) {
                        self.held.insert(ino, f);
                        break;
                    }
                }
            }
        }
        self.held.get(&ino)
    }

    /// Keeps open only the files `keep` point into.
    pub fn release_except(&mut self, keep: &[Position]) {
        self.held
            .retain(|ino, _| keep.iter().any(|p| p.ino == *ino));
    }

    /// Lines from `at`, `budget` bytes at most. A rotated file is read to its end and
    /// followed by the next; a deleted one is counted as lost unless the whole log is
    /// gone (a removed container's last lines are still shipped).
    pub fn take(&mut self, mut at: Position, budget: usize) -> Taken {
        let mut taken = Taken::default();
        if at.ino == 0 {
            at = self.first();
            if at.ino == 0 {
                taken.at = at;
                return taken;
            }
        }
        let current = ino_of(&self.path);
        let log_exists = self.exists();
        let Some(file) = self.file(at.ino) else {
            // A file that cannot be opened now (out of descriptors, say) is no gap:
            // tried again next round.
            let unreadable = [self.path.clone(), rotated(&self.path)]
                .iter()
                .any(|p| matches!(File::open(p), Err(e) if e.kind() != ErrorKind::NotFound));
            if unreadable {
                taken.at = at;
                return taken;
            }
            // Not open and not found: rotated away while nobody held it.
            taken.lost = Some(None);
            taken.at = self.next(at.ino);
            return taken;
        };
        let meta = file.metadata().ok();
        let deleted = meta.as_ref().is_some_and(|m| m.nlink() == 0);
        let size = meta.as_ref().map_or(0, |m| m.len());
        if deleted && log_exists {
            let lost = count_lines(file, at.offset);
            self.held.remove(&at.ino);
            taken.lost = Some(Some(lost));
            taken.at = self.next(at.ino);
            return taken;
        }
        if at.offset > size {
            // Truncated in place: start over in it.
            at.offset = 0;
        }
        let want = usize::try_from(size - at.offset)
            .unwrap_or(usize::MAX)
            .min(budget);
        let mut buf = vec![0u8; want];
        let n = read_at_full(file, &mut buf, at.offset);
        buf.truncate(n);
        let mut used = 0;
        while let Some(end) = buf[used..].iter().position(|b| *b == b'\n') {
            let line = buf[used..used + end].to_vec();
            used += end + 1;
            at.offset += (end + 1) as u64;
            taken.lines.push((line, at));
        }
        let rest = n - used;
        let finished_file = current != Some(at.ino) && at.offset + rest as u64 >= size;
        if rest > 0 && ((rest == budget && budget >= LONGEST) || finished_file) {
            // A line without its newline: longer than any line a writer makes (shipped
            // in pieces), or the last of a file that will not grow any more.
            at.offset += rest as u64;
            taken.lines.push((buf[used..].to_vec(), at));
        }
        taken.more = n == budget && budget > 0;
        if finished_file && !taken.more {
            let old = at.ino;
            self.held.remove(&old);
            if current.is_some() {
                at = self.next(old);
            }
        }
        taken.at = at;
        taken
    }
}

fn read_at_full(file: &File, buf: &mut [u8], offset: u64) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    n
}

/// Lines from `offset` to the end (a last line without its newline counts).
fn count_lines(file: &File, offset: u64) -> u64 {
    let mut count = 0;
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = offset;
    let mut last = b'\n';
    loop {
        let n = read_at_full(file, &mut buf, at);
        if n == 0 {
            break;
        }
        count += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
        last = buf[n - 1];
        at += n as u64;
    }
    count + u64::from(last != b'\n')
}

/// Every log file to follow now: services' and containers', by path.
pub fn discover(service_logs: &Path, container_logs: &Path) -> Vec<(PathBuf, Origin)> {
    let mut found = Vec::new();
    for (dir, container) in [(service_logs, false), (container_logs, true)] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".log") else {
                continue;
            };
            if stem.is_empty() || !e.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let origin = if container {
                Origin::Container(stem.to_string())
            } else {
                Origin::Service(stem.to_string())
            };
            found.push((e.path(), origin));
            if found.len() == MAX_SOURCES {
                return found;
            }
        }
    }
    found
}

/// The kernel's ring buffer, read record by record. Positions are sequence numbers,
/// valid for one boot.
pub struct Kmsg {
    file: Option<File>,
    /// The number after the last record read from `file`.
    read_seq: u64,
}

/// One kernel record.
#[derive(Debug, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub facility: u8,
    pub severity: u8,
    /// Microseconds since boot.
    pub usec: u64,
    pub text: String,
}

impl Kmsg {
    pub fn new() -> Kmsg {
        Kmsg {
            file: None,
            read_seq: 0,
        }
    }

    /// Records from number `next` on, at most `max`; and how many were lost before them
    /// (the ring buffer overwrote them).
    pub fn take(&mut self, next: u64, max: usize) -> (Vec<Record>, u64) {
        use std::os::unix::fs::OpenOptionsExt;
        if self.file.is_none() || self.read_seq > next {
            // A rewind: read from the oldest record again.
            self.file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(rustix::fs::OFlags::NONBLOCK.bits().cast_signed())
                .open("/dev/kmsg")
                .ok();
            self.read_seq = 0;
        }
        let Some(file) = self.file.as_mut() else {
            return (Vec::new(), 0);
        };
        let mut records: Vec<Record> = Vec::new();
        let mut lost = 0;
        let mut want = next;
        let mut buf = vec![0u8; 16 * 1024];
        while records.len() < max {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let Some(r) = parse_record(&buf[..n]) else {
                        continue;
                    };
                    // The number after the last one read from this file.
                    self.read_seq = r.seq + 1;
                    if r.seq < want {
                        continue;
                    }
                    // Numbers skipped were overwritten before we read them (the first
                    // read of a boot starts wherever the buffer starts: no gap then).
                    if want > 0 && r.seq > want {
                        lost += r.seq - want;
                    }
                    want = r.seq + 1;
                    records.push(r);
                }
                // EPIPE: records were overwritten under us; the next read goes on from
                // the oldest left (the sequence numbers show how many went).
                Err(e) if e.raw_os_error() == Some(32) => {}
                Err(_) => break, // EAGAIN: nothing more now
            }
        }
        (records, lost)
    }
}

/// `PRI,SEQ,USEC,FLAGS[,...];TEXT\n[ KEY=VALUE\n...]` (the kernel's
/// Documentation/ABI/testing/dev-kmsg).
pub fn parse_record(raw: &[u8]) -> Option<Record> {
    let text = String::from_utf8_lossy(raw);
    let (head, rest) = text.split_once(';')?;
    let mut fields = head.split(',');
    let pri: u32 = fields.next()?.parse().ok()?;
    let seq: u64 = fields.next()?.parse().ok()?;
    let usec: u64 = fields.next()?.parse().ok()?;
    // The message is the first line; continuation lines (` KEY=VALUE`) are metadata.
    let message = rest.split('\n').next().unwrap_or_default();
    Some(Record {
        seq,
        facility: u8::try_from((pri >> 3).min(23)).unwrap_or(0),
        severity: u8::try_from(pri & 7).unwrap_or(6),
        usec,
        text: unescape_kmsg(message),
    })
}

/// /dev/kmsg writes unprintable bytes as `\xNN`: back to the bytes (as text).
fn unescape_kmsg(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') && i + 3 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 2]), hex(b[i + 3])) {
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn append(path: &Path, text: &str) {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }

    fn texts(t: &Taken) -> Vec<String> {
        t.lines
            .iter()
            .map(|(l, _)| String::from_utf8_lossy(l).into_owned())
            .collect()
    }

    #[test]
    fn lines_are_followed_across_a_rotation() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("web.log");
        append(&log, "one\ntwo\nthr");
        let mut s = FileSource::new(log.clone(), Origin::Container("web".into()));
        let t = s.take(Position::default(), 1024);
        assert_eq!(texts(&t), ["one", "two"], "a partial line waits");
        let at = t.at;
        append(&log, "ee\n");
        std::fs::rename(&log, rotated(&log)).unwrap();
        append(&log, "four\n");
        let t = s.take(at, 1024);
        assert_eq!(texts(&t), ["three"]);
        assert_eq!(t.at.offset, 0, "on to the new file");
        let t = s.take(t.at, 1024);
        assert_eq!(texts(&t), ["four"]);
        assert!(t.lost.is_none());
    }

    #[test]
    fn a_file_deleted_by_the_rotation_is_a_counted_gap() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("web.log");
        append(&log, "a\nb\nc\n");
        let mut s = FileSource::new(log.clone(), Origin::Container("web".into()));
        let t = s.take(Position::default(), 2); // "a" only: "b" does not fit
        assert_eq!(texts(&t), ["a"]);
        let at = t.at;
        // Two rotations: the file being read is deleted.
        std::fs::rename(&log, rotated(&log)).unwrap();
        append(&log, "d\n");
        std::fs::rename(&log, rotated(&log)).unwrap();
        append(&log, "e\n");
        let t = s.take(at, 1024);
        assert_eq!(t.lost, Some(Some(2)), "b and c");
        let t = s.take(t.at, 1024);
        assert_eq!(texts(&t), ["d"]);
        let t = s.take(t.at, 1024);
        assert_eq!(texts(&t), ["e"]);
    }

    #[test]
    fn a_small_budget_never_splits_a_line() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("web.log");
        append(&log, "abcdef\nxy\n");
        let mut s = FileSource::new(log.clone(), Origin::Container("web".into()));
        let t = s.take(Position::default(), 3);
        assert!(t.lines.is_empty() && t.more, "{:?}", texts(&t));
        let t = s.take(t.at, 1024);
        assert_eq!(texts(&t), ["abcdef", "xy"]);
        let long = "x".repeat(LONGEST + 10);
        append(&log, &format!("{long}\n"));
        let t = s.take(t.at, LONGEST);
        assert_eq!(
            t.lines.len(),
            1,
            "a line past the longest is taken in pieces"
        );
    }

    #[test]
    fn a_removed_containers_last_lines_are_still_read() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("gone.log");
        append(&log, "a\nb\n");
        let mut s = FileSource::new(log.clone(), Origin::Container("gone".into()));
        let t = s.take(Position::default(), 2);
        std::fs::remove_file(&log).unwrap();
        let t = s.take(t.at, 1024);
        assert_eq!(texts(&t), ["b"]);
        assert!(!s.exists());
    }

    #[test]
    fn kernel_records_parse() {
        let r = parse_record(b"6,42,1234567,-;virtio_net virtio0 eth0: up \\x41\n SUBSYSTEM=net\n")
            .unwrap();
        assert_eq!(
            r,
            Record {
                seq: 42,
                facility: 0,
                severity: 6,
                usec: 1_234_567,
                text: "virtio_net virtio0 eth0: up A".into()
            }
        );
        assert_eq!(parse_record(b"15,7,1,-;init: hello\n").unwrap().facility, 1);
        assert!(parse_record(b"garbage").is_none());
    }
}
