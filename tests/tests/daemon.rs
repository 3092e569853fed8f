//! The container daemon in the guest, as a delegated service of init on Berth's disk
//! (btrfs /var, the built-in busybox image on the verified root): declared containers
//! started, logged, restarted by policy, limited by their cgroup, stopped with the
//! daemon; a bad declaration skipped with its reason.

mod common;

use std::time::{Duration, Instant};

use berth_tests::testd::TestdClient;
use common::boot_disk;

fn sh(testd: &mut TestdClient, script: &str) -> (i32, String) {
    let out = testd.sh(script).unwrap();
    (
        out.exit_code.unwrap_or(-1),
        format!("{}{}", out.stdout, out.stderr),
    )
}

fn status(testd: &mut TestdClient) -> serde_json::Value {
    let (_, out) = sh(
        testd,
        "cat /run/berth/containers/status.json 2>/dev/null || echo {}",
    );
    serde_json::from_str(&out).unwrap_or_default()
}

/// Polls status.json until `pred` holds (60 s: TCG is slow).
fn wait_for(
    testd: &mut TestdClient,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(testd);
        if pred(&s) {
            return s;
        }
        if Instant::now() > deadline {
            let (_, log) = sh(testd, "berthctl logs -n 40 berth-daemon");
            panic!("timed out waiting for {what}: {s}\n{log}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn declared_containers_run_restart_log_and_stop() {
    let t = tempfile::tempdir().unwrap();
    let vm = boot_disk("daemon", t.path());
    let mut testd = vm.testd().expect("testd");

    let (code, out) = sh(
        &mut testd,
        r#"mkdir -p /etc/berth/containers.d && cd /etc/berth/containers.d &&
cat > web.toml <<'EOF'
image = "berth.local/busybox:latest"
command = ["sh", "-c", "echo started; i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done"]
network = "host"
restart = "always"
memory = "64M"
EOF
cat > once.toml <<'EOF'
image = "berth.local/busybox:latest"
command = ["sh", "-c", "echo bye >&2; echo run >> /data/runs; exit 3"]
network = "none"
restart = "on-failure:2"
volumes = ["data:/data"]
EOF
cat > bad.toml <<'EOF'
image = "berth.local/busybox:latest"
colour = "blue"
EOF
berthctl restart berth-daemon"#,
    );
    assert_eq!(code, 0, "{out}");

    let s = wait_for(&mut testd, "web running", |s| {
        s["web"]["state"] == "running"
    });
    let pid = s["web"]["pid"].as_i64().unwrap();
    assert!(s.get("bad").is_none(), "{s}");
    // Its cgroup, beside the daemon's own, with the declared limit.
    let (_, mem) = sh(
        &mut testd,
        "cat /sys/fs/cgroup/berth/berth-daemon/containers/web/memory.max",
    );
    assert_eq!(mem.trim(), "67108864");
    // Logs as JSON lines, stream and time.
    std::thread::sleep(Duration::from_secs(2));
    let (_, log) = sh(&mut testd, "head -2 /var/log/berth/containers/web.log");
    let first: serde_json::Value =
        serde_json::from_str(log.lines().next().unwrap_or("{}")).unwrap();
    assert_eq!(first["log"], "started\n", "{log}");
    assert_eq!(first["stream"], "stdout");
    // Killed: restarted (restart = "always").
    sh(&mut testd, &format!("kill -9 {pid}"));
    let s = wait_for(&mut testd, "web restarted", |s| {
        s["web"]["state"] == "running"
            && s["web"]["restarts"] == 1
            && s["web"]["pid"].as_i64() != Some(pid)
    });
    let new_pid = s["web"]["pid"].as_i64().unwrap();
    // on-failure:2: two restarts, then it stays down with its code.
    let s = wait_for(&mut testd, "once given up", |s| {
        s["once"]["state"] == "exited"
    });
    assert_eq!(s["once"]["code"], 3, "{s}");
    assert_eq!(s["once"]["restarts"], 2, "{s}");
    let (_, once_log) = sh(&mut testd, "cat /var/log/berth/containers/once.log");
    assert_eq!(once_log.matches("bye").count(), 3, "{once_log}");
    assert!(once_log.contains("\"stream\":\"stderr\""), "{once_log}");
    // Its named volume: a btrfs subvolume kept outside the container, written by all 3 runs.
    let (_, vol) = sh(
        &mut testd,
        "stat -c %i /var/lib/berth/volumes/data; wc -l < /var/lib/berth/volumes/data/runs",
    );
    assert_eq!(
        vol.split_whitespace().collect::<Vec<_>>(),
        ["256", "3"],
        "{vol}"
    );
    // The bad declaration was skipped, saying which key.
    let (_, dlog) = sh(&mut testd, "berthctl logs -n 50 berth-daemon");
    assert!(
        dlog.contains("bad.toml") && dlog.contains("colour"),
        "{dlog}"
    );

    // Stopping the daemon stops its containers.
    let (code, out) = sh(&mut testd, "berthctl stop berth-daemon");
    assert_eq!(code, 0, "{out}");
    let (_, alive) = sh(
        &mut testd,
        &format!("kill -0 {new_pid} 2>/dev/null && echo alive || echo gone"),
    );
    assert_eq!(alive.trim(), "gone");
    let (_, left) = sh(
        &mut testd,
        "berth-runtime --root /run/berth/runtime list -q",
    );
    assert_eq!(left.trim(), "", "containers left: {left}");
}
