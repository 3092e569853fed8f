//! berth-testd: the test image's way in (never in the shipped image). Runs the commands
//! the QEMU harness sends over the virtio-serial port named `org.berth.testd` and
//! answers with their exit status and output, one request at a time.
//!
//! virtio-serial facts this relies on: without udev the port is /dev/vportNpM, found by
//! its name in /sys/class/virtio-ports; read() returns 0 while the host end is not
//! connected (so EOF means "wait", not "quit").

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_tests::testd::{Request, Response, PORT_NAME};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

fn main() {
    say(&format!(
        "berth-testd: started, looking for virtio port {PORT_NAME}"
    ));
    let mut announced = false;
    loop {
        let Some(dev) = find_port(Path::new("/sys/class/virtio-ports")) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        if !announced {
            say(&format!("berth-testd: serving on {}", dev.display()));
            announced = true;
        }
        if let Err(e) = serve(&dev) {
            say(&format!("berth-testd: {}: {e}; reopening", dev.display()));
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn say(msg: &str) {
    let _ = writeln!(std::io::stdout(), "{msg}");
}

/// /dev/<vportNpM> whose sysfs `name` is ours.
fn find_port(sys: &Path) -> Option<PathBuf> {
    std::fs::read_dir(sys).ok()?.flatten().find_map(|e| {
        let name = std::fs::read_to_string(e.path().join("name")).ok()?;
        let dev = Path::new("/dev").join(e.file_name());
        (name.trim() == PORT_NAME && dev.exists()).then_some(dev)
    })
}

fn serve(dev: &Path) -> std::io::Result<()> {
    let port = File::options().read(true).write(true).open(dev)?;
    let mut writer = port.try_clone()?;
    let mut reader = BufReader::new(port);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            // Host end not connected: wait for it.
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let response = match serde_json::from_str::<Request>(line.trim()) {
            Ok(req) => run(req),
            Err(e) => Response {
                error: Some(format!("bad request: {e}")),
                ..Response::default()
            },
        };
        let mut out = serde_json::to_vec(&response).unwrap_or_default();
        out.push(b'\n');
        // The host may have gone away; the next request will come on a new connection.
        let _ = writer.write_all(&out);
    }
}

fn run(req: Request) -> Response {
    let mut response = Response {
        id: req.id,
        ..Response::default()
    };
    let Some((program, args)) = req.argv.split_first() else {
        response.error = Some("empty argv".into());
        return response;
    };
    let spawned = Command::new(program)
        .args(args)
        .stdin(if req.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            response.error = Some(format!("spawning {program}: {e}"));
            return response;
        }
    };
    if let (Some(input), Some(mut stdin)) = (req.stdin, child.stdin.take()) {
        std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
    }
    let stdout = child.stdout.take().map(reader_thread);
    let stderr = child.stderr.take().map(reader_thread);
    let timeout = req
        .timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_TIMEOUT);
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                response.error = Some(format!("timed out after {} ms", timeout.as_millis()));
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                response.error = Some(format!("waiting for {program}: {e}"));
                break None;
            }
        }
    };
    if let Some(status) = status {
        response.exit_code = status.code();
        response.signal = status.signal();
    }
    response.stdout = stdout.and_then(|t| t.join().ok()).unwrap_or_default();
    response.stderr = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    response
}

fn reader_thread(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}
