//! The host's own services (`/usr/lib/berth/services/*.toml`), started by init and
//! restarted when they die. This is the minimal form: dependency order, readiness, logs
//! to files and cgroups per service come with the supervisor work (issue 4).

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
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
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("starting service {name} ({exec}): {source}")]
    Spawn {
        name: String,
        exec: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    Always,
    #[default]
    OnFailure,
    Never,
}

/// A service definition file, as written in the image.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    pub exec: PathBuf,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub restart: Restart,
}

impl ServiceConfig {
    pub fn parse(path: &Path, text: &str) -> Result<Self, ServiceError> {
        toml::from_str(text).map_err(|source| ServiceError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Loads every `*.toml` in `dir`, sorted by file name. A bad file is reported and
/// skipped; the others still start.
pub fn load_dir(dir: &Path) -> (Vec<ServiceConfig>, Vec<ServiceError>) {
    let mut errors = Vec::new();
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            errors.push(ServiceError::ReadDir {
                dir: dir.to_path_buf(),
                source,
            });
            Vec::new()
        }
    };
    paths.sort();
    let mut configs = Vec::new();
    for path in paths {
        let parsed = std::fs::read_to_string(&path)
            .map_err(|source| ServiceError::Read {
                path: path.clone(),
                source,
            })
            .and_then(|text| ServiceConfig::parse(&path, &text));
        match parsed {
            Ok(c) => configs.push(c),
            Err(e) => errors.push(e),
        }
    }
    (configs, errors)
}

const SERVICE_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

struct Service {
    config: ServiceConfig,
    pid: Option<Pid>,
    /// Consecutive failed starts, for the backoff.
    failures: u32,
    restart_at: Option<Instant>,
}

#[derive(Default)]
pub struct Services {
    list: Vec<Service>,
}

impl Services {
    pub fn new(configs: Vec<ServiceConfig>) -> Self {
        let list = configs
            .into_iter()
            .map(|config| Service {
                config,
                pid: None,
                failures: 0,
                restart_at: None,
            })
            .collect();
        Self { list }
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn start_all(&mut self) {
        for s in &mut self.list {
            start(s);
        }
    }

    /// Records a child's exit if it was a service; false if the pid is not ours.
    pub fn on_exit(&mut self, pid: Pid, status: WaitStatus, shutting_down: bool) -> bool {
        let Some(s) = self.list.iter_mut().find(|s| s.pid == Some(pid)) else {
            return false;
        };
        s.pid = None;
        let clean = matches!(status, WaitStatus::Exited(_, 0));
        crate::info!("service {} (pid {pid}) {}", s.config.name, describe(status));
        if shutting_down {
            return true;
        }
        let restart = match s.config.restart {
            Restart::Always => true,
            Restart::OnFailure => !clean,
            Restart::Never => false,
        };
        if restart {
            s.failures = s.failures.saturating_add(1);
            let delay = backoff(s.failures);
            crate::info!(
                "service {} restarts in {} ms",
                s.config.name,
                delay.as_millis()
            );
            s.restart_at = Some(Instant::now() + delay);
        }
        true
    }

    /// Starts services whose restart time has come; returns the next restart time.
    pub fn restart_due(&mut self, now: Instant) -> Option<Instant> {
        for s in &mut self.list {
            if s.restart_at.is_some_and(|t| t <= now) {
                s.restart_at = None;
                start(s);
            }
        }
        self.list.iter().filter_map(|s| s.restart_at).min()
    }

    /// Sends `signal` to each running service's process group; returns how many.
    pub fn signal_all(&mut self, signal: Signal) -> usize {
        let mut sent = 0;
        for s in &mut self.list {
            s.restart_at = None;
            if let Some(pid) = s.pid {
                if killpg(pid, signal).is_ok() {
                    sent += 1;
                }
            }
        }
        sent
    }

    pub fn running(&self) -> usize {
        self.list.iter().filter(|s| s.pid.is_some()).count()
    }
}

fn start(s: &mut Service) {
    let mut cmd = Command::new(&s.config.exec);
    cmd.args(&s.config.args)
        .env_clear()
        .env("PATH", SERVICE_PATH)
        .envs(&s.config.env)
        .stdin(Stdio::null())
        // Its own process group, so stopping it reaches its children too.
        .process_group(0);
    match cmd.spawn() {
        Ok(child) => {
            let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
            crate::info!("service {} started (pid {pid})", s.config.name);
            s.pid = Some(pid);
            // The Child handle is dropped without waiting: init's reaper collects it.
        }
        Err(source) => {
            let e = ServiceError::Spawn {
                name: s.config.name.clone(),
                exec: s.config.exec.clone(),
                source,
            };
            crate::warn!("{e}");
            s.failures = s.failures.saturating_add(1);
            if s.config.restart != Restart::Never {
                s.restart_at = Some(Instant::now() + backoff(s.failures));
            }
        }
    }
}

fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    FIRST_BACKOFF.saturating_mul(1 << exp).min(MAX_BACKOFF)
}

pub fn describe(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exited with status {code}"),
        WaitStatus::Signaled(_, sig, core) => {
            format!(
                "killed by {sig}{}",
                if core { " (core dumped)" } else { "" }
            )
        }
        other => format!("changed state: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_definition() {
        let text = "name = \"testd\"\nexec = \"/usr/bin/berth-testd\"\nrestart = \"always\"\n[env]\nRUST_LOG = \"info\"\n";
        let c = ServiceConfig::parse(Path::new("t.toml"), text).unwrap();
        assert_eq!(c.name, "testd");
        assert_eq!(c.restart, Restart::Always);
        assert_eq!(c.env.get("RUST_LOG").map(String::as_str), Some("info"));
        assert!(c.args.is_empty());
    }

    #[test]
    fn refuses_unknown_keys_naming_the_file() {
        let err = ServiceConfig::parse(
            Path::new("/x/bad.toml"),
            "name = \"a\"\nexec = \"/b\"\nrestrat = \"always\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/x/bad.toml"), "{err}");
        assert!(err.contains("restrat"), "{err}");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), FIRST_BACKOFF);
        assert_eq!(backoff(2), FIRST_BACKOFF * 2);
        assert_eq!(backoff(100), MAX_BACKOFF);
    }

    #[test]
    fn load_dir_skips_bad_files_and_reports_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.toml"), "name = \"a\"\nexec = \"/a\"\n").unwrap();
        std::fs::write(dir.path().join("b.toml"), "name = ").unwrap();
        std::fs::write(dir.path().join("c.txt"), "ignored").unwrap();
        let (configs, errors) = load_dir(dir.path());
        assert_eq!(configs.len(), 1);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("b.toml"));
        assert!(load_dir(&dir.path().join("missing")).1.is_empty());
    }
}
