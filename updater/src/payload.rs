//! A payload read from an OCI image layout or an `oci-archive` (the image store's
//! `LayoutFiles`, with its refusals of symlinks, non-regular files and oversized JSON),
//! or pulled from a registry (the store's client: `registries.toml`'s mirrors, auth,
//! CA files and insecure hosts). One OCI manifest; its config must be Berth's update
//! manifest, and the layer of the signature's media type (the first, if several) is the
//! signature. Nothing else is taken from the OCI manifest: the parts are fetched by the
//! digests the *signed* manifest names, and checked against them as they stream.

use std::io::Read;
use std::path::{Path, PathBuf};

use berth_store::digest::Digest;
use berth_store::image::{self, Descriptor};
use berth_store::import::LayoutFiles;
use berth_store::reference::Reference;
use berth_store::registry::{Client, Config, RegistryError};
use berth_store::store::StoreError;
use berth_update::media;

/// The signature is a few hundred bytes; a layer claiming more is not one.
const MAX_SIGNATURE: u64 = 4096;
/// Berth's manifest is a few KiB: the cap on what is read before the signature check.
const MAX_MANIFEST: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Pull(#[from] berth_store::pull::PullError),
    #[error("{0}")]
    Registry(#[from] RegistryError),
    #[error("not a Berth update payload: {0}")]
    NotAPayload(String),
}

/// Where a payload is read from, as the operator names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// An OCI layout directory or an oci-archive file.
    File(PathBuf),
    /// `REGISTRY/REPOSITORY:TAG` (or `@sha256:...`).
    Registry(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Registry(r) => f.write_str(r),
        }
    }
}

enum Blobs {
    Files(LayoutFiles),
    Registry {
        client: Box<Client>,
        host: String,
        repository: String,
    },
}

impl Blobs {
    fn open(&self, d: &Digest, size: u64) -> Result<Box<dyn Read + '_>, PayloadError> {
        match self {
            Blobs::Files(files) => Ok(files.blob(d, size)?),
            Blobs::Registry {
                client,
                host,
                repository,
            } => Ok(client.blob_from(host, repository, d, 0)?.0),
        }
    }

    /// A small blob, read whole (at most `limit` bytes) and checked against its digest.
    fn small(&self, d: &Descriptor, limit: u64, what: &str) -> Result<Vec<u8>, PayloadError> {
        if d.size > limit {
            return Err(not_payload(format!(
                "{what} claims {} bytes (at most {limit})",
                d.size
            )));
        }
        let mut out = Vec::new();
        self.open(&d.digest, d.size)?
            .take(limit)
            .read_to_end(&mut out)
            .map_err(|e| not_payload(format!("reading {what}: {e}")))?;
        Ok(image::checked(&d.digest, out, what)?)
    }
}

pub struct Payload {
    blobs: Blobs,
    /// The config blob: Berth's manifest, the exact bytes that were signed.
    pub manifest: Vec<u8>,
    /// The signature layer's content; `None` when the artifact carries none.
    pub signature: Option<Vec<u8>>,
}

/// The image store's registry client, with this machine's `registries.toml`.
fn client() -> Result<Client, RegistryError> {
    let config =
        Config::load(Path::new(berth_store::registry::CONFIG_PATH)).map_err(RegistryError::from)?;
    Client::new(config)
}

/// The same, for the updater's other HTTP (FleetLock): the CAs the registries trust.
pub fn registry_client() -> Result<Client, String> {
    client().map_err(|e| e.to_string())
}

fn not_payload(why: impl Into<String>) -> PayloadError {
    PayloadError::NotAPayload(why.into())
}

impl Payload {
    pub fn open(from: &Origin) -> Result<Payload, PayloadError> {
        match from {
            Origin::File(path) => Payload::open_files(path),
            Origin::Registry(reference) => Payload::pull(reference),
        }
    }

    fn open_files(path: &Path) -> Result<Payload, PayloadError> {
        let files = LayoutFiles::open(path)?;
        let index = image::Manifest::parse(&files.read_small("index.json")?)?;
        let [top] = &index.manifests[..] else {
            return Err(not_payload(format!(
                "index.json lists {} manifests, not one",
                index.manifests.len()
            )));
        };
        let oci_bytes = files.read_small(&format!("blobs/sha256/{}", top.digest.hex()))?;
        let oci_bytes = image::checked(&top.digest, oci_bytes, "the OCI manifest")?;
        Payload::from_manifest(Blobs::Files(files), &oci_bytes)
    }

    /// From a registry, through the store's client and its `registries.toml`.
    fn pull(reference: &str) -> Result<Payload, PayloadError> {
        let r = Reference::parse(reference).map_err(|e| not_payload(e.to_string()))?;
        let client = client()?;
        // The manifest, checked against its digest, bounded in size.
        let (host, oci_bytes, _) = berth_store::pull::resolve(&client, &r)?;
        let blobs = Blobs::Registry {
            client: Box::new(client),
            host,
            repository: r.repository.clone(),
        };
        Payload::from_manifest(blobs, &oci_bytes)
    }

    fn from_manifest(blobs: Blobs, oci_bytes: &[u8]) -> Result<Payload, PayloadError> {
        let oci = image::Manifest::parse(oci_bytes)?;
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
        let manifest = blobs.small(config, MAX_MANIFEST, "the update manifest")?;
        let signature = match oci
            .layers
            .iter()
            .find(|l| l.media_type == media::SIGNATURE_TYPE)
        {
            None => None,
            Some(d) => Some(blobs.small(d, MAX_SIGNATURE, "its signature layer")?),
        };
        Ok(Payload {
            blobs,
            manifest,
            signature,
        })
    }
}

/// Opens the payload at `from` and checks it against the trusted keys in `keys` and the
/// version rules for a machine running `running`: what `check`, `write-root` and `apply`
/// all start with.
pub fn open_verified(
    from: &Origin,
    keys: &Path,
    running: &berth_update::Version,
    allow_downgrade: bool,
) -> Result<(Payload, berth_update::Verified), String> {
    let keys = berth_update::Keyring::load(keys).map_err(|e| e.to_string())?;
    let payload = Payload::open(from).map_err(|e| format!("{from}: {e}"))?;
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
    .map_err(|e| format!("{from}: refused: {e}"))?;
    Ok((payload, verified))
}

impl berth_update::apply::Source for Payload {
    fn open(&mut self, digest: &str, size: u64) -> std::io::Result<Box<dyn Read + '_>> {
        let d = Digest::parse(digest)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        self.blobs
            .open(&d, size)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }
}
