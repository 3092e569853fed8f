//! The container image built into Berth: busybox (Debian's busybox-static) as an OCI
//! image layout (image-spec "Image Layout"), so a container runs with no registry. The
//! daemon imports it on first boot as `berth.local/busybox:latest`.
//!
//! Reproducible like the rest of the image: one uncompressed layer (the root's erofs
//! compresses it; gzip inside would only cost time twice), entries sorted, owned by
//! root, all with the same timestamp; no `created` in the config.

use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// Where the layout lives in the root filesystem.
pub const DIR: &str = "usr/share/berth/images/busybox";
pub const REFERENCE: &str = "berth.local/busybox:latest";
/// The layer's timestamp: 2024-01-01T00:00:00Z.
const MTIME: u64 = 1_704_067_200;

fn sha256(data: &[u8]) -> String {
    let mut hex = String::with_capacity(64);
    for b in Sha256::digest(data) {
        use std::fmt::Write as _;
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// The layer: busybox, a symlink per applet, /etc/passwd and /etc/group, /tmp.
fn layer(busybox: &[u8], applets: &[String]) -> Result<Vec<u8>> {
    use tar::EntryType::{Directory, Regular, Symlink};
    let mut entries: Vec<(String, tar::EntryType, u32, Vec<u8>, &str)> = vec![
        ("bin/".into(), Directory, 0o755, Vec::new(), ""),
        ("bin/busybox".into(), Regular, 0o755, busybox.to_vec(), ""),
        ("etc/".into(), Directory, 0o755, Vec::new(), ""),
        (
            "etc/passwd".into(),
            Regular,
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n".to_vec(),
            "",
        ),
        (
            "etc/group".into(),
            Regular,
            0o644,
            b"root:x:0:\nnogroup:x:65534:\n".to_vec(),
            "",
        ),
        ("root/".into(), Directory, 0o700, Vec::new(), ""),
        ("tmp/".into(), Directory, 0o1777, Vec::new(), ""),
    ];
    for a in applets {
        entries.push((format!("bin/{a}"), Symlink, 0o777, Vec::new(), "busybox"));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, mode, data, link) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_path(&name)?;
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_username("root")?;
        h.set_groupname("root")?;
        h.set_mtime(MTIME);
        h.set_size(data.len() as u64);
        if !link.is_empty() {
            h.set_link_name(link)?;
        }
        h.set_cksum();
        b.append(&h, &data[..])?;
    }
    Ok(b.into_inner()?)
}

/// The layout's files: (path under `DIR`, content).
pub fn layout(busybox: &Path, applets: &[String]) -> Result<Vec<(String, Vec<u8>)>> {
    let bin = std::fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    let tar = layer(&bin, applets)?;
    let layer_hex = sha256(&tar);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Cmd": ["sh"],
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_hex}")]}
    })
    .to_string();
    let config_hex = sha256(config.as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{config_hex}"), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": format!("sha256:{layer_hex}"), "size": tar.len()}]
    })
    .to_string();
    let manifest_hex = sha256(manifest.as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": format!("sha256:{manifest_hex}"), "size": manifest.len(),
                       "annotations": {"io.containerd.image.name": REFERENCE,
                                       "org.opencontainers.image.ref.name": "latest"}}]
    })
    .to_string();
    Ok(vec![
        (
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".into(), index.into_bytes()),
        (format!("blobs/sha256/{config_hex}"), config.into_bytes()),
        (
            format!("blobs/sha256/{manifest_hex}"),
            manifest.into_bytes(),
        ),
        (format!("blobs/sha256/{layer_hex}"), tar),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_reproducible_and_imports() {
        let t = tempfile::tempdir().unwrap();
        let fake = t.path().join("busybox");
        std::fs::write(&fake, b"\x7fELF not really busybox").unwrap();
        let applets = vec!["sh".to_string(), "echo".to_string()];
        let a = layout(&fake, &applets).unwrap();
        assert_eq!(a, layout(&fake, &applets).unwrap());
        let dir = t.path().join("layout");
        for (path, data) in &a {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        }
        // The store reads it as an operator's tools would: digests, tar and all.
        let store = berth_store::store::Store::open(
            &t.path().join("store"),
            berth_store::store::Options {
                min_free_bytes: 0,
                min_free_percent: 0,
                ..Default::default()
            },
        )
        .unwrap();
        let images = berth_store::import::oci_layout(&store, &dir, None, &mut |_| {}).unwrap();
        assert_eq!(images[0].reference, REFERENCE);
        let rootfs = store.create_rootfs(REFERENCE, "c").unwrap();
        assert_eq!(
            std::fs::read_link(rootfs.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert!(std::fs::read_to_string(rootfs.join("etc/passwd"))
            .unwrap()
            .starts_with("root:"));
        use std::os::unix::fs::PermissionsExt;
        let tmp = std::fs::metadata(rootfs.join("tmp")).unwrap();
        assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777);
        store.remove_rootfs("c").unwrap();
    }
}
