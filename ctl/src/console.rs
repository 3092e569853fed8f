//! `berthctl exec -t`: the operator's end of a container terminal. berth-runtime makes
//! the pseudo-terminal inside the container and sends its master over a unix socket
//! (the OCI `--console-socket` protocol: one message, the fd as SCM_RIGHTS); berthctl
//! receives it, puts its own terminal in raw mode, and copies bytes both ways until the
//! command ends. When our terminal is resized (SIGWINCH, also what sshd's pty gets from
//! `ssh -t`), the new size is set on the container's: the kernel then signals the
//! command there.

use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use rustix::event::{PollFd, PollFlags};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use rustix::termios::{self, OptionalActions};

/// How long berth-runtime may take to hand over the terminal.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(30);

pub fn exec_with_terminal(
    name: &str,
    env: &[String],
    workdir: Option<&str>,
    command: &[String],
) -> Result<ExitCode, String> {
    let socket = std::env::temp_dir().join(format!("berthctl-console-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    let mut child = crate::containers::exec_command(name, env, workdir)
        .arg("--tty")
        .arg("--console-socket")
        .arg(&socket)
        .arg("--")
        .args(command)
        .spawn()
        .map_err(|e| format!("running {}: {e}", crate::containers::RUNTIME_BINARY));
    let result = child
        .as_mut()
        .map_err(|e| e.clone())
        .and_then(|c| receive_master(&listener, c));
    let _ = std::fs::remove_file(&socket);
    let mut child = child?;
    let master = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    let stdin = std::io::stdin();
    // Raw mode only when ours is a terminal; restored however the copy ends.
    let saved = termios::tcgetattr(&stdin).ok();
    if let Some(t) = &saved {
        let mut raw = t.clone();
        raw.make_raw();
        let _ = termios::tcsetattr(&stdin, OptionalActions::Now, &raw);
        if let Ok(size) = termios::tcgetwinsize(&stdin) {
            let _ = termios::tcsetwinsize(&master, size);
        }
    }
    // SIGWINCH through a signalfd, polled beside the terminal (blocked in every thread
    // since `hold_resizes`). Without it, resizes are not passed on; nothing else changes.
    let resizes = SignalFd::with_flags(
        &resize_signal(),
        SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK,
    )
    .ok();
    copy_both_ways(&master, resizes.as_ref());
    if let Some(t) = &saved {
        let _ = termios::tcsetattr(&stdin, OptionalActions::Now, t);
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    Ok(ExitCode::from(
        status
            .code()
            .and_then(|c| u8::try_from(c).ok())
            .unwrap_or(255),
    ))
}

fn resize_signal() -> SigSet {
    let mut winch = SigSet::empty();
    winch.add(Signal::SIGWINCH);
    winch
}

/// Blocks SIGWINCH in the calling thread, and so in every thread it starts later. Called
/// first thing in berthctl: a process-directed signal goes to any thread that does not
/// block it, and one delivered to a helper thread (the connection watchdog, zbus's
/// reactor) would be lost to `exec -t`'s signalfd. (Children get an empty mask: std
/// resets it before exec.)
pub fn hold_resizes() {
    let _ = resize_signal().thread_block();
}

/// Accepts berth-runtime's connection and takes the terminal's master from it.
fn receive_master(
    listener: &UnixListener,
    child: &mut std::process::Child,
) -> Result<OwnedFd, String> {
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + HANDOVER_TIMEOUT;
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(format!("console socket: {e}")),
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "berth-runtime exec ended ({status}) before giving a terminal"
            ));
        }
        if Instant::now() > deadline {
            return Err("berth-runtime gave no terminal in time".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    let mut data = [0u8; 256];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    rustix::net::recvmsg(
        &stream,
        &mut [IoSliceMut::new(&mut data)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| format!("console socket: {e}"))?;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = message {
            if let Some(fd) = fds.next() {
                return Ok(fd);
            }
        }
    }
    Err("console socket: no terminal in berth-runtime's message".into())
}

/// stdin -> master, master -> stdout, until the master says the command is gone; our
/// terminal's size to the master at each SIGWINCH `resizes` reads.
fn copy_both_ways(master: &OwnedFd, resizes: Option<&SignalFd>) {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut stdin_open = true;
    let mut buf = [0u8; 8192];
    loop {
        let mut fds = vec![PollFd::new(master, PollFlags::IN)];
        if let Some(r) = resizes {
            fds.push(PollFd::new(r, PollFlags::IN));
        }
        if stdin_open {
            fds.push(PollFd::new(&stdin, PollFlags::IN));
        }
        match rustix::event::poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return,
        }
        let master_ready = !fds[0].revents().is_empty();
        let resized = resizes.is_some() && !fds[1].revents().is_empty();
        let stdin_ready = stdin_open && fds.last().is_some_and(|f| !f.revents().is_empty());
        if resized {
            if let Some(r) = resizes {
                while let Ok(Some(_)) = r.read_signal() {}
            }
            if let Ok(size) = termios::tcgetwinsize(&stdin) {
                let _ = termios::tcsetwinsize(master, size);
            }
        }
        if master_ready {
            match rustix::io::read(master, &mut buf) {
                Ok(n) if n > 0 => {
                    if write_all(stdout.as_fd(), &buf[..n]).is_err() {
                        return;
                    }
                }
                // EIO: the last process holding the terminal is gone.
                _ => return,
            }
        }
        if stdin_ready {
            match rustix::io::read(&stdin, &mut buf) {
                Ok(n) if n > 0 => {
                    if write_all(master.as_fd(), &buf[..n]).is_err() {
                        return;
                    }
                }
                _ => stdin_open = false,
            }
        }
    }
}

fn write_all(fd: std::os::fd::BorrowedFd<'_>, mut data: &[u8]) -> rustix::io::Result<()> {
    while !data.is_empty() {
        let n = rustix::io::write(fd, data)?;
        data = &data[n..];
    }
    Ok(())
}
