//! A reproducible newc cpio archive (what the kernel unpacks as the initramfs): entries
//! sorted by path with fixed owner (root) and timestamp, parents before children.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use cpio::newc::{trailer, Builder};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
    CharDevice { mode: u32, major: u32, minor: u32 },
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// The archive being assembled: image path (no leading `/`) -> node.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    nodes: BTreeMap<String, Node>,
}

impl Archive {
    /// Adds a node, creating missing parent directories (0755). Adding the same path
    /// twice with different content is a bug in the caller and an error.
    pub fn add(&mut self, path: &str, node: Node) -> Result<()> {
        let path = path.trim_start_matches('/').to_string();
        if path.is_empty()
            || path
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            bail!("bad archive path {path:?}");
        }
        let mut parent = Path::new(&path).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            let key = p.to_string_lossy().into_owned();
            match self.nodes.get(&key) {
                None => {
                    self.nodes.insert(key, Node::Dir { mode: 0o755 });
                }
                Some(Node::Dir { .. }) => {}
                Some(_) => bail!("{key} is not a directory, cannot hold {path}"),
            }
            parent = p.parent();
        }
        match self.nodes.get(&path) {
            Some(existing)
                if *existing != node
                    && !matches!((existing, &node), (Node::Dir { .. }, Node::Dir { .. })) =>
            {
                bail!("{path} added twice with different content")
            }
            _ => {
                self.nodes.insert(path, node);
            }
        }
        Ok(())
    }

    pub fn add_file(&mut self, path: &str, mode: u32, data: Vec<u8>) -> Result<()> {
        self.add(path, Node::File { mode, data })
    }

    pub fn add_host_file(&mut self, path: &str, mode: u32, host: &Path) -> Result<()> {
        let data = std::fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        self.add_file(path, mode, data)
    }

    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<()> {
        self.add(path, Node::Dir { mode })
    }

    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.add(
            path,
            Node::Symlink {
                target: target.to_string(),
            },
        )
    }

    /// /dev/console (char 5:1): the kernel opens it as init's stdin, stdout and stderr
    /// before anything can mount devtmpfs, so every initramfs needs the node.
    pub fn add_console(&mut self) -> Result<()> {
        self.add(
            "dev/console",
            Node::CharDevice {
                mode: 0o600,
                major: 5,
                minor: 1,
            },
        )
    }

    /// Entries in archive order (sorted, parents first).
    pub fn nodes(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.nodes.iter().map(|(p, n)| (p.as_str(), n))
    }

    /// A digest of every path, kind, mode and content: the seed for the UUIDs and salts
    /// that must stay fixed while the inputs do.
    pub fn digest(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for (path, node) in &self.nodes {
            h.update(path.as_bytes());
            h.update([0]);
            match node {
                Node::Dir { mode } => h.update(format!("d{mode:o}")),
                Node::File { mode, data } => {
                    h.update(format!("f{mode:o}:{}:", data.len()));
                    h.update(data);
                }
                Node::Symlink { target } => h.update(format!("l{target}")),
                Node::CharDevice { mode, major, minor } => {
                    h.update(format!("c{mode:o}:{major}:{minor}"))
                }
            }
            h.update([0]);
        }
        h.finalize().into()
    }

    pub fn contains(&self, path: &str) -> bool {
        self.nodes.contains_key(path.trim_start_matches('/'))
    }

    /// Sum of file contents, for the manifest.
    pub fn content_bytes(&self) -> u64 {
        self.nodes
            .values()
            .map(|n| match n {
                Node::File { data, .. } => data.len() as u64,
                _ => 0,
            })
            .sum()
    }

    /// Writes the uncompressed newc stream.
    pub fn write_newc<W: Write>(&self, mut out: W) -> Result<W> {
        for (i, (path, node)) in self.nodes.iter().enumerate() {
            let ino = u32::try_from(i + 1).context("too many archive entries")?;
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match node {
                Node::Dir { mode } => (S_IFDIR | mode, &[], (0, 0)),
                Node::File { mode, data } => (S_IFREG | mode, data, (0, 0)),
                Node::Symlink { target } => (S_IFLNK | 0o777, target.as_bytes(), (0, 0)),
                Node::CharDevice { mode, major, minor } => (S_IFCHR | mode, &[], (*major, *minor)),
            };
            let size =
                u32::try_from(data.len()).with_context(|| format!("{path} is over 4 GiB"))?;
            let mut w = Builder::new(path)
                .ino(ino)
                .mode(mode)
                .uid(0)
                .gid(0)
                .mtime(0)
                .rdev_major(rdev.0)
                .rdev_minor(rdev.1)
                .write(out, size);
            w.write_all(data)
                .with_context(|| format!("writing {path}"))?;
            out = w.finish().with_context(|| format!("finishing {path}"))?;
        }
        trailer(out).context("writing the cpio trailer")
    }

    /// The archive as zstd-compressed newc, as the kernel's CONFIG_RD_ZSTD unpacks it.
    pub fn to_zstd(&self, level: i32) -> Result<Vec<u8>> {
        let raw = self.write_newc(Vec::new())?;
        zstd::bulk::compress(&raw, level).context("zstd-compressing the archive")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(a: &Archive) -> Vec<(String, u32)> {
        let raw = a.write_newc(Vec::new()).unwrap();
        let mut out = Vec::new();
        let mut rest: &[u8] = &raw;
        loop {
            let r = cpio::NewcReader::new(rest).unwrap();
            if r.entry().is_trailer() {
                break;
            }
            out.push((r.entry().name().to_string(), r.entry().mode()));
            rest = r.finish().unwrap();
        }
        out
    }

    #[test]
    fn parents_first_and_sorted() {
        let mut a = Archive::default();
        a.add_file("usr/bin/x", 0o755, b"x".to_vec()).unwrap();
        a.add_symlink("bin", "usr/bin").unwrap();
        a.add_console().unwrap();
        let names: Vec<String> = listing(&a).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            ["bin", "dev", "dev/console", "usr", "usr/bin", "usr/bin/x"]
        );
    }

    #[test]
    fn same_input_same_bytes() {
        let build = || {
            let mut a = Archive::default();
            a.add_file("b", 0o644, b"bb".to_vec()).unwrap();
            a.add_file("a", 0o644, b"a".to_vec()).unwrap();
            a.to_zstd(3).unwrap()
        };
        assert_eq!(build(), build());
    }

    #[test]
    fn refuses_conflicts_and_bad_paths() {
        let mut a = Archive::default();
        a.add_file("x", 0o644, b"1".to_vec()).unwrap();
        assert!(a.add_file("x", 0o644, b"2".to_vec()).is_err());
        assert!(a.add_file("x/y", 0o644, b"2".to_vec()).is_err());
        assert!(a.add_file("../etc", 0o644, vec![]).is_err());
        assert!(a.add_file("a//b", 0o644, vec![]).is_err());
        // Same content twice is fine.
        a.add_file("x", 0o644, b"1".to_vec()).unwrap();
    }
}
