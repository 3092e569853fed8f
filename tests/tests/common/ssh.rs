//! OpenSSH's own client against a guest's sshd, through a hostfwd on 127.0.0.1: the key
//! pairs the tests log in with (made once per test process with ssh-keygen), and `ssh`
//! run with options that never read the user's own configuration or known hosts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// A key pair made for this test process.
pub struct KeyPair {
    pub private: PathBuf,
    /// The public key line (`ssh-ed25519 AAAA... comment`).
    pub public: String,
}

fn keys_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a directory for the test keys"))
        .path()
}

fn make(name: &str) -> KeyPair {
    let private = keys_dir().join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C"])
        .arg(format!("{name}@berth-tests"))
        .arg("-f")
        .arg(&private)
        .stdin(Stdio::null())
        .output()
        .expect("running ssh-keygen (package openssh-client: make deps)");
    assert!(out.status.success(), "ssh-keygen: {out:?}");
    let public = std::fs::read_to_string(private.with_extension("pub"))
        .unwrap()
        .trim()
        .to_string();
    KeyPair { private, public }
}

/// The operator's key: the one user-data and the emulated metadata services hand out.
pub fn operator() -> &'static KeyPair {
    static KEY: OnceLock<KeyPair> = OnceLock::new();
    KEY.get_or_init(|| make("operator"))
}

/// A second key, for a GCE project's keys that the instance blocks.
pub fn project() -> &'static KeyPair {
    static KEY: OnceLock<KeyPair> = OnceLock::new();
    KEY.get_or_init(|| make("project"))
}

/// A key nobody configured.
pub fn stranger() -> &'static KeyPair {
    static KEY: OnceLock<KeyPair> = OnceLock::new();
    KEY.get_or_init(|| make("stranger"))
}

/// `ssh` to root@127.0.0.1:`port` with `key`, non-interactive, trusting the host key on
/// first use (the tests compare it with the console's fingerprints themselves), with
/// the client options `opts`, running `remote` (ssh joins its words with blanks).
pub fn command(port: u16, key: &KeyPair, opts: &[&str], remote: &str) -> Command {
    let mut c = Command::new("ssh");
    c.args(["-F", "/dev/null"]);
    for o in [
        "BatchMode=yes",
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "LogLevel=ERROR",
        "IdentitiesOnly=yes",
        "ConnectTimeout=20",
    ] {
        c.args(["-o", o]);
    }
    c.arg("-i")
        .arg(&key.private)
        .args(["-p", &port.to_string(), "-l", "root"])
        .args(opts)
        .arg("127.0.0.1");
    if !remote.is_empty() {
        c.arg(remote);
    }
    c.stdin(Stdio::null());
    c
}

/// Runs `ssh [opts] root@127.0.0.1 remote`: what it printed and its exit code.
pub fn run(port: u16, key: &KeyPair, opts: &[&str], remote: &str) -> Output {
    command(port, key, opts, remote)
        .output()
        .expect("running ssh")
}

/// stdout and stderr of an output, for messages.
pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Waits (up to 60 s) until `ssh ... ps` as the operator works: sshd starts after the
/// boot's ready line only when the network is up.
pub fn wait_for_login(port: u16) -> Output {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let o = run(port, operator(), &[], "ps");
        if o.status.success() || std::time::Instant::now() > deadline {
            return o;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
