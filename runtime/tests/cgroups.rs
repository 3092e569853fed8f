//! berth-runtime's resources on a cgroup v1 or hybrid host, as this build machine is
//! (v1 controllers under /sys/fs/cgroup/<name>, an empty cgroup2 at .../unified): the
//! device rules through the v1 devices controller with runc's default allow list,
//! every other resource refused by name. Each test returns early on a cgroup v2 host,
//! where the QEMU guest tests cover cgroups.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::common::*;

const DEVICES: &str = "/sys/fs/cgroup/devices";

/// Whether this is a v1/hybrid host with the devices controller mounted where the
/// tests look for it; else says why the test does nothing.
fn v1_devices_host() -> bool {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        eprintln!("skipped: a cgroup v2 host (the QEMU guest tests cover it)");
        return false;
    }
    if !Path::new(DEVICES).join("devices.list").exists() {
        eprintln!("skipped: no v1 devices controller at {DEVICES}");
        return false;
    }
    true
}

/// A container ID no other test (of this or another test binary) uses at once: the
/// cgroup directory berth-runtime/<id> is shared by the whole host.
fn id(name: &str) -> String {
    format!("cgv1-{name}-{}", std::process::id())
}

fn cgroup_dir(id: &str) -> PathBuf {
    Path::new(DEVICES).join("berth-runtime").join(id)
}

/// `runc spec`'s resources (and containerd's): one deny-all device rule. CAP_MKNOD is
/// added so that only the device rules decide whether mknod works.
fn default_devices(b: &Bundle) {
    b.edit(|c| {
        c["linux"]["resources"] = json!({"devices": [{"allow": false, "access": "rwm"}]});
        for set in ["bounding", "effective", "permitted"] {
            c["process"]["capabilities"][set]
                .as_array_mut()
                .unwrap()
                .push(json!("CAP_MKNOD"));
        }
    });
}

/// runtime-spec config-linux.md "Allowed Device list"; runc appends its own allow list
/// (null, zero, full, random, urandom, tty, console, ptmx, /dev/pts/*, mknod of any
/// node) after the spec's rules. Before the fix any linux.resources was refused here.
#[test]
fn a_default_bundle_runs_with_runcs_default_devices() {
    if !v1_devices_host() {
        return;
    }
    let b = sh(concat!(
        "mknod /tmp/n c 1 3 && echo mknod=ok; ",
        "echo zero=$(head -c1 /dev/zero | wc -c); ",
        "echo x > /dev/null && echo null=ok"
    ));
    default_devices(&b);
    let id = id("default");
    let (code, out, err) = b.run(&id);
    assert_eq!(code, 0, "{out}{err}");
    for want in ["mknod=ok", "zero=1", "null=ok"] {
        assert!(
            out.lines().any(|l| l == want),
            "{want:?} not in:\n{out}{err}"
        );
    }
    b.assert_clean();
    assert!(!cgroup_dir(&id).exists());
}

/// /dev/loop-control (c 10:237) is outside the default list: its node can be made
/// (mknod of any node is allowed) but not opened under deny-all; an allow rule for it
/// opens it. The kernel checks the devices cgroup before the driver's open.
#[test]
fn a_device_outside_the_defaults_needs_its_own_allow_rule() {
    if !v1_devices_host() {
        return;
    }
    let script = concat!(
        "mknod /dev/lc c 10 237 && echo mknod=ok; ",
        "(: < /dev/lc) 2>&1 && echo open=ok; exit 0"
    );
    let b = sh(script);
    default_devices(&b);
    let (code, out, err) = b.run(&id("denied"));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.lines().any(|l| l == "mknod=ok"), "{out}{err}");
    assert!(out.contains("Operation not permitted"), "{out}{err}");
    assert!(!out.contains("open=ok"), "{out}{err}");

    b.edit(|c| {
        c["linux"]["resources"]["devices"]
            .as_array_mut()
            .unwrap()
            .push(json!({"allow": true, "type": "c", "major": 10, "minor": 237, "access": "rw"}));
    });
    let (code, out, err) = b.run(&id("allowed"));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.lines().any(|l| l == "open=ok"), "{out}{err}");
    b.assert_clean();
}

/// While created, the container's init is in its own devices cgroup, which lists the
/// rules (kernel cgroup-v1/devices.rst: devices.list shows the exceptions of a deny
/// default); `ps` reads it; `delete` removes it.
#[test]
fn the_init_sits_in_its_devices_cgroup_until_delete() {
    if !v1_devices_host() {
        return;
    }
    let b = Bundle::new(&["sleep", "100"]);
    default_devices(&b);
    let id = id("created");
    let (ok, err) = b.runtime_detached(&["create", "--bundle", ".", &id]);
    assert!(ok, "{err}");
    let pid = b.state(&id)["pid"].as_i64().unwrap();
    let dir = cgroup_dir(&id);
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
    assert_eq!(procs.trim(), pid.to_string());
    let list = std::fs::read_to_string(dir.join("devices.list")).unwrap();
    let mut got: Vec<&str> = list.lines().collect();
    let mut want = vec![
        "c *:* m",
        "b *:* m",
        "c 1:3 rwm",
        "c 1:5 rwm",
        "c 1:7 rwm",
        "c 1:8 rwm",
        "c 1:9 rwm",
        "c 5:0 rwm",
        "c 5:1 rwm",
        "c 5:2 rwm",
        "c 136:* rwm",
    ];
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want);
    let ps = b.runtime(&["ps", "--format", "json", &id]);
    let pids: Vec<i64> = serde_json::from_slice(&ps.stdout).unwrap();
    assert_eq!(pids, [pid]);
    let out = b.runtime(&["delete", "--force", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir.exists(), "{} left behind", dir.display());
    b.assert_clean();
}

/// Only the devices controller is used on such a host: a memory limit is refused by
/// `create`, naming the key, and nothing is made.
#[test]
fn a_memory_limit_is_refused_naming_the_key() {
    if !v1_devices_host() {
        return;
    }
    let b = sh("exit 0");
    default_devices(&b);
    b.edit(|c| c["linux"]["resources"]["memory"] = json!({"limit": 67_108_864}));
    let id = id("memory");
    let (ok, err) = b.runtime_detached(&["create", "--bundle", ".", &id]);
    assert!(!ok, "accepted");
    assert!(err.contains("linux.resources.memory"), "{err}");
    b.assert_clean();
    assert!(!cgroup_dir(&id).exists());
    // Present but asking for nothing (0 is runc's "unset"): not a request.
    b.edit(|c| c["linux"]["resources"]["memory"] = json!({"limit": 0}));
    let (code, out, err) = b.run(&id);
    assert_eq!(code, 0, "{out}{err}");
}

/// A list the v1 controller cannot express (two allows of one device that v1 merges
/// into one read-write entry, which neither rule allows alone) is refused naming the
/// rule, before anything is made.
#[test]
fn rules_v1_cannot_express_are_refused_naming_the_rule() {
    if !v1_devices_host() {
        return;
    }
    let b = Bundle::new(&["true"]);
    b.edit(|c| {
        c["linux"]["resources"] = json!({"devices": [
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 10, "minor": 237, "access": "r"},
            {"allow": true, "type": "c", "major": 10, "minor": 237, "access": "w"}
        ]});
    });
    let id = id("inexact");
    let (ok, err) = b.runtime_detached(&["create", "--bundle", ".", &id]);
    assert!(!ok, "accepted");
    assert!(err.contains("linux.resources.devices[2]"), "{err}");
    b.assert_clean();
    assert!(!cgroup_dir(&id).exists());
}
