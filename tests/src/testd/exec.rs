//! What berth-testd does with one request line: parse it, run the command, answer. In
//! the library so the host's unit tests run it; the binary only finds the port and moves
//! lines.
//!
//! testd is not PID 1 and not a subreaper: it waits for its own child only, and init
//! reaps whatever that child leaves behind.

use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::{Request, Response};

/// For requests that name no timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long output is still collected once the command exited. A background process it
/// started keeps the pipes open; waiting for their end would hang testd for its life.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// The answer to one request line; a line that is not a request gets an error answer
/// (with its id when one can be read) instead of ending testd.
pub fn answer(line: &[u8]) -> Response {
    match serde_json::from_slice::<Request>(line) {
        Ok(req) => execute(&req),
        Err(e) => Response::failed(id_of(line), format!("bad request: {e}")),
    }
}

fn id_of(line: &[u8]) -> u64 {
    serde_json::from_slice::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v.get("id")?.as_u64())
        .unwrap_or(0)
}

/// Runs the request's command to its end, or kills it (with everything it started in its
/// process group) at the timeout.
pub fn execute(req: &Request) -> Response {
    let Some((program, args)) = req.argv.split_first() else {
        return Response::failed(req.id, "empty argv");
    };
    let mut child = match spawn(program, args, req.stdin.is_some()) {
        Ok(c) => c,
        Err(e) => return Response::failed(req.id, format!("spawning {program}: {e}")),
    };
    if let (Some(input), Some(pipe)) = (req.stdin.clone(), child.stdin.take()) {
        feed(pipe, input);
    }
    let stdout = Collector::start(child.stdout.take());
    let stderr = Collector::start(child.stderr.take());
    let timeout = req
        .timeout_ms
        .map_or(DEFAULT_TIMEOUT, Duration::from_millis);
    let (status, timed_out) = wait_or_kill(child, timeout);
    let grace_end = Instant::now() + OUTPUT_GRACE;
    let mut response = Response {
        id: req.id,
        stdout: stdout.finish(grace_end),
        stderr: stderr.finish(grace_end),
        ..Response::default()
    };
    match status {
        Ok(s) => {
            response.exit_code = s.code();
            response.signal = s.signal();
        }
        Err(e) => response.error = Some(format!("waiting for {program}: {e}")),
    }
    if timed_out {
        response.error = Some(format!(
            "timed out after {} ms, killed",
            timeout.as_millis()
        ));
    }
    response
}

fn spawn(program: &str, args: &[String], stdin: bool) -> io::Result<Child> {
    Command::new(program)
        .args(args)
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so a timeout can kill what it started as well.
        .process_group(0)
        .spawn()
}

/// From a thread: a command that does not read its stdin must not block testd.
fn feed(mut pipe: ChildStdin, input: String) {
    std::thread::spawn(move || {
        // EPIPE when the command exits without reading all of it: nothing to report.
        let _ = pipe.write_all(input.as_bytes());
    });
}

/// The exit status, and whether the timeout struck first.
fn wait_or_kill(mut child: Child, timeout: Duration) -> (io::Result<ExitStatus>, bool) {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(timeout) {
        Ok(status) => (status, false),
        Err(_) => {
            kill_group(pid);
            let status = rx
                .recv()
                .unwrap_or_else(|_| Err(io::Error::other("the waiting thread died")));
            (status, true)
        }
    }
}

fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        // ESRCH: the group is gone already.
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// One output pipe read to its end by a thread; what arrived is kept even when the end
/// never comes.
struct Collector {
    buf: Arc<Mutex<Vec<u8>>>,
    /// Disconnects when the reader thread is done.
    done: mpsc::Receiver<()>,
}

impl Collector {
    fn start(pipe: Option<impl Read + Send + 'static>) -> Self {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let (tx, done) = mpsc::channel::<()>();
        if let Some(pipe) = pipe {
            let sink = Arc::clone(&buf);
            std::thread::spawn(move || {
                drain(pipe, &sink);
                drop(tx);
            });
        }
        Collector { buf, done }
    }

    fn finish(self, until: Instant) -> String {
        let _ = self
            .done
            .recv_timeout(until.saturating_duration_since(Instant::now()));
        let buf = self.buf.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

fn drain(mut pipe: impl Read, sink: &Mutex<Vec<u8>>) {
    let mut chunk = [0u8; 8192];
    loop {
        match pipe.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => sink
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
#[path = "exec_tests.rs"]
mod tests;
