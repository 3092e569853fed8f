//! Events, as `berthctl events` shows them (docker's model: a type, an action, who it
//! happened to, and attributes such as the exit code). init keeps them in one bounded
//! ring: its own services' restarts and failures go in directly, and the daemon's
//! (containers, images) and the updater's (update progress) arrive over init's API
//! through [`send`], in the order they happened.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use zbus::Type;

/// How many events init keeps (the oldest go first).
pub const KEPT: usize = 1000;
/// Events a process may have waiting to reach init; past this they are dropped (and
/// the drop said once).
const BACKLOG: usize = 256;
/// An attribute or name longer than this is cut (an event is a line, not a payload).
const MAX_TEXT: usize = 256;
/// An event with more attributes than this keeps the first (by name).
pub const MAX_ATTRIBUTES: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct Event {
    /// Its place in init's ring (set by init; increasing).
    pub seq: u64,
    /// When it happened, in milliseconds since the epoch.
    pub time_ms: u64,
    /// container, image, service or update.
    pub kind: String,
    /// create, start, die, oom, stop, restart, remove (containers); pull, remove
    /// (images); restart, failure (services); the update's state or step.
    pub action: String,
    /// The container's, image's or service's name, or the update's version.
    pub name: String,
    pub attributes: BTreeMap<String, String>,
}

fn cut(mut s: String) -> String {
    if s.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

impl Event {
    /// An event happening now.
    pub fn new(kind: &str, action: &str, name: &str) -> Event {
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Event {
            seq: 0,
            time_ms,
            kind: kind.to_string(),
            action: action.to_string(),
            name: cut(name.to_string()),
            attributes: BTreeMap::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl std::fmt::Display) -> Event {
        self.attributes
            .insert(key.to_string(), cut(value.to_string()));
        self
    }

    /// `container die web (exitCode=1, image=busybox)`, for logs.
    pub fn line(&self) -> String {
        let mut line = format!("{} {} {}", self.kind, self.action, self.name);
        if !self.attributes.is_empty() {
            let attrs: Vec<String> = self
                .attributes
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            line.push_str(&format!(" ({})", attrs.join(", ")));
        }
        line
    }
}

/// The last [`KEPT`] events, numbered.
#[derive(Debug, Default)]
pub struct Ring {
    next: u64,
    events: VecDeque<Event>,
}

impl Ring {
    /// Adds `event` (its texts cut, at most [`MAX_ATTRIBUTES`] attributes kept).
    pub fn push(&mut self, mut event: Event) {
        for text in [&mut event.kind, &mut event.action, &mut event.name] {
            *text = cut(std::mem::take(text));
        }
        while event.attributes.len() > MAX_ATTRIBUTES {
            event.attributes.pop_last();
        }
        for value in event.attributes.values_mut() {
            *value = cut(std::mem::take(value));
        }
        self.next += 1;
        event.seq = self.next;
        if self.events.len() == KEPT {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    /// The events numbered after `seq`, oldest first.
    pub fn after(&self, seq: u64) -> Vec<Event> {
        self.events
            .iter()
            .filter(|e| e.seq > seq)
            .cloned()
            .collect()
    }
}

/// Events [`send`] took that have not reached init (or been given up on) yet.
static PENDING: AtomicUsize = AtomicUsize::new(0);

/// Hands `event` to init's ring, in order, from a thread of its own (a caller never
/// waits on init). When init cannot be reached the event is dropped: the caller's
/// own log line is its record.
pub fn send(event: Event) {
    static QUEUE: OnceLock<Option<SyncSender<Event>>> = OnceLock::new();
    let queue = QUEUE.get_or_init(|| {
        let (tx, rx) = sync_channel(BACKLOG);
        std::thread::Builder::new()
            .name("events".into())
            .spawn(move || deliver(&rx))
            .ok()
            .map(|_| tx)
    });
    let Some(tx) = queue else {
        return;
    };
    PENDING.fetch_add(1, Ordering::SeqCst);
    if let Err(TrySendError::Full(e) | TrySendError::Disconnected(e)) = tx.try_send(event) {
        PENDING.fetch_sub(1, Ordering::SeqCst);
        eprintln!("events: init is not taking events; dropped: {}", e.line());
    }
}

/// Waits (at most `patience`) for the events sent so far to reach init: for a process
/// about to exit.
pub fn flush(patience: Duration) {
    let deadline = Instant::now() + patience;
    while PENDING.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The most events one `RecordEvents` call carries (init refuses more).
pub const MAX_BATCH: usize = 64;

fn deliver(rx: &Receiver<Event>) {
    let mut conn: Option<zbus::Connection> = None;
    while let Ok(first) = rx.recv() {
        // What queued up meanwhile goes along: one call per burst, not per event.
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
        // Two tries: the first call may race init's socket, or find an old connection.
        for _ in 0..2 {
            let sent = zbus::block_on(async {
                let c = match conn.take() {
                    Some(c) => c,
                    None => crate::connect(Path::new(crate::INIT_SOCKET)).await?,
                };
                crate::InitProxy::new(&c)
                    .await?
                    .record_events(&batch)
                    .await?;
                conn = Some(c);
                Ok::<(), zbus::Error>(())
            });
            if sent.is_ok() {
                break;
            }
        }
        PENDING.fetch_sub(batch.len(), Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_numbers_keeps_the_last_and_answers_after() {
        let mut r = Ring::default();
        for i in 0..(KEPT + 5) {
            r.push(Event::new("container", "start", &format!("c{i}")));
        }
        let all = r.after(0);
        assert_eq!(all.len(), KEPT);
        assert_eq!(all[0].seq, 6);
        assert_eq!(all[0].name, "c5");
        assert_eq!(r.after(KEPT as u64 + 3).len(), 2);
    }

    #[test]
    fn a_line_names_everything_and_long_text_is_cut() {
        let e = Event::new("container", "die", "web")
            .with("exitCode", 1)
            .with("image", "busybox");
        assert_eq!(e.line(), "container die web (exitCode=1, image=busybox)");
        let long = Event::new("image", "pull", &"é".repeat(300));
        assert!(long.name.len() <= MAX_TEXT);
    }
}
