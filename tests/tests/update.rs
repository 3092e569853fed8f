//! The update payload `make image` writes beside the disk (out/test/update and
//! berth-update.tar), checked as a machine will check it: an OCI artifact skopeo reads in
//! both forms, its manifest signed by the key the image's root trusts, and every part the
//! bytes its digest names, the root the very image slot A holds. No VM: what the image
//! carries is checked on a booted machine in disk.rs.

use std::path::{Path, PathBuf};
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
        berth_update::media::MANIFEST_TYPE
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
    assert_eq!(
        initrd,
        std::fs::read(out.join("initrd-stage1.img")).unwrap()
    );
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

/// The built payload, changed the ways a forger or a broken mirror would: copied into
/// a directory of its own, its manifest edited, signed again (with the development key
/// the image trusts, or another), its signature dropped, or a data block changed.
struct Forged {
    dir: tempfile::TempDir,
}

enum Sign {
    /// The key the image was built to trust (cache/keys/dev.key).
    Trusted,
    /// A fresh key nobody trusts.
    Stranger,
    /// Keep the original signature (over the original bytes).
    Original,
    /// No signature layer at all.
    None,
}

fn minisign(args: &[&std::ffi::OsStr]) {
    let out = Command::new("minisign")
        .args(args)
        .output()
        .expect("minisign (make deps)");
    assert!(
        out.status.success(),
        "minisign {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Forged {
    fn new(version: &str, sign: Sign) -> Forged {
        Forged::with_cmdline(version, sign, "")
    }

    /// As [`Forged::new`], with `append` added to the manifest's command line.
    fn with_cmdline(version: &str, sign: Sign, append: &str) -> Forged {
        let src = image_dir().join("update");
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("update");
        let status = Command::new("cp")
            .arg("-r")
            .arg(&src)
            .arg(&layout)
            .status()
            .unwrap();
        assert!(status.success());
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let mut oci: serde_json::Value =
            serde_json::from_slice(&blob(&layout, &index["manifests"][0])).unwrap();
        let mut manifest: serde_json::Value =
            serde_json::from_slice(&blob(&layout, &oci["config"])).unwrap();
        manifest["version"] = version.into();
        if !append.is_empty() {
            let cmdline = format!("{} {append}", manifest["cmdline"].as_str().unwrap_or(""));
            manifest["cmdline"] = cmdline.into();
        }
        let config = serde_json::to_vec_pretty(&manifest).unwrap();
        let config_path = dir.path().join("manifest.json");
        std::fs::write(&config_path, &config).unwrap();
        oci["config"] = put(&layout, berth_update::media::MANIFEST_TYPE, &config);
        let signature = match sign {
            Sign::Original => Some(blob(&layout, &oci["layers"][4])),
            Sign::None => None,
            Sign::Trusted | Sign::Stranger => {
                let key = match sign {
                    Sign::Trusted => {
                        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../cache/keys/dev.key")
                    }
                    _ => {
                        let key = dir.path().join("stranger.key");
                        let public = dir.path().join("stranger.pub");
                        minisign(&[
                            "-G".as_ref(),
                            "-W".as_ref(),
                            "-p".as_ref(),
                            public.as_os_str(),
                            "-s".as_ref(),
                            key.as_os_str(),
                        ]);
                        key
                    }
                };
                let sig = dir.path().join("manifest.minisig");
                minisign(&[
                    "-S".as_ref(),
                    "-s".as_ref(),
                    key.as_os_str(),
                    "-m".as_ref(),
                    config_path.as_os_str(),
                    "-x".as_ref(),
                    sig.as_os_str(),
                ]);
                Some(std::fs::read(&sig).unwrap())
            }
        };
        let layers = oci["layers"].as_array_mut().unwrap();
        layers.truncate(4);
        if let Some(sig) = signature {
            layers.push(put(&layout, berth_update::media::SIGNATURE_TYPE, &sig));
        }
        let oci_bytes = serde_json::to_vec(&oci).unwrap();
        let mut index = index;
        index["manifests"][0]["digest"] = sha256(&oci_bytes).into();
        index["manifests"][0]["size"] = oci_bytes.len().into();
        put(&layout, "", &oci_bytes);
        std::fs::write(
            layout.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
        Forged { dir }
    }

    fn layout(&self) -> PathBuf {
        self.dir.path().join("update")
    }

    /// Flips a byte of data block `index` in the root's data blob (its name unchanged).
    fn change_data_block(&self, index: usize) {
        let layout = self.layout();
        let index_json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let oci: serde_json::Value =
            serde_json::from_slice(&blob(&layout, &index_json["manifests"][0])).unwrap();
        let digest = oci["layers"][0]["digest"].as_str().unwrap();
        crate::disk::flip_byte(
            &layout.join("blobs/sha256").join(&digest["sha256:".len()..]),
            (index * berth_update::verity::BLOCK + 17) as u64,
        );
    }
}

/// Writes a blob into the layout; its descriptor.
fn put(layout: &Path, media_type: &str, data: &[u8]) -> serde_json::Value {
    let digest = sha256(data);
    std::fs::write(
        layout.join("blobs/sha256").join(&digest["sha256:".len()..]),
        data,
    )
    .unwrap();
    serde_json::json!({"mediaType": media_type, "digest": digest, "size": data.len()})
}

/// `berth-updater ARGS --from FROM --keys (the image's) --running RUNNING`.
fn updater(args: &[&str], from: &Path, running: &str) -> std::process::Output {
    let keys = image_dir()
        .join(".build/root")
        .join(berth_update::KEYS_DIR.trim_start_matches('/'));
    // Built by `make test`'s `cargo build --workspace --bins`, beside image-build.
    Command::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/berth-updater"))
        .args(args)
        .arg("--from")
        .arg(from)
        .arg("--keys")
        .arg(keys)
        .args(["--running", running])
        .output()
        .unwrap()
}

fn said(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn berth_updater_accepts_a_newer_signed_version_and_refuses_each_forgery() {
    let newer = Forged::new("0.2.0", Sign::Trusted);
    let out = updater(&["check"], &newer.layout(), "0.1.0");
    assert!(out.status.success(), "{}", said(&out));
    assert!(said(&out).contains("berth 0.2.0"), "{}", said(&out));
    // The built payload itself is this version: not newer than a machine running it.
    let out = updater(
        &["check"],
        &image_dir().join("berth-update.tar"),
        env!("CARGO_PKG_VERSION"),
    );
    assert!(
        said(&out).contains("which the running berth"),
        "{}",
        said(&out)
    );

    for (forged, running, why) in [
        (Forged::new("0.2.0", Sign::None), "0.1.0", "is not signed"),
        (
            Forged::new("0.2.0", Sign::Stranger),
            "0.1.0",
            "does not trust",
        ),
        (
            Forged::new("0.2.0", Sign::Original),
            "0.1.0",
            "does not match its manifest",
        ),
        (
            Forged::new("0.2.0", Sign::Trusted),
            "0.3.0",
            "--allow-downgrade",
        ),
    ] {
        let out = updater(&["check"], &forged.layout(), running);
        assert!(
            !out.status.success() && said(&out).contains(why),
            "{why}: {}",
            said(&out)
        );
    }
}

#[test]
fn berth_updater_writes_the_root_block_by_block_and_stops_at_a_changed_one() {
    let newer = Forged::new("0.2.0", Sign::Trusted);
    let root_bytes = crate::common::manifest()["disk"]["root"]["bytes"]
        .as_u64()
        .unwrap();
    let part = newer.dir.path().join("partition");
    let f = std::fs::File::create(&part).unwrap();
    f.set_len(root_bytes + (1 << 20)).unwrap();
    let out = updater(
        &["write-root", "--partition", part.to_str().unwrap()],
        &newer.layout(),
        "0.1.0",
    );
    assert!(out.status.success(), "{}", said(&out));
    // What slot A holds, byte for byte.
    let written = std::fs::read(&part).unwrap();
    let at = crate::common::partition_offset("ROOT-A");
    let mut slot_a = vec![0; usize::try_from(root_bytes).unwrap()];
    let mut disk = std::fs::File::open(image_dir().join("berth.raw")).unwrap();
    std::io::Seek::seek(&mut disk, std::io::SeekFrom::Start(at)).unwrap();
    std::io::Read::read_exact(&mut disk, &mut slot_a).unwrap();
    assert!(
        written[..slot_a.len()] == slot_a[..],
        "the written root is not slot A's"
    );

    // One byte of data block 1000 changed: refused at that block, nothing from its chunk
    // (64 blocks: 960-1023) on written.
    let changed = Forged::new("0.2.0", Sign::Trusted);
    changed.change_data_block(1000);
    let part = changed.dir.path().join("partition");
    std::fs::File::create(&part)
        .unwrap()
        .set_len(root_bytes)
        .unwrap();
    let out = updater(
        &["write-root", "--partition", part.to_str().unwrap()],
        &changed.layout(),
        "0.1.0",
    );
    assert!(
        !out.status.success() && said(&out).contains("data block 1000"),
        "{}",
        said(&out)
    );
    let written = std::fs::read(&part).unwrap();
    assert!(written[960 * berth_update::verity::BLOCK..]
        .iter()
        .all(|&b| b == 0));
}

/// The steps a power cut interrupts (`berth-updater`'s halts, `BERTH_UPDATER_HALT_AT`):
/// the other slot claimed and nothing written yet; halfway through its root (unsynced
/// pages lost with the power); the root read back and the kernel on the ESP, the
/// initramfs not; everything written but the slot state not switched; the state
/// switched. Before the last, A boots exactly as before.
const CUTS: [&str; 4] = ["root", "root-half", "initramfs", "offer"];

/// A shell line that sets `$d` to the device of the partition named `label`.
fn partition_device(label: &str) -> String {
    format!(
        "for u in /sys/class/block/*/uevent; do grep -qx PARTNAME={label} $u && d=/dev/$(sed -n 's/^DEVNAME=//p' $u); done"
    )
}

/// On a running machine (SeaBIOS, the test image's disk), payloads handed over on a
/// read-only disk (ISO 9660): each refusal leaves ROOT-B as it was; an apply cut at
/// each step of [`CUTS`] leaves A booting as before; one cut after the slot state was
/// switched boots B's trial, which is blessed.
#[test]
fn power_cuts_during_an_apply_leave_a_booting_then_the_payload_is_tried_and_blessed() {
    use crate::slots::{off, slots, SlotDisk, HEALTHY};
    use berth_tests::vm::Vm;
    let newer = Forged::new("0.2.0", Sign::Trusted);
    let stranger = Forged::new("0.2.0", Sign::Stranger);
    let unsigned = Forged::new("0.2.0", Sign::None);
    let older = Forged::new("0.0.9", Sign::Trusted);
    let changed = Forged::new("0.2.0", Sign::Trusted);
    changed.change_data_block(700);
    let iso = newer.dir.path().join("payload.iso");
    let mut genisoimage = Command::new("genisoimage");
    genisoimage
        .args([
            "-quiet",
            "-rock",
            "-volid",
            "BERTH-UPDATE",
            "-graft-points",
            "-output",
        ])
        .arg(&iso);
    // The good one as an oci-archive (a tar of the layout), as `--file` takes it.
    let archive = newer.dir.path().join("newer.tar");
    let tarred = Command::new("tar")
        .arg("-C")
        .arg(newer.layout())
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()
        .unwrap();
    assert!(tarred.success());
    genisoimage.arg(format!("newer.tar={}", archive.display()));
    for (name, forged) in [
        ("unsigned", &unsigned),
        ("stranger", &stranger),
        ("older", &older),
        ("changed", &changed),
    ] {
        genisoimage.arg(format!("{name}={}", forged.layout().display()));
    }
    let made = genisoimage.output().unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );

    let newest = Forged::new("0.3.0", Sign::Trusted);
    let registry = Registry::start();
    registry.push(&newest.layout(), "berth/os:0.3.0");

    let disk = SlotDisk::new("apply", berth_tests::vm::Firmware::Bios);
    let user_data = format!(
        "{HEALTHY}  registries:\n    registry:\n      \"{REGISTRY_IN_GUEST}\":\n        insecure: true\n"
    );
    let boot = |name: &str| -> Vm {
        let mut cfg = disk.config(name, &user_data);
        cfg.testd = true;
        cfg.extra_args
            .extend(berth_tests::volumes::drive_args(&iso, "payload"));
        cfg.extra_args.extend(registry.netdev());
        let vm = crate::common::boot(cfg);
        // Whichever virtio disk holds the ISO (PCI order decides the names).
        let out = vm
            .testd()
            .unwrap()
            .sh("mkdir -p /run/payload && for d in /dev/vd?; do mount -t iso9660 -o ro $d /run/payload 2>/dev/null && break; done && ls /run/payload/newer.tar")
            .unwrap();
        assert!(out.success(), "mounting the payload disk: {out:?}");
        vm
    };
    let mut vm = boot("apply");
    let before = slots(&vm);
    assert!(before[0].2, "{before:?}");
    let root_b_head = format!(
        "{}; head -c 4194304 $d | sha256sum",
        partition_device("ROOT-B")
    );
    let head = vm.testd().unwrap().sh(&root_b_head).unwrap();
    assert!(head.success() && head.stdout.len() > 64, "{head:?}");

    // Refusals: nothing written, nothing claimed.
    for (name, why) in [
        ("unsigned", "is not signed"),
        ("stranger", "does not trust"),
        ("older", "--allow-downgrade"),
        // One flipped byte in the root, its blob's name unchanged: found by the check of
        // every block before anything is claimed.
        ("changed", "data block 700 does not match"),
    ] {
        let out = vm
            .testd()
            .unwrap()
            .sh(&format!(
                "berth-updater apply --from /run/payload/{name}; cat {}",
                berth_control::UPDATE_STATUS
            ))
            .unwrap();
        assert!(out.stderr.contains(why), "{name}: {out:?}");
        let status: berth_control::UpdateStatus =
            serde_json::from_str(out.stdout.trim()).expect("the status file");
        assert!(
            status.state == "failed" && status.error.contains(why),
            "{status:?}"
        );
        assert_eq!(slots(&vm), before, "{name}");
        let again = vm.testd().unwrap().sh(&root_b_head).unwrap();
        assert_eq!(again.stdout, head.stdout, "{name}: ROOT-B changed");
    }
    // The oci-archive through berthctl (init's updater service), as an operator checks
    // a file on the machine.
    let out = vm
        .berthctl(&["update", "check", "--file", "/run/payload/newer.tar"])
        .expect("berthctl update check --file");
    assert!(out.contains("berth 0.2.0 is available"), "{out}");
    for (at, cut) in CUTS.iter().chain(["applied"].iter()).enumerate() {
        let started = std::time::Instant::now();
        let out = vm
            .testd()
            .unwrap()
            .sh(&format!(
                "rm -f {status}; {HALT_ENV}={cut} setsid berth-updater apply --from /run/payload/newer.tar </dev/null >/run/apply.log 2>&1 &",
                status = berth_control::UPDATE_STATUS,
            ))
            .unwrap();
        assert!(out.success(), "{out:?}");
        wait_halted(&vm, cut);
        say(&format!(
            "cut at {cut} after {:.1} s",
            started.elapsed().as_secs_f64()
        ));
        vm.kill();
        drop(vm); // the VM lock
        vm = boot(&format!("after-{at}-{cut}"));
        let now = slots(&vm);
        if *cut == "applied" {
            break;
        }
        assert_eq!(now[0], before[0], "after a cut at {cut}: {now:?}");
        assert!(
            now[1].0 != "trial" && !now[1].2,
            "after a cut at {cut}: {now:?}"
        );
        let console = vm.console();
        assert!(
            console.contains("berth.slot=a") && !console.contains("berth.trial"),
            "after a cut at {cut}, not A's usual boot"
        );
    }
    let console = vm.console();
    assert!(
        console.contains("berth.slot=b berth.trial"),
        "not B's trial"
    );
    vm.wait_for_line("berth: slot b blessed", crate::common::BOOT_TIMEOUT)
        .expect("the new version blessed");
    let s = slots(&vm);
    assert_eq!(s[1], ("active".into(), "0.2.0".into(), true), "{s:?}");

    // From the registry, through `berthctl update` (init's updater service): a check,
    // then an apply into A, its status, and A's trial.
    let reference = format!("{REGISTRY_IN_GUEST}/berth/os:0.3.0");
    let out = vm
        .berthctl(&["update", "check", &reference])
        .expect("berthctl update check");
    assert!(out.contains("berth 0.3.0 is available"), "{out}");
    let started = std::time::Instant::now();
    let out = vm
        .berthctl(&["update", "apply", &reference])
        .expect("berthctl update apply");
    say(&format!(
        "applied from the registry in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    assert!(
        out.contains("applying root") && out.contains("written into slot a"),
        "{out}"
    );
    let status = vm
        .berthctl(&["update", "status"])
        .expect("berthctl update status");
    assert!(
        status.contains("running:   berth 0.2.0 (slot b, blessed)")
            && status.contains("berth 0.3.0 in slot a is tried at the next reboot"),
        "{status}"
    );
    // Another apply now would take the slot on offer: refused, and said why.
    let again = vm
        .berthctl_output(&["update", "apply", &reference])
        .expect("berthctl");
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && said.contains("claiming"),
        "{said}"
    );
    vm.berthctl(&["reboot"]).expect("berthctl reboot");
    vm.wait_for_line("berth: slot a blessed", crate::common::BOOT_TIMEOUT * 2)
        .expect("0.3.0 blessed in A");
    let s = slots(&vm);
    assert_eq!(s[0], ("active".into(), "0.3.0".into(), true), "{s:?}");
    off(vm);
}

/// Where the guest reaches the test registry (QEMU's guestfwd, inside its user network).
const REGISTRY_IN_GUEST: &str = "10.0.2.100:5000";

/// Debian's docker-registry on 127.0.0.1, for the guest through guestfwd.
struct Registry {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = berth_tests::http::free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker-registry (make deps)");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the registry did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Registry {
            child,
            port,
            _dir: dir,
        }
    }

    /// `skopeo copy oci:LAYOUT docker://REGISTRY/NAME`, as an operator publishes.
    fn push(&self, layout: &Path, name: &str) {
        let out = Command::new("skopeo")
            .args(["--insecure-policy", "copy", "--dest-tls-verify=false", "-q"])
            .arg(format!("oci:{}", layout.display()))
            .arg(format!("docker://127.0.0.1:{}/{name}", self.port))
            .output()
            .expect("skopeo (make deps)");
        assert!(
            out.status.success(),
            "skopeo: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The guest's network: QEMU's user network, nothing out but the registry.
    fn netdev(&self) -> [String; 4] {
        [
            "-netdev".into(),
            format!(
                "user,id=n0,restrict=on,guestfwd=tcp:{REGISTRY_IN_GUEST}-cmd:socat - TCP:127.0.0.1:{}",
                self.port
            ),
            "-device".into(),
            "virtio-net-pci,netdev=n0".into(),
        ]
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) const HALT_ENV: &str = "BERTH_UPDATER_HALT_AT";

/// Polls the update status until berth-updater halted at `step`.
fn wait_halted(vm: &berth_tests::vm::Vm, step: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        let out = vm
            .testd()
            .unwrap()
            .sh(&format!(
                "cat {} 2>/dev/null; echo; cat /run/apply.log",
                berth_control::UPDATE_STATUS
            ))
            .unwrap();
        last = out.stdout.clone();
        if let Some(first) = last.lines().next() {
            if let Ok(s) = serde_json::from_str::<berth_control::UpdateStatus>(first) {
                assert_ne!(s.state, "failed", "{last}");
                if s.state == "halted" {
                    assert_eq!(s.step, step, "{last}");
                    return;
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    panic!("berth-updater never halted at {step}: {last}");
}

fn say(what: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "berth-tests: update: {what}");
}

/// Where the guest reaches the test's FleetLock server.
const FLEETLOCK_IN_GUEST: &str = "10.0.2.101:8080";

/// A FleetLock server (the protocol Zincati speaks: `POST /v1/pre-reboot` and
/// `/v1/steady-state`, `{"client_params": {"id", "group"}}`) with one reboot slot, in
/// the test process on 127.0.0.1. Every request is kept, as (path, id, granted).
struct FleetLockServer {
    port: u16,
    state: std::sync::Arc<std::sync::Mutex<LockState>>,
}

#[derive(Default)]
struct LockState {
    holder: Option<String>,
    seen: Vec<(String, String, bool)>,
}

impl FleetLockServer {
    fn start(holder: Option<&str>) -> FleetLockServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = std::sync::Arc::new(std::sync::Mutex::new(LockState {
            holder: holder.map(String::from),
            seen: Vec::new(),
        }));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = answer(stream, &shared);
            }
        });
        FleetLockServer { port, state }
    }

    fn netdev_fwd(&self) -> String {
        format!(
            "guestfwd=tcp:{FLEETLOCK_IN_GUEST}-cmd:socat - TCP:127.0.0.1:{}",
            self.port
        )
    }

    /// What another machine's steady-state report does: the slot is free.
    fn release(&self) {
        self.state.lock().unwrap().holder = None;
    }

    fn seen(&self) -> Vec<(String, String, bool)> {
        self.state.lock().unwrap().seen.clone()
    }

    fn holder(&self) -> Option<String> {
        self.state.lock().unwrap().holder.clone()
    }
}

/// One request: the lock with one slot, as airlock keeps it for a group.
fn answer(stream: std::net::TcpStream, state: &std::sync::Mutex<LockState>) -> std::io::Result<()> {
    use std::io::{BufRead, Read, Write};
    let mut reader = std::io::BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let (mut length, mut protocol) = (0usize, false);
    loop {
        let mut header = String::new();
        reader.read_line(&mut header)?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').unwrap_or((header, ""));
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().unwrap_or(0),
            "fleet-lock-protocol" => protocol = value.trim() == "true",
            _ => {}
        }
    }
    let mut body = vec![0u8; length.min(4096)];
    reader.read_exact(&mut body)?;
    let id = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["client_params"]["id"].as_str().map(String::from))
        .unwrap_or_default();
    let granted = {
        let mut s = state.lock().unwrap();
        let free = s.holder.as_deref().is_none_or(|h| h == id);
        let granted = protocol
            && !id.is_empty()
            && match path.as_str() {
                "/v1/pre-reboot" if free => {
                    s.holder = Some(id.clone());
                    true
                }
                "/v1/steady-state" => {
                    if s.holder.as_deref() == Some(id.as_str()) {
                        s.holder = None;
                    }
                    true
                }
                _ => false,
            };
        s.seen.push((path, id, granted));
        granted
    };
    let (status, text) = if granted {
        ("200 OK", "{}")
    } else {
        (
            "409 Conflict",
            "{\"kind\":\"failed_lock\",\"value\":\"the reboot slot is taken\"}",
        )
    };
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )?;
    out.flush()
}

/// Automatic updates with nobody at the keyboard: user-data names the registry's
/// repository, `reboot: immediately` and a FleetLock server whose one slot another
/// machine holds. The machine finds 0.2.0, applies it, and waits for the slot; once the
/// other machine gives it back, it takes it, reboots into 0.2.0, blesses it, and gives
/// the slot back. Then a 0.3.0 that panics: tried, rolled back, never tried again.
#[test]
fn automatic_update_waits_for_the_fleet_lock_then_reboots_into_the_new_version() {
    use crate::slots::{off, slots, SlotDisk, HEALTHY};
    let newer = Forged::new("0.2.0", Sign::Trusted);
    let registry = Registry::start();
    registry.push(&newer.layout(), "berth/os:stable");
    let lock = FleetLockServer::start(Some("another-machine"));

    let disk = SlotDisk::new("auto", berth_tests::vm::Firmware::Bios);
    let user_data = format!(
        "{HEALTHY}    source: {REGISTRY_IN_GUEST}/berth/os\n    check_interval: 10s\n    reboot: immediately\n    fleetlock_url: http://{FLEETLOCK_IN_GUEST}\n  registries:\n    registry:\n      \"{REGISTRY_IN_GUEST}\":\n        insecure: true\nhostname: node-1\n"
    );
    let mut cfg = disk.config("auto", &user_data);
    let [netdev_flag, netdev, device_flag, device] = registry.netdev();
    cfg.extra_args.extend([
        netdev_flag,
        format!("{netdev},{}", lock.netdev_fwd()),
        device_flag,
        device,
    ]);
    let vm = crate::common::boot(cfg);
    let started = std::time::Instant::now();
    // Applied, and asking for the slot it cannot have yet.
    let deadline = started + std::time::Duration::from_secs(300);
    while !lock
        .seen()
        .iter()
        .any(|(p, id, granted)| p == "/v1/pre-reboot" && id == "node-1" && !granted)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no pre-reboot request: {:?}",
            lock.seen()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    say(&format!(
        "automatic update applied and waiting for the lock {:.1} s after ready",
        started.elapsed().as_secs_f64()
    ));
    let s = slots(&vm);
    assert!(s[0].2, "rebooted without the lock: {s:?}");
    assert_eq!(s[1].0, "trial", "{s:?}");
    assert_eq!(s[1].1, "0.2.0", "{s:?}");
    // The other machine is done: the slot is ours, and the reboot follows.
    lock.release();
    vm.wait_for_line("berth: slot b blessed", crate::common::BOOT_TIMEOUT * 2)
        .expect("0.2.0 tried and blessed, with no operator step");
    // The console says which version came up.
    assert!(
        vm.console().contains("berth: ready (berth 0.2.0 (slot b),"),
        "no ready line naming 0.2.0"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while lock.holder().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the slot was never given back: {:?}",
            lock.seen()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let seen = lock.seen();
    let granted_at = seen
        .iter()
        .position(|(p, id, g)| p == "/v1/pre-reboot" && id == "node-1" && *g)
        .expect("the slot taken");
    assert!(
        seen[granted_at..]
            .iter()
            .any(|(p, id, g)| p == "/v1/steady-state" && id == "node-1" && *g),
        "{seen:?}"
    );
    let s = slots(&vm);
    assert_eq!(s[1], ("active".into(), "0.2.0".into(), true), "{s:?}");
    let status = vm
        .berthctl(&["update", "status"])
        .expect("berthctl update status");
    assert!(
        status.contains("running:   berth 0.2.0 (slot b, blessed)"),
        "{status}"
    );

    // 0.3.0, whose kernel panics: tried (the slot is free now), rolled back to 0.2.0 when
    // its tries are spent, and then not tried again though the registry still offers it.
    let broken = Forged::with_cmdline("0.3.0", Sign::Trusted, "rdinit=/nonexistent");
    registry.push(&broken.layout(), "berth/os:stable");
    let readies = vm.console().matches("berth: ready").count();
    let seen = vm
        .wait_for_line("berth: rolled back from", crate::common::BOOT_TIMEOUT * 4)
        .expect("0.3.0 tried and rolled back");
    assert!(seen.line.contains("berth 0.3.0 "), "{}", seen.line);
    vm.wait_for_line_count("berth: ready", readies + 1, crate::common::BOOT_TIMEOUT)
        .expect("0.2.0 ready again");
    // The whole log (its checks every 10 s add lines), and time for a slow machine.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
    loop {
        let log = vm
            .berthctl(&["service", "logs", "berth-autoupdate", "-n", "1000"])
            .unwrap_or_else(|e| format!("berthctl: {e}"));
        if log.contains("berth 0.3.0 lost its trial here") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{log}");
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    let s = slots(&vm);
    assert_eq!(s[1], ("active".into(), "0.2.0".into(), true), "{s:?}");
    assert_eq!(
        (s[0].0.as_str(), s[0].1.as_str()),
        ("bad", "0.3.0"),
        "{s:?}"
    );
    let status = vm
        .berthctl(&["update", "status"])
        .expect("berthctl update status");
    assert!(
        status.contains("rollback:  berth 0.3.0 in slot a lost its trial"),
        "{status}"
    );
    assert!(lock.holder().is_none(), "{:?}", lock.seen());
    off(vm);
}
