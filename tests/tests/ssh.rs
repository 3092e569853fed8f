//! Reaching a machine over SSH, with OpenSSH's own client on this machine through a
//! hostfwd on 127.0.0.1: the key from user-data logs in and its words run as berthctl
//! (ps, logs, exec with a terminal and its exit code); an unknown key, a password, a
//! program, a shell metacharacter and remote forwarding are refused; local forwarding
//! reaches a container's unpublished port but not the metadata address nor the host;
//! the host key fingerprints on the console are the ones sshd shows; `debug` sees the
//! host's files and processes, is logged with the key, and leaves nothing. One boot
//! for all.
//! (The keys each cloud's metadata hands out are tried in clouds.rs, on its boots.)

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{assert_running, boot, disk_config, metadata, new_disk, ssh};
use berth_tests::http::{free_port, get};

fn user_data() -> String {
    format!(
        "#cloud-config\n\
         hostname: reach-me\n\
         ssh_authorized_keys:\n  - {}\n\
         berth:\n  containers:\n    web:\n      image: berth.local/busybox:latest\n      \
         command: [\"sh\", \"-c\", \"echo web is up; mkdir -p /www; echo hello over ssh > /www/index.html; exec httpd -f -p 8080 -h /www\"]\n      \
         restart: always\n",
        ssh::operator().public
    )
}

/// The fingerprints between the console's markers.
fn console_fingerprints(console: &str) -> Vec<String> {
    let start = console
        .find("-----BEGIN SSH HOST KEY FINGERPRINTS-----")
        .unwrap_or_else(|| panic!("no fingerprints on the console:\n{console}"));
    let block = &console[start..];
    let end = block
        .find("-----END SSH HOST KEY FINGERPRINTS-----")
        .expect("the fingerprints' end marker");
    let mut f: Vec<String> = block[..end]
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|w| w.starts_with("SHA256:"))
        .map(str::to_string)
        .collect();
    f.sort();
    f
}

/// What `ssh-keyscan` sees, fingerprinted by `ssh-keygen -l`.
fn scanned_fingerprints(port: u16) -> Vec<String> {
    let scan = std::process::Command::new("ssh-keyscan")
        .args(["-p", &port.to_string(), "-t", "ed25519,ecdsa", "127.0.0.1"])
        .stderr(Stdio::null())
        .output()
        .expect("ssh-keyscan");
    let mut keygen = std::process::Command::new("ssh-keygen")
        .args(["-l", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("ssh-keygen");
    use std::io::Write;
    keygen
        .stdin
        .take()
        .unwrap()
        .write_all(&scan.stdout)
        .unwrap();
    let out = keygen.wait_with_output().unwrap();
    let mut f: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect();
    f.sort();
    f
}

/// `ssh -N -L local:target` in the background, until it is dropped.
struct Tunnel(std::process::Child);

impl Drop for Tunnel {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tunnel(port: u16, local: u16, target: &str) -> Tunnel {
    let child = ssh::command(
        port,
        ssh::operator(),
        &[
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-L",
            &format!("127.0.0.1:{local}:{target}"),
        ],
        "",
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("ssh -L");
    // The client listens once it has logged in.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", local)).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    Tunnel(child)
}

/// Ok when a connection to 127.0.0.1:`local` (a tunnel's end) closes without a byte
/// after an HTTP request; what came otherwise.
fn nothing_through(local: u16) -> Result<(), String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", local)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) | Err(_) if got.is_empty() => Ok(()),
        _ => Err(String::from_utf8_lossy(&got).into_owned()),
    }
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn the_operator_reaches_the_machine_over_ssh_and_runs_only_berthctl() {
    let t = tempfile::tempdir().unwrap();
    let ud = t.path().join("user-data");
    std::fs::write(&ud, user_data()).unwrap();
    // A web server on the metadata address: if forwarding reached it, it would answer.
    let metadata = metadata::start(metadata::Cloud::Url, b"", "unused");
    let port = free_port();
    new_disk(t.path());
    let mut cfg = disk_config("ssh", t.path());
    cfg.extra_args = vec![
        "-fw_cfg".into(),
        format!("name=opt/berth/user-data,file={}", ud.display()),
        "-netdev".into(),
        metadata.netdev_with_ssh("n0", port),
        "-device".into(),
        "virtio-net-pci,netdev=n0".into(),
    ];
    let vm = boot(cfg);
    let mut testd = vm.testd().expect("testd");
    assert_running(&mut testd, "web");

    // The key from user-data: `ps` runs as berthctl ps.
    let ps = ssh::wait_for_login(port);
    assert!(
        ps.status.success() && stdout(&ps).contains("web"),
        "ssh ps: {}\n{}",
        ssh::text(&ps),
        vm.console()
    );
    let console = vm.console();
    assert!(
        !console.contains("forwarding is off"),
        "the forwarding fence failed:\n{console}"
    );

    // The host keys on the console are the ones sshd presents.
    let on_console = console_fingerprints(&console);
    assert_eq!(on_console.len(), 2, "{console}");
    assert_eq!(scanned_fingerprints(port), on_console);

    // Refusals: a key nobody configured, a password, a program, a metacharacter.
    let o = ssh::run(port, ssh::stranger(), &[], "ps");
    assert_eq!(o.status.code(), Some(255), "{}", ssh::text(&o));
    assert!(
        stderr(&o).contains("Permission denied (publickey)"),
        "{}",
        ssh::text(&o)
    );
    let o = ssh::run(
        port,
        ssh::operator(),
        &[
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
        ],
        "ps",
    );
    assert_eq!(o.status.code(), Some(255), "{}", ssh::text(&o));
    assert!(
        stderr(&o).contains("Permission denied (publickey)"),
        "only publickey is offered: {}",
        ssh::text(&o)
    );
    let o = ssh::run(port, ssh::operator(), &[], "/bin/sh");
    assert_eq!(o.status.code(), Some(126), "{}", ssh::text(&o));
    assert!(stderr(&o).contains("not programs"), "{}", ssh::text(&o));
    let o = ssh::run(port, ssh::operator(), &[], "ps; poweroff");
    assert_eq!(o.status.code(), Some(2), "{}", ssh::text(&o));
    assert!(
        stderr(&o).contains("means something to a shell"),
        "{}",
        ssh::text(&o)
    );
    assert!(stdout(&o).is_empty(), "nothing ran: {}", ssh::text(&o));

    // exec with a terminal: the pty, and the exit code through ssh.
    let o = ssh::run(
        port,
        ssh::operator(),
        &["-tt"],
        "exec -it web sh -c 'tty; exit 7'",
    );
    assert_eq!(o.status.code(), Some(7), "{}", ssh::text(&o));
    assert!(stdout(&o).contains("/dev/pts/"), "{}", ssh::text(&o));

    // The client's window size reaches the container's terminal, and so does a resize
    // (ssh's window-change, sshd's pty, berthctl's SIGWINCH): ssh runs under script(1),
    // whose terminal is 41x103 at first and 50x120 three seconds later.
    let inner = ssh::command(
        port,
        ssh::operator(),
        &["-tt"],
        "exec -it web sh -c 'stty size; sleep 6; stty size'",
    );
    let argv: Vec<String> = std::iter::once(inner.get_program())
        .chain(inner.get_args())
        .map(|a| format!("'{}'", a.to_string_lossy().replace('\'', r"'\''")))
        .collect();
    // ssh in the background reads the terminal (not the /dev/null a shell gives a
    // background job); script's own input stays open (a pipe held here), or script
    // would end at its end.
    let mut script = std::process::Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "stty rows 41 cols 103; {} </dev/tty & sleep 3; stty rows 50 cols 120; \
             kill -WINCH $!; wait $!",
            argv.join(" ")
        ))
        .arg("/dev/null")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script (bsdutils)");
    let held = script.stdin.take();
    let o = script.wait_with_output().unwrap();
    drop(held);
    let out = stdout(&o);
    let sizes: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| *l == "41 103" || *l == "50 120")
        .collect();
    assert_eq!(
        sizes,
        ["41 103", "50 120"],
        "stty size through ssh, before and after a resize: {}",
        ssh::text(&o)
    );

    let o = ssh::run(port, ssh::operator(), &[], "logs web");
    assert!(
        o.status.success() && stdout(&o).contains("web is up"),
        "{}",
        ssh::text(&o)
    );

    // Local forwarding: a container's unpublished port, but not the metadata address
    // nor the bridge's own address (the host).
    let o = ssh::run(port, ssh::operator(), &[], "inspect web");
    let inspect: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("inspect web: {e}: {}", ssh::text(&o)));
    let address = inspect[0]["NetworkSettings"]["IPAddress"]
        .as_str()
        .or_else(|| inspect[0]["IPAddress"].as_str())
        .unwrap_or_else(|| panic!("no address in {inspect}"))
        .to_string();
    let local = free_port();
    let web = tunnel(port, local, &format!("{address}:8080"));
    let body = get(local).unwrap_or_else(|e| panic!("the container's page through ssh -L: {e}"));
    assert_eq!(body.trim(), "hello over ssh");
    drop(web);
    // Each of these would say something if reached (a web server on the metadata
    // address, sshd's banner on the host's addresses): refused, the tunnel's end closes
    // with nothing read.
    for target in [
        "169.254.169.254:80",
        "10.88.0.1:22",
        "127.0.0.1:22",
        "169.254.169.15:22",
    ] {
        let local = free_port();
        let _t = tunnel(port, local, target);
        let got = nothing_through(local);
        assert!(got.is_ok(), "ssh -L {target} was not refused: {got:?}");
    }
    // Remote forwarding is refused outright.
    let o = ssh::run(
        port,
        ssh::operator(),
        &[
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            "0:127.0.0.1:1",
        ],
        "",
    );
    assert_eq!(o.status.code(), Some(255), "ssh -R: {}", ssh::text(&o));

    // The break-glass container: the host's files, processes and /var, logged with the
    // key that opened it, and gone afterwards.
    let o = ssh::run(
        port,
        ssh::operator(),
        &[],
        "debug -- cat /host/etc/hostname",
    );
    assert!(
        o.status.success() && stdout(&o).trim() == "reach-me",
        "debug cat: {}",
        ssh::text(&o)
    );
    let o = ssh::run(port, ssh::operator(), &[], "debug -- ps");
    assert!(
        stdout(&o).contains("sshd") && stdout(&o).contains("berth-daemon"),
        "debug ps shows the host's processes: {}",
        ssh::text(&o)
    );
    let o = ssh::run(
        port,
        ssh::operator(),
        &[],
        "debug -- sh -c 'touch /host/var/debug-was-here && ! touch /host/etc/nope 2>/dev/null'",
    );
    assert!(
        o.status.success(),
        "/host/var rw, /host ro: {}",
        ssh::text(&o)
    );
    let written = testd.sh("ls /var/debug-was-here").unwrap();
    assert!(written.success(), "{written:?}");
    let left = testd.sh("ls /run/berth/runtime; berthctl ps -a").unwrap();
    assert!(
        !left.stdout.lines().any(|l| l.starts_with("debug-")),
        "a debug container is left: {left:?}"
    );
    let fp = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(ssh::operator().private.with_extension("pub"))
        .output()
        .unwrap();
    let fp = String::from_utf8_lossy(&fp.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    let console = vm.console();
    assert!(
        console
            .lines()
            .any(|l| l.contains("debug session debug-")
                && l.contains(&format!("by SSH key {fp} from "))),
        "no debug session line with {fp}:\n{console}"
    );

    // Measures: sshd's memory when idle, and `ps` over ssh against berthctl ps in the guest.
    let memory = testd
        .sh("for p in $(pidof sshd); do grep -h '^Rss\\|^Pss' /proc/$p/smaps_rollup; done")
        .unwrap();
    const N: u32 = 10;
    let started = Instant::now();
    for _ in 0..N {
        assert!(ssh::run(port, ssh::operator(), &[], "ps").status.success());
    }
    let over_ssh = started.elapsed() / N;
    // /proc/uptime has centiseconds: N runs make it precise enough.
    let local = testd
        .sh("read a _ < /proc/uptime; for i in 1 2 3 4 5 6 7 8 9 10; do berthctl ps >/dev/null; done; \
             read b _ < /proc/uptime; echo \"$a $b\"")
        .unwrap();
    let times: Vec<f64> = local
        .stdout
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let local_ms = match times.as_slice() {
        [a, b] => (b - a) * 1000.0 / f64::from(N),
        _ => f64::NAN,
    };
    eprintln!(
        "ssh: idle sshd {}; `ssh HOST ps` {} ms (connection, key exchange, login) against `berthctl ps` in the guest {local_ms:.0} ms",
        memory.stdout.split_whitespace().collect::<Vec<_>>().join(" "),
        over_ssh.as_millis(),
    );
    // The machine is still up: `ps; poweroff` ran nothing.
    assert!(testd.sh("true").unwrap().success());
}
