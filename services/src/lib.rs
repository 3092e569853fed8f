//! Berth's host service definitions: one TOML file per service in
//! `/usr/lib/berth/services/`, named after the service (`berth-runtime.toml`).
//!
//! ```toml
//! name = "berth-runtime"
//! exec = "/usr/bin/berth-runtime"
//! args = ["daemon"]
//! after = ["berth-agent"]          # start once these are ready (or have failed)
//! requires = []                    # start only once these are ready
//! ready = "socket:/run/berth/runtime.sock"   # or "notify", or "started" (default)
//! restart = "always"               # "on-failure" (default), "never"
//! restart_delay_ms = 200           # first delay; doubles per failure up to the max
//! restart_delay_max_ms = 30000
//! stop_signal = "SIGTERM"
//! stop_timeout_ms = 10000          # then SIGKILL to the whole cgroup
//! delegate = true                  # the service manages a cgroup subtree of its own
//! memory_max = "512M"
//! ```
//!
//! The same parser runs in the image builder, which refuses an image with a bad
//! definition, and in init, which skips (and reports) one it cannot use.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("reading service definitions in {dir}: {source}")]
    ReadDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("reading service definition {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("service definition {path}: {source}")]
    Syntax {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("service definition {path}: {key}: {problem}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        problem: String,
    },
    #[error("service {name}: {key} names {other}, which is not defined")]
    UnknownDependency {
        name: String,
        key: &'static str,
        other: String,
    },
    #[error("service {name} is defined twice ({first} and {second})")]
    Duplicate {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("services depend on each other in a cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    Always,
    #[default]
    OnFailure,
    Never,
}

/// When a started service counts as ready, so the services after it may start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// As soon as its process runs.
    Started,
    /// When it sends `READY=1` to `$NOTIFY_SOCKET` (systemd's sd_notify protocol).
    Notify,
    /// When this unix socket accepts a connection.
    Socket(PathBuf),
}

/// A checked service definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDef {
    pub name: String,
    pub exec: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub after: Vec<String>,
    pub requires: Vec<String>,
    pub ready: Readiness,
    pub ready_timeout: Duration,
    pub restart: Restart,
    pub restart_delay: Duration,
    pub restart_delay_max: Duration,
    pub stop_signal: i32,
    pub stop_timeout: Duration,
    pub delegate: bool,
    pub memory_max: Option<u64>,
    pub cpu_weight: Option<u32>,
    pub cpu_max_percent: Option<u32>,
    pub pids_max: Option<u64>,
    /// Started at boot; otherwise only on request (`berthctl start`, `berth.start=`).
    pub autostart: bool,
    /// The log file is rotated when it grows past this.
    pub log_max_bytes: u64,
}

impl ServiceDef {
    /// The services that must be ready (or, for `after`, settled) before this one starts.
    pub fn dependencies(&self) -> impl Iterator<Item = &str> {
        self.requires
            .iter()
            .chain(self.after.iter())
            .map(String::as_str)
    }

    /// The delay before restart number `failures` (1 = the first): doubling, capped.
    pub fn backoff(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(20);
        self.restart_delay
            .saturating_mul(1 << exp)
            .min(self.restart_delay_max)
    }
}

/// The file as written; every key optional so the checks can name what is missing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDef {
    name: Option<String>,
    exec: Option<PathBuf>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    after: Vec<String>,
    #[serde(default)]
    requires: Vec<String>,
    ready: Option<String>,
    ready_timeout_ms: Option<u64>,
    #[serde(default)]
    restart: Restart,
    restart_delay_ms: Option<u64>,
    restart_delay_max_ms: Option<u64>,
    stop_signal: Option<String>,
    stop_timeout_ms: Option<u64>,
    #[serde(default)]
    delegate: bool,
    memory_max: Option<toml::Value>,
    cpu_weight: Option<u32>,
    cpu_max_percent: Option<u32>,
    pids_max: Option<u64>,
    autostart: Option<bool>,
    log_max_bytes: Option<u64>,
}

pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(90);
pub const DEFAULT_RESTART_DELAY: Duration = Duration::from_millis(200);
pub const DEFAULT_RESTART_DELAY_MAX: Duration = Duration::from_secs(30);
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_LOG_MAX_BYTES: u64 = 4 << 20;

/// Parses one definition; `path` names the file in errors, and its stem must be the name.
pub fn parse(path: &Path, text: &str) -> Result<ServiceDef, DefinitionError> {
    let raw: RawDef = toml::from_str(text).map_err(|source| DefinitionError::Syntax {
        path: path.to_path_buf(),
        source: Box::new(source),
    })?;
    let invalid = |key: &'static str, problem: String| DefinitionError::Invalid {
        path: path.to_path_buf(),
        key,
        problem,
    };
    let name = raw.name.ok_or_else(|| invalid("name", "missing".into()))?;
    check_name(&name).map_err(|p| invalid("name", p))?;
    if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
        if stem != name {
            return Err(invalid(
                "name",
                format!("{name:?} does not match the file name ({stem}.toml)"),
            ));
        }
    }
    let exec = raw.exec.ok_or_else(|| invalid("exec", "missing".into()))?;
    if !exec.is_absolute() {
        return Err(invalid(
            "exec",
            format!("{} is not an absolute path", exec.display()),
        ));
    }
    for (key, list) in [("after", &raw.after), ("requires", &raw.requires)] {
        for other in list {
            check_name(other).map_err(|p| invalid(key, p))?;
            if *other == name {
                return Err(invalid(key, "a service cannot depend on itself".into()));
            }
        }
    }
    for key in raw.env.keys() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(invalid("env", format!("{key:?} is not a variable name")));
        }
    }
    let ready = parse_readiness(raw.ready.as_deref()).map_err(|p| invalid("ready", p))?;
    let ms = |key: &'static str, v: Option<u64>, default: Duration| match v {
        Some(0) => Err(invalid(key, "must be more than 0".into())),
        Some(ms) => Ok(Duration::from_millis(ms)),
        None => Ok(default),
    };
    let restart_delay = ms(
        "restart_delay_ms",
        raw.restart_delay_ms,
        DEFAULT_RESTART_DELAY,
    )?;
    let restart_delay_max = ms(
        "restart_delay_max_ms",
        raw.restart_delay_max_ms,
        DEFAULT_RESTART_DELAY_MAX.max(restart_delay),
    )?;
    if restart_delay_max < restart_delay {
        return Err(invalid(
            "restart_delay_max_ms",
            "is less than restart_delay_ms".into(),
        ));
    }
    let stop_signal = match raw.stop_signal.as_deref() {
        None => 15,
        Some(s) => signal_number(s).ok_or_else(|| {
            invalid(
                "stop_signal",
                format!("{s:?} is not one of SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGKILL"),
            )
        })?,
    };
    let memory_max = raw
        .memory_max
        .map(|v| parse_bytes(&v))
        .transpose()
        .map_err(|p| invalid("memory_max", p))?;
    if let Some(w) = raw.cpu_weight {
        if !(1..=10000).contains(&w) {
            return Err(invalid("cpu_weight", format!("{w} is not in 1..=10000")));
        }
    }
    if raw.cpu_max_percent == Some(0) {
        return Err(invalid("cpu_max_percent", "must be more than 0".into()));
    }
    if raw.pids_max == Some(0) {
        return Err(invalid("pids_max", "must be more than 0".into()));
    }
    if raw.log_max_bytes.is_some_and(|b| b < 4096) {
        return Err(invalid("log_max_bytes", "must be at least 4096".into()));
    }
    Ok(ServiceDef {
        name,
        exec,
        args: raw.args,
        env: raw.env,
        after: raw.after,
        requires: raw.requires,
        ready,
        ready_timeout: ms(
            "ready_timeout_ms",
            raw.ready_timeout_ms,
            DEFAULT_READY_TIMEOUT,
        )?,
        restart: raw.restart,
        restart_delay,
        restart_delay_max,
        stop_signal,
        stop_timeout: ms("stop_timeout_ms", raw.stop_timeout_ms, DEFAULT_STOP_TIMEOUT)?,
        delegate: raw.delegate,
        memory_max,
        cpu_weight: raw.cpu_weight,
        cpu_max_percent: raw.cpu_max_percent,
        pids_max: raw.pids_max,
        autostart: raw.autostart.unwrap_or(true),
        log_max_bytes: raw.log_max_bytes.unwrap_or(DEFAULT_LOG_MAX_BYTES),
    })
}

/// Names become cgroup, socket and log file names: keep them to a safe alphabet.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a service name (1-64 of a-z 0-9 - _, starting with a letter or digit)"
        ))
    }
}

fn parse_readiness(text: Option<&str>) -> Result<Readiness, String> {
    match text {
        None | Some("started") => Ok(Readiness::Started),
        Some("notify") => Ok(Readiness::Notify),
        Some(s) => match s.strip_prefix("socket:") {
            Some(p) if Path::new(p).is_absolute() => Ok(Readiness::Socket(PathBuf::from(p))),
            _ => Err(format!(
                "{s:?} is not \"started\", \"notify\" or \"socket:/absolute/path\""
            )),
        },
    }
}

/// Linux's numbers for the signals a service may ask to be stopped with.
pub fn signal_number(name: &str) -> Option<i32> {
    let bare = name.strip_prefix("SIG").unwrap_or(name);
    Some(match bare {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "KILL" => 9,
        "USR1" => 10,
        "USR2" => 12,
        "TERM" => 15,
        _ => return None,
    })
}

/// `"512M"`, `"2G"`, `1048576` (bytes; K, M, G, T are powers of 1024).
fn parse_bytes(value: &toml::Value) -> Result<u64, String> {
    let text = match value {
        toml::Value::Integer(n) => {
            return u64::try_from(*n)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{n} is not a positive size"))
        }
        toml::Value::String(s) => s.trim(),
        other => {
            return Err(format!(
                "a {} is not a size like \"512M\"",
                other.type_str()
            ))
        }
    };
    let (digits, shift) = match text.char_indices().last() {
        Some((i, 'K' | 'k')) => (&text[..i], 10),
        Some((i, 'M' | 'm')) => (&text[..i], 20),
        Some((i, 'G' | 'g')) => (&text[..i], 30),
        Some((i, 'T' | 't')) => (&text[..i], 40),
        _ => (text, 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{text:?} is not a size like \"512M\""))
}

/// Loads every `*.toml` in `dir`, sorted by file name. Bad files are returned as errors
/// beside the good ones, so init can start what it can and the builder can refuse.
pub fn load_dir(dir: &Path) -> (Vec<(PathBuf, ServiceDef)>, Vec<DefinitionError>) {
    let mut errors = Vec::new();
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            errors.push(DefinitionError::ReadDir {
                dir: dir.to_path_buf(),
                source,
            });
            Vec::new()
        }
    };
    paths.sort();
    let mut defs = Vec::new();
    for path in paths {
        let parsed = std::fs::read_to_string(&path)
            .map_err(|source| DefinitionError::Read {
                path: path.clone(),
                source,
            })
            .and_then(|text| parse(&path, &text));
        match parsed {
            Ok(d) => defs.push((path, d)),
            Err(e) => errors.push(e),
        }
    }
    (defs, errors)
}

/// Checks the set: names unique, dependencies defined, no cycles. Returns the services
/// that can run, in a start order (dependencies first), and what was wrong with the rest:
/// a service whose dependency is missing or in a cycle is dropped, with its dependents.
pub fn check_set(defs: Vec<(PathBuf, ServiceDef)>) -> (Vec<ServiceDef>, Vec<DefinitionError>) {
    let mut errors = Vec::new();
    let mut by_name: BTreeMap<String, (PathBuf, ServiceDef)> = BTreeMap::new();
    for (path, def) in defs {
        if let Some((first, _)) = by_name.get(&def.name) {
            errors.push(DefinitionError::Duplicate {
                name: def.name.clone(),
                first: first.clone(),
                second: path,
            });
            continue;
        }
        by_name.insert(def.name.clone(), (path, def));
    }
    // Kahn's algorithm over the names; whatever never becomes startable is missing a
    // dependency or sits in (or behind) a cycle.
    let mut order: Vec<ServiceDef> = Vec::new();
    let mut placed: BTreeSet<String> = BTreeSet::new();
    loop {
        let next: Vec<String> = by_name
            .iter()
            .filter(|(_, (_, d))| d.dependencies().all(|dep| placed.contains(dep)))
            .map(|(n, _)| n.clone())
            .collect();
        if next.is_empty() {
            break;
        }
        for name in next {
            if let Some((_, def)) = by_name.remove(&name) {
                placed.insert(name);
                order.push(def);
            }
        }
    }
    let all: BTreeSet<String> = by_name
        .keys()
        .cloned()
        .chain(placed.iter().cloned())
        .collect();
    let mut reported_cycle = false;
    for (name, (_, def)) in &by_name {
        let missing = [("requires", &def.requires), ("after", &def.after)]
            .into_iter()
            .flat_map(|(key, list)| list.iter().map(move |o| (key, o)))
            .find(|(_, o)| !all.contains(*o));
        match missing {
            Some((key, other)) => errors.push(DefinitionError::UnknownDependency {
                name: name.clone(),
                key,
                other: other.clone(),
            }),
            None if !reported_cycle => {
                if let Some(cycle) = find_cycle(name, &by_name) {
                    reported_cycle = true;
                    errors.push(DefinitionError::Cycle(cycle));
                }
            }
            None => {}
        }
    }
    (order, errors)
}

/// A dependency cycle reachable from `start` among the unplaced services, if any.
fn find_cycle(start: &str, left: &BTreeMap<String, (PathBuf, ServiceDef)>) -> Option<Vec<String>> {
    let mut path = vec![start.to_string()];
    let mut current = start.to_string();
    for _ in 0..=left.len() {
        let (_, def) = left.get(&current)?;
        let next = def.dependencies().find(|d| left.contains_key(*d))?;
        if let Some(pos) = path.iter().position(|p| p == next) {
            let mut cycle = path.split_off(pos);
            cycle.push(next.to_string());
            return Some(cycle);
        }
        path.push(next.to_string());
        current = next.to_string();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(name: &str, extra: &str) -> (PathBuf, ServiceDef) {
        let path = PathBuf::from(format!("/s/{name}.toml"));
        let text = format!("name = \"{name}\"\nexec = \"/bin/{name}\"\n{extra}");
        let d = parse(&path, &text).unwrap();
        (path, d)
    }

    #[test]
    fn parses_every_key() {
        let text = r#"
name = "rt"
exec = "/usr/bin/rt"
args = ["daemon"]
env = { RUST_LOG = "info" }
after = ["agent"]
requires = ["net"]
ready = "socket:/run/berth/rt.sock"
ready_timeout_ms = 5000
restart = "always"
restart_delay_ms = 50
restart_delay_max_ms = 400
stop_signal = "SIGINT"
stop_timeout_ms = 2000
delegate = true
memory_max = "512M"
cpu_weight = 200
cpu_max_percent = 150
pids_max = 1000
autostart = false
log_max_bytes = 65536
"#;
        let d = parse(Path::new("/x/rt.toml"), text).unwrap();
        assert_eq!(d.ready, Readiness::Socket("/run/berth/rt.sock".into()));
        assert_eq!(d.restart, Restart::Always);
        assert_eq!(d.stop_signal, 2);
        assert_eq!(d.memory_max, Some(512 << 20));
        assert!(d.delegate && !d.autostart);
        assert_eq!(d.dependencies().collect::<Vec<_>>(), ["net", "agent"]);
        assert_eq!(d.backoff(1), Duration::from_millis(50));
        assert_eq!(d.backoff(3), Duration::from_millis(200));
        assert_eq!(d.backoff(30), Duration::from_millis(400));
    }

    #[test]
    fn defaults() {
        let (_, d) = def("a", "");
        assert_eq!(d.ready, Readiness::Started);
        assert_eq!(d.restart, Restart::OnFailure);
        assert_eq!(d.stop_signal, 15);
        assert_eq!(d.stop_timeout, DEFAULT_STOP_TIMEOUT);
        assert!(d.autostart);
        assert_eq!(d.backoff(100), DEFAULT_RESTART_DELAY_MAX);
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let cases = [
            (
                "name = \"a\"\nexec = \"/a\"\nrestrat = \"always\"\n",
                "restrat",
            ),
            ("exec = \"/a\"\n", "name: missing"),
            ("name = \"a\"\n", "exec: missing"),
            (
                "name = \"b\"\nexec = \"/a\"\n",
                "does not match the file name",
            ),
            ("name = \"a\"\nexec = \"a\"\n", "not an absolute path"),
            (
                "name = \"a\"\nexec = \"/a\"\nready = \"socket:rel\"\n",
                "ready",
            ),
            (
                "name = \"a\"\nexec = \"/a\"\nstop_signal = \"SIGFOO\"\n",
                "stop_signal",
            ),
            (
                "name = \"a\"\nexec = \"/a\"\nmemory_max = \"lots\"\n",
                "memory_max",
            ),
            (
                "name = \"a\"\nexec = \"/a\"\nstop_timeout_ms = 0\n",
                "stop_timeout_ms",
            ),
            ("name = \"a\"\nexec = \"/a\"\nafter = [\"a\"]\n", "itself"),
            (
                "name = \"a\"\nexec = \"/a\"\nrequires = [\"B!\"]\n",
                "not a service name",
            ),
            (
                "name = \"a\"\nexec = \"/a\"\nrestart_delay_ms = 10\nrestart_delay_max_ms = 5\n",
                "less than",
            ),
            (
                "name = \"a\"\nexec = \"/a\"\nrestart = \"sometimes\"\n",
                "sometimes",
            ),
        ];
        for (text, want) in cases {
            let err = parse(Path::new("/x/a.toml"), text).unwrap_err().to_string();
            assert!(err.contains("/x/a.toml"), "{err}");
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn sizes() {
        let v = |s: &str| parse_bytes(&toml::Value::String(s.into()));
        assert_eq!(v("1K"), Ok(1024));
        assert_eq!(v("3g"), Ok(3 << 30));
        assert_eq!(v("100"), Ok(100));
        assert!(v("0").is_err() && v("M").is_err() && v("-1M").is_err());
        assert_eq!(parse_bytes(&toml::Value::Integer(4096)), Ok(4096));
        assert!(parse_bytes(&toml::Value::Integer(-1)).is_err());
    }

    #[test]
    fn orders_dependencies_first() {
        let (order, errors) = check_set(vec![
            def("web", "requires = [\"rt\"]\n"),
            def("rt", "after = [\"agent\"]\n"),
            def("agent", ""),
        ]);
        assert!(errors.is_empty(), "{errors:?}");
        let names: Vec<_> = order.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["agent", "rt", "web"]);
    }

    #[test]
    fn refuses_missing_dependencies_and_cycles_but_keeps_the_rest() {
        let (order, errors) = check_set(vec![
            def("a", "requires = [\"b\"]\n"),
            def("b", "after = [\"a\"]\n"),
            def("c", "requires = [\"nope\"]\n"),
            def("d", ""),
        ]);
        let names: Vec<_> = order.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["d"]);
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            text.iter().any(|e| e.contains("cycle: a -> b -> a")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|e| e.contains("c: requires names nope")),
            "{text:?}"
        );
    }

    #[test]
    fn refuses_duplicates() {
        let (a1, d1) = def("a", "");
        let (order, errors) = check_set(vec![(a1, d1.clone()), ("/t/a.toml".into(), d1)]);
        assert_eq!(order.len(), 1);
        assert!(errors[0].to_string().contains("defined twice"));
    }

    #[test]
    fn load_dir_reports_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.toml"), "name = \"a\"\nexec = \"/a\"\n").unwrap();
        std::fs::write(dir.path().join("b.toml"), "name = ").unwrap();
        std::fs::write(dir.path().join("c.txt"), "ignored").unwrap();
        let (defs, errors) = load_dir(dir.path());
        assert_eq!(defs.len(), 1);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("b.toml"));
        assert!(load_dir(&dir.path().join("missing")).1.is_empty());
    }
}
