//! The refusals, against a manifest and signatures made once with Debian's `minisign`
//! (testdata/: `release.pub` signed `manifest.json.minisig`, `other.pub` signed
//! `manifest.json.other-minisig`; the secret keys were not kept).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use crate::verity::BLOCK;

/// A file of `blocks` pseudo-random blocks with veritysetup's tree after it, as
/// image-build makes the root; returns (data, tree, root hash).
pub(crate) fn veritysetup(blocks: u64, salt: &str) -> (Vec<u8>, Vec<u8>, [u8; 32]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("img");
    let mut data = vec![0u8; usize::try_from(blocks).unwrap() * BLOCK];
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ blocks;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    std::fs::write(&path, &data).unwrap();
    let out = Command::new("veritysetup")
        .arg("format")
        .arg(&path)
        .arg(&path)
        .arg("--no-superblock")
        .arg(format!("--hash-offset={}", data.len()))
        .arg(format!("--data-blocks={blocks}"))
        .arg(format!("--salt={salt}"))
        .output()
        .expect("veritysetup (make deps installs cryptsetup-bin)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let hex = text
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .unwrap()
        .trim();
    let mut root = [0u8; 32];
    for (i, b) in root.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).unwrap();
    }
    let all = std::fs::read(&path).unwrap();
    let tree = all[data.len()..].to_vec();
    (data, tree, root)
}

fn testdata(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(name),
    )
    .unwrap()
}

/// A keys directory holding the named public keys.
fn keys(names: &[&str]) -> (tempfile::TempDir, Keyring) {
    let dir = tempfile::tempdir().unwrap();
    for n in names {
        std::fs::write(dir.path().join(n), testdata(n)).unwrap();
    }
    let ring = Keyring::load(dir.path()).unwrap();
    (dir, ring)
}

fn running(v: &str) -> Version {
    Version::parse(v).unwrap()
}

fn policy(v: &Version) -> Policy<'_> {
    Policy {
        running: v,
        allow_downgrade: false,
    }
}

#[test]
fn a_signed_newer_payload_is_accepted_and_names_its_key() {
    let (_d, ring) = keys(&["other.pub", "release.pub"]);
    let v = running("0.1.0");
    let sig = testdata("manifest.json.minisig");
    let ok = verify(&ring, &testdata("manifest.json"), Some(&sig), policy(&v)).unwrap();
    assert_eq!(ok.key, "release.pub");
    assert_eq!(ok.manifest.version, running("0.2.0"));
    assert_eq!(ok.manifest.root.data_blocks, 8274);
    let hash = ok.manifest.root.root_hash_bytes();
    assert_eq!((hash[0], hash[31]), (0xde, 0x50));
    assert_eq!(ok.manifest.root.salt_bytes().len(), 32);
    // The second trusted key's signature is as good.
    let sig = testdata("manifest.json.other-minisig");
    let ok = verify(&ring, &testdata("manifest.json"), Some(&sig), policy(&v)).unwrap();
    assert_eq!(ok.key, "other.pub");
}

#[test]
fn unsigned_unknown_key_and_tampered_payloads_are_refused() {
    let (_d, ring) = keys(&["release.pub"]);
    let v = running("0.1.0");
    let manifest = testdata("manifest.json");
    let e = verify(&ring, &manifest, None, policy(&v)).unwrap_err();
    assert!(matches!(e, Refusal::Unsigned), "{e}");

    let other = testdata("manifest.json.other-minisig");
    let e = verify(&ring, &manifest, Some(&other), policy(&v)).unwrap_err();
    match &e {
        Refusal::UnknownKey { key_id, trusted } => {
            let pub_line = String::from_utf8(testdata("other.pub")).unwrap();
            assert!(pub_line.contains(key_id.as_str()), "{key_id} vs {pub_line}");
            assert_eq!(trusted, "release.pub");
        }
        e => panic!("{e}"),
    }

    // One byte of the manifest changed: the digest it names for the root, say.
    let sig = testdata("manifest.json.minisig");
    let mut changed = manifest.clone();
    let at = changed.iter().position(|&b| b == b'1').unwrap();
    changed[at] = b'2';
    let e = verify(&ring, &changed, Some(&sig), policy(&v)).unwrap_err();
    assert!(matches!(e, Refusal::BadSignature { .. }), "{e}");

    let e = verify(&ring, &manifest, Some(b"not a signature"), policy(&v)).unwrap_err();
    assert!(matches!(e, Refusal::UnreadableSignature(_)), "{e}");

    let (_d, empty) = keys(&[]);
    let e = verify(&empty, &manifest, Some(&sig), policy(&v)).unwrap_err();
    assert!(matches!(e, Refusal::NoKeys { .. }), "{e}");
}

#[test]
fn downgrades_same_versions_and_too_old_machines_are_refused() {
    let (_d, ring) = keys(&["release.pub"]);
    let manifest = testdata("manifest.json");
    let sig = testdata("manifest.json.minisig");
    let check = |v: &str, allow_downgrade| {
        let v = running(v);
        verify(
            &ring,
            &manifest,
            Some(&sig),
            Policy {
                running: &v,
                allow_downgrade,
            },
        )
    };
    let e = check("0.3.0", false).unwrap_err();
    assert!(matches!(e, Refusal::Downgrade { .. }), "{e}");
    assert!(e.to_string().contains("--allow-downgrade"), "{e}");
    assert!(check("0.3.0", true).is_ok());
    let e = check("0.2.0", true).unwrap_err();
    assert!(matches!(e, Refusal::SameVersion { .. }), "{e}");
    // min_version is 0.1.0: a machine on a pre-release of it is too old.
    let e = check("0.1.0-rc.1", false).unwrap_err();
    assert!(matches!(e, Refusal::TooOld { .. }), "{e}");
}

#[test]
fn manifests_out_of_bounds_are_refused_by_field() {
    let good = Manifest::parse(&testdata("manifest.json")).unwrap();
    assert_eq!(Manifest::parse(&good.to_bytes()).unwrap(), good);
    let refused = |change: &dyn Fn(&mut Manifest), field: &str| {
        let mut m = good.clone();
        change(&mut m);
        match Manifest::parse(&m.to_bytes()) {
            Err(manifest::ManifestError::Field { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    };
    refused(
        &|m| m.root.data.digest = "md5:00".into(),
        "root.data.digest",
    );
    refused(
        &|m| m.root.tree.digest = "sha256:00".into(),
        "root.tree.digest",
    );
    refused(
        &|m| m.kernel.digest = format!("sha256:{}", "A".repeat(64)),
        "kernel.digest",
    );
    refused(&|m| m.root.root_hash = "ab".into(), "root.root_hash");
    refused(&|m| m.root.data.bytes = 0, "root.data.bytes");
    refused(&|m| m.root.tree.bytes += 4096, "root.tree.bytes");
    refused(&|m| m.initramfs.bytes = u64::MAX, "initramfs.bytes");
    refused(&|m| m.root.data_blocks += 1, "root.data_blocks");
    refused(&|m| m.cmdline.push_str(" berth.root=ROOT-A"), "cmdline");
    refused(
        &|m| m.cmdline.push_str(" berth.verity.roothash=00"),
        "cmdline",
    );
    refused(&|m| m.cmdline.push('\n'), "cmdline");
    refused(&|m| m.build_id = "xyz".into(), "build_id");
    refused(&|m| m.root.salt = String::new(), "root.salt");

    let mut schema2 = good.clone();
    schema2.schema = 2;
    assert!(matches!(
        Manifest::parse(&schema2.to_bytes()),
        Err(manifest::ManifestError::Schema(2))
    ));
    let unknown = String::from_utf8(good.to_bytes())
        .unwrap()
        .replacen('{', "{\"extra\": 1,", 1);
    assert!(matches!(
        Manifest::parse(unknown.as_bytes()),
        Err(manifest::ManifestError::Json(_))
    ));
    assert!(matches!(
        Manifest::parse(&vec![b' '; manifest::MAX_BYTES + 1]),
        Err(manifest::ManifestError::TooLarge)
    ));
}

#[test]
fn keys_that_are_not_keys_are_errors_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("broken.pub"),
        "untrusted comment: x\nnot base64\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("README"), "not a key, not read").unwrap();
    assert!(matches!(
        Keyring::load(dir.path()),
        Err(keys::KeyError::Malformed { .. })
    ));
    let dir = tempfile::tempdir().unwrap();
    let target: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/release.pub");
    std::os::unix::fs::symlink(target, dir.path().join("link.pub")).unwrap();
    assert!(
        Keyring::load(dir.path()).is_err(),
        "a symlinked key was followed"
    );
    // A FIFO is refused, not waited on.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.pub");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    assert!(matches!(
        Keyring::load(dir.path()),
        Err(keys::KeyError::NotAKeyFile { .. })
    ));
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("dir.pub")).unwrap();
    assert!(matches!(
        Keyring::load(dir.path()),
        Err(keys::KeyError::NotAKeyFile { .. })
    ));
}

/// Blobs by digest, in memory.
struct Blobs(std::collections::HashMap<String, Vec<u8>>);

impl apply::Source for Blobs {
    fn open(&mut self, digest: &str, _size: u64) -> std::io::Result<Box<dyn std::io::Read + '_>> {
        match self.0.get(digest) {
            Some(b) => Ok(Box::new(&b[..])),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                digest.to_string(),
            )),
        }
    }
}

/// A root of `blocks` data blocks: its manifest part and its blobs.
fn root_payload(blocks: u64) -> (RootPart, Blobs, Vec<u8>) {
    let salt = "5a17";
    let (data, tree, root_hash) = veritysetup(blocks, salt);
    let part = RootPart {
        data: Part {
            bytes: data.len() as u64,
            digest: apply::sha256(&data),
        },
        tree: Part {
            bytes: tree.len() as u64,
            digest: apply::sha256(&tree),
        },
        root_hash: root_hash.iter().map(|b| format!("{b:02x}")).collect(),
        salt: salt.into(),
        data_blocks: blocks,
    };
    let image = [data.clone(), tree.clone()].concat();
    let blobs = Blobs(
        [
            (part.data.digest.clone(), data),
            (part.tree.digest.clone(), tree),
        ]
        .into_iter()
        .collect(),
    );
    (part, blobs, image)
}

/// A stand-in for the slot's partition: `bytes` of zeros.
fn partition(bytes: u64) -> (tempfile::NamedTempFile, std::fs::File) {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(bytes).unwrap();
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .open(f.path())
        .unwrap();
    (f, file)
}

fn untouched(f: &tempfile::NamedTempFile) -> bool {
    std::fs::read(f.path()).unwrap().iter().all(|&b| b == 0)
}

#[test]
fn a_root_is_written_block_by_block_checked_and_read_back() {
    let (root, mut blobs, image) = root_payload(300);
    let (f, slot) = partition(image.len() as u64 + 8 * BLOCK as u64);
    let mut heard = Vec::new();
    let written =
        apply::write_root(&mut blobs, &root, &slot, 1 << 30, &mut |n| heard.push(n)).unwrap();
    assert_eq!(written.data_bytes + written.tree_bytes, image.len() as u64);
    assert_eq!(heard.last(), Some(&written.data_bytes), "{heard:?}");
    assert!(heard.windows(2).all(|w| w[0] < w[1]), "{heard:?}");
    let mut read = 0;
    apply::read_back(&root, &slot, &mut |n| read = n).unwrap();
    assert_eq!(read, written.data_bytes);
    assert!(std::fs::read(f.path()).unwrap()[..image.len()] == image[..]);
    // A byte changed on the "disk" afterwards: the read-back finds the block.
    let at = 200 * BLOCK as u64 + 9;
    let mut b = [0u8];
    slot.read_exact_at(&mut b, at).unwrap();
    slot.write_all_at(&[b[0] ^ 1], at).unwrap();
    let e = apply::read_back(&root, &slot, &mut |_| {}).unwrap_err();
    assert!(
        matches!(
            e,
            apply::ApplyError::Verity(verity::VerityError::DataBlock { index: 200 })
        ),
        "{e}"
    );
}

#[test]
fn a_bad_tree_or_a_root_too_large_writes_nothing() {
    let (root, blobs, image) = root_payload(200);
    let (f, slot) = partition(image.len() as u64);
    // The tree blob changed (and its digest with it, as a registry serving a forged
    // blob under the right name cannot do, but a forged manifest entry could).
    let mut forged = Blobs(blobs.0.clone());
    let mut tree = forged.0.remove(&root.tree.digest).unwrap();
    tree[5] ^= 1;
    let mut forged_root = root.clone();
    forged_root.tree.digest = apply::sha256(&tree);
    forged.0.insert(forged_root.tree.digest.clone(), tree);
    let e = apply::write_root(&mut forged, &forged_root, &slot, 1 << 30, &mut |_| {}).unwrap_err();
    assert!(
        matches!(e, apply::ApplyError::Verity(verity::VerityError::RootHash)),
        "{e}"
    );
    assert!(untouched(&f), "written before the tree was checked");
    // The tree under the manifest's digest, but not its bytes.
    let mut swapped = Blobs(blobs.0.clone());
    swapped.0.get_mut(&root.tree.digest).unwrap()[0] ^= 1;
    let e = apply::write_root(&mut swapped, &root, &slot, 1 << 30, &mut |_| {}).unwrap_err();
    assert!(matches!(e, apply::ApplyError::Digest { .. }), "{e}");
    assert!(untouched(&f));
    let mut blobs = blobs;
    let e = apply::write_root(
        &mut blobs,
        &root,
        &slot,
        image.len() as u64 - 1,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(e, apply::ApplyError::TooLarge { .. }), "{e}");
    assert!(untouched(&f));
}

#[test]
fn a_changed_data_block_stops_the_write_at_its_chunk() {
    let (root, mut blobs, image) = root_payload(200);
    let (f, slot) = partition(image.len() as u64);
    blobs.0.get_mut(&root.data.digest).unwrap()[150 * BLOCK + 1] ^= 1;
    let e = apply::write_root(&mut blobs, &root, &slot, 1 << 30, &mut |_| {}).unwrap_err();
    assert!(
        matches!(
            e,
            apply::ApplyError::Verity(verity::VerityError::DataBlock { index: 150 })
        ),
        "{e}"
    );
    // Chunks of 64 blocks: the first two went to the partition, nothing from block 128
    // on (the changed block's chunk is checked whole before it is written).
    let on_disk = std::fs::read(f.path()).unwrap();
    assert!(on_disk[128 * BLOCK..].iter().all(|&b| b == 0));
    // A data blob cut short.
    let (root, mut blobs, image) = root_payload(130);
    blobs
        .0
        .get_mut(&root.data.digest)
        .unwrap()
        .truncate(100 * BLOCK);
    let (_f, slot) = partition(image.len() as u64);
    let e = apply::write_root(&mut blobs, &root, &slot, 1 << 30, &mut |_| {}).unwrap_err();
    assert!(matches!(e, apply::ApplyError::Short { .. }), "{e}");
}

#[test]
fn check_root_reads_every_block_and_finds_the_changed_one() {
    let (root, blobs, _) = root_payload(300);
    let mut good = Blobs(blobs.0.clone());
    let mut heard = 0;
    apply::check_root(&mut good, &root, &mut |n| heard = n).unwrap();
    assert_eq!(heard, root.data.bytes);
    let mut changed = blobs;
    changed.0.get_mut(&root.data.digest).unwrap()[250 * BLOCK + 3] ^= 1;
    let e = apply::check_root(&mut changed, &root, &mut |_| {}).unwrap_err();
    assert!(
        matches!(
            e,
            apply::ApplyError::Verity(verity::VerityError::DataBlock { index: 250 })
        ),
        "{e}"
    );
}
