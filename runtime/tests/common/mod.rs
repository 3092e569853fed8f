//! The bundle the runtime's host tests share: a busybox rootfs made from Debian's
//! busybox-static and `runc spec`'s defaults. Each test binary uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

pub const BUSYBOX: &str = "/bin/busybox";

pub struct Bundle {
    dir: tempfile::TempDir,
    root: PathBuf,
}

impl Bundle {
    /// A bundle with a busybox rootfs and `runc spec`'s defaults, `args` as the process.
    pub fn new(args: &[&str]) -> Self {
        assert!(
            Path::new(BUSYBOX).exists(),
            "{BUSYBOX} missing: `make deps` installs busybox-static"
        );
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
        for applet in [
            "sh", "ls", "cat", "hostname", "mount", "id", "echo", "sleep", "grep", "wc", "ps",
            "pwd", "touch", "head", "readlink", "mknod",
        ] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        let root = dir.path().join("state");
        let b = Bundle { dir, root };
        b.write(default_config(args));
        b
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, config: Value) {
        std::fs::write(self.path().join("config.json"), config.to_string()).unwrap();
    }

    pub fn edit(&self, f: impl FnOnce(&mut Value)) {
        let mut c: Value =
            serde_json::from_slice(&std::fs::read(self.path().join("config.json")).unwrap())
                .unwrap();
        f(&mut c);
        self.write(c);
    }

    pub fn runtime(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_berth-runtime"))
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .current_dir(self.path())
            .output()
            .unwrap()
    }

    /// For commands that leave a container process behind holding their stdio (create):
    /// the output goes to files, so waiting for the command does not wait for it.
    pub fn runtime_detached(&self, args: &[&str]) -> (bool, String) {
        let err_path = self.path().join("stderr.txt");
        let status = Command::new(env!("CARGO_BIN_EXE_berth-runtime"))
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .current_dir(self.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .status()
            .unwrap();
        (
            status.success(),
            std::fs::read_to_string(&err_path).unwrap_or_default(),
        )
    }

    /// `run` in the foreground; (exit code, stdout, stderr).
    pub fn run(&self, id: &str) -> (i32, String, String) {
        let out = self.runtime(&["run", "--bundle", ".", id]);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn state(&self, id: &str) -> Value {
        let out = self.runtime(&["state", id]);
        assert!(
            out.status.success(),
            "state {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Nothing left under the state root.
    pub fn assert_clean(&self) {
        let left: Vec<_> = std::fs::read_dir(&self.root)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

pub fn default_config(args: &[&str]) -> Value {
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "berthbox",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                           {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/timer_list",
                            "/proc/sysrq-trigger", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys"]
        }
    })
}

pub fn sh(script: &str) -> Bundle {
    Bundle::new(&["sh", "-c", script])
}
