//! The image store on Berth's btrfs /var (the host tests cover the overlayfs backend):
//! layers as read-only subvolumes, each a snapshot of its parent; a container's rootfs
//! a writable snapshot; removal and gc deleting subvolumes.

#[path = "../../store/tests/common/mod.rs"]
mod layers;

use std::path::Path;

use crate::common::boot_disk;
use berth_store::Digest;
use berth_tests::testd::TestdClient;
use layers::{gzipped, layer, oci_layout, zstd, E};

/// Its own store: the daemon (a service of the image) keeps the default one.
const STORE: &str = "berth-store --root /var/lib/test-store --min-free-mib 0 --min-free-percent 0";

fn sh(testd: &mut TestdClient, script: &str) -> (i32, String, String) {
    let out = testd.sh(script).unwrap();
    (out.exit_code.unwrap_or(-1), out.stdout, out.stderr)
}

/// The layout as a base64 tar, unpacked at /tmp/layout in the guest.
fn send_layout(testd: &mut TestdClient, layout: &Path) {
    let mut b = tar::Builder::new(Vec::new());
    b.append_dir_all(".", layout).unwrap();
    let data = b.into_inner().unwrap();
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD.encode(data);
    let out = testd
        .run_with(
            &[
                "sh",
                "-c",
                "mkdir -p /tmp/layout && base64 -d | tar x -C /tmp/layout",
            ],
            Some(&text),
            std::time::Duration::from_secs(60),
        )
        .unwrap();
    assert_eq!(out.exit_code, Some(0), "{out:?}");
}

#[test]
fn layers_are_btrfs_snapshots_and_a_rootfs_is_a_writable_one() {
    let t = tempfile::tempdir().unwrap();
    let vm = boot_disk("store-btrfs", t.path());
    let mut testd = vm.testd().expect("testd");

    let l1 = layer(&[
        E::File("bin/tool", 0o755, b"v1"),
        E::File("etc/old.conf", 0o644, b"old"),
        E::File("etc/keep.conf", 0o644, b"keep"),
    ]);
    let l2 = layer(&[
        E::File("bin/tool", 0o755, b"v2"),
        E::File("etc/.wh.old.conf", 0o644, b""),
    ]);
    let l3 = layer(&[
        E::File("data/.wh..wh..opq", 0o644, b""),
        E::File("data/new", 0o644, b"3"),
    ]);
    let layout = t.path().join("layout");
    let (config, _) = oci_layout(
        &layout,
        &[
            gzipped(&l1),
            (
                l2.clone(),
                zstd(&l2),
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
            (
                l3.clone(),
                l3.clone(),
                "application/vnd.oci.image.layer.v1.tar",
            ),
        ],
        serde_json::json!({"io.containerd.image.name": "example.test/app:1"}),
    );
    send_layout(&mut testd, &layout);
    let (code, out, err) = sh(&mut testd, &format!("{STORE} import /tmp/layout"));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), format!("example.test/app:1 {config}"));
    let (_, out, _) = sh(&mut testd, &format!("{STORE} --json df"));
    let df: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(df["backend"], "btrfs", "{out}");
    assert_eq!(df["layers"], 3, "{out}");

    // Each layer a read-only subvolume holding the whole tree up to it.
    let bottom = Digest::of(&l1);
    let layers_dir = "/var/lib/test-store/layers";
    let (_, out, _) = sh(
        &mut testd,
        &format!(
            "d={layers_dir}/{}; stat -c %i $d; cat $d/bin/tool; echo; touch $d/x 2>&1; true",
            bottom.hex()
        ),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "256", "a subvolume's root inode: {out}");
    assert_eq!(lines[1], "v1");
    assert!(lines[2].contains("Read-only file system"), "{out}");

    let (code, out, err) = sh(
        &mut testd,
        &format!("{STORE} rootfs create example.test/app:1 c1"),
    );
    assert_eq!(code, 0, "{out}{err}");
    let rootfs = out.trim().to_string();
    let (_, out, _) = sh(
        &mut testd,
        &format!(
            "cd {rootfs}; stat -c %i .; cat bin/tool; echo; ls etc; ls data; echo hi > written && cat written"
        ),
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["256", "v2", "keep.conf", "new", "hi"],
        "{out}"
    );

    // In use: not removed. Then the rootfs, the image, and gc deleting the subvolumes.
    let (code, _, err) = sh(&mut testd, &format!("{STORE} rm example.test/app:1"));
    assert_ne!(code, 0);
    assert!(err.contains("c1"), "{err}");
    let (code, out, err) = sh(
        &mut testd,
        &format!("{STORE} rootfs rm c1 && {STORE} rm example.test/app:1 && {STORE} gc && ls {layers_dir} | wc -l"),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("removed 3 layers and 2 blobs"), "{out}");
    assert_eq!(out.lines().last(), Some("0"), "{out}");

    // The built-in busybox image on the verified root: imported, and a shell runs in it.
    let (code, out, err) = sh(
        &mut testd,
        &format!(
            "{STORE} import /usr/share/berth/images/busybox && r=$({STORE} rootfs create berth.local/busybox:latest bb) \
             && chroot $r /bin/sh -c 'echo hello from $(head -1 /etc/passwd | cut -d: -f1)' && {STORE} rootfs rm bb"
        ),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("berth.local/busybox:latest sha256:"),
        "{out}"
    );
    assert!(out.contains("hello from root"), "{out}");
}
