//! berth-runtime on the build machine (root; namespaces work here, cgroup v2 controllers
//! do not): containers from a busybox rootfs made from Debian's busybox-static, each
//! property checked from inside the container.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::common::*;

#[test]
fn the_process_is_isolated_as_configured() {
    let b = sh(concat!(
        "echo pid=$$; echo host=$(hostname); echo domain=$(cat /proc/sys/kernel/domainname); ",
        "grep -E '^Cap(Eff|Bnd)' /proc/self/status; ",
        "mount -t tmpfs none /mnt 2>/dev/null && echo mount=ok || echo mount=denied; ",
        "echo keys=$(cat /proc/keys | wc -c); echo acpi=$(ls /proc/acpi | wc -l); ",
        "grep -q ' /proc/kcore ' /proc/self/mountinfo && echo kcore=masked; ",
        "(echo x > /proc/sys/kernel/hostname) 2>/dev/null && echo procsys=rw || echo procsys=ro; ",
        "touch /bin/x 2>/dev/null && echo root=rw || echo root=ro; ",
        "touch /tmp/x && echo tmp=rw; ",
        "echo root: $(ls /); echo procs=$(ls /proc | grep -c '^[0-9]'); ",
        "grep -q NoNewPrivs:.*1 /proc/self/status && echo nnp=1"
    ));
    b.edit(|c| c["domainname"] = json!("example.test"));
    let (code, out, err) = b.run("iso");
    assert_eq!(code, 0, "{out}{err}");
    let has = |s: &str| assert!(out.lines().any(|l| l == s), "{s:?} not in:\n{out}{err}");
    has("pid=1");
    has("host=berthbox");
    has("domain=example.test");
    // CAP_AUDIT_WRITE (29), CAP_KILL (5), CAP_NET_BIND_SERVICE (10).
    has("CapEff:\t0000000020000420");
    has("CapBnd:\t0000000020000420");
    has("mount=denied");
    has("keys=0");
    has("acpi=0");
    has("procsys=ro");
    has("root=ro");
    has("tmp=rw");
    has("root: bin dev etc proc sys tmp");
    has("nnp=1");
    // Only the container's own processes (sh and its children) in its /proc.
    let procs: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("procs="))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(procs <= 4, "{out}");
    b.assert_clean();
}

#[test]
fn user_groups_rlimits_env_and_cwd() {
    let b = sh("id; ulimit -n; ulimit -Hn; pwd; echo $GREETING; umask");
    b.edit(|c| {
        c["process"]["user"] =
            json!({"uid": 1000, "gid": 1001, "additionalGids": [10, 20], "umask": 23});
        c["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 456, "soft": 123}]);
        c["process"]["cwd"] = json!("/tmp");
        c["process"]["env"]
            .as_array_mut()
            .unwrap()
            .push(json!("GREETING=hello"));
    });
    let (code, out, err) = b.run("user");
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "uid=1000 gid=1001 groups=10,20", "{out}");
    assert_eq!(
        &lines[1..],
        ["123", "456", "/tmp", "hello", "0027"],
        "{out}"
    );
}

#[test]
fn user_namespace_maps_root_to_an_unprivileged_host_user() {
    let b = sh(concat!(
        "cat /proc/self/uid_map /proc/self/gid_map; id; echo pid=$$; ",
        "touch /shared/made-by-root; ",
        "cat /proc/1/status | grep -E '^CapEff'; ",
        "echo x > /proc/sys/kernel/hostname 2>/dev/null && echo procsys=rw || echo procsys=ro"
    ));
    // The mapped root is an ordinary host user: it must be able to reach the bundle, and
    // the rootfs is its own (as podman chowns an image for a user namespace).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(b.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let chown = Command::new("chown")
        .args(["-R", "-h", "100000:200000"])
        .arg(b.path().join("rootfs"))
        .status()
        .unwrap();
    assert!(chown.success());
    let shared = b.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    b.edit(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "user"}));
        c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        c["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
        c["mounts"].as_array_mut().unwrap().push(json!(
            {"destination": "/shared", "type": "bind", "source": shared, "options": ["rbind"]}
        ));
    });
    let (code, out, err) = b.run("userns");
    assert_eq!(code, 0, "{out}{err}");
    let has = |s: &str| {
        assert!(
            out.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
                == s.split_whitespace().collect::<Vec<_>>()),
            "{s:?} not in:\n{out}{err}"
        );
    };
    has("0 100000 65536");
    has("0 200000 65536");
    has("uid=0 gid=0");
    has("pid=1");
    has("procsys=ro");
    // Capabilities as configured, but they count only inside the namespace: the file
    // the container's root made belongs to the mapped host ids.
    has("CapEff:\t0000000020000420");
    let meta = std::fs::metadata(shared.join("made-by-root")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.uid(), meta.gid()), (100000, 200000));
    b.assert_clean();

    // exec joins the user namespace first, then the ones it owns.
    b.edit(|c| c["process"]["args"] = json!(["sleep", "30"]));
    let (ok, err) = b.runtime_detached(&["create", "--bundle", ".", "userns-exec"]);
    assert!(ok, "{err}");
    assert!(b.runtime(&["start", "userns-exec"]).status.success());
    let exec = b.runtime(&[
        "exec",
        "userns-exec",
        "sh",
        "-c",
        "cat /proc/self/uid_map; echo $$",
    ]);
    let out = String::from_utf8_lossy(&exec.stdout);
    assert!(
        exec.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&exec.stderr)
    );
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(&words[..3], ["0", "100000", "65536"], "{out}");
    assert_ne!(words[3], "1", "{out}");
    assert!(b
        .runtime(&["delete", "--force", "userns-exec"])
        .status
        .success());
    b.assert_clean();

    // Without mappings a new user namespace is refused before anything runs.
    b.edit(|c| {
        c["linux"].as_object_mut().unwrap().remove("uidMappings");
    });
    let (code, _, err) = b.run("userns2");
    assert_ne!(code, 0);
    assert!(err.contains("linux.uidMappings"), "{err}");
    b.assert_clean();
}

#[test]
fn exit_codes_come_through() {
    let b = sh("exit 7");
    assert_eq!(b.run("code").0, 7);
    // A pid namespace's init ignores SIGKILL from inside; without one, sh can die by it.
    let b = sh("kill -9 $$");
    b.edit(|c| c["linux"]["namespaces"] = json!([{"type": "mount"}, {"type": "uts"}]));
    assert_eq!(b.run("signal").0, 128 + 9);
    b.assert_clean();
}

#[test]
fn lifecycle_created_running_stopped() {
    let b = Bundle::new(&["sleep", "30"]);
    let pid_file = b.path().join("pid");
    let (ok, err) = b.runtime_detached(&[
        "create",
        "--bundle",
        ".",
        "--pid-file",
        pid_file.to_str().unwrap(),
        "life",
    ]);
    assert!(ok, "{err}");
    let st = b.state("life");
    assert_eq!(st["status"], "created");
    assert_eq!(st["id"], "life");
    let pid = st["pid"].as_i64().unwrap();
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), pid.to_string());
    // The created process has not run the program yet.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).starts_with("sleep"));
    let (ok, err) = b.runtime_detached(&["create", "--bundle", ".", "life"]);
    assert!(!ok);
    assert!(err.contains("already exists"), "{err}");
    let list = b.runtime(&["list", "-q"]);
    assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "life");

    assert!(b.runtime(&["start", "life"]).status.success());
    assert_eq!(b.state("life")["status"], "running");
    let ps = b.runtime(&["ps", "--format", "json", "life"]);
    let pids: Vec<i64> = serde_json::from_slice(&ps.stdout).unwrap();
    assert_eq!(pids, [pid], "{}", String::from_utf8_lossy(&ps.stderr));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(String::from_utf8_lossy(&cmdline).starts_with("sleep"));
    let refused = b.runtime(&["delete", "life"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("running"));

    assert!(b.runtime(&["kill", "life", "KILL"]).status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while b.state("life")["status"] != "stopped" {
        assert!(std::time::Instant::now() < deadline, "not stopped");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(b.runtime(&["delete", "life"]).status.success());
    let gone = b.runtime(&["state", "life"]);
    assert!(String::from_utf8_lossy(&gone.stderr).contains("does not exist"));
    b.assert_clean();
}

/// Spoils a bundle in one way.
type Breaker = Box<dyn Fn(&Bundle)>;

#[test]
fn bad_input_is_refused_naming_the_problem_and_leaves_nothing() {
    let cases: Vec<(&str, Breaker)> = vec![
        (
            "config.json",
            Box::new(|b: &Bundle| {
                std::fs::write(b.path().join("config.json"), "{ not json").unwrap();
            }),
        ),
        (
            "root.path",
            Box::new(|b: &Bundle| b.edit(|c| c["root"]["path"] = json!("nope"))),
        ),
        (
            "unknown variant `bogus`",
            Box::new(|b: &Bundle| {
                b.edit(|c| {
                    c["linux"]["namespaces"]
                        .as_array_mut()
                        .unwrap()
                        .push(json!({"type": "bogus"}))
                })
            }),
        ),
        (
            "/tmp",
            Box::new(|b: &Bundle| {
                b.edit(|c| c["mounts"].as_array_mut().unwrap().push(
                json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["size=lots"]})))
            }),
        ),
        (
            "process.args",
            Box::new(|b: &Bundle| b.edit(|c| c["process"]["args"] = json!([]))),
        ),
    ];
    for (want, break_it) in cases {
        let b = Bundle::new(&["true"]);
        break_it(&b);
        let (ok, err) = b.runtime_detached(&["create", "--bundle", ".", "bad"]);
        assert!(!ok, "{want}: accepted");
        assert!(err.contains(want), "{want}: {err}");
        b.assert_clean();
    }
    let b = Bundle::new(&["true"]);
    let bad_id = b.runtime(&["create", "--bundle", ".", "../x"]);
    assert!(String::from_utf8_lossy(&bad_id.stderr).contains("not a container ID"));
}

#[test]
fn resources_need_cgroup_v2() {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        return; // a v2 host: the QEMU tests cover limits
    }
    let b = Bundle::new(&["true"]);
    b.edit(|c| c["linux"]["resources"] = json!({"memory": {"limit": 67108864}}));
    let out = b.runtime(&["create", "--bundle", ".", "mem"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cgroup v2"));
    b.assert_clean();
}

#[test]
fn features_and_version() {
    let b = Bundle::new(&["true"]);
    let out = b.runtime(&["features"]);
    let f: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(f["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .contains(&json!("pid")));
    let v = b.runtime(&["--version"]);
    assert!(String::from_utf8_lossy(&v.stdout).contains("berth-runtime"));
}

#[test]
fn seccomp_denies_with_the_configured_errno() {
    let b = sh("mkdir /tmp/a && echo made; echo still-running");
    b.edit(|c| {
        c["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 95}]
        })
    });
    let (code, out, err) = b.run("sec");
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("made"), "{out}");
    assert!(out.contains("still-running"), "{out}");
    assert!(err.contains("not supported"), "EOPNOTSUPP expected: {err}");
    // Without the filter the same script makes the directory.
    b.edit(|c| {
        c["linux"]
            .as_object_mut()
            .unwrap()
            .remove("seccomp")
            .map(|_| ())
            .unwrap()
    });
    let (_, out, _) = b.run("nosec");
    assert!(out.contains("made"), "{out}");

    // A profile with two errnos that also denies seccomp(2) itself: one program holds
    // it all (installed as a stack, the second filter could not go in under the first).
    let b = sh("mkdir /tmp/a || echo mkdir-refused; echo still-running");
    b.edit(|c| {
        c["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["seccomp"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
            ]
        })
    });
    let (code, out, err) = b.run("sec2");
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("mkdir-refused") && out.contains("still-running"),
        "{out}{err}"
    );
    assert!(err.contains("not implemented"), "ENOSYS expected: {err}");
}

#[test]
fn hooks_run_in_order_with_the_state_on_stdin() {
    let b = sh("echo process >> /hooklog/order");
    let log = b.path().join("hooklog");
    std::fs::create_dir(&log).unwrap();
    let host_hook = |name: &str| {
        // Each hook checks its stdin is the container's state, then notes its turn.
        json!({"path": BUSYBOX, "args": ["sh", "-c",
            format!("grep -q '\"id\":\"hk\"' && echo {name} >> {}/order", log.display())]})
    };
    b.edit(|c| {
        c["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/hooklog", "type": "bind", "source": log, "options": ["rbind", "rw"]}));
        c["hooks"] = json!({
            "prestart": [host_hook("prestart")],
            "createRuntime": [host_hook("createRuntime")],
            "createContainer": [host_hook("createContainer")],
            // Resolved in the container: its own busybox, and the bind mount.
            "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c",
                "grep -q '\"id\":\"hk\"' && echo startContainer >> /hooklog/order"]}],
            "poststart": [host_hook("poststart")],
            "poststop": [host_hook("poststop")]
        });
    });
    let (code, out, err) = b.run("hk");
    assert_eq!(code, 0, "{out}{err}");
    let order = std::fs::read_to_string(log.join("order")).unwrap();
    let order: Vec<&str> = order.lines().collect();
    // poststart runs once the program started: it may note its turn before or after it.
    assert_eq!(
        order
            .iter()
            .filter(|l| **l != "poststart")
            .copied()
            .collect::<Vec<_>>(),
        [
            "prestart",
            "createRuntime",
            "createContainer",
            "startContainer",
            "process",
            "poststop"
        ],
        "{order:?} {err}"
    );
    assert!(order.contains(&"poststart"), "{order:?}");
    assert_eq!(order.last(), Some(&"poststop"));

    // A failing createRuntime hook stops the create and leaves nothing.
    b.edit(|c| c["hooks"] = json!({"createRuntime": [{"path": BUSYBOX, "args": ["sh", "-c", "echo nope >&2; exit 3"]}]}));
    let (ok, err) = b.runtime_detached(&["create", "--bundle", ".", "hk2"]);
    assert!(!ok);
    assert!(
        err.contains("createRuntime hook") && err.contains("nope"),
        "{err}"
    );
    b.assert_clean();
    // A hook past its timeout is killed and fails.
    b.edit(|c| {
        c["hooks"] = json!({"prestart": [{"path": BUSYBOX, "args": ["sleep", "30"], "timeout": 1}]})
    });
    let (ok, err) = b.runtime_detached(&["create", "--bundle", ".", "hk3"]);
    assert!(!ok);
    assert!(err.contains("timed out after 1 s"), "{err}");
    b.assert_clean();
}

#[test]
fn the_runtime_runs_from_a_read_only_view_of_itself() {
    // A hook's parent is the runtime: its /proc/PID/exe must refuse writes (a container
    // could otherwise overwrite the binary on disk through it). A truncating open fails
    // on a read-only mount with EROFS (a writable one would say ETXTBSY while the binary
    // runs, and accept the write once it has exited).
    let b = Bundle::new(&["echo"]);
    let note = b.path().join("exe");
    b.edit(|c| {
        c["hooks"] = json!({"createRuntime": [{"path": BUSYBOX, "args": ["sh", "-c",
            format!("readlink /proc/$PPID/exe > {n}; (echo x > /proc/$PPID/exe) 2>> {n}; true", n = note.display())]}]})
    });
    let before = std::fs::metadata(env!("CARGO_BIN_EXE_berth-runtime"))
        .unwrap()
        .len();
    let (code, out, err) = b.run("sealed");
    assert_eq!(code, 0, "{out}{err}");
    let exe = std::fs::read_to_string(&note).unwrap();
    assert!(exe.contains("Read-only file system"), "{exe}");
    let after = std::fs::metadata(env!("CARGO_BIN_EXE_berth-runtime"))
        .unwrap()
        .len();
    assert_eq!(before, after);
}

/// What is in `dir` (a host directory that no container may write in).
fn entries(dir: &Path) -> Vec<std::ffi::OsString> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect()
}

#[test]
fn an_image_dev_symlink_to_the_host_is_resolved_in_the_rootfs() {
    // The image's /dev is a symlink to a host directory: device nodes and /dev links
    // must land in the rootfs (at the link's target taken in it), never on the host.
    // Once with the usual tmpfs on /dev, once with the nodes made in the rootfs itself.
    for tmpfs_on_dev in [true, false] {
        let host = tempfile::tempdir().unwrap();
        let b = sh(concat!(
            "test -c /dev/null && echo null=char; echo x > /dev/null && echo write=ok; ",
            "echo fd=$(readlink /dev/fd); echo dev=$(readlink /dev)"
        ));
        let dev = b.path().join("rootfs/dev");
        std::fs::remove_dir(&dev).unwrap();
        std::os::unix::fs::symlink(host.path(), &dev).unwrap();
        // No tmpfs on /tmp: it would cover where /dev leads, with nodev.
        b.edit(|c| {
            c["mounts"].as_array_mut().unwrap().retain(|m| {
                let d = m["destination"].as_str().unwrap();
                d != "/tmp" && (tmpfs_on_dev || !d.starts_with("/dev"))
            })
        });
        let (code, out, err) = b.run("devlink");
        assert_eq!(code, 0, "tmpfs on /dev: {tmpfs_on_dev}: {out}{err}");
        for want in [
            "null=char".to_string(),
            "write=ok".into(),
            "fd=/proc/self/fd".into(),
            format!("dev={}", host.path().display()),
        ] {
            assert!(
                out.lines().any(|l| l == want),
                "{want:?} not in:\n{out}{err}"
            );
        }
        assert!(
            entries(host.path()).is_empty(),
            "written on the host: {:?}",
            entries(host.path())
        );
        b.assert_clean();
    }
}

#[test]
fn a_mount_destination_through_a_symlink_out_of_the_rootfs_lands_in_it() {
    // /mnt -> a host directory (absolute): the mounts below /mnt, and the directories
    // made for them, go to that path inside the rootfs; the host directory stays empty.
    let victim = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("hello"), "from the host\n").unwrap();
    let b = sh(concat!(
        "touch /mnt/scratch/x && echo scratch=rw; cat /mnt/bound/hello; ",
        "for m in scratch bound; do grep -q \" $(readlink /mnt)/$m \" /proc/self/mountinfo ",
        "&& echo $m=in-tmp; done"
    ));
    std::os::unix::fs::symlink(victim.path(), b.path().join("rootfs/mnt")).unwrap();
    b.edit(|c| {
        let mounts = c["mounts"].as_array_mut().unwrap();
        mounts.push(json!({"destination": "/mnt/scratch", "type": "tmpfs", "source": "tmpfs"}));
        mounts.push(json!({"destination": "/mnt/bound", "type": "bind",
            "source": shared.path(), "options": ["rbind", "ro"]}));
    });
    let (code, out, err) = b.run("mntlink");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("scratch=rw"), "{out}{err}");
    assert!(out.contains("from the host"), "{out}{err}");
    // Both mounts are under the container's /tmp (where the link leads in it).
    assert!(out.contains("scratch=in-tmp\nbound=in-tmp"), "{out}{err}");
    assert!(
        entries(victim.path()).is_empty(),
        "written on the host: {:?}",
        entries(victim.path())
    );
    b.assert_clean();
}

#[test]
fn a_bind_source_pinned_by_a_descriptor_mounts_what_was_checked() {
    // The daemon checks a bind source, holds it open and passes /proc/<its pid>/fd/<n>:
    // swapping the path for a symlink afterwards must not change what is mounted.
    use std::os::fd::AsRawFd;
    let t = tempfile::tempdir().unwrap();
    let checked = t.path().join("checked");
    std::fs::create_dir(&checked).unwrap();
    std::fs::write(checked.join("which"), "the checked one\n").unwrap();
    let held = std::fs::File::open(&checked).unwrap();
    let pinned = format!("/proc/{}/fd/{}", std::process::id(), held.as_raw_fd());
    std::fs::rename(&checked, t.path().join("moved")).unwrap();
    std::fs::create_dir(t.path().join("other")).unwrap();
    std::fs::write(t.path().join("other/which"), "swapped in\n").unwrap();
    std::os::unix::fs::symlink(t.path().join("other"), &checked).unwrap();
    let b = sh("cat /data/which");
    b.edit(|c| {
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/data",
            "type": "bind", "source": pinned, "options": ["rbind", "ro"]}))
    });
    let (code, out, err) = b.run("pinned");
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "the checked one\n", "{err}");
    drop(held);
}

/// config.md "POSIX process" (`user`, `noNewPrivileges`) with config-linux.md
/// "Seccomp": a process that keeps privileges (noNewPrivileges false) and runs as
/// another user still gets its filter. The user change empties the effective
/// capabilities, and without no_new_privs the kernel wants CAP_SYS_ADMIN to install a
/// filter: the container must neither die after `create` nor run unfiltered.
#[test]
fn seccomp_applies_to_a_non_root_user_that_keeps_privileges() {
    let b = sh(concat!(
        "echo uid=$(id -u); grep -E '^NoNewPrivs' /proc/self/status; ",
        "mkdir /tmp/a && echo made; echo still-running"
    ));
    b.edit(|c| {
        c["process"]["user"] = json!({"uid": 10, "gid": 10});
        c["process"]["noNewPrivileges"] = json!(false);
        c["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 95}]
        });
    });
    let (code, out, err) = b.run("sec-user");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.lines().any(|l| l == "uid=10"), "{out}{err}");
    assert!(out.contains("NoNewPrivs:\t0"), "{out}{err}");
    assert!(
        !out.contains("made"),
        "the filter did not apply: {out}{err}"
    );
    assert!(out.contains("still-running"), "{out}{err}");
    assert!(err.contains("not supported"), "EOPNOTSUPP expected: {err}");
    b.assert_clean();
}

/// config-linux.md "Rootfs Mount Propagation": `shared`, `slave`, `private`,
/// `unbindable` and their r- forms each run (pivot_root refuses a new root whose
/// parent mount is shared; a bind from an unbindable mount is refused), and `/` in the
/// container has the propagation asked for, as its /proc/self/mountinfo shows.
#[test]
fn every_rootfs_propagation_runs_and_applies() {
    for prop in [
        "shared",
        "slave",
        "private",
        "unbindable",
        "rshared",
        "rslave",
        "rprivate",
        "runbindable",
    ] {
        // mountinfo's fifth field is the mount point.
        let b = sh("grep -E '^[0-9]+ [0-9]+ [^ ]+ [^ ]+ / ' /proc/self/mountinfo");
        b.edit(|c| c["linux"]["rootfsPropagation"] = json!(prop));
        let (code, out, err) = b.run(&format!("prop-{prop}"));
        assert_eq!(code, 0, "{prop}: {out}{err}");
        let shared = out.contains(" shared:");
        let slave = out.contains(" master:");
        match prop {
            "shared" | "rshared" => assert!(shared, "{prop}: {out}"),
            "unbindable" | "runbindable" => assert!(out.contains(" unbindable"), "{prop}: {out}"),
            // A slave `/` has a master only when the host's mount was shared.
            "slave" | "rslave" => assert!(!shared, "{prop}: {out}"),
            _ => assert!(!shared && !slave, "{prop}: {out}"),
        }
        b.assert_clean();
    }
}

/// config-linux.md "Namespaces": without a mount namespace the container shares the
/// runtime's mounts and is only chrooted into its rootfs (config.md "Root"). Its
/// program runs and exits 0; the rootfs has no /proc for the runtime to lean on.
#[test]
fn a_container_without_a_mount_namespace_runs() {
    let b = sh("echo hello from $(pwd); test ! -e /proc/self");
    b.edit(|c| {
        c["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "uts"}, {"type": "ipc"}]);
        c["root"]["readonly"] = json!(false);
        c["mounts"] = json!([]);
        let linux = c["linux"].as_object_mut().unwrap();
        linux.remove("maskedPaths");
        linux.remove("readonlyPaths");
    });
    let (code, out, err) = b.run("no-mntns");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("hello from /"), "{out}{err}");
    b.assert_clean();
}

/// runtime-spec "Lifecycle" step 3/"Errors": an error before the program runs is the
/// error of the operation. A program that is not there fails `create` (runc resolves it
/// there too), naming it, and nothing of the container remains.
#[test]
fn a_missing_program_fails_create_and_leaves_nothing() {
    for program in ["/bin/no-such-program", "no-such-program"] {
        let b = Bundle::new(&[program]);
        let (ok, err) = b.runtime_detached(&["create", "--bundle", ".", "missing"]);
        assert!(!ok, "{program}: create said ok");
        assert!(err.contains("no-such-program"), "{program}: {err}");
        b.assert_clean();
        // `run` reports it as its own failure too.
        let (code, _, err) = b.run("missing");
        assert_ne!(code, 0);
        assert!(err.contains("no-such-program"), "{program}: {err}");
        b.assert_clean();
    }
}

/// A step between `start` and the program that fails (here the exec itself: a file
/// with the execute bit that is not a program) is `start`'s error and exit status, not
/// a line on the container's stderr after `start` said ok.
#[test]
fn a_failure_after_start_is_starts_error() {
    let b = Bundle::new(&["/bin/not-a-program"]);
    let bogus = b.path().join("rootfs/bin/not-a-program");
    std::fs::write(&bogus, b"\x00\x01\x02\x03 not an ELF nor a script").unwrap();
    std::fs::set_permissions(&bogus, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (ok, err) = b.runtime_detached(&["create", "--bundle", ".", "noexec"]);
    assert!(ok, "{err}");
    let out = b.runtime(&["start", "noexec"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "start said ok: {err}");
    assert!(
        err.contains("not-a-program") && err.contains("exec"),
        "{err}"
    );
    assert_eq!(b.state("noexec")["status"], "stopped");
    assert!(b.runtime(&["delete", "noexec"]).status.success());
    b.assert_clean();

    // A startContainer hook that fails, the same way.
    let b = Bundle::new(&["sleep", "1"]);
    b.edit(|c| {
        c["hooks"] =
            json!({"startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "exit 3"]}]})
    });
    let (ok, err) = b.runtime_detached(&["create", "--bundle", ".", "hook"]);
    assert!(ok, "{err}");
    let out = b.runtime(&["start", "hook"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "start said ok: {err}");
    assert!(err.contains("startContainer"), "{err}");
    assert!(b.runtime(&["delete", "hook"]).status.success());
    b.assert_clean();
}

/// config.md "Process" (apparmorProfile, selinuxLabel), config-linux.md "Mount Label":
/// on a host whose kernel has neither LSM on (this build machine), each is refused by
/// `create`, naming the key, and nothing is left (the guest tests apply AppArmor's).
#[test]
fn security_labels_the_host_cannot_honour_are_refused() {
    let apparmor_on =
        std::fs::read("/sys/module/apparmor/parameters/enabled").is_ok_and(|v| v.starts_with(b"Y"));
    let selinux_on = Path::new("/sys/fs/selinux/enforce").exists();
    type Setter = fn(&mut Value);
    let mut cases: Vec<(&str, Setter)> = vec![("linux.mountLabel", |c| {
        c["linux"]["mountLabel"] = json!("system_u:object_r:container_file_t:s0")
    })];
    if !apparmor_on {
        cases.push(("process.apparmorProfile", |c| {
            c["process"]["apparmorProfile"] = json!("berth-test")
        }));
    }
    if !selinux_on {
        cases.push(("process.selinuxLabel", |c| {
            c["process"]["selinuxLabel"] = json!("system_u:system_r:container_t:s0")
        }));
    }
    for (key, set) in cases {
        let b = Bundle::new(&["true"]);
        b.edit(set);
        let (ok, err) = b.runtime_detached(&["create", "--bundle", ".", "label"]);
        assert!(!ok, "{key}: accepted");
        assert!(err.contains(key), "{key}: {err}");
        b.assert_clean();
    }
}

/// config.md "Process" capabilities, as runc applies them: an ambient capability is
/// raised only when it is also permitted and inheritable (capabilities(7)); `runc spec`
/// lists ambient ones and no inheritable ones, so its containers get neither (and
/// nothing becomes inheritable behind the spec's back, CVE-2022-29162). `create` says
/// which were left out.
#[test]
fn ambient_capabilities_need_inheritable_ones() {
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    let b = sh("grep -E '^Cap(Inh|Amb)' /proc/self/status");
    b.edit(|c| c["process"]["capabilities"]["ambient"] = caps.clone());
    let (code, out, err) = b.run("ambient");
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["CapInh:", "0000000000000000", "CapAmb:", "0000000000000000"],
        "{out}"
    );
    assert!(
        err.contains("process.capabilities.ambient") && err.contains("CAP_KILL"),
        "{err}"
    );
    // Inheritable too: raised (CAP_KILL is bit 5).
    b.edit(|c| {
        c["process"]["capabilities"]["inheritable"] = json!(["CAP_KILL"]);
        c["process"]["capabilities"]["ambient"] = json!(["CAP_KILL"]);
    });
    let (code, out, err) = b.run("ambient");
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["CapInh:", "0000000000000020", "CapAmb:", "0000000000000020"],
        "{out}"
    );
    assert!(!err.contains("warning"), "{err}");
    b.assert_clean();
}
