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
//! - `syn IFACE SRC_MAC DST_MAC SRC_IP DST_IP PORT`: puts one hand-made TCP SYN on
//!   IFACE and says whether a SYN+ACK came back within 3 s (exit 0) or not (exit 1).
//! - `router-advert IFACE SRC_MAC`: puts one IPv6 router advertisement on IFACE.

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
        "syn" => syn(&std::env::args().skip(2).collect::<Vec<_>>()),
        "router-advert" => router_advert(&std::env::args().skip(2).collect::<Vec<_>>()),
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

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> std::io::Result<T> {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("argument {}: expected {what}", i + 1)))
}

fn mac_arg(args: &[String], i: usize) -> std::io::Result<berth_tests::frames::Mac> {
    args.get(i)
        .and_then(|a| berth_tests::frames::parse_mac(a))
        .ok_or_else(|| std::io::Error::other(format!("argument {}: expected a MAC", i + 1)))
}

fn syn(args: &[String]) -> std::io::Result<()> {
    use berth_tests::frames::{is_syn_ack, tcp_syn};
    let iface: String = arg(args, 0, "an interface")?;
    let (src_mac, dst_mac) = (mac_arg(args, 1)?, mac_arg(args, 2)?);
    let src: std::net::Ipv4Addr = arg(args, 3, "the source address")?;
    let dst: std::net::Ipv4Addr = arg(args, 4, "the destination address")?;
    let port: u16 = arg(args, 5, "the destination port")?;
    let sport = 40000 + u16::try_from(std::process::id() % 20000).unwrap_or(0);
    let sock = raw::PacketSocket::bind(&iface)?;
    sock.send(&tcp_syn((src_mac, dst_mac), (src, sport), (dst, port)))?;
    say(&format!(
        "syn: sent {src}:{sport} -> {dst}:{port} on {iface}"
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 2048];
    while let Some(n) = sock.recv_until(&mut buf, deadline)? {
        if is_syn_ack(&buf[..n], (dst, port), sport) {
            say(&format!("syn: answered by {dst}:{port}"));
            return Ok(());
        }
    }
    say("syn: no answer");
    std::process::exit(1)
}

fn router_advert(args: &[String]) -> std::io::Result<()> {
    let iface: String = arg(args, 0, "an interface")?;
    let mac = mac_arg(args, 1)?;
    let sock = raw::PacketSocket::bind(&iface)?;
    sock.send(&berth_tests::frames::router_advert(mac))?;
    say(&format!(
        "router-advert: sent from {} on {iface}",
        berth_tests::frames::link_local(mac)
    ));
    Ok(())
}

/// An AF_PACKET socket: raw Ethernet frames on one interface (packet(7)).
mod raw {
    use std::ffi::CString;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::time::Instant;

    /// ETH_P_ALL (0x0003, linux/if_ether.h) in network byte order, as socket(2) and
    /// sockaddr_ll take it.
    const ALL: u16 = 0x0003_u16.to_be();

    pub struct PacketSocket {
        fd: OwnedFd,
    }

    impl PacketSocket {
        pub fn bind(iface: &str) -> io::Result<PacketSocket> {
            let name = CString::new(iface).map_err(io::Error::other)?;
            // SAFETY: `name` is a NUL-terminated string that lives across the call.
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if index == 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: socket(2) takes no pointers; the result is checked before use.
            let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(ALL)) };
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `raw` is a new descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: sockaddr_ll is plain data; all-zero is a valid value of it.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = u16::try_from(libc::AF_PACKET).map_err(io::Error::other)?;
            addr.sll_protocol = ALL;
            addr.sll_ifindex = i32::try_from(index).map_err(io::Error::other)?;
            let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_ll>())
                .map_err(io::Error::other)?;
            // SAFETY: `addr` is a valid sockaddr_ll of `len` bytes, alive across the call.
            let r = unsafe { libc::bind(fd.as_raw_fd(), std::ptr::addr_of!(addr).cast(), len) };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(PacketSocket { fd })
        }

        pub fn send(&self, frame: &[u8]) -> io::Result<()> {
            // SAFETY: `frame` is a readable buffer of `frame.len()` bytes.
            let n =
                unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }

        /// The next frame's length, or None once `deadline` passed.
        pub fn recv_until(&self, buf: &mut [u8], deadline: Instant) -> io::Result<Option<usize>> {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(None);
                }
                let mut pfd = libc::pollfd {
                    fd: self.fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
                // SAFETY: `pfd` is one valid pollfd, alive across the call.
                let r = unsafe { libc::poll(&mut pfd, 1, ms) };
                if r < 0 {
                    return Err(io::Error::last_os_error());
                }
                if r == 0 {
                    continue;
                }
                // SAFETY: `buf` is a writable buffer of `buf.len()` bytes.
                let n = unsafe {
                    libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                return Ok(Some(usize::try_from(n).unwrap_or(0)));
            }
        }
    }
}
