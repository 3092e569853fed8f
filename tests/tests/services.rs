//! init as a service supervisor, in QEMU: fault tests with the test image's
//! misbehaving services (`berth-testsvc`, started with `berth.start=`), driven through
//! the control API from the host (`berthctl --vm`) and testd.

use std::time::{Duration, Instant};

use crate::common::{boot, config, BOOT_TIMEOUT, SHUTDOWN_TIMEOUT};
use berth_tests::vm::Vm;
use serde_json::Value;

/// One service's row from `berthctl services --json`.
fn service(vm: &Vm, name: &str) -> Value {
    let out = vm
        .berthctl(&["services", "--json"])
        .expect("berthctl services");
    let list: Vec<Value> = serde_json::from_str(&out).expect("JSON from berthctl");
    list.into_iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no service {name} in {out}"))
}

fn wait_for(
    vm: &Vm,
    name: &str,
    what: &str,
    timeout: Duration,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let s = service(vm, name);
        if ok(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: {what} not reached in {timeout:?}: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn log_of(vm: &Vm, name: &str) -> String {
    vm.berthctl(&["service", "logs", name, "-n", "1000"])
        .expect("berthctl logs")
}

#[test]
fn supervises_restarts_fd_store_exit_forwarding_and_crash_loops() {
    let mut cfg = config("services");
    cfg.append =
        "berth.start=test-notify,test-crash,test-after-crash,test-delegate,test-ignore-term".into();
    let mut vm = boot(cfg);
    let console = vm.console();
    let ready = console
        .lines()
        .find(|l| l.starts_with("berth: ready"))
        .expect("ready line")
        .to_string();
    // The crash loop neither held the ready line nor the service ordered after it.
    assert!(ready.contains("not ready: test-crash"), "{ready}");
    assert!(ready.contains("boot ") && ready.contains(" ms"), "{ready}");
    let after = service(&vm, "test-after-crash");
    assert_eq!(after["state"], "ready", "{after}");

    // The crash loop: retried with growing delays, shown as failing, its last lines on
    // the console.
    let crash = wait_for(&vm, "test-crash", "4 restarts", BOOT_TIMEOUT, |s| {
        s["restarts"].as_u64() >= Some(4)
    });
    assert!(
        crash["last_exit"].as_str().unwrap().contains("status 1"),
        "{crash}"
    );
    assert!(
        matches!(crash["state"].as_str(), Some("restarting" | "starting")),
        "{crash}"
    );
    let console = vm.console();
    let delays: Vec<u64> = console
        .lines()
        .filter_map(|l| l.split("service test-crash restarts in ").nth(1))
        .filter_map(|rest| rest.split(' ').next()?.parse().ok())
        .collect();
    assert!(delays.len() >= 4, "{delays:?}");
    assert_eq!(&delays[..4], &[200, 400, 800, 1600], "{console}");
    assert!(
        console.contains("test-crash: berth-testsvc: failing on purpose"),
        "{console}"
    );
    assert!(log_of(&vm, "test-crash").contains(" stderr berth-testsvc: failing on purpose"));

    // SIGKILL the notify service 20 times: back each time, init answering throughout,
    // and the fd it stored on its first start handed back every time.
    let mut testd = vm.testd().expect("testd");
    let first = wait_for(&vm, "test-notify", "ready", BOOT_TIMEOUT, |s| {
        s["state"] == "ready"
    });
    let mut restarts = first["restarts"].as_u64().unwrap();
    let mut pid = first["pid"].as_u64().unwrap();
    for round in 0..20 {
        let out = testd.run(&["kill", "-9", &pid.to_string()]).unwrap();
        assert_eq!(out.exit_code, Some(0), "round {round}: {out:?}");
        let s = wait_for(
            &vm,
            "test-notify",
            "restart",
            Duration::from_secs(30),
            |s| s["state"] == "ready" && s["restarts"].as_u64() > Some(restarts),
        );
        assert_ne!(s["pid"].as_u64().unwrap(), pid);
        pid = s["pid"].as_u64().unwrap();
        restarts = s["restarts"].as_u64().unwrap();
    }
    assert!(restarts >= 20);
    let log = log_of(&vm, "test-notify");
    let stored = log
        .lines()
        .filter(|l| l.ends_with("stdout stored state"))
        .count();
    let restored = log
        .lines()
        .filter(|l| l.contains("stdout restored state: stored by pid"))
        .count();
    assert_eq!(stored, 1, "{log}");
    assert!(restored >= 20, "{log}");

    // The delegated service: its payload outlives a SIGKILL of the service, and the
    // payload's exit status (7) reaches the restarted service through init.
    let del = wait_for(&vm, "test-delegate", "ready", BOOT_TIMEOUT, |s| {
        s["state"] == "ready"
    });
    let limits = testd
        .sh("cat /sys/fs/cgroup/berth/test-delegate/memory.max /sys/fs/cgroup/berth/test-delegate/pids.max; cat /sys/fs/cgroup/berth/test-delegate/payload/cgroup.procs")
        .unwrap();
    let mut lines = limits.stdout.lines();
    assert_eq!(lines.next(), Some("268435456"), "{limits:?}");
    assert_eq!(lines.next(), Some("64"), "{limits:?}");
    let payload: u32 = lines
        .next()
        .and_then(|l| l.parse().ok())
        .expect("a payload process");
    testd.run(&["kill", "-9", &del["pid"].to_string()]).unwrap();
    wait_for(
        &vm,
        "test-delegate",
        "restart",
        Duration::from_secs(30),
        |s| s["state"] == "ready" && s["restarts"].as_u64() >= Some(1),
    );
    let alive = testd
        .run(&["test", "-d", &format!("/proc/{payload}")])
        .unwrap();
    assert_eq!(
        alive.exit_code,
        Some(0),
        "the payload survived its service's restart"
    );
    testd.run(&["touch", "/run/test-payload-exit"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let want = format!("exit status: pid {payload} code 7 signal 0");
    while !log_of(&vm, "test-delegate").contains(&want) {
        assert!(
            Instant::now() < deadline,
            "{}",
            log_of(&vm, "test-delegate")
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // An orphan re-parented to init is reaped (a zombie would keep its /proc entry).
    let orphan = testd.sh("sh -c 'sleep 0.3 & echo $!'").unwrap();
    let orphan = orphan.stdout.trim().to_string();
    assert!(orphan.parse::<u32>().is_ok(), "{orphan}");
    let gone = testd
        .sh(&format!("for i in $(seq 50); do [ -e /proc/{orphan} ] || exit 0; sleep 0.1; done; cat /proc/{orphan}/status; exit 1"))
        .unwrap();
    assert_eq!(
        gone.exit_code,
        Some(0),
        "orphan {orphan} not reaped: {}",
        gone.stdout
    );

    // The boot timeline, in order and from the kernel's start.
    let timeline: Vec<Value> =
        serde_json::from_str(&vm.berthctl(&["boot-time", "--json"]).unwrap()).unwrap();
    let names: Vec<&str> = timeline.iter().filter_map(|p| p["name"].as_str()).collect();
    // (A direct-kernel boot of the initramfs: no root switch, so no stage-2 phases.)
    assert_eq!(
        names,
        ["kernel", "initramfs", "storage", "services"],
        "{timeline:?}"
    );
    let ends: Vec<u64> = timeline
        .iter()
        .filter_map(|p| p["end_ms"].as_u64())
        .collect();
    assert!(
        ends.windows(2).all(|w| w[0] <= w[1]) && ends[0] > 0,
        "{ends:?}"
    );
    let table = vm.berthctl(&["boot-time"]).unwrap();
    assert!(
        table.starts_with("PHASE") && table.contains("total"),
        "{table}"
    );

    // berthctl inside the guest, on init's socket.
    let inside = testd.run(&["berthctl", "services"]).unwrap();
    assert_eq!(inside.exit_code, Some(0), "{inside:?}");
    assert!(inside.stdout.starts_with("NAME"), "{}", inside.stdout);
    assert!(
        inside
            .stdout
            .lines()
            .any(|l| l.starts_with("berth-testd") && l.contains("ready")),
        "{}",
        inside.stdout
    );

    // A restart on request waits until the service is ready again.
    let before = service(&vm, "test-notify")["restarts"].as_u64().unwrap();
    let out = vm.berthctl(&["service", "restart", "test-notify"]).unwrap();
    assert!(
        out.contains("test-notify") && out.contains("ready"),
        "{out}"
    );
    assert!(service(&vm, "test-notify")["restarts"].as_u64().unwrap() > before);
    // A bad name is an error that names it.
    let bad = vm
        .berthctl_output(&["service", "restart", "no-such"])
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no-such"));

    // Last, on the same machine: the power-off with a service that ignores SIGTERM.
    a_service_that_ignores_sigterm_is_killed_and_shutdown_completes(&mut vm);
}

fn a_service_that_ignores_sigterm_is_killed_and_shutdown_completes(vm: &mut Vm) {
    let s = wait_for(vm, "test-ignore-term", "ready", BOOT_TIMEOUT, |s| {
        s["state"] == "ready"
    });
    assert!(s["pid"].as_u64() > Some(0));
    // The service's output is in its log, not on the console.
    assert!(log_of(vm, "test-ignore-term").contains("stdout ignoring SIGTERM"));
    vm.berthctl(&["poweroff"]).expect("berthctl poweroff");
    let exit = vm.wait_exit(SHUTDOWN_TIMEOUT).expect("the VM powers off");
    assert!(exit.status.success(), "{exit:?}");
    let console = vm.console();
    assert!(
        console.contains("service test-ignore-term did not stop within 2000 ms; killing it"),
        "{console}"
    );
    assert!(
        console.contains("service test-ignore-term (pid"),
        "{console}"
    );
    assert!(console.contains("shutdown: services stopped"), "{console}");
    assert!(console.contains("shutdown: powering off"), "{console}");
}

#[test]
fn a_shutdown_during_startup_completes() {
    let mut cfg = config("services-early-stop");
    cfg.append = "berth.start=test-slow".into();
    cfg.no_reboot = true;
    let mut vm = berth_tests::vm::Vm::boot(cfg).expect("starting QEMU");
    // test-slow never becomes ready, so the machine is still starting up.
    vm.wait_for_line("service test-slow started", BOOT_TIMEOUT)
        .expect("test-slow starts");
    assert!(!vm.console().contains("berth: ready"));
    vm.send_ctrl_alt_del().expect("ctrl-alt-del");
    vm.wait_for_line("shutdown: services stopped", SHUTDOWN_TIMEOUT)
        .expect("services stop");
    vm.wait_for_line("shutdown: rebooting", SHUTDOWN_TIMEOUT)
        .expect("the shutdown completes");
    let exit = vm.wait_exit(SHUTDOWN_TIMEOUT).expect("QEMU exits");
    assert_eq!(exit.shutdown_reasons, ["guest-reset"], "{exit:?}");
    let console = vm.console();
    assert!(
        console.contains("service test-slow: stopping (SIGTERM)"),
        "{console}"
    );
    assert!(!console.contains("berth: ready"), "{console}");
    // ctrl-alt-del reaches init as SIGINT and means a reboot (the guest reset above).
    assert!(
        console.contains("shutdown: reboot: stopping services"),
        "{console}"
    );
}
