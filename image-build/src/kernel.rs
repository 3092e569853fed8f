//! Debian's kernel as a build input: `linux-image-amd64` resolved to the versioned image
//! package, unpacked into the cache, and indexed with `depmod -b` (the package ships no
//! modules.dep: Debian's postinst generates it on install, which we never do).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::debs::{self, Package};

pub const METAPACKAGE: &str = "linux-image-amd64";

pub struct Kernel {
    pub package: Package,
    /// `uname -r` of this kernel, e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// The unpacked package.
    pub root: PathBuf,
}

impl Kernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }

    pub fn config(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("config-{}", self.release))
    }

    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }
}

/// Resolves, fetches, unpacks and indexes the current kernel.
pub fn prepare(cache: &Path) -> Result<Kernel> {
    let package = debs::resolve_kernel(METAPACKAGE)?;
    let root = debs::fetch_unpacked(&package, cache)?;
    let release = find_release(&root)?;
    let kernel = Kernel {
        package,
        release,
        root,
    };
    let index = kernel.modules_dir().join("modules.dep");
    if !index.exists() {
        debs::run(
            Command::new("depmod")
                .arg("-b")
                .arg(&kernel.root)
                .arg(&kernel.release),
        )
        .with_context(|| format!("indexing modules of {}", kernel.release))?;
    }
    Ok(kernel)
}

/// The one directory under lib/modules names the release.
fn find_release(root: &Path) -> Result<String> {
    let dir = root.join("lib/modules");
    let mut releases: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match releases.len() {
        1 => Ok(releases.remove(0)),
        n => bail!(
            "expected one kernel release in {}, found {n}: {releases:?}",
            dir.display()
        ),
    }
}
