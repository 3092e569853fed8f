//! The update payload `make image` writes beside the disk (out/test/update and
//! berth-update.tar), checked as a machine will check it: an OCI artifact skopeo reads in
//! both forms, its manifest signed by the key the image's root trusts, and every part the
//! bytes its digest names, the root the very image slot A holds. No VM: what the image
//! carries is checked on a booted machine in disk.rs.

use std::path::Path;
use std::process::Command;

use crate::common::image_dir;
use berth_update::{Keyring, Manifest};

fn skopeo_raw(reference: &str) -> serde_json::Value {
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", reference])
        .output()
        .expect("running skopeo (make deps installs it)");
    assert!(
        out.status.success(),
        "skopeo inspect {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn blob(layout: &Path, descriptor: &serde_json::Value) -> Vec<u8> {
    let digest = descriptor["digest"].as_str().unwrap();
    let data = std::fs::read(layout.join("blobs/sha256").join(&digest["sha256:".len()..])).unwrap();
    assert_eq!(
        descriptor["size"].as_u64(),
        Some(data.len() as u64),
        "{digest}"
    );
    data
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(data);
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

#[test]
fn the_payload_is_a_signed_oci_artifact_whose_parts_are_what_the_manifest_names() {
    let out = image_dir();
    let layout = out.join("update");
    let oci = skopeo_raw(&format!("oci:{}", layout.display()));
    assert_eq!(oci["artifactType"], "application/vnd.berth.os.v1");
    assert_eq!(
        oci["config"]["mediaType"],
        berth_update::manifest::MEDIA_TYPE
    );
    // The oci-archive is the same artifact.
    let archived = skopeo_raw(&format!(
        "oci-archive:{}",
        out.join("berth-update.tar").display()
    ));
    assert_eq!(archived, oci);

    let manifest_bytes = blob(&layout, &oci["config"]);
    let layers = oci["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 5, "{oci}");
    let signature = blob(&layout, &layers[4]);
    // The key the root carries (the staged root tree the erofs image was made from).
    let keys = out
        .join(".build/root")
        .join(berth_update::KEYS_DIR.trim_start_matches('/'));
    let ring = Keyring::load(&keys).unwrap();
    assert_eq!(ring.names().len(), 1, "{:?}", ring.names());
    // The signature and the manifest's bounds; the version rules are the crate's tests.
    let key = ring.verify(&manifest_bytes, &signature).unwrap();
    assert_eq!(key, ring.names()[0]);
    let m = Manifest::parse(&manifest_bytes).unwrap();
    assert_eq!(m.version.to_string(), env!("CARGO_PKG_VERSION"));

    // Each part is what the signed manifest says, and the root is slot A's image.
    let data = blob(&layout, &layers[0]);
    let tree = blob(&layout, &layers[1]);
    let kernel = blob(&layout, &layers[2]);
    let initrd = blob(&layout, &layers[3]);
    for (part, bytes, want) in [
        ("root data", &data, &m.root.data),
        ("root tree", &tree, &m.root.tree),
        ("kernel", &kernel, &m.kernel),
        ("initramfs", &initrd, &m.initramfs),
    ] {
        assert_eq!(bytes.len() as u64, want.bytes, "{part}");
        assert_eq!(sha256(bytes), want.digest, "{part}");
    }
    // The tree checks out against the signed root hash, and every data block against it.
    let checked = berth_update::verity::Tree::verify(
        &m.root.root_hash_bytes(),
        &m.root.salt_bytes(),
        m.root.data_blocks,
        tree.clone(),
    )
    .unwrap();
    for (i, block) in data.chunks(berth_update::verity::BLOCK).enumerate() {
        checked.check(i as u64, block).unwrap();
    }
    let root = [data, tree].concat();
    assert_eq!(kernel, std::fs::read(out.join("vmlinuz")).unwrap());
    assert_eq!(initrd, std::fs::read(out.join("initrd.img")).unwrap());
    let image: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        image["disk"]["root"]["root_hash"],
        m.root.root_hash.as_str()
    );
    assert_eq!(image["disk"]["build_id"], m.build_id.as_str());
    assert_eq!(
        image["update"]["key_id"]
            .as_str()
            .map(|id| format!("{id}.pub")),
        Some(ring.names()[0].to_string())
    );
    let at = crate::common::partition_offset("ROOT-A");
    let mut disk = std::fs::File::open(out.join("berth.raw")).unwrap();
    let mut slot_a = vec![0; root.len()];
    std::io::Seek::seek(&mut disk, std::io::SeekFrom::Start(at)).unwrap();
    std::io::Read::read_exact(&mut disk, &mut slot_a).unwrap();
    assert!(slot_a == root, "the payload's root is not slot A's image");
}
