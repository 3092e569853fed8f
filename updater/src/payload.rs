//! A payload read from an OCI image layout or an `oci-archive` (the image store's
//! `LayoutFiles`, with its refusals of symlinks, non-regular files and oversized JSON):
//! index.json names one manifest; its config must be Berth's update manifest, and the
//! layer of the signature's media type (the first, if several) is the signature. Nothing else is taken from the OCI manifest: the parts are
//! fetched by the digests the *signed* manifest names.

use std::io::Read;
use std::path::Path;

use berth_store::digest::Digest;
use berth_store::image::{self, Descriptor};
use berth_store::import::LayoutFiles;
use berth_store::store::StoreError;
use berth_update::media;

/// The signature is a few hundred bytes; a layer claiming more is not one.
const MAX_SIGNATURE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("not a Berth update payload: {0}")]
    NotAPayload(String),
}

pub struct Payload {
    files: LayoutFiles,
    /// The config blob: Berth's manifest, the exact bytes that were signed.
    pub manifest: Vec<u8>,
    /// The signature layer's content; `None` when the artifact carries none.
    pub signature: Option<Vec<u8>>,
}

fn not_payload(why: impl Into<String>) -> PayloadError {
    PayloadError::NotAPayload(why.into())
}

impl Payload {
    pub fn open(path: &Path) -> Result<Payload, PayloadError> {
        let files = LayoutFiles::open(path)?;
        let index = image::Manifest::parse(&files.read_small("index.json")?)?;
        let [top] = &index.manifests[..] else {
            return Err(not_payload(format!(
                "index.json lists {} manifests, not one",
                index.manifests.len()
            )));
        };
        let oci_bytes = small_blob(&files, &top.digest, "the OCI manifest")?;
        let oci = image::Manifest::parse(&oci_bytes)?;
        let config = oci
            .config
            .as_ref()
            .ok_or_else(|| not_payload("the OCI manifest has no config"))?;
        if config.media_type != media::MANIFEST_TYPE {
            return Err(not_payload(format!(
                "its config is {:?}, not {}",
                config.media_type,
                media::MANIFEST_TYPE
            )));
        }
        let manifest = small_blob(&files, &config.digest, "the update manifest")?;
        let signature = match oci
            .layers
            .iter()
            .find(|l| l.media_type == media::SIGNATURE_TYPE)
        {
            None => None,
            Some(d) => Some(signature(&files, d)?),
        };
        Ok(Payload {
            files,
            manifest,
            signature,
        })
    }
}

fn small_blob(files: &LayoutFiles, digest: &Digest, what: &str) -> Result<Vec<u8>, PayloadError> {
    let data = files.read_small(&format!("blobs/sha256/{}", digest.hex()))?;
    Ok(image::checked(digest, data, what)?)
}

fn signature(files: &LayoutFiles, d: &Descriptor) -> Result<Vec<u8>, PayloadError> {
    if d.size > MAX_SIGNATURE {
        return Err(not_payload(format!(
            "its signature layer claims {} bytes (at most {MAX_SIGNATURE})",
            d.size
        )));
    }
    let mut out = Vec::new();
    files
        .blob(&d.digest, d.size)?
        .take(MAX_SIGNATURE)
        .read_to_end(&mut out)
        .map_err(|e| not_payload(format!("reading its signature: {e}")))?;
    Ok(image::checked(&d.digest, out, "the signature")?)
}

/// Opens the payload at `from` and checks it against the trusted keys in `keys` and the
/// version rules for a machine running `running`: what `check`, `write-root` and `apply`
/// all start with.
pub fn open_verified(
    from: &Path,
    keys: &Path,
    running: &berth_update::Version,
    allow_downgrade: bool,
) -> Result<(Payload, berth_update::Verified), String> {
    let keys = berth_update::Keyring::load(keys).map_err(|e| e.to_string())?;
    let payload = Payload::open(from).map_err(|e| format!("{}: {e}", from.display()))?;
    let policy = berth_update::Policy {
        running,
        allow_downgrade,
    };
    let verified = berth_update::verify(
        &keys,
        &payload.manifest,
        payload.signature.as_deref(),
        policy,
    )
    .map_err(|e| format!("{}: refused: {e}", from.display()))?;
    Ok((payload, verified))
}

impl berth_update::apply::Source for Payload {
    fn open(&mut self, digest: &str, size: u64) -> std::io::Result<Box<dyn Read + '_>> {
        let d = Digest::parse(digest)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        self.files
            .blob(&d, size)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }
}
