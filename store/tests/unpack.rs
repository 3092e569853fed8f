//! The layer unpacker against crafted tars (root on the build machine: it sets owners).
//! Hostile entries are written into raw headers, past the tar crate's own checks.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use berth_store::unpack::{unpack, Limits, Report, Target, UnpackError};

use crate::common::{layer, E};

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
            min_free_bytes: 0,
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
            min_free_bytes: 0,
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

/// Runs `unpack` on its own thread and gives up after `secs`: a hang is a failure, not a
/// stuck test run.
fn unpack_within(
    secs: u64,
    tar: Vec<u8>,
    root: &Path,
    target: Target,
    limits: Limits,
) -> Option<Result<Report, UnpackError>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let root = root.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(unpack(&tar[..], &root, &target, limits));
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs)).ok()
}

#[test]
fn a_hardlink_to_a_fifo_in_a_lower_layer_is_refused_without_blocking() {
    let (t, root) = scratch();
    let lower = t.path().join("lower");
    std::fs::create_dir(&lower).unwrap();
    let fifo = lower.join("pipe");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let result = unpack_within(
        10,
        layer(&[E::Hardlink("h", "pipe")]),
        &root,
        Target::Overlay {
            lowers: vec![lower],
        },
        Limits::default(),
    );
    let Some(result) = result else {
        // Unblock the stuck open so the thread can end, then fail.
        let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
        panic!("unpacking a hardlink to a lower layer's FIFO blocked");
    };
    let err = result.unwrap_err().to_string();
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn hardlink_copies_from_lower_layers_count_against_the_byte_limit() {
    let (t, root) = scratch();
    let lower = t.path().join("lower");
    std::fs::create_dir(&lower).unwrap();
    std::fs::write(lower.join("big"), vec![7u8; 1 << 20]).unwrap();
    let names: Vec<String> = (0..100).map(|i| format!("h{i}")).collect();
    let entries: Vec<E<'_>> = names.iter().map(|n| E::Hardlink(n, "big")).collect();
    let err = unpack(
        &layer(&entries)[..],
        &root,
        &Target::Overlay {
            lowers: vec![lower],
        },
        Limits {
            max_bytes: 8 << 20,
            ..Limits::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, UnpackError::TooLarge { limit } if limit == 8 << 20),
        "{err}"
    );
    // Within the limit a copy is made, and counted.
    let (t, root) = scratch();
    let lower = t.path().join("lower");
    std::fs::create_dir(&lower).unwrap();
    std::fs::write(lower.join("small"), b"12345").unwrap();
    let report = unpack(
        &layer(&[E::Hardlink("h", "small")])[..],
        &root,
        &Target::Overlay {
            lowers: vec![lower],
        },
        Limits::default(),
    )
    .unwrap();
    assert_eq!(report.bytes, 5);
    assert_eq!(std::fs::read(root.join("h")).unwrap(), b"12345");
}

#[test]
fn a_gnu_sparse_entry_is_written_sparse_and_its_holes_count() {
    let data = vec![b'x'; 512];
    let sparse = |real_size| {
        layer(&[E::Sparse {
            name: "disk.img",
            real_size,
            offset: 32 << 20,
            data: &data,
        }])
    };
    // 512 bytes in the tar, 1 TiB once expanded: refused by the byte limit, quickly.
    let (_t, root) = scratch();
    let started = std::time::Instant::now();
    let err = unpack(
        &sparse(1 << 40)[..],
        &root,
        &Target::Snapshot,
        Limits {
            max_bytes: 64 << 20,
            ..Limits::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, UnpackError::TooLarge { .. }), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // Within the limit: the holes take no space on disk.
    let (_t, root) = scratch();
    let report = unpack(
        &sparse(64 << 20)[..],
        &root,
        &Target::Snapshot,
        Limits::default(),
    )
    .unwrap();
    assert_eq!(report.bytes, 64 << 20);
    let m = std::fs::metadata(root.join("disk.img")).unwrap();
    assert_eq!(m.len(), 64 << 20);
    assert!(
        m.blocks() * 512 < 1 << 20,
        "{} bytes allocated for a file of 512 data bytes",
        m.blocks() * 512
    );
    let content = std::fs::read(root.join("disk.img")).unwrap();
    assert!(content[..32 << 20].iter().all(|b| *b == 0));
    assert_eq!(&content[32 << 20..(32 << 20) + 512], &data[..]);
}

#[test]
fn a_pax_sparse_entry_is_refused() {
    let (_t, root) = scratch();
    let err = apply(
        &root,
        &[
            E::Pax(&[
                ("GNU.sparse.major", b"1"),
                ("GNU.sparse.minor", b"0"),
                ("GNU.sparse.name", b"disk.img"),
                ("GNU.sparse.realsize", b"1099511627776"),
            ]),
            E::File("GNUSparseFile.0/disk.img", 0o644, b"1\n0\n512\n"),
        ],
    )
    .unwrap_err();
    assert!(matches!(err, UnpackError::PaxSparse { .. }), "{err}");
}

#[test]
fn overlay_attributes_in_a_layer_are_not_applied() {
    let (_t, root) = scratch();
    let report = apply(
        &root,
        &[
            E::Pax(&[
                ("SCHILY.xattr.user.overlay.opaque", b"y"),
                ("SCHILY.xattr.user.overlay.redirect", b"/etc"),
                ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
                ("SCHILY.xattr.user.note", b"kept"),
            ]),
            E::File("f", 0o644, b"x"),
        ],
    )
    .unwrap();
    let f = root.join("f");
    let mut value = [0u8; 16];
    let n = rustix::fs::getxattr(&f, "user.note", &mut value).unwrap();
    assert_eq!(&value[..n], b"kept");
    for name in [
        "user.overlay.opaque",
        "user.overlay.redirect",
        "trusted.overlay.opaque",
    ] {
        assert!(
            rustix::fs::getxattr(&f, name, &mut value).is_err(),
            "{name} was applied"
        );
        assert!(
            report.warnings.iter().any(|w| w.contains(name)),
            "{:?}",
            report.warnings
        );
    }
}

/// A tmpfs of `mib` MiB mounted on a fresh directory; unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn new(mib: u64) -> Tmpfs {
        let t = tempfile::tempdir().unwrap();
        let data = std::ffi::CString::new(format!("size={mib}m,mode=0700")).unwrap();
        rustix::mount::mount(
            "berth-test",
            t.path(),
            "tmpfs",
            rustix::mount::MountFlags::empty(),
            Some(data.as_c_str()),
        )
        .unwrap();
        Tmpfs(t)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(self.0.path(), rustix::mount::UnmountFlags::DETACH);
    }
}

#[test]
fn free_space_is_checked_while_writing_not_only_before() {
    // 64 MiB, of which 32 must stay free: a 48 MiB layer passes a check made before
    // it (64 MiB free) and must be stopped on the way.
    let fs = Tmpfs::new(64);
    let root = fs.0.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let big = vec![1u8; 48 << 20];
    let err = unpack(
        &layer(&[E::File("big", 0o644, &big)])[..],
        &root,
        &Target::Snapshot,
        Limits {
            min_free_bytes: 32 << 20,
            ..Limits::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, UnpackError::NearlyFull { .. }), "{err}");
    let free = rustix::fs::statvfs(&root).unwrap();
    assert!(free.f_bavail * free.f_frsize >= (32 - 16) << 20);
}
