//! A declared container end to end on the build machine, short of the daemon: a busybox
//! image imported into the store, its rootfs, the OCI config the daemon makes from a
//! declaration (Docker's default capabilities and seccomp profile, masked paths), run
//! by berth-runtime. Checked from inside: what Docker's defaults allow and refuse.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use berth_daemon::declaration::Declaration;
use berth_daemon::spec::{self, Context};
use berth_store::store::{Options, Store};
use berth_store::Digest;

const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "cat", "grep", "unshare", "mount", "id", "hostname", "echo", "chroot", "true",
];

/// A one-layer busybox image as an OCI layout (the tar written with the tar crate).
fn busybox_layout(dir: &Path, passwd: &str) -> Digest {
    let staging = dir.join("staging");
    std::fs::create_dir_all(staging.join("bin")).unwrap();
    std::fs::create_dir_all(staging.join("etc")).unwrap();
    std::fs::copy(BUSYBOX, staging.join("bin/busybox")).unwrap();
    for a in APPLETS {
        symlink("busybox", staging.join("bin").join(a)).unwrap();
    }
    std::fs::write(staging.join("etc/passwd"), passwd).unwrap();
    std::fs::write(staging.join("etc/group"), "root:x:0:\nwww:x:33:\n").unwrap();
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", &staging).unwrap();
    let tar = b.into_inner().unwrap();
    let layout = dir.join("layout");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let d = Digest::of(data);
        std::fs::write(blobs.join(d.hex()), data).unwrap();
        d
    };
    let layer = put(&tar);
    let config = serde_json::json!({"architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["sh"], "Env": ["PATH=/bin", "FROM_IMAGE=yes"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.to_string()]}})
    .to_string();
    let cd = put(config.as_bytes());
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.to_string(), "size": tar.len()}]})
    .to_string();
    let md = put(manifest.as_bytes());
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    std::fs::write(
        layout.join("index.json"),
        serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md.to_string(), "size": manifest.len(),
            "annotations": {"io.containerd.image.name": "berth.local/busybox:latest"}}]})
        .to_string(),
    )
    .unwrap();
    cd
}

/// Runs `declaration` (TOML) as container `name`: (exit code, stdout, stderr).
fn run_declared(name: &str, declaration: &str) -> (i32, String, String) {
    let t = tempfile::tempdir().unwrap();
    busybox_layout(
        t.path(),
        "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33::/:/bin/false\n",
    );
    let store = Store::open(
        &t.path().join("store"),
        Options {
            min_free_bytes: 0,
            min_free_percent: 0,
            ..Options::default()
        },
    )
    .unwrap();
    berth_store::import::oci_layout(&store, &t.path().join("layout"), None, &mut |_| {}).unwrap();
    let decl = Declaration::parse(name, declaration, Path::new("test.toml")).unwrap();
    let image = store.find(&decl.image).unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&store.blob(&image.id).unwrap()).unwrap();
    let rootfs = store.create_rootfs(&decl.image, name).unwrap();
    let passwd = spec::read_in_root(&rootfs, "/etc/passwd").unwrap_or_default();
    let group = spec::read_in_root(&rootfs, "/etc/group").unwrap_or_default();
    let user = spec::resolve_user(decl.user.as_deref().unwrap_or("0"), &passwd, &group).unwrap();
    let ctx = Context {
        rootfs: rootfs.clone(),
        ..Context::default()
    };
    let cfg = spec::build(&decl, &config, &user, &ctx).unwrap();
    let bundle = t.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    std::fs::write(bundle.join("config.json"), cfg.to_string()).unwrap();
    // The build machine has no cgroup v2 controllers: the limits are tested in the guest.
    let out = Command::new(env!("CARGO_BIN_EXE_berth-runtime"))
        .arg("--root")
        .arg(t.path().join("state"))
        .args(["--cgroup-manager", "disabled", "run", "--bundle"])
        .arg(&bundle)
        .arg(name)
        .output()
        .unwrap();
    store.remove_rootfs(name).unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn docker_defaults_allow_and_refuse_what_docker_does() {
    let (code, out, err) = run_declared(
        "web",
        r#"
        image = "berth.local/busybox:latest"
        command = ["sh", "-c", """
            grep -E '^(CapEff|Seccomp):' /proc/self/status
            echo host=$(hostname) image=$FROM_IMAGE mine=$MINE
            unshare -U true 2>/dev/null && echo unshare=allowed || echo unshare=refused
            mount -t tmpfs none /etc 2>/dev/null && echo mount=allowed || echo mount=refused
            chroot / true && echo chroot=allowed
            echo keys=$(cat /proc/keys | grep -c .)
            id -u
        """]
        env = { MINE = "declared" }
        "#,
    );
    assert_eq!(code, 0, "{out}{err}");
    let has = |s: &str| {
        assert!(
            out.lines().any(|l| l.trim() == s),
            "{s:?} not in:\n{out}{err}"
        )
    };
    // Docker's 14 default capabilities.
    has("CapEff:\t00000000a80425fb");
    has("Seccomp:\t2");
    has("host=web image=yes mine=declared");
    // A user namespace needs no capability: only the seccomp profile stops it.
    has("unshare=refused");
    has("mount=refused");
    has("chroot=allowed");
    has("keys=0");
    has("0");

    // Without the profile, the same unshare goes through; with CAP_SYS_ADMIN added,
    // mount does too; a named user from the image's /etc/passwd.
    let (code, out, err) = run_declared(
        "open",
        r#"
        image = "berth.local/busybox:latest"
        command = ["sh", "-c", "unshare -U true && echo unshare=allowed; id -u"]
        seccomp = false
        user = "www"
        "#,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("unshare=allowed") && out.contains("33"),
        "{out}{err}"
    );
    let (code, out, err) = run_declared(
        "admin",
        r#"
        image = "berth.local/busybox:latest"
        command = ["sh", "-c", "mount -t tmpfs none /etc && echo mount=allowed"]
        cap_add = ["SYS_ADMIN"]
        "#,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("mount=allowed"), "{out}{err}");
}
