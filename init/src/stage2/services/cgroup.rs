//! The cgroup v2 tree init keeps for its services: `/sys/fs/cgroup/berth/<service>`.
//!
//! A plain service lives in its cgroup directly. A delegated one (`delegate = true`, the
//! container runtime) has its main process in `<service>/main` and owns the rest of the
//! subtree: a restart kills only `main`, so the containers it put beside `main` keep
//! running; only the final shutdown kills the whole subtree. Written by hand: the files
//! are few and plain (see crates.md on cgroups-rs).

use std::io::Write;
use std::path::{Path, PathBuf};

use berth_services::ServiceDef;

pub const MOUNT: &str = "/sys/fs/cgroup";
/// The controllers a service may be limited by.
const CONTROLLERS: [&str; 4] = ["cpu", "memory", "pids", "io"];

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct CgroupError {
    path: PathBuf,
    source: std::io::Error,
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|source| CgroupError {
            path: path.to_path_buf(),
            source,
        })
}

fn mkdir(path: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(path) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(CgroupError {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Turns on, in `dir`'s children, each controller the kernel offers; says which failed.
fn enable_controllers(dir: &Path) -> Vec<CgroupError> {
    let offered = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    CONTROLLERS
        .iter()
        .filter(|c| offered.split_whitespace().any(|o| o == **c))
        .filter_map(|c| write(&dir.join("cgroup.subtree_control"), &format!("+{c}")).err())
        .collect()
}

/// `/sys/fs/cgroup/berth`, made ready for services; `None` without cgroup2 (reported).
pub fn setup(mount: &Path) -> Option<PathBuf> {
    if !mount.join("cgroup.controllers").exists() {
        crate::warn!(
            "no cgroup2 at {}: services run without cgroups",
            mount.display()
        );
        return None;
    }
    let root = mount.join("berth");
    if let Err(e) = mkdir(&root) {
        crate::warn!("creating the services' cgroup: {e}");
        return None;
    }
    for e in enable_controllers(mount)
        .into_iter()
        .chain(enable_controllers(&root))
    {
        crate::warn!("enabling a cgroup controller: {e}");
    }
    Some(root)
}

/// Where one service's processes go, and what stopping it kills.
#[derive(Debug, Clone)]
pub struct ServiceCgroup {
    /// `berth/<service>`: the whole subtree, killed at final stop.
    pub dir: PathBuf,
    /// The cgroup its main process starts in: `dir`, or `dir/main` when delegated.
    pub main: PathBuf,
}

impl ServiceCgroup {
    pub fn new(root: &Path, def: &ServiceDef) -> Self {
        let dir = root.join(&def.name);
        let main = if def.delegate {
            dir.join("main")
        } else {
            dir.clone()
        };
        Self { dir, main }
    }

    /// Creates the directories and writes the limits (each failure is returned).
    pub fn prepare(&self, def: &ServiceDef) -> Vec<CgroupError> {
        let mut errors = Vec::new();
        if let Err(e) = mkdir(&self.dir) {
            return vec![e];
        }
        let limits = [
            ("memory.max", def.memory_max.map(|b| b.to_string())),
            ("cpu.weight", def.cpu_weight.map(|w| w.to_string())),
            (
                "cpu.max",
                def.cpu_max_percent
                    .map(|p| format!("{} 100000", u64::from(p) * 1000)),
            ),
            ("pids.max", def.pids_max.map(|p| p.to_string())),
        ];
        for (file, value) in limits {
            if let Some(value) = value {
                if let Err(e) = write(&self.dir.join(file), &value) {
                    errors.push(e);
                }
            }
        }
        if self.main != self.dir {
            if let Err(e) = mkdir(&self.main) {
                errors.push(e);
            }
            // The service's own children may then use the same controllers.
            errors.extend(enable_controllers(&self.dir));
        }
        errors
    }

    /// The `cgroup.procs` file a child writes itself into before exec.
    pub fn procs_file(&self) -> PathBuf {
        self.main.join("cgroup.procs")
    }
}

/// SIGKILL to every process in `dir` and below (`cgroup.kill`, Linux 5.14).
pub fn kill(dir: &Path) -> Result<(), CgroupError> {
    write(&dir.join("cgroup.kill"), "1")
}

/// Whether any process is left in `dir` or below. Unknown counts as empty.
pub fn populated(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .map(|t| t.lines().any(|l| l.trim() == "populated 1"))
        .unwrap_or(false)
}

/// Every pid in `dir` and its descendants.
pub fn procs(dir: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                pids.extend(procs(&e.path()));
            }
        }
    }
    pids
}

/// The service a process belongs to, from `/proc/<pid>/cgroup` ("0::/berth/NAME/...");
/// the second value says whether it is in the service's main cgroup.
pub fn service_of(cgroup_file: &str) -> Option<(String, bool)> {
    let path = cgroup_file
        .lines()
        .find_map(|l| l.strip_prefix("0::"))?
        .trim();
    let mut parts = path.strip_prefix("/berth/")?.split('/');
    let name = parts.next().filter(|n| !n.is_empty())?;
    let rest = parts.next();
    Some((name.to_string(), rest.is_none() || rest == Some("main")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_of_reads_the_v2_line() {
        assert_eq!(
            service_of("0::/berth/rt/containers/abc\n"),
            Some(("rt".into(), false))
        );
        assert_eq!(service_of("0::/berth/rt/main\n"), Some(("rt".into(), true)));
        assert_eq!(
            service_of("0::/berth/agent\n"),
            Some(("agent".into(), true))
        );
        assert_eq!(service_of("0::/\n"), None);
        assert_eq!(service_of("1:name=systemd:/berth/x\n"), None);
    }

    #[test]
    fn prepare_writes_limits_and_the_main_leaf() {
        let dir = tempfile::tempdir().unwrap();
        let def = berth_services::parse(
            Path::new("rt.toml"),
            "name = \"rt\"\nexec = \"/rt\"\ndelegate = true\nmemory_max = \"1M\"\ncpu_max_percent = 50\n",
        )
        .unwrap();
        let cg = ServiceCgroup::new(dir.path(), &def);
        // Limit files exist in a real cgroup; create them so the writes land.
        std::fs::create_dir(&cg.dir).unwrap();
        for f in ["memory.max", "cpu.max"] {
            std::fs::write(cg.dir.join(f), "").unwrap();
        }
        let errors = cg.prepare(&def);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            std::fs::read_to_string(cg.dir.join("memory.max")).unwrap(),
            "1048576"
        );
        assert_eq!(
            std::fs::read_to_string(cg.dir.join("cpu.max")).unwrap(),
            "50000 100000"
        );
        assert!(cg.main.ends_with("rt/main") && cg.main.is_dir());
        assert_eq!(cg.procs_file(), dir.path().join("rt/main/cgroup.procs"));
    }
}
