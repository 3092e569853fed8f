use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::settings::from_cloud_config;

#[test]
fn a_document_applied_to_a_tree() {
    let t = tempfile::tempdir().unwrap();
    let targets = Targets {
        root: t.path().to_path_buf(),
        network_json: PathBuf::from("/run/berth/network.json"),
        containers_dir: PathBuf::from("/etc/berth/containers.d"),
        ca_bundle: PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
        live: false,
    };
    let (s, report) = from_cloud_config(
        r#"#cloud-config
fqdn: web-1.example.org
manage_etc_hosts: localhost
write_files:
  - path: /etc/app.conf
    content: a=1
    permissions: '0600'
  - path: /var/log/x
    content: more
    append: true
    owner: nobody
ntp:
  servers: [10.0.0.1]
berth:
  containers:
    web:
      image: berth.local/busybox:latest
  registries:
    registry:
      "registry.example.org":
        username: robot
        password: s3cret
  metrics:
    listen: 0.0.0.0:9100
    token: a-secret-of-20-chars
"#,
    );
    assert!(report.errors.is_empty(), "{report:?}");
    let metadata_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFEUKdzI6b2WCWo+iCT/FMefnoKrOglxS4fywEozLIdc from-metadata".to_string();
    let statuses = apply(
        &s,
        None,
        Some("meta.example"),
        std::slice::from_ref(&metadata_key),
        &targets,
    );
    let failed: Vec<&Status> = statuses.iter().filter(|s| !s.ok).collect();
    assert_eq!(failed.len(), 1, "{statuses:?}");
    assert!(
        failed[0].detail.contains("only root and numeric ids"),
        "{failed:?}"
    );
    let read = |p: &str| std::fs::read_to_string(t.path().join(p)).unwrap();
    assert_eq!(read("etc/hostname"), "web-1\n");
    assert!(read("etc/hosts").contains("127.0.1.1 web-1.example.org web-1\n"));
    assert_eq!(read("etc/app.conf"), "a=1");
    assert_eq!(
        read("run/berth/ssh/authorized_keys"),
        format!("{metadata_key}\n")
    );
    let mode = std::fs::metadata(t.path().join("etc/app.conf"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o600);
    let net = NetworkConfig::from_json(&read("run/berth/network.json")).unwrap();
    assert_eq!(net.ntp, ["10.0.0.1"]);
    assert!(
        read("etc/berth/containers.d/web.toml").contains("image = \"berth.local/busybox:latest\"")
    );
    assert!(read("etc/berth/registries.toml").contains("password = \"s3cret\""));
    let mode = std::fs::metadata(t.path().join("etc/berth/registries.toml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "it holds passwords");
    let metrics =
        berth_schema::metrics::MetricsConfig::load(&t.path().join("etc/berth/metrics.toml"))
            .unwrap()
            .expect("metrics.toml");
    assert_eq!(metrics.token.as_deref(), Some("a-secret-of-20-chars"));
    let mode = std::fs::metadata(t.path().join("etc/berth/metrics.toml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "it holds the token");
}

/// A root to apply into, and a directory outside it standing for the host's files a
/// container would aim a symlink at, with one precious file (root's, 0600).
struct Tree {
    root: tempfile::TempDir,
    outside: tempfile::TempDir,
}

const PRECIOUS: &str = "root:precious\n";

impl Tree {
    fn new() -> Tree {
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, PRECIOUS).unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        Tree {
            root: tempfile::tempdir().unwrap(),
            outside,
        }
    }

    fn targets(&self) -> Targets {
        Targets {
            root: self.root.path().to_path_buf(),
            network_json: PathBuf::from("/run/berth/network.json"),
            containers_dir: PathBuf::from("/etc/berth/containers.d"),
            ca_bundle: PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
            live: false,
        }
    }

    fn victim(&self) -> PathBuf {
        self.outside.path().join("victim")
    }

    /// `at` (inside the root) made a symlink to `to`, its directories made first.
    fn plant(&self, at: &str, to: &Path) {
        let link = self.root.path().join(at);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(to, link).unwrap();
    }

    /// Nothing outside the root changed: the victim's contents, mode and owner, and no
    /// other file appeared beside it.
    fn assert_outside_untouched(&self) {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(self.victim()).unwrap();
        assert_eq!(std::fs::read_to_string(self.victim()).unwrap(), PRECIOUS);
        assert_eq!(m.mode() & 0o7777, 0o600);
        assert_eq!((m.uid(), m.gid()), (0, 0));
        let names: Vec<_> = std::fs::read_dir(self.outside.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["victim"], "nothing made outside the root");
    }
}

fn file(path: &str, content: &str, mode: u32, owner: Option<&str>, append: bool) -> WriteFile {
    WriteFile {
        path: PathBuf::from(path),
        content: content.as_bytes().to_vec(),
        mode,
        owner: owner.map(str::to_string),
        append,
    }
}

fn files(w: Vec<WriteFile>) -> Settings {
    Settings {
        write_files: w,
        ..Settings::default()
    }
}

#[test]
fn a_symlink_at_a_write_files_path_is_replaced_never_followed() {
    let tree = Tree::new();
    tree.plant("etc/app.conf", &tree.victim());
    // Owner and a set-uid mode: the old chown(path)/chmod(path) followed the link.
    let s = files(vec![file(
        "/etc/app.conf",
        "mine",
        0o4755,
        Some("1234:5678"),
        false,
    )]);
    let statuses = apply(&s, None, None, &[], &tree.targets());
    assert!(statuses.iter().all(|s| s.ok), "{statuses:?}");
    tree.assert_outside_untouched();
    let at = tree.root.path().join("etc/app.conf");
    assert!(std::fs::symlink_metadata(&at).unwrap().is_file());
    assert_eq!(std::fs::read_to_string(at).unwrap(), "mine");
}

#[test]
fn a_symlinked_directory_on_the_way_is_refused() {
    for append in [false, true] {
        let tree = Tree::new();
        // /var/lib/x -> the host's /etc, as a container with a /var volume could plant.
        tree.plant("var/lib/x", tree.outside.path());
        let s = files(vec![
            file("/var/lib/x/victim", "0wned", 0o666, Some("1234"), append),
            file("/var/lib/x/new/dropped", "0wned", 0o644, None, append),
        ]);
        let statuses = apply(&s, None, None, &[], &tree.targets());
        assert!(statuses.iter().all(|s| !s.ok), "{statuses:?}");
        assert!(
            statuses[0].detail.contains("/var/lib/x is a symlink"),
            "{statuses:?}"
        );
        tree.assert_outside_untouched();
    }
}

#[test]
fn a_symlinked_containers_d_is_refused() {
    let tree = Tree::new();
    tree.plant("etc/berth/containers.d", tree.outside.path());
    let s = Settings {
        containers: [("web".to_string(), "image = \"x\"\n".to_string())].into(),
        ..Settings::default()
    };
    let statuses = apply(&s, None, None, &[], &tree.targets());
    assert_eq!(statuses.len(), 1);
    assert!(!statuses[0].ok, "{statuses:?}");
    assert!(statuses[0].detail.contains("is a symlink"), "{statuses:?}");
    tree.assert_outside_untouched();
}

#[test]
fn an_append_target_that_is_a_symlink_is_refused() {
    let tree = Tree::new();
    tree.plant("var/log/app.log", &tree.victim());
    tree.plant("etc/ssl/certs/ca-certificates.crt", &tree.victim());
    let s = Settings {
        ca_certs: vec!["-----BEGIN CERTIFICATE-----".into()],
        ..files(vec![file(
            "/var/log/app.log",
            "more",
            0o666,
            Some("1234"),
            true,
        )])
    };
    let statuses = apply(&s, None, None, &[], &tree.targets());
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    for s in &statuses {
        assert!(!s.ok && s.detail.contains("is a symlink"), "{statuses:?}");
    }
    tree.assert_outside_untouched();
}

#[test]
fn a_fifo_at_an_append_target_is_refused_without_hanging() {
    let tree = Tree::new();
    let fifo = tree.root.path().join("var/log/app.log");
    std::fs::create_dir_all(fifo.parent().unwrap()).unwrap();
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let targets = tree.targets();
    let (tx, rx) = std::sync::mpsc::channel();
    // A thread, so that a regression (a blocking open) fails the test instead of
    // hanging it.
    std::thread::spawn(move || {
        let s = files(vec![file("/var/log/app.log", "more", 0o644, None, true)]);
        let _ = tx.send(apply(&s, None, None, &[], &targets));
    });
    let statuses = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("appending to a FIFO blocked");
    assert!(!statuses[0].ok, "{statuses:?}");
    assert!(statuses[0].detail.contains("FIFO"), "{statuses:?}");
}

#[test]
fn owner_and_mode_are_set_on_new_replaced_and_appended_files() {
    use std::os::unix::fs::MetadataExt;
    let tree = Tree::new();
    let existing = tree.root.path().join("var/log/old.log");
    std::fs::create_dir_all(existing.parent().unwrap()).unwrap();
    std::fs::write(&existing, "old\n").unwrap();
    let s = files(vec![
        file("/etc/new/app.conf", "a", 0o2750, Some("1234:5678"), false),
        file("/var/log/old.log", "new\n", 0o640, Some("1234:5678"), true),
        file("/var/log/fresh.log", "x", 0o600, Some("42"), true),
    ]);
    let statuses = apply(&s, None, None, &[], &tree.targets());
    assert!(statuses.iter().all(|s| s.ok), "{statuses:?}");
    let meta = |p: &str| std::fs::metadata(tree.root.path().join(p)).unwrap();
    let m = meta("etc/new/app.conf");
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o2750, 1234, 5678));
    let m = meta("var/log/old.log");
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o640, 1234, 5678));
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "old\nnew\n");
    let m = meta("var/log/fresh.log");
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o600, 42, 42));
    assert_eq!(meta("etc/new").mode() & 0o7777, 0o755, "made on the way");
}

#[test]
fn host_names_are_checked_before_they_reach_etc_hosts() {
    let long_label = "a".repeat(64);
    let too_long = ["a"; 127].join("."); // 253 bytes is the most
    let bad = [
        "web\n1.2.3.4 evil",
        "web 1",
        "web_1",
        long_label.as_str(),
        "-web",
        "web-",
        "",
        "web..example",
        &format!("{too_long}.ab"),
    ];
    for name in bad {
        for key in ["hostname", "fqdn", "metadata"] {
            let tree = Tree::new();
            let s = Settings {
                hostname: (key == "hostname").then(|| name.to_string()),
                fqdn: (key == "fqdn").then(|| name.to_string()),
                manage_etc_hosts: true,
                ..Settings::default()
            };
            let meta = (key == "metadata").then_some(name);
            let statuses = apply(&s, None, meta, &[], &tree.targets());
            let refused = statuses.iter().find(|s| !s.ok).expect("refused");
            assert!(
                refused.item.starts_with(key),
                "{key} {name:?}: {statuses:?}"
            );
            let hosts = std::fs::read_to_string(tree.root.path().join("etc/hosts")).unwrap();
            assert!(
                hosts.ends_with("127.0.1.1 berth\n"),
                "{key} {name:?}: {hosts}"
            );
            assert!(
                !tree.root.path().join("etc/hostname").exists(),
                "{key} {name:?}"
            );
        }
    }
    let longest = ["a".repeat(63).as_str(), &too_long[..189]].join(".");
    assert_eq!(longest.len(), 253);
    for good in ["web-1", "w", "0web", "web-1.example.org", longest.as_str()] {
        assert_eq!(check_name(good, false), Ok(()), "{good}");
    }
    assert!(
        check_name("web.example", true).is_err(),
        "hostname is one label"
    );
}
