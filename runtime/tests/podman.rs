//! A real client: Debian's podman (with conmon) driving berth-runtime on the build
//! machine. Its cgroups are a v1/v2 hybrid, so podman runs with --cgroups=disabled
//! (declared in containers.conf as runtime_supports_nocgroup, the key podman 4.3 reads)
//! and with ulimits under this machine's hard limits. Storage and state are the test's
//! own (vfs driver under a temporary directory), loaded with a busybox image imported
//! from a tarball: no registry, nothing outside the test touched.

use std::path::Path;
use std::process::{Command, Output, Stdio};

struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn new() -> Self {
        assert!(
            Path::new("/usr/bin/podman").exists(),
            "podman is missing: `make deps` installs it"
        );
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("containers.conf");
        std::fs::write(
            &conf,
            format!(
                "[engine]\nruntime_supports_nocgroup = [\"berth-runtime\"]\n[engine.runtimes]\nberth-runtime = [\"{}\"]\n",
                env!("CARGO_BIN_EXE_berth-runtime")
            ),
        )
        .unwrap();
        let p = Podman { dir };
        p.import_busybox();
        p
    }

    fn base(&self) -> Command {
        let d = self.dir.path();
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_CONF", d.join("containers.conf"))
            .arg("--root")
            .arg(d.join("storage"))
            .arg("--runroot")
            .arg(d.join("run"))
            .args([
                "--storage-driver",
                "vfs",
                "--runtime",
                "berth-runtime",
                "--cgroup-manager",
                "cgroupfs",
            ])
            .stdin(Stdio::null());
        cmd
    }

    fn podman(&self, args: &[&str]) -> Output {
        self.base().args(args).output().unwrap()
    }

    /// A run's flags that fit this machine (see the module comment).
    const RUN: [&'static str; 7] = [
        "--cgroups=disabled",
        "--network",
        "none",
        "--ulimit",
        "nofile=20000:20000",
        "--ulimit",
        "nproc=1000:1000",
    ];

    fn import_busybox(&self) {
        let root = self.dir.path().join("bb");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        for d in ["etc", "tmp", "proc", "sys", "dev"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        for a in [
            "sh", "echo", "sleep", "cat", "hostname", "tty", "ls", "grep", "wc",
        ] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
        }
        let tar = self.dir.path().join("bb.tar");
        let ok = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(ok.success());
        let out = self.podman(&[
            "import",
            tar.to_str().unwrap(),
            "berth.local/busybox:latest",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }

    fn run_args<'a>(&self, extra: &[&'a str], cmd: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["run"];
        v.extend(Self::RUN);
        v.extend(extra);
        v.push("berth.local/busybox");
        v.extend(cmd);
        v
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "--all", "--force", "--time", "0"]);
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn podman_runs_containers_with_berth_runtime() {
    let p = Podman::new();

    // podman run: output and exit code come through.
    let out = p.podman(&p.run_args(
        &["--rm"],
        &["sh", "-c", "echo hello from $(hostname); exit 3"],
    ));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("hello from "),
        "{}",
        text(&out.stdout)
    );

    // run -d, logs, exec (output and exit code), stop, rm.
    let out = p.podman(&p.run_args(
        &["-d", "--name", "web"],
        &["sh", "-c", "echo started; exec sleep 300"],
    ));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let logs = p.podman(&["logs", "web"]);
        if text(&logs.stdout).contains("started") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no log line: {}",
            text(&logs.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = p.podman(&[
        "exec",
        "web",
        "sh",
        "-c",
        "echo pid=$$; ls /proc | grep -c '^[0-9]'",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("pid="), "{stdout}");
    assert_ne!(
        stdout.lines().next(),
        Some("pid=1"),
        "exec is not the container's init"
    );
    let out = p.podman(&["exec", "web", "sh", "-c", "exit 4"]);
    assert_eq!(out.status.code(), Some(4));
    let ps = p.podman(&["ps", "--format", "{{.Names}} {{.Status}}"]);
    assert!(text(&ps.stdout).contains("web Up"), "{}", text(&ps.stdout));
    let out = p.podman(&["stop", "--time", "1", "web"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = p.podman(&["rm", "web"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ps = p.podman(&["ps", "-a", "--format", "{{.Names}}"]);
    assert_eq!(text(&ps.stdout).trim(), "");

    // run -it: a terminal (script(1) gives podman one).
    let base = p.base();
    let line = format!(
        "{} {}",
        base.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" "),
        p.run_args(&["--rm", "-it"], &["sh", "-c", "'tty; echo interactive'"])
            .join(" ")
    );
    // script's stdin stays open (and silent) until the end: at end of file it would
    // hang up the terminal, racing the container's output.
    let mut child = Command::new("script")
        .args(["-qec", &format!("podman {line}"), "/dev/null"])
        .env("CONTAINERS_CONF", p.dir.path().join("containers.conf"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let held_stdin = child.stdin.take();
    let out = child.wait_with_output().unwrap();
    drop(held_stdin);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("/dev/pts/"), "{stdout}");
    assert!(stdout.contains("interactive"), "{stdout}");
}
