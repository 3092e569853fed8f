//! Writing a verified payload's root into the other slot's partition, and reading it
//! back. Where the bytes come from (a registry, an `oci-archive`, a layout) is a
//! [`Source`]; this part trusts none of it.
//!
//! The order is what makes a bad payload cheap: the hash tree is fetched first (1/128 of
//! the data) and checked against the signed root hash before anything is written; then
//! each 4 KiB data block is checked against the tree before it is written. A changed
//! block stops the write at that block. The partition is never the running root (the
//! caller picks the slot that did not boot), and the slot is offered for a trial only
//! after [`read_back`] (the caller's next step), so a power cut at any point leaves the
//! running slot as it was.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;

use sha2::{Digest, Sha256};

use crate::manifest::{Part, RootPart};
use crate::verity::{Tree, VerityError, BLOCK};

/// Blocks read and written at a time: 256 KiB, large enough that the per-call cost
/// vanishes, small enough to keep the apply's memory flat.
const CHUNK_BLOCKS: usize = 64;

/// Where a payload's parts come from, by the digest the signed manifest names.
pub trait Source {
    /// A reader of the blob `digest`, which should be `size` bytes; the caller bounds
    /// the read to `size` and checks the digest.
    fn open(&mut self, digest: &str, size: u64) -> std::io::Result<Box<dyn Read + '_>>;
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("the root needs {need} bytes; the slot's partition has {capacity}")]
    TooLarge { need: u64, capacity: u64 },
    #[error("fetching the {part}: {source}")]
    Fetch {
        part: &'static str,
        source: std::io::Error,
    },
    #[error("the {part} ended after {got} of its {want} bytes")]
    Short {
        part: &'static str,
        got: u64,
        want: u64,
    },
    #[error("the {part} does not match its digest in the signed manifest")]
    Digest { part: &'static str },
    #[error("the root does not match its signed root hash: {0}")]
    Verity(#[from] VerityError),
    #[error("writing the slot's partition at byte {offset}: {source}")]
    Write { offset: u64, source: std::io::Error },
    #[error("reading the slot's partition back at byte {offset}: {source}")]
    ReadBack { offset: u64, source: std::io::Error },
}

/// What went to the partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub data_bytes: u64,
    pub tree_bytes: u64,
}

/// A whole small part (the tree), read up to its size and checked against its digest.
pub fn read_part(
    source: &mut dyn Source,
    part: &Part,
    name: &'static str,
) -> Result<Vec<u8>, ApplyError> {
    let fetch = |source| ApplyError::Fetch { part: name, source };
    let mut out = Vec::new();
    source
        .open(&part.digest, part.bytes)
        .map_err(fetch)?
        .take(part.bytes)
        .read_to_end(&mut out)
        .map_err(fetch)?;
    let got = out.len() as u64;
    if got != part.bytes {
        return Err(ApplyError::Short {
            part: name,
            got,
            want: part.bytes,
        });
    }
    if sha256(&out) != part.digest {
        return Err(ApplyError::Digest { part: name });
    }
    Ok(out)
}

/// Streams the root into `slot` (a partition of `capacity` bytes): the tree checked
/// first, each data block checked before it is written, the tree after the data, then
/// fsync. `progress` hears the data bytes written so far, after each chunk.
pub fn write_root(
    source: &mut dyn Source,
    root: &RootPart,
    slot: &File,
    capacity: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<Written, ApplyError> {
    let need = root.bytes();
    if need > capacity {
        return Err(ApplyError::TooLarge { need, capacity });
    }
    let tree = fetch_tree(source, root)?;
    let offset = stream_data(source, root, &tree, &mut |chunk, offset| {
        slot.write_all_at(chunk, offset)
            .map_err(|source| ApplyError::Write { offset, source })?;
        progress(offset + chunk.len() as u64);
        Ok(())
    })?;
    slot.write_all_at(tree.bytes(), offset)
        .map_err(|source| ApplyError::Write { offset, source })?;
    slot.sync_all()
        .map_err(|source| ApplyError::Write { offset, source })?;
    Ok(Written {
        data_bytes: offset,
        tree_bytes: root.tree.bytes,
    })
}

/// Reads the whole root from `source` and checks it as [`write_root`] would, writing
/// nothing: the tree against the root hash, every data block against the tree, the data
/// against its digest. For a source that is cheap to read twice (a file on the machine),
/// so that a changed payload is refused before the other slot is touched.
/// `progress` hears the data bytes checked so far.
pub fn check_root(
    source: &mut dyn Source,
    root: &RootPart,
    progress: &mut dyn FnMut(u64),
) -> Result<(), ApplyError> {
    let tree = fetch_tree(source, root)?;
    stream_data(source, root, &tree, &mut |chunk, offset| {
        progress(offset + chunk.len() as u64);
        Ok(())
    })?;
    Ok(())
}

/// Every part of the payload read and checked, nothing written: the root as
/// [`check_root`] does, the kernel and initramfs against their digests.
pub fn check_parts(
    source: &mut dyn Source,
    m: &crate::Manifest,
    progress: &mut dyn FnMut(u64),
) -> Result<(), ApplyError> {
    check_root(source, &m.root, progress)?;
    read_part(source, &m.kernel, "kernel")?;
    read_part(source, &m.initramfs, "initramfs")?;
    Ok(())
}

/// Where checked chunks of the root's data go, with their offsets.
type ChunkSink<'a> = dyn FnMut(&[u8], u64) -> Result<(), ApplyError> + 'a;

/// The root's hash tree, fetched whole and checked against the signed root hash.
fn fetch_tree(source: &mut dyn Source, root: &RootPart) -> Result<Tree, ApplyError> {
    let tree = read_part(source, &root.tree, "root's hash tree")?;
    Ok(Tree::verify(
        &root.root_hash_bytes(),
        &root.salt_bytes(),
        root.data_blocks,
        tree,
    )?)
}

/// Streams the root's data from `source` in chunks, each block checked against `tree`,
/// handing each checked chunk to `sink` with its offset; then checks the whole against
/// its digest. Returns the bytes streamed.
fn stream_data(
    source: &mut dyn Source,
    root: &RootPart,
    tree: &Tree,
    sink: &mut ChunkSink<'_>,
) -> Result<u64, ApplyError> {
    let fetch = |source| ApplyError::Fetch {
        part: "root's data",
        source,
    };
    let mut reader = source
        .open(&root.data.digest, root.data.bytes)
        .map_err(fetch)?
        .take(root.data.bytes);
    // No SHA-256 of the whole blob besides: every block is checked against the tree,
    // the tree against the signed root hash, and the count against the signed size, so
    // the data is authenticated whole; its digest only names the blob to fetch. (A
    // second hash of every byte doubled the apply's CPU time.)
    let mut chunk = vec![0u8; CHUNK_BLOCKS * BLOCK];
    let mut offset = 0u64;
    let mut index = 0u64;
    loop {
        let filled = fill(&mut reader, &mut chunk).map_err(fetch)?;
        if filled == 0 {
            break;
        }
        if filled % BLOCK != 0 {
            // Only the manifest's size could end mid-block, and check() refused that.
            return Err(ApplyError::Short {
                part: "root's data",
                got: offset + filled as u64,
                want: root.data.bytes,
            });
        }
        for block in chunk[..filled].chunks(BLOCK) {
            tree.check(index, block)?;
            index += 1;
        }
        sink(&chunk[..filled], offset)?;
        offset += filled as u64;
    }
    if offset != root.data.bytes {
        return Err(ApplyError::Short {
            part: "root's data",
            got: offset,
            want: root.data.bytes,
        });
    }
    if index != root.data_blocks {
        return Err(ApplyError::Short {
            part: "root's data",
            got: offset,
            want: root.data_blocks * BLOCK as u64,
        });
    }
    Ok(offset)
}

/// Reads the slot back from the disk (the page cache dropped first, so the bytes are
/// the device's) and checks the tree against the root hash and every data block against
/// the tree. `progress` hears the data bytes read so far, after each chunk.
pub fn read_back(
    root: &RootPart,
    slot: &File,
    progress: &mut dyn FnMut(u64),
) -> Result<(), ApplyError> {
    // Written and fsync'd: the pages are clean and may be dropped; what is read next
    // comes from the device. Advice only; a failure leaves a read from the cache.
    let _ = rustix::fs::fadvise(slot, 0, None, rustix::fs::Advice::DontNeed);
    let mut tree = vec![0u8; usize::try_from(root.tree.bytes).unwrap_or(0)];
    slot.read_exact_at(&mut tree, root.data.bytes)
        .map_err(|source| ApplyError::ReadBack {
            offset: root.data.bytes,
            source,
        })?;
    let tree = Tree::verify(
        &root.root_hash_bytes(),
        &root.salt_bytes(),
        root.data_blocks,
        tree,
    )?;
    let mut chunk = vec![0u8; CHUNK_BLOCKS * BLOCK];
    let mut offset = 0u64;
    let mut index = 0u64;
    while offset < root.data.bytes {
        let left = usize::try_from(root.data.bytes - offset).unwrap_or(usize::MAX);
        let len = left.min(chunk.len());
        slot.read_exact_at(&mut chunk[..len], offset)
            .map_err(|source| ApplyError::ReadBack { offset, source })?;
        for block in chunk[..len].chunks(BLOCK) {
            tree.check(index, block)?;
            index += 1;
        }
        offset += len as u64;
        progress(offset);
    }
    Ok(())
}

/// Reads until `buf` is full or the reader ends; returns how much it holds.
fn fill(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn hex_digest(h: Sha256) -> String {
    let d = h.finalize();
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in d {
        use std::fmt::Write;
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub fn sha256(data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(data);
    hex_digest(h)
}
