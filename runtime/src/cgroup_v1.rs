//! linux.resources on a cgroup v1 or hybrid host (Debian 11/12, older Ubuntu, many CI
//! machines), where /sys/fs/cgroup is not a cgroup2 hierarchy with controllers. Berth
//! applies only the device rules there, with the v1 devices controller; every other
//! resource needs v2 controllers and is refused by name (see `v2_only_request`).
//!
//! The v1 devices controller (the kernel's Documentation/admin-guide/cgroup-v1/devices.rst
//! and security/device_cgroup.c) is not an ordered list: a cgroup has a default, allow or
//! deny, and one list of exceptions. Writing "a" to devices.allow or devices.deny sets the
//! default and empties the list; any other line written to the file opposite the default
//! adds an exception (access bits of the same type and numbers are merged into one
//! entry), and written to the default's own file removes access bits from the exception
//! with exactly those type and numbers (a partly matching wildcard entry is silently left
//! alone). With a deny default, a request is allowed when one exception covers all its
//! access; with an allow default, it is denied when any exception shares an access bit.
//!
//! The spec's rules are ordered, the last matching one deciding (`devices::decide`, what
//! the cgroup v2 program does). `translate` builds the default and exception list they
//! come to, then checks that both give the same decision on every request that can
//! differ, and refuses, naming the rule, a list they do not.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxResources};

use crate::devices::{self, Pattern, BLOCK, CHAR, MKNOD, READ, WRITE};
use crate::error::{io, Error, Result};

pub const ALLOW_FILE: &str = "devices.allow";
pub const DENY_FILE: &str = "devices.deny";

/// Bounds the exactness check, which is cubic in the rules after the last unconditional
/// one; real specs have a few dozen (runc's defaults are 11 of them).
const MAX_RULES: usize = 256;

/// The first key of `r` that asks for something only cgroup v2 controllers give on this
/// host (Berth does not drive v1's memory, cpu, pids, blkio... controllers). A key present
/// with nothing set in it is not a request: 0 is "unset" for runc, and -1 "unlimited".
pub fn v2_only_request(r: &LinuxResources) -> Option<&'static str> {
    let positive = |n: Option<i64>| n.is_some_and(|n| n > 0);
    let nonzero = |n: Option<u64>| n.is_some_and(|n| n > 0);
    if let Some(m) = r.memory() {
        let keys = [
            ("linux.resources.memory.limit", positive(m.limit())),
            (
                "linux.resources.memory.reservation",
                positive(m.reservation()),
            ),
            ("linux.resources.memory.swap", positive(m.swap())),
            ("linux.resources.memory.kernel", positive(m.kernel())),
            ("linux.resources.memory.kernelTCP", positive(m.kernel_tcp())),
            // u64::MAX is how -1 ("unset") reaches an unsigned field.
            (
                "linux.resources.memory.swappiness",
                m.swappiness().is_some_and(|s| s != u64::MAX),
            ),
            (
                "linux.resources.memory.disableOOMKiller",
                m.disable_oom_killer() == Some(true),
            ),
        ];
        if let Some((key, _)) = keys.into_iter().find(|(_, set)| *set) {
            return Some(key);
        }
    }
    if let Some(c) = r.cpu() {
        let text = |s: &Option<String>| s.as_ref().is_some_and(|s| !s.trim().is_empty());
        let keys = [
            ("linux.resources.cpu.shares", nonzero(c.shares())),
            ("linux.resources.cpu.quota", positive(c.quota())),
            ("linux.resources.cpu.burst", nonzero(c.burst())),
            ("linux.resources.cpu.period", nonzero(c.period())),
            (
                "linux.resources.cpu.realtimeRuntime",
                c.realtime_runtime().is_some_and(|n| n != 0),
            ),
            (
                "linux.resources.cpu.realtimePeriod",
                nonzero(c.realtime_period()),
            ),
            ("linux.resources.cpu.cpus", text(c.cpus())),
            ("linux.resources.cpu.mems", text(c.mems())),
            ("linux.resources.cpu.idle", c.idle().is_some_and(|n| n != 0)),
        ];
        if let Some((key, _)) = keys.into_iter().find(|(_, set)| *set) {
            return Some(key);
        }
    }
    if r.pids().as_ref().is_some_and(|p| p.limit() > 0) {
        return Some("linux.resources.pids.limit");
    }
    if let Some(b) = r.block_io() {
        let weight = |w: Option<u16>| w.is_some_and(|w| w > 0);
        let keys = [
            ("linux.resources.blockIO.weight", weight(b.weight())),
            (
                "linux.resources.blockIO.leafWeight",
                weight(b.leaf_weight()),
            ),
            (
                "linux.resources.blockIO.weightDevice",
                listed(b.weight_device()),
            ),
            (
                "linux.resources.blockIO.throttleReadBpsDevice",
                listed(b.throttle_read_bps_device()),
            ),
            (
                "linux.resources.blockIO.throttleWriteBpsDevice",
                listed(b.throttle_write_bps_device()),
            ),
            (
                "linux.resources.blockIO.throttleReadIOPSDevice",
                listed(b.throttle_read_iops_device()),
            ),
            (
                "linux.resources.blockIO.throttleWriteIOPSDevice",
                listed(b.throttle_write_iops_device()),
            ),
        ];
        if let Some((key, _)) = keys.into_iter().find(|(_, set)| *set) {
            return Some(key);
        }
    }
    if listed(r.hugepage_limits()) {
        return Some("linux.resources.hugepageLimits");
    }
    if let Some(n) = r.network() {
        if n.class_id().is_some_and(|c| c != 0) {
            return Some("linux.resources.network.classID");
        }
        if listed(n.priorities()) {
            return Some("linux.resources.network.priorities");
        }
    }
    if r.rdma().as_ref().is_some_and(|m| !m.is_empty()) {
        return Some("linux.resources.rdma");
    }
    if r.unified().as_ref().is_some_and(|m| !m.is_empty()) {
        return Some("linux.resources.unified");
    }
    None
}

fn listed<T>(v: &Option<Vec<T>>) -> bool {
    v.as_ref().is_some_and(|v| !v.is_empty())
}

/// Where the v1 devices controller's hierarchy is mounted, from /proc/self/mountinfo.
pub fn devices_mount() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    devices_mount_in(&text)
}

/// The mount point of the first "cgroup" (v1) mount whose options name "devices".
fn devices_mount_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // proc(5): "id parent major:minor root mountpoint options [optional...] -
        // fstype source superoptions".
        let (before, after) = line.split_once(" - ")?;
        let mut after = after.split(' ');
        let (fstype, _source, options) = (after.next()?, after.next()?, after.next()?);
        if fstype != "cgroup" || !options.split(',').any(|o| o == "devices") {
            return None;
        }
        before.split(' ').nth(4).map(unescape)
    })
}

/// mountinfo's octal escapes (space, tab, newline, backslash as \ooo).
fn unescape(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let d = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(d, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// The spec's own rules (before the defaults) are deny-all, optionally followed by
/// allows: what a default spec asks for, which a host without a devices controller may
/// leave unapplied (with a warning) rather than refuse.
pub fn default_shape(rules: &[LinuxDeviceCgroup]) -> bool {
    let Ok(patterns) = parse(rules) else {
        return false;
    };
    match patterns.iter().rposition(|(_, p)| p.unconditional()) {
        Some(k) => !patterns[k].0 && patterns[k + 1..].iter().all(|(allow, _)| *allow),
        None => false,
    }
}

/// Why a rule list cannot be written as v1 rules; `index` is the rule's in the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub index: usize,
    pub problem: String,
}

/// The (file, line) writes that give a fresh v1 devices cgroup exactly `rules`'
/// meaning: "a" to the default's file, then one line per exception.
pub fn translate(
    rules: &[LinuxDeviceCgroup],
) -> std::result::Result<Vec<(&'static str, String)>, Refusal> {
    let patterns = parse(rules)?;
    // Rules before the last unconditional one never decide; with none, no match allows.
    let start = patterns
        .iter()
        .rposition(|(_, p)| p.unconditional())
        .map_or(0, |k| k + 1);
    let default_allow = start == 0 || patterns[start - 1].0;
    let tail = &patterns[start..];
    if tail.len() > MAX_RULES {
        return Err(Refusal {
            index: start + MAX_RULES,
            problem: format!(
                "on a cgroup v1 host berth-runtime translates at most {MAX_RULES} rules after the last unconditional one"
            ),
        });
    }
    let list = exceptions(default_allow, tail);
    if let Some(q) = first_difference(&patterns, start, default_allow, &list) {
        return Err(blame(&patterns, start, default_allow, q));
    }
    let (default_file, exception_file) = if default_allow {
        (ALLOW_FILE, DENY_FILE)
    } else {
        (DENY_FILE, ALLOW_FILE)
    };
    let mut writes = vec![(default_file, "a".to_string())];
    writes.extend(list.iter().map(|e| (exception_file, e.line())));
    Ok(writes)
}

/// Makes the cgroup directory and writes the rules into it (before any process joins).
pub fn create(dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<()> {
    let writes = translate(rules).map_err(|r| {
        crate::error::config(&format!("linux.resources.devices[{}]", r.index), r.problem)
    })?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    for (file, line) in writes {
        let path = dir.join(file);
        std::fs::write(&path, &line).map_err(|e| {
            Error::Setup(format!(
                "cgroup: writing {line:?} to {}: {e}",
                path.display()
            ))
        })?;
    }
    Ok(())
}

fn parse(rules: &[LinuxDeviceCgroup]) -> std::result::Result<Vec<(bool, Pattern)>, Refusal> {
    rules
        .iter()
        .enumerate()
        .map(|(index, r)| {
            devices::pattern(r)
                .map(|p| (r.allow(), p))
                .map_err(|problem| Refusal { index, problem })
        })
        .collect()
}

/// One entry of a v1 exception list: a single type, as the kernel keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Exception {
    kind: i32,
    major: Option<i32>,
    minor: Option<i32>,
    access: i32,
}

impl Exception {
    fn covers_device(&self, kind: i32, major: i32, minor: i32) -> bool {
        self.kind == kind
            && self.major.is_none_or(|m| m == major)
            && self.minor.is_none_or(|m| m == minor)
    }

    /// devices.allow/deny syntax: "c 1:3 rwm", "b *:* m".
    fn line(&self) -> String {
        let number = |n: Option<i32>| n.map_or("*".to_string(), |n| n.to_string());
        let mut access = String::new();
        for (bit, c) in [(READ, 'r'), (WRITE, 'w'), (MKNOD, 'm')] {
            if self.access & bit != 0 {
                access.push(c);
            }
        }
        let kind = if self.kind == BLOCK { 'b' } else { 'c' };
        format!(
            "{kind} {}:{} {access}",
            number(self.major),
            number(self.minor)
        )
    }
}

/// The exception list the kernel ends up with when each rule after the last
/// unconditional one is written to its file in order (see the module comment).
fn exceptions(default_allow: bool, tail: &[(bool, Pattern)]) -> Vec<Exception> {
    let mut list: Vec<Exception> = Vec::new();
    for (allow, p) in tail {
        if p.access == 0 {
            continue; // matches no request
        }
        // "a" in a line means everything; a typed-"a" rule is one line per type.
        let kinds = p.kind.map_or(vec![CHAR, BLOCK], |k| vec![k]);
        for kind in kinds {
            let same = list
                .iter()
                .position(|e| e.kind == kind && e.major == p.major && e.minor == p.minor);
            match (*allow != default_allow, same) {
                (true, Some(i)) => list[i].access |= p.access,
                (true, None) => list.push(Exception {
                    kind,
                    major: p.major,
                    minor: p.minor,
                    access: p.access,
                }),
                (false, Some(i)) => {
                    list[i].access &= !p.access;
                    if list[i].access == 0 {
                        list.remove(i);
                    }
                }
                (false, None) => {}
            }
        }
    }
    list
}

/// The kernel's v1 decision (security/device_cgroup.c): with a deny default one
/// exception must cover the whole request; with an allow default any exception sharing
/// an access bit denies it.
fn v1_allows(default_allow: bool, list: &[Exception], q: Request) -> bool {
    let mut on_device = list
        .iter()
        .filter(|e| e.covers_device(q.kind, q.major, q.minor));
    if default_allow {
        !on_device.any(|e| e.access & q.access != 0)
    } else {
        on_device.any(|e| q.access & !e.access == 0)
    }
}

/// What a process can ask of a device node: mknod, or an open for read, write or both
/// (the kernel checks an open's read and write access together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Request {
    kind: i32,
    access: i32,
    major: i32,
    minor: i32,
}

impl Request {
    fn describe(&self) -> String {
        let what = match self.access {
            MKNOD => "mknod",
            READ => "a read-only open",
            WRITE => "a write-only open",
            _ => "a read-write open",
        };
        let kind = if self.kind == BLOCK { 'b' } else { 'c' };
        format!("{what} of {kind} {}:{}", self.major, self.minor)
    }
}

/// Both decisions depend on a device number only through equality with the numbers
/// the rules name, so each named number and one unnamed one stand for all.
fn requests(tail: &[(bool, Pattern)]) -> Vec<Request> {
    let numbers = |f: fn(&Pattern) -> Option<i32>| {
        let mut set: BTreeSet<i32> = tail.iter().filter_map(|(_, p)| f(p)).collect();
        if let Some(unnamed) = (0..).find(|n| !set.contains(n)) {
            set.insert(unnamed);
        }
        set
    };
    let (majors, minors) = (numbers(|p| p.major), numbers(|p| p.minor));
    let mut all = Vec::new();
    for kind in [CHAR, BLOCK] {
        for access in [MKNOD, READ, WRITE, READ | WRITE] {
            for &major in &majors {
                for &minor in &minors {
                    all.push(Request {
                        kind,
                        access,
                        major,
                        minor,
                    });
                }
            }
        }
    }
    all
}

fn ordered_allows(patterns: &[(bool, Pattern)], q: Request) -> bool {
    devices::decide(patterns, q.kind, q.access, q.major, q.minor)
}

/// A request on which the ordered rules and the v1 list disagree.
fn first_difference(
    patterns: &[(bool, Pattern)],
    start: usize,
    default_allow: bool,
    list: &[Exception],
) -> Option<Request> {
    requests(&patterns[start..])
        .into_iter()
        .find(|q| ordered_allows(patterns, *q) != v1_allows(default_allow, list, *q))
}

/// Names the first rule after which the translation goes wrong on `q`.
fn blame(patterns: &[(bool, Pattern)], start: usize, default_allow: bool, q: Request) -> Refusal {
    let index = (start..patterns.len())
        .find(|&i| {
            let list = exceptions(default_allow, &patterns[start..=i]);
            ordered_allows(&patterns[..=i], q) != v1_allows(default_allow, &list, q)
        })
        .unwrap_or(patterns.len().saturating_sub(1));
    let (rules, v1) = if ordered_allows(patterns, q) {
        ("allow", "denied")
    } else {
        ("deny", "allowed")
    };
    Refusal {
        index,
        problem: format!(
            "cgroup v1's devices controller (a default and exceptions, not an ordered list) cannot express these rules on this host: {} would be {v1} there, and the rules {rules} it",
            q.describe()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxDeviceType::{self, A, B, C};

    fn rule(
        allow: bool,
        typ: LinuxDeviceType,
        major: Option<i64>,
        minor: Option<i64>,
        access: &str,
    ) -> LinuxDeviceCgroup {
        let mut r = LinuxDeviceCgroup::default();
        r.set_allow(allow);
        r.set_typ(Some(typ));
        r.set_major(major);
        r.set_minor(minor);
        r.set_access(Some(access.to_string()));
        r
    }

    fn deny_all() -> LinuxDeviceCgroup {
        rule(false, A, None, None, "rwm")
    }

    fn lines<'a>(writes: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
        writes.iter().map(|(f, l)| (*f, l.as_str())).collect()
    }

    #[test]
    fn default_spec_with_runc_defaults() {
        let rules = devices::with_defaults(&[deny_all()]).unwrap();
        assert_eq!(
            lines(&translate(&rules).unwrap()),
            [
                (DENY_FILE, "a"),
                (ALLOW_FILE, "c *:* m"),
                (ALLOW_FILE, "b *:* m"),
                (ALLOW_FILE, "c 1:3 rwm"),
                (ALLOW_FILE, "c 1:5 rwm"),
                (ALLOW_FILE, "c 1:7 rwm"),
                (ALLOW_FILE, "c 1:8 rwm"),
                (ALLOW_FILE, "c 1:9 rwm"),
                (ALLOW_FILE, "c 5:0 rwm"),
                (ALLOW_FILE, "c 5:1 rwm"),
                (ALLOW_FILE, "c 5:2 rwm"),
                (ALLOW_FILE, "c 136:* rwm"),
            ]
        );
    }

    #[test]
    fn rules_before_the_last_unconditional_one_are_dropped() {
        let rules = [
            rule(true, C, Some(10), Some(237), "rwm"),
            deny_all(),
            rule(true, C, Some(10), Some(200), "rw"),
            rule(true, A, Some(7), None, "r"),
        ];
        assert_eq!(
            lines(&translate(&rules).unwrap()),
            [
                (DENY_FILE, "a"),
                (ALLOW_FILE, "c 10:200 rw"),
                (ALLOW_FILE, "c 7:* r"),
                (ALLOW_FILE, "b 7:* r"),
            ]
        );
    }

    #[test]
    fn allow_default_with_deny_exceptions() {
        // No unconditional rule: a request nothing matches is allowed.
        let rules = [
            rule(false, B, Some(8), None, "rwm"),
            rule(false, C, Some(10), Some(237), "rw"),
            // Re-allows exactly what an exception denies: removes it.
            rule(true, C, Some(10), Some(237), "rw"),
            // Allows what nothing denied: nothing to write.
            rule(true, C, Some(1), Some(3), "rwm"),
        ];
        assert_eq!(
            lines(&translate(&rules).unwrap()),
            [(ALLOW_FILE, "a"), (DENY_FILE, "b 8:* rwm")]
        );
        // An unconditional allow at the end: nothing restricts.
        let rules = [deny_all(), rule(true, A, None, None, "rwm")];
        assert_eq!(lines(&translate(&rules).unwrap()), [(ALLOW_FILE, "a")]);
    }

    #[test]
    fn narrowing_an_exception_of_the_same_numbers_is_exact() {
        let rules = [
            deny_all(),
            rule(true, C, Some(10), Some(237), "rwm"),
            // A later deny of the same device's mknod: v1 removes that bit.
            rule(false, C, Some(10), Some(237), "m"),
        ];
        assert_eq!(
            lines(&translate(&rules).unwrap()),
            [(DENY_FILE, "a"), (ALLOW_FILE, "c 10:237 rw")]
        );
    }

    #[test]
    fn lists_v1_cannot_express_are_refused_naming_the_rule() {
        // A hole punched in a wildcard exception: v1 ignores the deny.
        let rules = [
            deny_all(),
            rule(true, C, Some(10), None, "rwm"),
            rule(false, C, Some(10), Some(237), "rwm"),
        ];
        let e = translate(&rules).unwrap_err();
        assert_eq!(e.index, 2, "{e:?}");
        assert!(
            e.problem.contains("c 10:237 would be allowed there"),
            "{e:?}"
        );

        // v1 merges two allows of one device into one "rw" entry, which lets a
        // read-write open through that neither rule allows alone.
        let rules = [
            deny_all(),
            rule(true, C, Some(10), Some(237), "r"),
            rule(true, C, Some(10), Some(237), "w"),
        ];
        let e = translate(&rules).unwrap_err();
        assert_eq!(e.index, 2, "{e:?}");
        assert!(e.problem.contains("a read-write open of c 10:237"), "{e:?}");

        // With an allow default, v1 denies any request sharing a bit with a deny
        // exception; the ordered rules deny only what the rule's access covers.
        let rules = [rule(false, B, Some(8), Some(0), "w")];
        let e = translate(&rules).unwrap_err();
        assert_eq!(e.index, 0, "{e:?}");
        assert!(e.problem.contains("b 8:0 would be denied"), "{e:?}");

        // Later rules can make a list exact again: only the final meaning counts.
        let rules = [
            deny_all(),
            rule(true, C, Some(10), Some(237), "r"),
            rule(true, C, Some(10), Some(237), "w"),
            rule(true, C, Some(10), Some(237), "rw"),
        ];
        assert_eq!(
            lines(&translate(&rules).unwrap()),
            [(DENY_FILE, "a"), (ALLOW_FILE, "c 10:237 rw")]
        );
    }

    #[test]
    fn bad_rules_and_long_lists_are_named() {
        let mut bad = deny_all();
        bad.set_access(Some("rx".into()));
        let e = translate(&[deny_all(), bad]).unwrap_err();
        assert_eq!(e.index, 1);
        let mut rules = vec![deny_all()];
        rules.extend(
            (0..=i64::try_from(MAX_RULES).unwrap()).map(|n| rule(true, C, Some(n), None, "r")),
        );
        assert_eq!(translate(&rules).unwrap_err().index, MAX_RULES + 1);
    }

    #[test]
    fn default_shapes() {
        assert!(default_shape(&[deny_all()]));
        assert!(default_shape(&[
            deny_all(),
            rule(true, C, Some(10), Some(200), "rwm")
        ]));
        assert!(!default_shape(&[]));
        assert!(!default_shape(&[rule(false, B, Some(8), None, "rwm")]));
        assert!(!default_shape(&[
            deny_all(),
            rule(false, C, Some(1), Some(3), "rwm")
        ]));
    }

    #[test]
    fn only_requests_are_refused() {
        let keys = |v: serde_json::Value| {
            let r: LinuxResources = serde_json::from_value(v).unwrap();
            v2_only_request(&r)
        };
        // What runtimes write when nothing is asked for.
        assert_eq!(
            keys(serde_json::json!({
                "devices": [{"allow": false, "access": "rwm"}],
                "memory": {"limit": 0, "swap": -1, "disableOOMKiller": false},
                "cpu": {"shares": 0, "quota": -1, "cpus": ""},
                "pids": {"limit": 0},
                "blockIO": {"weightDevice": []},
                "hugepageLimits": [],
                "network": {},
                "unified": {}
            })),
            None
        );
        for (v, key) in [
            (
                serde_json::json!({"memory": {"limit": 1}}),
                "linux.resources.memory.limit",
            ),
            (
                serde_json::json!({"cpu": {"cpus": "0"}}),
                "linux.resources.cpu.cpus",
            ),
            (
                serde_json::json!({"pids": {"limit": 10}}),
                "linux.resources.pids.limit",
            ),
            (
                serde_json::json!({"blockIO": {"weight": 100}}),
                "linux.resources.blockIO.weight",
            ),
            (
                serde_json::json!({"hugepageLimits": [{"pageSize": "2MB", "limit": 0}]}),
                "linux.resources.hugepageLimits",
            ),
            (
                serde_json::json!({"network": {"classID": 3}}),
                "linux.resources.network.classID",
            ),
            (
                serde_json::json!({"rdma": {"mlx5_1": {"hcaHandles": 3}}}),
                "linux.resources.rdma",
            ),
            (
                serde_json::json!({"unified": {"memory.high": "1G"}}),
                "linux.resources.unified",
            ),
        ] {
            assert_eq!(keys(v), Some(key));
        }
    }

    #[test]
    fn finds_the_devices_hierarchy() {
        let info = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
            35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
            36 31 0:33 / /sys/fs/cgroup/dev\\040ices rw shared:9 - cgroup cgroup rw,devices\n\
            41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            devices_mount_in(info),
            Some(PathBuf::from("/sys/fs/cgroup/dev ices"))
        );
        assert_eq!(
            devices_mount_in("41 31 0:38 / /u rw - cgroup2 cgroup2 rw"),
            None
        );
    }
}
