use std::os::unix::fs::MetadataExt;

use super::*;

fn root() -> (tempfile::TempDir, Root) {
    let t = tempfile::tempdir().unwrap();
    let r = Root::open(t.path()).unwrap();
    (t, r)
}

#[test]
fn paths_leaving_the_root_are_refused() {
    let (_t, r) = root();
    for bad in ["/etc/../../x", "/", "../x"] {
        let e = r.replace(Path::new(bad), b"x", 0o644, None).unwrap_err();
        assert!(matches!(e, InRootError::BadPath { .. }), "{bad}: {e}");
    }
}

#[test]
fn an_append_target_with_another_name_is_refused() {
    // A hard link to a file elsewhere on the same filesystem: appending (and fchown,
    // fchmod) would change that file too.
    let (t, r) = root();
    let other = t.path().join("other");
    std::fs::write(&other, "other\n").unwrap();
    std::fs::hard_link(&other, t.path().join("log")).unwrap();
    let e = r
        .append(
            Path::new("/log"),
            b"more",
            0o666,
            Some(Owner { uid: 7, gid: 7 }),
        )
        .unwrap_err();
    assert!(e.to_string().contains("hard link"), "{e}");
    let m = std::fs::metadata(&other).unwrap();
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "other\n");
    assert_eq!((m.uid(), m.mode() & 0o777), (0, 0o644));
}

#[test]
fn reads_and_removals_do_not_follow_symlinks() {
    let (t, r) = root();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "secret").unwrap();
    std::fs::create_dir_all(t.path().join("var/lib/berth")).unwrap();
    std::os::unix::fs::symlink(outside.path(), t.path().join("var/lib/berth/agent")).unwrap();
    let kept = Path::new("/var/lib/berth/agent/secret");
    assert!(matches!(
        r.read(kept, 100),
        Err(InRootError::Symlink { .. })
    ));
    assert!(r.remove(kept).is_err());
    assert!(outside.path().join("secret").exists());
    // A symlink at the name itself is removed, its target kept.
    std::os::unix::fs::symlink(outside.path().join("secret"), t.path().join("ud")).unwrap();
    assert!(matches!(
        r.read(Path::new("/ud"), 100),
        Err(InRootError::Symlink { .. })
    ));
    r.remove(Path::new("/ud")).unwrap();
    r.remove(Path::new("/ud")).unwrap();
    r.remove(Path::new("/missing/dir/ud")).unwrap();
    assert!(outside.path().join("secret").exists());
}

#[test]
fn reads_are_bounded_and_take_only_regular_files() {
    let (t, r) = root();
    std::fs::write(t.path().join("big"), [0u8; 101]).unwrap();
    assert!(matches!(
        r.read(Path::new("/big"), 100),
        Err(InRootError::TooLarge { .. })
    ));
    assert_eq!(r.read(Path::new("/big"), 101).unwrap().len(), 101);
    nix::unistd::mkfifo(
        &t.path().join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    // In a thread, so that a regression (a blocking open) fails instead of hanging.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(r.read(Path::new("/fifo"), 100).map_err(|e| e.to_string()));
        r
    });
    let e = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("opening a FIFO blocked")
        .unwrap_err();
    assert!(e.contains("a FIFO"), "{e}");
    let r = Root::open(t.path()).unwrap();
    assert!(r.read(Path::new("/none"), 1).unwrap_err().is_not_found());
}

#[test]
fn a_sysctl_is_written_only_when_it_exists() {
    let (t, r) = root();
    std::fs::create_dir_all(t.path().join("proc/sys/vm")).unwrap();
    std::fs::write(t.path().join("proc/sys/vm/swappiness"), "60").unwrap();
    r.write_existing(Path::new("/proc/sys/vm/swappiness"), b"10")
        .unwrap();
    let now = std::fs::read_to_string(t.path().join("proc/sys/vm/swappiness")).unwrap();
    assert_eq!(now, "10");
    let e = r
        .write_existing(Path::new("/proc/sys/vm/nope"), b"1")
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert!(!t.path().join("proc/sys/vm/nope").exists());
}
