//! `berthctl memory`: what Berth's own processes hold in memory. That is init itself and
//! every process in a service's own cgroup. A delegated service's other cgroups (the
//! daemon's containers) are the machine's workload, not Berth, and are left out.
//!
//! RSS counts every resident page a process maps; PSS divides each shared page among
//! the processes that map it (glibc, one binary run twice), so PSS adds up across
//! processes and RSS does not. Both come from `/proc/PID/smaps_rollup` (Linux 4.14+).

use std::path::Path;

use berth_control::ProcessMemory;

use super::services::cgroup::MOUNT;

/// smaps_rollup is about 1 KiB, comm at most 16 bytes, and a service's cgroup holds a
/// handful of processes: a longer file is not read (a cgroup.procs that long lists only
/// the service's main process).
const FILE_LIMIT: usize = 8 * 1024;
const PROCS_LIMIT: usize = 256;

/// Init's own row, then each running service's processes, in the order given.
pub fn report<'a>(services: impl Iterator<Item = (&'a str, u32)>) -> Vec<ProcessMemory> {
    let mut rows = Vec::new();
    rows.extend(row("init", 1));
    for (name, main_pid) in services {
        for pid in service_pids(name, main_pid) {
            rows.extend(row(name, pid));
        }
    }
    rows
}

/// The processes in the service's own cgroup (`<name>/main` when delegated), or only its
/// main process where the cgroup cannot be read.
fn service_pids(name: &str, main_pid: u32) -> Vec<u32> {
    let dir = Path::new(MOUNT).join("berth").join(name);
    let procs = if dir.join("main").is_dir() {
        dir.join("main/cgroup.procs")
    } else {
        dir.join("cgroup.procs")
    };
    match read_small(&procs) {
        Some(text) => text
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .take(PROCS_LIMIT)
            .collect(),
        None if main_pid != 0 => vec![main_pid],
        None => Vec::new(),
    }
}

/// None when the process is gone (it may end between the listing and the read).
fn row(service: &str, pid: u32) -> Option<ProcessMemory> {
    let proc = Path::new("/proc").join(pid.to_string());
    let (rss_kb, pss_kb) = parse_rollup(&read_small(&proc.join("smaps_rollup"))?);
    let command = read_small(&proc.join("comm")).unwrap_or_default();
    Some(ProcessMemory {
        service: service.to_string(),
        pid,
        command: command.trim_end().to_string(),
        rss_kb,
        pss_kb,
    })
}

/// The file's text; None when it is gone, not a regular file, or over the bound.
fn read_small(path: &Path) -> Option<String> {
    let bytes = super::slots::read_regular(path, FILE_LIMIT).ok()?;
    String::from_utf8(bytes).ok()
}

/// (Rss, Pss) in KiB from smaps_rollup's `Rss:    1234 kB` lines; 0 for a missing one.
fn parse_rollup(text: &str) -> (u64, u64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rss_and_pss_from_a_rollup() {
        let text = "55d0c0000000-7ffc2a5f5000 ---p 00000000 00:00 0    [rollup]\n\
                    Rss:                1840 kB\nPss:                 612 kB\n\
                    Pss_Anon:            300 kB\nShared_Clean:       1200 kB\n";
        assert_eq!(parse_rollup(text), (1840, 612));
        assert_eq!(parse_rollup("garbage"), (0, 0));
    }

    #[test]
    fn this_process_is_reported_with_its_memory() {
        let me = std::process::id();
        let r = row("test", me).expect("our own smaps_rollup");
        assert_eq!(r.pid, me);
        assert!(
            r.rss_kb > 0 && r.pss_kb > 0 && r.pss_kb <= r.rss_kb,
            "{r:?}"
        );
        assert!(!r.command.is_empty());
        assert!(row("test", u32::MAX).is_none(), "no such process");
    }
}
