//! The harness's end of the test channel: QEMU's unix socket behind the guest's
//! virtio-serial port. Each response carries its request's id, so a late answer to an
//! abandoned request (or to a ping sent before testd was up) is recognised and skipped.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{Output, Request, Response};

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
    /// guest may not have started testd, or loaded virtio_console, yet. Until the guest
    /// opens the port QEMU leaves what we write in the socket, so the pings queue up and
    /// testd answers them all; the late answers to older pings are skipped by id.
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
            let id = client.send(&["true"], None, PING_INTERVAL)?;
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

    /// Runs `argv` in the guest with no stdin and the default timeout (60 s), after
    /// which testd kills it and this fails.
    pub fn run(&mut self, argv: &[&str]) -> Result<Output> {
        self.run_with(argv, None, COMMAND_TIMEOUT)
    }

    /// `/bin/sh -c script`.
    pub fn sh(&mut self, script: &str) -> Result<Output> {
        self.run(&["/bin/sh", "-c", script])
    }

    /// `timeout` bounds the command in the guest (testd kills it then); the harness
    /// waits a little longer for the answer, which says so.
    pub fn run_with(
        &mut self,
        argv: &[&str],
        stdin: Option<&str>,
        timeout: Duration,
    ) -> Result<Output> {
        let id = self.send(argv, stdin.map(String::from), timeout)?;
        let r = self.receive(id, timeout + Duration::from_secs(5))?;
        if let Some(e) = r.error {
            bail!(
                "testd could not run {argv:?}: {e}\nstdout: {}\nstderr: {}",
                r.stdout,
                r.stderr
            );
        }
        Ok(Output {
            exit_code: r.exit_code,
            signal: r.signal,
            stdout: r.stdout,
            stderr: r.stderr,
        })
    }

    fn send(&mut self, argv: &[&str], stdin: Option<String>, timeout: Duration) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let req = Request {
            id,
            argv: argv.iter().map(|s| s.to_string()).collect(),
            stdin,
            timeout_ms: Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
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
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    use super::*;
    use crate::testd::exec;

    /// A guest whose testd opens the port only after a few pings went unanswered, then
    /// answers everything queued, as berth-testd would.
    #[test]
    fn connects_to_a_late_testd_and_runs_commands() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("testd.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let guest = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            std::thread::sleep(PING_INTERVAL + Duration::from_millis(500));
            let mut writer = stream.try_clone().unwrap();
            let mut reader = BufReader::new(stream);
            let mut line = Vec::new();
            let mut answered = 0;
            while reader.read_until(b'\n', &mut line).unwrap() > 0 {
                let mut out = serde_json::to_vec(&exec::answer(&line)).unwrap();
                out.push(b'\n');
                writer.write_all(&out).unwrap();
                line.clear();
                answered += 1;
            }
            answered
        });
        let mut client = TestdClient::connect(&path).unwrap();
        let out = client.sh("echo hello; exit 2").unwrap();
        assert_eq!((out.stdout.as_str(), out.exit_code), ("hello\n", Some(2)));
        assert!(!out.success());
        let out = client
            .run_with(&["cat"], Some("in"), Duration::from_secs(5))
            .unwrap();
        assert_eq!(out.stdout, "in");
        let err = client
            .run_with(&["sleep", "5"], None, Duration::from_millis(100))
            .unwrap_err()
            .to_string();
        assert!(err.contains("timed out"), "{err}");
        drop(client);
        // Two pings (one late), then the three commands.
        assert!(guest.join().unwrap() >= 4);
    }
}
