//! berth-runtime inside the test image, where cgroup v2 is whole (the build machine's
//! hybrid cgroups have no v2 controllers): resource limits enforced on busybox
//! containers, driven through testd.

mod common;

use berth_tests::testd::TestdClient;
use common::{boot, config};
use serde_json::{json, Value};

const APPLETS: &str = "sh cat echo head tr seq sleep wc grep insmod";

/// A busybox bundle at /tmp/NAME in the guest, its config `cfg`.
fn bundle(testd: &mut TestdClient, name: &str, cfg: &Value) {
    let dir = format!("/tmp/{name}");
    let setup = format!(
        "set -e; mkdir -p {dir}/rootfs/bin {dir}/rootfs/proc {dir}/rootfs/dev {dir}/rootfs/sys {dir}/rootfs/tmp; \
         cp /usr/bin/busybox {dir}/rootfs/bin/; for a in {APPLETS}; do ln -sf busybox {dir}/rootfs/bin/$a; done"
    );
    let out = testd.sh(&setup).unwrap();
    assert_eq!(out.exit_code, Some(0), "{out:?}");
    let out = testd
        .run_with(
            &["sh", "-c", &format!("cat > {dir}/config.json")],
            Some(&cfg.to_string()),
            std::time::Duration::from_secs(30),
        )
        .unwrap();
    assert_eq!(out.exit_code, Some(0), "{out:?}");
}

fn config_for(script: &str, resources: Value) -> Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": ["sh", "-c", script],
            "env": ["PATH=/bin"],
            "cwd": "/",
            "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]},
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "limited",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}, {"type": "network"}],
            "resources": resources,
            "maskedPaths": ["/proc/kcore", "/proc/sysrq-trigger"],
            "readonlyPaths": ["/proc/sys"]
        }
    })
}

/// `berth-runtime run` in the guest: (exit code, stdout, stderr).
fn run(testd: &mut TestdClient, name: &str) -> (i32, String, String) {
    let out = testd
        .run_with(
            &[
                "berth-runtime",
                "--root",
                "/run/rt",
                "run",
                "--bundle",
                &format!("/tmp/{name}"),
                name,
            ],
            None,
            std::time::Duration::from_secs(120),
        )
        .unwrap();
    (out.exit_code.unwrap_or(-1), out.stdout, out.stderr)
}

#[test]
fn resource_limits_are_enforced_in_a_cgroup_v2_guest() {
    // A blank scratch disk, for io.max to name.
    let scratch = tempfile::NamedTempFile::new().unwrap();
    scratch.as_file().set_len(16 << 20).unwrap();
    let mut cfg = config("runtime-limits");
    cfg.disk = Some(scratch.path().to_path_buf());
    let vm = boot(cfg);
    let mut testd = vm.testd().expect("testd");

    // Memory: 32 MiB, no swap; a shell holding ~64 MB is OOM-killed, and said so.
    let mem = config_for(
        "cat /sys/fs/cgroup/memory.max; x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived",
        json!({"memory": {"limit": 33554432, "swap": 33554432}}),
    );
    bundle(&mut testd, "mem", &mem);
    let (code, out, err) = run(&mut testd, "mem");
    assert_eq!(out.lines().next(), Some("33554432"), "{out}{err}");
    assert!(!out.contains("survived"), "{out}");
    assert_eq!(code, 137, "{out}{err}");
    assert!(err.contains("OOM-killed"), "{err}");

    // pids: 8; forking 20 sleepers fails past the limit.
    let pids = config_for(
        "cat /sys/fs/cgroup/pids.max; n=0; for i in $(seq 20); do sleep 5 & n=$((n+1)); done; echo started",
        json!({"pids": {"limit": 8}}),
    );
    bundle(&mut testd, "pids", &pids);
    let (_, out, err) = run(&mut testd, "pids");
    assert_eq!(out.lines().next(), Some("8"), "{out}{err}");
    assert!(
        err.contains("fork") || err.contains("Resource temporarily unavailable"),
        "{err}"
    );

    // cpu: quota and weight land in the container's own cgroup (cgroup namespace).
    let cpu = config_for(
        "cat /sys/fs/cgroup/cpu.max /sys/fs/cgroup/cpu.weight; grep -c . /proc/self/cgroup; cat /proc/self/cgroup",
        json!({"cpu": {"quota": 50000, "period": 100000, "shares": 1024}}),
    );
    bundle(&mut testd, "cpu", &cpu);
    let (code, out, err) = run(&mut testd, "cpu");
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "50000 100000", "{out}");
    assert_eq!(lines[1], "39", "shares 1024 is weight 39: {out}");
    assert_eq!(
        lines.last(),
        Some(&"0::/"),
        "the cgroup namespace hides the host path: {out}"
    );

    // io throttles, hugetlb, memory.low and a unified file, on the guest's disk.
    let disk = testd.sh("cat /sys/block/vda/dev").unwrap().stdout;
    let (major, minor) = disk.trim().split_once(':').expect("vda's major:minor");
    let (major, minor): (i64, i64) = (major.parse().unwrap(), minor.parse().unwrap());
    let io = config_for(
        "cd /sys/fs/cgroup; cat io.max hugetlb.2MB.max memory.low memory.high",
        json!({
            "blockIO": {
                "throttleReadBpsDevice": [{"major": major, "minor": minor, "rate": 1048576}],
                "throttleWriteIOPSDevice": [{"major": major, "minor": minor, "rate": 2000}]
            },
            "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}],
            "memory": {"reservation": 1048576},
            "unified": {"memory.high": "67108864"}
        }),
    );
    bundle(&mut testd, "io", &io);
    let (code, out, err) = run(&mut testd, "io");
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            format!("{major}:{minor} rbps=1048576 wbps=max riops=max wiops=2000").as_str(),
            "4194304",
            "1048576",
            "67108864"
        ],
        "{out}{err}"
    );

    // Device rules (an eBPF program on the cgroup), shaped as docker's: deny everything,
    // allow mknod of any node (the runtime makes /dev's), /dev/null, and reading
    // /dev/zero; /dev/full stays a node that cannot be opened.
    let dev = config_for(
        concat!(
            "echo x > /dev/null && echo null=ok; head -c 3 /dev/zero | wc -c; ",
            "echo x > /dev/zero 2>/dev/null || echo zero-write=denied; ",
            "cat /dev/full 2>/dev/null || echo full=denied"
        ),
        json!({"devices": [
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "access": "m"},
            {"allow": true, "type": "b", "access": "m"},
            {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rw"},
            {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "r"}
        ]}),
    );
    bundle(&mut testd, "dev", &dev);
    let (code, out, err) = run(&mut testd, "dev");
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(
        lines,
        ["null=ok", "3", "zero-write=denied", "full=denied"],
        "{out}{err}"
    );

    // What the build machine's kernel lacks: /proc/kcore and sysrq-trigger (masked),
    // module loading (init_module(2) says EPERM without CAP_SYS_MODULE).
    let masked = config_for(
        concat!(
            "echo kcore=$(cat /proc/kcore | wc -c); echo sysrq=$(cat /proc/sysrq-trigger | wc -c); ",
            "head -c 64 /dev/zero > /tmp/x.ko; echo module=$(insmod /tmp/x.ko 2>&1)"
        ),
        json!({}),
    );
    bundle(&mut testd, "masked", &masked);
    let (code, out, err) = run(&mut testd, "masked");
    assert!(
        out.contains("kcore=0") && out.contains("sysrq=0"),
        "{out}{err}"
    );
    assert!(
        out.contains("module=") && out.contains("not permitted"),
        "{code} {out}{err}"
    );

    // Nothing left behind: no state, no cgroups.
    let left = testd
        .sh("ls /run/rt; find /sys/fs/cgroup/berth-runtime -mindepth 1 -type d; true")
        .unwrap();
    assert_eq!(left.stdout.trim(), "", "left behind: {}", left.stdout);
}
