//! The test channel: berth-testd in the guest runs commands the harness sends over a
//! virtio-serial port and answers with their output and exit status. JSON lines both
//! ways; each response carries its request's id, so a late answer to an abandoned
//! request is recognised and skipped.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The virtio-serial port name testd looks for in /sys/class/virtio-ports/*/name.
pub const PORT_NAME: &str = "org.berth.testd";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    pub argv: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub id: u64,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub signal: Option<i32>,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    /// Set when the command could not run or timed out.
    #[serde(default)]
    pub error: Option<String>,
}

/// A finished command, as the harness sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }
}

const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
const PING_INTERVAL: Duration = Duration::from_secs(2);

pub struct TestdClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl TestdClient {
    /// Connects to QEMU's end of the port and waits until testd answers a ping: the
    /// guest may not have started testd, or loaded virtio_console, yet.
    pub fn connect(socket: &Path) -> Result<Self> {
        let stream = UnixStream::connect(socket)
            .with_context(|| format!("connecting to the testd socket {}", socket.display()))?;
        let writer = stream.try_clone()?;
        let mut client = TestdClient {
            reader: BufReader::new(stream),
            writer,
            next_id: 1,
        };
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            let id = client.send(&["true"], None)?;
            match client.receive(id, PING_INTERVAL) {
                Ok(_) => return Ok(client),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e).context(format!(
                        "berth-testd did not answer within {} s",
                        CONNECT_TIMEOUT.as_secs()
                    ))
                }
                Err(_) => {}
            }
        }
    }

    pub fn run(&mut self, argv: &[&str]) -> Result<Output> {
        self.run_with(argv, None, COMMAND_TIMEOUT)
    }

    /// `/bin/sh -c script`.
    pub fn sh(&mut self, script: &str) -> Result<Output> {
        self.run(&["/bin/sh", "-c", script])
    }

    pub fn run_with(
        &mut self,
        argv: &[&str],
        stdin: Option<&str>,
        timeout: Duration,
    ) -> Result<Output> {
        let id = self.send(argv, stdin.map(String::from))?;
        let r = self.receive(id, timeout + Duration::from_secs(5))?;
        if let Some(e) = r.error {
            bail!("testd could not run {argv:?}: {e}");
        }
        Ok(Output {
            exit_code: r.exit_code,
            signal: r.signal,
            stdout: r.stdout,
            stderr: r.stderr,
        })
    }

    fn send(&mut self, argv: &[&str], stdin: Option<String>) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let req = Request {
            id,
            argv: argv.iter().map(|s| s.to_string()).collect(),
            stdin,
            timeout_ms: Some(u64::try_from(COMMAND_TIMEOUT.as_millis()).unwrap_or(u64::MAX)),
        };
        let mut line = serde_json::to_vec(&req)?;
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .context("sending a request to testd")?;
        Ok(id)
    }

    /// The response to `id`; responses to older requests are skipped.
    fn receive(&mut self, id: u64, timeout: Duration) -> Result<Response> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "no answer from testd to request {id} within {} s",
                    timeout.as_secs()
                );
            }
            self.reader.get_ref().set_read_timeout(Some(left))?;
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => bail!("testd socket closed (QEMU exited?)"),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue
                }
                Err(e) => return Err(e).context("reading from testd"),
            }
            let Ok(resp) = serde_json::from_str::<Response>(line.trim()) else {
                // Partial lines from a guest testd that restarted mid-write.
                continue;
            };
            if resp.id == id {
                return Ok(resp);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_round_trip() {
        let req = Request {
            id: 7,
            argv: vec!["echo".into(), "hi".into()],
            stdin: None,
            timeout_ms: Some(5),
        };
        let text = serde_json::to_string(&req).unwrap();
        assert_eq!(text, r#"{"id":7,"argv":["echo","hi"],"timeout_ms":5}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), req);
        let resp: Response =
            serde_json::from_str(r#"{"id":7,"exit_code":0,"stdout":"hi\n"}"#).unwrap();
        assert_eq!(resp.stdout, "hi\n");
        assert_eq!(resp.signal, None);
    }
}
