//! berth-testsvc: misbehaving services for init's fault tests (test image only).
//!
//! - `notify`: stores a memfd in init's fd store (sd_notify FDSTORE) on its first start,
//!   prints what it gets back on later starts, reports READY=1, then sleeps.
//! - `crash`: says so on stderr and exits 1 at once.
//! - `ignore-term`: ignores SIGTERM and sleeps (init must SIGKILL it).
//! - `delegate`: on its first start puts a payload process in its delegated cgroup
//!   subtree (it exits with 7 once /run/test-payload-exit exists); on every start and every half second prints the exit
//!   statuses init kept for it.
//! - `slow`: never becomes ready (its socket would come after a minute).

use std::io::{IoSlice, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

fn say(msg: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{msg}");
    let _ = out.flush();
}

fn notify(text: &str, fds: &[i32]) -> std::io::Result<()> {
    let path = std::env::var_os("NOTIFY_SOCKET")
        .ok_or_else(|| std::io::Error::other("NOTIFY_SOCKET is not set"))?;
    let sock = UnixDatagram::unbound()?;
    sock.connect(PathBuf::from(path))?;
    let cmsg = [ControlMessage::ScmRights(fds)];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(text.as_bytes())],
        if fds.is_empty() { &[] } else { &cmsg },
        MsgFlags::empty(),
        None,
    )?;
    Ok(())
}

fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn main() -> ExitCode {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let result = match mode.as_str() {
        "notify" => notify_mode(),
        "crash" => {
            eprintln!("berth-testsvc: failing on purpose");
            return ExitCode::FAILURE;
        }
        "ignore-term" => ignore_term(),
        "delegate" => delegate(),
        "slow" => {
            say("slow: not ready for a minute");
            std::thread::sleep(Duration::from_secs(60));
            let _ = std::os::unix::net::UnixListener::bind("/run/test-slow.sock");
            sleep_forever()
        }
        other => Err(std::io::Error::other(format!("unknown mode {other:?}"))),
    };
    if let Err(e) = result {
        eprintln!("berth-testsvc {mode}: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn notify_mode() -> std::io::Result<()> {
    let count: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    if count > 0 {
        for (i, name) in (0..count).zip(names.split(':')) {
            // SAFETY: init passed these descriptors to us at 3.. (LISTEN_FDS); we own them.
            let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(3 + i) });
            let mut buf = [0u8; 256];
            let n = file.read_at(&mut buf, 0)?;
            say(&format!(
                "restored {name}: {}",
                String::from_utf8_lossy(&buf[..n]).trim()
            ));
        }
    } else {
        let fd = nix::sys::memfd::memfd_create(c"state", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
        let file = std::fs::File::from(fd);
        file.write_at(
            format!("stored by pid {}", std::process::id()).as_bytes(),
            0,
        )?;
        notify("FDSTORE=1\nFDNAME=state", &[file.as_raw_fd()])?;
        say("stored state");
    }
    notify("READY=1\nSTATUS=serving", &[])?;
    sleep_forever()
}

fn ignore_term() -> std::io::Result<()> {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: SIG_IGN installs no handler code.
    unsafe { signal(Signal::SIGTERM, SigHandler::SigIgn) }?;
    say("ignoring SIGTERM");
    sleep_forever()
}

fn delegate() -> std::io::Result<()> {
    let cgroup = std::env::var_os("BERTH_CGROUP")
        .map(PathBuf::from)
        .ok_or_else(|| std::io::Error::other("BERTH_CGROUP is not set"))?;
    print_exits()?;
    let payload = cgroup.join("payload");
    if !payload.exists() {
        std::fs::create_dir(&payload)?;
        let child = std::process::Command::new("/bin/sh")
            .args([
                "-c",
                "while [ ! -e /run/test-payload-exit ]; do sleep 0.1; done; exit 7",
            ])
            .spawn()?;
        std::fs::write(payload.join("cgroup.procs"), child.id().to_string())?;
        say(&format!(
            "payload pid {} in {}",
            child.id(),
            payload.display()
        ));
        // Not waited for: when we die it is re-parented to init.
        std::mem::forget(child);
    }
    notify("READY=1", &[])?;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        print_exits()?;
    }
}

fn print_exits() -> std::io::Result<()> {
    let exits = berth_control::zbus::block_on(async {
        let conn = berth_control::connect(Path::new(berth_control::INIT_SOCKET)).await?;
        let init = berth_control::InitProxy::new(&conn).await?;
        init.take_exit_statuses().await
    })
    .map_err(|e| std::io::Error::other(e.to_string()))?;
    for e in exits {
        say(&format!(
            "exit status: pid {} code {} signal {}",
            e.pid, e.code, e.signal
        ));
    }
    Ok(())
}
