//! The boot's phases, for `berthctl boot-time`: each phase's end in milliseconds since
//! the kernel started (CLOCK_BOOTTIME). Stage 1 and stage 2 are different processes
//! (exec across switch_root), so the marks go to a file in /run, which moves with the
//! root.

use std::io::Write;
use std::path::Path;

use berth_control::BootPhase;

pub const FILE: &str = "/run/berth/timeline";

/// Records that `phase` ended now.
pub fn mark(phase: &str) {
    mark_in(Path::new(FILE), phase, crate::log::uptime().as_millis());
}

fn mark_in(file: &Path, phase: &str, ms: u128) {
    let result = file
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)
        })
        .and_then(|mut f| writeln!(f, "{phase} {ms}"));
    if let Err(e) = result {
        crate::warn!("boot timeline {}: {e}", file.display());
    }
}

pub fn read() -> Vec<BootPhase> {
    read_from(Path::new(FILE))
}

fn read_from(file: &Path) -> Vec<BootPhase> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (name, ms) = l.split_once(' ')?;
            Some(BootPhase {
                name: name.to_string(),
                end_ms: ms.trim().parse().ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("run/berth/timeline");
        mark_in(&file, "kernel", 812);
        mark_in(&file, "modules", 1204);
        let phases = read_from(&file);
        assert_eq!(phases.len(), 2);
        assert_eq!(phases[1].name, "modules");
        assert_eq!(phases[1].end_ms, 1204);
    }
}
