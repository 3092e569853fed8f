//! Berth's OS update payloads, the parts that decide whether a payload may be applied:
//! its manifest (what the version is and the digest of every part), the signature over
//! that manifest and the keys trusted to make it, and which versions may follow which.
//!
//! A payload is an OCI artifact (written by `image-build`, carried by any registry). Its
//! manifest is the one file that is signed; every other part is bound to it by digest,
//! so checking the signature first and then each part's digest as it streams is enough.
//! Anything here is read from the network or a file an operator was handed: hostile
//! until the signature says otherwise, and bounded before that.

pub mod apply;
pub mod keys;
pub mod manifest;

/// The payload's OCI media types: the artifact's (image-spec 1.1 `artifactType`), the
/// config blob's (Berth's manifest) and each layer's, in the layers' order.
pub mod media {
    pub const ARTIFACT_TYPE: &str = "application/vnd.berth.os.v1";
    pub const MANIFEST_TYPE: &str = "application/vnd.berth.os.manifest.v1+json";
    pub const ROOT_TYPE: &str = "application/vnd.berth.os.root.v1.erofs";
    pub const TREE_TYPE: &str = "application/vnd.berth.os.root.v1.verity-tree";
    pub const KERNEL_TYPE: &str = "application/vnd.berth.os.kernel.v1";
    pub const INITRAMFS_TYPE: &str = "application/vnd.berth.os.initramfs.v1+zstd";
    pub const SIGNATURE_TYPE: &str = "application/vnd.berth.os.signature.v1.minisign";
}
pub mod verity;
pub mod version;

pub use keys::Keyring;
pub use manifest::{Manifest, Part, RootPart};
pub use version::Version;

use std::path::PathBuf;

/// Where the image keeps the public keys it trusts (`*.pub`, minisign's format).
pub const KEYS_DIR: &str = "/usr/share/berth/keys";

/// Why a payload was refused. Each says what was wrong and with what.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("the payload is not signed")]
    Unsigned,
    #[error("the payload's signature is not minisign's format: {0}")]
    UnreadableSignature(String),
    #[error("the payload is signed by key {key_id}, which this machine does not trust (trusted: {trusted})")]
    UnknownKey { key_id: String, trusted: String },
    #[error("the payload's signature does not match its manifest (key {key}): the manifest was changed after signing, or the signature belongs to another one")]
    BadSignature { key: String },
    #[error("no trusted keys in {dir}: no payload can be verified")]
    NoKeys { dir: PathBuf },
    #[error("the payload's manifest: {0}")]
    Manifest(#[from] manifest::ManifestError),
    #[error("the payload is berth {offered}, older than the running berth {running} (allow it with --allow-downgrade)")]
    Downgrade { offered: String, running: String },
    #[error("the payload is berth {offered}, which the running berth {running} already is")]
    SameVersion { offered: String, running: String },
    #[error("the payload berth {offered} applies only over berth {min_version} or newer; this machine runs {running}")]
    TooOld {
        offered: String,
        min_version: String,
        running: String,
    },
}

/// A manifest whose signature checked out, and the key that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub manifest: Manifest,
    /// The trusted key's file name under the keys directory.
    pub key: String,
}

/// What the running machine is, for the version rules.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    pub running: &'a Version,
    pub allow_downgrade: bool,
}

/// Checks `manifest` (the exact bytes that were signed) against `signature` with the
/// trusted keys, then parses it and applies the version rules. Nothing is parsed before
/// the signature holds: an unsigned manifest is never looked into.
pub fn verify(
    keyring: &Keyring,
    manifest: &[u8],
    signature: Option<&[u8]>,
    policy: Policy<'_>,
) -> Result<Verified, Refusal> {
    let signature = signature.ok_or(Refusal::Unsigned)?;
    let key = keyring.verify(manifest, signature)?;
    let manifest = Manifest::parse(manifest)?;
    check_version(&manifest, policy)?;
    Ok(Verified { manifest, key })
}

fn check_version(manifest: &Manifest, policy: Policy<'_>) -> Result<(), Refusal> {
    let offered = &manifest.version;
    let running = policy.running;
    if offered == running {
        return Err(Refusal::SameVersion {
            offered: offered.to_string(),
            running: running.to_string(),
        });
    }
    if offered < running && !policy.allow_downgrade {
        return Err(Refusal::Downgrade {
            offered: offered.to_string(),
            running: running.to_string(),
        });
    }
    if running < &manifest.min_version {
        return Err(Refusal::TooOld {
            offered: offered.to_string(),
            min_version: manifest.min_version.to_string(),
            running: running.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
