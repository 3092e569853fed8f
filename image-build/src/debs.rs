//! Debian packages as build inputs: resolved with apt-cache, fetched with
//! `apt-get download` into a cache, unpacked with `dpkg-deb -x`. Nothing is installed on
//! the build host and nothing needs root (apt-get download runs unsandboxed as root, and
//! works as any user who can write the cache).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// A binary package at one version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Package {
    pub name: String,
    pub version: String,
}

/// The candidate record of `name` as `apt-cache show` prints it: (Version, Depends).
pub fn candidate(name: &str) -> Result<(String, String)> {
    let out = run(Command::new("apt-cache").args(["show", "--no-all-versions", name]))
        .with_context(|| {
            format!("looking up package {name} (has `apt-get update` run? `make deps` does it)")
        })?;
    let field = |key: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
            .unwrap_or_default()
    };
    let version = field("Version:");
    if version.is_empty() {
        bail!("apt-cache has no candidate version for {name}");
    }
    Ok((version, field("Depends:")))
}

/// Resolves a package to its candidate version.
pub fn resolve(name: &str) -> Result<Package> {
    let (version, _) = candidate(name)?;
    Ok(Package {
        name: name.to_string(),
        version,
    })
}

/// Debian's kernel metapackage depends on exactly one versioned image package, e.g.
/// `linux-image-6.1.0-56-amd64 (= 6.1.192-2)`; returns that package.
pub fn resolve_kernel(meta: &str) -> Result<Package> {
    let (_, depends) = candidate(meta)?;
    let name = depends
        .split(',')
        .map(|d| d.split_whitespace().next().unwrap_or(""))
        .find(|d| d.starts_with("linux-image-"))
        .with_context(|| format!("{meta} depends on no linux-image package: {depends:?}"))?
        .to_string();
    resolve(&name)
}

/// Downloads `pkg` into `cache/debs/` (once) and returns the .deb's path.
pub fn download(pkg: &Package, cache: &Path) -> Result<PathBuf> {
    let dir = cache
        .join("debs")
        .join(format!("{}_{}", pkg.name, pkg.version.replace(':', "%3a")));
    if let Some(deb) = find_deb(&dir)? {
        return Ok(deb);
    }
    let tmp = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    run(Command::new("apt-get")
        .args(["download", "-q", &format!("{}={}", pkg.name, pkg.version)])
        .current_dir(&tmp))
    .with_context(|| format!("downloading {}={}", pkg.name, pkg.version))?;
    std::fs::rename(&tmp, &dir)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
    find_deb(&dir)?.with_context(|| format!("apt-get download left no .deb in {}", dir.display()))
}

fn find_deb(dir: &Path) -> Result<Option<PathBuf>> {
    if !dir.is_dir() {
        return Ok(None);
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// Fetches `pkg` and unpacks it under `cache/unpacked/<name>_<version>` (both once);
/// returns that directory.
pub fn fetch_unpacked(pkg: &Package, cache: &Path) -> Result<PathBuf> {
    let deb = download(pkg, cache)?;
    let root = cache
        .join("unpacked")
        .join(format!("{}_{}", pkg.name, pkg.version));
    extract(&deb, &root)?;
    Ok(root)
}

/// Unpacks `deb` into `dest` (once: a `.done` marker records a complete extraction).
pub fn extract(deb: &Path, dest: &Path) -> Result<()> {
    let marker = dest.join(".done");
    if marker.exists() {
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(dest);
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dest))
        .with_context(|| format!("unpacking {}", deb.display()))?;
    std::fs::write(&marker, b"").with_context(|| format!("writing {}", marker.display()))?;
    Ok(())
}

/// Runs a command, returning stdout; the error carries its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
