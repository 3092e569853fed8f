//! `berth-vm bench-logforward`: how fast berth-logforward ships a container's log to a
//! syslog receiver, against rsyslog's own `imfile` reading the same file and sending it
//! to the same receiver (its floor: the tool operators use for exactly this). Both run
//! on this machine, one after the other; the receiver is Debian's rsyslog (`imtcp`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

/// Kills and reaps a child when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn rsyslogd(conf: &Path, log: &Path) -> Result<Running> {
    let err = std::fs::File::create(log)?;
    let child = Command::new("rsyslogd")
        .args(["-n", "-iNONE", "-f"])
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .context("rsyslogd (Debian's rsyslog)")?;
    Ok(Running(child))
}

/// Counts the lines of `path` as it grows, until `want` or `patience` is up; the
/// seconds it took from `start`.
fn wait_lines(path: &Path, want: u64, start: Instant, patience: Duration) -> Result<f64> {
    let mut seen = 0u64;
    let mut offset = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    while seen < want {
        ensure!(
            start.elapsed() < patience,
            "{}: {seen} of {want} lines after {} s",
            path.display(),
            patience.as_secs()
        );
        if let Ok(mut f) = std::fs::File::open(path) {
            use std::io::Seek;
            f.seek(std::io::SeekFrom::Start(offset))?;
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                offset += n as u64;
                seen += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(start.elapsed().as_secs_f64())
}

pub fn run(agent: &Path, lines: u64, json: Option<&Path>) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root");
    let logs = root.join("var/log/berth/containers");
    std::fs::create_dir_all(&logs)?;
    std::fs::create_dir_all(root.join("etc/berth"))?;
    // The daemon's format: docker's JSON lines.
    let log = logs.join("bench.log");
    {
        use std::io::Write;
        let mut w = std::io::BufWriter::new(std::fs::File::create(&log)?);
        for i in 1..=lines {
            writeln!(
                w,
                r#"{{"log":"line {i} of the benchmark, about as long as a log line is\n","stream":"stdout","time":"2026-12-01T00:00:00.000000000Z"}}"#
            )?;
        }
    }
    let port = free_port()?;
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work)?;
    let received = |name: &str| dir.path().join(name);
    // One receiver, one file per sender (told apart by the app-name).
    let receiver_conf = dir.path().join("receiver.conf");
    std::fs::write(
        &receiver_conf,
        format!(
            "global(workDirectory=\"{w}\")\n\
             module(load=\"imtcp\")\n\
             template(name=\"m\" type=\"string\" string=\"%msg%\\n\")\n\
             ruleset(name=\"in\") {{ if $app-name == \"bench\" then {{ \
             action(type=\"omfile\" file=\"{d}/berth.out\" template=\"m\") }} else {{ \
             action(type=\"omfile\" file=\"{d}/imfile.out\" template=\"m\") }} }}\n\
             input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{port}\" ruleset=\"in\")\n",
            w = work.display(),
            d = dir.path().display(),
        ),
    )?;
    let _receiver = rsyslogd(&receiver_conf, &received("receiver.err"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(Instant::now() < deadline, "the receiver did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let patience = Duration::from_secs(600);

    // berth-logforward.
    std::fs::write(
        root.join("etc/berth/logs.toml"),
        format!("[[forward]]\nurl = \"tcp://127.0.0.1:{port}\"\n"),
    )?;
    let start = Instant::now();
    let forwarder = Running(
        Command::new(agent)
            .args(["logforward", "--root"])
            .arg(&root)
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("{}", agent.display()))?,
    );
    let berth_s = wait_lines(&received("berth.out"), lines, start, patience)?;
    let cpu = child_cpu(forwarder.0.id());
    drop(forwarder);

    // rsyslog's imfile, reading the same file from its start, to the same receiver.
    let sender_conf = dir.path().join("sender.conf");
    let sender_work = dir.path().join("sender-work");
    std::fs::create_dir_all(&sender_work)?;
    std::fs::write(
        &sender_conf,
        format!(
            "global(workDirectory=\"{w}\")\n\
             module(load=\"imfile\" mode=\"inotify\")\n\
             input(type=\"imfile\" file=\"{log}\" tag=\"imfile\" ruleset=\"out\")\n\
             ruleset(name=\"out\") {{ action(type=\"omfwd\" target=\"127.0.0.1\" port=\"{port}\" \
             protocol=\"tcp\" TCP_Framing=\"octet-counted\" template=\"RSYSLOG_SyslogProtocol23Format\") }}\n",
            w = sender_work.display(),
            log = log.display(),
        ),
    )?;
    let start = Instant::now();
    let _sender = rsyslogd(&sender_conf, &received("sender.err"))?;
    let imfile_s = wait_lines(&received("imfile.out"), lines, start, patience)?;

    let berth_rate = lines as f64 / berth_s;
    let floor_rate = lines as f64 / imfile_s;
    println!(
        "log forwarding, {lines} container lines over TCP to rsyslog (imtcp) on this machine:"
    );
    println!("  berth-logforward:  {berth_s:.2} s, {berth_rate:.0} lines/s ({cpu})");
    println!("  rsyslog imfile:    {imfile_s:.2} s, {floor_rate:.0} lines/s");
    println!("  berth/imfile throughput: {:.2}x", berth_rate / floor_rate);
    if let Some(path) = json {
        let report = serde_json::json!({
            "lines": lines,
            "berth_seconds": berth_s,
            "imfile_seconds": imfile_s,
            "berth_lines_per_second": berth_rate,
            "imfile_lines_per_second": floor_rate,
        });
        crate::bench_report::write(path, report)?;
    }
    Ok(())
}

/// A live child's user and system CPU time, as text.
fn child_cpu(pid: u32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    // Fields 14 and 15 (utime, stime); the first after the `)` is field 3.
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(u), Some(s)) => format!("{:.2} s of CPU", (u + s) as f64 / 100.0),
        _ => "CPU unknown".into(),
    }
}

/// The berth-agent beside this program.
pub fn agent_beside(exe: &Path) -> PathBuf {
    exe.with_file_name("berth-agent")
}
