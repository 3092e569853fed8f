//! The store on disk (default `/var/lib/berth/containers`):
//!
//! ```text
//! blobs/sha256/HEX        manifests, image indexes and configs (small JSON, by digest)
//! layers/HEX/             one unpacked layer, named by its chain ID (image-spec
//!                         "ChainID": the layer and everything under it)
//! layers/HEX.json         its record: diff ID, parent chain ID, size
//! images.json             references -> manifest, config and layer chain
//! containers/ID/          a container's rootfs (and, with overlayfs, upper and work)
//! tmp/                    layers being unpacked; emptied when the store opens
//! lock                    flock(2): shared while adding (pulls, imports, rootfs),
//!                         exclusive while removing (rm, gc), none to read
//! images.lock             flock(2) around each read-modify-write of images.json
//! ```
//!
//! On btrfs each layer is a read-only subvolume holding the whole tree: a snapshot of
//! its parent with the layer applied, and a container's rootfs is a writable snapshot
//! of its image's top layer (O(1), no copy). Elsewhere a layer directory holds only its
//! own changes and a container's rootfs is an overlayfs mount over the chain. That is
//! all that differs, and it lives in `crate::backend`; this module (records,
//! images.json, locking, gc, limits) is the same on both.
//! A layer appears under `layers/` only once both its digests checked out.
//!
//! The top directory is 0700 (set on every open, so an older 0755 store is fixed too):
//! layers hold images' set-uid binaries and containers' writable trees, which a host
//! user must not reach (the CVE-2021-41091 class). 0711 is not needed: overlayfs checks
//! lower and upper directories with the mounter's credentials (root), and a container
//! reaches its files through its root mount, never through this path. Only a runtime
//! resolving the rootfs path from inside a user namespace (mapped root is not host root)
//! would need search permission here, and Berth's daemon does not create one.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::{BufReader, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use serde::{Deserialize, Serialize};

pub use crate::backend::Backend;
use crate::backend::{Layers, ROOTFS};
use crate::compression::decompressed;
use crate::digest::{Digest, HashingReader};
use crate::error::{errno_err, io_err};
pub use crate::error::{Result, StoreError};
use crate::unpack::{self, Limits};

pub const DEFAULT_ROOT: &str = "/var/lib/berth/containers";

/// The store's top directory: root's alone (see above).
pub const ROOT_MODE: u32 = 0o700;

/// Files the store writes (blobs, records): the top directory already keeps others out.
const FILE_MODE: u32 = 0o644;

/// Read buffers on the unpack path: large enough that a layer costs few system calls.
const IO_BUFFER: usize = 256 * 1024;

#[derive(Debug, Clone)]
pub struct Options {
    /// Space always left free on the store's filesystem: the larger of these two.
    pub min_free_bytes: u64,
    pub min_free_percent: u64,
    pub limits: Limits,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            min_free_bytes: 512 << 20,
            min_free_percent: 5,
            limits: Limits::default(),
        }
    }
}

/// One unpacked layer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerRecord {
    pub chain_id: Digest,
    pub diff_id: Digest,
    pub parent: Option<Digest>,
    /// Bytes of file content this layer wrote.
    pub size: u64,
}

/// One reference in the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    pub reference: String,
    /// The config's digest: the image ID, as docker shows it.
    pub id: Digest,
    pub manifest: Digest,
    /// Chain IDs, bottom layer first.
    pub layers: Vec<Digest>,
    /// Unpacked size of all layers.
    pub size: u64,
    /// When it was stored (seconds since the epoch).
    pub stored: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Images {
    images: BTreeMap<String, ImageRecord>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct GcReport {
    pub layers_removed: usize,
    pub blobs_removed: usize,
    pub bytes_freed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub backend: Backend,
    pub images: usize,
    pub layers: usize,
    pub layer_bytes: u64,
    pub containers: usize,
    pub fs_free: u64,
    pub fs_size: u64,
}

pub struct Store {
    root: PathBuf,
    backend: Backend,
    options: Options,
}

/// A held flock(2); released on drop.
pub struct Lock(#[allow(dead_code)] OwnedFd);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// Adding: pulls and imports run side by side, and gc waits for them.
    Shared,
    /// Removing: waits until nothing is being added.
    Exclusive,
}

const CONTAINER_LAYER_FILE: &str = "image-layer";

impl Store {
    /// Opens (creating) the store at `root`, waiting for another writer to finish.
    pub fn open(root: &Path, options: Options) -> Result<Store> {
        let dir = make_root(root)?;
        for sub in ["blobs/sha256", "layers", "containers", "tmp"] {
            let p = root.join(sub);
            std::fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        let store = Store {
            root: root.to_path_buf(),
            backend: Backend::detect(dir.as_fd()),
            options,
        };
        // Leftovers of an interrupted unpack, when nobody is adding right now.
        if let Ok(Some(_lock)) = store.try_lock(LockKind::Exclusive) {
            store.clean_tmp();
        }
        Ok(store)
    }

    fn lock_file(&self, name: &str) -> Result<OwnedFd> {
        let path = self.root.join(name);
        rustix::fs::open(
            &path,
            OFlags::CREATE | OFlags::RDWR | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(errno_err(&path))
    }

    /// Waits for the store lock (see the layout above).
    pub fn lock(&self, kind: LockKind) -> Result<Lock> {
        let fd = self.lock_file("lock")?;
        let op = match kind {
            LockKind::Shared => rustix::fs::FlockOperation::LockShared,
            LockKind::Exclusive => rustix::fs::FlockOperation::LockExclusive,
        };
        rustix::fs::flock(&fd, op).map_err(errno_err(self.root.join("lock")))?;
        Ok(Lock(fd))
    }

    fn try_lock(&self, kind: LockKind) -> Result<Option<Lock>> {
        let fd = self.lock_file("lock")?;
        let op = match kind {
            LockKind::Shared => rustix::fs::FlockOperation::NonBlockingLockShared,
            LockKind::Exclusive => rustix::fs::FlockOperation::NonBlockingLockExclusive,
        };
        match rustix::fs::flock(&fd, op) {
            Ok(()) => Ok(Some(Lock(fd))),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(errno_err(self.root.join("lock"))(e)),
        }
    }

    /// Runs `f` on images.json with no other writer in between.
    fn update_images<T>(&self, f: impl FnOnce(&mut Images) -> Result<T>) -> Result<T> {
        let fd = self.lock_file("images.lock")?;
        rustix::fs::flock(&fd, rustix::fs::FlockOperation::LockExclusive)
            .map_err(errno_err(self.root.join("images.lock")))?;
        let mut images = self.load_images()?;
        let out = f(&mut images)?;
        self.save_images(&images)?;
        Ok(out)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Leftovers of an interrupted unpack.
    fn clean_tmp(&self) {
        let tmp = self.root.join("tmp");
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let _ = self.backend.remove(&tmp, &e.file_name());
            }
        }
    }

    // ---- blobs (manifests, configs) ----

    pub fn put_blob(&self, data: &[u8]) -> Result<Digest> {
        let d = Digest::of(data);
        let path = self.blob_path(&d);
        if !path.exists() {
            berth_persist::write_file(&path, data, FILE_MODE)?;
        }
        Ok(d)
    }

    pub fn blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let path = self.blob_path(d);
        std::fs::read(&path).map_err(io_err(&path))
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    // ---- layers ----

    fn layer_dir(&self, chain: &Digest) -> PathBuf {
        self.root.join("layers").join(chain.hex())
    }

    pub fn layer(&self, chain: &Digest) -> Option<LayerRecord> {
        let path = self
            .root
            .join("layers")
            .join(format!("{}.json", chain.hex()));
        let text = std::fs::read(path).ok()?;
        let rec: LayerRecord = serde_json::from_slice(&text).ok()?;
        self.layer_dir(chain).is_dir().then_some(rec)
    }

    /// The layers below and including `chain`, topmost first.
    fn chain(&self, chain: &Digest) -> Result<Vec<LayerRecord>> {
        let mut out = Vec::new();
        let mut next = Some(chain.clone());
        while let Some(c) = next {
            let rec = self.layer(&c).ok_or_else(|| {
                StoreError::Invalid(format!("layer {c} is missing from the store"))
            })?;
            next = rec.parent.clone();
            out.push(rec);
            if out.len() > 1000 {
                return Err(StoreError::Invalid("layer chain too long".into()));
            }
        }
        Ok(out)
    }

    /// The chain ID of `diff_id` on top of `parent` (image-spec: sha256 of
    /// "PARENT DIFFID", or the diff ID itself for a bottom layer).
    pub fn chain_id(parent: Option<&Digest>, diff_id: &Digest) -> Digest {
        match parent {
            None => diff_id.clone(),
            Some(p) => Digest::of(format!("{p} {diff_id}").as_bytes()),
        }
    }

    /// Refuses to add `what` when the filesystem is nearly full.
    pub fn check_space(&self, what: &str) -> Result<()> {
        let (free, needed) = self.space()?;
        if free < needed {
            return Err(StoreError::NearlyFull {
                free,
                needed,
                what: what.to_string(),
            });
        }
        Ok(())
    }

    /// The filesystem's free bytes, and how many must stay free.
    fn space(&self) -> Result<(u64, u64)> {
        let st = rustix::fs::statvfs(&self.root).map_err(errno_err(&self.root))?;
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        let size = st.f_blocks.saturating_mul(st.f_frsize);
        let needed = self
            .options
            .min_free_bytes
            .max(size / 100 * self.options.min_free_percent);
        Ok((free, needed))
    }

    /// Unpacks a layer blob (gzip, zstd or plain tar, told apart by their magic bytes)
    /// on top of `parent`, checking the blob against `blob_digest` (when known) and the
    /// tar stream against `diff_id`. Nothing is stored unless both match.
    pub fn add_layer(
        &self,
        parent: Option<&Digest>,
        diff_id: &Digest,
        blob_digest: Option<&Digest>,
        blob: impl Read,
    ) -> Result<(LayerRecord, Vec<String>)> {
        let chain_id = Self::chain_id(parent, diff_id);
        if let Some(rec) = self.layer(&chain_id) {
            return Ok((rec, Vec::new()));
        }
        self.check_space(&format!("layer {diff_id}"))?;
        let tmp_parent = self.root.join("tmp");
        let tmp_name = format!("{}.{}", chain_id.hex(), std::process::id());
        let tmp = tmp_parent.join(&tmp_name);
        let _ = self.backend.remove(&tmp_parent, OsStr::new(&tmp_name));
        let result = self.unpack_into(parent, &tmp_parent, &tmp_name, diff_id, blob_digest, blob);
        let (size, warnings) = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = self.backend.remove(&tmp_parent, OsStr::new(&tmp_name));
                return Err(e);
            }
        };
        let rec = LayerRecord {
            chain_id: chain_id.clone(),
            diff_id: diff_id.clone(),
            parent: parent.cloned(),
            size,
        };
        let json =
            serde_json::to_vec_pretty(&rec).map_err(|e| StoreError::Invalid(e.to_string()))?;
        berth_persist::write_file(
            &self
                .root
                .join("layers")
                .join(format!("{}.json", chain_id.hex())),
            &json,
            FILE_MODE,
        )?;
        let dest = self.layer_dir(&chain_id);
        if let Err(e) = std::fs::rename(&tmp, &dest) {
            // Another pull stored the same layer meanwhile: keep theirs.
            let _ = self.backend.remove(&tmp_parent, OsStr::new(&tmp_name));
            if let Some(rec) = self.layer(&chain_id) {
                return Ok((rec, warnings));
            }
            return Err(io_err(&dest)(e));
        }
        self.backend.seal_layer(&dest)?;
        Ok((rec, warnings))
    }

    fn unpack_into(
        &self,
        parent: Option<&Digest>,
        tmp_parent: &Path,
        tmp_name: &str,
        diff_id: &Digest,
        blob_digest: Option<&Digest>,
        blob: impl Read,
    ) -> Result<(u64, Vec<String>)> {
        let tmp = tmp_parent.join(tmp_name);
        let target = self.backend.new_layer(self, parent, tmp_parent, tmp_name)?;
        let mut blob_reader = HashingReader::new(blob);
        let unpacked = (|| {
            let tar = decompressed(BufReader::with_capacity(IO_BUFFER, &mut blob_reader))
                .map_err(io_err("the layer blob"))?;
            // Buffered: tar reads 512-byte headers, which would each reach the
            // decompressor otherwise.
            let mut tar = HashingReader::new(BufReader::with_capacity(IO_BUFFER, tar));
            // The reserve is kept while writing too: one large layer must not fill the
            // disk between two checks.
            let limits = Limits {
                min_free_bytes: self.space()?.1,
                ..self.options.limits
            };
            let report = unpack::unpack(&mut tar, &tmp, &target, limits)?;
            let (diff, _) = tar.finish().map_err(io_err("the layer blob"))?;
            Ok::<_, StoreError>((diff, report))
        })();
        // The blob's digest first: a tampered blob often breaks the tar or the
        // compression too, and the mismatch is the better explanation.
        let blob_actual = blob_reader.finish().map_err(io_err("the layer blob"));
        if let (Some(expected), Ok((actual, _))) = (blob_digest, &blob_actual) {
            if expected != actual {
                return Err(StoreError::DigestMismatch {
                    what: "layer blob".into(),
                    expected: expected.clone(),
                    actual: actual.clone(),
                });
            }
        }
        let (diff, report) = unpacked?;
        blob_actual?;
        if diff != *diff_id {
            return Err(StoreError::DigestMismatch {
                what: "layer content (diff ID)".into(),
                expected: diff_id.clone(),
                actual: diff,
            });
        }
        Ok((report.bytes, report.warnings))
    }

    // ---- images ----

    fn images_path(&self) -> PathBuf {
        self.root.join("images.json")
    }

    fn load_images(&self) -> Result<Images> {
        let path = self.images_path();
        match std::fs::read(&path) {
            Ok(text) => {
                serde_json::from_slice(&text).map_err(|e| StoreError::Json { path, source: e })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Images::default()),
            Err(e) => Err(io_err(path)(e)),
        }
    }

    fn save_images(&self, images: &Images) -> Result<()> {
        let json =
            serde_json::to_vec_pretty(images).map_err(|e| StoreError::Invalid(e.to_string()))?;
        berth_persist::write_file(&self.images_path(), &json, FILE_MODE).map_err(Into::into)
    }

    /// Records `reference` as the image whose layers are `layers` (bottom first).
    pub fn tag(
        &self,
        reference: &str,
        id: &Digest,
        manifest: &Digest,
        layers: &[Digest],
    ) -> Result<ImageRecord> {
        let mut size = 0;
        for l in layers {
            size += self
                .layer(l)
                .ok_or_else(|| StoreError::Invalid(format!("layer {l} is missing from the store")))?
                .size;
        }
        let rec = ImageRecord {
            reference: reference.to_string(),
            id: id.clone(),
            manifest: manifest.clone(),
            layers: layers.to_vec(),
            size,
            stored: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        self.update_images(|images| {
            images.images.insert(reference.to_string(), rec.clone());
            Ok(())
        })?;
        Ok(rec)
    }

    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        Ok(self.load_images()?.images.into_values().collect())
    }

    /// By reference (short names resolved as docker does), or by ID (a prefix of at
    /// least 4 hex digits, as `docker images` shows 12).
    pub fn find(&self, name: &str) -> Result<ImageRecord> {
        self.lookup(name).map(|(rec, _)| rec)
    }

    /// The record, and whether `name` was an ID (not a reference).
    fn lookup(&self, name: &str) -> Result<(ImageRecord, bool)> {
        let images = self.load_images()?;
        if let Ok(r) = crate::reference::Reference::parse(name) {
            if let Some(rec) = images.images.get(&r.to_string()) {
                return Ok((rec.clone(), false));
            }
        }
        if let Some(rec) = images.images.get(name) {
            return Ok((rec.clone(), false));
        }
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let found: Vec<&ImageRecord> = images
                .images
                .values()
                .filter(|r| r.id.hex().starts_with(hex))
                .collect();
            if let Some(first) = found.first() {
                if found.iter().all(|r| r.id == first.id) {
                    return Ok(((*first).clone(), true));
                }
                return Err(StoreError::Invalid(format!(
                    "{name:?} matches more than one image"
                )));
            }
        }
        Err(StoreError::NoSuchImage(name.to_string()))
    }

    /// Removes a reference (by ID: every reference to it). Its layers stay until `gc`.
    pub fn remove(&self, name: &str) -> Result<Vec<String>> {
        let (rec, by_id) = self.lookup(name)?;
        // A container's rootfs keeps its image's layers alive; say so instead of
        // leaving the image half gone.
        let users = self.containers_using(&rec.layers)?;
        self.update_images(|images| {
            let doomed: Vec<String> = images
                .images
                .values()
                .filter(|r| {
                    if by_id {
                        r.id == rec.id
                    } else {
                        r.reference == rec.reference
                    }
                })
                .map(|r| r.reference.clone())
                .collect();
            let last_ref =
                images.images.values().filter(|r| r.id == rec.id).count() == doomed.len();
            if last_ref && !users.is_empty() {
                return Err(StoreError::InUse {
                    image: rec.reference.clone(),
                    containers: users.join(", "),
                });
            }
            for d in &doomed {
                images.images.remove(d);
            }
            Ok(doomed)
        })
    }

    fn containers_using(&self, layers: &[Digest]) -> Result<Vec<String>> {
        let Some(top) = layers.last() else {
            return Ok(Vec::new());
        };
        let mut users = Vec::new();
        for (id, layer) in self.container_layers()? {
            if &layer == top {
                users.push(id);
            }
        }
        Ok(users)
    }

    fn container_layers(&self) -> Result<Vec<(String, Digest)>> {
        let dir = self.root.join("containers");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
            let f = e.path().join(CONTAINER_LAYER_FILE);
            if let Ok(text) = std::fs::read_to_string(&f) {
                if let Ok(d) = Digest::parse(text.trim()) {
                    out.push((e.file_name().to_string_lossy().into_owned(), d));
                }
            }
        }
        Ok(out)
    }

    /// Removes one layer (its directory, then its record).
    pub fn remove_layer(&self, chain: &Digest) -> Result<()> {
        let layers = self.root.join("layers");
        self.backend.remove(&layers, OsStr::new(chain.hex()))?;
        let rec = layers.join(format!("{}.json", chain.hex()));
        match std::fs::remove_file(&rec) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(rec)(e)),
            _ => Ok(()),
        }
    }

    /// Removes layers and blobs no image or container refers to.
    pub fn gc(&self) -> Result<GcReport> {
        let (keep_layers, keep_blobs) = self.in_use()?;
        let mut report = GcReport::default();
        self.sweep_layers(&keep_layers, &mut report)?;
        self.sweep_blobs(&keep_blobs, &mut report)?;
        Ok(report)
    }

    /// The layers (every one under an image's or a container's top) and the blobs (an
    /// image's config and manifest) that gc keeps.
    fn in_use(&self) -> Result<(BTreeSet<Digest>, BTreeSet<Digest>)> {
        let images = self.load_images()?;
        let mut keep_layers: BTreeSet<Digest> = BTreeSet::new();
        let mut keep_blobs: BTreeSet<Digest> = BTreeSet::new();
        let mut tops: Vec<Digest> = Vec::new();
        for rec in images.images.values() {
            keep_blobs.insert(rec.id.clone());
            keep_blobs.insert(rec.manifest.clone());
            tops.extend(rec.layers.last().cloned());
        }
        tops.extend(self.container_layers()?.into_iter().map(|(_, l)| l));
        for top in tops {
            for l in self.chain(&top).unwrap_or_default() {
                keep_layers.insert(l.chain_id);
            }
        }
        Ok((keep_layers, keep_blobs))
    }

    /// Removes every layer not in `keep`, then the records left without a layer.
    fn sweep_layers(&self, keep: &BTreeSet<Digest>, report: &mut GcReport) -> Result<()> {
        let layers = self.root.join("layers");
        for e in std::fs::read_dir(&layers)
            .map_err(io_err(&layers))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let hex = name.trim_end_matches(".json");
            let Ok(d) = Digest::parse(&format!("sha256:{hex}")) else {
                continue;
            };
            if keep.contains(&d) || name.ends_with(".json") {
                continue;
            }
            report.bytes_freed += self.layer(&d).map_or(0, |l| l.size);
            self.remove_layer(&d)?;
            report.layers_removed += 1;
        }
        // Records whose layer directory is gone (an interrupted removal).
        for e in std::fs::read_dir(&layers)
            .map_err(io_err(&layers))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(hex) = name.strip_suffix(".json") {
                if !layers.join(hex).exists() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    /// Removes every blob not in `keep`.
    fn sweep_blobs(&self, keep: &BTreeSet<Digest>, report: &mut GcReport) -> Result<()> {
        let blobs = self.root.join("blobs/sha256");
        for e in std::fs::read_dir(&blobs).map_err(io_err(&blobs))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let kept = Digest::parse(&format!("sha256:{name}")).is_ok_and(|d| keep.contains(&d));
            if !kept {
                report.bytes_freed += e.metadata().map_or(0, |m| m.len());
                let _ = std::fs::remove_file(e.path());
                report.blobs_removed += 1;
            }
        }
        Ok(())
    }

    pub fn usage(&self) -> Result<Usage> {
        let images = self.load_images()?;
        let layers_dir = self.root.join("layers");
        let mut layers = 0;
        let mut layer_bytes = 0;
        for e in std::fs::read_dir(&layers_dir)
            .map_err(io_err(&layers_dir))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(hex) = name.strip_suffix(".json") {
                if let Some(l) = Digest::parse(&format!("sha256:{hex}"))
                    .ok()
                    .and_then(|d| self.layer(&d))
                {
                    layers += 1;
                    layer_bytes += l.size;
                }
            }
        }
        let st = rustix::fs::statvfs(&self.root).map_err(errno_err(&self.root))?;
        Ok(Usage {
            backend: self.backend,
            images: images.images.len(),
            layers,
            layer_bytes,
            containers: self.container_layers()?.len(),
            fs_free: st.f_bavail * st.f_frsize,
            fs_size: st.f_blocks * st.f_frsize,
        })
    }

    // ---- container root filesystems ----

    /// A writable root filesystem for container `id` from image `name`: a snapshot of
    /// the top layer on btrfs, an overlayfs mount elsewhere. Returns its path.
    pub fn create_rootfs(&self, name: &str, id: &str) -> Result<PathBuf> {
        check_container_id(id)?;
        let rec = self.find(name)?;
        let top = rec
            .layers
            .last()
            .ok_or_else(|| StoreError::Invalid(format!("image {} has no layers", rec.reference)))?;
        let dir = self.root.join("containers").join(id);
        if dir.exists() {
            return Err(StoreError::Invalid(format!(
                "container {id} already has a root filesystem"
            )));
        }
        std::fs::create_dir(&dir).map_err(io_err(&dir))?;
        if let Err(e) = self.backend.make_rootfs(self, top, &dir) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        berth_persist::write_file(
            &dir.join(CONTAINER_LAYER_FILE),
            top.to_string().as_bytes(),
            FILE_MODE,
        )?;
        Ok(dir.join(ROOTFS))
    }

    /// Container `id`'s root filesystem, made from image `name` if it has none yet. An
    /// existing one is kept (a container's writes survive its restarts, as in docker),
    /// and with overlayfs mounted again if a reboot undid the mount.
    pub fn ensure_rootfs(&self, name: &str, id: &str) -> Result<PathBuf> {
        check_container_id(id)?;
        let dir = self.root.join("containers").join(id);
        let layer = std::fs::read_to_string(dir.join(CONTAINER_LAYER_FILE))
            .ok()
            .and_then(|t| Digest::parse(t.trim()).ok());
        let Some(top) = layer else {
            if dir.exists() {
                // Half made (an interrupted create): start over.
                self.remove_rootfs(id)?;
            }
            return self.create_rootfs(name, id);
        };
        self.backend.restore_rootfs(self, &top, &dir)?;
        Ok(dir.join(ROOTFS))
    }

    /// Removes container `id`'s root filesystem (unmounting it first with overlayfs).
    pub fn remove_rootfs(&self, id: &str) -> Result<()> {
        check_container_id(id)?;
        let dir = self.root.join("containers").join(id);
        if !dir.exists() {
            return Ok(());
        }
        self.backend.remove_rootfs(&dir)?;
        self.backend
            .remove(&self.root.join("containers"), OsStr::new(id))
    }
}

/// A container ID names one directory under `containers/`: never `..`, a path, or hidden.
fn check_container_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && !id.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!("{id:?} is not a container ID")))
    }
}

impl Layers for Store {
    fn dir(&self, chain: &Digest) -> PathBuf {
        self.layer_dir(chain)
    }

    fn stack(&self, top: &Digest) -> Result<Vec<PathBuf>> {
        Ok(self
            .chain(top)?
            .iter()
            .map(|l| self.layer_dir(&l.chain_id))
            .collect())
    }
}

pub(crate) fn open_dir(path: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno_err(path))
}

/// The store's top directory, made 0700 where missing and set to 0700 where it was
/// looser (a store made by an older Berth was 0755).
fn make_root(root: &Path) -> Result<OwnedFd> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    match std::fs::DirBuilder::new().mode(ROOT_MODE).create(root) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(io_err(root)(e)),
        _ => {}
    }
    let dir = open_dir(root)?;
    // On the descriptor: the umask cannot change it, and it is the directory just opened.
    rustix::fs::fchmod(&dir, Mode::from_raw_mode(ROOT_MODE)).map_err(errno_err(root))?;
    Ok(dir)
}
