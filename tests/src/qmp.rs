//! A small QMP client (QEMU Machine Protocol: JSON lines on a unix socket). Asynchronous
//! events arriving between commands are kept, so a test can see why QEMU stopped
//! (`SHUTDOWN` with `reason`: guest-shutdown, guest-reset, host-qmp-quit...).

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

const READ_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: Vec<Value>,
    closed: bool,
}

impl Qmp {
    /// Connects (retrying until the socket exists or `timeout` passes), reads the greeting
    /// and enters command mode.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                // QEMU creates the socket a moment after it starts.
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("connecting to QMP at {}", path.display()))
                }
            }
        };
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .context("setting the QMP read timeout")?;
        let writer = stream.try_clone().context("cloning the QMP socket")?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
            events: Vec::new(),
            closed: false,
        };
        // QEMU can send an event (RESUME as the guest starts) ahead of the greeting when
        // a client connects during startup: keep such events, then expect the greeting.
        loop {
            let msg = qmp
                .read_message()?
                .context("QMP closed before its greeting")?;
            if msg.get("QMP").is_some() {
                break;
            }
            if msg.get("event").is_none() {
                bail!("unexpected QMP greeting: {msg}");
            }
            qmp.events.push(msg);
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// Runs a command and returns its `return` value; events read meanwhile are kept.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let mut msg = json!({ "execute": command });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut line = serde_json::to_vec(&msg)?;
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .with_context(|| format!("sending QMP {command}"))?;
        loop {
            let Some(reply) = self.read_message()? else {
                bail!("QMP closed while waiting for the reply to {command}");
            };
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                bail!("QMP {command} failed: {err}");
            }
            self.events.push(reply);
        }
    }

    /// Events seen so far.
    pub fn events(&self) -> &[Value] {
        &self.events
    }

    /// QEMU closed the socket (it exited).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// `reason` of every SHUTDOWN event seen so far.
    pub fn shutdown_reasons(&self) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| e["event"] == "SHUTDOWN")
            .filter_map(|e| e["data"]["reason"].as_str().map(String::from))
            .collect()
    }

    /// Reads events until QEMU closes the socket or `timeout` passes.
    pub fn drain(&mut self, timeout: Duration) {
        let _ = self
            .reader
            .get_ref()
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))));
        let deadline = Instant::now() + timeout;
        while !self.closed && Instant::now() < deadline {
            match self.read_message() {
                Ok(Some(ev)) => self.events.push(ev),
                Ok(None) | Err(_) => break,
            }
        }
        let _ = self.reader.get_ref().set_read_timeout(Some(READ_TIMEOUT));
    }

    /// Waits for an event by name (one already seen counts).
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(ev) = self.events.iter().find(|e| e["event"] == name) {
                return Ok(ev.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.closed {
                bail!("no QMP event {name} within {} s", timeout.as_secs());
            }
            self.drain(left.min(Duration::from_millis(200)));
        }
    }

    /// One JSON message, None at EOF.
    fn read_message(&mut self) -> Result<Option<Value>> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => {
                self.closed = true;
                Ok(None)
            }
            Ok(_) => Ok(Some(
                serde_json::from_str(&line).with_context(|| format!("bad QMP message {line:?}"))?,
            )),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                bail!("QMP read timed out")
            }
            Err(e) => {
                self.closed = true;
                Err(e).context("reading QMP")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixListener;

    /// A fake QEMU: greeting, then answers each command, with an event before the
    /// second reply.
    #[test]
    fn handshake_commands_and_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("qmp_capabilities"));
            s.write_all(b"{\"return\": {}}\n").unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("system_powerdown"));
            s.write_all(b"{\"event\": \"POWERDOWN\"}\n{\"return\": {}}\n")
                .unwrap();
            s.write_all(b"{\"event\": \"SHUTDOWN\", \"data\": {\"guest\": true, \"reason\": \"guest-shutdown\"}}\n")
                .unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            s.write_all(b"{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"nope\"}}\n")
                .unwrap();
            let mut rest = Vec::new();
            let _ = r.read_to_end(&mut rest);
        });
        let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
        qmp.execute("system_powerdown", None).unwrap();
        assert_eq!(qmp.events().len(), 1);
        qmp.wait_event("SHUTDOWN", Duration::from_secs(5)).unwrap();
        assert_eq!(qmp.shutdown_reasons(), ["guest-shutdown"]);
        let err = qmp.execute("bogus", None).unwrap_err().to_string();
        assert!(err.contains("CommandNotFound"), "{err}");
        drop(qmp);
        server.join().unwrap();
    }
}
