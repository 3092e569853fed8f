//! Making the settings real, each item on its own with a status: the hostname and
//! /etc/hosts, files, sysctls, kernel modules, CA certificates, network and time
//! settings (to berth-net), container declarations (to the daemon). /etc is a tmpfs
//! seeded at every boot, so all of this happens at every boot.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use berth_net::config::NetworkConfig;

use crate::settings::{Settings, WriteFile};

/// The image store's registry settings (mirrors, credentials, insecure hosts).
const REGISTRIES: &str = "/etc/berth/registries.toml";

/// What became of one item.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    pub item: String,
    pub ok: bool,
    pub detail: String,
}

/// Where things go; the paths are parameters so tests can use a temporary tree.
pub struct Targets {
    pub root: PathBuf,
    pub network_json: PathBuf,
    pub containers_dir: PathBuf,
    pub ca_bundle: PathBuf,
    /// Whether to touch the running kernel (hostname, sysctls, modules).
    pub live: bool,
}

impl Targets {
    pub fn host() -> Targets {
        Targets {
            root: PathBuf::from("/"),
            network_json: PathBuf::from(berth_net::config::CONFIG_PATH),
            containers_dir: PathBuf::from("/etc/berth/containers.d"),
            ca_bundle: PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
            live: true,
        }
    }

    fn path(&self, absolute: &Path) -> PathBuf {
        self.root
            .join(absolute.strip_prefix("/").unwrap_or(absolute))
    }
}

fn status(item: impl Into<String>, result: Result<String, String>) -> Status {
    match result {
        Ok(detail) => Status {
            item: item.into(),
            ok: true,
            detail,
        },
        Err(detail) => Status {
            item: item.into(),
            ok: false,
            detail,
        },
    }
}

/// Applies `s`; the network settings are the datasource's `network` unless the
/// user-data has its own.
pub fn apply(
    s: &Settings,
    datasource_network: Option<&NetworkConfig>,
    hostname_from_metadata: Option<&str>,
    t: &Targets,
) -> Vec<Status> {
    let mut out = Vec::new();
    let hostname = s
        .hostname
        .clone()
        .or_else(|| {
            s.fqdn
                .as_deref()
                .map(|f| f.split('.').next().unwrap_or(f).to_string())
        })
        .or_else(|| hostname_from_metadata.map(|h| h.split('.').next().unwrap_or(h).to_string()));
    if let Some(h) = &hostname {
        out.push(status("hostname", set_hostname(h, t)));
    }
    if s.manage_etc_hosts {
        let name = hostname.as_deref().unwrap_or("berth");
        out.push(status("/etc/hosts", etc_hosts(name, s.fqdn.as_deref(), t)));
    }
    for f in &s.write_files {
        out.push(status(
            format!("file {}", f.path.display()),
            write_file(f, t),
        ));
    }
    if !s.ssh_authorized_keys.is_empty() {
        let keys = s.ssh_authorized_keys.join("\n") + "\n";
        let f = WriteFile {
            path: PathBuf::from("/root/.ssh/authorized_keys"),
            content: keys.into_bytes(),
            mode: 0o600,
            owner: None,
            append: false,
        };
        out.push(status("ssh_authorized_keys", write_file(&f, t)));
    }
    for (key, value) in &s.sysctls {
        out.push(status(format!("sysctl {key}"), sysctl(key, value, t)));
    }
    for m in &s.modules {
        out.push(status(format!("module {m}"), load_module(m, t)));
    }
    if !s.ca_certs.is_empty() {
        out.push(status("ca_certs", add_ca_certs(&s.ca_certs, t)));
    }
    let mut network = s.network.clone().or_else(|| datasource_network.cloned());
    if !s.ntp_servers.is_empty() {
        network
            .get_or_insert_with(NetworkConfig::default)
            .ntp
            .extend(s.ntp_servers.iter().cloned());
    }
    if let Some(n) = &network {
        out.push(status("network", write_network(n, t)));
    }
    if let Some(text) = &s.registries {
        // 0600: it may hold registry passwords.
        let path = t.path(Path::new(REGISTRIES));
        let body = format!("# written by berth-agent from user-data\n{text}");
        out.push(status(
            "registries",
            write_atomic(&path, body.as_bytes(), 0o600).map(|()| REGISTRIES.to_string()),
        ));
    }
    for (name, text) in &s.containers {
        out.push(status(
            format!("container {name}"),
            write_declaration(name, text, t),
        ));
    }
    out
}

fn set_hostname(name: &str, t: &Targets) -> Result<String, String> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-');
    if !valid {
        return Err(format!(
            "{name:?} is not a hostname (letters, digits, -; up to 63)"
        ));
    }
    if t.live {
        nix::unistd::sethostname(name).map_err(|e| format!("sethostname: {e}"))?;
    }
    write_atomic(
        &t.path(Path::new("/etc/hostname")),
        format!("{name}\n").as_bytes(),
        0o644,
    )?;
    Ok(name.to_string())
}

fn etc_hosts(name: &str, fqdn: Option<&str>, t: &Targets) -> Result<String, String> {
    let names = match fqdn {
        Some(f) if f != name => format!("{f} {name}"),
        _ => name.to_string(),
    };
    let text = format!(
        "# written by berth-agent (manage_etc_hosts)\n127.0.0.1 localhost\n::1 localhost ip6-localhost\n127.0.1.1 {names}\n"
    );
    write_atomic(&t.path(Path::new("/etc/hosts")), text.as_bytes(), 0o644)?;
    Ok(names)
}

/// Owners by name need the image's /etc/passwd, which has root only: `root`, `root:root`
/// and numeric `uid:gid` are taken.
fn owner(spec: Option<&str>) -> Result<Option<(u32, u32)>, String> {
    let Some(spec) = spec else {
        return Ok(None);
    };
    let (user, group) = spec.split_once(':').unwrap_or((spec, spec));
    let id = |s: &str| match s {
        "root" => Ok(0),
        n => n
            .parse::<u32>()
            .map_err(|_| format!("owner {spec:?}: only root and numeric ids exist on Berth")),
    };
    Ok(Some((id(user)?, id(group)?)))
}

fn write_file(f: &WriteFile, t: &Targets) -> Result<String, String> {
    let path = t.path(&f.path);
    let owner = owner(f.owner.as_deref())?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    if f.append {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(f.mode)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        file.write_all(&f.content)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    } else {
        write_atomic(&path, &f.content, f.mode)?;
    }
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&path, Some(uid), Some(gid))
            .map_err(|e| format!("chown {}: {e}", path.display()))?;
    }
    Ok(format!("{} bytes, mode {:o}", f.content.len(), f.mode))
}

/// Writes through a temporary file and a rename, so no reader sees half of it.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), String> {
    let tmp = path.with_extension("berth-agent.tmp");
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&tmp, data)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| format!("{}: {e}", path.display()))
}

fn sysctl(key: &str, value: &str, t: &Targets) -> Result<String, String> {
    let path = t.path(&Path::new("/proc/sys").join(key.replace('.', "/")));
    if !path.exists() {
        return Err(format!("no such sysctl ({})", path.display()));
    }
    std::fs::write(&path, value).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(value.to_string())
}

/// Through the kernel's module helper (init's modprobe mode), as the kernel would.
fn load_module(name: &str, t: &Targets) -> Result<String, String> {
    if !t.live {
        return Ok("not loaded (not live)".into());
    }
    let helper = std::fs::read_to_string("/proc/sys/kernel/modprobe")
        .map_err(|e| format!("/proc/sys/kernel/modprobe: {e}"))?;
    let out = std::process::Command::new(helper.trim())
        .args(["-q", "--", name])
        .output()
        .map_err(|e| format!("{}: {e}", helper.trim()))?;
    if out.status.success() {
        Ok("loaded".into())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn add_ca_certs(pems: &[String], t: &Targets) -> Result<String, String> {
    let bundle = t.path(&t.ca_bundle);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&bundle)
        .map_err(|e| format!("{}: {e}", bundle.display()))?;
    for pem in pems {
        let text = format!("\n# added by berth-agent from user-data\n{}\n", pem.trim());
        file.write_all(text.as_bytes())
            .map_err(|e| format!("{}: {e}", bundle.display()))?;
    }
    Ok(format!("{} added to {}", pems.len(), t.ca_bundle.display()))
}

fn write_network(n: &NetworkConfig, t: &Targets) -> Result<String, String> {
    write_atomic(&t.network_json, n.to_json().as_bytes(), 0o644)?;
    Ok(format!(
        "{} link entries, {} time servers, handed to berth-net",
        n.links.len(),
        n.ntp.len()
    ))
}

fn write_declaration(name: &str, text: &str, t: &Targets) -> Result<String, String> {
    let path = t.containers_dir.join(format!("{name}.toml"));
    let body = format!("# written by berth-agent from user-data\n{text}");
    write_atomic(&path, body.as_bytes(), 0o644)?;
    Ok(path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::from_cloud_config;

    #[test]
    fn a_document_applied_to_a_tree() {
        let t = tempfile::tempdir().unwrap();
        let targets = Targets {
            root: t.path().to_path_buf(),
            network_json: t.path().join("run/berth/network.json"),
            containers_dir: t.path().join("etc/berth/containers.d"),
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
"#,
        );
        assert!(report.errors.is_empty(), "{report:?}");
        let statuses = apply(&s, None, Some("meta.example"), &targets);
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
        let mode = std::fs::metadata(t.path().join("etc/app.conf"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o600);
        let net = NetworkConfig::from_json(&read("run/berth/network.json")).unwrap();
        assert_eq!(net.ntp, ["10.0.0.1"]);
        assert!(read("etc/berth/containers.d/web.toml")
            .contains("image = \"berth.local/busybox:latest\""));
        assert!(read("etc/berth/registries.toml").contains("password = \"s3cret\""));
        let mode = std::fs::metadata(t.path().join("etc/berth/registries.toml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "it holds passwords");
    }
}
