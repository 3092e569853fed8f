//! The read-only root: the image tree written out as a directory, packed with
//! `mkfs.erofs` (fixed timestamps, root ownership, a UUID derived from the contents), then a
//! dm-verity hash tree appended with `veritysetup format` (no superblock; salt derived from
//! the contents), so the same inputs give the same bytes and the same root hash.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::archive::{Archive, Node};
use crate::debs::run;

/// dm-verity data and hash block size.
pub const VERITY_BLOCK: u64 = 4096;

/// A packed, verity-protected root filesystem image.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RootImage {
    pub path: PathBuf,
    /// erofs data blocks (4 KiB); the hash tree starts right after them.
    pub data_blocks: u64,
    /// Total bytes: data plus hash tree.
    pub bytes: u64,
    pub root_hash: String,
    pub salt: String,
    pub uuid: String,
}

/// Writes the archive's files, directories and symlinks under `dir` (device nodes are
/// left out: the root's /dev is devtmpfs).
pub fn write_tree(archive: &Archive, dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (path, node) in archive.nodes() {
        let target = dir.join(path);
        match node {
            Node::Dir { mode } => {
                std::fs::create_dir_all(&target)
                    .with_context(|| format!("creating {}", target.display()))?;
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(*mode))?;
            }
            Node::File { mode, data } => {
                std::fs::write(&target, data)
                    .with_context(|| format!("writing {}", target.display()))?;
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(*mode))?;
            }
            Node::Symlink { target: to } => {
                std::os::unix::fs::symlink(to, &target)
                    .with_context(|| format!("linking {}", target.display()))?;
            }
            Node::CharDevice { .. } => {}
        }
    }
    Ok(())
}

/// Packs `tree` into `out` and appends the verity hash tree. `seed` (a digest of the
/// inputs) fixes the UUID and salt.
pub fn build(tree: &Path, out: &Path, seed: &[u8; 32]) -> Result<RootImage> {
    let uuid = uuid_from(seed, b"erofs-uuid");
    let salt = hex(&crate::digest(&[seed, b"verity-salt"]));
    let _ = std::fs::remove_file(out);
    run(Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg("--all-root")
        .arg("-T0")
        // lz4hc: half the size of an uncompressed root, and lz4 decompresses faster
        // than the disk reads it saves (kernel-config requires EROFS_FS_ZIP).
        .arg("-zlz4hc")
        .arg(format!("-U{uuid}"))
        .args(["-x", "-1"])
        .arg(out)
        .arg(tree))
    .context("packing the root filesystem with mkfs.erofs (make deps installs erofs-utils)")?;
    let data_bytes = std::fs::metadata(out)?.len();
    if data_bytes % VERITY_BLOCK != 0 {
        bail!("mkfs.erofs wrote {data_bytes} bytes, not a whole number of 4 KiB blocks");
    }
    let data_blocks = data_bytes / VERITY_BLOCK;
    let report = run(Command::new("veritysetup")
        .arg("format")
        .arg(out)
        .arg(out)
        .arg("--no-superblock")
        .arg(format!("--hash-offset={data_bytes}"))
        .arg(format!("--data-blocks={data_blocks}"))
        .arg(format!("--salt={salt}")))
    .context("building the dm-verity hash tree (make deps installs cryptsetup-bin)")?;
    let root_hash = report
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(|h| h.trim().to_string())
        .context("veritysetup printed no root hash")?;
    Ok(RootImage {
        path: out.to_path_buf(),
        data_blocks,
        bytes: std::fs::metadata(out)?.len(),
        root_hash,
        salt,
        uuid,
    })
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A version-4-shaped UUID from a digest, so it is fixed for fixed inputs.
pub fn uuid_from(seed: &[u8; 32], purpose: &[u8]) -> String {
    let mut b = crate::digest(&[seed, purpose]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_fixed_and_well_formed() {
        let seed = [7u8; 32];
        let a = uuid_from(&seed, b"x");
        assert_eq!(a, uuid_from(&seed, b"x"));
        assert_ne!(a, uuid_from(&seed, b"y"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }
}
