use super::*;

const EXAMPLE: &str = r#"#cloud-config
hostname: web-1
fqdn: web-1.example.org
manage_etc_hosts: true
ssh_authorized_keys:
  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFEUKdzI6b2WCWo+iCT/FMefnoKrOglxS4fywEozLIdc operator@example
write_files:
  - path: /etc/berth/motd
    content: |
      hello
    permissions: '0600'
  - path: /var/lib/app/config.bin
    encoding: b64
    content: aGVsbG8gd29ybGQ=
    permissions: 0640
  - path: /etc/gz.txt
    frob: 1
    encoding: gz+b64
    content: H4sIAAAAAAAAA8tIzcnJBwCGphA2BQAAAA==
ntp:
  servers: [10.0.0.1]
  pools: [pool.example.org]
timezone: UTC
runcmd:
  - echo hi
frobnicate: 3
berth:
  containers:
    web:
      image: berth.local/busybox:latest
      command: ["httpd", "-f", "-p", "8080"]
      ports: ["8080:8080"]
      restart: always
  sysctls:
    net.core.somaxconn: 1024
    vm.swappiness: "10"
  modules: [br_netfilter]
  registries:
    registry:
      "registry.example.org":
        mirrors: ["mirror.example.org"]
        username: robot
        password: s3cret
network:
  version: 2
  ethernets:
    eth0:
      dhcp4: yes
"#;

#[test]
fn a_full_cloud_config() {
    let (s, report) = from_cloud_config(EXAMPLE);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(s.hostname.as_deref(), Some("web-1"));
    assert_eq!(s.fqdn.as_deref(), Some("web-1.example.org"));
    assert!(s.manage_etc_hosts);
    assert_eq!(s.write_files.len(), 3);
    assert_eq!(s.write_files[0].content, b"hello\n");
    assert_eq!(s.write_files[0].mode, 0o600);
    assert_eq!(s.write_files[1].content, b"hello world");
    assert_eq!(s.write_files[1].mode, 0o640, "YAML 1.1 octal");
    assert_eq!(s.write_files[2].content, b"hello");
    assert_eq!(s.ntp_servers, ["10.0.0.1", "pool.example.org"]);
    assert!(s.containers["web"].contains("berth.local/busybox:latest"));
    assert_eq!(s.sysctls["net.core.somaxconn"], "1024");
    assert_eq!(s.sysctls["vm.swappiness"], "10");
    assert_eq!(s.modules, ["br_netfilter"]);
    let registries = s.registries.as_deref().unwrap();
    assert!(registries.contains("mirror.example.org"), "{registries}");
    assert!(s.network.as_ref().unwrap().links[0].dhcp4, "yes is true");
    let warned: Vec<String> = report.warnings.iter().map(|w| w.to_string()).collect();
    let said = warned.join("\n");
    assert!(
        said.contains("runcmd: ignored: Berth runs no shell"),
        "{said}"
    );
    assert!(said.contains("frobnicate: not a key Berth knows"), "{said}");
    assert!(
        said.contains("write_files[2].frob: not a key Berth knows"),
        "{said}"
    );
    assert_eq!(s.ssh_authorized_keys.len(), 1);
}

#[test]
fn a_broken_ssh_key_is_an_error_naming_its_index() {
    let (s, report) = from_cloud_config(
        "#cloud-config\nssh_authorized_keys:\n  - ssh-ed25519 AAAAC3Nza\n  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFEUKdzI6b2WCWo+iCT/FMefnoKrOglxS4fywEozLIdc\n",
    );
    assert_eq!(s.ssh_authorized_keys.len(), 1);
    let errors: Vec<String> = report.errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("ssh_authorized_keys[0]: "),
        "{errors:?}"
    );
}

#[test]
fn the_same_settings_in_toml() {
    let text = r#"
hostname = "web-1"
[[write_files]]
path = "/etc/a"
content = "x"
permissions = "0755"
[berth.containers.web]
image = "berth.local/busybox:latest"
ports = ["8080:8080"]
[berth.sysctls]
"net.ipv4.ip_forward" = 1
"#;
    let (s, report) = from_toml(text);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(s.hostname.as_deref(), Some("web-1"));
    assert_eq!(s.write_files[0].mode, 0o755);
    assert!(s.containers.contains_key("web"));
    assert_eq!(s.sysctls["net.ipv4.ip_forward"], "1");
    let (_, report) = from_toml("hostname = \n");
    assert!(
        report.errors[0].message.contains("line 1"),
        "{:?}",
        report.errors
    );
}

#[test]
fn errors_name_the_key_and_keep_the_rest() {
    let text = "#cloud-config\nhostname: [1, 2]\nfqdn: ok.example\nwrite_files:\n  - path: /usr/bin/x\n    content: x\n  - path: /etc/ok\n    permissions: '999'\n  - path: /etc/fine\n    content: 7\n  - path: relative\n  - content: no path\nberth:\n  containers:\n    web:\n      image: berth.local/busybox:latest\n      restart: sometimes\n    ok:\n      image: berth.local/busybox:latest\n  sysctls:\n    '../../etc/x': 1\n  registries:\n    registry:\n      r.example:\n        mirror: [x]\n";
    let (s, report) = from_cloud_config(text);
    let errors: Vec<String> = report.errors.iter().map(|e| e.to_string()).collect();
    let said = errors.join("\n");
    assert!(
        said.contains("hostname: invalid type: sequence, expected a string"),
        "{said}"
    );
    assert!(
        said.contains("write_files[0].path: /usr/bin/x is on /usr, the read-only"),
        "{said}"
    );
    assert!(
        said.contains("write_files[1].permissions: \"999\" is not an octal mode"),
        "{said}"
    );
    assert!(said.contains("write_files[3].path"), "{said}");
    assert!(
        said.contains("write_files[4]: missing field `path`"),
        "{said}"
    );
    assert!(said.contains("berth.containers.web"), "{said}");
    assert!(said.contains("berth.sysctls.../../etc/x"), "{said}");
    assert!(
        said.contains("berth.registries: ") && said.contains("unknown field `mirror`"),
        "{said}"
    );
    // What was valid stays.
    assert_eq!(s.fqdn.as_deref(), Some("ok.example"));
    assert_eq!(s.write_files.len(), 1);
    assert_eq!(s.write_files[0].path, PathBuf::from("/etc/fine"));
    assert_eq!(s.write_files[0].content, b"7", "a scalar is its text");
    assert!(s.containers.contains_key("ok") && !s.containers.contains_key("web"));
}

#[test]
fn syntax_errors_have_a_line_and_column() {
    let (s, report) = from_cloud_config("#cloud-config\nhostname: a\nwrite_files: [\n  - {\n");
    assert_eq!(s, Settings::default());
    let e = report.errors[0].to_string();
    assert!(e.starts_with("user-data (YAML)"), "{e}");
    assert!(
        e.contains("line") || e.contains(":3:") || e.contains("3:"),
        "{e}"
    );
    let (_, report) = from_cloud_config("#cloud-config\n- a\n- b\n");
    assert!(
        report.errors[0].message.contains("expected a mapping"),
        "{:?}",
        report
    );
}

/// gz+b64 files of zeros, of these sizes once inflated.
fn gz_files(sizes: &[usize]) -> String {
    use base64::Engine;
    use std::io::Write;
    let mut doc = String::from("#cloud-config\nwrite_files:\n");
    for (i, each) in sizes.iter().enumerate() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![0u8; *each]).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
        doc += &format!("  - path: /var/f{i}\n    encoding: gz+b64\n    content: {b64}\n");
    }
    doc
}

#[test]
fn write_files_together_decode_to_at_most_the_total_cap() {
    // Six files of 3 MiB, each under the 4 MiB a file may hold: five fit in 16 MiB, the
    // sixth does not; a 1 MiB file then fills the budget exactly, and after that not
    // even one byte more is taken, whatever its encoding.
    let m = 1 << 20;
    let mut doc = gz_files(&[3 * m, 3 * m, 3 * m, 3 * m, 3 * m, 3 * m, m]);
    doc += "  - path: /etc/plain\n    content: x\n";
    doc += "  - path: /etc/b64\n    encoding: b64\n    content: aGVsbG8=\n";
    let (s, report) = from_cloud_config(&doc);
    let total: usize = s.write_files.iter().map(|f| f.content.len()).sum();
    assert_eq!(
        (s.write_files.len(), total),
        (6, MAX_FILES_TOTAL),
        "{report:?}"
    );
    let said: Vec<String> = report.errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(said.len(), 3, "{said:?}");
    for (e, i) in said.iter().zip([5, 7, 8]) {
        assert!(
            e.starts_with(&format!("write_files[{i}].content: past the")),
            "{e}"
        );
    }
    // Alone, one such file is fine, and one over the per-file cap is not.
    let (s, report) = from_cloud_config(&gz_files(&[3 * m]));
    assert_eq!((s.write_files.len(), report.errors.len()), (1, 0));
    let (_, report) = from_cloud_config(&gz_files(&[4 * m + 1]));
    assert!(
        report.errors[0]
            .message
            .contains("the most one file may hold"),
        "{report:?}"
    );
}

#[test]
fn update_health_settings_are_checked() {
    let (s, report) = from_cloud_config(
        "#cloud-config\nberth:\n  update:\n    health_seconds: 5\n    health_timeout_seconds: 40\n",
    );
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(
        s.update,
        Some(berth_schema::update::UpdateConfig {
            health_seconds: Some(5),
            health_timeout_seconds: Some(40),
            ..Default::default()
        })
    );
    for (doc, at) in [
        ("health_secs: 5", "berth.update"),
        ("health_seconds: -1", "berth.update.health_seconds"),
        ("health_seconds: 90000", "berth.update.health_seconds"),
        (
            "health_timeout_seconds: 0",
            "berth.update.health_timeout_seconds",
        ),
    ] {
        let (s, report) =
            from_cloud_config(&format!("#cloud-config\nberth:\n  update:\n    {doc}\n"));
        assert_eq!(s.update, None, "{doc}");
        assert!(
            report.errors.iter().any(|e| e.to_string().starts_with(at)),
            "{doc}: {report:?}"
        );
    }
}

#[test]
fn metrics_settings_are_checked() {
    let (s, report) = from_cloud_config(
        "#cloud-config\nberth:\n  metrics:\n    listen: 0.0.0.0:9100\n    token: 0123456789abcdef0123\n",
    );
    assert!(report.errors.is_empty(), "{report:?}");
    let m = s.metrics.expect("metrics");
    assert_eq!(
        (m.listen.as_str(), m.token.as_deref()),
        ("0.0.0.0:9100", Some("0123456789abcdef0123"))
    );
    for (doc, at) in [
        ("listen: 9100", "berth.metrics.listen"),
        ("port: 9100", "berth.metrics"),
        (
            "listen: 0.0.0.0:9100\n    token: short",
            "berth.metrics.token",
        ),
    ] {
        let (s, report) =
            from_cloud_config(&format!("#cloud-config\nberth:\n  metrics:\n    {doc}\n"));
        assert_eq!(s.metrics, None, "{doc}");
        assert!(
            report.errors.iter().any(|e| e.to_string().starts_with(at)),
            "{doc}: {report:?}"
        );
    }
}
