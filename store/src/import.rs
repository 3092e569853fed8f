//! Images from files: an OCI image layout directory (image-spec "Image Layout":
//! `oci-layout`, `index.json`, `blobs/ALG/HEX`) and a `docker save` archive (a tar with
//! `manifest.json` listing each image's config, tags and layer tars; Docker 25+ writes
//! an OCI layout inside the same tar, which this reads the same way).
//!
//! Both are hostile input. Every file of a layout is opened in the layout's directory
//! with no symlink on the way (openat2 RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS), must be
//! a regular file (a FIFO would block, /dev/zero would never end) and is read up to a
//! cap: [`MAX_SMALL`] for index.json, manifests and configs, a blob's declared size for
//! a layer. An archive must be a regular file, its manifest.json and configs are capped
//! the same way, and it may hold at most [`MAX_MEMBERS`] members.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use serde::Deserialize;

use crate::digest::Digest;
use crate::image::{self, BlobSource, Descriptor, Manifest};
use crate::reference::Reference;
use crate::regular::{self, OpenError, ReadError, Resolve};
use crate::store::{ImageRecord, Result, Store, StoreError};

/// index.json, oci-layout, manifests, configs, an archive's manifest.json: JSON that is
/// a few KiB in practice (registries cap manifests at 4 MiB too).
pub const MAX_SMALL: u64 = 4 << 20;

/// Members of a `docker save` archive: a layer tar, a config and a few small files per
/// layer; far more is a bomb of headers.
pub const MAX_MEMBERS: usize = 100_000;

/// Opens `rel` in the layout (no symlinks, a regular file): the descriptor and size.
fn open_in(dir: &OwnedFd, root: &Path, rel: &str) -> Result<(OwnedFd, u64)> {
    let path = root.join(rel);
    regular::open_regular(dir.as_fd(), Path::new(rel), Resolve::InRootNoSymlinks)
        .map_err(|e| open_failed(path, e))
}

fn open_failed(path: PathBuf, e: OpenError) -> StoreError {
    match e {
        // RESOLVE_NO_SYMLINKS met one on the way.
        OpenError::Errno(rustix::io::Errno::LOOP) => StoreError::NotRegular {
            path,
            why: "a symlink, which an image layout must not hold".into(),
        },
        OpenError::Errno(e) => StoreError::Io {
            path,
            source: e.into(),
        },
        e @ OpenError::NotRegular(_) => StoreError::NotRegular {
            path,
            why: e.to_string(),
        },
    }
}

/// Reads a small file of the layout whole, refusing it past MAX_SMALL.
fn read_small_file(dir: &OwnedFd, root: &Path, rel: &str) -> Result<Vec<u8>> {
    let (fd, size) = open_in(dir, root, rel)?;
    regular::read_capped(fd, size, MAX_SMALL).map_err(|e| capped_failed(root.join(rel), e))
}

fn capped_failed(path: PathBuf, e: ReadError) -> StoreError {
    match e {
        ReadError::Io(source) => StoreError::Io { path, source },
        ReadError::TooLarge { limit } => StoreError::TooBig { path, limit },
    }
}

/// Annotations that name an image in a layout: containerd's full name, and the OCI
/// one (often just a tag, as skopeo writes it).
const CONTAINERD_NAME: &str = "io.containerd.image.name";
const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";

fn invalid(msg: impl Into<String>) -> StoreError {
    StoreError::Invalid(msg.into())
}

/// The reference to store an image under: `name` from the command line wins (with the
/// layout's tag added when `name` has none); else the layout's own annotation, which
/// must then be a full reference.
fn reference_for(name: Option<&str>, desc: &Descriptor) -> Result<String> {
    let full = desc.annotations.get(CONTAINERD_NAME);
    let tag = desc.annotations.get(OCI_REF_NAME);
    let text = match (name, full, tag) {
        (Some(n), _, Some(t)) if !n.contains(':') && !t.contains('/') && !t.contains(':') => {
            format!("{n}:{t}")
        }
        (Some(n), _, _) => n.to_string(),
        (None, Some(f), _) => f.clone(),
        (None, None, Some(t)) if t.contains('/') || t.contains(':') => t.clone(),
        _ => {
            return Err(invalid(
                "the layout does not name the image with a full reference: give a name",
            ))
        }
    };
    Reference::parse(&text)
        .map(|r| r.to_string())
        .map_err(|e| invalid(e.to_string()))
}

// ---- OCI image layout directory ----

pub struct LayoutDir {
    dir: PathBuf,
    fd: OwnedFd,
}

impl LayoutDir {
    fn open(dir: &Path) -> Result<LayoutDir> {
        // The directory the operator named: followed as given. Nothing inside it is.
        let fd = rustix::fs::open(
            dir,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| StoreError::Io {
            path: dir.to_path_buf(),
            source: e.into(),
        })?;
        Ok(LayoutDir {
            dir: dir.to_path_buf(),
            fd,
        })
    }

    fn rel(d: &Digest) -> String {
        format!("blobs/sha256/{}", d.hex())
    }

    fn read_small(&self, d: &Digest, what: &str) -> Result<Vec<u8>> {
        let data = read_small_file(&self.fd, &self.dir, &Self::rel(d))?;
        image::checked(d, data, what)
    }
}

impl BlobSource for LayoutDir {
    /// The blob, read no further than its descriptor's size (a larger file is refused
    /// at once: its digest could not match anyway).
    fn open(&self, d: &Descriptor) -> Result<Box<dyn Read + '_>> {
        let rel = Self::rel(&d.digest);
        let (fd, size) = open_in(&self.fd, &self.dir, &rel)?;
        if size > d.size {
            return Err(StoreError::TooBig {
                path: self.dir.join(rel),
                limit: d.size,
            });
        }
        Ok(Box::new(File::from(fd).take(d.size)))
    }
}

/// Imports every image an OCI layout's index.json lists (or, with `name`, the one
/// image it must then hold).
pub fn oci_layout(
    store: &Store,
    dir: &Path,
    name: Option<&str>,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<ImageRecord>> {
    let source = LayoutDir::open(dir)?;
    let layout_file = dir.join("oci-layout");
    let text = read_small_file(&source.fd, dir, "oci-layout")?;
    let version: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| StoreError::Json {
            path: layout_file.clone(),
            source: e,
        })?;
    if version["imageLayoutVersion"] != "1.0.0" {
        return Err(invalid(format!(
            "{}: unsupported imageLayoutVersion {}",
            layout_file.display(),
            version["imageLayoutVersion"]
        )));
    }
    let index_path = dir.join("index.json");
    let index_bytes = read_small_file(&source.fd, dir, "index.json")?;
    let index = Manifest::parse(&index_bytes)?;
    if name.is_some() && index.manifests.len() > 1 {
        return Err(invalid(format!(
            "{} lists {} images: import it without a name (each is named in the layout)",
            index_path.display(),
            index.manifests.len()
        )));
    }
    let mut out = Vec::new();
    for top in &index.manifests {
        let reference = reference_for(name, top)?;
        let mut desc = top.clone();
        let mut bytes = source.read_small(&desc.digest, "manifest")?;
        // Nested indexes (a multi-platform image): down to linux/amd64.
        for _ in 0..4 {
            let m = Manifest::parse(&bytes)?;
            if !m.is_index() {
                break;
            }
            desc = m.pick_platform()?.clone();
            bytes = source.read_small(&desc.digest, "manifest")?;
        }
        progress(&format!("importing {reference}"));
        out.push(image::store_image(
            store, &source, &reference, &bytes, progress,
        )?);
    }
    Ok(out)
}

// ---- docker save archive ----

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ArchiveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

pub struct Archive {
    file: std::sync::Mutex<File>,
    /// Member path -> (offset of its data, size).
    members: BTreeMap<String, (u64, u64)>,
    path: PathBuf,
}

impl Archive {
    fn open(path: &Path) -> Result<Archive> {
        let io = |e| StoreError::Io {
            path: path.to_path_buf(),
            source: e,
        };
        // Followed as the operator named it, but it must be a regular file: a FIFO or
        // /dev/zero would hang the import or never end.
        let (fd, _) = regular::open_regular(rustix::fs::CWD, path, Resolve::Follow)
            .map_err(|e| open_failed(path.to_path_buf(), e))?;
        let file = File::from(fd);
        let mut members = BTreeMap::new();
        {
            let mut tar = tar::Archive::new(&file);
            for entry in tar.entries().map_err(io)? {
                let entry = entry.map_err(io)?;
                if members.len() >= MAX_MEMBERS {
                    return Err(invalid(format!(
                        "{}: more than {MAX_MEMBERS} members",
                        path.display()
                    )));
                }
                let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
                let name = name.trim_start_matches("./").to_string();
                if entry.header().entry_type().is_file() {
                    members.insert(name, (entry.raw_file_position(), entry.size()));
                }
            }
        }
        Ok(Archive {
            file: std::sync::Mutex::new(file),
            members,
            path: path.to_path_buf(),
        })
    }

    fn member(&self, name: &str) -> Result<Box<dyn Read + '_>> {
        let (offset, size) = *self
            .members
            .get(name)
            .ok_or_else(|| invalid(format!("{}: no member {name:?}", self.path.display())))?;
        let mut f = self
            .file
            .lock()
            .map_err(|_| invalid("archive lock poisoned"))?
            .try_clone()
            .map_err(|e| StoreError::Io {
                path: self.path.clone(),
                source: e,
            })?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| StoreError::Io {
                path: self.path.clone(),
                source: e,
            })?;
        Ok(Box::new(f.take(size)))
    }

    /// A small member (manifest.json, a config) whole, refused past MAX_SMALL.
    fn read_member(&self, name: &str) -> Result<Vec<u8>> {
        let too_big = || StoreError::TooBig {
            path: self.path.join(name),
            limit: MAX_SMALL,
        };
        if self
            .members
            .get(name)
            .is_some_and(|(_, size)| *size > MAX_SMALL)
        {
            return Err(too_big());
        }
        let mut out = Vec::new();
        self.member(name)?
            .take(MAX_SMALL + 1)
            .read_to_end(&mut out)
            .map_err(|e| StoreError::Io {
                path: self.path.clone(),
                source: e,
            })?;
        if out.len() as u64 > MAX_SMALL {
            return Err(too_big());
        }
        Ok(out)
    }
}

/// The blobs of one archive image: its layers by position (their blob digests are not
/// known; the config's diff IDs check them).
struct ArchiveImage<'a> {
    archive: &'a Archive,
    by_digest: BTreeMap<Digest, String>,
}

impl BlobSource for ArchiveImage<'_> {
    fn open(&self, d: &Descriptor) -> Result<Box<dyn Read + '_>> {
        let name = self
            .by_digest
            .get(&d.digest)
            .ok_or_else(|| invalid(format!("no archive member for {}", d.digest)))?;
        self.archive.member(name)
    }
}

/// Imports every image of a `docker save` archive under its RepoTags (or `name`).
pub fn docker_archive(
    store: &Store,
    path: &Path,
    name: Option<&str>,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<ImageRecord>> {
    let archive = Archive::open(path)?;
    let manifest_json = archive.read_member("manifest.json")?;
    let entries: Vec<ArchiveEntry> =
        serde_json::from_slice(&manifest_json).map_err(|e| StoreError::Json {
            path: path.join("manifest.json"),
            source: e,
        })?;
    if name.is_some() && entries.len() > 1 {
        return Err(invalid(format!(
            "{} holds {} images: import it without a name",
            path.display(),
            entries.len()
        )));
    }
    let mut out = Vec::new();
    for entry in entries {
        let config = archive.read_member(&entry.config)?;
        let config_digest = Digest::of(&config);
        // A manifest in the image-spec's shape, so one code path stores both kinds. Each
        // layer's "digest" is a stand-in derived from its member name: the archive does
        // not carry blob digests, and the diff IDs in the config check the content.
        let mut by_digest = BTreeMap::new();
        let mut layers = Vec::new();
        for member in &entry.layers {
            // Docker 25+ names layers blobs/sha256/HEX: a real blob digest to check.
            let d = member
                .strip_prefix("blobs/sha256/")
                .and_then(|hex| Digest::parse(&format!("sha256:{hex}")).ok());
            let key = d.clone().unwrap_or_else(|| Digest::of(member.as_bytes()));
            by_digest.insert(key.clone(), member.clone());
            layers.push((key, d.is_some()));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": image::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config.len()},
            "layers": layers.iter().map(|(d, _)| serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": d.to_string(),
            })).collect::<Vec<_>>(),
        });
        let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| invalid(e.to_string()))?;
        let source = ArchiveImageWithConfig {
            inner: ArchiveImage {
                archive: &archive,
                by_digest,
            },
            config_digest: config_digest.clone(),
            config: config.clone(),
            verified: layers
                .iter()
                .filter(|(_, v)| *v)
                .map(|(d, _)| d.clone())
                .collect(),
        };
        let tags: Vec<String> = match name {
            Some(n) => vec![n.to_string()],
            None => entry.repo_tags.clone().unwrap_or_default(),
        };
        if tags.is_empty() {
            return Err(invalid(format!(
                "{}: an image without RepoTags: give a name",
                path.display()
            )));
        }
        let first = Reference::parse(&tags[0])
            .map_err(|e| invalid(e.to_string()))?
            .to_string();
        progress(&format!("importing {first}"));
        let rec = image::store_image(store, &source, &first, &manifest_bytes, progress)?;
        for t in &tags[1..] {
            let r = Reference::parse(t)
                .map_err(|e| invalid(e.to_string()))?
                .to_string();
            out.push(store.tag(&r, &rec.id, &rec.manifest, &rec.layers)?);
        }
        out.push(rec);
    }
    Ok(out)
}

/// An archive image as a blob source: the config from memory, layers from members.
/// Layers whose member name carries no digest are checked by diff ID alone.
struct ArchiveImageWithConfig<'a> {
    inner: ArchiveImage<'a>,
    config_digest: Digest,
    config: Vec<u8>,
    verified: Vec<Digest>,
}

impl BlobSource for ArchiveImageWithConfig<'_> {
    fn open(&self, d: &Descriptor) -> Result<Box<dyn Read + '_>> {
        if d.digest == self.config_digest {
            return Ok(Box::new(std::io::Cursor::new(self.config.clone())));
        }
        self.inner.open(d)
    }

    fn blob_digest_known(&self, d: &Descriptor) -> bool {
        self.verified.contains(&d.digest)
    }
}

// ---- An image layout's files, from a directory or an `oci-archive` ----

/// The files of an OCI image layout, wherever it is: a directory, or a tar of one
/// (skopeo's `oci-archive`). For readers of layouts that are not container images (the
/// OS update payload), with the same refusals as the imports above: no symlinks inside
/// a directory, regular files only, small files capped, archives bounded in members.
pub enum LayoutFiles {
    Dir(LayoutDir),
    Archive(Archive),
}

impl LayoutFiles {
    /// A directory is read as a layout, anything else as an archive of one.
    pub fn open(path: &Path) -> Result<LayoutFiles> {
        if path.is_dir() {
            LayoutDir::open(path).map(LayoutFiles::Dir)
        } else {
            Archive::open(path).map(LayoutFiles::Archive)
        }
    }

    /// `rel` (`index.json`, `blobs/sha256/HEX`) whole, refused past [`MAX_SMALL`].
    pub fn read_small(&self, rel: &str) -> Result<Vec<u8>> {
        match self {
            LayoutFiles::Dir(d) => read_small_file(&d.fd, &d.dir, rel),
            LayoutFiles::Archive(a) => a.read_member(rel),
        }
    }

    /// The blob `digest`, read no further than `size` (one that is larger is refused
    /// at once: its digest could not match).
    pub fn blob(&self, digest: &Digest, size: u64) -> Result<Box<dyn Read + '_>> {
        let rel = LayoutDir::rel(digest);
        match self {
            LayoutFiles::Dir(d) => d.open(&Descriptor {
                media_type: String::new(),
                digest: digest.clone(),
                size,
                platform: None,
                annotations: Default::default(),
            }),
            LayoutFiles::Archive(a) => {
                if a.members.get(&rel).is_some_and(|(_, s)| *s > size) {
                    return Err(StoreError::TooBig {
                        path: a.path.join(&rel),
                        limit: size,
                    });
                }
                a.member(&rel)
            }
        }
    }
}
