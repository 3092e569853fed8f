//! Kernel module loading without modprobe: the index the image builder wrote into
//! `/lib/modules/<release>/` (modules.dep, .softdep, .alias, .builtin) and `finit_module`.
//!
//! Used three ways: the early list at boot, coldplug (each device's `modalias`, as udev
//! does), and the kernel's on-demand requests through init's modprobe mode.

pub mod coldplug;
pub mod uevent;

use std::collections::HashSet;
use std::ffi::CStr;
use std::fs::File;
use std::path::{Path, PathBuf};

use kmod::{IndexError, ModuleIndex};
use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("reading the module index in {dir}: {source}")]
    Index { dir: PathBuf, source: IndexError },
    #[error("no module or alias named {0:?} in the index")]
    NotFound(String),
    #[error("resolving what {module} needs: {source}")]
    Order { module: String, source: IndexError },
    #[error("opening module file {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("inserting module {module} ({path}): {errno}")]
    Insert {
        module: String,
        path: PathBuf,
        errno: Errno,
    },
}

/// The running kernel's release, for `/lib/modules/<release>`.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub struct Loader {
    dir: PathBuf,
    index: ModuleIndex,
    /// Modules known to be in the kernel (inserted by us, or found in /proc/modules).
    loaded: HashSet<String>,
    /// Modules whose insertion failed once; not retried (a driver that found no device
    /// fails with ENODEV, and coldplug would otherwise try it for every matching alias).
    failed: HashSet<String>,
}

impl Loader {
    /// Opens `modules_root/<release>` and notes what /proc/modules says is loaded.
    pub fn open(
        modules_root: &Path,
        release: &str,
        proc_modules: &Path,
    ) -> Result<Self, ModuleError> {
        let dir = modules_root.join(release);
        let index = ModuleIndex::load(&dir).map_err(|source| ModuleError::Index {
            dir: dir.clone(),
            source,
        })?;
        let loaded = std::fs::read_to_string(proc_modules)
            .map(|text| parse_proc_modules(&text))
            .unwrap_or_default();
        Ok(Self {
            dir,
            index,
            loaded,
            failed: HashSet::new(),
        })
    }

    /// Loads a module by name or alias, with everything it needs, as `modprobe NAME`
    /// does. Returns the modules newly inserted. Every candidate of an alias is tried;
    /// the first error is returned only if nothing could be loaded.
    pub fn load(&mut self, name_or_alias: &str) -> Result<Vec<String>, ModuleError> {
        let candidates = self.index.resolve(name_or_alias);
        if candidates.is_empty() {
            return Err(ModuleError::NotFound(name_or_alias.to_string()));
        }
        let mut inserted = Vec::new();
        let mut first_error = None;
        let mut any_ok = false;
        for module in candidates {
            if self.index.is_builtin(&module) {
                any_ok = true;
                continue;
            }
            match self.load_with_dependencies(&module, &mut inserted) {
                Ok(()) => any_ok = true,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) if !any_ok => Err(e),
            _ => Ok(inserted),
        }
    }

    /// Loads whatever drivers match a device's modalias; a modalias that no carried
    /// module claims is normal (most devices need none) and is not an error.
    pub fn load_for_modalias(&mut self, modalias: &str) -> Vec<Result<Vec<String>, ModuleError>> {
        let wanted: Vec<String> = self
            .index
            .resolve(modalias)
            .into_iter()
            .filter(|m| {
                self.index.contains(m) && !self.loaded.contains(m) && !self.failed.contains(m)
            })
            .collect();
        wanted
            .into_iter()
            .map(|m| {
                let mut inserted = Vec::new();
                self.load_with_dependencies(&m, &mut inserted)
                    .map(|()| inserted)
            })
            .collect()
    }

    fn load_with_dependencies(
        &mut self,
        module: &str,
        inserted: &mut Vec<String>,
    ) -> Result<(), ModuleError> {
        let order = self
            .index
            .load_order(module)
            .map_err(|source| ModuleError::Order {
                module: module.to_string(),
                source,
            })?;
        for m in order {
            if self.loaded.contains(&m) {
                continue;
            }
            match self.insert(&m) {
                Ok(()) => {
                    self.loaded.insert(m.clone());
                    inserted.push(m);
                }
                // Only the target's own result decides: a softdep that fails
                // (crc32c_intel on a CPU without SSE4.2) must not stop the module that
                // merely prefers it, and a failed hard dependency makes the target
                // itself fail with the kernel's own error (unknown symbol).
                Err(e) if m != module => {
                    crate::warn!("loading {m} for {module}: {e}");
                    self.failed.insert(m);
                }
                Err(e) => {
                    self.failed.insert(m);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn insert(&self, module: &str) -> Result<(), ModuleError> {
        let Some(rel) = self.index.path(module) else {
            return Err(ModuleError::NotFound(module.to_string()));
        };
        let path = self.dir.join(rel);
        let file = File::open(&path).map_err(|source| ModuleError::Open {
            path: path.clone(),
            source,
        })?;
        match finit_module(&file, EMPTY_PARAMS, ModuleInitFlags::empty()) {
            // EEXIST: loaded meanwhile (the kernel's own request, or a parallel modprobe).
            Ok(()) | Err(Errno::EEXIST) => Ok(()),
            Err(errno) => Err(ModuleError::Insert {
                module: module.to_string(),
                path,
                errno,
            }),
        }
    }
}

const EMPTY_PARAMS: &CStr = c"";

/// Module names from /proc/modules (`name size refcount deps state address`).
fn parse_proc_modules(text: &str) -> HashSet<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(kmod::normalize)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_modules_names() {
        let text = "virtio_blk 20480 0 - Live 0x0000000000000000\nvirtio-net 57344 0 - Live 0x0\n";
        let names = parse_proc_modules(text);
        assert!(names.contains("virtio_blk"));
        assert!(names.contains("virtio_net"));
        assert_eq!(names.len(), 2);
    }
}
