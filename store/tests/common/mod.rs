//! Crafted layers and images for the store's tests.
#![allow(dead_code)]

use std::path::Path;

use berth_store::Digest;

pub enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, u32, &'a [u8]),
    Owned(&'a str, u32, u64, u64, &'a [u8]),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Char(&'a str),
    Fifo(&'a str),
    /// PAX records for the entry that follows (`SCHILY.xattr.NAME`, `GNU.sparse.*`).
    Pax(&'a [(&'a str, &'a [u8])]),
    /// A GNU sparse file (type `S`) of `real_size` bytes whose only data, `data`
    /// (a multiple of 512 bytes), sits at `offset`; the rest is holes.
    Sparse {
        name: &'a str,
        real_size: u64,
        offset: u64,
        data: &'a [u8],
    },
}

/// A tar with raw names: `name` and `linkname` bytes go into the header as given.
pub fn layer(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        if let E::Pax(records) = e {
            b.append_pax_extensions(records.iter().copied()).unwrap();
            continue;
        }
        if let E::Sparse {
            name,
            real_size,
            offset,
            data,
        } = e
        {
            b.append(&sparse_header(name, *real_size, *offset, data.len()), *data)
                .unwrap();
            continue;
        }
        let mut h = tar::Header::new_gnu();
        let (name, kind, mode, link, data, uid, gid): (
            &str,
            tar::EntryType,
            u32,
            &str,
            &[u8],
            u64,
            u64,
        ) = match e {
            E::Dir(n, m) => (n, tar::EntryType::Directory, *m, "", b"", 0, 0),
            E::File(n, m, d) => (n, tar::EntryType::Regular, *m, "", d, 0, 0),
            E::Owned(n, m, u, g, d) => (n, tar::EntryType::Regular, *m, "", d, *u, *g),
            E::Symlink(n, t) => (n, tar::EntryType::Symlink, 0o777, t, b"", 0, 0),
            E::Hardlink(n, t) => (n, tar::EntryType::Link, 0o644, t, b"", 0, 0),
            E::Char(n) => (n, tar::EntryType::Char, 0o666, "", b"", 0, 0),
            E::Fifo(n) => (n, tar::EntryType::Fifo, 0o644, "", b"", 0, 0),
            E::Pax(_) | E::Sparse { .. } => unreachable!("handled above"),
        };
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// A GNU sparse header: one data block of `len` bytes at `offset` in a file of
/// `real_size` bytes (GNU tar's format: the map in the header's `sparse` slots).
fn sparse_header(name: &str, real_size: u64, offset: u64, len: usize) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(len as u64);
    let gnu = h.as_gnu_mut().unwrap();
    gnu.set_real_size(real_size);
    gnu.sparse[0].set_offset(offset);
    gnu.sparse[0].set_length(len as u64);
    // The map ends with an empty block at the end of the file, as GNU tar writes it:
    // the trailing hole.
    gnu.sparse[1].set_offset(real_size);
    gnu.sparse[1].set_length(0);
    h.set_cksum();
    h
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// A layer for `oci_layout`: the tar, gzipped, with its media type.
pub fn gzipped(tar: &[u8]) -> (Vec<u8>, Vec<u8>, &'static str) {
    (
        tar.to_vec(),
        gzip(tar),
        "application/vnd.oci.image.layer.v1.tar+gzip",
    )
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

/// Writes a blob into an OCI layout; returns its digest.
pub fn blob(layout: &Path, data: &[u8]) -> Digest {
    let d = Digest::of(data);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(d.hex()), data).unwrap();
    d
}

/// An OCI layout at `layout` with one image: `layers` are (tar, compressed blob,
/// media type); the index names it with `annotations`.
pub fn oci_layout(
    layout: &Path,
    layers: &[(Vec<u8>, Vec<u8>, &str)],
    annotations: serde_json::Value,
) -> (Digest, Digest) {
    std::fs::create_dir_all(layout).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|(tar, _, _)| Digest::of(tar).to_string())
        .collect();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    })
    .to_string();
    let config_d = blob(layout, config.as_bytes());
    let layer_descs: Vec<serde_json::Value> = layers
        .iter()
        .map(|(_, b, mt)| serde_json::json!({"mediaType": mt, "digest": blob(layout, b).to_string(), "size": b.len()}))
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d.to_string(), "size": config.len()},
        "layers": layer_descs
    })
    .to_string();
    let manifest_d = blob(layout, manifest.as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_d.to_string(), "size": manifest.len(),
                       "annotations": annotations}]
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    (config_d, manifest_d)
}
