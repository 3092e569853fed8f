//! The payload's manifest: the version, the build, and for each part (the root image with
//! its dm-verity tree, the kernel, the initramfs) its size and SHA-256 digest, the root
//! hash and salt the tree was made with, the command line's slot-independent pieces, and
//! the oldest version it may be applied over. JSON, signed as the exact bytes stored.

use serde::{Deserialize, Serialize};

use crate::version::Version;

/// The largest manifest read: a real one is well under 2 KiB.
pub const MAX_BYTES: usize = 64 << 10;
/// The format this code writes and reads.
pub const SCHEMA: u32 = 1;

/// Bounds on the parts, far above any real Berth build, so a manifest cannot make the
/// apply path stream (or a machine wait on) something absurd.
const MAX_ROOT: u64 = 8 << 30;
const BLOCK: u64 = crate::verity::BLOCK as u64;
const MAX_KERNEL: u64 = 128 << 20;
const MAX_INITRAMFS: u64 = 512 << 20;
const MAX_CMDLINE: usize = 1024;
/// Command-line words the apply path writes itself, for the slot it fills: a manifest
/// that carried them could point a slot at the wrong root.
const RESERVED_WORDS: [&str; 4] = ["berth.root=", "berth.verity.", "berth.slot=", "berth.trial"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema: u32,
    pub version: Version,
    /// image-build's build id (hex): two builds of one version tell apart by it.
    pub build_id: String,
    /// The oldest running version this payload may be applied over.
    pub min_version: Version,
    pub root: RootPart,
    pub kernel: Part,
    pub initramfs: Part,
    /// The kernel command line without the slot's own words (root label, verity).
    pub cmdline: String,
}

/// A part of the payload: its size and digest (`sha256:` and 64 lowercase hex digits).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    pub bytes: u64,
    pub digest: String,
}

/// The root image as two parts: the erofs data, and its dm-verity hash tree, which goes
/// on the partition right after the data. Apart, so the tree can be fetched and checked
/// against the root hash first, and then each block of the data checked against the tree
/// before it is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootPart {
    pub data: Part,
    pub tree: Part,
    /// dm-verity's root hash and salt (hex), and the data blocks the tree covers.
    pub root_hash: String,
    pub salt: String,
    pub data_blocks: u64,
}

impl RootPart {
    /// Data and tree together: what the slot's partition must hold.
    pub fn bytes(&self) -> u64 {
        self.data.bytes.saturating_add(self.tree.bytes)
    }

    /// The root hash as bytes (checked as 64 hex digits when the manifest was parsed).
    pub fn root_hash_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (o, b) in out.iter_mut().zip(unhex(&self.root_hash)) {
            *o = b;
        }
        out
    }

    /// The salt as bytes.
    pub fn salt_bytes(&self) -> Vec<u8> {
        unhex(&self.salt)
    }
}

/// Lowercase hex to bytes; what is not a pair of hex digits is skipped (`check` has
/// refused such a manifest already).
fn unhex(s: &str) -> Vec<u8> {
    s.as_bytes()
        .chunks(2)
        .filter_map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("larger than {MAX_BYTES} bytes")]
    TooLarge,
    #[error("not valid JSON for a Berth update manifest: {0}")]
    Json(String),
    #[error("schema {0} is not one this Berth reads ({SCHEMA})")]
    Schema(u32),
    #[error("{field}: {why}")]
    Field { field: &'static str, why: String },
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        if bytes.len() > MAX_BYTES {
            return Err(ManifestError::TooLarge);
        }
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
        m.check()?;
        Ok(m)
    }

    /// The manifest's bytes as image-build writes and signs them.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    fn check(&self) -> Result<(), ManifestError> {
        if self.schema != SCHEMA {
            return Err(ManifestError::Schema(self.schema));
        }
        field("build_id", hex(&self.build_id, 8..=64))?;
        field("root.data.digest", digest(&self.root.data.digest))?;
        field("root.tree.digest", digest(&self.root.tree.digest))?;
        field("root.root_hash", hex(&self.root.root_hash, 64..=64))?;
        // Not empty: stage 1 refuses an empty salt (the kernel would want "-").
        field("root.salt", hex(&self.root.salt, 2..=128))?;
        field("root.data.bytes", size(self.root.data.bytes, MAX_ROOT))?;
        if self.root.data_blocks.checked_mul(BLOCK) != Some(self.root.data.bytes) {
            return Err(ManifestError::Field {
                field: "root.data_blocks",
                why: format!(
                    "{} blocks of {BLOCK} bytes are not the data's {} bytes",
                    self.root.data_blocks, self.root.data.bytes
                ),
            });
        }
        let tree = crate::verity::tree_bytes(self.root.data_blocks);
        if self.root.tree.bytes != tree {
            return Err(ManifestError::Field {
                field: "root.tree.bytes",
                why: format!(
                    "{} bytes; the tree of {} data blocks is {tree}",
                    self.root.tree.bytes, self.root.data_blocks
                ),
            });
        }
        field("kernel.digest", digest(&self.kernel.digest))?;
        field("kernel.bytes", size(self.kernel.bytes, MAX_KERNEL))?;
        field("initramfs.digest", digest(&self.initramfs.digest))?;
        field("initramfs.bytes", size(self.initramfs.bytes, MAX_INITRAMFS))?;
        field("cmdline", cmdline(&self.cmdline))
    }
}

fn field(name: &'static str, r: Result<(), String>) -> Result<(), ManifestError> {
    r.map_err(|why| ManifestError::Field { field: name, why })
}

fn hex(s: &str, len: std::ops::RangeInclusive<usize>) -> Result<(), String> {
    let ok = len.contains(&s.len())
        && s.len() % 2 == 0
        && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    ok.then_some(())
        .ok_or_else(|| format!("{:?} is not {len:?} lowercase hex digits", short(s)))
}

fn digest(s: &str) -> Result<(), String> {
    let hexpart = s
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("{:?} is not a sha256: digest", short(s)))?;
    hex(hexpart, 64..=64)
}

/// At most 80 characters of a hostile string, for an error message.
fn short(s: &str) -> String {
    s.chars().take(80).collect()
}

fn size(n: u64, max: u64) -> Result<(), String> {
    (1..=max)
        .contains(&n)
        .then_some(())
        .ok_or_else(|| format!("{n} bytes is outside 1..={max}"))
}

fn cmdline(s: &str) -> Result<(), String> {
    if s.len() > MAX_CMDLINE || !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(format!(
            "longer than {MAX_CMDLINE} bytes, or not printable ASCII on one line"
        ));
    }
    match s
        .split(' ')
        .find(|w| RESERVED_WORDS.iter().any(|r| w.starts_with(r)))
    {
        Some(w) => Err(format!(
            "{w:?} is the slot's own, written when it is applied"
        )),
        None => Ok(()),
    }
}
