//! The OS update payload: the version just built, as an OCI artifact any registry can
//! carry (`out/update/`, an image layout, and `out/berth-update.tar`, the same as an
//! `oci-archive` for machines off the network).
//!
//! The artifact's config blob is Berth's update manifest (berth-update's `Manifest`:
//! version, build, each part's size and digest, the root hash and salt, the command
//! line's slot-independent words, the oldest version it applies over). Its layers are
//! the root image's erofs data, its dm-verity hash tree (apart, so a machine can check
//! the tree against the root hash and then every data block before writing it), the
//! kernel, the initramfs, and the minisign signature over the manifest's exact bytes. Only the
//! manifest is signed; every other part is bound to it by digest.
//!
//! Signing runs Debian's `minisign` (run, not linked), with the key `--signing-key`
//! names, or else a development key made once under `cache/keys/`. The matching public
//! key goes into the root at `/usr/share/berth/keys/KEYID.pub` (berth-update's
//! `KEYS_DIR`): a machine trusts what it was built to trust.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use berth_update::{Manifest, Part, RootPart, Version};

use crate::debs::run;
use crate::rootfs::RootImage;

const BLOCK: usize = berth_update::verity::BLOCK;

use berth_update::media::{
    ARTIFACT_TYPE, INITRAMFS_TYPE, KERNEL_TYPE, ROOT_TYPE, SIGNATURE_TYPE, TREE_TYPE,
};
/// The oldest version this payload format can be applied over: the first with slots.
const MIN_VERSION: &str = "0.1.0";

/// The key that signs, and the public key machines will trust.
pub struct Signer {
    secret: PathBuf,
    /// minisign's public key file, as it goes into the root.
    pub public: Vec<u8>,
    /// The key id minisign prints (16 hex digits): the public key's file name.
    pub key_id: String,
}

impl Signer {
    /// `key`, or the development key under `cache/keys/` (made now if missing).
    pub fn new(cache: &Path, key: Option<&Path>) -> Result<Signer> {
        let secret = match key {
            Some(k) => {
                eprintln!(
                    "image-build: signing the update payload with {}",
                    k.display()
                );
                k.to_path_buf()
            }
            None => dev_key(cache)?,
        };
        let dir = tempfile::tempdir().context("a temporary directory")?;
        let public_path = dir.path().join("key.pub");
        // -R: the public key, recomputed from the secret key.
        run(Command::new("minisign")
            .arg("-R")
            .arg("-s")
            .arg(&secret)
            .arg("-p")
            .arg(&public_path))
        .with_context(|| minisign_help(&secret))?;
        let public = std::fs::read(&public_path)?;
        let key_id = key_id(&public)?;
        Ok(Signer {
            secret,
            public,
            key_id,
        })
    }

    /// The minisign signature (the file's text) over `message`.
    fn sign(&self, message: &Path, trusted_comment: &str) -> Result<Vec<u8>> {
        let sig = message.with_extension("minisig");
        run(Command::new("minisign")
            .arg("-S")
            .arg("-s")
            .arg(&self.secret)
            .arg("-m")
            .arg(message)
            .arg("-x")
            .arg(&sig)
            .arg("-t")
            .arg(trusted_comment))
        .with_context(|| minisign_help(&self.secret))?;
        Ok(std::fs::read(&sig)?)
    }
}

fn minisign_help(key: &Path) -> String {
    format!(
        "running minisign with {} (is Debian's minisign installed? `make deps`)",
        key.display()
    )
}

/// The development key pair, unencrypted (`-W`), made once per tree.
fn dev_key(cache: &Path) -> Result<PathBuf> {
    let dir = cache.join("keys");
    let secret = dir.join("dev.key");
    if secret.exists() {
        eprintln!(
            "image-build: no SIGNING_KEY: signing the update payload with the development key {} \
             (machines built here trust it; never ship it)",
            secret.display()
        );
        return Ok(secret);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    run(Command::new("minisign")
        .args(["-G", "-W", "-f", "-p"])
        .arg(dir.join("dev.pub"))
        .arg("-s")
        .arg(&secret))
    .with_context(|| minisign_help(&secret))?;
    eprintln!(
        "image-build: no SIGNING_KEY: made a development key pair in {} and signed the update \
         payload with it (machines built here trust it; never ship it)",
        dir.display()
    );
    Ok(secret)
}

/// The id in a public key file's comment (`untrusted comment: minisign public key ID`).
fn key_id(public: &[u8]) -> Result<String> {
    let text = std::str::from_utf8(public).context("the public key is not text")?;
    let id = text
        .lines()
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .filter(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()));
    match id {
        Some(id) => Ok(id.to_string()),
        None => bail!("minisign's public key file has no key id in its first line"),
    }
}

/// What the payload build made, for manifest.json.
#[derive(Debug, serde::Serialize)]
pub struct PayloadReport {
    pub layout: PathBuf,
    pub archive: PathBuf,
    pub version: String,
    pub key_id: String,
    pub manifest_digest: String,
    pub bytes: u64,
}

pub struct Parts<'a> {
    pub root: &'a RootImage,
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    /// The command line without the slot's own words.
    pub cmdline: &'a str,
    pub version: &'a str,
    pub build_id: &'a str,
}

/// Writes `out/update/` and `out/berth-update.tar`.
pub fn write(
    out: &Path,
    staging: &Path,
    parts: &Parts<'_>,
    signer: &Signer,
) -> Result<PayloadReport> {
    let image = std::fs::read(&parts.root.path)
        .with_context(|| format!("reading {}", parts.root.path.display()))?;
    let data_bytes = usize::try_from(parts.root.data_blocks)?.saturating_mul(BLOCK);
    anyhow::ensure!(
        data_bytes < image.len(),
        "the root image is smaller than its data blocks"
    );
    let (data, tree) = image.split_at(data_bytes);
    let kernel = std::fs::read(parts.vmlinuz)
        .with_context(|| format!("reading {}", parts.vmlinuz.display()))?;
    let initrd = std::fs::read(parts.initrd)
        .with_context(|| format!("reading {}", parts.initrd.display()))?;
    let manifest = Manifest {
        schema: berth_update::manifest::SCHEMA,
        version: Version::parse(parts.version)?,
        build_id: parts.build_id.to_string(),
        min_version: Version::parse(MIN_VERSION)?,
        root: RootPart {
            data: Part {
                bytes: len(data),
                digest: digest(data),
            },
            tree: Part {
                bytes: len(tree),
                digest: digest(tree),
            },
            root_hash: parts.root.root_hash.clone(),
            salt: parts.root.salt.clone(),
            data_blocks: parts.root.data_blocks,
        },
        kernel: Part {
            bytes: len(&kernel),
            digest: digest(&kernel),
        },
        initramfs: Part {
            bytes: len(&initrd),
            digest: digest(&initrd),
        },
        cmdline: parts.cmdline.to_string(),
    };
    let manifest_bytes = manifest.to_bytes();
    // What a machine will check: the parse and the bounds, before anything is signed.
    Manifest::parse(&manifest_bytes).context("the update manifest image-build made")?;
    let manifest_path = staging.join("update-manifest.json");
    crate::write(&manifest_path, &manifest_bytes)?;
    let signature = signer.sign(
        &manifest_path,
        &format!("berth {} build {}", parts.version, parts.build_id),
    )?;
    check_signature(signer, &manifest_bytes, &signature)?;

    let layers = [
        (ROOT_TYPE, data),
        (TREE_TYPE, tree),
        (KERNEL_TYPE, &kernel[..]),
        (INITRAMFS_TYPE, &initrd[..]),
        (SIGNATURE_TYPE, &signature[..]),
    ];
    let layout = out.join("update");
    let files = layout_files(&manifest_bytes, &layers, parts.version);
    if layout.exists() {
        std::fs::remove_dir_all(&layout)
            .with_context(|| format!("removing the old {}", layout.display()))?;
    }
    for (name, data) in &files {
        let path = layout.join(name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        crate::write(&path, data)?;
    }
    let archive = out.join("berth-update.tar");
    write_archive(&files, &archive)?;
    let manifest_digest = digest(&files[2].1);
    Ok(PayloadReport {
        bytes: files.iter().map(|(_, d)| len(d)).sum(),
        layout,
        archive,
        version: parts.version.to_string(),
        key_id: signer.key_id.clone(),
        manifest_digest,
    })
}

/// The signature checked as a machine will check it, with the key the root carries.
fn check_signature(signer: &Signer, manifest: &[u8], signature: &[u8]) -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join(format!("{}.pub", signer.key_id)),
        &signer.public,
    )?;
    let ring = berth_update::Keyring::load(dir.path())?;
    ring.verify(manifest, signature)
        .map(drop)
        .context("the signature minisign made does not verify with its own public key")
}

/// The image layout's files (image-spec "Image Layout"): `oci-layout`, `index.json`,
/// then the OCI manifest, the config (Berth's manifest) and the layers as blobs. The
/// OCI manifest is third: the archive and the report find it there.
fn layout_files(config: &[u8], layers: &[(&str, &[u8])], version: &str) -> Vec<(String, Vec<u8>)> {
    let descriptor = |media_type: &str, data: &[u8]| serde_json::json!({"mediaType": media_type, "digest": digest(data), "size": data.len()});
    let oci_manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": ARTIFACT_TYPE,
        "config": descriptor(berth_update::media::MANIFEST_TYPE, config),
        "layers": layers.iter().map(|(t, d)| descriptor(t, d)).collect::<Vec<_>>(),
        "annotations": {"org.opencontainers.image.version": version},
    })
    .to_string()
    .into_bytes();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": ARTIFACT_TYPE,
            "digest": digest(&oci_manifest),
            "size": oci_manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": version},
        }],
    })
    .to_string()
    .into_bytes();
    let blob = |data: &[u8]| format!("blobs/sha256/{}", &digest(data)["sha256:".len()..]);
    let mut files = vec![
        (
            "oci-layout".to_string(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".to_string(), index),
        (blob(&oci_manifest), oci_manifest.clone()),
        (blob(config), config.to_vec()),
    ];
    for (_, data) in layers {
        files.push((blob(data), data.to_vec()));
    }
    files
}

/// The layout as one tar (the `oci-archive` form skopeo reads), entries in layout order,
/// owned by root, timestamp 0: the same build gives the same bytes.
fn write_archive(files: &[(String, Vec<u8>)], path: &Path) -> Result<()> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for (name, data) in files {
        let mut parent = Path::new(name).parent();
        let mut new_dirs = Vec::new();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            if dirs.insert(p.to_path_buf()) {
                new_dirs.push(p.to_path_buf());
            }
            parent = p.parent();
        }
        for dir in new_dirs.iter().rev() {
            let mut h = header(0o755, 0);
            h.set_entry_type(tar::EntryType::Directory);
            b.append_data(&mut h, dir, std::io::empty())?;
        }
        let mut h = header(0o644, len(data));
        b.append_data(&mut h, name, &data[..])?;
    }
    let tar = b.into_inner()?;
    crate::write(path, &tar)
}

fn header(mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn digest(data: &[u8]) -> String {
    format!("sha256:{}", crate::rootfs::hex(&crate::digest(&[data])))
}

fn len(data: &[u8]) -> u64 {
    u64::try_from(data.len()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_names_every_blob_by_its_digest_and_the_index_finds_the_manifest() {
        let files = layout_files(
            b"{}",
            &[(ROOT_TYPE, b"root"), (SIGNATURE_TYPE, b"sig")],
            "0.2.0",
        );
        for (name, data) in &files[2..] {
            assert_eq!(name, &format!("blobs/sha256/{}", &digest(data)[7..]));
        }
        let index: serde_json::Value = serde_json::from_slice(&files[1].1).unwrap();
        assert_eq!(index["manifests"][0]["digest"], digest(&files[2].1));
        let m: serde_json::Value = serde_json::from_slice(&files[2].1).unwrap();
        assert_eq!(m["config"]["mediaType"], berth_update::media::MANIFEST_TYPE);
        assert_eq!(m["layers"][1]["mediaType"], SIGNATURE_TYPE);
        assert_eq!(m["layers"][0]["size"], 4);
    }

    #[test]
    fn the_key_id_comes_from_minisigns_comment() {
        let public = b"untrusted comment: minisign public key D22C3CB7C430B136\nRWQ2sTDE\n";
        assert_eq!(key_id(public).unwrap(), "D22C3CB7C430B136");
        assert!(key_id(b"untrusted comment: something else\nRWQ\n").is_err());
    }
}
