//! Each declared container's figures under cAdvisor's names (`container_*`, labelled
//! `name` and `image`), read from its cgroup's files at every scrape, plus what only
//! the daemon knows (`berth_container_*`: state, restarts, last exit), the image
//! store's size and the pulls.

use std::path::Path;

use super::exposition::{Exposition, Kind};
use super::NetDev;
use crate::api::Published;

/// The states a container can be in (`berth_container_state` has one series each).
const STATES: [&str; 5] = ["waiting", "running", "exited", "failed", "stopped"];

/// One cgroup's figures, from cpu.stat, memory.*, pids.current and io.stat.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Figures {
    pub cpu_usec: u64,
    pub user_usec: u64,
    pub system_usec: u64,
    pub memory: u64,
    /// memory.current less the inactive file cache: what the kernel cannot easily take
    /// back (cAdvisor's definition).
    pub working_set: u64,
    pub rss: u64,
    pub cache: u64,
    /// 0 when unlimited.
    pub limit: u64,
    pub oom_kills: u64,
    pub pids: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
}

/// `key value` lines (cpu.stat, memory.stat, memory.events): the value of `key`.
fn keyed(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Reads a cgroup's small files into buffers it keeps, so a scrape of many containers
/// allocates per scrape rather than per file.
#[derive(Default)]
pub struct Reader {
    path: Vec<u8>,
    text: String,
}

impl Reader {
    fn read(&mut self, dir: &Path, file: &str) -> Option<&str> {
        use std::io::Read;
        use std::os::unix::ffi::OsStrExt;
        self.path.clear();
        self.path.extend_from_slice(dir.as_os_str().as_bytes());
        self.path.push(b'/');
        self.path.extend_from_slice(file.as_bytes());
        self.text.clear();
        let path = Path::new(std::ffi::OsStr::from_bytes(&self.path));
        std::fs::File::open(path)
            .and_then(|f| f.take(super::MAX_FILE).read_to_string(&mut self.text))
            .ok()?;
        Some(&self.text)
    }
}

impl Figures {
    /// None when the cgroup is gone (the container is not running).
    pub fn read(dir: &Path) -> Option<Figures> {
        Figures::read_with(dir, &mut Reader::default())
    }

    pub fn read_with(dir: &Path, r: &mut Reader) -> Option<Figures> {
        let memory = r.read(dir, "memory.current")?.trim().parse().unwrap_or(0);
        let mut f = Figures {
            memory,
            ..Figures::default()
        };
        if let Some(cpu) = r.read(dir, "cpu.stat") {
            f.cpu_usec = keyed(cpu, "usage_usec");
            f.user_usec = keyed(cpu, "user_usec");
            f.system_usec = keyed(cpu, "system_usec");
        }
        if let Some(stat) = r.read(dir, "memory.stat") {
            f.working_set = memory.saturating_sub(keyed(stat, "inactive_file"));
            f.rss = keyed(stat, "anon");
            f.cache = keyed(stat, "file");
        } else {
            f.working_set = memory;
        }
        f.limit = r
            .read(dir, "memory.max")
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        f.oom_kills = r
            .read(dir, "memory.events")
            .map_or(0, |t| keyed(t, "oom_kill"));
        f.pids = r
            .read(dir, "pids.current")
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        // io.stat: "MAJ:MIN rbytes=N wbytes=N rios=N ..." per device.
        if let Some(io) = r.read(dir, "io.stat") {
            for word in io.split_whitespace() {
                if let Some(v) = word.strip_prefix("rbytes=") {
                    f.read_bytes += v.parse::<u64>().unwrap_or(0);
                } else if let Some(v) = word.strip_prefix("wbytes=") {
                    f.write_bytes += v.parse::<u64>().unwrap_or(0);
                }
            }
        }
        Some(f)
    }
}

/// What a scrape needs of a container, copied out of the supervisor's snapshot.
pub struct Seen {
    name: String,
    image: String,
    state: String,
    restarts: u32,
    exit_code: i32,
    cgroup: Option<std::path::PathBuf>,
    link: Option<String>,
    oom_kills: u64,
    started_epoch: Option<f64>,
}

impl Seen {
    pub fn of(p: &Published) -> Seen {
        Seen {
            name: p.info.name.clone(),
            image: p.info.image.clone(),
            state: p.info.state.clone(),
            restarts: p.info.restarts,
            exit_code: p.info.exit_code,
            cgroup: p.cgroup.clone(),
            link: p.link.clone(),
            oom_kills: p.oom_kills,
            started_epoch: p.started_epoch,
        }
    }
}

struct Row<'a> {
    p: &'a Seen,
    figures: Option<Figures>,
    /// Its veth pair's host end's counters (a bridge container).
    net: Option<&'a [u64]>,
}

type Pick = fn(&Figures) -> f64;

pub fn write(e: &mut Exposition, containers: &[Seen], net: &NetDev) {
    let mut reader = Reader::default();
    let rows: Vec<Row> = containers
        .iter()
        .map(|p| Row {
            p,
            figures: p
                .cgroup
                .as_deref()
                .and_then(|dir| Figures::read_with(dir, &mut reader)),
            net: p
                .link
                .as_deref()
                .and_then(|l| net.iter().find(|(n, _)| n == l))
                .map(|(_, v)| v.as_slice()),
        })
        .collect();
    let cgroup_families: [(&str, Kind, &str, Pick); 11] = [
        (
            "container_cpu_usage_seconds_total",
            Kind::Counter,
            "Cumulative cpu time consumed in seconds.",
            |f| f.cpu_usec as f64 / 1e6,
        ),
        (
            "container_cpu_user_seconds_total",
            Kind::Counter,
            "Cumulative user cpu time consumed in seconds.",
            |f| f.user_usec as f64 / 1e6,
        ),
        (
            "container_cpu_system_seconds_total",
            Kind::Counter,
            "Cumulative system cpu time consumed in seconds.",
            |f| f.system_usec as f64 / 1e6,
        ),
        (
            "container_memory_usage_bytes",
            Kind::Gauge,
            "Current memory usage in bytes, including all memory regardless of when it was accessed.",
            |f| f.memory as f64,
        ),
        (
            "container_memory_working_set_bytes",
            Kind::Gauge,
            "Current working set in bytes.",
            |f| f.working_set as f64,
        ),
        (
            "container_memory_rss",
            Kind::Gauge,
            "Size of RSS in bytes.",
            |f| f.rss as f64,
        ),
        (
            "container_memory_cache",
            Kind::Gauge,
            "Number of bytes of page cache memory.",
            |f| f.cache as f64,
        ),
        (
            "container_spec_memory_limit_bytes",
            Kind::Gauge,
            "Memory limit for the container (0: none).",
            |f| f.limit as f64,
        ),
        (
            "container_threads",
            Kind::Gauge,
            "Number of threads running inside the container (pids.current).",
            |f| f.pids as f64,
        ),
        (
            "container_fs_reads_bytes_total",
            Kind::Counter,
            "Cumulative count of bytes read.",
            |f| f.read_bytes as f64,
        ),
        (
            "container_fs_writes_bytes_total",
            Kind::Counter,
            "Cumulative count of bytes written.",
            |f| f.write_bytes as f64,
        ),
    ];
    for (name, kind, help, pick) in cgroup_families {
        e.family(name, kind, help);
        for r in &rows {
            if let Some(f) = &r.figures {
                e.sample(name, &labels(r.p), pick(f));
            }
        }
    }
    e.family(
        "container_oom_events_total",
        Kind::Counter,
        "Count of out of memory events observed for the container.",
    );
    for r in &rows {
        let now = r.figures.as_ref().map_or(0, |f| f.oom_kills);
        e.sample(
            "container_oom_events_total",
            &labels(r.p),
            r.p.oom_kills + now,
        );
    }
    // The host end's transmit is what the container received, and the reverse.
    for (name, index, help) in [
        (
            "container_network_receive_bytes_total",
            8,
            "Cumulative count of bytes received.",
        ),
        (
            "container_network_receive_packets_total",
            9,
            "Cumulative count of packets received.",
        ),
        (
            "container_network_receive_errors_total",
            10,
            "Cumulative count of errors encountered while receiving.",
        ),
        (
            "container_network_transmit_bytes_total",
            0,
            "Cumulative count of bytes transmitted.",
        ),
        (
            "container_network_transmit_packets_total",
            1,
            "Cumulative count of packets transmitted.",
        ),
        (
            "container_network_transmit_errors_total",
            2,
            "Cumulative count of errors encountered while transmitting.",
        ),
    ] {
        e.family(name, Kind::Counter, help);
        for r in &rows {
            if let Some(values) = r.net {
                let [n, i] = [r.p.name.as_str(), r.p.image.as_str()];
                e.sample(
                    name,
                    &[("name", n), ("image", i), ("interface", "eth0")],
                    values[index],
                );
            }
        }
    }
    e.family(
        "container_start_time_seconds",
        Kind::Gauge,
        "Start time of the container since unix epoch in seconds.",
    );
    for r in &rows {
        if let Some(t) = r.p.started_epoch {
            e.sample("container_start_time_seconds", &labels(r.p), t);
        }
    }
    berth_rows(e, &rows);
}

fn labels(p: &Seen) -> [(&'static str, &str); 2] {
    [("name", &p.name), ("image", &p.image)]
}

/// What only the daemon knows: state, restarts, the last exit code.
fn berth_rows(e: &mut Exposition, rows: &[Row]) {
    e.family(
        "berth_container_state",
        Kind::Gauge,
        "1 for the state the container is in, 0 for the others.",
    );
    for r in rows {
        for s in STATES {
            e.sample(
                "berth_container_state",
                &[("name", &r.p.name), ("state", s)],
                u64::from(r.p.state == s),
            );
        }
    }
    e.family(
        "berth_container_restarts_total",
        Kind::Counter,
        "Restarts by the container's restart policy since the daemon started.",
    );
    for r in rows {
        e.sample(
            "berth_container_restarts_total",
            &[("name", &r.p.name)],
            u64::from(r.p.restarts),
        );
    }
    e.family(
        "berth_container_last_exit_code",
        Kind::Gauge,
        "The container's last exit code (128+signal when killed), -1 before any.",
    );
    for r in rows {
        e.sample(
            "berth_container_last_exit_code",
            &[("name", &r.p.name)],
            i64::from(r.p.exit_code),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_come_from_the_cgroup_files() {
        let t = tempfile::tempdir().unwrap();
        let w = |f: &str, s: &str| std::fs::write(t.path().join(f), s).unwrap();
        w(
            "cpu.stat",
            "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
        );
        w("memory.current", "10000\n");
        w(
            "memory.stat",
            "anon 6000\nfile 3000\ninactive_file 1000\nactive_file 2000\n",
        );
        w("memory.max", "max\n");
        w("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n");
        w("pids.current", "4\n");
        w(
            "io.stat",
            "8:0 rbytes=100 wbytes=200 rios=1 wios=2\n8:16 rbytes=1 wbytes=2\n",
        );
        let f = Figures::read(t.path()).unwrap();
        assert_eq!(
            f,
            Figures {
                cpu_usec: 2_500_000,
                user_usec: 2_000_000,
                system_usec: 500_000,
                memory: 10000,
                working_set: 9000,
                rss: 6000,
                cache: 3000,
                limit: 0,
                oom_kills: 1,
                pids: 4,
                read_bytes: 101,
                write_bytes: 202,
            }
        );
        assert_eq!(Figures::read(&t.path().join("gone")), None);
    }
}

#[cfg(test)]
mod cost {
    use super::*;
    use crate::metrics::alloc_count;
    use std::collections::BTreeMap;

    /// 100 containers' cgroup files, as a scrape reads them.
    fn containers(dir: &Path, n: usize) -> BTreeMap<String, Published> {
        (0..n)
            .map(|i| {
                let name = format!("c{i}");
                let cg = dir.join(&name);
                std::fs::create_dir_all(&cg).unwrap();
                for (f, text) in [
                    (
                        "cpu.stat",
                        "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
                    ),
                    ("memory.current", "10000\n"),
                    ("memory.stat", "anon 6000\nfile 3000\ninactive_file 1000\n"),
                    ("memory.max", "max\n"),
                    ("memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n"),
                    ("pids.current", "1\n"),
                    ("io.stat", "8:0 rbytes=100 wbytes=200 rios=1 wios=2\n"),
                ] {
                    std::fs::write(cg.join(f), text).unwrap();
                }
                let info = berth_control::ContainerInfo {
                    name: name.clone(),
                    image: "berth.local/busybox:latest".into(),
                    state: "running".into(),
                    pid: 1,
                    restarts: 0,
                    exit_code: -1,
                    error: String::new(),
                    started_at: String::new(),
                    ports: vec![],
                    network: "bridge".into(),
                    address: String::new(),
                    source: String::new(),
                };
                let p = Published {
                    info,
                    detail: serde_json::Value::Null,
                    cgroup: Some(cg),
                    oom_kills: 0,
                    started_epoch: Some(1.0),
                    link: Some(format!("vb{i:08x}")),
                };
                (name, p)
            })
            .collect()
    }

    /// What one scrape of 100 containers allocates (on this thread): printed, and held
    /// under a bound that a per-sample allocation would break.
    #[test]
    fn a_scrape_of_100_containers_allocates_per_file_not_per_sample() {
        let t = tempfile::tempdir().unwrap();
        let map = containers(t.path(), 100);
        let net: NetDev = (0..100)
            .map(|i| (format!("vb{i:08x}"), vec![7; 16]))
            .collect();
        let seen: Vec<Seen> = map.values().map(Seen::of).collect();
        let mut e = Exposition::with_capacity(256 * 1024);
        let before = alloc_count::now();
        write(&mut e, &seen, &net);
        let allocations = alloc_count::now() - before;
        let text = e.finish();
        eprintln!(
            "measure: a scrape of 100 containers' cgroups: {allocations} allocations, {} bytes",
            text.len()
        );
        assert!(text.matches("container_cpu_usage_seconds_total{").count() == 100);
        // The buffers are reused: a handful for the whole scrape, not per file.
        assert!(allocations < 100, "{allocations} allocations");
    }
}
