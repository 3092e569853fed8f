//! cgroup v2 for a container: its directory from linux.cgroupsPath and the resources
//! the spec sets, each applied as runc's fs2 driver applies it or refused naming its
//! key before anything is made (`writes`, `check`). Where the host has no usable v2 controllers (a v1/hybrid machine)
//! only the device rules are applied, with the v1 devices controller (`cgroup_v1`), and
//! any other resource asked for is refused, naming its key.

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

/// Whether `r` sets anything (what --cgroup-manager=disabled warns about).
fn has_resources(r: &LinuxResources) -> bool {
    r.memory().is_some()
        || r.cpu().is_some()
        || r.pids().is_some()
        || r.block_io().is_some()
        || r.network().is_some()
        || r.rdma().as_ref().is_some_and(|m| !m.is_empty())
        || r.hugepage_limits().as_ref().is_some_and(|h| !h.is_empty())
        || r.devices().as_ref().is_some_and(|d| !d.is_empty())
        || r.unified().as_ref().is_some_and(|u| !u.is_empty())
}

/// The container's cgroup directory, or None when it needs none. On a cgroup v2 host,
/// the v2 directory; on a v1 or hybrid host, its directory in the v1 devices hierarchy
/// when the spec's device rules restrict anything (see `plan_v1`).
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
    let rel = || relative_path(wanted, id, systemd);
    if !v2_available() {
        return plan_v1(resources, rel);
    }
    if let Some(r) = resources {
        check(r)?;
        for key in not_applied(r) {
            eprintln!("berth-runtime: warning: {key} not applied: deprecated by the runtime spec, and cgroup v2 has no kernel memory limit");
        }
    }
    Ok(Some(Path::new(MOUNT).join(rel()?)))
}

/// linux.cgroupsPath (or berth-runtime/<id>) as a path under a hierarchy's mount.
fn relative_path(wanted: Option<PathBuf>, id: &str, systemd: bool) -> Result<PathBuf> {
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
    // "" or "/" would be the hierarchy's root, which holds the host's own processes:
    // `remove` would kill them all.
    if !rel
        .components()
        .any(|c| matches!(c, std::path::Component::Normal(_)))
    {
        return Err(crate::error::config(
            "linux.cgroupsPath",
            format!(
                "{:?} is the cgroup hierarchy's root, not a cgroup of its own",
                rel.display().to_string()
            ),
        ));
    }
    Ok(rel)
}

/// A v1 or hybrid host: device rules through the v1 devices controller, every other
/// resource refused by name (`cgroup_v1::v2_only_request`). Everything is checked here,
/// before `create` makes anything, so a refusal leaves nothing behind.
fn plan_v1(
    resources: Option<&LinuxResources>,
    rel: impl FnOnce() -> Result<PathBuf>,
) -> Result<Option<PathBuf>> {
    let Some(r) = resources else { return Ok(None) };
    if let Some(key) = crate::cgroup_v1::v2_only_request(r) {
        return Err(Error::Unsupported(format!(
            "{key} needs cgroup v2 controllers, and {MOUNT} is not a cgroup2 hierarchy here (a v1 or hybrid host, where berth-runtime applies only linux.resources.devices): drop {key}, or run on a cgroup-v2 host such as Berth"
        )));
    }
    let spec_rules = r.devices().as_deref().unwrap_or_default();
    let Some(rules) = crate::devices::with_defaults(spec_rules) else {
        return Ok(None);
    };
    if let Some(mount) = crate::cgroup_v1::devices_mount() {
        crate::cgroup_v1::translate(&rules).map_err(|r| {
            crate::error::config(&format!("linux.resources.devices[{}]", r.index), r.problem)
        })?;
        return Ok(Some(mount.join(rel()?)));
    }
    // No devices controller: a default spec's deny-all (plus allows) runs unenforced,
    // as the issue asks (such hosts ran no device rules for anything); a rule list that
    // denies something specific is a request we cannot honour.
    if crate::cgroup_v1::default_shape(spec_rules) {
        eprintln!("berth-runtime: warning: linux.resources.devices not applied: no devices controller on this host (cgroup v1 or hybrid, devices not mounted)");
        return Ok(None);
    }
    Err(Error::Unsupported(
        "linux.resources.devices denies more than the default deny-all, and this host has neither cgroup v2 controllers nor a mounted v1 devices controller to enforce it".into(),
    ))
}

/// Creates the directory (enabling controllers on the way down) and writes the limits.
/// On a v1 or hybrid host `dir` is in the devices hierarchy (see `plan`) and only the
/// device rules are written.
pub fn create(dir: &Path, resources: Option<&LinuxResources>) -> Result<()> {
    if !v2_available() {
        let spec_rules = resources
            .and_then(|r| r.devices().as_deref())
            .unwrap_or_default();
        return match crate::devices::with_defaults(spec_rules) {
            Some(rules) => crate::cgroup_v1::create(dir, &rules),
            None => std::fs::create_dir_all(dir).map_err(io(dir)),
        };
    }
    // `plan` refused already; checked again so that nothing is made for a refused spec
    // whoever calls this.
    if let Some(r) = resources {
        check(r)?;
    }
    make_dirs(Path::new(MOUNT), dir)?;
    let Some(r) = resources else { return Ok(()) };
    hugepage_sizes_exist(r, dir)?;
    // The spec's rules and, after them, runc's built-in allow list (see `devices`).
    if let Some(rules) = crate::devices::with_defaults(r.devices().as_deref().unwrap_or_default()) {
        attach_devices(dir, &rules)?;
    }
    write_files(dir, writes(r, WeightFile::of(dir))?)
}

/// Refuses, naming the key, any linux.resources a cgroup v2 host cannot apply (see
/// `writes`). Nothing is written: `plan` calls this before anything is made.
fn check(r: &LinuxResources) -> Result<()> {
    writes(r, WeightFile::Iocost).map(drop)
}

/// The deprecated keys berth-runtime accepts and does not apply, as runc does (it warns
/// "Kernel memory settings are ignored"): runtime-spec config-linux.md marks
/// memory.kernel and kernelTCP NOT RECOMMENDED, and the kernel dropped kernel memory
/// limits (v2 has no such file; kmem is charged to memory.max).
fn not_applied(r: &LinuxResources) -> Vec<&'static str> {
    let Some(m) = r.memory() else {
        return Vec::new();
    };
    [
        ("linux.resources.memory.kernel", m.kernel().is_some()),
        ("linux.resources.memory.kernelTCP", m.kernel_tcp().is_some()),
    ]
    .into_iter()
    .filter_map(|(key, set)| set.then_some(key))
    .collect()
}

/// What a write into the container's cgroup does when the kernel has no such file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Absent {
    /// The request cannot be met: an error naming the file.
    Fail,
    /// Nothing is lost (a limit of "max", or a finer accounting the kernel lacks).
    Skip,
    /// Not applied, and said so on stderr naming the key.
    Warn(&'static str),
}

/// One write into the container's cgroup directory: each line of `value` is written
/// on its own (io.max, io.weight and rdma.max take one device a write).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Write {
    file: String,
    value: String,
    absent: Absent,
}

fn write(file: impl Into<String>, value: impl Into<String>) -> Write {
    Write {
        file: file.into(),
        value: value.into(),
        absent: Absent::Fail,
    }
}

/// Which file takes blockIO weights (runc's choice): BFQ's io.bfq.weight, in v1's
/// units, where the kernel has BFQ; else blk-iocost's io.weight, converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WeightFile {
    Bfq,
    Iocost,
}

impl WeightFile {
    fn of(dir: &Path) -> WeightFile {
        if dir.join("io.bfq.weight").exists() {
            WeightFile::Bfq
        } else {
            WeightFile::Iocost
        }
    }
}

/// Every file linux.resources comes to on cgroup v2, in the order runc's fs2 driver
/// writes them (pids, memory, io, cpu, cpuset, hugetlb, rdma, then unified so that its
/// files win), or the first key that cannot be applied. Runtime-spec config-linux.md
/// ("Unified"): where a cgroup v1 setting has no v2 conversion "the runtime MUST
/// generate an error"; runc ignores some of them silently, berth-runtime refuses them.
/// A pure function of the spec, so that each conversion is tested here.
fn writes(r: &LinuxResources, weights: WeightFile) -> Result<Vec<Write>> {
    refuse_network(r)?;
    let mut w = pids_writes(r);
    w.extend(memory_writes(r)?);
    w.extend(io_writes(r, weights)?);
    w.extend(cpu_writes(r)?);
    w.extend(cpuset_writes(r)?);
    w.extend(hugetlb_writes(r)?);
    w.extend(rdma_writes(r)?);
    w.extend(unified_writes(r)?);
    Ok(w)
}

/// A v1 setting with no cgroup v2 interface, refused naming its key.
fn no_v2(key: &str, why: &str) -> Error {
    Error::Unsupported(format!(
        "{key}: cgroup v2 has no such setting ({why}); drop {key} from the spec"
    ))
}

/// Each directory from `mount` down to `dir`, every controller each parent offers
/// enabled for its children on the way (see `enable_offered`).
fn make_dirs(mount: &Path, dir: &Path) -> Result<()> {
    let rel = dir.strip_prefix(mount).unwrap_or(dir);
    let mut cur = mount.to_path_buf();
    for part in rel.components() {
        enable_offered(&cur);
        cur.push(part);
        match std::fs::create_dir(&cur) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(io(&cur)(e)),
            _ => {}
        }
    }
    Ok(())
}

/// Enables in `parent`'s cgroup.subtree_control every controller it offers (its
/// cgroup.controllers), as runc does, so that a container sees the same controllers
/// (cpuset, rdma, misc... too) under either runtime. One line first; the kernel takes
/// a line whole or not at all (a controller busy in threaded mode, or a domain one
/// under a cgroup with processes of its own, fails it), so then each on its own. A
/// controller left off is not an error here: writing its files fails, naming them.
fn enable_offered(parent: &Path) {
    let offered = std::fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
    let Some(line) = enable_line(&offered) else {
        return;
    };
    let control = parent.join("cgroup.subtree_control");
    if std::fs::write(&control, &line).is_err() {
        for one in line.split(' ') {
            let _ = std::fs::write(&control, one);
        }
    }
}

/// "+a +b +c" for cgroup.controllers' "a b c", None when it offers nothing.
fn enable_line(offered: &str) -> Option<String> {
    let line: Vec<String> = offered
        .split_whitespace()
        .map(|c| format!("+{c}"))
        .collect();
    (!line.is_empty()).then(|| line.join(" "))
}

/// A memory value as runc writes it to memory.max or memory.low: 0 is unset (nothing
/// written), -1 is "max"; anything below -1 the kernel would refuse.
fn limit_value(key: &str, n: Option<i64>) -> Result<Option<String>> {
    match n.unwrap_or(0) {
        0 => Ok(None),
        -1 => Ok(Some("max".into())),
        n if n > 0 => Ok(Some(n.to_string())),
        n => Err(crate::error::config(
            key,
            format!("{n} is neither -1 (unlimited) nor a byte count"),
        )),
    }
}

/// memory.swap.max from OCI's swap, which is memory+swap where v2's file is swap alone
/// (runc's ConvertMemorySwapToCgroupV2Value, same cases): -1 and an unlimited memory
/// without a swap value are "max", 0 is unset, otherwise swap minus limit.
fn swap_max(limit: i64, swap: i64) -> Result<Option<String>> {
    const KEY: &str = "linux.resources.memory.swap";
    match (limit, swap) {
        (-1, 0) | (_, -1) => Ok(Some("max".into())),
        (_, 0) => Ok(None),
        (_, s) if s < -1 => Err(crate::error::config(
            KEY,
            format!("{s} is neither -1 (unlimited) nor a byte count"),
        )),
        (-1, s) => Ok(Some(s.to_string())),
        (0, _) => Err(crate::error::config(
            KEY,
            "a memory+swap limit needs linux.resources.memory.limit",
        )),
        (l, s) if s < l => Err(crate::error::config(
            KEY,
            format!("{s} is below memory.limit {l} (swap is memory+swap)"),
        )),
        (l, s) => Ok(Some((s - l).to_string())),
    }
}

/// memory.swap.max, memory.max, memory.low (runc's order). memory.checkBeforeUpdate
/// matters only to `update` (a new limit under the current usage), which this runtime
/// does not have: at create there is no usage to check.
fn memory_writes(r: &LinuxResources) -> Result<Vec<Write>> {
    let Some(m) = r.memory() else {
        return Ok(Vec::new());
    };
    if m.swappiness().is_some_and(|s| s != u64::MAX) {
        // u64::MAX is how -1 ("unset") reaches the unsigned field.
        return Err(no_v2(
            "linux.resources.memory.swappiness",
            "memory.swappiness is v1 only; v2 uses the host's vm.swappiness",
        ));
    }
    if m.disable_oom_killer() == Some(true) {
        return Err(no_v2(
            "linux.resources.memory.disableOOMKiller",
            "memory.oom_control is v1 only; v2 cannot turn the OOM killer off for a cgroup",
        ));
    }
    if m.use_hierarchy() == Some(false) {
        return Err(no_v2(
            "linux.resources.memory.useHierarchy",
            "v2 is always hierarchical",
        ));
    }
    let max = limit_value("linux.resources.memory.limit", m.limit())?;
    let low = limit_value("linux.resources.memory.reservation", m.reservation())?;
    let mut w = Vec::new();
    if let Some(swap) = swap_max(m.limit().unwrap_or(0), m.swap().unwrap_or(0))? {
        // A kernel that does not account swap (swapaccount=0) has no memory.swap.max:
        // runc then skips "max" and "0"; a "0" (no swap at all) is not met, so said.
        let absent = match swap.as_str() {
            "max" => Absent::Skip,
            "0" => Absent::Warn("linux.resources.memory.swap"),
            _ => Absent::Fail,
        };
        w.push(Write {
            absent,
            ..write("memory.swap.max", swap)
        });
    }
    w.extend(max.map(|v| write("memory.max", v)));
    w.extend(low.map(|v| write("memory.low", v)));
    Ok(w)
}

/// pids.max: 0 is unset (runc 1.1's reading, when limit was a required field), a
/// negative value unlimited.
fn pids_writes(r: &LinuxResources) -> Vec<Write> {
    match r.pids().as_ref().map(|p| p.limit()) {
        Some(l) if l > 0 => vec![write("pids.max", l.to_string())],
        Some(l) if l < 0 => vec![write("pids.max", "max")],
        _ => Vec::new(),
    }
}

/// cpu.idle, cpu.weight from shares, cpu.max from quota and period, then
/// cpu.max.burst (after the quota, which the kernel checks the burst against). The
/// real-time keys have no v2 interface (cpu.rt_* exist only in v1's cpu controller).
fn cpu_writes(r: &LinuxResources) -> Result<Vec<Write>> {
    let Some(c) = r.cpu() else {
        return Ok(Vec::new());
    };
    if c.realtime_runtime().is_some_and(|n| n != 0) {
        return Err(no_v2(
            "linux.resources.cpu.realtimeRuntime",
            "cpu.rt_runtime_us is v1 only",
        ));
    }
    if c.realtime_period().is_some_and(|n| n != 0) {
        return Err(no_v2(
            "linux.resources.cpu.realtimePeriod",
            "cpu.rt_period_us is v1 only",
        ));
    }
    let mut w = Vec::new();
    // 0 is the default (SCHED_NORMAL weights), written only when asked to change it.
    match c.idle().unwrap_or(0) {
        0 => {}
        1 => w.push(write("cpu.idle", "1")),
        n => {
            return Err(crate::error::config(
                "linux.resources.cpu.idle",
                format!("{n} is neither 0 nor 1"),
            ))
        }
    }
    if let Some(shares) = c.shares().filter(|s| *s != 0) {
        // runc 1.1's conversion (cgroup v1 shares 2..262144 → weight 1..10000).
        let weight = 1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142;
        w.push(write("cpu.weight", weight.to_string()));
    }
    let quota = c.quota().unwrap_or(0);
    let period = c.period().unwrap_or(0);
    if quota != 0 || period != 0 {
        let quota_text = if quota > 0 {
            quota.to_string()
        } else {
            "max".into()
        };
        // The kernel's default period (cgroup-v2.rst, cpu.max), as runc fills it in.
        let period = if period == 0 { 100_000 } else { period };
        w.push(write("cpu.max", format!("{quota_text} {period}")));
    }
    if let Some(burst) = c.burst().filter(|b| *b != 0) {
        // runtime-spec: burst "MUST be no larger than any positive quota".
        if quota > 0 && burst > quota.unsigned_abs() {
            return Err(crate::error::config(
                "linux.resources.cpu.burst",
                format!("{burst} is larger than linux.resources.cpu.quota {quota}"),
            ));
        }
        w.push(write("cpu.max.burst", burst.to_string()));
    }
    Ok(w)
}

/// cpuset.cpus and cpuset.mems from cpu.cpus and cpu.mems, in the kernel's list
/// syntax ("0-3,5"); empty is unset.
fn cpuset_writes(r: &LinuxResources) -> Result<Vec<Write>> {
    let Some(c) = r.cpu() else {
        return Ok(Vec::new());
    };
    let mut w = Vec::new();
    for (key, file, value) in [
        ("linux.resources.cpu.cpus", "cpuset.cpus", c.cpus()),
        ("linux.resources.cpu.mems", "cpuset.mems", c.mems()),
    ] {
        let list = value.as_deref().unwrap_or_default().trim();
        if list.is_empty() {
            continue;
        }
        if !list
            .chars()
            .all(|ch| ch.is_ascii_digit() || ch == ',' || ch == '-')
        {
            return Err(crate::error::config(
                key,
                format!("{list:?} is not a list such as \"0-3,5\""),
            ));
        }
        w.push(write(file, list));
    }
    Ok(w)
}

/// hugetlb.<size>.max for each page size and, where the kernel has reservation
/// accounting (5.7+), hugetlb.<size>.rsvd.max with the same limit, as runc writes
/// both (runtime-spec: limit reservations if supported, else page faults).
fn hugetlb_writes(r: &LinuxResources) -> Result<Vec<Write>> {
    let mut w = Vec::new();
    for h in r.hugepage_limits().iter().flatten() {
        let size = hugepage_size(h.page_size())?;
        let limit = u64::try_from(h.limit()).map_err(|_| {
            crate::error::config(
                "linux.resources.hugepageLimits.limit",
                format!("{} is not a byte count", h.limit()),
            )
        })?;
        w.push(write(format!("hugetlb.{size}.max"), limit.to_string()));
        w.push(Write {
            absent: Absent::Skip,
            ..write(format!("hugetlb.{size}.rsvd.max"), limit.to_string())
        });
    }
    Ok(w)
}

/// runtime-spec: pageSize in the kernel's own unit syntax ("2MB", "1GB"), which names
/// the files: checked to be a plain name before it is joined to a path.
fn hugepage_size(size: &str) -> Result<&str> {
    if size.is_empty() || !size.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(crate::error::config(
            "linux.resources.hugepageLimits.pageSize",
            format!("{size:?} is not a page size"),
        ));
    }
    Ok(size)
}

/// Each page size asked for is one this kernel has (the cgroup, just made, lists its
/// hugetlb.<size>.max files).
fn hugepage_sizes_exist(r: &LinuxResources, dir: &Path) -> Result<()> {
    for h in r.hugepage_limits().iter().flatten() {
        let size = hugepage_size(h.page_size())?;
        let file = format!("hugetlb.{size}.max");
        if !dir.join(&file).exists() {
            return Err(crate::error::config(
                "linux.resources.hugepageLimits.pageSize",
                format!("this kernel has no {size} huge pages (no {file})"),
            ));
        }
    }
    Ok(())
}

/// rdma.max, a line per device: "<device> hca_handle=N hca_object=M" (the kernel's
/// Documentation/admin-guide/cgroup-v2.rst, "RDMA"), devices in name order. The name
/// is the spec's map key: one word, or it would be read as more fields or lines.
fn rdma_writes(r: &LinuxResources) -> Result<Vec<Write>> {
    let Some(map) = r.rdma() else {
        return Ok(Vec::new());
    };
    let mut devices: Vec<_> = map.iter().collect();
    devices.sort_by(|a, b| a.0.cmp(b.0));
    let mut w = Vec::new();
    for (device, limits) in devices {
        let key = format!("linux.resources.rdma.{device}");
        // The kernel's IB_DEVICE_NAME_MAX is 64, its terminating NUL included.
        if device.is_empty() || device.len() > 63 || !device.chars().all(|c| c.is_ascii_graphic()) {
            return Err(crate::error::config(
                "linux.resources.rdma",
                format!("{device:?} is not an RDMA device name"),
            ));
        }
        let mut line = device.clone();
        if let Some(n) = limits.hca_handles() {
            line.push_str(&format!(" hca_handle={n}"));
        }
        if let Some(n) = limits.hca_objects() {
            line.push_str(&format!(" hca_object={n}"));
        }
        if line == *device {
            return Err(crate::error::config(
                &key,
                "sets neither hcaHandles nor hcaObjects",
            ));
        }
        w.push(write("rdma.max", line));
    }
    Ok(w)
}

/// net_cls and net_prio are v1 controllers with no v2 counterpart (v2 matches sockets
/// by cgroup path in nftables/BPF instead).
fn refuse_network(r: &LinuxResources) -> Result<()> {
    let Some(n) = r.network() else { return Ok(()) };
    if n.class_id().is_some_and(|c| c != 0) {
        return Err(no_v2(
            "linux.resources.network.classID",
            "net_cls is a v1 controller",
        ));
    }
    if n.priorities().as_ref().is_some_and(|p| !p.is_empty()) {
        return Err(no_v2(
            "linux.resources.network.priorities",
            "net_prio is a v1 controller",
        ));
    }
    Ok(())
}

/// linux.resources.unified: cgroup v2 files by name, each a controller's file.
fn unified_writes(r: &LinuxResources) -> Result<Vec<Write>> {
    let mut files: Vec<_> = r.unified().iter().flatten().collect();
    // A map: written in name order, so the same spec always writes the same way.
    files.sort();
    let mut w = Vec::new();
    for (file, value) in files {
        if file.is_empty()
            || file.contains('/')
            || file.starts_with('.')
            || file.starts_with("cgroup.")
        {
            return Err(crate::error::config(
                "linux.resources.unified",
                format!("{file:?} is not a controller's file"),
            ));
        }
        w.push(write(file.clone(), value.clone()));
    }
    Ok(w)
}

/// Writes each value into its file in `dir`, in order, a line a write.
fn write_files(dir: &Path, writes: Vec<Write>) -> Result<()> {
    for w in writes {
        let path = dir.join(&w.file);
        if w.absent != Absent::Fail && !path.exists() {
            if let Absent::Warn(key) = w.absent {
                eprintln!(
                    "berth-runtime: warning: {key} not applied: this kernel has no {}",
                    w.file
                );
            }
            continue;
        }
        for line in w.value.lines() {
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

/// linux.resources.blockIO: weights to io.bfq.weight or io.weight (see `WeightFile`),
/// throttles to io.max. Leaf weights were CFQ's, gone with it: v2 has none.
fn io_writes(r: &LinuxResources, weights: WeightFile) -> Result<Vec<Write>> {
    let Some(b) = r.block_io() else {
        return Ok(Vec::new());
    };
    let leaf = b.leaf_weight().is_some_and(|w| w != 0)
        || b.weight_device()
            .iter()
            .flatten()
            .any(|d| d.leaf_weight().is_some_and(|w| w != 0));
    if leaf {
        return Err(no_v2(
            "linux.resources.blockIO.leafWeight",
            "leaf weights were CFQ's; io.weight and io.bfq.weight have none",
        ));
    }
    // v1's 10..1000 onto v2's 1..10000, as runc and crun convert it; BFQ takes v1's.
    let weight = |w: u16| match weights {
        WeightFile::Bfq => w.to_string(),
        WeightFile::Iocost => (1 + (u32::from(w.clamp(10, 1000)) - 10) * 9999 / 990).to_string(),
    };
    let file = match weights {
        WeightFile::Bfq => "io.bfq.weight",
        WeightFile::Iocost => "io.weight",
    };
    let mut lines: Vec<String> = Vec::new();
    // A bare number is the default weight in both files (and all old BFQ takes).
    if let Some(w) = b.weight().filter(|w| *w != 0) {
        lines.push(weight(w));
    }
    for d in b.weight_device().iter().flatten() {
        if let Some(w) = d.weight() {
            lines.push(format!("{}:{} {}", d.major(), d.minor(), weight(w)));
        }
    }
    let mut w = Vec::new();
    if !lines.is_empty() {
        w.push(write(file, lines.join("\n")));
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
        w.push(write("io.max", max.join("\n")));
    }
    Ok(w)
}

pub fn add(dir: &Path, pid: i32) -> Result<()> {
    let path = dir.join("cgroup.procs");
    std::fs::write(&path, pid.to_string()).map_err(io(&path))
}

/// Kills what is left and removes the directory (bounded wait for it to empty).
pub fn remove(dir: &Path) {
    // cgroup.kill (v2, Linux 5.14+) kills every process, new forks included. A v1
    // hierarchy (and an older kernel) has none: each pid listed is killed, again on
    // each try, which also catches processes forked meanwhile.
    let kill_file = dir.join("cgroup.kill");
    let has_kill = kill_file.exists();
    if has_kill {
        let _ = std::fs::write(&kill_file, "1");
    }
    for _ in 0..100 {
        if !has_kill {
            kill_each(dir);
        }
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// SIGKILL to each process in `dir`'s cgroup.procs, never to this one (`exec` puts the
/// runtime in the container's cgroup before it forks).
fn kill_each(dir: &Path) {
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    for pid in pids(dir).into_iter().filter(|p| *p != me && *p > 0) {
        // ESRCH: it exited meanwhile. Between the read and the signal the pid could be
        // reaped and reused: the same narrow window as `kill --all`'s, and only on a
        // host without cgroup.kill.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
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
    fn cgroups_paths_stay_below_the_hierarchy_root() {
        let rel = |p: &str| relative_path(Some(PathBuf::from(p)), "id", false);
        assert_eq!(rel("/a/b").unwrap(), PathBuf::from("a/b"));
        assert_eq!(rel("a/b").unwrap(), PathBuf::from("a/b"));
        assert_eq!(
            relative_path(None, "id", false).unwrap(),
            PathBuf::from("berth-runtime/id")
        );
        for bad in ["", "/", "//", ".", "/./", "a/../..", "/a/../b"] {
            let e = rel(bad).unwrap_err().to_string();
            assert!(e.contains("linux.cgroupsPath"), "{bad:?}: {e}");
        }
    }

    fn res(v: serde_json::Value) -> LinuxResources {
        serde_json::from_value(v).unwrap()
    }

    /// The (file, value) writes `v` comes to on a blk-iocost kernel.
    fn files(v: serde_json::Value) -> Vec<(String, String)> {
        writes(&res(v), WeightFile::Iocost)
            .unwrap()
            .into_iter()
            .map(|w| (w.file, w.value))
            .collect()
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        expected
            .iter()
            .map(|(f, v)| (f.to_string(), v.to_string()))
            .collect()
    }

    /// The refusal `v` gets, which must name `key`, from `check` (what `plan` runs).
    fn refusal(v: serde_json::Value, key: &str) -> Error {
        let e = check(&res(v.clone())).expect_err(key);
        assert!(e.to_string().contains(key), "{v}: {e}");
        e
    }

    #[test]
    fn limits_convert_in_runcs_write_order() {
        let w = files(serde_json::json!({
            "memory": {"limit": 1_048_576, "swap": 3_145_728, "reservation": -1},
            "pids": {"limit": 100},
            "cpu": {"shares": 1024, "quota": 50_000, "burst": 10_000, "idle": 1,
                    "cpus": "0-1", "mems": "0"},
            "blockIO": {"weight": 500,
                        "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 600}]},
            "hugepageLimits": [{"pageSize": "2MB", "limit": 4_194_304}],
            "rdma": {"mlx5_1": {"hcaHandles": 3, "hcaObjects": 10_000}},
            "unified": {"memory.high": "2000000"}
        }));
        assert_eq!(
            w,
            pairs(&[
                ("pids.max", "100"),
                ("memory.swap.max", "2097152"),
                ("memory.max", "1048576"),
                ("memory.low", "max"),
                ("io.weight", "4950"),
                ("io.max", "8:0 rbps=600"),
                ("cpu.idle", "1"),
                ("cpu.weight", "39"),
                ("cpu.max", "50000 100000"),
                ("cpu.max.burst", "10000"),
                ("cpuset.cpus", "0-1"),
                ("cpuset.mems", "0"),
                ("hugetlb.2MB.max", "4194304"),
                ("hugetlb.2MB.rsvd.max", "4194304"),
                ("rdma.max", "mlx5_1 hca_handle=3 hca_object=10000"),
                ("memory.high", "2000000"),
            ])
        );
    }

    #[test]
    fn what_runtimes_write_for_nothing_writes_nothing() {
        // runc 1.1 reads 0 as unset everywhere; -1 swap alone is the default "max".
        let w = files(serde_json::json!({
            "devices": [{"allow": false, "access": "rwm"}],
            "memory": {"limit": 0, "reservation": 0, "swap": 0, "disableOOMKiller": false,
                       "useHierarchy": true, "checkBeforeUpdate": true},
            "cpu": {"shares": 0, "quota": 0, "period": 0, "burst": 0, "idle": 0,
                    "realtimeRuntime": 0, "realtimePeriod": 0, "cpus": "", "mems": " "},
            "pids": {"limit": 0},
            "blockIO": {"weight": 0, "leafWeight": 0, "weightDevice": []},
            "hugepageLimits": [],
            "network": {"classID": 0, "priorities": []},
            "rdma": {},
            "unified": {}
        }));
        assert_eq!(w, pairs(&[]));
    }

    #[test]
    fn memory_values_as_runc_writes_them() {
        let mem = |m: serde_json::Value| files(serde_json::json!({ "memory": m }));
        assert_eq!(
            mem(serde_json::json!({"limit": -1})),
            pairs(&[("memory.swap.max", "max"), ("memory.max", "max")])
        );
        assert_eq!(
            mem(serde_json::json!({"limit": 100, "swap": -1})),
            pairs(&[("memory.swap.max", "max"), ("memory.max", "100")])
        );
        assert_eq!(
            mem(serde_json::json!({"limit": 100, "swap": 100})),
            pairs(&[("memory.swap.max", "0"), ("memory.max", "100")])
        );
        assert_eq!(
            mem(serde_json::json!({"limit": -1, "swap": 300})),
            pairs(&[("memory.swap.max", "300"), ("memory.max", "max")])
        );
        assert_eq!(
            mem(serde_json::json!({"reservation": 50})),
            pairs(&[("memory.low", "50")])
        );
        for (m, key) in [
            (
                serde_json::json!({"swap": 100}),
                "linux.resources.memory.swap",
            ),
            (
                serde_json::json!({"limit": 200, "swap": 100}),
                "linux.resources.memory.swap",
            ),
            (
                serde_json::json!({"limit": 200, "swap": -2}),
                "linux.resources.memory.swap",
            ),
            (
                serde_json::json!({"limit": -2}),
                "linux.resources.memory.limit",
            ),
            (
                serde_json::json!({"reservation": -5}),
                "linux.resources.memory.reservation",
            ),
        ] {
            let e = refusal(serde_json::json!({ "memory": m }), key);
            assert!(matches!(e, Error::Config { .. }), "{e:?}");
        }
    }

    #[test]
    fn swap_without_accounting_is_skipped_or_said() {
        let absent = |m: serde_json::Value| {
            writes(&res(serde_json::json!({ "memory": m })), WeightFile::Iocost).unwrap()[0].absent
        };
        assert_eq!(absent(serde_json::json!({"swap": -1})), Absent::Skip);
        assert_eq!(
            absent(serde_json::json!({"limit": 5, "swap": 5})),
            Absent::Warn("linux.resources.memory.swap")
        );
        assert_eq!(
            absent(serde_json::json!({"limit": 5, "swap": 9})),
            Absent::Fail
        );
    }

    #[test]
    fn kernel_memory_is_warned_about_not_refused() {
        let r = res(serde_json::json!({"memory": {"kernel": 1000, "kernelTCP": -1}}));
        check(&r).unwrap();
        assert_eq!(writes(&r, WeightFile::Iocost).unwrap(), []);
        assert_eq!(
            not_applied(&r),
            [
                "linux.resources.memory.kernel",
                "linux.resources.memory.kernelTCP"
            ]
        );
        assert!(not_applied(&res(serde_json::json!({"memory": {"limit": 1}}))).is_empty());
    }

    #[test]
    fn cpu_keys_as_runc_writes_them() {
        let cpu = |c: serde_json::Value| files(serde_json::json!({ "cpu": c }));
        assert_eq!(
            cpu(serde_json::json!({"period": 50_000})),
            pairs(&[("cpu.max", "max 50000")])
        );
        assert_eq!(
            cpu(serde_json::json!({"quota": -1, "burst": 7})),
            pairs(&[("cpu.max", "max 100000"), ("cpu.max.burst", "7")])
        );
        assert_eq!(
            cpu(serde_json::json!({"shares": 2})),
            pairs(&[("cpu.weight", "1")])
        );
        assert_eq!(
            cpu(serde_json::json!({"shares": 262_144})),
            pairs(&[("cpu.weight", "10000")])
        );
        refusal(
            serde_json::json!({"cpu": {"quota": 1000, "burst": 2000}}),
            "linux.resources.cpu.burst",
        );
        refusal(
            serde_json::json!({"cpu": {"idle": 2}}),
            "linux.resources.cpu.idle",
        );
    }

    #[test]
    fn cpusets_take_only_lists() {
        assert_eq!(
            files(serde_json::json!({"cpu": {"cpus": " 0-3,5\n", "mems": "1"}})),
            pairs(&[("cpuset.cpus", "0-3,5"), ("cpuset.mems", "1")])
        );
        refusal(
            serde_json::json!({"cpu": {"cpus": "0\n1 x"}}),
            "linux.resources.cpu.cpus",
        );
        refusal(
            serde_json::json!({"cpu": {"mems": "all"}}),
            "linux.resources.cpu.mems",
        );
    }

    #[test]
    fn v1_only_keys_are_refused_by_name() {
        for (v, key) in [
            (
                serde_json::json!({"cpu": {"realtimeRuntime": 950_000}}),
                "linux.resources.cpu.realtimeRuntime",
            ),
            (
                serde_json::json!({"cpu": {"realtimeRuntime": -1}}),
                "linux.resources.cpu.realtimeRuntime",
            ),
            (
                serde_json::json!({"cpu": {"realtimePeriod": 1_000_000}}),
                "linux.resources.cpu.realtimePeriod",
            ),
            (
                serde_json::json!({"memory": {"swappiness": 0}}),
                "linux.resources.memory.swappiness",
            ),
            (
                serde_json::json!({"memory": {"swappiness": 60}}),
                "linux.resources.memory.swappiness",
            ),
            (
                serde_json::json!({"memory": {"disableOOMKiller": true}}),
                "linux.resources.memory.disableOOMKiller",
            ),
            (
                serde_json::json!({"memory": {"useHierarchy": false}}),
                "linux.resources.memory.useHierarchy",
            ),
            (
                serde_json::json!({"network": {"classID": 1_048_577}}),
                "linux.resources.network.classID",
            ),
            (
                serde_json::json!({"network": {"priorities": [{"name": "eth0", "priority": 5}]}}),
                "linux.resources.network.priorities",
            ),
            (
                serde_json::json!({"blockIO": {"leafWeight": 10}}),
                "linux.resources.blockIO.leafWeight",
            ),
            (
                serde_json::json!({"blockIO": {"weightDevice": [
                    {"major": 8, "minor": 0, "weight": 500, "leafWeight": 300}]}}),
                "linux.resources.blockIO.leafWeight",
            ),
        ] {
            let e = refusal(v, key);
            assert!(matches!(e, Error::Unsupported(_)), "{key}: {e:?}");
        }
        // u64::MAX is the -1 ("unset") swappiness.
        check(&res(
            serde_json::json!({"memory": {"swappiness": u64::MAX}}),
        ))
        .unwrap();
    }

    #[test]
    fn io_weights_go_to_bfq_or_iocost() {
        let r = res(serde_json::json!({"blockIO": {
            "weight": 10,
            "weightDevice": [{"major": 8, "minor": 16, "weight": 1000},
                             {"major": 8, "minor": 32}],
            "throttleWriteIOPSDevice": [{"major": 8, "minor": 16, "rate": 300}],
            "throttleReadIOPSDevice": [{"major": 8, "minor": 0, "rate": 30}],
            "throttleWriteBpsDevice": [{"major": 8, "minor": 0, "rate": 9}]
        }}));
        let io = |f| -> Vec<(String, String)> {
            writes(&r, f)
                .unwrap()
                .into_iter()
                .map(|w| (w.file, w.value))
                .collect()
        };
        let max = "8:0 wbps=9\n8:0 riops=30\n8:16 wiops=300";
        assert_eq!(
            io(WeightFile::Iocost),
            pairs(&[("io.weight", "1\n8:16 10000"), ("io.max", max)])
        );
        assert_eq!(
            io(WeightFile::Bfq),
            pairs(&[("io.bfq.weight", "10\n8:16 1000"), ("io.max", max)])
        );
    }

    #[test]
    fn rdma_limits_a_line_per_device() {
        assert_eq!(
            files(serde_json::json!({"rdma": {
                "rxe3": {"hcaObjects": 10_000},
                "mlx4_0": {"hcaHandles": 2}
            }})),
            pairs(&[
                ("rdma.max", "mlx4_0 hca_handle=2"),
                ("rdma.max", "rxe3 hca_object=10000"),
            ])
        );
        refusal(
            serde_json::json!({"rdma": {"mlx5_1": {}}}),
            "linux.resources.rdma.mlx5_1",
        );
        for bad in ["", "a b", "a\nmlx hca_handle=0", "x".repeat(64).as_str()] {
            refusal(
                serde_json::json!({"rdma": {bad: {"hcaHandles": 1}}}),
                "linux.resources.rdma",
            );
        }
    }

    #[test]
    fn hugepage_sizes_and_limits_are_checked() {
        refusal(
            serde_json::json!({"hugepageLimits": [{"pageSize": "../2MB", "limit": 1}]}),
            "linux.resources.hugepageLimits.pageSize",
        );
        refusal(
            serde_json::json!({"hugepageLimits": [{"pageSize": "2MB", "limit": -1}]}),
            "linux.resources.hugepageLimits.limit",
        );
        let w = writes(
            &res(serde_json::json!({"hugepageLimits": [{"pageSize": "1GB", "limit": 0}]})),
            WeightFile::Iocost,
        )
        .unwrap();
        assert_eq!(
            w.iter().map(|w| w.absent).collect::<Vec<_>>(),
            [Absent::Fail, Absent::Skip]
        );
    }

    #[test]
    fn unified_takes_only_controller_files() {
        for bad in ["cgroup.procs", "../x", ".hidden", "a/b", ""] {
            refusal(
                serde_json::json!({"unified": {bad: "1"}}),
                "linux.resources.unified",
            );
        }
        assert_eq!(
            files(serde_json::json!({"unified": {"memory.high": "1G", "io.max": "8:0 rbps=1"}})),
            pairs(&[("io.max", "8:0 rbps=1"), ("memory.high", "1G")])
        );
    }

    #[test]
    fn disabled_cgroups_warn_about_every_key() {
        assert!(!has_resources(&res(serde_json::json!({}))));
        for v in [
            serde_json::json!({"memory": {"swappiness": 0}}),
            serde_json::json!({"cpu": {"cpus": "0"}}),
            serde_json::json!({"cpu": {"idle": 1}}),
            serde_json::json!({"pids": {"limit": 1}}),
            serde_json::json!({"blockIO": {"leafWeight": 10}}),
            serde_json::json!({"hugepageLimits": [{"pageSize": "2MB", "limit": 0}]}),
            serde_json::json!({"network": {"classID": 1}}),
            serde_json::json!({"rdma": {"mlx5_1": {"hcaHandles": 3}}}),
            serde_json::json!({"unified": {"memory.high": "1G"}}),
            serde_json::json!({"devices": [{"allow": false, "access": "rwm"}]}),
        ] {
            assert!(has_resources(&res(v.clone())), "{v}");
        }
    }

    #[test]
    fn every_offered_controller_is_enabled_in_each_parent() {
        assert_eq!(enable_line(" \n"), None);
        assert_eq!(
            enable_line("cpuset cpu io memory hugetlb pids rdma misc\n").as_deref(),
            Some("+cpuset +cpu +io +memory +hugetlb +pids +rdma +misc")
        );
        // A plain directory standing in for the hierarchy: each level's own
        // cgroup.controllers decides, and the container's cgroup itself enables none.
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        std::fs::write(root.join("cgroup.controllers"), "cpuset cpu io memory\n").unwrap();
        std::fs::create_dir(root.join("a")).unwrap();
        std::fs::write(root.join("a/cgroup.controllers"), "cpu memory\n").unwrap();
        make_dirs(root, &root.join("a/b/c")).unwrap();
        let control =
            |d: &str| std::fs::read_to_string(root.join(d).join("cgroup.subtree_control")).ok();
        assert_eq!(control(".").as_deref(), Some("+cpuset +cpu +io +memory"));
        assert_eq!(control("a").as_deref(), Some("+cpu +memory"));
        assert_eq!(control("a/b"), None);
        assert!(root.join("a/b/c").is_dir());
        assert_eq!(control("a/b/c"), None);
    }
}
