//! Log forwarding to Debian's rsyslog on this machine (`imtcp`, plain and over TLS with
//! a test CA), reached by the guest through guestfwd at 10.0.2.100. A container prints
//! numbered lines (its count kept in a volume, so it carries on after a reboot). rsyslog
//! is killed for 12 s in the middle of the stream and started again; later the guest is
//! powered off and booted again in the middle of the stream. Every number must reach
//! both receivers, none lost; duplicates are counted. The messages are RFC 5424 with
//! the host name, the container's name as app-name and its image in the structured
//! data; the kernel's and init's lines are forwarded too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{assert_running, boot, disk_config, new_disk, pki, power_off};
use berth_tests::http::free_port;

/// The numbers the container prints (20 ms apart or more: the stream lasts 40 s of guest
/// time or more, long enough to span the outage, a late reconnect after it, and still be
/// running at the reboot).
const LAST: u32 = 2000;

/// rsyslog with two imtcp inputs (plain and TLS), each written to its own file as
/// `HOST APP MSGID SD MSG`.
struct Rsyslog {
    dir: PathBuf,
    plain: u16,
    tls: u16,
    child: Option<Child>,
}

impl Rsyslog {
    fn new(dir: &Path) -> Rsyslog {
        let r = Rsyslog {
            dir: dir.to_path_buf(),
            plain: free_port(),
            tls: free_port(),
            child: None,
        };
        let d = dir.display();
        std::fs::create_dir_all(dir.join("work")).unwrap();
        std::fs::write(
            dir.join("rsyslog.conf"),
            format!(
                "global(workDirectory=\"{d}/work\" \
                 DefaultNetstreamDriverCAFile=\"{d}/ca.pem\" \
                 DefaultNetstreamDriverCertFile=\"{d}/server.pem\" \
                 DefaultNetstreamDriverKeyFile=\"{d}/server.key\")\n\
                 module(load=\"imtcp\" MaxSessions=\"50\")\n\
                 template(name=\"line\" type=\"string\" \
                 string=\"%hostname% %app-name% %msgid% %structured-data% %msg%\\n\")\n\
                 ruleset(name=\"plain\") {{ action(type=\"omfile\" file=\"{d}/plain.log\" template=\"line\") }}\n\
                 ruleset(name=\"tls\") {{ action(type=\"omfile\" file=\"{d}/tls.log\" template=\"line\") }}\n\
                 input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{}\" ruleset=\"plain\")\n\
                 input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{}\" ruleset=\"tls\" \
                 StreamDriver.Name=\"gtls\" StreamDriver.Mode=\"1\" StreamDriver.AuthMode=\"anon\")\n",
                r.plain, r.tls
            ),
        )
        .unwrap();
        r
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("rsyslogd.out"))
            .unwrap();
        let child = Command::new("rsyslogd")
            .arg("-n")
            .arg("-iNONE")
            .arg("-f")
            .arg(self.dir.join("rsyslog.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("rsyslogd (Debian's rsyslog)");
        self.child = Some(child);
        // Listening: both ports take connections.
        let deadline = Instant::now() + Duration::from_secs(20);
        while [self.plain, self.tls]
            .iter()
            .any(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_err())
        {
            assert!(
                Instant::now() < deadline,
                "rsyslogd did not listen: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL: what it had not written is gone with it.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("rsyslogd.out")).unwrap_or_default()
    }

    fn received(&self, which: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{which}.log"))).unwrap_or_default()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How often each of the container's numbers arrived.
fn numbers(received: &str) -> BTreeMap<u32, u32> {
    let mut seen = BTreeMap::new();
    for line in received.lines() {
        let mut words = line.split(' ');
        if words.nth(1) != Some("counter") {
            continue;
        }
        if let Some(n) = line.rsplit(' ').next().and_then(|w| w.strip_prefix("n=")) {
            if let Ok(n) = n.parse() {
                *seen.entry(n).or_insert(0) += 1;
            }
        }
    }
    seen
}

fn highest(r: &Rsyslog, which: &str) -> u32 {
    numbers(&r.received(which))
        .keys()
        .last()
        .copied()
        .unwrap_or(0)
}

/// Waits (`patience` at most) until both receivers have a number of at least `n`.
fn wait_for_number(r: &Rsyslog, n: u32, patience: Duration, vm: &berth_tests::vm::Vm) {
    let deadline = Instant::now() + patience;
    while highest(r, "plain") < n || highest(r, "tls") < n {
        assert!(
            Instant::now() < deadline,
            "number {n} did not arrive (plain: {}, tls: {})\nrsyslogd: {}\n{}",
            highest(r, "plain"),
            highest(r, "tls"),
            r.stderr(),
            vm.console()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn user_data(ca: &str) -> String {
    format!(
        "#cloud-config\n\
         hostname: shipper\n\
         berth:\n  logs:\n    forward:\n      - url: tcp://10.0.2.100:601\n      \
         - url: tls://10.0.2.100:6514\n        ca: |\n{}  \
         containers:\n    counter:\n      image: berth.local/busybox:latest\n      \
         restart: always\n      volumes: [\"count:/data\"]\n      \
         command: [\"sh\", \"-c\", \"i=$(cat /data/n 2>/dev/null || echo 0); \
         while [ $i -lt {LAST} ]; do i=$((i+1)); echo n=$i; echo $i > /data/n; sleep 0.02; done; \
         exec sleep 1000000\"]\n",
        pki::yaml_block(ca, 10),
    )
}

fn config(t: &Path, r: &Rsyslog, name: &str) -> berth_tests::vm::VmConfig {
    let mut cfg = disk_config(name, t);
    cfg.extra_args = vec![
        "-fw_cfg".into(),
        format!(
            "name=opt/berth/user-data,file={}",
            t.join("user-data").display()
        ),
        "-netdev".into(),
        format!(
            "user,id=n0,restrict=on,\
             guestfwd=tcp:10.0.2.100:601-cmd:socat - TCP:127.0.0.1:{},\
             guestfwd=tcp:10.0.2.100:6514-cmd:socat - TCP:127.0.0.1:{}",
            r.plain, r.tls
        ),
        "-device".into(),
        "virtio-net-pci,netdev=n0".into(),
    ];
    cfg
}

#[test]
fn logs_reach_rsyslog_through_an_outage_and_a_reboot() {
    let t = tempfile::tempdir().unwrap();
    pki::make(t.path(), "10.0.2.100");
    let ca = std::fs::read_to_string(t.path().join("ca.pem")).unwrap();
    std::fs::write(t.path().join("user-data"), user_data(&ca)).unwrap();
    let mut rsyslog = Rsyslog::new(t.path());
    rsyslog.start();
    new_disk(t.path());
    let vm = boot(config(t.path(), &rsyslog, "logforward"));
    let mut testd = vm.testd().expect("testd");
    assert_running(&mut testd, "counter");

    // The stream flows; rsyslog goes away for 12 s in the middle of it: the forwarder's
    // reconnects (backing off from 0.5 s) fail five times or more meanwhile.
    wait_for_number(&rsyslog, 200, Duration::from_secs(120), &vm);
    rsyslog.kill();
    let down_at = highest(&rsyslog, "plain");
    std::thread::sleep(Duration::from_secs(12));
    rsyslog.start();
    let shipped = Instant::now();
    wait_for_number(&rsyslog, down_at + 300, Duration::from_secs(120), &vm);
    eprintln!(
        "measure: logforward: caught up 300 lines past the outage in {:.1} s",
        shipped.elapsed().as_secs_f64()
    );

    // The forwarder's memory, mid-stream.
    let rss = testd
        .sh(
            "for p in /proc/[0-9]*; do case \"$(tr '\\0' ' ' < $p/cmdline 2>/dev/null)\" in \
             *berth-agent\\ logforward*) grep -E 'VmRSS|RssAnon' $p/status;; esac; done",
        )
        .map(|o| o.stdout.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    eprintln!("measure: logforward: forwarder {rss}");

    // A power-off and boot in the middle of the stream.
    let before_reboot = highest(&rsyslog, "plain");
    assert!(before_reboot < LAST, "the stream ended before the reboot");
    drop(testd);
    power_off(vm);
    let vm = boot(config(t.path(), &rsyslog, "logforward-again"));
    wait_for_number(&rsyslog, LAST, Duration::from_secs(240), &vm);
    // The last lines settle (a cursor is kept a few seconds after its lines).
    std::thread::sleep(Duration::from_secs(2));

    for which in ["plain", "tls"] {
        let got = numbers(&rsyslog.received(which));
        let missing: Vec<u32> = (1..=LAST).filter(|n| !got.contains_key(n)).collect();
        let duplicates: u32 = got.values().map(|c| c - 1).sum();
        eprintln!(
            "measure: logforward: {which}: {} numbers, {} duplicates, {} missing",
            got.len(),
            duplicates,
            missing.len()
        );
        assert!(missing.is_empty(), "{which}: missing {missing:?}");
        if duplicates > LAST / 10 {
            let log = vm
                .berthctl(&["service", "logs", "berth-logforward", "-n", "2000"])
                .unwrap_or_default();
            let resends = log.lines().filter(|l| l.contains("resending")).count();
            let status: Vec<&str> = log.lines().filter(|l| l.contains("delivered in")).collect();
            eprintln!(
                "{which}: many duplicates; {resends} resends; the forwarder's status:\n{}",
                status.join("\n")
            );
            let _ = std::fs::copy(t.path().join("rsyslogd.out"), "/tmp/lf-rsyslogd.out");
            let _ = std::fs::copy(t.path().join("plain.log"), "/tmp/lf-plain.log");
        }
    }

    // What a message carries.
    let plain = rsyslog.received("plain");
    let sample = plain
        .lines()
        .find(|l| l.contains(" counter stdout "))
        .unwrap_or_else(|| panic!("no container line:\n{plain}"));
    assert!(
        sample.starts_with(
            "shipper counter stdout [berth@32473 container=\"counter\" \
                            image=\"berth.local/busybox:latest\" stream=\"stdout\"] n="
        ),
        "{sample}"
    );
    assert!(
        plain
            .lines()
            .any(|l| l.starts_with("shipper kernel kmsg - ")),
        "no kernel line"
    );
    assert!(
        plain
            .lines()
            .any(|l| l.starts_with("shipper init kmsg - init: berth: ready (")),
        "no init line"
    );
    assert!(
        plain.lines().any(|l| l.contains(" berth-daemon ")),
        "no service line"
    );
    drop(vm);
}
