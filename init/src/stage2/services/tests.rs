//! The service state machine with real processes (no cgroups: the build machine's
//! cgroup2 has no controllers; the QEMU tests cover cgroups).

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::wait::waitpid;

use super::*;

fn def(name: &str, extra: &str) -> ServiceDef {
    let text = format!("name = \"{name}\"\n{extra}");
    berth_services::parse(Path::new(&format!("{name}.toml")), &text).unwrap()
}

fn manager(defs: Vec<ServiceDef>, dir: &Path) -> Manager {
    Manager::with_dirs(defs, &[], None, &dir.join("notify"), &dir.join("log"))
}

fn state(m: &Manager, name: &str) -> State {
    m.state_of(name).unwrap().state
}

fn pid(m: &Manager, name: &str) -> Pid {
    m.state_of(name).unwrap().pid.unwrap()
}

/// Waits for the service's main process to exit and tells the manager.
fn reap(m: &mut Manager, name: &str) {
    let p = pid(m, name);
    let status = waitpid(p, None).unwrap();
    assert!(m.on_exit(p, status, Instant::now()));
}

fn notify(m: &Manager, name: &str, text: &str) {
    let path = m
        .state_of(name)
        .unwrap()
        .notify
        .as_ref()
        .unwrap()
        .path
        .clone();
    UnixDatagram::unbound()
        .unwrap()
        .send_to(text.as_bytes(), path)
        .unwrap();
}

fn read_log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("log/{name}.log"))).unwrap_or_default()
}

#[test]
fn starts_in_dependency_order_after_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = manager(
        vec![
            def(
                "a",
                "exec = \"/bin/sleep\"\nargs = [\"30\"]\nready = \"notify\"\n",
            ),
            def(
                "b",
                "exec = \"/bin/sleep\"\nargs = [\"30\"]\nrequires = [\"a\"]\n",
            ),
        ],
        dir.path(),
    );
    m.tick(Instant::now());
    assert_eq!(state(&m, "a"), State::Starting);
    assert_eq!(state(&m, "b"), State::Waiting);
    assert!(!m.all_settled());
    notify(&m, "a", "READY=1\nSTATUS=serving");
    m.on_readable(Source::Notify(0));
    assert_eq!(state(&m, "a"), State::Ready);
    m.tick(Instant::now());
    assert_eq!(state(&m, "b"), State::Ready);
    assert!(m.all_settled());
    let st = m.statuses();
    assert_eq!(st[0].status, "serving");
    assert!(st[1].pid > 0);
    // Final stop: b (the dependent) goes first.
    m.begin_shutdown();
    assert!(!m.shutdown_step(Instant::now()));
    assert_eq!(state(&m, "b"), State::Stopping);
    assert_eq!(state(&m, "a"), State::Ready);
    reap(&mut m, "b");
    assert!(!m.shutdown_step(Instant::now()));
    assert_eq!(state(&m, "a"), State::Stopping);
    reap(&mut m, "a");
    assert!(m.shutdown_step(Instant::now()));
}

#[test]
fn restarts_with_growing_capped_backoff_and_logs_output() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = manager(
        vec![def(
            "c",
            "exec = \"/bin/sh\"\nargs = [\"-c\", \"echo out; echo boom >&2; exit 3\"]\nrestart = \"always\"\nrestart_delay_ms = 20\nrestart_delay_max_ms = 40\n",
        )],
        dir.path(),
    );
    let mut delays = Vec::new();
    m.tick(Instant::now());
    for _ in 0..4 {
        reap(&mut m, "c");
        assert_eq!(state(&m, "c"), State::Backoff);
        let now = Instant::now();
        let due = m.state_of("c").unwrap().deadline.unwrap();
        delays.push((due - now).as_millis().div_ceil(10) * 10);
        m.tick(due);
        assert_eq!(state(&m, "c"), State::Ready);
    }
    assert_eq!(delays, [20, 40, 40, 40]);
    assert_eq!(m.statuses()[0].restarts, 4);
    assert!(m.statuses()[0].last_exit.contains("status 3"));
    let log = read_log(dir.path(), "c");
    assert!(log.contains("Z stdout out\n"), "{log}");
    assert!(log.contains("Z stderr boom\n"), "{log}");
    m.request_stop("c", Instant::now()).unwrap();
    reap(&mut m, "c");
    assert_eq!(state(&m, "c"), State::Inactive);
}

#[test]
fn stop_escalates_to_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = manager(
        vec![def(
            "d",
            "exec = \"/bin/sh\"\nargs = [\"-c\", \"trap '' TERM; while :; do sleep 0.05; done\"]\nstop_timeout_ms = 100\n",
        )],
        dir.path(),
    );
    m.tick(Instant::now());
    // Let the shell set its trap first.
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    m.request_stop("d", start).unwrap();
    assert_eq!(state(&m, "d"), State::Stopping);
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(
        nix::sys::wait::waitpid(pid(&m, "d"), Some(nix::sys::wait::WaitPidFlag::WNOHANG)).unwrap(),
        WaitStatus::StillAlive,
        "SIGTERM is ignored"
    );
    m.tick(start + Duration::from_millis(150));
    reap(&mut m, "d");
    assert_eq!(state(&m, "d"), State::Inactive);
    assert!(m.statuses()[0].last_exit.contains("SIGKILL"));
}

#[test]
fn stored_fds_come_back_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let script = "echo \"fds=$LISTEN_FDS names=$LISTEN_FDNAMES\"; if [ -n \"$LISTEN_FDS\" ]; then cat <&3; fi";
    let mut m = manager(
        vec![def(
            "e",
            &format!("exec = \"/bin/sh\"\nargs = [\"-c\", '{script}']\nrestart = \"always\"\nrestart_delay_ms = 1\n"),
        )],
        dir.path(),
    );
    m.tick(Instant::now());
    let (r, w) = nix::unistd::pipe().unwrap();
    let path = m
        .state_of("e")
        .unwrap()
        .notify
        .as_ref()
        .unwrap()
        .path
        .clone();
    let client = UnixDatagram::unbound().unwrap();
    client.connect(path).unwrap();
    let fds = [std::os::fd::AsRawFd::as_raw_fd(&r)];
    nix::sys::socket::sendmsg::<()>(
        std::os::fd::AsRawFd::as_raw_fd(&client),
        &[std::io::IoSlice::new(b"FDSTORE=1\nFDNAME=keep")],
        &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .unwrap();
    drop(r);
    m.on_readable(Source::Notify(0));
    assert_eq!(m.statuses()[0].stored_fds, 1);
    nix::unistd::write(&w, b"kept across restarts\n").unwrap();
    drop(w);
    reap(&mut m, "e");
    m.tick(Instant::now() + Duration::from_millis(5));
    reap(&mut m, "e");
    let log = read_log(dir.path(), "e");
    assert!(log.contains("stdout fds= names=\n"), "{log}");
    assert!(log.contains("stdout fds=1 names=keep\n"), "{log}");
    assert!(log.contains("stdout kept across restarts\n"), "{log}");
    m.request_stop("e", Instant::now()).unwrap();
}

#[test]
fn a_crash_loop_holds_neither_the_others_nor_the_ready_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = manager(
        vec![
            def(
                "bad",
                "exec = \"/bin/false\"\nrestart = \"always\"\nready = \"notify\"\n",
            ),
            def(
                "good",
                "exec = \"/bin/sleep\"\nargs = [\"30\"]\nafter = [\"bad\"]\n",
            ),
            def(
                "needs-bad",
                "exec = \"/bin/sleep\"\nargs = [\"30\"]\nrequires = [\"bad\"]\n",
            ),
        ],
        dir.path(),
    );
    m.tick(Instant::now());
    assert_eq!(state(&m, "good"), State::Waiting);
    reap(&mut m, "bad");
    m.tick(Instant::now());
    assert_eq!(state(&m, "good"), State::Ready);
    assert_eq!(state(&m, "needs-bad"), State::Waiting);
    assert!(m.all_settled());
    assert!(
        m.summary().contains("1/3 ready; not ready: bad needs-bad"),
        "{}",
        m.summary()
    );
    m.request_stop("good", Instant::now()).unwrap();
    reap(&mut m, "good");
    m.request_stop("bad", Instant::now()).unwrap();
}

#[test]
fn keeps_exit_statuses_of_delegated_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = manager(
        vec![
            def(
                "rt",
                "exec = \"/bin/true\"\ndelegate = true\nautostart = false\n",
            ),
            def("plain", "exec = \"/bin/true\"\nautostart = false\n"),
        ],
        dir.path(),
    );
    let exited = WaitStatus::Exited(Pid::from_raw(42), 7);
    m.on_orphan_exit(Pid::from_raw(42), exited, "0::/berth/rt/containers/web\n");
    m.on_orphan_exit(Pid::from_raw(43), exited, "0::/berth/rt/main\n");
    m.on_orphan_exit(Pid::from_raw(44), exited, "0::/berth/plain\n");
    let killed = WaitStatus::Signaled(Pid::from_raw(45), Signal::SIGKILL, false);
    m.on_orphan_exit(Pid::from_raw(45), killed, "0::/berth/rt/containers/db\n");
    assert_eq!(m.statuses()[0].pending_exits, 2);
    let taken = m.take_exits("rt");
    assert_eq!(taken.len(), 2);
    assert_eq!((taken[0].pid, taken[0].code, taken[0].signal), (42, 7, 0));
    assert_eq!((taken[1].pid, taken[1].signal), (45, 9));
    assert!(m.take_exits("rt").is_empty());
    assert!(m.take_exits("plain").is_empty());
}

#[test]
fn requests_name_unknown_services() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = manager(
        vec![def("x", "exec = \"/bin/true\"\nautostart = false\n")],
        dir.path(),
    );
    assert!(m
        .request_start("nope", Instant::now())
        .unwrap_err()
        .contains("nope"));
    assert_eq!(state(&m, "x"), State::Inactive);
    m.begin_shutdown();
    assert!(m
        .request_start("x", Instant::now())
        .unwrap_err()
        .contains("shutting down"));
}

#[test]
fn a_one_at_a_time_start_is_refused_while_it_runs_and_prepares_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = manager(
        vec![def(
            "once",
            "exec = \"/bin/sleep\"\nargs = [\"30\"]\nautostart = false\nrestart = \"never\"\n",
        )],
        dir.path(),
    );
    let mut prepared = 0;
    m.request_start_idle("once", Instant::now(), || {
        prepared += 1;
        Ok(())
    })
    .unwrap();
    assert!(matches!(state(&m, "once"), State::Starting | State::Ready));
    let e = m
        .request_start_idle("once", Instant::now(), || {
            prepared += 1;
            Ok(())
        })
        .unwrap_err();
    assert!(e.contains("already running"), "{e}");
    assert_eq!(prepared, 1);
    // A failed preparation starts nothing.
    nix::sys::signal::kill(pid(&m, "once"), nix::sys::signal::Signal::SIGKILL).unwrap();
    reap(&mut m, "once");
    let e = m
        .request_start_idle("once", Instant::now(), || Err("no room".into()))
        .unwrap_err();
    assert_eq!(e, "no room");
    assert!(matches!(state(&m, "once"), State::Inactive | State::Failed));
}

#[test]
fn a_service_that_exits_0_by_itself_is_done_and_not_counted_as_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = manager(
        vec![
            def("once", "exec = \"/bin/true\"\n"),
            def("up", "exec = \"/bin/sleep\"\nargs = [\"30\"]\n"),
        ],
        dir.path(),
    );
    m.tick(Instant::now());
    reap(&mut m, "once");
    let statuses = m.statuses();
    let once = statuses.iter().find(|s| s.name == "once").unwrap();
    assert_eq!(once.state, "done");
    assert!(m.all_settled());
    assert_eq!(m.summary(), "1/1 ready");
    // Started again, it is not done until it exits again.
    m.request_start("once", Instant::now()).unwrap();
    assert!(m
        .statuses()
        .iter()
        .any(|s| s.name == "once" && s.state != "done"));
    reap(&mut m, "once");
    nix::sys::signal::kill(pid(&m, "up"), nix::sys::signal::Signal::SIGKILL).unwrap();
    reap(&mut m, "up");
}

#[test]
fn services_start_with_no_signal_blocked() {
    use nix::sys::signal::{SigSet, SigmaskHow};
    let dir = tempfile::tempdir().unwrap();
    let mut m = manager(
        vec![def("f", "exec = \"/bin/sleep\"\nargs = [\"30\"]\n")],
        dir.path(),
    );
    // As in PID 1, which blocks every signal and reads them from a signalfd.
    let mut old = SigSet::empty();
    SigSet::all()
        .thread_swap_mask(SigmaskHow::SIG_SETMASK)
        .map(|o| old = o)
        .unwrap();
    m.tick(Instant::now());
    old.thread_set_mask().unwrap();
    m.request_stop("f", Instant::now()).unwrap();
    reap(&mut m, "f");
    assert_eq!(m.statuses()[0].last_exit, "killed by SIGTERM");
}

#[test]
fn socket_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("svc.sock");
    let mut m = manager(
        vec![def(
            "g",
            &format!(
                "exec = \"/bin/sleep\"\nargs = [\"30\"]\nready = \"socket:{}\"\n",
                sock.display()
            ),
        )],
        dir.path(),
    );
    let next = m.tick(Instant::now()).unwrap();
    assert_eq!(state(&m, "g"), State::Starting);
    assert!(
        next <= Instant::now() + SOCKET_POLL,
        "socket readiness is polled"
    );
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    m.tick(Instant::now());
    assert_eq!(state(&m, "g"), State::Ready);
    m.request_stop("g", Instant::now()).unwrap();
    reap(&mut m, "g");
}
