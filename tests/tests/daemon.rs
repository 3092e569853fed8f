//! The container daemon in the guest, as a delegated service of init on Berth's disk
//! (btrfs /var, the built-in busybox image on the verified root): declared containers
//! started, logged, restarted by policy, limited by their cgroup; the daemon killed and
//! restarted with its containers kept running and their logs flowing, an exit during
//! its absence recovered from init; berthctl's container verbs; a removed declaration
//! removing its container; containers stopped with the daemon; a named volume and an
//! API-declared container across a reboot; a bad declaration skipped with its reason.

use std::time::{Duration, Instant};

use crate::common::{boot_disk, boot_disk_again, power_off};
use berth_tests::testd::TestdClient;

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
            let (_, log) = sh(testd, "berthctl service logs -n 40 berth-daemon");
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
allow_metadata = true
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
berthctl service restart berth-daemon"#,
    );
    assert_eq!(code, 0, "{out}");

    // The container verbs from the host, through the VM's control port (this VM has no
    // network device at all): init bridges the session to the daemon.
    wait_for(&mut testd, "web running", |s| {
        s["web"]["state"] == "running"
    });
    let ps = vm.berthctl(&["ps"]).expect("berthctl --vm ps");
    assert!(
        ps.lines()
            .any(|l| l.contains("web") && l.contains("running")),
        "{ps}"
    );
    let logs = vm.berthctl(&["logs", "web"]).expect("berthctl --vm logs");
    assert!(logs.contains("started"), "{logs}");
    let config = vm.berthctl(&["config"]).expect("berthctl --vm config");
    assert!(!config.is_empty());
    let refused = vm.berthctl_output(&["exec", "web", "true"]).unwrap();
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("over SSH"),
        "{refused:?}"
    );
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
    assert_eq!(s["once"]["exit_code"], 3, "{s}");
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
    let (_, dlog) = sh(&mut testd, "berthctl service logs -n 50 berth-daemon");
    assert!(
        dlog.contains("bad.toml") && dlog.contains("colour"),
        "{dlog}"
    );

    readoption(&mut testd, new_pid);
    api_verbs(&mut testd);

    // Stopping the daemon stops its containers.
    let (code, out) = sh(&mut testd, "berthctl service stop berth-daemon");
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

    // Started again: its containers come back (not an operator's stop).
    let (code, out) = sh(&mut testd, "berthctl service start berth-daemon");
    assert_eq!(code, 0, "{out}");
    wait_for(&mut testd, "web back", |s| s["web"]["state"] == "running");

    // A removed declaration: the container is stopped and removed.
    let (_, rootfs) = sh(&mut testd, "ls -d /var/lib/berth/store/containers/web");
    assert!(rootfs.contains("/web"), "{rootfs}");
    sh(&mut testd, "rm /etc/berth/containers.d/web.toml");
    wait_for(&mut testd, "web removed", |s| s.get("web").is_none());
    let (_, rootfs) = sh(
        &mut testd,
        "ls /var/lib/berth/store/containers/ ; berth-runtime --root /run/berth/runtime list -q",
    );
    assert!(!rootfs.contains("web"), "{rootfs}");

    // A reboot: the named volume keeps its file; the API-declared container returns.
    sh(&mut testd, "sync");
    drop(testd);
    power_off(vm);
    let vm = boot_disk_again("daemon-reboot", t.path());
    let mut testd = vm.testd().expect("testd");
    let (_, runs) = sh(&mut testd, "cat /var/lib/berth/volumes/data/runs");
    assert_eq!(runs.lines().count(), 3, "{runs}");
    wait_for(&mut testd, "api back after the reboot", |s| {
        s["api"]["state"] == "running"
    });
}

/// The daemon SIGKILLed: its container keeps running and its output keeps coming (in
/// order, nothing lost); the next daemon adopts it, and recovers from init the exit of
/// a container that died while no daemon was there.
fn readoption(testd: &mut TestdClient, web_pid: i64) {
    let kill_daemon = |testd: &mut TestdClient| format!("kill -9 {}", daemon_pid(testd));
    let script = kill_daemon(testd);
    let (code, out) = sh(testd, &script);
    assert_eq!(code, 0, "{out}");
    // Back (init restarts it), and it has taken the container over.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, log) = sh(testd, "berthctl service logs -n 200 berth-daemon");
        if log.contains(&format!("web: re-adopted (pid {web_pid})")) {
            break;
        }
        assert!(Instant::now() < deadline, "web not re-adopted:\n{log}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let (_, alive) = sh(testd, &format!("kill -0 {web_pid} && echo alive"));
    assert_eq!(alive.trim(), "alive", "the container died with the daemon");
    // Its ticks since its last start: consecutive across the daemon's absence.
    std::thread::sleep(Duration::from_secs(3));
    let (_, log) = sh(testd, "cat /var/log/berth/containers/web.log");
    let last_run = log.rsplit("\"started\\n\"").next().unwrap_or_default();
    let ticks: Vec<u64> = last_run
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|r| {
            r["log"]
                .as_str()?
                .strip_prefix("tick ")?
                .trim()
                .parse()
                .ok()
        })
        .collect();
    assert!(ticks.len() >= 5, "{log}");
    assert!(
        ticks.windows(2).all(|w| w[1] == w[0] + 1),
        "lines lost or reordered: {ticks:?}"
    );
    // The adopted container can be stopped and started by the new daemon.
    let (code, out) = sh(testd, "berthctl stop web && berthctl ps -a");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("stopped"), "{out}");
    let (_, alive) = sh(
        testd,
        &format!("kill -0 {web_pid} 2>/dev/null && echo alive || echo gone"),
    );
    assert_eq!(alive.trim(), "gone");
    let (code, out) = sh(testd, "berthctl start web");
    assert_eq!(code, 0, "{out}");
    let s = wait_for(testd, "web started again", |s| {
        s["web"]["state"] == "running"
    });
    let pid = s["web"]["pid"].as_i64().unwrap();
    let restarts = s["web"]["restarts"].as_i64().unwrap();

    // The container dies while no daemon runs: init reaps it and keeps its status.
    let script = format!("{}; kill -9 {pid}", kill_daemon(testd));
    let (code, out) = sh(testd, &script);
    assert_eq!(code, 0, "{out}");
    let s = wait_for(testd, "web restarted after dying unseen", |s| {
        s["web"]["state"] == "running" && s["web"]["restarts"].as_i64() == Some(restarts + 1)
    });
    assert_eq!(s["web"]["exit_code"], 137, "{s}");
}

fn daemon_pid(testd: &mut TestdClient) -> i64 {
    let (_, out) = sh(testd, "berthctl --json services");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "berth-daemon")
        .and_then(|s| s["pid"].as_i64())
        .filter(|p| *p > 0)
        .unwrap_or_else(|| panic!("berth-daemon is not running: {out}"))
}

/// berthctl's docker-shaped verbs against the daemon's API.
fn api_verbs(testd: &mut TestdClient) {
    let (code, out) = sh(
        testd,
        "berthctl run -d --name api --restart always --network host --allow-metadata -e GREETING=hi \
         berth.local/busybox:latest sh -c 'echo $GREETING from api; echo oops >&2; exec sleep 1000'",
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.trim(), "api");
    let (_, decl) = sh(testd, "cat /var/lib/berth/containers.d/api.toml");
    assert!(decl.contains("GREETING"), "{decl}");
    let (code, out) = sh(
        testd,
        "sleep 1; berthctl ps; berthctl logs api; berthctl logs -t --tail 1 api",
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("api") && out.contains("running"), "{out}");
    assert!(out.contains("hi from api") && out.contains("oops"), "{out}");
    let (_, json) = sh(testd, "berthctl --json ps");
    let list: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "api" && c["pid"].as_u64() > Some(0)),
        "{json}"
    );
    let (code, out) = sh(
        testd,
        "berthctl exec -e X=y api sh -c 'cat /etc/hostname; echo $X; exit 4'",
    );
    assert_eq!(code, 4, "{out}");
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["api", "y"]);
    // A terminal: the pty made in the container, handed over the console socket.
    let (code, out) = sh(
        testd,
        "berthctl exec -t api sh -c 'tty; echo cols=$(stty size)'",
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("/dev/pts/"), "{out}");
    let (_, inspect) = sh(testd, "berthctl inspect api");
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(
        v[0]["Declaration"]["image"], "berth.local/busybox:latest",
        "{inspect}"
    );
    let (_, stats) = sh(testd, "berthctl --json stats");
    let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let api = v
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "api")
        .cloned()
        .unwrap();
    assert!(
        api["memory_bytes"].as_u64() > Some(0) && api["pids"].as_u64() >= Some(1),
        "{stats}"
    );
    let (_, images) = sh(testd, "berthctl images");
    assert!(images.contains("berth.local/busybox:latest"), "{images}");
    // Refusals that say why.
    let (code, out) = sh(
        testd,
        "berthctl run -d --name api berth.local/busybox:latest true",
    );
    // Named D-Bus errors, each with its exit code (4 already exists, 5 invalid, 6 busy,
    // 3 not found): a script tells them apart without reading the text.
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("already exists"), "{out}");
    let (code, out) = sh(
        testd,
        "berthctl run -d --name bad --restart sometimes berth.local/busybox:latest true",
    );
    assert_eq!(code, 5, "{out}");
    assert!(out.contains("restart"), "{out}");
    let (code, out) = sh(testd, "berthctl rm web");
    assert_eq!(code, 6, "{out}");
    assert!(out.contains("/etc/berth/containers.d/web.toml"), "{out}");
    let (code, out) = sh(testd, "berthctl rmi berth.local/busybox:latest");
    assert_eq!(code, 6, "{out}");
    let (code, out) = sh(testd, "berthctl inspect nosuch");
    assert_eq!(code, 3, "{out}");
    let (code, out) = sh(testd, "berthctl rmi example.org/nosuch:1");
    assert_eq!(code, 3, "{out}");
    // A foreground run: its output, then its exit code.
    let (code, out) = sh(
        testd,
        "berthctl run --name fg --network none berth.local/busybox:latest sh -c 'echo fg says hi; exit 5'",
    );
    assert_eq!(code, 5, "{out}");
    assert!(out.contains("fg says hi"), "{out}");
    let (code, out) = sh(testd, "berthctl rm fg && berthctl ps -a");
    assert_eq!(code, 0, "{out}");
    assert!(!out.lines().any(|l| l.starts_with("fg ")), "{out}");
    // api stays for the reboot.
}
