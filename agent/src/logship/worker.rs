//! One forward: follows every source from its cursor, sends what is new, and keeps the
//! cursors durably on /var once the receiver has them.
//!
//! Syslog over TCP has no acknowledgement of its own, so "has them" is judged: a batch
//! counts as delivered once its bytes were acknowledged by the receiver's TCP (the
//! socket's send queue is empty) and the connection stayed up for [`SETTLE`] after it
//! was sent. When the connection breaks, sending resumes from the last delivered
//! cursor: what was in flight is sent again (a duplicate, never a loss). Over UDP
//! nothing can be known; the cursor follows what was sent.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_schema::logs::{Forward, Target, Transport};
use serde::{Deserialize, Serialize};

use super::conn::Conn;
use super::sources::{FileSource, Kmsg, Origin, Position, Record};
use super::syslog::{Facility, Message};

/// How long a sent batch must go unchallenged before its cursor is kept.
const SETTLE: Duration = Duration::from_secs(3);
/// The pause between rounds when everything was sent.
const IDLE: Duration = Duration::from_millis(250);
/// What one round reads from the files, all sources together: one write of about this
/// much, then the next round at once while there is more (a big burst after a
/// reconnect is sent in steps, and memory stays bounded).
const ROUND: usize = 64 * 1024;
/// Kernel records per round.
const KMSG_BATCH: usize = 128;
/// Batches sent within this of the last one in flight join it.
const MERGE_WITHIN: Duration = Duration::from_millis(500);
/// Batches in flight at most (past it, the last one takes the new cursors).
const MAX_IN_FLIGHT: usize = 16;
/// The status line's period.
const STATUS_EVERY: Duration = Duration::from_secs(20);
/// Cursors are written at most this often.
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// Sources and host facts are looked for again this often.
const REFRESH: Duration = Duration::from_secs(2);
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Gap notices kept for a receiver that is away (one per source; more are summed).
const MAX_NOTICES: usize = 64;

/// Where one forward stands in every source.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursors {
    /// The boot the kernel's sequence number belongs to.
    #[serde(default)]
    pub boot_id: String,
    /// The kernel record to send next.
    #[serde(default)]
    pub kmsg: u64,
    #[serde(default)]
    pub files: BTreeMap<PathBuf, Position>,
}

pub struct Worker {
    target: Target,
    tls: Option<Arc<rustls::ClientConfig>>,
    state: PathBuf,
    /// Delivered (and kept on disk).
    kept: Cursors,
    /// Sent.
    sent: Cursors,
    /// Batches sent, not yet judged delivered: when, and the cursors after them.
    in_flight: VecDeque<(Instant, Cursors)>,
    conn: Option<Conn>,
    retry_at: Instant,
    retry: Duration,
    sources: BTreeMap<PathBuf, FileSource>,
    /// Where the last round began among the sources.
    first_source: usize,
    paths: super::Paths,
    kmsg: Kmsg,
    /// Gaps to tell the receiver about, when it is back.
    notices: Vec<String>,
    host: Host,
    refreshed: Option<Instant>,
    saved: Instant,
    /// Said once per outage.
    down_said: bool,
    /// When the connection was made, and the bytes sent on it (for the log).
    connected_at: Option<Instant>,
    sent_bytes: u64,
    /// For the periodic status line: when it was said, and messages sent and batches
    /// judged delivered since.
    said_at: Instant,
    messages: u64,
    delivered: u64,
}

/// What every message carries from the machine.
#[derive(Default)]
struct Host {
    hostname: String,
    /// Container name to image, from the daemon.
    images: BTreeMap<String, String>,
    /// The wall clock at boot, for the kernel's timestamps (microseconds since boot).
    boot_epoch_us: u64,
}

fn now_epoch_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(0))
}

impl Host {
    fn read() -> Host {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        let uptime_us = std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(0));
        Host {
            hostname,
            images: container_images(),
            boot_epoch_us: now_epoch_us().saturating_sub(uptime_us),
        }
    }
}

/// Each container's image, from the daemon (none when it is not up).
fn container_images() -> BTreeMap<String, String> {
    let asked = zbus::block_on(async {
        let conn =
            berth_control::connect(std::path::Path::new(berth_control::RUNTIME_SOCKET)).await?;
        let rt = berth_control::RuntimeProxy::new(&conn).await?;
        rt.containers()
            .await
            .map_err(|e| zbus::Error::Failure(e.message()))
    });
    asked
        .map(|list| list.into_iter().map(|c| (c.name, c.image)).collect())
        .unwrap_or_default()
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// RFC 3339 from microseconds since the epoch, as RFC 5424 takes it (at most six
/// digits of fraction).
fn rfc3339_us(us: u64) -> String {
    syslog_time(&berth_schema::time::rfc3339(
        us / 1_000_000,
        u32::try_from(us % 1_000_000).unwrap_or(0) * 1000,
    ))
}

/// An RFC 3339 time with its fraction cut to the six digits RFC 5424 allows
/// (`TIME-SECFRAC = "." 1*6DIGIT`); other text is left as it is.
fn syslog_time(t: &str) -> String {
    let Some((whole, rest)) = t.split_once('.') else {
        return t.to_string();
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits <= 6 {
        return t.to_string();
    }
    format!("{whole}.{}{}", &rest[..6], &rest[digits..])
}
impl Worker {
    pub fn new(forward: &Forward, paths: &super::Paths) -> Result<Worker, String> {
        let target = forward.target()?;
        let tls = match target.transport {
            Transport::Tls => Some(super::conn::tls_config(forward.ca.as_deref())?),
            _ => None,
        };
        // One cursor file per target: a changed URL starts afresh, as it should.
        // Every byte but letters and digits written as _XX: distinct targets, distinct
        // files.
        let key: String = target
            .to_string()
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    char::from(b).to_string()
                } else {
                    format!("_{b:02x}")
                }
            })
            .collect();
        let state = paths.state.join(format!("{key}.json"));
        let mut kept: Cursors = std::fs::read(&state)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let boot = boot_id();
        if kept.boot_id != boot {
            // The kernel's numbers start over at each boot (its old records are gone).
            kept.boot_id = boot;
            kept.kmsg = 0;
        }
        Ok(Worker {
            target,
            tls,
            state,
            sent: kept.clone(),
            kept,
            in_flight: VecDeque::new(),
            conn: None,
            retry_at: Instant::now(),
            retry: RETRY_MIN,
            sources: BTreeMap::new(),
            first_source: 0,
            paths: paths.clone(),
            kmsg: Kmsg::new(),
            notices: Vec::new(),
            host: Host::default(),
            refreshed: None,
            saved: Instant::now(),
            down_said: false,
            connected_at: None,
            sent_bytes: 0,
            said_at: Instant::now(),
            messages: 0,
            delivered: 0,
        })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Runs until `stop`, then keeps the cursors.
    pub fn run(&mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::SeqCst) {
            let busy = self.round();
            if !busy {
                std::thread::sleep(IDLE);
            }
        }
        // Asked to stop (a reboot, say): what is in flight gets its chance to settle,
        // so the next start does not send it again.
        let deadline = Instant::now() + SETTLE + Duration::from_secs(1);
        while !self.in_flight.is_empty() && self.conn.is_some() && Instant::now() < deadline {
            self.settle();
            std::thread::sleep(Duration::from_millis(100));
        }
        self.save(true);
    }

    /// One turn: connect if due, send what is new, judge what was sent. True when
    /// there is more to send at once.
    fn round(&mut self) -> bool {
        if self.refreshed.is_none_or(|t| t.elapsed() >= REFRESH) {
            self.refresh();
        }
        if self.conn.is_none() && Instant::now() >= self.retry_at {
            self.connect();
        }
        let mut busy = false;
        if self.conn.is_some() {
            // Judged before sending more: the last round's bytes had this round's pause
            // to be acknowledged.
            self.settle();
            if self.conn.is_some() {
                match self.ship() {
                    Ok(more) => busy = more,
                    Err(e) => self.broken(&e),
                }
            }
        } else {
            self.watch_gaps();
        }
        self.save(false);
        self.status();
        busy
    }

    /// Every few minutes, a line on what was shipped (and when the receiver is slow to
    /// acknowledge, how much waits).
    fn status(&mut self) {
        if self.said_at.elapsed() < STATUS_EVERY || self.messages == 0 {
            return;
        }
        let unacked = self.conn.as_ref().map_or(0, Conn::unacknowledged);
        eprintln!(
            "berth-logforward: {}: {} messages sent, {} batches delivered in {} s; {} batches \
             in flight, {unacked} bytes unacknowledged",
            self.target,
            self.messages,
            self.delivered,
            self.said_at.elapsed().as_secs(),
            self.in_flight.len()
        );
        self.said_at = Instant::now();
        self.messages = 0;
        self.delivered = 0;
    }

    fn refresh(&mut self) {
        self.host = Host::read();
        let found = super::sources::discover(&self.paths.service_logs, &self.paths.container_logs);
        for (path, origin) in found {
            self.sources
                .entry(path.clone())
                .or_insert_with(|| FileSource::new(path, origin));
        }
        // A source whose log is gone (a removed container) is forgotten once its last
        // file was read to the end.
        self.sources.retain(|_, s| s.exists() || s.holding());
        let live: Vec<PathBuf> = self.sources.keys().cloned().collect();
        self.kept.files.retain(|p, _| live.contains(p));
        self.sent.files.retain(|p, _| live.contains(p));
        self.refreshed = Some(Instant::now());
    }

    fn connect(&mut self) {
        match Conn::open(&self.target, self.tls.as_ref()) {
            Ok(c) => {
                eprintln!("berth-logforward: {}: connected", self.target);
                self.conn = Some(c);
                self.connected_at = Some(Instant::now());
                self.sent_bytes = 0;
                self.retry = RETRY_MIN;
                self.down_said = false;
            }
            Err(e) => {
                if !self.down_said {
                    eprintln!("berth-logforward: {e}; retrying, the logs wait on disk");
                    self.down_said = true;
                }
                self.retry_at = Instant::now() + self.retry;
                self.retry = (self.retry * 2).min(RETRY_MAX);
            }
        }
    }

    /// The connection is gone: what was in flight is sent again from the last cursor
    /// known delivered.
    fn broken(&mut self, why: &str) {
        if !self.down_said {
            let lasted = self.connected_at.map_or(0, |t| t.elapsed().as_millis());
            eprintln!(
                "berth-logforward: {}: {why} (after {lasted} ms and {} bytes); resending \
                 from the last delivered line",
                self.target, self.sent_bytes
            );
            self.down_said = true;
        }
        self.conn = None;
        self.in_flight.clear();
        self.sent = self.kept.clone();
        self.retry_at = Instant::now() + self.retry;
        self.retry = (self.retry * 2).min(RETRY_MAX);
    }

    /// Sends one round from every source; true when some source has more.
    fn ship(&mut self) -> Result<bool, String> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(false);
        };
        if let Some(why) = conn.ended() {
            return Err(why);
        }
        let mut messages = Vec::new();
        // Kept until sent: a break before then tells them on the next connection.
        let notices = std::mem::take(&mut self.notices);
        for notice in &notices {
            messages.push(self.notice(notice));
        }
        let mut more = false;
        let (records, lost) = if self.paths.kernel {
            self.kmsg.take(self.sent.kmsg, KMSG_BATCH)
        } else {
            (Vec::new(), 0)
        };
        if lost > 0 && self.sent.kmsg > 0 {
            let text = format!("{lost} kernel messages were overwritten before they were shipped");
            messages.push(self.notice(&text));
        }
        more |= records.len() == KMSG_BATCH;
        for r in &records {
            messages.push(self.kernel_message(r));
            self.sent.kmsg = r.seq + 1;
        }
        // Each round starts with the next source, so a busy one cannot starve the rest.
        let mut paths: Vec<PathBuf> = self.sources.keys().cloned().collect();
        if !paths.is_empty() {
            self.first_source = (self.first_source + 1) % paths.len();
            paths.rotate_left(self.first_source);
        }
        let mut budget = ROUND;
        for path in paths {
            if budget == 0 {
                more = true;
                break;
            }
            let at = self.sent.files.get(&path).copied().unwrap_or_default();
            let Some(source) = self.sources.get_mut(&path) else {
                continue;
            };
            let taken = source.take(at, budget);
            budget -= taken
                .lines
                .iter()
                .map(|(l, _)| l.len() + 1)
                .sum::<usize>()
                .min(budget);
            let origin = source.origin.clone();
            if let Some(lost) = taken.lost {
                messages.push(self.notice(&gap_text(&origin, lost)));
            }
            for (line, _) in &taken.lines {
                messages.push(self.file_message(&origin, line));
            }
            more |= taken.more;
            self.sent.files.insert(path, taken.at);
        }
        if messages.is_empty() {
            return Ok(more);
        }
        let conn = self.conn.as_mut().ok_or("no connection")?;
        if let Err(e) = conn.send(&messages) {
            self.notices = notices;
            return Err(e.to_string());
        }
        self.sent_bytes += messages.iter().map(|m| m.len() as u64).sum::<u64>();
        self.messages += messages.len() as u64;
        if conn.acknowledged() {
            // Batches sent close together are judged together: the list stays short
            // however busy the sending is.
            let full = self.in_flight.len() >= MAX_IN_FLIGHT;
            match self.in_flight.back_mut() {
                Some((at, cursors)) if at.elapsed() < MERGE_WITHIN || full => {
                    *at = Instant::now();
                    *cursors = self.sent.clone();
                }
                _ => self
                    .in_flight
                    .push_back((Instant::now(), self.sent.clone())),
            }
        } else {
            self.kept = self.sent.clone();
        }
        Ok(more)
    }

    /// Keeps the cursors of batches that settled: sent long enough ago, on a
    /// connection still up, every byte acknowledged.
    fn settle(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if let Some(why) = conn.ended() {
            return self.broken(&why);
        }
        let all_acked = conn.unacknowledged() == 0;
        while let Some((at, _)) = self.in_flight.front() {
            if at.elapsed() < SETTLE || !all_acked {
                break;
            }
            if let Some((_, cursors)) = self.in_flight.pop_front() {
                self.kept = cursors;
                self.delivered += 1;
            }
        }
        self.release();
    }

    /// While the receiver is away: files the rotation deletes are let go of at once,
    /// their unshipped lines counted (told to the receiver when it is back).
    fn watch_gaps(&mut self) {
        let paths: Vec<PathBuf> = self.sources.keys().cloned().collect();
        for path in paths {
            let Some(at) = self.kept.files.get(&path).copied() else {
                continue;
            };
            let Some(source) = self.sources.get_mut(&path) else {
                continue;
            };
            // A zero budget reads nothing: only the gap check and the move past it.
            let taken = source.take(at, 0);
            if let Some(lost) = taken.lost {
                let text = gap_text(&source.origin, lost);
                eprintln!("berth-logforward: {}: {text}", self.target);
                if self.notices.len() < MAX_NOTICES {
                    self.notices.push(text);
                }
                self.kept.files.insert(path.clone(), taken.at);
                self.sent.files.insert(path, taken.at);
            }
        }
        self.release();
    }

    fn release(&mut self) {
        for (path, source) in self.sources.iter_mut() {
            let mut keep = vec![];
            keep.extend(self.kept.files.get(path).copied());
            keep.extend(self.sent.files.get(path).copied());
            for (_, c) in &self.in_flight {
                keep.extend(c.files.get(path).copied());
            }
            source.release_except(&keep);
        }
    }

    fn save(&mut self, now: bool) {
        if !now && self.saved.elapsed() < SAVE_EVERY {
            return;
        }
        self.saved = Instant::now();
        let on_disk: Option<Cursors> = std::fs::read(&self.state)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if on_disk.as_ref() == Some(&self.kept) {
            return;
        }
        let written = serde_json::to_vec(&self.kept)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                berth_persist::write_file(&self.state, &b, 0o600).map_err(|e| e.to_string())
            });
        if let Err(e) = written {
            eprintln!("berth-logforward: keeping the cursors: {e}");
        }
    }

    fn notice(&self, text: &str) -> Vec<u8> {
        let ts = rfc3339_us(now_epoch_us());
        Message {
            facility: Facility::Daemon,
            severity: 4,
            timestamp: &ts,
            hostname: &self.host.hostname,
            app: "berth-logforward",
            msgid: "gap",
            params: &[],
            text,
        }
        .encode()
    }

    fn kernel_message(&self, r: &Record) -> Vec<u8> {
        let ts = rfc3339_us(self.host.boot_epoch_us + r.usec);
        // init's lines are mirrored into the kernel's buffer as the user facility.
        // init's lines are mirrored at level debug (so the console does not print them
        // twice): they are notices, and its warnings warnings.
        let (facility, app, severity) = if r.facility == 0 {
            (Facility::Kernel, "kernel", r.severity)
        } else if r.text.starts_with("init: warning:") {
            (Facility::User, "init", 4)
        } else {
            (
                Facility::User,
                r.text.split(':').next().unwrap_or("init"),
                5.min(r.severity),
            )
        };
        Message {
            facility,
            severity,
            timestamp: &ts,
            hostname: &self.host.hostname,
            app,
            msgid: "kmsg",
            params: &[],
            text: &r.text,
        }
        .encode()
    }

    fn file_message(&self, origin: &Origin, line: &[u8]) -> Vec<u8> {
        let text = String::from_utf8_lossy(line);
        match origin {
            Origin::Container(name) => {
                let (time, stream, log) = parse_container_line(&text);
                let time = syslog_time(&time);
                let image = self.host.images.get(name).map_or("", String::as_str);
                Message {
                    facility: Facility::User,
                    severity: if stream == "stderr" { 3 } else { 6 },
                    timestamp: &time,
                    hostname: &self.host.hostname,
                    app: name,
                    msgid: &stream,
                    params: &[("container", name), ("image", image), ("stream", &stream)],
                    text: &log,
                }
                .encode()
            }
            Origin::Service(name) => {
                let (time, stream, log) = parse_service_line(&text);
                let time = syslog_time(time);
                Message {
                    facility: Facility::Daemon,
                    severity: if stream == "stderr" { 3 } else { 6 },
                    timestamp: &time,
                    hostname: &self.host.hostname,
                    app: name,
                    msgid: stream,
                    params: &[("service", name), ("stream", stream)],
                    text: log,
                }
                .encode()
            }
        }
    }
}

fn gap_text(origin: &Origin, lost: Option<u64>) -> String {
    let what = match origin {
        Origin::Container(n) => format!("container {n}"),
        Origin::Service(n) => format!("service {n}"),
    };
    match lost {
        Some(n) => format!("gap: {n} lines of {what} were rotated away before they were shipped"),
        None => format!("gap: lines of {what} were rotated away before they were shipped (how many is not known)"),
    }
}

/// A line of the daemon's container logs (docker's JSON lines): time, stream, text.
/// A line that is not one is shipped as it is.
fn parse_container_line(line: &str) -> (String, String, String) {
    #[derive(Deserialize)]
    struct Entry {
        log: String,
        #[serde(default)]
        stream: String,
        #[serde(default)]
        time: String,
    }
    match serde_json::from_str::<Entry>(line) {
        Ok(e) => (e.time, e.stream, e.log.trim_end_matches('\n').to_string()),
        Err(_) => (String::new(), String::new(), line.to_string()),
    }
}

/// A line of init's service logs: `TIME STREAM TEXT`.
fn parse_service_line(line: &str) -> (&str, &str, &str) {
    let mut parts = line.splitn(3, ' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(t), Some(s @ ("stdout" | "stderr")), rest) if t.ends_with('Z') => {
            (t, s, rest.unwrap_or(""))
        }
        _ => ("", "", line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_read_as_their_writers_write_them() {
        let (t, s, l) = parse_container_line(
            r#"{"log":"line 7\n","stream":"stdout","time":"2026-12-01T01:00:00.5Z"}"#,
        );
        assert_eq!(
            (t.as_str(), s.as_str(), l.as_str()),
            ("2026-12-01T01:00:00.5Z", "stdout", "line 7")
        );
        assert_eq!(parse_container_line("not json").2, "not json");
        assert_eq!(
            parse_service_line("2026-11-25T11:41:55.123Z stderr it broke"),
            ("2026-11-25T11:41:55.123Z", "stderr", "it broke")
        );
        assert_eq!(parse_service_line("plain").2, "plain");
        assert_eq!(
            syslog_time("2026-12-01T01:00:00.123456789Z"),
            "2026-12-01T01:00:00.123456Z"
        );
        assert_eq!(
            syslog_time("2026-12-01T01:00:00.5Z"),
            "2026-12-01T01:00:00.5Z"
        );
        assert_eq!(syslog_time(""), "");
    }
}
