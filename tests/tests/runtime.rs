//! berth-runtime inside the test image, where cgroup v2 is whole (the build machine's
//! hybrid cgroups have no v2 controllers): resource limits enforced on busybox
//! containers, driven through testd.

use crate::common::{boot, config};
use berth_tests::testd::TestdClient;
use serde_json::{json, Value};

const APPLETS: &str =
    "sh cat echo head tr seq sleep wc grep insmod id mkdir mknod sed sort stat hostname ls";

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

    // Device rules (an eBPF program on the cgroup): deny everything, then allow reading
    // the scratch disk; runc's built-in list follows the spec's rules (config-linux.md
    // "Allowed Device list"; runc appends its defaults), so /dev/null and /dev/zero
    // work and mknod of any node is allowed, while another device stays shut.
    let dev = with_caps(
        config_for(
            &format!(
                concat!(
                    "echo x > /dev/null && echo null=ok; head -c 3 /dev/zero | wc -c; ",
                    "mknod /tmp/vda b {major} {minor} && head -c 512 /tmp/vda | wc -c; ",
                    "(echo x > /tmp/vda) 2>&1 | grep -q 'not permitted' && echo vda-write=denied; ",
                    "mknod /tmp/lc c 10 237 && (: < /tmp/lc) 2>&1 | grep -q 'not permitted' && echo loop-control=denied"
                ),
                major = major,
                minor = minor
            ),
            json!({"devices": [
                {"allow": false, "access": "rwm"},
                {"allow": true, "type": "b", "major": major, "minor": minor, "access": "r"}
            ]}),
        ),
        &["CAP_KILL", "CAP_MKNOD"],
    );
    bundle(&mut testd, "dev", &dev);
    let (code, out, err) = run(&mut testd, "dev");
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(
        lines,
        [
            "null=ok",
            "3",
            "512",
            "vda-write=denied",
            "loop-control=denied"
        ],
        "{out}{err}"
    );

    // cpuset and a burst (every controller the parent offers is enabled, as runc
    // does); a v1-only key is refused naming it, before anything is made.
    let cpuset = config_for(
        "cd /sys/fs/cgroup; cat cpuset.cpus.effective cpu.max.burst cgroup.controllers",
        json!({"cpu": {"cpus": "0", "quota": 50000, "period": 100000, "burst": 10000}}),
    );
    bundle(&mut testd, "cpuset", &cpuset);
    let (code, out, err) = run(&mut testd, "cpuset");
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["0", "10000"], "{out}{err}");
    assert!(
        lines[2].contains("cpuset") && lines[2].contains("pids"),
        "{out}"
    );
    let swappy = config_for("true", json!({"memory": {"swappiness": 0}}));
    bundle(&mut testd, "swappy", &swappy);
    let (code, out, err) = run(&mut testd, "swappy");
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("linux.resources.memory.swappiness"), "{err}");

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

    conformance::runs_what_runc_runs(&mut testd);
    conformance::apparmor_profiles_apply(&mut testd);

    // Nothing left behind: no state, no cgroups.
    let left = testd
        .sh("ls /run/rt; find /sys/fs/cgroup/berth-runtime -mindepth 1 -type d; true")
        .unwrap();
    assert_eq!(left.stdout.trim(), "", "left behind: {}", left.stdout);
}

/// `cfg` with these capabilities in every set but ambient.
fn with_caps(mut cfg: Value, caps: &[&str]) -> Value {
    for set in ["bounding", "effective", "permitted"] {
        cfg["process"]["capabilities"][set] = json!(caps);
    }
    cfg
}

/// Bundles runc runs, run by berth-runtime the same way (issue 17), in the guest where
/// cgroup v2 is whole.
mod conformance {
    use super::*;

    /// What the probe prints, in both runtimes: capabilities, limits, mounts (ids and
    /// peer group numbers dropped), the device nodes, which of the standard ones open,
    /// the cgroup, the user and the host name.
    const PROBE: &str = concat!(
        "echo == status; grep -E '^(Cap|NoNewPrivs|Seccomp:)' /proc/self/status; ",
        "echo == limits; cat /proc/self/limits; ",
        "echo == mounts; sed -E 's/^[0-9]+ [0-9]+ [0-9]+:[0-9]+ //; s/(shared|master|propagate_from):[0-9]+/\\1/g' /proc/self/mountinfo; ",
        "echo == devices; cd /dev; for f in * pts/* mqueue/* shm/*; do [ -e $f ] && stat -c '%n %F %t:%T %a %u:%g' $f; done; ",
        "echo == open; for f in null zero full random urandom tty ptmx pts/ptmx; do (: < /dev/$f) 2>/dev/null && echo $f=open || echo $f=refused; done; ",
        "echo == cgroup; cat /proc/self/cgroup; cat /sys/fs/cgroup/cgroup.controllers; ",
        "echo == who; id; hostname; cd /; pwd"
    );

    /// `runc spec`'s config in this guest's runc, with only what a bundle must change:
    /// the program, and no terminal (nothing here holds a console socket).
    fn runc_spec(testd: &mut TestdClient) -> Value {
        let out = testd
            .sh("rm -rf /tmp/spec && mkdir /tmp/spec && cd /tmp/spec && runc spec && cat config.json")
            .unwrap();
        assert_eq!(out.exit_code, Some(0), "{out:?}");
        let mut spec: Value = serde_json::from_str(&out.stdout).unwrap();
        spec["process"]["terminal"] = json!(false);
        spec
    }

    /// `runc run` of the bundle /tmp/NAME, as container `id`.
    fn runc_run(testd: &mut TestdClient, name: &str, id: &str) -> (i32, String, String) {
        // The guest's root is an initramfs: runc needs telling that it cannot pivot.
        // testd's NOTIFY_SOCKET (from init) would make runc relay sd_notify and wait
        // for a READY=1 the probe never sends.
        let bundle = format!("/tmp/{name}");
        let out = testd
            .run_with(
                &[
                    "env",
                    "-u",
                    "NOTIFY_SOCKET",
                    "runc",
                    "--root",
                    "/run/runc",
                    "run",
                    "--no-pivot",
                    "--bundle",
                    &bundle,
                    id,
                ],
                None,
                std::time::Duration::from_secs(120),
            )
            .unwrap();
        (out.exit_code.unwrap_or(-1), out.stdout, out.stderr)
    }

    fn with_program(mut spec: Value, script: &str) -> Value {
        spec["process"]["args"] = json!(["sh", "-c", script]);
        spec
    }

    pub fn runs_what_runc_runs(testd: &mut TestdClient) {
        let spec = runc_spec(testd);
        // Its only device rule is deny-all: the built-in list makes /dev's nodes
        // (config-linux.md "Default Devices") and lets them open.
        assert_eq!(
            spec["linux"]["resources"]["devices"],
            json!([{"allow": false, "access": "rwm"}])
        );
        let probe = with_program(spec.clone(), PROBE);
        // One bundle for both: the mounts name its path.
        bundle(testd, "probe", &probe);
        let (code, berth, err) = run(testd, "probe");
        assert_eq!(code, 0, "berth-runtime: {berth}{err}");
        let (code, runc, rerr) = runc_run(testd, "probe", "probe-runc");
        assert_eq!(code, 0, "runc: {runc}{rerr}");
        let berth_lines: Vec<&str> = berth.lines().collect();
        let runc_lines: Vec<&str> = runc.lines().collect();
        assert_eq!(
            berth_lines, runc_lines,
            "the probe differs\n--- berth-runtime\n{berth}\n--- runc\n{runc}"
        );
        assert!(
            berth.contains("null=open") && berth.contains("urandom=open"),
            "{berth}"
        );

        // A user without privileges, seccomp, and no noNewPrivileges (seccomp(2) needs
        // CAP_SYS_ADMIN then: the filter goes in while it is held).
        let mut cfg = with_program(spec.clone(), "id -u; mkdir /tmp/d 2>&1; echo done");
        cfg["process"]["user"] = json!({"uid": 10, "gid": 10});
        cfg["process"]["noNewPrivileges"] = json!(false);
        cfg["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
        });
        cfg["mounts"].as_array_mut().unwrap().push(json!(
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["mode=1777"]}));
        bundle(testd, "uid10", &cfg);
        let (code, out, err) = run(testd, "uid10");
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            out.starts_with("10\n") && out.contains("not permitted") && out.contains("done"),
            "{out}{err}"
        );

        // Every rootfs propagation runs; `/` carries the one asked for.
        for prop in ["shared", "slave", "private"] {
            let mut cfg = with_program(
                spec.clone(),
                "grep -E '^[0-9]+ [0-9]+ [^ ]+ [^ ]+ / ' /proc/self/mountinfo",
            );
            cfg["linux"]["rootfsPropagation"] = json!(prop);
            let name = format!("prop-{prop}");
            bundle(testd, &name, &cfg);
            let (code, out, err) = run(testd, &name);
            assert_eq!(code, 0, "{prop}: {out}{err}");
            match prop {
                "shared" => assert!(out.contains(" shared:"), "{prop}: {out}"),
                _ => assert!(!out.contains(" shared:"), "{prop}: {out}"),
            }
        }

        // No mount namespace: chrooted into the rootfs, the host's mounts shared.
        let mut cfg = with_program(spec.clone(), "echo hello from $(pwd)");
        cfg["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "uts"}, {"type": "ipc"}]);
        cfg["root"]["readonly"] = json!(false);
        cfg["mounts"] = json!([]);
        cfg["linux"].as_object_mut().unwrap().remove("maskedPaths");
        cfg["linux"]
            .as_object_mut()
            .unwrap()
            .remove("readonlyPaths");
        bundle(testd, "no-mntns", &cfg);
        let (code, out, err) = run(testd, "no-mntns");
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("hello from /"), "{out}{err}");

        // A program that is not there: `create` fails saying so; nothing remains.
        let mut cfg = spec.clone();
        cfg["process"]["args"] = json!(["/bin/no-such-program"]);
        bundle(testd, "missing", &cfg);
        let out = testd
            .sh("berth-runtime --root /run/rt create --bundle /tmp/missing missing </dev/null >/dev/null; echo rc=$?; ls /run/rt")
            .unwrap();
        assert!(out.stdout.starts_with("rc=1\n"), "{out:?}");
        assert_eq!(out.stdout.trim(), "rc=1", "left behind: {out:?}");
        assert!(out.stderr.contains("/bin/no-such-program"), "{out:?}");
    }

    /// config.md "Process": apparmorProfile, on a kernel with AppArmor on (the image's):
    /// a loaded profile confines the program; one that is not loaded fails `create`.
    pub fn apparmor_profiles_apply(testd: &mut TestdClient) {
        let enabled = testd
            .sh("cat /sys/module/apparmor/parameters/enabled")
            .unwrap();
        assert_eq!(
            enabled.stdout.trim(),
            "Y",
            "the image's kernel has AppArmor on: {enabled:?}"
        );
        // A profile that denies writes under /tmp/denied, compiled here by Debian's
        // apparmor_parser and loaded through securityfs.
        let profile = "profile berth-test flags=(attach_disconnected,mediate_deleted) {\n  file,\n  deny /tmp/denied/** w,\n  capability,\n  signal,\n  unix,\n  network,\n  mount,\n  umount,\n  pivot_root,\n  ptrace,\n}\n";
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("berth-test");
        std::fs::write(&src, profile).unwrap();
        let compiled = std::process::Command::new("apparmor_parser")
            .args(["--skip-kernel-load", "--stdout"])
            .arg(&src)
            .output()
            .expect("apparmor_parser (make deps installs apparmor)");
        assert!(
            compiled.status.success(),
            "{}",
            String::from_utf8_lossy(&compiled.stderr)
        );
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(&compiled.stdout);
        let out = testd
            .run_with(
                &["sh", "-c", "grep -q ' /sys/kernel/security ' /proc/mounts || mount -t securityfs securityfs /sys/kernel/security; base64 -d > /sys/kernel/security/apparmor/.load && echo loaded"],
                Some(&encoded),
                std::time::Duration::from_secs(30),
            )
            .unwrap();
        assert_eq!(out.stdout.trim(), "loaded", "{out:?}");

        let spec = runc_spec(testd);
        let mut cfg = with_program(
            spec.clone(),
            "cat /proc/self/attr/current; echo; mkdir -p /tmp/denied /tmp/open; echo x > /tmp/open/f && echo open=ok; (echo x > /tmp/denied/f) 2>&1 | grep -q 'denied' && echo denied=ok",
        );
        cfg["mounts"].as_array_mut().unwrap().push(json!(
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}));
        cfg["process"]["apparmorProfile"] = json!("berth-test");
        bundle(testd, "aa", &cfg);
        let (code, out, err) = run(testd, "aa");
        assert_eq!(code, 0, "{out}{err}");
        let lines: Vec<&str> = out
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(
            lines,
            ["berth-test (enforce)", "open=ok", "denied=ok"],
            "{out}{err}"
        );

        // Not loaded: refused at create, naming the key and the profile.
        cfg["process"]["apparmorProfile"] = json!("berth-not-loaded");
        bundle(testd, "aa-missing", &cfg);
        let (code, out, err) = run(testd, "aa-missing");
        assert_ne!(code, 0, "{out}{err}");
        assert!(
            err.contains("process.apparmorProfile") && err.contains("berth-not-loaded"),
            "{err}"
        );
    }
}
