//! berth-testd: the test image's way in (never in the shipped image). Runs the commands
//! the QEMU harness sends over the virtio-serial port named `org.berth.testd` and
//! answers with their exit status and output, one request at a time
//! (`berth_tests::testd::exec` does the running).
//!
//! virtio-serial facts this relies on: without udev the port is /dev/vportNpM, found by
//! its name in /sys/class/virtio-ports, and it appears only once virtio_console is
//! loaded, possibly after testd started; read() returns 0 while the host end is not
//! connected (so EOF means "wait", not "quit").

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_tests::testd::{exec, PORT_NAME};

/// How often to look for the port again, and to read again while the host end is away.
const PORT_POLL: Duration = Duration::from_millis(100);
const HOST_POLL: Duration = Duration::from_millis(50);

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("stop-init") => std::process::exit(stop_init()),
        Some("hold-init") => hold_init(),
        _ => {}
    }
    say(&format!(
        "berth-testd: started, looking for virtio port {PORT_NAME}"
    ));
    let dev = wait_for_port(Path::new("/sys/class/virtio-ports"), Path::new("/dev"));
    say(&format!("berth-testd: serving on {}", dev.display()));
    loop {
        if let Err(e) = serve(&dev) {
            say(&format!("berth-testd: {}: {e}; reopening", dev.display()));
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// One line on the console (stdout is the console; Rust flushes it at each newline).
fn say(msg: &str) {
    let _ = writeln!(std::io::stdout(), "{msg}");
}

fn wait_for_port(sys: &Path, dev: &Path) -> PathBuf {
    loop {
        if let Some(port) = find_port(sys, dev) {
            return port;
        }
        std::thread::sleep(PORT_POLL);
    }
}

/// `dev`/<vportNpM> whose sysfs `name` is ours, once devtmpfs made the node.
fn find_port(sys: &Path, dev: &Path) -> Option<PathBuf> {
    std::fs::read_dir(sys).ok()?.flatten().find_map(|entry| {
        let name = std::fs::read_to_string(entry.path().join("name")).ok()?;
        let node = dev.join(entry.file_name());
        (name.trim() == PORT_NAME && node.exists()).then_some(node)
    })
}

/// Answers request lines until reading fails; a bad line gets an error answer.
fn serve(dev: &Path) -> std::io::Result<()> {
    let port = File::options().read(true).write(true).open(dev)?;
    let mut writer = port.try_clone()?;
    let mut reader = BufReader::new(port);
    let mut line = Vec::new();
    loop {
        reader.read_until(b'\n', &mut line)?;
        if line.last() != Some(&b'\n') {
            // EOF: the host end is not connected. A line it left unfinished will never
            // be, and must not be glued to the next connection's first request.
            line.clear();
            std::thread::sleep(HOST_POLL);
            continue;
        }
        let response = exec::answer(&line);
        line.clear();
        let mut out = serde_json::to_vec(&response).unwrap_or_default();
        out.push(b'\n');
        // The host may have gone away; the harness's next connection skips stale
        // answers by id.
        let _ = writer.write_all(&out);
    }
}

/// `berth-testd stop-init`: stops PID 1's main thread where it stands and keeps it
/// stopped, as a hang in init would (the watchdog test). A helper process holds it under
/// ptrace (PTRACE_SEIZE, then PTRACE_INTERRUPT: a stop that init's signal handling cannot
/// refuse, unlike SIGSTOP, which the kernel never delivers to init), because the stop
/// ends when the tracer exits; this returns once /proc/1/status shows the stop.
fn stop_init() -> i32 {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let spawned = std::env::current_exe().and_then(|exe| {
        Command::new(exe)
            .arg("hold-init")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
    });
    if let Err(e) = spawned {
        say(&format!("berth-testd: starting the holder: {e}"));
        return 1;
    }
    for _ in 0..100 {
        let status = std::fs::read_to_string("/proc/1/status").unwrap_or_default();
        if status.lines().any(|l| l.starts_with("State:\tt")) {
            say("berth-testd: init's main thread is stopped");
            return 0;
        }
        std::thread::sleep(PORT_POLL);
    }
    say("berth-testd: init did not stop");
    1
}

/// The holder: traces init's main thread, stops it, and never lets go.
fn hold_init() -> ! {
    use nix::sys::{ptrace, wait};
    use nix::unistd::Pid;
    let init = Pid::from_raw(1);
    let stopped = ptrace::seize(init, ptrace::Options::empty())
        .and_then(|()| ptrace::interrupt(init))
        .and_then(|()| wait::waitpid(init, Some(wait::WaitPidFlag::__WALL)).map(drop));
    if stopped.is_err() {
        std::process::exit(1);
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_port_by_name_once_its_node_exists() {
        let root = tempfile::tempdir().unwrap();
        let (sys, dev) = (root.path().join("sys"), root.path().join("dev"));
        for (port, name) in [
            ("vport0p1", "org.qemu.guest_agent.0"),
            ("vport1p1", PORT_NAME),
        ] {
            std::fs::create_dir_all(sys.join(port)).unwrap();
            std::fs::write(sys.join(port).join("name"), format!("{name}\n")).unwrap();
        }
        std::fs::create_dir_all(&dev).unwrap();
        assert_eq!(find_port(&sys, &dev), None, "no device node yet");
        std::fs::write(dev.join("vport1p1"), "").unwrap();
        assert_eq!(find_port(&sys, &dev), Some(dev.join("vport1p1")));
    }
}
