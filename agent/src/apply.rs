//! Making the settings real, each item on its own with a status: the hostname and
//! /etc/hosts, files, sysctls, kernel modules, CA certificates, network and time
//! settings (to berth-net), container declarations (to the daemon). /etc is a tmpfs
//! seeded at every boot, so all of this happens at every boot.

use std::path::{Path, PathBuf};

use berth_net::config::NetworkConfig;
use berth_persist::Owner;

use crate::inroot::Root;
use crate::settings::{Settings, WriteFile};

/// The image store's registry settings (mirrors, credentials, insecure hosts).
const REGISTRIES: &str = "/etc/berth/registries.toml";
/// init's health watch of a trial boot reads it (its stage2::slots).
const UPDATE: &str = berth_schema::update::CONFIG_PATH;
/// The daemon's Prometheus endpoint (0600: it may hold a token and a TLS key).
const METRICS: &str = berth_schema::metrics::CONFIG_PATH;
/// Where berth-logforward ships the logs.
const LOGS: &str = berth_schema::logs::CONFIG_PATH;

/// What became of one item.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    pub item: String,
    pub ok: bool,
    pub detail: String,
}

/// Where things go: every path is absolute inside `root` (`/` on the machine, a
/// temporary tree in tests), and is written without following a symlink on the way.
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
}

/// A checked `berth.NAME` section written as the TOML file its reader loads.
fn section(
    root: &Root,
    name: &str,
    value: &impl serde::Serialize,
    path: &Path,
    mode: u32,
) -> Status {
    let written = toml::to_string(value)
        .map_err(|e| e.to_string())
        .and_then(|text| {
            let body = format!("# written by berth-agent from user-data's berth.{name}\n{text}");
            root.replace(path, body.as_bytes(), mode, None)
                .map_err(|e| e.to_string())
        });
    status(
        format!("berth.{name}"),
        written.map(|()| path.display().to_string()),
    )
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

/// The SSH server's keys, user-data's and the metadata's, written afresh (a key gone
/// from both is gone at this boot); None when there are none (the file is removed, and
/// the berth-sshd service leaves SSH off).
fn ssh_keys(
    user_data: &[String],
    metadata: &[String],
    root: &Root,
) -> Option<Result<String, String>> {
    let path = Path::new(crate::ssh::AUTHORIZED_KEYS);
    let (text, dropped) = crate::ssh::authorized_keys(user_data, metadata);
    if text.is_empty() {
        let _ = root.remove(path);
        return None;
    }
    let n = text.lines().count();
    Some(
        root.replace(path, text.as_bytes(), 0o600, None)
            .map(|()| {
                let mut said = format!("{n} key(s) for SSH (root's login runs berthctl)");
                for d in dropped {
                    said += &format!("; {d}");
                }
                said
            })
            .map_err(|e| e.to_string()),
    )
}

/// Applies `s`; the network settings are the datasource's `network` unless the
/// user-data has its own.
pub fn apply(
    s: &Settings,
    datasource_network: Option<&NetworkConfig>,
    hostname_from_metadata: Option<&str>,
    metadata_keys: &[String],
    t: &Targets,
) -> Vec<Status> {
    let root = match Root::open(&t.root) {
        Ok(r) => r,
        Err(e) => return vec![status("root", Err(e.to_string()))],
    };
    let mut out = Vec::new();
    let names = Names::choose(s, hostname_from_metadata, &mut out);
    if let Some(h) = &names.host {
        out.push(status("hostname", set_hostname(h, &root, t)));
    }
    if s.manage_etc_hosts {
        let name = names.host.as_deref().unwrap_or("berth");
        out.push(status(
            "/etc/hosts",
            etc_hosts(name, names.fqdn.as_deref(), &root),
        ));
    }
    for f in &s.write_files {
        out.push(status(
            format!("file {}", f.path.display()),
            write_file(f, &root),
        ));
    }
    if let Some(done) = ssh_keys(&s.ssh_authorized_keys, metadata_keys, &root) {
        out.push(status("ssh keys", done));
    }
    for (key, value) in &s.sysctls {
        out.push(status(format!("sysctl {key}"), sysctl(key, value, &root)));
    }
    for m in &s.modules {
        out.push(status(format!("module {m}"), load_module(m, t)));
    }
    if !s.ca_certs.is_empty() {
        out.push(status("ca_certs", add_ca_certs(&s.ca_certs, &root, t)));
    }
    let mut network = s.network.clone().or_else(|| datasource_network.cloned());
    if !s.ntp_servers.is_empty() {
        network
            .get_or_insert_with(NetworkConfig::default)
            .ntp
            .extend(s.ntp_servers.iter().cloned());
    }
    if let Some(n) = &network {
        out.push(status("network", write_network(n, &root, t)));
    }
    if let Some(text) = &s.registries {
        // 0600 from its creation on: it may hold registry passwords.
        let body = format!("# written by berth-agent from user-data\n{text}");
        let written = root
            .replace(Path::new(REGISTRIES), body.as_bytes(), 0o600, None)
            .map_err(|e| e.to_string());
        out.push(status(
            "registries",
            written.map(|()| REGISTRIES.to_string()),
        ));
    }
    if let Some(u) = &s.update {
        out.push(section(&root, "update", u, Path::new(UPDATE), 0o644));
    }
    if let Some(m) = &s.metrics {
        // 0600: it may hold the token and the TLS key.
        out.push(section(&root, "metrics", m, Path::new(METRICS), 0o600));
    }
    if let Some(l) = &s.logs {
        out.push(section(&root, "logs", l, Path::new(LOGS), 0o644));
    }
    for (name, text) in &s.containers {
        out.push(status(
            format!("container {name}"),
            write_declaration(name, text, &root, t),
        ));
    }
    out
}

/// The machine's host name and fully qualified name, each checked before it reaches
/// sethostname or /etc/hosts.
struct Names {
    host: Option<String>,
    fqdn: Option<String>,
}

impl Names {
    /// The host name is user-data's `hostname`, else the first label of its `fqdn`, else
    /// that of the metadata's hostname. A value that is not a DNS name is an error
    /// naming its key, and nothing is made of it (the next source is used instead).
    fn choose(s: &Settings, metadata: Option<&str>, out: &mut Vec<Status>) -> Names {
        let mut checked = |key: &str, value: Option<&str>, one_label: bool| {
            let value = value?;
            match check_name(value, one_label) {
                Ok(()) => Some(value.to_string()),
                Err(why) => {
                    out.push(status(key, Err(format!("{value:?} {why}; not used"))));
                    None
                }
            }
        };
        let host = checked("hostname", s.hostname.as_deref(), true);
        let fqdn = checked("fqdn", s.fqdn.as_deref(), false);
        let meta = checked("metadata hostname", metadata, false);
        let first_label = |n: &String| n.split('.').next().unwrap_or(n).to_string();
        Names {
            host: host
                .or_else(|| fqdn.as_ref().map(first_label))
                .or_else(|| meta.as_ref().map(first_label)),
            fqdn,
        }
    }
}

/// RFC 1123 (2.1) host names: labels of letters, digits and hyphens, 1 to 63 bytes, not
/// starting nor ending with a hyphen, 253 bytes in all (RFC 1035's limit without the
/// root's dot). Anything else (a newline, a space, an underscore) could add a line or a
/// name to /etc/hosts.
fn check_name(name: &str, one_label: bool) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 253 {
        return Err("is not a host name (1 to 253 bytes)");
    }
    if one_label && name.contains('.') {
        return Err("is not a host name: one label, without dots (the fqdn key takes a domain)");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err("is not a host name: labels of letters, digits and inner hyphens, 1 to 63 bytes each")
    }
}

fn set_hostname(name: &str, root: &Root, t: &Targets) -> Result<String, String> {
    if t.live {
        nix::unistd::sethostname(name).map_err(|e| format!("sethostname: {e}"))?;
    }
    root.replace(
        Path::new("/etc/hostname"),
        format!("{name}\n").as_bytes(),
        0o644,
        None,
    )
    .map_err(|e| e.to_string())?;
    Ok(name.to_string())
}

/// `name` and `fqdn` have been checked ([`check_name`]): each is one word of the line.
fn etc_hosts(name: &str, fqdn: Option<&str>, root: &Root) -> Result<String, String> {
    let names = match fqdn {
        Some(f) if f != name => format!("{f} {name}"),
        _ => name.to_string(),
    };
    let text = format!(
        "# written by berth-agent (manage_etc_hosts)\n127.0.0.1 localhost\n::1 localhost ip6-localhost\n127.0.1.1 {names}\n"
    );
    root.replace(Path::new("/etc/hosts"), text.as_bytes(), 0o644, None)
        .map_err(|e| e.to_string())?;
    Ok(names)
}

/// Owners by name need the image's /etc/passwd, which has root only: `root`, `root:root`
/// and numeric `uid:gid` are taken.
fn owner(spec: Option<&str>) -> Result<Option<Owner>, String> {
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
    Ok(Some(Owner {
        uid: id(user)?,
        gid: id(group)?,
    }))
}

/// Made (or appended to) under the root without following symlinks, with the owner and
/// mode set on the descriptor before the file is in place.
fn write_file(f: &WriteFile, root: &Root) -> Result<String, String> {
    let owner = owner(f.owner.as_deref())?;
    let written = if f.append {
        root.append(&f.path, &f.content, f.mode, owner)
    } else {
        root.replace(&f.path, &f.content, f.mode, owner)
    };
    written.map_err(|e| e.to_string())?;
    Ok(format!("{} bytes, mode {:o}", f.content.len(), f.mode))
}

/// /proc/sys under the root: the file must exist (a sysctl is never made).
fn sysctl(key: &str, value: &str, root: &Root) -> Result<String, String> {
    let path = Path::new("/proc/sys").join(key.replace('.', "/"));
    match root.write_existing(&path, value.as_bytes()) {
        Err(e) if e.is_not_found() => Err(format!("no such sysctl ({})", path.display())),
        Err(e) => Err(e.to_string()),
        Ok(()) => Ok(value.to_string()),
    }
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

fn add_ca_certs(pems: &[String], root: &Root, t: &Targets) -> Result<String, String> {
    let text: String = pems
        .iter()
        .map(|pem| format!("\n# added by berth-agent from user-data\n{}\n", pem.trim()))
        .collect();
    root.append(&t.ca_bundle, text.as_bytes(), 0o644, None)
        .map_err(|e| e.to_string())?;
    Ok(format!("{} added to {}", pems.len(), t.ca_bundle.display()))
}

fn write_network(n: &NetworkConfig, root: &Root, t: &Targets) -> Result<String, String> {
    root.replace(&t.network_json, n.to_json().as_bytes(), 0o644, None)
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "{} link entries, {} time servers, handed to berth-net",
        n.links.len(),
        n.ntp.len()
    ))
}

fn write_declaration(name: &str, text: &str, root: &Root, t: &Targets) -> Result<String, String> {
    // One file inside containers.d, whatever the parser let through ("/x" would make
    // join() leave it).
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(format!("{name:?} is not a file name for a declaration"));
    }
    let path = t.containers_dir.join(format!("{name}.toml"));
    let body = format!("# written by berth-agent from user-data\n{text}");
    root.replace(&path, body.as_bytes(), 0o644, None)
        .map_err(|e| e.to_string())?;
    Ok(path.display().to_string())
}

#[cfg(test)]
mod tests;
