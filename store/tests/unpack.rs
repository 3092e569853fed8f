//! The layer unpacker against crafted tars (root on the build machine: it sets owners).
//! Hostile entries are written into raw headers, past the tar crate's own checks.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use berth_store::unpack::{unpack, Limits, Report, Target, UnpackError};

mod common;
use common::{layer, E};

fn apply(root: &Path, entries: &[E<'_>]) -> Result<Report, UnpackError> {
    unpack(
        &layer(entries)[..],
        root,
        &Target::Snapshot,
        Limits::default(),
    )
}

/// A root inside a scratch directory, with a sibling that must never be touched.
fn scratch() -> (tempfile::TempDir, std::path::PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    std::fs::create_dir(&root).unwrap();
    (t, root)
}

#[test]
fn an_ordinary_layer_unpacks_with_modes_owners_and_links() {
    let (_t, root) = scratch();
    let report = apply(
        &root,
        &[
            E::Dir("./etc/", 0o755),
            E::File("./etc/hostname", 0o644, b"box\n"),
            E::Owned("usr/bin/su", 0o4755, 0, 0, b"#!su"),
            E::Owned("home/user/notes", 0o600, 1000, 1001, b"hi"),
            E::Symlink("bin", "usr/bin"),
            E::Symlink("var/run", "/run"),
            E::Hardlink("usr/bin/su2", "usr/bin/su"),
            E::Fifo("tmp/pipe"),
            // Written through the absolute symlink: resolved inside the root.
            E::File("var/run/app.pid", 0o644, b"1"),
            E::Char("dev/null"),
        ],
    )
    .unwrap();
    assert_eq!(report.entries, 10);
    assert_eq!(std::fs::read(root.join("etc/hostname")).unwrap(), b"box\n");
    let su = std::fs::metadata(root.join("usr/bin/su")).unwrap();
    assert_eq!(su.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(su.nlink(), 2);
    assert_eq!(su.mtime(), 1_700_000_000);
    let notes = std::fs::metadata(root.join("home/user/notes")).unwrap();
    assert_eq!((notes.uid(), notes.gid()), (1000, 1001));
    assert_eq!(
        std::fs::read_link(root.join("bin")).unwrap(),
        Path::new("usr/bin")
    );
    assert!(std::fs::metadata(root.join("tmp/pipe"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(std::fs::read(root.join("run/app.pid")).unwrap(), b"1");
    assert!(!root.join("dev/null").exists());
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert!(report.warnings[0].contains("device node /dev/null"));
}

#[test]
fn escapes_are_refused_and_nothing_lands_outside() {
    let cases: Vec<(Vec<E<'_>>, &str)> = vec![
        (vec![E::File("../outside", 0o644, b"x")], "`..`"),
        (vec![E::File("a/../../outside", 0o644, b"x")], "`..`"),
        (vec![E::File("/outside", 0o644, b"x")], "absolute"),
        (
            vec![
                E::Symlink("up", "../.."),
                E::File("up/outside", 0o644, b"x"),
            ],
            "symlink that leaves the root",
        ),
        (
            vec![
                E::Dir("d", 0o755),
                E::Symlink("d/up", "../../x"),
                E::File("d/up/outside", 0o644, b"x"),
            ],
            "symlink that leaves the root",
        ),
        (
            vec![E::Hardlink("h", "../outside-target")],
            "`..` in the target",
        ),
        (vec![E::Hardlink("h", "/etc/passwd")], "absolute target"),
        (vec![E::Hardlink("h", "missing")], "does not exist"),
        (
            vec![
                E::Symlink("up", "../.."),
                E::Hardlink("h", "up/outside-target"),
            ],
            "leaves the root",
        ),
    ];
    for (entries, expect) in cases {
        let (t, root) = scratch();
        std::fs::write(t.path().join("outside-target"), b"secret").unwrap();
        let err = apply(&root, &entries).unwrap_err().to_string();
        assert!(err.contains(expect), "{err:?} should say {expect:?}");
        let names: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!names.contains(&"outside".to_string()), "{names:?}");
        assert!(!t.path().parent().unwrap().join("outside").exists());
        assert!(!t.path().parent().unwrap().join("x").exists());
    }
}

#[test]
fn limits_stop_a_tar_bomb() {
    let (_t, root) = scratch();
    let many: Vec<String> = (0..50).map(|i| format!("f{i}")).collect();
    let entries: Vec<E<'_>> = many.iter().map(|n| E::File(n, 0o644, b"")).collect();
    let err = unpack(
        &layer(&entries)[..],
        &root,
        &Target::Snapshot,
        Limits {
            max_entries: 10,
            max_bytes: 1 << 20,
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, UnpackError::TooManyEntries { limit: 10 }),
        "{err}"
    );
    let big = vec![0u8; 4096];
    let err = unpack(
        &layer(&[E::File("a", 0o644, &big), E::File("b", 0o644, &big)])[..],
        &root,
        &Target::Snapshot,
        Limits {
            max_entries: 10,
            max_bytes: 6000,
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, UnpackError::TooLarge { limit: 6000 }),
        "{err}"
    );
}

#[test]
fn whiteouts_delete_lower_entries_in_a_snapshot() {
    let (_t, root) = scratch();
    apply(
        &root,
        &[
            E::File("a/b", 0o644, b"1"),
            E::File("a/c", 0o644, b"1"),
            E::File("d", 0o644, b"1"),
            E::Dir("e", 0o755),
            E::File("e/f", 0o644, b"1"),
        ],
    )
    .unwrap();
    apply(
        &root,
        &[
            E::File("a/new", 0o644, b"2"),
            E::File("a/.wh..wh..opq", 0o644, b""),
            E::File(".wh.d", 0o644, b""),
            E::File(".wh.e", 0o644, b""),
            E::File(".wh.never-there", 0o644, b""),
        ],
    )
    .unwrap();
    let mut a: Vec<_> = std::fs::read_dir(root.join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    a.sort();
    assert_eq!(
        a,
        ["new"],
        "the opaque directory keeps only this layer's entries"
    );
    assert!(!root.join("d").exists());
    assert!(!root.join("e").exists());
    assert!(!root.join(".wh.d").exists());
}

#[test]
fn whiteouts_become_overlay_markers_in_an_overlay_layer() {
    let (_t, root) = scratch();
    let report = unpack(
        &layer(&[
            E::File("a/.wh..wh..opq", 0o644, b""),
            E::File(".wh.d", 0o644, b""),
        ])[..],
        &root,
        &Target::Overlay { lowers: Vec::new() },
        Limits::default(),
    )
    .unwrap();
    assert_eq!(report.entries, 2);
    let d = std::fs::symlink_metadata(root.join("d")).unwrap();
    assert!(d.file_type().is_char_device());
    assert_eq!(d.rdev(), 0);
    let mut value = [0u8; 4];
    let n = rustix::fs::getxattr(root.join("a"), "trusted.overlay.opaque", &mut value).unwrap();
    assert_eq!(&value[..n], b"y");
}
