//! Container declarations: what should run. One TOML file per container in
//! `/etc/berth/containers.d/` (the agent writes them from user-data; an operator can
//! too), named after the container (`web.toml` declares `web`). Shaped after
//! `docker run`'s options, so an operator's habits carry over:
//!
//! ```toml
//! image = "berth.local/busybox:latest"
//! command = ["httpd", "-f", "-p", "8080"]     # replaces the image's Cmd
//! entrypoint = ["/bin/sh", "-c"]              # replaces the image's Entrypoint
//! env = { GREETING = "hello" }
//! working_dir = "/srv"
//! user = "1000:1000"                          # or a name from the image's /etc/passwd
//! hostname = "web"
//! ports = ["8080:80", "127.0.0.1:5353:53/udp"]
//! volumes = ["data:/var/lib/data", "/var/log/web:/logs:ro", "tmpfs:/tmp"]
//! network = "bridge"                          # "host", "none"
//! restart = "always"                          # "unless-stopped", "on-failure[:N]", "no"
//! memory = "256M"
//! cpus = 1.5
//! pids = 200
//! privileged = false
//! cap_add = ["NET_ADMIN"]
//! cap_drop = ["MKNOD"]
//! read_only = true
//! seccomp = true                              # Docker's default profile (the default)
//! after = ["db"]                              # started after these, stopped before
//! allow_metadata = false                      # may reach 169.254.169.254
//! ```
//!
//! Every problem names the file and the key; unknown keys are errors (a typo must not
//! silently drop a setting).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum DeclarationError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("container declaration {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("container declaration {path}: {key}: {problem}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        problem: String,
    },
}

/// The file as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    image: String,
    #[serde(default)]
    command: Option<Vec<String>>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    ports: Vec<String>,
    #[serde(default)]
    volumes: Vec<String>,
    #[serde(default)]
    network: Option<String>,
    #[serde(default)]
    restart: Option<String>,
    #[serde(default)]
    memory: Option<String>,
    #[serde(default)]
    cpus: Option<f64>,
    #[serde(default)]
    pids: Option<i64>,
    #[serde(default)]
    privileged: bool,
    #[serde(default)]
    cap_add: Vec<String>,
    #[serde(default)]
    cap_drop: Vec<String>,
    #[serde(default)]
    read_only: bool,
    #[serde(default = "yes")]
    seccomp: bool,
    #[serde(default)]
    after: Vec<String>,
    #[serde(default)]
    allow_metadata: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Network {
    Bridge,
    Host,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "policy", content = "max_retries")]
pub enum Restart {
    No,
    Always,
    UnlessStopped,
    /// Restart after a non-zero exit, at most this many times (None: no limit).
    OnFailure(Option<u32>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    /// The host address to listen on (all when None).
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Volume {
    /// A named volume (a btrfs subvolume under /var/lib/berth/volumes), kept across
    /// the container's removal.
    Named {
        name: String,
        target: PathBuf,
        read_only: bool,
    },
    /// A host path; only under /var (see `BIND_ROOTS`).
    Bind {
        source: PathBuf,
        target: PathBuf,
        read_only: bool,
    },
    Tmpfs {
        target: PathBuf,
    },
}

/// Where bind mounts may come from: the writable, persistent /var. Not the verified,
/// read-only /usr, and not /etc, which is rebuilt at every boot. The parser checks the
/// path as written, for an early error; the check that holds is made when the
/// container starts (`volumes::resolve_bind`: no symlink followed below the root).
pub const BIND_ROOTS: &[&str] = &["/var"];

/// A checked declaration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Declaration {
    pub name: String,
    pub image: String,
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub ports: Vec<Port>,
    pub volumes: Vec<Volume>,
    pub network: Network,
    pub restart: Restart,
    pub memory: Option<u64>,
    /// CPU quota in thousandths of a CPU.
    pub millicpus: Option<u64>,
    pub pids: Option<i64>,
    pub privileged: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub read_only: bool,
    pub seccomp: bool,
    pub after: Vec<String>,
    pub allow_metadata: bool,
}

/// A container name: what docker accepts (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`), up to 63.
/// `berthctl debug`'s containers are named so; no declared container may be.
pub const DEBUG_PREFIX: &str = "debug-";

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// "256M", "1G", "512k", "1048576": bytes (binary multiples, as docker reads them).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits.parse().ok()?;
    let mult: u64 = match unit.to_ascii_lowercase().trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// `[ip:]hostport:containerport[/proto]`.
pub fn parse_port(s: &str) -> Result<Port, String> {
    let (spec, proto) = match s.rsplit_once('/') {
        Some((spec, "tcp")) => (spec, Protocol::Tcp),
        Some((spec, "udp")) => (spec, Protocol::Udp),
        Some((_, other)) => return Err(format!("{s:?}: protocol {other:?} is not tcp or udp")),
        None => (s, Protocol::Tcp),
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let (ip, host, container) = match parts.as_slice() {
        [h, c] => (None, *h, *c),
        [ip, h, c] => (
            Some(
                ip.parse::<Ipv4Addr>()
                    .map_err(|_| format!("{s:?}: {ip:?} is not an IPv4 address"))?,
            ),
            *h,
            *c,
        ),
        _ => {
            return Err(format!(
                "{s:?} is not [ip:]hostport:containerport[/tcp|udp]"
            ))
        }
    };
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{s:?}: {p:?} is not a port (1-65535)"))
    };
    Ok(Port {
        host_ip: ip,
        host_port: port(host)?,
        container_port: port(container)?,
        protocol: proto,
    })
}

/// `name:/target[:ro]`, `/host/path:/target[:ro|rw]`, `tmpfs:/target`.
pub fn parse_volume(s: &str) -> Result<Volume, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [src, dst] => (*src, *dst, None),
        [src, dst, m] => (*src, *dst, Some(*m)),
        _ => return Err(format!("{s:?} is not source:/target[:ro]")),
    };
    let read_only = match mode {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(m) => return Err(format!("{s:?}: mode {m:?} is not ro or rw")),
    };
    let target = PathBuf::from(target);
    if !target.is_absolute()
        || target
            .components()
            .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(format!(
            "{s:?}: the target must be an absolute path without .."
        ));
    }
    if source == "tmpfs" {
        if mode.is_some() {
            return Err(format!("{s:?}: a tmpfs takes no mode"));
        }
        return Ok(Volume::Tmpfs { target });
    }
    if source.starts_with('/') {
        let src = PathBuf::from(source);
        if src
            .components()
            .any(|c| c == std::path::Component::ParentDir)
        {
            return Err(format!("{s:?}: the source may not contain .."));
        }
        if !BIND_ROOTS
            .iter()
            .any(|root| src.starts_with(root) && src != Path::new(root))
        {
            return Err(format!(
                "{s:?}: bind mounts come from under {} only (/usr is the read-only system, /etc is rebuilt at boot)",
                BIND_ROOTS.join(", ")
            ));
        }
        return Ok(Volume::Bind {
            source: src,
            target,
            read_only,
        });
    }
    if !valid_name(source) {
        return Err(format!("{s:?}: {source:?} is not a volume name"));
    }
    Ok(Volume::Named {
        name: source.to_string(),
        target,
        read_only,
    })
}

pub fn parse_restart(s: &str) -> Result<Restart, String> {
    match s {
        "no" => Ok(Restart::No),
        "always" => Ok(Restart::Always),
        "unless-stopped" => Ok(Restart::UnlessStopped),
        "on-failure" => Ok(Restart::OnFailure(None)),
        other => match other.strip_prefix("on-failure:") {
            Some(n) => n
                .parse()
                .map(|n| Restart::OnFailure(Some(n)))
                .map_err(|_| format!("{s:?}: {n:?} is not a retry count")),
            None => Err(format!(
                "{s:?} is not no, always, unless-stopped or on-failure[:N]"
            )),
        },
    }
}

/// A problem with one key: the key and what is wrong.
type Problem = (&'static str, String);

impl Declaration {
    /// Parses `text`, the declaration of container `name` (from `path`, for errors).
    pub fn parse(name: &str, text: &str, path: &Path) -> Result<Declaration, DeclarationError> {
        let invalid = |(key, problem): Problem| DeclarationError::Invalid {
            path: path.to_path_buf(),
            key,
            problem,
        };
        if !valid_name(name) {
            return Err(invalid((
                "name",
                format!(
                    "{name:?} is not a container name (letters, digits, _ . -; from the file name)"
                ),
            )));
        }
        if name.starts_with(DEBUG_PREFIX) {
            return Err(invalid((
                "name",
                format!("{name:?}: names beginning {DEBUG_PREFIX:?} are `berthctl debug`'s"),
            )));
        }
        let raw: Raw = toml::from_str(text).map_err(|e| DeclarationError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::check(name, raw).map_err(invalid)
    }

    /// Every key of `raw` checked, in the file's order of concerns: what runs, where
    /// it connects, what it may use, what it may do.
    fn check(name: &str, raw: Raw) -> Result<Declaration, Problem> {
        check_program(&raw)?;
        let ports = collect("ports", &raw.ports, parse_port)?;
        let volumes = collect("volumes", &raw.volumes, parse_volume)?;
        let network = parse_network(&raw, &ports)?;
        let restart =
            parse_restart(raw.restart.as_deref().unwrap_or("no")).map_err(|e| ("restart", e))?;
        let memory = raw.memory.as_deref().map(parse_memory).transpose()?;
        let millicpus = raw.cpus.map(parse_cpus).transpose()?;
        if raw.pids.is_some_and(|p| p < 1 && p != -1) {
            return Err(("pids", "must be at least 1 (or -1: no limit)".into()));
        }
        check_caps("cap_add", &raw.cap_add)?;
        check_caps("cap_drop", &raw.cap_drop)?;
        check_hostname(raw.hostname.as_deref())?;
        check_after(name, &raw.after)?;
        Ok(Declaration {
            name: name.to_string(),
            image: raw.image,
            command: raw.command,
            entrypoint: raw.entrypoint,
            env: raw.env,
            working_dir: raw.working_dir,
            user: raw.user,
            hostname: raw.hostname,
            ports,
            volumes,
            network,
            restart,
            memory,
            millicpus,
            pids: raw.pids,
            privileged: raw.privileged,
            cap_add: raw.cap_add,
            cap_drop: raw.cap_drop,
            read_only: raw.read_only,
            seccomp: raw.seccomp,
            after: raw.after,
            allow_metadata: raw.allow_metadata,
        })
    }

    /// Reads `dir/NAME.toml`.
    pub fn load(path: &Path) -> Result<Declaration, DeclarationError> {
        let text = std::fs::read_to_string(path).map_err(|e| DeclarationError::Read {
            path: path.to_path_buf(),
            source: e,
        })?;
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        Self::parse(name, &text, path)
    }
}

/// The image named, and what reaches the kernel as C strings free of NUL bytes.
fn check_program(raw: &Raw) -> Result<(), Problem> {
    if raw.image.trim().is_empty() {
        return Err(("image", "empty".into()));
    }
    for (key, list) in [("command", &raw.command), ("entrypoint", &raw.entrypoint)] {
        if list
            .as_ref()
            .is_some_and(|l| l.iter().any(|a| a.contains('\0')))
        {
            return Err((key, "contains a NUL byte".into()));
        }
    }
    for k in raw.env.keys() {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(("env", format!("{k:?} is not a variable name")));
        }
    }
    Ok(())
}

/// Each item of a list parsed, the first problem under `key`.
fn collect<T>(
    key: &'static str,
    items: &[String],
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, Problem> {
    items
        .iter()
        .map(|i| parse(i))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| (key, e))
}

/// `network`, and what it rules out: published ports off the bridge, and the host's
/// network without consent to the metadata service.
fn parse_network(raw: &Raw, ports: &[Port]) -> Result<Network, Problem> {
    let network = match raw.network.as_deref().unwrap_or("bridge") {
        "bridge" => Network::Bridge,
        "host" => Network::Host,
        "none" => Network::None,
        other => return Err(("network", format!("{other:?} is not bridge, host or none"))),
    };
    if network != Network::Bridge && !ports.is_empty() {
        return Err(("ports", "published ports need network = \"bridge\"".into()));
    }
    // A container in the host's network namespace reaches whatever the host reaches,
    // the metadata service (and the instance credentials it hands out) included: no
    // rule can tell its packets from the host's own. So it must be said.
    if network == Network::Host && !raw.allow_metadata {
        return Err((
            "network",
            "\"host\" shares the host's network, where the cloud metadata address \
             cannot be blocked for one container: set allow_metadata = true to accept \
             that, or use \"bridge\""
                .into(),
        ));
    }
    Ok(network)
}

/// `memory`: a size of at least 6 MiB.
fn parse_memory(m: &str) -> Result<u64, Problem> {
    parse_size(m).filter(|n| *n >= 6 << 20).ok_or_else(|| {
        (
            "memory",
            format!("{m:?} is not a size of at least 6M (\"256M\", \"1G\")"),
        )
    })
}

/// `cpus` (0.01 to 1024) in thousandths of a CPU.
fn parse_cpus(c: f64) -> Result<u64, Problem> {
    if !(0.01..=1024.0).contains(&c) {
        return Err(("cpus", format!("{c} is not between 0.01 and 1024")));
    }
    // In range just above, so neither truncated nor negative.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok((c * 1000.0).round() as u64)
}

fn check_caps(key: &'static str, caps: &[String]) -> Result<(), Problem> {
    match caps.iter().find(|c| crate::caps::normalize(c).is_none()) {
        Some(c) => Err((
            key,
            format!("{c:?} is not a capability (e.g. NET_ADMIN, or ALL)"),
        )),
        None => Ok(()),
    }
}

fn check_hostname(hostname: Option<&str>) -> Result<(), Problem> {
    let Some(h) = hostname else { return Ok(()) };
    let ok = !h.is_empty()
        && h.len() <= 63
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !ok {
        return Err(("hostname", format!("{h:?} is not a host name")));
    }
    Ok(())
}

/// `after`: other containers' names.
fn check_after(name: &str, after: &[String]) -> Result<(), Problem> {
    match after.iter().find(|a| !valid_name(a) || *a == name) {
        Some(a) => Err(("after", format!("{a:?} is not another container's name"))),
        None => Ok(()),
    }
}

/// Every `*.toml` in `dir` (a missing directory is empty): the good ones, and the
/// errors of the others (reported, never fatal: one bad file must not stop the rest).
pub fn load_dir(dir: &Path) -> (Vec<Declaration>, Vec<DeclarationError>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (good, bad),
        Err(e) => {
            bad.push(DeclarationError::Read {
                path: dir.to_path_buf(),
                source: e,
            });
            return (good, bad);
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    for p in paths {
        match Declaration::load(&p) {
            Ok(d) => good.push(d),
            Err(e) => bad.push(e),
        }
    }
    (good, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Declaration, DeclarationError> {
        Declaration::parse("web", text, Path::new("/etc/berth/containers.d/web.toml"))
    }

    #[test]
    fn a_full_declaration_parses() {
        let d = parse(
            r#"
            image = "berth.local/busybox:latest"
            command = ["httpd", "-f", "-p", "8080"]
            env = { GREETING = "hello" }
            ports = ["8080:80", "127.0.0.1:5353:53/udp"]
            volumes = ["data:/data", "/var/log/web:/logs:ro", "tmpfs:/tmp"]
            restart = "on-failure:3"
            memory = "256M"
            cpus = 1.5
            pids = 100
            cap_add = ["NET_ADMIN"]
            cap_drop = ["ALL"]
            after = ["db"]
            "#,
        )
        .unwrap();
        assert_eq!(d.ports[1].host_ip, Some(Ipv4Addr::LOCALHOST));
        assert_eq!(d.ports[1].protocol, Protocol::Udp);
        assert_eq!(d.ports[0].container_port, 80);
        assert_eq!(d.volumes.len(), 3);
        assert!(matches!(
            &d.volumes[1],
            Volume::Bind {
                read_only: true,
                ..
            }
        ));
        assert_eq!(d.restart, Restart::OnFailure(Some(3)));
        assert_eq!(d.memory, Some(256 << 20));
        assert_eq!(d.millicpus, Some(1500));
        assert_eq!(d.network, Network::Bridge);
        assert!(d.seccomp);
    }

    #[test]
    fn problems_name_the_file_and_key() {
        for (text, key) in [
            ("image = \"x\"\nimgae = \"y\"", "imgae"),
            ("image = \"x\"\nports = [\"80\"]", "ports"),
            ("image = \"x\"\nports = [\"70000:80\"]", "ports"),
            ("image = \"x\"\nvolumes = [\"/usr/bin:/x\"]", "volumes"),
            ("image = \"x\"\nvolumes = [\"/etc:/x\"]", "volumes"),
            ("image = \"x\"\nvolumes = [\"/var/../etc:/x\"]", "volumes"),
            ("image = \"x\"\nvolumes = [\"d:relative\"]", "volumes"),
            ("image = \"x\"\nrestart = \"sometimes\"", "restart"),
            ("image = \"x\"\nmemory = \"lots\"", "memory"),
            ("image = \"x\"\ncpus = 0.0", "cpus"),
            ("image = \"x\"\ncap_add = [\"FLY\"]", "cap_add"),
            (
                "image = \"x\"\nnetwork = \"host\"\nports = [\"80:80\"]",
                "ports",
            ),
            ("image = \"x\"\nafter = [\"web\"]", "after"),
            ("image = \"\"", "image"),
            // The host's network cannot keep the metadata service from one container.
            ("image = \"x\"\nnetwork = \"host\"", "allow_metadata"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains("web.toml") && e.contains(key), "{text}: {e}");
        }
        let e = Declaration::parse("-bad", "image = \"x\"", Path::new("-bad.toml")).unwrap_err();
        assert!(e.to_string().contains("not a container name"), "{e}");
        let e = Declaration::parse("debug-7", "image = \"x\"\n", Path::new("debug-7.toml"))
            .unwrap_err();
        assert!(e.to_string().contains("berthctl debug"), "{e}");
        let host = parse("image = \"x\"\nnetwork = \"host\"\nallow_metadata = true").unwrap();
        assert_eq!(host.network, Network::Host);
    }
}
