//! `pull`: an image from a registry into the store. Layers download in parallel (up to
//! `parallel_layers` at once, in image order), each into a spool file in the store's
//! tmp directory; the unpacker follows the spool of the layer it is on as it grows, so
//! the first layer unpacks while it arrives and every later one starts the moment its
//! parent is done, from whatever has already arrived. A dropped connection resumes
//! with an HTTP range after a backoff. The store checks each blob's digest and diff ID
//! as it unpacks; nothing of a failed pull stays.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::digest::Digest;
use crate::image::{self, BlobSource, Descriptor, Manifest};
use crate::reference::Reference;
use crate::registry::{Client, RegistryError};
use crate::store::{ImageRecord, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a pull reports as it goes.
#[derive(Debug, Clone)]
pub enum Progress {
    Resolved {
        reference: String,
        layers: usize,
        bytes: u64,
    },
    Downloaded {
        layer: usize,
        digest: Digest,
        bytes: u64,
        total: u64,
    },
    Retrying {
        layer: usize,
        digest: Digest,
        at: u64,
        error: String,
    },
    Stored {
        layer: usize,
        digest: Digest,
    },
    Message(String),
}

/// A download in progress: bytes written so far and how it ended.
struct Spool {
    path: PathBuf,
    state: Mutex<SpoolState>,
    grew: Condvar,
}

#[derive(Default)]
struct SpoolState {
    written: u64,
    done: Option<Result<(), String>>,
}

impl Spool {
    fn update(&self, f: impl FnOnce(&mut SpoolState)) {
        if let Ok(mut s) = self.state.lock() {
            f(&mut s);
        }
        self.grew.notify_all();
    }
}

/// Reads a spool as it grows; end of file only once the download has finished.
struct SpoolReader<'a> {
    spool: &'a Spool,
    file: File,
    pos: u64,
}

impl Read for SpoolReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut state = self
            .spool
            .state
            .lock()
            .map_err(|_| std::io::Error::other("spool lock poisoned"))?;
        loop {
            if self.pos < state.written {
                let avail = usize::try_from(state.written - self.pos).unwrap_or(usize::MAX);
                drop(state);
                let n = buf.len().min(avail);
                let got = self.file.read_at(&mut buf[..n], self.pos)?;
                self.pos += got as u64;
                return Ok(got);
            }
            match &state.done {
                Some(Ok(())) => return Ok(0),
                Some(Err(e)) => return Err(std::io::Error::other(e.clone())),
                None => {
                    state = self
                        .spool
                        .grew
                        .wait(state)
                        .map_err(|_| std::io::Error::other("spool lock poisoned"))?;
                }
            }
        }
    }
}

struct RegistrySource<'a> {
    config: (Digest, Vec<u8>),
    layers: Vec<(Digest, Option<&'a Spool>)>,
}

impl BlobSource for RegistrySource<'_> {
    fn open(&self, d: &Descriptor) -> Result<Box<dyn Read + '_>, StoreError> {
        if d.digest == self.config.0 {
            return Ok(Box::new(std::io::Cursor::new(self.config.1.clone())));
        }
        let spool = self
            .layers
            .iter()
            .find(|(digest, _)| *digest == d.digest)
            .and_then(|(_, s)| *s)
            .ok_or_else(|| StoreError::Invalid(format!("layer {} was not downloaded", d.digest)))?;
        let file = File::open(&spool.path).map_err(|e| StoreError::Io {
            path: spool.path.clone(),
            source: e,
        })?;
        Ok(Box::new(SpoolReader {
            spool,
            file,
            pos: 0,
        }))
    }
}

/// Fetches the manifest for linux/amd64 (through an index if the reference names one)
/// from the first host that answers.
pub fn resolve(client: &Client, r: &Reference) -> Result<(String, Vec<u8>, Manifest), PullError> {
    let mut last = None;
    for host in client.hosts(r) {
        match client.manifest(&host, &r.repository, &r.manifest_ref()) {
            Ok(fetched) => {
                let mut manifest = Manifest::parse(&fetched.bytes)?;
                let mut bytes = fetched.bytes;
                if manifest.is_index() {
                    let pick = manifest.pick_platform()?.digest.clone();
                    let inner = client.manifest(&host, &r.repository, &pick.to_string())?;
                    manifest = Manifest::parse(&inner.bytes)?;
                    bytes = inner.bytes;
                }
                return Ok((host, bytes, manifest));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .map(PullError::from)
        .unwrap_or_else(|| PullError::Store(StoreError::Invalid("no registry host to try".into()))))
}

/// Pulls `reference` into `store`.
pub fn pull(
    store: &Store,
    client: &Client,
    reference: &Reference,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<ImageRecord, PullError> {
    store.check_space(&format!("image {reference}"))?;
    let (host, manifest_bytes, manifest) = resolve(client, reference)?;
    let config_desc = manifest
        .config
        .clone()
        .ok_or_else(|| StoreError::Invalid("the manifest has no config".into()))?;
    let (mut reader, _) = client.blob_from(&host, &reference.repository, &config_desc.digest, 0)?;
    let mut config = Vec::new();
    reader
        .by_ref()
        .take(16 << 20)
        .read_to_end(&mut config)
        .map_err(|e| StoreError::Invalid(format!("reading the config: {e}")))?;
    let config = image::checked(&config_desc.digest, config, "image config")?;
    let parsed = image::Config::parse(&config)?;
    progress(Progress::Resolved {
        reference: reference.to_string(),
        layers: manifest.layers.len(),
        bytes: manifest.layers.iter().map(|l| l.size).sum(),
    });
    // Which layers are missing (a chain already stored needs no download).
    let mut parent: Option<Digest> = None;
    let mut missing = Vec::new();
    for (i, (desc, diff_id)) in manifest
        .layers
        .iter()
        .zip(&parsed.rootfs.diff_ids)
        .enumerate()
    {
        let chain = Store::chain_id(parent.as_ref(), diff_id);
        if store.layer(&chain).is_none() {
            missing.push(i);
        } else {
            progress(Progress::Stored {
                layer: i,
                digest: desc.digest.clone(),
            });
        }
        parent = Some(chain);
    }
    let spools: Vec<Spool> = manifest
        .layers
        .iter()
        .enumerate()
        .map(|(i, d)| Spool {
            path: store.root().join("tmp").join(format!(
                "blob-{i}-{}.{}",
                d.digest.hex(),
                std::process::id()
            )),
            state: Mutex::new(SpoolState::default()),
            grew: Condvar::new(),
        })
        .collect();
    for &i in &missing {
        File::create(&spools[i].path).map_err(|e| StoreError::Io {
            path: spools[i].path.clone(),
            source: e,
        })?;
    }
    let cancel = AtomicBool::new(false);
    let next = AtomicUsize::new(0);
    let workers = client.config().parallel_layers.min(missing.len()).max(1);
    let result = std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::SeqCst);
                let Some(&i) = missing.get(k) else { break };
                if cancel.load(Ordering::SeqCst) {
                    spools[i].update(|s| s.done = Some(Err("cancelled".into())));
                    continue;
                }
                let outcome = download(
                    client,
                    &host,
                    reference,
                    i,
                    &manifest.layers[i],
                    &spools[i],
                    &cancel,
                    progress,
                );
                spools[i].update(|s| s.done = Some(outcome));
            });
        }
        let source = RegistrySource {
            config: (config_desc.digest.clone(), config.clone()),
            layers: manifest
                .layers
                .iter()
                .zip(&spools)
                .enumerate()
                .map(|(i, (d, s))| (d.digest.clone(), missing.contains(&i).then_some(s)))
                .collect(),
        };
        let mut say = |msg: &str| progress(Progress::Message(msg.to_string()));
        let stored = image::store_image(
            store,
            &source,
            &reference.to_string(),
            &manifest_bytes,
            &mut say,
        );
        // On failure the downloads still running stop at their next chunk.
        cancel.store(true, Ordering::SeqCst);
        stored
    });
    for s in &spools {
        let _ = std::fs::remove_file(&s.path);
    }
    Ok(result?)
}

/// Downloads one layer into its spool, resuming where it stopped after a dropped
/// connection (up to `retries` times, backing off 0.5 s doubling to 8 s).
#[allow(clippy::too_many_arguments)]
fn download(
    client: &Client,
    host: &str,
    reference: &Reference,
    layer: usize,
    desc: &Descriptor,
    spool: &Spool,
    cancel: &AtomicBool,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(), String> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&spool.path)
        .map_err(|e| format!("{}: {e}", spool.path.display()))?;
    let mut have: u64 = 0;
    let mut failures = 0;
    let mut buf = vec![0u8; 256 * 1024];
    let mut last_report = std::time::Instant::now();
    loop {
        let attempt = (|| -> Result<bool, String> {
            let (mut body, ranged) = client
                .blob_from(host, &reference.repository, &desc.digest, have)
                .map_err(|e| e.to_string())?;
            if !ranged && have > 0 {
                // The server ignored the range: skip what the spool already has.
                std::io::copy(&mut body.by_ref().take(have), &mut std::io::sink())
                    .map_err(|e| e.to_string())?;
            }
            loop {
                if cancel.load(Ordering::SeqCst) {
                    return Err("cancelled".into());
                }
                let n = body.read(&mut buf).map_err(|e| e.to_string())?;
                if n == 0 {
                    // Complete when the descriptor's size is reached (or unknown).
                    return Ok(desc.size == 0 || have >= desc.size);
                }
                if desc.size > 0 && have + n as u64 > desc.size {
                    return Err(format!(
                        "the registry sent more than the {} bytes the manifest says",
                        desc.size
                    ));
                }
                file.seek(SeekFrom::Start(have))
                    .map_err(|e| e.to_string())?;
                file.write_all(&buf[..n]).map_err(|e| e.to_string())?;
                have += n as u64;
                spool.update(|s| s.written = have);
                if last_report.elapsed() >= Duration::from_millis(200) {
                    last_report = std::time::Instant::now();
                    progress(Progress::Downloaded {
                        layer,
                        digest: desc.digest.clone(),
                        bytes: have,
                        total: desc.size,
                    });
                }
            }
        })();
        let error = match attempt {
            Ok(true) => {
                progress(Progress::Downloaded {
                    layer,
                    digest: desc.digest.clone(),
                    bytes: have,
                    total: desc.size,
                });
                return Ok(());
            }
            Ok(false) => format!("the connection closed at byte {have} of {}", desc.size),
            Err(e) if e == "cancelled" => return Err(e),
            Err(e) => e,
        };
        failures += 1;
        if failures > client.config().retries {
            return Err(format!(
                "layer {}: {error} (gave up after {} retries)",
                desc.digest,
                failures - 1
            ));
        }
        progress(Progress::Retrying {
            layer,
            digest: desc.digest.clone(),
            at: have,
            error,
        });
        let backoff = Duration::from_millis(500u64 << (failures - 1).min(4));
        std::thread::sleep(backoff);
    }
}
