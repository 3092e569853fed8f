//! The guest side run on the host: /bin/sh and coreutils behave the same for these.

use super::*;

fn req(argv: &[&str]) -> Request {
    Request {
        id: 1,
        argv: argv.iter().map(|s| s.to_string()).collect(),
        stdin: None,
        timeout_ms: None,
    }
}

#[test]
fn output_exit_code_and_stdin() {
    let r = execute(&req(&["/bin/sh", "-c", "echo out; echo err >&2; exit 3"]));
    assert_eq!((r.stdout.as_str(), r.stderr.as_str()), ("out\n", "err\n"));
    assert_eq!((r.exit_code, r.signal, r.error), (Some(3), None, None));

    let mut cat = req(&["cat"]);
    cat.stdin = Some("line one\nline two\n".into());
    cat.id = 9;
    let r = execute(&cat);
    assert_eq!(r.id, 9);
    assert_eq!(r.stdout, "line one\nline two\n");
    assert_eq!(r.exit_code, Some(0));
}

#[test]
fn a_signal_is_reported_as_such() {
    let r = execute(&req(&["/bin/sh", "-c", "kill -TERM $$"]));
    assert_eq!((r.exit_code, r.signal), (None, Some(15)));
}

#[test]
fn spawn_failures_and_bad_lines_are_answered() {
    let r = execute(&req(&["/nonexistent/prog"]));
    assert!(r.error.unwrap().contains("spawning /nonexistent/prog"));
    assert!(execute(&req(&[])).error.unwrap().contains("empty argv"));

    let r = answer(br#"{"id":4,"argv":"#);
    assert_eq!(r.id, 0);
    assert!(r.error.unwrap().contains("bad request"));
    let r = answer(br#"{"id":4,"stdin":"x"}"#);
    assert_eq!(r.id, 4, "the id is kept when the line is JSON");
    assert!(r.error.unwrap().contains("argv"));
}

#[test]
fn timeout_kills_the_command_and_what_it_started() {
    let mut r = req(&["/bin/sh", "-c", "sleep 30 & echo $!; wait"]);
    r.timeout_ms = Some(300);
    let started = Instant::now();
    let resp = execute(&r);
    assert!(started.elapsed() < Duration::from_secs(5), "{resp:?}");
    assert!(
        resp.error.as_deref().unwrap().contains("timed out"),
        "{resp:?}"
    );
    assert_eq!(resp.signal, Some(9));
    let grandchild: u32 = resp.stdout.trim().parse().expect("pid of the sleep");
    assert!(
        gone_within(grandchild, Duration::from_secs(5)),
        "sleep {grandchild} survived the timeout"
    );
}

#[test]
fn a_background_process_holding_the_pipes_does_not_hang_the_answer() {
    let started = Instant::now();
    let r = execute(&req(&["/bin/sh", "-c", "sleep 5 & echo started"]));
    assert!(started.elapsed() < Duration::from_secs(3), "{r:?}");
    assert_eq!((r.stdout.as_str(), r.exit_code), ("started\n", Some(0)));
}

/// Gone or a zombie waiting for the host's init.
fn gone_within(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(stat)
                if stat
                    .rsplit(')')
                    .next()
                    .is_some_and(|s| s.trim_start().starts_with('Z')) =>
            {
                return true
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    false
}
