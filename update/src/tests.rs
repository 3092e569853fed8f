//! The refusals, against a manifest and signatures made once with Debian's `minisign`
//! (testdata/: `release.pub` signed `manifest.json.minisig`, `other.pub` signed
//! `manifest.json.other-minisig`; the secret keys were not kept).

use std::path::{Path, PathBuf};

use super::*;

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
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("dir.pub")).unwrap();
    assert!(matches!(
        Keyring::load(dir.path()),
        Err(keys::KeyError::NotAKeyFile { .. })
    ));
}
