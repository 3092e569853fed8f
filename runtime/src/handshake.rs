//! What the runtime and the processes it forks (a container's init, `exec`'s middle
//! process and the process it starts) tell each other before the exec: one typed
//! message per line of JSON over a socket pair, written by [`Channel::send`] and read
//! by [`Channel::recv`] only. Every read is bounded in bytes and in time: a child that
//! hangs, floods or babbles fails the step naming what arrived, it never wedges the
//! runtime (nor the daemon waiting on it).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The longest encoded message, newline included. The largest is the hooks' state
/// document, which carries the spec's annotations: far below this in practice.
pub const MAX_MESSAGE: usize = 1 << 20;

/// How long one step may take. Generous: the createContainer hooks run inside a step
/// and may have no timeout of their own; the point is that no step waits forever.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(300);

/// Where a child's setup failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Before the runtime's go (console socket, id maps, cgroup).
    Waiting,
    /// Joining and creating namespaces.
    Namespaces,
    /// The createContainer hooks.
    Hooks,
    /// Mounts, pivot_root, sysctls, host and domain names.
    Rootfs,
    /// rlimits, capabilities, user, cwd, console: the process's own settings.
    Process,
    /// After start: the startContainer hooks and the exec itself.
    Exec,
    /// `exec`: joining a running container's cgroup and namespaces.
    Joining,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Waiting => "waiting for the runtime",
            Stage::Namespaces => "entering its namespaces",
            Stage::Hooks => "running createContainer hooks",
            Stage::Rootfs => "building its root",
            Stage::Process => "setting up its process",
            Stage::Exec => "starting its program",
            Stage::Joining => "joining the container",
        })
    }
}

/// One message. `create`: the runtime sends `Go`, the init `Namespaces`, the runtime
/// `HookState`, the init `Ready` (or `Error` at any point). `exec`: the middle process
/// sends `Pid`; it or the process sends `Error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Message {
    /// The runtime has written the child's id maps and placed it in its cgroup.
    Go,
    /// The init's namespaces exist: the runtime's own hooks may run.
    Namespaces,
    /// The OCI state document for the container's own hooks.
    HookState { state: String },
    /// The init is set up and waits for `start`.
    Ready,
    /// `exec`: the host pid of the process started in the container.
    Pid { pid: i32 },
    /// Setup failed; `errno` when a system call said why.
    Error {
        stage: Stage,
        errno: Option<i32>,
        message: String,
    },
}

impl Message {
    /// The message as one line.
    pub fn encode(&self) -> Result<Vec<u8>, HandshakeError> {
        let mut line = serde_json::to_vec(self).map_err(|e| HandshakeError::Encode {
            reason: e.to_string(),
        })?;
        line.push(b'\n');
        if line.len() > MAX_MESSAGE {
            return Err(HandshakeError::TooLong {
                limit: MAX_MESSAGE,
                got: excerpt(&line),
            });
        }
        Ok(line)
    }

    /// One line (without its newline) back into a message.
    pub fn decode(line: &[u8]) -> Result<Message, HandshakeError> {
        if line.len() >= MAX_MESSAGE {
            return Err(HandshakeError::TooLong {
                limit: MAX_MESSAGE,
                got: excerpt(line),
            });
        }
        let malformed = |reason: String| HandshakeError::Malformed {
            got: excerpt(line),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_slice(line).map_err(|e| malformed(e.to_string()))?;
        let msg: Message =
            serde_json::from_value(value.clone()).map_err(|e| malformed(e.to_string()))?;
        // serde lets extra fields through on unit variants of a tagged enum: only a
        // message that is exactly what its encoding would be is taken.
        if serde_json::to_value(&msg).ok() != Some(value) {
            return Err(malformed("not exactly one known message".into()));
        }
        Ok(msg)
    }

    /// The message's kind, for errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Go => "go",
            Message::Namespaces => "namespaces",
            Message::HookState { .. } => "hook-state",
            Message::Ready => "ready",
            Message::Pid { .. } => "pid",
            Message::Error { .. } => "error",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("the other side closed the channel")]
    Closed,
    #[error("no message within {waited:?}")]
    TimedOut { waited: Duration },
    #[error("a message over {limit} bytes: {got}")]
    TooLong { limit: usize, got: String },
    #[error("a malformed message {got}: {reason}")]
    Malformed { got: String, reason: String },
    #[error("{got:?} where {wanted} was expected")]
    Unexpected {
        got: &'static str,
        wanted: &'static str,
    },
    #[error("encoding a message: {reason}")]
    Encode { reason: String },
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        source: std::io::Error,
    },
}

/// What arrived, quoted and cut short, for an error message.
fn excerpt(bytes: &[u8]) -> String {
    const SHOWN: usize = 120;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(SHOWN)]);
    let more = if bytes.len() > SHOWN { "..." } else { "" };
    format!("{text:?}{more}")
}

/// One end of a connected pair. Each process keeps its own end and drops the other's
/// right after the fork, so that a peer's exit (or exec: both ends are close-on-exec)
/// reads as end of file.
#[derive(Debug)]
pub struct Channel {
    stream: UnixStream,
    /// Bytes read past the last whole line.
    pending: Vec<u8>,
}

impl Channel {
    pub fn pair() -> Result<(Channel, Channel), HandshakeError> {
        let (a, b) = UnixStream::pair().map_err(|source| HandshakeError::Io {
            op: "socketpair",
            source,
        })?;
        Ok((Channel::new(a), Channel::new(b)))
    }

    fn new(stream: UnixStream) -> Channel {
        Channel {
            stream,
            pending: Vec::new(),
        }
    }

    /// Writes `msg` whole, within [`STEP_TIMEOUT`] (a peer that stops reading cannot
    /// hold the writer).
    pub fn send(&mut self, msg: &Message) -> Result<(), HandshakeError> {
        let line = msg.encode()?;
        self.stream
            .set_write_timeout(Some(STEP_TIMEOUT))
            .map_err(|source| HandshakeError::Io {
                op: "setting the write timeout",
                source,
            })?;
        self.stream
            .write_all(&line)
            .map_err(|source| HandshakeError::Io {
                op: "writing a message",
                source,
            })
    }

    /// The next message, within `timeout`; `Closed` at end of file.
    pub fn recv(&mut self, timeout: Duration) -> Result<Message, HandshakeError> {
        self.recv_or_eof(timeout)?.ok_or(HandshakeError::Closed)
    }

    /// The next message within `timeout`, or None at end of file between messages.
    pub fn recv_or_eof(&mut self, timeout: Duration) -> Result<Option<Message>, HandshakeError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let rest = self.pending.split_off(end + 1);
                let line = std::mem::replace(&mut self.pending, rest);
                return Message::decode(&line[..end]).map(Some);
            }
            if self.pending.len() >= MAX_MESSAGE {
                return Err(HandshakeError::TooLong {
                    limit: MAX_MESSAGE,
                    got: excerpt(&self.pending),
                });
            }
            if self.fill(deadline, timeout)? == 0 {
                if self.pending.is_empty() {
                    return Ok(None);
                }
                return Err(HandshakeError::Malformed {
                    got: excerpt(&self.pending),
                    reason: "end of file inside a message".into(),
                });
            }
        }
    }

    /// Reads what is there (at most up to the size limit) before `deadline`; 0 at
    /// end of file.
    fn fill(&mut self, deadline: Instant, timeout: Duration) -> Result<usize, HandshakeError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HandshakeError::TimedOut { waited: timeout });
        }
        self.stream
            .set_read_timeout(Some(left))
            .map_err(|source| HandshakeError::Io {
                op: "setting the read timeout",
                source,
            })?;
        let mut chunk = [0u8; 4096];
        let room = (MAX_MESSAGE - self.pending.len()).min(chunk.len());
        loop {
            match self.stream.read(&mut chunk[..room]) {
                Ok(n) => {
                    self.pending.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(HandshakeError::TimedOut { waited: timeout })
                }
                Err(source) => {
                    return Err(HandshakeError::Io {
                        op: "reading a message",
                        source,
                    })
                }
            }
        }
    }
}

/// A child's setup error and the stage it happened in.
#[derive(Debug)]
pub struct Failure {
    pub stage: Stage,
    pub error: crate::Error,
}

/// For `map_err`: an error of the given stage.
pub fn at(stage: Stage) -> impl FnOnce(crate::Error) -> Failure {
    move |error| Failure { stage, error }
}

impl Failure {
    /// Reports the failure to the runtime. False when it could not be told (it went
    /// away, or no longer listens): then only the child's stderr can say.
    pub fn report(&self, chan: &mut Channel) -> bool {
        chan.send(&self.message()).is_ok()
    }

    /// The failure as the `Error` message the runtime reads.
    pub fn message(&self) -> Message {
        Message::Error {
            stage: self.stage,
            errno: self.error.errno().map(|e| e as i32),
            // The runtime says "setup failed" itself: not twice.
            message: match &self.error {
                crate::Error::Setup(m) => m.clone(),
                e => e.to_string(),
            },
        }
    }
}

/// A child's `Error` message as the runtime's error; any other message as what it is.
pub fn reported(msg: Message) -> Result<Message, crate::Error> {
    match msg {
        Message::Error {
            stage,
            errno,
            message,
        } => Err(crate::Error::Init {
            stage,
            errno: errno.map(nix::errno::Errno::from_raw),
            message,
        }),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Message> {
        vec![
            Message::Go,
            Message::Namespaces,
            Message::HookState {
                state: "{\"id\":\"c\"}\nwith a newline".into(),
            },
            Message::Ready,
            Message::Pid { pid: 4242 },
            Message::Error {
                stage: Stage::Rootfs,
                errno: Some(2),
                message: "/tmp in the rootfs: mount: ENOENT".into(),
            },
            Message::Error {
                stage: Stage::Exec,
                errno: None,
                message: String::new(),
            },
        ]
    }

    #[test]
    fn every_message_round_trips_as_one_line() {
        for msg in all() {
            let line = msg.encode().unwrap();
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1, "{msg:?}");
            assert_eq!(Message::decode(&line[..line.len() - 1]).unwrap(), msg);
        }
    }

    #[test]
    fn messages_cross_a_channel_in_order() {
        let (mut a, mut b) = Channel::pair().unwrap();
        let sent = all();
        for m in &sent {
            a.send(m).unwrap();
        }
        drop(a);
        let mut got = Vec::new();
        while let Some(m) = b.recv_or_eof(Duration::from_secs(5)).unwrap() {
            got.push(m);
        }
        assert_eq!(got, sent);
        assert!(matches!(
            b.recv(Duration::from_secs(5)),
            Err(HandshakeError::Closed)
        ));
    }

    #[test]
    fn unknown_and_malformed_messages_are_refused_naming_what_arrived() {
        for (line, named) in [
            (&br#"{"msg":"launch"}"#[..], "launch"),
            (br#"{"msg":"ready","extra":1}"#, "extra"),
            (br#"{"msg":"pid","pid":"x"}"#, "pid"),
            (
                br#"{"msg":"error","stage":"orbit","errno":1,"message":""}"#,
                "orbit",
            ),
            (b"ok", "ok"),
            (b"\xff\xfe", "\u{fffd}"),
            (b"", "EOF"),
        ] {
            let e = Message::decode(line).unwrap_err();
            assert!(matches!(e, HandshakeError::Malformed { .. }), "{e}");
            assert!(e.to_string().contains(named), "{named}: {e}");
        }
    }

    #[test]
    fn an_oversized_message_is_refused_both_ways() {
        let big = Message::HookState {
            state: "x".repeat(MAX_MESSAGE),
        };
        assert!(matches!(big.encode(), Err(HandshakeError::TooLong { .. })));
        // A peer that writes without a newline is cut off at the limit, not buffered on.
        let (a, mut b) = Channel::pair().unwrap();
        let writer = std::thread::spawn(move || {
            let mut s = a.stream;
            let _ = s.write_all(&vec![b'x'; MAX_MESSAGE + 4096]);
        });
        let e = b.recv(Duration::from_secs(10)).unwrap_err();
        assert!(matches!(e, HandshakeError::TooLong { .. }), "{e}");
        drop(b);
        writer.join().unwrap();
    }

    #[test]
    fn a_silent_peer_times_out_and_a_gone_one_reads_as_closed() {
        let (a, mut b) = Channel::pair().unwrap();
        let start = Instant::now();
        let e = b.recv(Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, HandshakeError::TimedOut { .. }), "{e}");
        assert!(start.elapsed() < Duration::from_secs(5));
        // Half a message, then the peer goes away.
        let mut s = a.stream;
        s.write_all(br#"{"msg":"re"#).unwrap();
        drop(s);
        let e = b.recv(Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("end of file inside"), "{e}");
    }
}
