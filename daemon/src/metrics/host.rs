//! The machine's figures under node_exporter's names (its `cpu`, `stat`, `meminfo`,
//! `filesystem`, `netdev`, `loadavg` and `time` collectors), so its dashboards work:
//! read from /proc and statvfs at every scrape.

use std::path::Path;

use super::exposition::{Exposition, Kind};
use super::{read_bounded, NetDev};

/// /proc/stat counts in USER_HZ, which the kernel's ABI fixes at 100 on x86-64.
const USER_HZ: f64 = 100.0;
/// node_exporter's CPU modes, in /proc/stat's column order (guest time is already
/// inside user and nice, so it is left out, as node_exporter's `cpu` collector does).
const CPU_MODES: [&str; 8] = [
    "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
];
/// Filesystems worth reporting: the machine's own (not proc, sysfs, cgroups...).
const FS_TYPES: [&str; 6] = ["btrfs", "ext4", "xfs", "erofs", "vfat", "tmpfs"];
/// Mount points left out: the containers' roots (their filesystem is /var's) and
/// the kernel's and the runtime's trees.
const FS_SKIP: [&str; 5] = ["/var/lib/berth/", "/run/berth/", "/proc", "/sys", "/dev"];
/// At most this many filesystems (a container cannot make the host mount more, but a
/// scrape stays bounded whatever happens).
const MAX_FILESYSTEMS: usize = 64;

pub fn write(e: &mut Exposition, links: &NetDev) {
    if let Some(text) = read_bounded(Path::new("/proc/stat")) {
        stat(e, &text);
    }
    if let Some(text) = read_bounded(Path::new("/proc/meminfo")) {
        meminfo(e, &text);
    }
    if let Some(text) = read_bounded(Path::new("/proc/self/mounts")) {
        filesystems(e, &text);
    }
    netdev(e, links);
    if let Some(text) = read_bounded(Path::new("/proc/loadavg")) {
        loadavg(e, &text);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    e.single(
        "node_time_seconds",
        Kind::Gauge,
        "System time in seconds since epoch (1970).",
        now,
    );
    if let Some(up) = read_bounded(Path::new("/proc/uptime"))
        .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
    {
        e.single(
            "berth_uptime_seconds",
            Kind::Gauge,
            "Seconds since the kernel started (/proc/uptime).",
            up,
        );
    }
}

/// Per-CPU seconds by mode, boot time, context switches, forks, running and blocked
/// processes.
fn stat(e: &mut Exposition, text: &str) {
    e.family(
        "node_cpu_seconds_total",
        Kind::Counter,
        "Seconds the CPUs spent in each mode.",
    );
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(cpu) = words.next().and_then(|w| w.strip_prefix("cpu")) else {
            continue;
        };
        if cpu.is_empty() {
            continue; // the all-CPU line
        }
        for (mode, ticks) in CPU_MODES.iter().zip(words) {
            let ticks: u64 = ticks.parse().unwrap_or(0);
            e.sample(
                "node_cpu_seconds_total",
                &[("cpu", cpu), ("mode", mode)],
                ticks as f64 / USER_HZ,
            );
        }
    }
    let field = |key: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    };
    for (key, name, kind, help) in [
        (
            "btime",
            "node_boot_time_seconds",
            Kind::Gauge,
            "Node boot time, in unixtime.",
        ),
        (
            "ctxt",
            "node_context_switches_total",
            Kind::Counter,
            "Total number of context switches.",
        ),
        (
            "processes",
            "node_forks_total",
            Kind::Counter,
            "Total number of forks.",
        ),
        (
            "procs_running",
            "node_procs_running",
            Kind::Gauge,
            "Number of processes in runnable state.",
        ),
        (
            "procs_blocked",
            "node_procs_blocked",
            Kind::Gauge,
            "Number of processes blocked waiting for I/O to complete.",
        ),
    ] {
        if let Some(v) = field(key) {
            e.single(name, kind, help, v);
        }
    }
}

/// Every /proc/meminfo field, named as node_exporter names them: `Active(anon)` is
/// `node_memory_Active_anon_bytes`; fields in kB are converted to bytes, counts
/// (`HugePages_Total`) keep no unit.
fn meminfo(e: &mut Exposition, text: &str) {
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let Some(value) = words.next().and_then(|v| v.parse::<u64>().ok()) else {
            continue;
        };
        let key: String = key
            .chars()
            .filter(|c| *c != ')')
            .map(|c| if c == '(' { '_' } else { c })
            .collect();
        if !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue;
        }
        let (name, value) = match words.next() {
            Some("kB") => (format!("node_memory_{key}_bytes"), value * 1024),
            _ => (format!("node_memory_{key}"), value),
        };
        e.family(
            &name,
            Kind::Gauge,
            &format!(
                "Memory information field {}.",
                &name["node_memory_".len()..]
            ),
        );
        e.sample(&name, &[], value);
    }
}

struct Mount<'a> {
    device: &'a str,
    mountpoint: String,
    fstype: &'a str,
    stat: rustix::fs::StatVfs,
}

/// Size, free and available bytes, and inodes, of the machine's filesystems.
fn filesystems(e: &mut Exposition, mounts: &str) {
    let mut seen = std::collections::BTreeSet::new();
    let mut found = Vec::new();
    for line in mounts.lines() {
        let mut w = line.split(' ');
        let (Some(device), Some(point), Some(fstype)) = (w.next(), w.next(), w.next()) else {
            continue;
        };
        // /proc/mounts writes a blank in a path as \040, and so on.
        let mountpoint = point
            .replace("\\040", " ")
            .replace("\\011", "\t")
            .replace("\\134", "\\");
        if !FS_TYPES.contains(&fstype)
            || FS_SKIP
                .iter()
                .any(|s| mountpoint == s.trim_end_matches('/') || mountpoint.starts_with(s))
            || !seen.insert(mountpoint.clone())
        {
            continue;
        }
        if found.len() == MAX_FILESYSTEMS {
            break;
        }
        if let Ok(stat) = rustix::fs::statvfs(mountpoint.as_str()) {
            found.push(Mount {
                device,
                mountpoint,
                fstype,
                stat,
            });
        }
    }
    type Pick = fn(&rustix::fs::StatVfs) -> u64;
    let families: [(&str, &str, Pick); 5] = [
        (
            "node_filesystem_size_bytes",
            "Filesystem size in bytes.",
            |s| s.f_blocks * s.f_frsize,
        ),
        (
            "node_filesystem_free_bytes",
            "Filesystem free space in bytes.",
            |s| s.f_bfree * s.f_frsize,
        ),
        (
            "node_filesystem_avail_bytes",
            "Filesystem space available to non-root users in bytes.",
            |s| s.f_bavail * s.f_frsize,
        ),
        (
            "node_filesystem_files",
            "Filesystem total file nodes.",
            |s| s.f_files,
        ),
        (
            "node_filesystem_files_free",
            "Filesystem total free file nodes.",
            |s| s.f_ffree,
        ),
    ];
    for (name, help, pick) in families {
        e.family(name, Kind::Gauge, help);
        for m in &found {
            e.sample(
                name,
                &[
                    ("device", m.device),
                    ("fstype", m.fstype),
                    ("mountpoint", &m.mountpoint),
                ],
                pick(&m.stat),
            );
        }
    }
    e.family(
        "node_filesystem_readonly",
        Kind::Gauge,
        "Filesystem read-only status.",
    );
    for m in &found {
        let ro = m
            .stat
            .f_flag
            .contains(rustix::fs::StatVfsMountFlags::RDONLY);
        e.sample(
            "node_filesystem_readonly",
            &[
                ("device", m.device),
                ("fstype", m.fstype),
                ("mountpoint", &m.mountpoint),
            ],
            u64::from(ro),
        );
    }
}

/// /proc/net/dev: each link's 16 counters (receive bytes, packets, errs, drop, fifo,
/// frame, compressed, multicast, then transmit bytes, packets, errs, drop, ...).
pub fn parse_netdev(text: &str) -> NetDev {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let values = rest
                .split_whitespace()
                .map(|v| v.parse().unwrap_or(0))
                .collect::<Vec<u64>>();
            (values.len() >= 16).then(|| (name.trim().to_string(), values))
        })
        .collect()
}

/// The receive and transmit counters of note, per link.
fn netdev(e: &mut Exposition, links: &NetDev) {
    const COLUMNS: [(&str, usize); 8] = [
        ("receive_bytes", 0),
        ("receive_packets", 1),
        ("receive_errs", 2),
        ("receive_drop", 3),
        ("transmit_bytes", 8),
        ("transmit_packets", 9),
        ("transmit_errs", 10),
        ("transmit_drop", 11),
    ];
    for (column, index) in COLUMNS {
        let name = format!("node_network_{column}_total");
        e.family(
            &name,
            Kind::Counter,
            &format!("Network device statistic {column}."),
        );
        for (link, values) in links {
            e.sample(&name, &[("device", link)], values[index]);
        }
    }
}

fn loadavg(e: &mut Exposition, text: &str) {
    let loads: Vec<f64> = text
        .split_whitespace()
        .take(3)
        .filter_map(|v| v.parse().ok())
        .collect();
    let names = [
        ("node_load1", "1m load average."),
        ("node_load5", "5m load average."),
        ("node_load15", "15m load average."),
    ];
    for ((name, help), load) in names.into_iter().zip(loads) {
        e.single(name, Kind::Gauge, help, load);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_per_cpu_and_mode() {
        let mut e = Exposition::default();
        stat(
            &mut e,
            "cpu  300 0 200 1000 5 0 1 0 0 0\ncpu0 150 0 100 500 2 0 1 0 0 0\n\
             cpu1 150 0 100 500 3 0 0 0 0 0\nbtime 1700000000\nctxt 99\n",
        );
        let t = e.finish();
        assert!(
            t.contains("node_cpu_seconds_total{cpu=\"0\",mode=\"user\"} 1.5\n"),
            "{t}"
        );
        assert!(t.contains("node_cpu_seconds_total{cpu=\"1\",mode=\"iowait\"} 0.03\n"));
        assert!(!t.contains("cpu=\"\""), "no all-CPU line");
        assert!(t.contains("node_boot_time_seconds 1700000000\n"));
        assert!(t.contains("node_context_switches_total 99\n"));
    }

    #[test]
    fn meminfo_names_follow_node_exporter() {
        let mut e = Exposition::default();
        meminfo(
            &mut e,
            "MemTotal:        2000 kB\nActive(anon):      10 kB\nHugePages_Total:       0\n",
        );
        let t = e.finish();
        assert!(t.contains("node_memory_MemTotal_bytes 2048000\n"), "{t}");
        assert!(t.contains("node_memory_Active_anon_bytes 10240\n"));
        assert!(t.contains("node_memory_HugePages_Total 0\n"));
    }

    #[test]
    fn links_and_loads() {
        let mut e = Exposition::default();
        netdev(
            &mut e,
            &parse_netdev(
                "Inter-|   Receive |  Transmit\n face |bytes packets ...\n\
                 eth0: 100 2 0 0 0 0 0 0 300 4 0 1 0 0 0 0\n",
            ),
        );
        loadavg(&mut e, "0.50 0.25 0.10 1/100 42\n");
        let t = e.finish();
        assert!(
            t.contains("node_network_receive_bytes_total{device=\"eth0\"} 100\n"),
            "{t}"
        );
        assert!(t.contains("node_network_transmit_drop_total{device=\"eth0\"} 1\n"));
        assert!(t.contains("node_load15 0.1\n"));
    }

    #[test]
    fn filesystems_skip_the_kernels_and_containers_trees() {
        let mut e = Exposition::default();
        let here = std::env::temp_dir();
        filesystems(
            &mut e,
            &format!(
                "proc /proc proc rw 0 0\n/dev/x {} tmpfs rw 0 0\n/dev/x {} tmpfs rw 0 0\n\
                 overlay /var/lib/berth/store/containers/a/rootfs overlay rw 0 0\n",
                here.display(),
                here.display()
            ),
        );
        let t = e.finish();
        let line = format!("mountpoint=\"{}\"}}", here.display());
        assert_eq!(t.matches(&line).count(), 6, "once per family: {t}");
        assert!(!t.contains("/proc") && !t.contains("rootfs"), "{t}");
    }
}
