//! The store on the build machine (overlayfs backend: the scratch directory is not
//! btrfs; the btrfs backend runs in the QEMU tests): OCI layouts and `docker save`
//! archives imported, gzip, zstd and plain layers, whiteouts across layers, a tampered
//! blob leaving nothing, references, gc, a container rootfs.

use std::path::Path;
use std::process::Command;

use crate::common::{gzip, layer, oci_layout, zstd, E};
use berth_store::store::{Backend, Options, Store, StoreError};
use berth_store::Digest;

const GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZST: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

fn three_layers() -> Vec<(Vec<u8>, Vec<u8>, &'static str)> {
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
    vec![
        (l1.clone(), gzip(&l1), GZ),
        (l2.clone(), zstd(&l2), ZST),
        (l3.clone(), l3, TAR),
    ]
}

fn open(root: &Path) -> Store {
    Store::open(
        root,
        Options {
            min_free_bytes: 0,
            min_free_percent: 0,
            ..Options::default()
        },
    )
    .unwrap()
}

fn cli(root: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_berth-store"))
        .arg("--root")
        .arg(root)
        .args(["--min-free-mib", "0", "--min-free-percent", "0"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_oci_layout_imports_and_a_container_gets_its_rootfs() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    let (config, _) = oci_layout(
        &layout,
        &three_layers(),
        serde_json::json!({"org.opencontainers.image.ref.name": "1.0"}),
    );
    let root = t.path().join("store");
    // The layout names only a tag: a name is required, and the tag is kept.
    let (ok, _, err) = cli(&root, &["import", layout.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("give a name"), "{err}");
    let (ok, out, err) = cli(
        &root,
        &["import", layout.to_str().unwrap(), "example.test/app"],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("example.test/app:1.0 {config}"));
    let (ok, out, _) = cli(&root, &["ls"]);
    assert!(ok);
    assert!(
        out.contains("example.test/app:1.0") && out.contains(&config.hex()[..12]),
        "{out}"
    );

    let store = open(&root);
    assert_eq!(store.backend(), Backend::Overlay);
    let rec = store.find(&config.hex()[..8]).unwrap();
    assert_eq!(rec.layers.len(), 3);
    // Chain IDs as the image-spec defines them.
    let diffs: Vec<Digest> = three_layers()
        .iter()
        .map(|(t, _, _)| Digest::of(t))
        .collect();
    assert_eq!(rec.layers[0], diffs[0]);
    assert_eq!(
        rec.layers[1],
        Digest::of(format!("{} {}", diffs[0], diffs[1]).as_bytes())
    );
    drop(store);

    // The rootfs is an overlay mount: whiteouts hide the lower layers' entries.
    let (ok, out, err) = cli(&root, &["rootfs", "create", "example.test/app:1.0", "c1"]);
    assert!(ok, "{err}");
    let rootfs = Path::new(out.trim()).to_path_buf();
    assert_eq!(std::fs::read(rootfs.join("bin/tool")).unwrap(), b"v2");
    assert!(!rootfs.join("etc/old.conf").exists());
    assert_eq!(
        std::fs::read(rootfs.join("etc/keep.conf")).unwrap(),
        b"keep"
    );
    assert_eq!(std::fs::read(rootfs.join("data/new")).unwrap(), b"3");
    std::fs::write(rootfs.join("etc/written"), b"by the container").unwrap();
    // A reboot undoes the overlay mount: ensure_rootfs mounts it again, writes kept.
    rustix::mount::unmount(&rootfs, rustix::mount::UnmountFlags::empty()).unwrap();
    assert!(!rootfs.join("bin/tool").exists());
    let again = open(&root)
        .ensure_rootfs("example.test/app:1.0", "c1")
        .unwrap();
    assert_eq!(again, rootfs);
    assert_eq!(
        std::fs::read(rootfs.join("etc/written")).unwrap(),
        b"by the container"
    );
    assert_eq!(std::fs::read(rootfs.join("bin/tool")).unwrap(), b"v2");
    // An image in use is not removed; its layers survive gc.
    let (ok, _, err) = cli(&root, &["rm", "example.test/app:1.0"]);
    assert!(!ok);
    assert!(err.contains("c1"), "{err}");
    // A container ID names one directory under containers/: `..` never reaches layers/.
    for bad in ["../layers", "..", ".hidden", "a/b"] {
        let (ok, _, err) = cli(&root, &["rootfs", "rm", bad]);
        assert!(!ok && err.contains("is not a container ID"), "{bad}: {err}");
    }
    assert!(root.join("layers").read_dir().unwrap().count() > 0);
    let (ok, _, err) = cli(&root, &["rootfs", "rm", "c1"]);
    assert!(ok, "{err}");
    let (ok, out, _) = cli(&root, &["rm", "example.test/app:1.0"]);
    assert!(ok);
    assert_eq!(out.trim(), "Untagged: example.test/app:1.0");
    let (ok, out, _) = cli(&root, &["gc"]);
    assert!(ok);
    assert!(out.starts_with("removed 3 layers and 2 blobs"), "{out}");
    assert_eq!(std::fs::read_dir(root.join("layers")).unwrap().count(), 0);
}

#[test]
fn a_tampered_blob_leaves_nothing_stored() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    let layers = three_layers();
    oci_layout(
        &layout,
        &layers,
        serde_json::json!({"io.containerd.image.name": "example.test/app:bad"}),
    );
    // Flip a byte of the last (plain tar) layer's blob: in a header (the tar breaks)
    // and, for a second import, in a file's content (the tar still reads).
    let d = Digest::of(&layers[2].1);
    let p = layout.join("blobs/sha256").join(d.hex());
    let good = std::fs::read(&p).unwrap();
    for at in [600, 1024] {
        let mut data = good.clone();
        data[at] ^= 0xff;
        std::fs::write(&p, data).unwrap();
        let root = t.path().join(format!("store{at}"));
        let store = open(&root);
        let err = berth_store::import::oci_layout(&store, &layout, None, &mut |_| {}).unwrap_err();
        assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
        assert!(err.to_string().contains(&d.to_string()), "{err}");
        assert!(store.images().unwrap().is_empty());
        assert_eq!(std::fs::read_dir(root.join("layers")).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
    }
}

#[test]
fn a_docker_save_archive_imports_under_its_tags() {
    let t = tempfile::tempdir().unwrap();
    let layers = three_layers();
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|(t, _, _)| Digest::of(t).to_string())
        .collect();
    let config = serde_json::json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids}})
    .to_string();
    let config_d = Digest::of(config.as_bytes());
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    };
    add(&format!("{}.json", config_d.hex()), config.as_bytes());
    let mut members = Vec::new();
    for (i, (tar, _, _)) in layers.iter().enumerate() {
        let name = format!("layer{i}/layer.tar");
        add(&name, tar);
        members.push(name);
    }
    let manifest = serde_json::json!([{"Config": format!("{}.json", config_d.hex()),
        "RepoTags": ["app:latest", "example.test/app:v1"], "Layers": members}]);
    add("manifest.json", manifest.to_string().as_bytes());
    let archive = t.path().join("app.tar");
    std::fs::write(&archive, b.into_inner().unwrap()).unwrap();

    let root = t.path().join("store");
    let (ok, out, err) = cli(&root, &["import", archive.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("docker.io/library/app:latest"), "{out}");
    assert!(out.contains("example.test/app:v1"), "{out}");
    let store = open(&root);
    let a = store.find("app").unwrap();
    let b = store.find("example.test/app:v1").unwrap();
    assert_eq!(a.id, config_d);
    assert_eq!(a.layers, b.layers);
    // By ID, every reference goes.
    drop(store);
    let (ok, out, _) = cli(&root, &["rm", &config_d.hex()[..12]]);
    assert!(ok);
    assert_eq!(out.lines().count(), 2, "{out}");
}

#[test]
fn a_nearly_full_filesystem_refuses_new_layers() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    oci_layout(
        &layout,
        &three_layers(),
        serde_json::json!({"io.containerd.image.name": "x.test/a:1"}),
    );
    let store = Store::open(
        &t.path().join("store"),
        Options {
            min_free_bytes: u64::MAX / 2,
            ..Options::default()
        },
    )
    .unwrap();
    let err = berth_store::import::oci_layout(&store, &layout, None, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("nearly full"), "{err}");
    assert!(store.images().unwrap().is_empty());
}

/// `cli`, given up (and killed) after `secs`: None when it hung.
fn cli_within(root: &Path, args: &[&str], secs: u64) -> Option<(bool, String, String)> {
    use std::io::Read;
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth-store"))
        .arg("--root")
        .arg(root)
        .args(["--min-free-mib", "0", "--min-free-percent", "0"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    Some((status.success(), out, err))
}

fn mkfifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
}

fn nothing_stored(root: &Path) {
    let store = open(root);
    assert!(store.images().unwrap().is_empty());
    assert_eq!(std::fs::read_dir(root.join("layers")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
}

#[test]
fn a_hardlink_to_a_lower_layers_fifo_fails_fast_and_frees_the_store_lock() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    let l1 = layer(&[E::Fifo("pipe")]);
    let l2 = layer(&[E::Hardlink("link", "pipe")]);
    oci_layout(
        &layout,
        &[(l1.clone(), l1, TAR), (l2.clone(), l2, TAR)],
        serde_json::json!({"io.containerd.image.name": "x.test/fifo:1"}),
    );
    let root = t.path().join("store");
    let (ok, _, err) = cli_within(&root, &["import", layout.to_str().unwrap()], 20)
        .expect("the import hung on the FIFO (holding the store lock)");
    assert!(!ok);
    assert!(err.contains("not a regular file"), "{err}");
    // The exclusive lock is free: gc runs at once.
    let (ok, _, err) = cli_within(&root, &["gc"], 20).expect("gc waited for the lock");
    assert!(ok, "{err}");
    nothing_stored(&root);
}

#[test]
fn layout_files_that_are_not_regular_or_too_large_are_refused_at_once() {
    let layers = three_layers();
    let big_layer = layers[2].1.clone();
    // (what to spoil, how, what the error says)
    type Spoil = fn(&Path, &Path);
    let cases: Vec<(&str, Spoil, &str)> = vec![
        (
            "index.json -> /dev/zero",
            |layout, _| {
                std::fs::remove_file(layout.join("index.json")).unwrap();
                std::os::unix::fs::symlink("/dev/zero", layout.join("index.json")).unwrap();
            },
            "symlink",
        ),
        (
            "index.json a FIFO",
            |layout, _| {
                std::fs::remove_file(layout.join("index.json")).unwrap();
                mkfifo(&layout.join("index.json"));
            },
            "not a regular file",
        ),
        (
            "index.json of 5 MiB",
            |layout, _| {
                let mut text = std::fs::read(layout.join("index.json")).unwrap();
                text.extend(std::iter::repeat_n(b' ', 5 << 20));
                std::fs::write(layout.join("index.json"), text).unwrap();
            },
            "larger than 4194304 bytes",
        ),
        (
            "a layer blob -> /dev/zero",
            |_, blob| {
                std::fs::remove_file(blob).unwrap();
                std::os::unix::fs::symlink("/dev/zero", blob).unwrap();
            },
            "symlink",
        ),
        (
            "a layer blob a FIFO",
            |_, blob| {
                std::fs::remove_file(blob).unwrap();
                mkfifo(blob);
            },
            "not a regular file",
        ),
        (
            "a layer blob larger than its descriptor says",
            |_, blob| {
                let mut data = std::fs::read(blob).unwrap();
                data.extend(std::iter::repeat_n(0u8, 1 << 20));
                std::fs::write(blob, data).unwrap();
            },
            "larger than",
        ),
    ];
    for (what, spoil, expect) in cases {
        let t = tempfile::tempdir().unwrap();
        let layout = t.path().join("layout");
        oci_layout(
            &layout,
            &layers,
            serde_json::json!({"io.containerd.image.name": "x.test/spoiled:1"}),
        );
        let blob = layout
            .join("blobs/sha256")
            .join(Digest::of(&big_layer).hex());
        spoil(&layout, &blob);
        let root = t.path().join("store");
        let (ok, _, err) = cli_within(&root, &["import", layout.to_str().unwrap()], 20)
            .unwrap_or_else(|| panic!("{what}: the import hung"));
        assert!(!ok, "{what}: imported");
        assert!(
            err.contains(expect),
            "{what}: {err:?} should say {expect:?}"
        );
        nothing_stored(&root);
    }
}

#[test]
fn a_docker_archive_that_is_not_a_regular_file_is_refused_at_once() {
    let t = tempfile::tempdir().unwrap();
    let fifo = t.path().join("archive.tar");
    mkfifo(&fifo);
    let zero = t.path().join("zero.tar");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    for path in [&fifo, &zero] {
        let root = t.path().join("store");
        let (ok, _, err) = cli_within(&root, &["import", path.to_str().unwrap()], 20)
            .unwrap_or_else(|| panic!("importing {} hung", path.display()));
        assert!(!ok);
        assert!(err.contains("not a regular file"), "{err}");
        nothing_stored(&root);
    }
}

#[test]
fn the_store_is_root_only_and_an_older_open_one_is_fixed() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    drop(open(&root));
    assert_eq!(mode(&root), 0o700);
    // A store made by an older Berth (0755) is closed on its next open.
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    drop(open(&root));
    assert_eq!(mode(&root), 0o700);
}
