//! What every source of images shares: picking linux/amd64 out of an image index, and
//! storing an image manifest's layers and config (image-spec "Image Manifest", "Image
//! Index", "Image Configuration"; Docker's schema2 has the same shape).

use std::io::Read;

use serde::Deserialize;

use crate::digest::Digest;
use crate::store::{ImageRecord, Result, Store, StoreError};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// The fields of a descriptor the store uses.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
}

/// An image manifest or an index: told apart by mediaType, or by which list it has.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    #[serde(default)]
    pub media_type: String,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

impl Manifest {
    pub fn parse(data: &[u8]) -> Result<Self> {
        serde_json::from_slice(data).map_err(|e| StoreError::Invalid(format!("bad manifest: {e}")))
    }

    pub fn is_index(&self) -> bool {
        self.media_type == OCI_INDEX
            || self.media_type == DOCKER_LIST
            || (self.config.is_none() && !self.manifests.is_empty())
    }

    /// The linux/amd64 entry of an index.
    pub fn pick_platform(&self) -> Result<&Descriptor> {
        let amd64 = |d: &&Descriptor| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        };
        if let Some(d) = self.manifests.iter().find(amd64) {
            return Ok(d);
        }
        match self.manifests.as_slice() {
            [only] if only.platform.is_none() => Ok(only),
            _ => {
                let offered: Vec<String> = self
                    .manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref())
                    .map(|p| format!("{}/{}", p.os, p.architecture))
                    .collect();
                Err(StoreError::Invalid(format!(
                    "no linux/amd64 image in the index (it offers: {})",
                    if offered.is_empty() {
                        "nothing".into()
                    } else {
                        offered.join(", ")
                    }
                )))
            }
        }
    }
}

/// The parts of an image config the store needs.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub rootfs: RootFs,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

impl Config {
    pub fn parse(data: &[u8]) -> Result<Self> {
        let c: Config = serde_json::from_slice(data)
            .map_err(|e| StoreError::Invalid(format!("bad image config: {e}")))?;
        if !c.os.is_empty() && c.os != "linux"
            || !c.architecture.is_empty() && c.architecture != "amd64"
        {
            return Err(StoreError::Invalid(format!(
                "the image is for {}/{}, not linux/amd64",
                c.os, c.architecture
            )));
        }
        Ok(c)
    }
}

/// A source of blobs by digest (a registry, an OCI layout, an archive).
pub trait BlobSource {
    fn open(&self, d: &Descriptor) -> Result<Box<dyn Read + '_>>;

    /// Whether `d.digest` is the blob's own digest, to check it against; a `docker save`
    /// archive has none for its layer tars, which the config's diff IDs check instead.
    fn blob_digest_known(&self, _d: &Descriptor) -> bool {
        true
    }
}

/// Checks a small blob (manifest, config) against its digest.
pub fn checked(d: &Digest, data: Vec<u8>, what: &str) -> Result<Vec<u8>> {
    let actual = Digest::of(&data);
    if actual != *d {
        return Err(StoreError::DigestMismatch {
            what: what.into(),
            expected: d.clone(),
            actual,
        });
    }
    Ok(data)
}

/// Stores the image `manifest` (its bytes `manifest_bytes`) from `source` as `reference`,
/// one layer after another. `progress` hears of each layer as it is done.
pub fn store_image(
    store: &Store,
    source: &dyn BlobSource,
    reference: &str,
    manifest_bytes: &[u8],
    progress: &mut dyn FnMut(&str),
) -> Result<ImageRecord> {
    let manifest = Manifest::parse(manifest_bytes)?;
    let config_desc = manifest
        .config
        .as_ref()
        .ok_or_else(|| StoreError::Invalid("the manifest has no config".into()))?;
    let mut raw = Vec::new();
    source
        .open(config_desc)?
        .take(16 << 20)
        .read_to_end(&mut raw)
        .map_err(|e| StoreError::Invalid(format!("reading the config: {e}")))?;
    let config_bytes = checked(&config_desc.digest, raw, "image config")?;
    let config = Config::parse(&config_bytes)?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(StoreError::Invalid(format!(
            "the manifest has {} layers but the config lists {} diff IDs",
            manifest.layers.len(),
            config.rootfs.diff_ids.len()
        )));
    }
    let mut added = Vec::new();
    let stored =
        store_layers(store, source, &manifest, &config, &mut added, progress).and_then(|chain| {
            let config_digest = store.put_blob(&config_bytes)?;
            let manifest_digest = store.put_blob(manifest_bytes)?;
            store.tag(reference, &config_digest, &manifest_digest, &chain)
        });
    if stored.is_err() {
        // Nothing of a failed image stays: the layers it added go again.
        for chain_id in added.iter().rev() {
            let _ = store.remove_layer(chain_id);
        }
    }
    stored
}

fn store_layers(
    store: &Store,
    source: &dyn BlobSource,
    manifest: &Manifest,
    config: &Config,
    added: &mut Vec<Digest>,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<Digest>> {
    let mut parent: Option<Digest> = None;
    let mut chain = Vec::new();
    for (desc, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
        let chain_id = Store::chain_id(parent.as_ref(), diff_id);
        if store.layer(&chain_id).is_none() {
            let blob = source.open(desc)?;
            let check = source.blob_digest_known(desc).then_some(&desc.digest);
            let (_, warnings) = store.add_layer(parent.as_ref(), diff_id, check, blob)?;
            added.push(chain_id.clone());
            for w in warnings {
                progress(&format!("warning: layer {}: {w}", desc.digest));
            }
            progress(&format!("layer {} stored", desc.digest));
        } else {
            progress(&format!("layer {} already stored", desc.digest));
        }
        parent = Some(chain_id.clone());
        chain.push(chain_id);
    }
    Ok(chain)
}
