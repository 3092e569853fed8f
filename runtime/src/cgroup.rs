//! cgroup v2 for a container: its directory from linux.cgroupsPath and the resources
//! the spec sets. Berth is cgroup-v2 only: where the host has no usable v2 controllers
//! (a v1/hybrid machine) a container asking for resources is refused, saying so.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxResources, Spec};

use crate::error::{io, Error, Result};

pub const MOUNT: &str = "/sys/fs/cgroup";

/// Whether /sys/fs/cgroup is a cgroup2 hierarchy (it has cgroup.controllers).
pub fn v2_available() -> bool {
    Path::new(MOUNT).join("cgroup.controllers").exists()
}

/// `slice:prefix:name` (systemd's form, which conmon passes with --systemd-cgroup) to a
/// cgroupfs path: `machine.slice:libpod:abc` → `machine.slice/libpod-abc.scope`.
pub fn systemd_path(path: &str) -> Option<PathBuf> {
    let mut parts = path.split(':');
    let (slice, prefix, name) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || name.is_empty() {
        return None;
    }
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    // Nested slices: a-b.slice lives in a.slice/a-b.slice.
    let mut dir = PathBuf::new();
    let stem = slice.trim_end_matches(".slice");
    let mut acc = String::new();
    for (i, part) in stem.split('-').enumerate() {
        if i > 0 {
            acc.push('-');
        }
        acc.push_str(part);
        dir.push(format!("{acc}.slice"));
    }
    let unit = if name.ends_with(".slice") {
        name.to_string()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    dir.push(unit);
    Some(dir)
}

fn has_resources(r: &LinuxResources) -> bool {
    r.memory().is_some()
        || r.cpu().is_some()
        || r.pids().is_some()
        || r.block_io().is_some()
        || r.hugepage_limits().as_ref().is_some_and(|h| !h.is_empty())
        || r.devices().as_ref().is_some_and(|d| !d.is_empty())
        || r.unified().as_ref().is_some_and(|u| !u.is_empty())
}

/// The container's cgroup directory, or None when the spec asks for none and this host
/// has no cgroup v2.
pub fn plan(spec: &Spec, id: &str, systemd: bool, disabled: bool) -> Result<Option<PathBuf>> {
    let linux = spec.linux().as_ref();
    let wanted = linux.and_then(|l| l.cgroups_path().clone());
    let resources = linux.and_then(|l| l.resources().as_ref());
    if disabled {
        // The caller chose no cgroup (podman --cgroups=disabled, whose configs still
        // carry its default limits): said, not applied.
        if resources.is_some_and(has_resources) {
            eprintln!(
                "berth-runtime: warning: --cgroup-manager=disabled: linux.resources not applied"
            );
        }
        return Ok(None);
    }
    if !v2_available() {
        if resources.is_some_and(has_resources) {
            return Err(Error::Unsupported(format!(
                "linux.resources needs cgroup v2 controllers, and {MOUNT} is not a cgroup2 hierarchy here (a v1 or hybrid host): run without resource limits, or on a cgroup-v2 host such as Berth"
            )));
        }
        return Ok(None);
    }
    let rel = match wanted {
        Some(p) if systemd => systemd_path(&p.to_string_lossy()).ok_or_else(|| {
            crate::error::config(
                "linux.cgroupsPath",
                format!("{} is not slice:prefix:name", p.display()),
            )
        })?,
        Some(p) => p.strip_prefix("/").map(Path::to_path_buf).unwrap_or(p),
        None => PathBuf::from("berth-runtime").join(id),
    };
    if rel
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(crate::error::config(
            "linux.cgroupsPath",
            "may not contain ..",
        ));
    }
    Ok(Some(Path::new(MOUNT).join(rel)))
}

/// Creates the directory (enabling controllers on the way down) and writes the limits.
pub fn create(dir: &Path, resources: Option<&LinuxResources>) -> Result<()> {
    make_dirs(dir)?;
    let Some(r) = resources else { return Ok(()) };
    let mut writes: Vec<(&str, String)> = Vec::new();
    memory_limits(r, &mut writes);
    pids_limit(r, &mut writes);
    cpu_limits(r, &mut writes);
    memory_reservation(r, &mut writes);
    io_limits(r, dir, &mut writes);
    let hugepages = hugepage_limits(r, dir)?;
    let unified = unified_files(r)?;
    let rules = r.devices().as_deref().unwrap_or_default();
    if crate::devices::restricts(rules) {
        attach_devices(dir, rules)?;
    }
    let writes = writes.into_iter().map(|(f, v)| (f.to_string(), v));
    // unified last, so its files win.
    write_files(dir, writes.chain(hugepages).chain(unified))
}

/// Each directory from the mount down to `dir`, every controller Berth uses enabled
/// in each parent on the way.
fn make_dirs(dir: &Path) -> Result<()> {
    let rel = dir.strip_prefix(MOUNT).unwrap_or(dir);
    let mut cur = PathBuf::from(MOUNT);
    for part in rel.components() {
        let offered = std::fs::read_to_string(cur.join("cgroup.controllers")).unwrap_or_default();
        for c in offered.split_whitespace() {
            if ["cpu", "memory", "pids", "io", "hugetlb"].contains(&c) {
                let _ = std::fs::write(cur.join("cgroup.subtree_control"), format!("+{c}"));
            }
        }
        cur.push(part);
        match std::fs::create_dir(&cur) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(io(&cur)(e)),
            _ => {}
        }
    }
    Ok(())
}

/// A limit where negative means none.
fn or_max(n: i64) -> String {
    if n < 0 {
        "max".into()
    } else {
        n.to_string()
    }
}

/// memory.max and memory.swap.max.
fn memory_limits(r: &LinuxResources, writes: &mut Vec<(&str, String)>) {
    let Some(m) = r.memory() else { return };
    if let Some(limit) = m.limit() {
        writes.push(("memory.max", or_max(limit)));
    }
    if let Some(swap) = m.swap() {
        // OCI's swap is memory+swap; v2's memory.swap.max is swap alone.
        let limit = m.limit().unwrap_or(-1);
        if swap >= 0 && limit >= 0 {
            writes.push(("memory.swap.max", (swap - limit).max(0).to_string()));
        }
    }
}

fn pids_limit(r: &LinuxResources, writes: &mut Vec<(&str, String)>) {
    if let Some(p) = r.pids() {
        let l = p.limit();
        writes.push((
            "pids.max",
            if l <= 0 { "max".into() } else { l.to_string() },
        ));
    }
}

/// cpu.weight from shares, cpu.max from quota and period.
fn cpu_limits(r: &LinuxResources, writes: &mut Vec<(&str, String)>) {
    let Some(c) = r.cpu() else { return };
    if let Some(shares) = c.shares() {
        // The conversion runc and crun use (cgroup v1 shares 2..262144 → weight 1..10000).
        let weight = 1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142;
        writes.push(("cpu.weight", weight.to_string()));
    }
    if c.quota().is_some() || c.period().is_some() {
        let quota = c
            .quota()
            .filter(|q| *q > 0)
            .map_or("max".to_string(), |q| q.to_string());
        writes.push((
            "cpu.max",
            format!("{quota} {}", c.period().unwrap_or(100_000)),
        ));
    }
}

fn memory_reservation(r: &LinuxResources, writes: &mut Vec<(&str, String)>) {
    if let Some(low) = r.memory().as_ref().and_then(|m| m.reservation()) {
        writes.push(("memory.low", or_max(low)));
    }
}

/// hugetlb.<size>.max for each page size, which this kernel must offer.
fn hugepage_limits(r: &LinuxResources, dir: &Path) -> Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    for h in r.hugepage_limits().iter().flatten() {
        // runtime-spec: pageSize in the kernel's own unit syntax ("2MB", "1GB").
        let size = h.page_size();
        if size.is_empty() || !size.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(crate::error::config(
                "linux.resources.hugepageLimits.pageSize",
                format!("{size:?} is not a page size"),
            ));
        }
        let file = format!("hugetlb.{size}.max");
        if !dir.join(&file).exists() {
            return Err(crate::error::config(
                "linux.resources.hugepageLimits.pageSize",
                format!("this kernel has no {size} huge pages (no {file})"),
            ));
        }
        files.push((file, h.limit().max(0).to_string()));
    }
    Ok(files)
}

/// linux.resources.unified: cgroup v2 files by name, each a controller's file.
fn unified_files(r: &LinuxResources) -> Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    for (file, value) in r.unified().iter().flatten() {
        if file.contains('/') || file.starts_with('.') || file.starts_with("cgroup.") {
            return Err(crate::error::config(
                "linux.resources.unified",
                format!("{file:?} is not a controller's file"),
            ));
        }
        files.push((file.clone(), value.clone()));
    }
    Ok(files)
}

/// Writes each value into its file in `dir`, in order.
fn write_files(dir: &Path, files: impl Iterator<Item = (String, String)>) -> Result<()> {
    for (file, value) in files {
        let path = dir.join(&file);
        // io.max and io.weight take one device per write.
        for line in value.lines() {
            std::fs::write(&path, line).map_err(|e| {
                crate::error::Error::Setup(format!(
                    "cgroup: writing {line:?} to {}: {e}",
                    path.display()
                ))
            })?;
        }
    }
    Ok(())
}

/// The device rules as an eBPF program on the cgroup (see `devices`).
fn attach_devices(dir: &Path, rules: &[oci_spec::runtime::LinuxDeviceCgroup]) -> Result<()> {
    let prog = crate::devices::program(rules)
        .map_err(|e| crate::error::config("linux.resources.devices", e))?;
    let loaded = crate::sys::load_device_program(&prog).map_err(|(errno, log)| {
        Error::Setup(format!(
            "loading the device cgroup program ({} instructions): {errno}{}",
            prog.len(),
            if log.is_empty() {
                String::new()
            } else {
                format!(": {log}")
            }
        ))
    })?;
    let cg = std::fs::File::open(dir).map_err(io(dir))?;
    crate::sys::attach_device_program(
        std::os::fd::AsFd::as_fd(&cg),
        std::os::fd::AsFd::as_fd(&loaded),
    )
    .map_err(|e| {
        Error::Setup(format!(
            "attaching the device program to {}: {e}",
            dir.display()
        ))
    })
}

/// linux.resources.blockIO on cgroup v2: weights to io.weight (blk-iocost) or, where
/// only BFQ offers one, io.bfq.weight; throttles to io.max.
fn io_limits(r: &LinuxResources, dir: &Path, writes: &mut Vec<(&str, String)>) {
    let Some(b) = r.block_io() else { return };
    let bfq = !dir.join("io.weight").exists() && dir.join("io.bfq.weight").exists();
    // v1's 10..1000 onto v2's 1..10000, as runc and crun convert it; BFQ takes v1's.
    let weight = |w: u16| {
        if bfq {
            w.to_string()
        } else {
            (1 + (u32::from(w.clamp(10, 1000)) - 10) * 9999 / 990).to_string()
        }
    };
    let file = if bfq { "io.bfq.weight" } else { "io.weight" };
    let mut lines: Vec<String> = Vec::new();
    if let Some(w) = b.weight() {
        lines.push(format!("default {}", weight(w)));
    }
    for d in b.weight_device().iter().flatten() {
        if let Some(w) = d.weight() {
            lines.push(format!("{}:{} {}", d.major(), d.minor(), weight(w)));
        }
    }
    if !lines.is_empty() {
        writes.push((file, lines.join("\n")));
    }
    let mut max: Vec<String> = Vec::new();
    for (key, devices) in [
        ("rbps", b.throttle_read_bps_device()),
        ("wbps", b.throttle_write_bps_device()),
        ("riops", b.throttle_read_iops_device()),
        ("wiops", b.throttle_write_iops_device()),
    ] {
        for d in devices.iter().flatten() {
            max.push(format!("{}:{} {key}={}", d.major(), d.minor(), d.rate()));
        }
    }
    if !max.is_empty() {
        writes.push(("io.max", max.join("\n")));
    }
}

pub fn add(dir: &Path, pid: i32) -> Result<()> {
    let path = dir.join("cgroup.procs");
    std::fs::write(&path, pid.to_string()).map_err(io(&path))
}

/// Kills what is left and removes the directory (bounded wait for it to empty).
pub fn remove(dir: &Path) {
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    for _ in 0..100 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// memory.events' oom_kill count.
pub fn oom_kills(dir: &Path) -> Option<u64> {
    std::fs::read_to_string(dir.join("memory.events"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

pub fn pids(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_paths() {
        assert_eq!(
            systemd_path("machine.slice:libpod:abc").unwrap(),
            PathBuf::from("machine.slice/libpod-abc.scope")
        );
        assert_eq!(
            systemd_path("user-1000.slice:podman:x").unwrap(),
            PathBuf::from("user.slice/user-1000.slice/podman-x.scope")
        );
        assert_eq!(
            systemd_path(":p:n").unwrap(),
            PathBuf::from("system.slice/p-n.scope")
        );
        assert!(systemd_path("a:b").is_none());
    }

    #[test]
    fn limits_convert_in_write_order() {
        let r: LinuxResources = serde_json::from_value(serde_json::json!({
            "memory": {"limit": 1_048_576, "swap": 3_145_728, "reservation": -1},
            "pids": {"limit": 0},
            "cpu": {"shares": 1024, "quota": 50_000}
        }))
        .unwrap();
        let mut w = Vec::new();
        memory_limits(&r, &mut w);
        pids_limit(&r, &mut w);
        cpu_limits(&r, &mut w);
        memory_reservation(&r, &mut w);
        let w: Vec<(&str, &str)> = w.iter().map(|(f, v)| (*f, v.as_str())).collect();
        assert_eq!(
            w,
            [
                ("memory.max", "1048576"),
                ("memory.swap.max", "2097152"),
                ("pids.max", "max"),
                ("cpu.weight", "39"),
                ("cpu.max", "50000 100000"),
                ("memory.low", "max"),
            ]
        );
    }

    #[test]
    fn unified_takes_only_controller_files() {
        for bad in ["cgroup.procs", "../x", ".hidden", "a/b"] {
            let r: LinuxResources =
                serde_json::from_value(serde_json::json!({"unified": {bad: "1"}})).unwrap();
            let e = unified_files(&r).unwrap_err().to_string();
            assert!(e.contains("linux.resources.unified"), "{bad}: {e}");
        }
        let r: LinuxResources =
            serde_json::from_value(serde_json::json!({"unified": {"memory.high": "1G"}})).unwrap();
        assert_eq!(
            unified_files(&r).unwrap(),
            [("memory.high".to_string(), "1G".to_string())]
        );
    }
}
