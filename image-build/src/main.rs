//! `image-build`: makes Berth's boot artifacts from Debian packages and the workspace's
//! binaries, without root, loop devices or mounts.
//!
//! `image-build image` writes into the output directory `vmlinuz`, `initrd.img` (the
//! whole tree, the root of `-kernel` boots), `initrd-stage1.img` (what the disk boots:
//! only what finds and verifies the root), `berth.raw` (the GPT disk: ESP with BIOS and UEFI boot, verified erofs
//! root in slot A, empty slot B), `berth.qcow2`, `berth-gce.tar.gz` and `manifest.json`;
//! `image-build floor` writes the kernel-only floor initramfs `make bench` compares with.

mod archive;
mod builtin_image;
mod debs;
mod disk;
mod elf;
mod esp;
mod grub;
mod initramfs;
mod kernel;
mod rootfs;
mod slot;
mod update;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use initramfs::{Inputs, Variant};

/// The initramfs on the ESP and in the update payload: stage 1 only.
pub const DISK_INITRD: &str = "initrd-stage1.img";

/// zstd level for the initramfs: 19 is slow to build (seconds) and fast to unpack.
const ZSTD_LEVEL: i32 = 19;

#[derive(Parser, Debug)]
#[command(name = "image-build", version, about = "Builds Berth's boot artifacts")]
struct Cli {
    /// Download and unpack cache (Debian packages).
    #[arg(long, global = true, default_value = "cache")]
    cache: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Kernel, initramfs and disk images (+ manifest.json) for a variant.
    Image {
        #[arg(long, value_enum, default_value = "prod")]
        variant: Variant,
        /// Directory holding the built `init` (and `berth-testd` for the test variant).
        #[arg(long, default_value = "target/release")]
        bin_dir: PathBuf,
        #[arg(long, default_value = "out")]
        out: PathBuf,
        /// minisign secret key that signs the update payload (default: a development
        /// key under CACHE/keys, made once).
        #[arg(long)]
        signing_key: Option<PathBuf>,
        /// The OS version (SemVer) slot A's slot.json and the update payload record:
        /// what machines compare when they update (default: the build's).
        #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
        version: String,
    },
    /// Writes a built image into a slot of a disk image (the machine off) and offers
    /// it for a trial boot: a second version for testing slots and rollback.
    WriteSlot {
        /// The raw disk image to change.
        #[arg(long)]
        disk: PathBuf,
        /// A build's output directory (what `image` wrote).
        #[arg(long, default_value = "out")]
        from: PathBuf,
        /// The slot to write: a or b (never the default slot).
        #[arg(long, default_value = "b", value_parser = parse_slot)]
        slot: berth_bootslot::Slot,
        /// The version its slot.json records (default: the build's).
        #[arg(long)]
        version: Option<String>,
        /// Appended to the slot's kernel command line.
        #[arg(long, default_value = "")]
        append: String,
        /// Boot attempts the trial gets.
        #[arg(long, default_value_t = berth_bootslot::state::DEFAULT_TRIES)]
        tries: u8,
    },
    /// The kernel-only floor for the boot benchmark.
    Floor {
        #[arg(long, default_value = "out/floor")]
        out: PathBuf,
    },
}

fn parse_slot(text: &str) -> Result<berth_bootslot::Slot, String> {
    match text {
        "a" => Ok(berth_bootslot::Slot::A),
        "b" => Ok(berth_bootslot::Slot::B),
        _ => Err(format!("{text:?}: a slot is a or b")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("image-build: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    // Absolute, so paths recorded in manifest.json work from anywhere.
    let cache = std::path::absolute(&cli.cache)
        .with_context(|| format!("resolving {}", cli.cache.display()))?;
    match cli.command {
        Command::Image {
            variant,
            bin_dir,
            out,
            signing_key,
            version,
        } => {
            // Checked as machines will read it, before anything is built.
            berth_update::Version::parse(&version)
                .map_err(|e| anyhow::anyhow!("--version: {e}"))?;
            let signer = update::Signer::new(&cache, signing_key.as_deref())?;
            build_image(&cache, variant, bin_dir, &out, &signer, &version)
        }
        Command::Floor { out } => build_floor(&cache, &out),
        Command::WriteSlot {
            disk,
            from,
            slot,
            version,
            append,
            tries,
        } => slot::write(&slot::Request {
            disk: &disk,
            from: &from,
            slot,
            version: version.as_deref(),
            append: &append,
            tries,
        }),
    }
}

fn build_image(
    cache: &Path,
    variant: Variant,
    bin_dir: PathBuf,
    out: &Path,
    signer: &update::Signer,
    version: &str,
) -> Result<()> {
    let kernel = kernel::prepare(cache)?;
    // busybox-static: the built-in container image in every variant, and the test
    // variant's shell.
    let busybox_bin = busybox(cache)?;
    let busybox = match variant {
        Variant::Test => Some(busybox_bin.clone()),
        Variant::Prod => None,
    };
    // The test image carries Debian's crun and runc, the runtimes berth-runtime is
    // measured against (make bench) in a cgroup-v2 guest.
    let other_runtimes = match variant {
        Variant::Test => vec![
            (
                "usr/bin/crun".to_string(),
                deb_file(cache, "crun", "usr/bin/crun")?,
            ),
            (
                "usr/sbin/runc".to_string(),
                deb_file(cache, "runc", "usr/sbin/runc")?,
            ),
        ],
        Variant::Prod => Vec::new(),
    };
    let mkfs_btrfs = deb_file(cache, "btrfs-progs", "sbin/mkfs.btrfs")?;
    let inputs = Inputs {
        variant,
        bin_dir,
        busybox,
        mkfs_btrfs,
        other_runtimes,
    };
    let (archive, contents) = initramfs::build(&kernel, &inputs)?;
    let initrd = archive.to_zstd(ZSTD_LEVEL)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let vmlinuz = std::fs::read(kernel.vmlinuz())
        .with_context(|| format!("reading {}", kernel.vmlinuz().display()))?;
    write(&out.join("vmlinuz"), &vmlinuz)?;
    write(&out.join("initrd.img"), &initrd)?;
    let (stage1, stage1_contents) = initramfs::stage1(&kernel, &inputs.bin_dir)?;
    let stage1 = stage1.to_zstd(ZSTD_LEVEL)?;
    write(&out.join(DISK_INITRD), &stage1)?;
    // The kernel's config beside it, for kernel-config-check and for operators.
    let config = std::fs::read(kernel.config())
        .with_context(|| format!("reading {}", kernel.config().display()))?;
    write(&out.join("kernel.config"), &config)?;
    let manifest = serde_json::json!({
        "variant": variant,
        "version": version,
        "kernel": {
            "package": kernel.package.name,
            "version": kernel.package.version,
            "release": kernel.release,
            "modules_dir": kernel.modules_dir(),
            "vmlinuz_bytes": vmlinuz.len(),
        },
        "initramfs": {
            "bytes": initrd.len(),
            "compression": format!("zstd-{ZSTD_LEVEL}"),
            "uncompressed_content_bytes": contents.uncompressed_bytes,
            "modules": contents.modules,
            "early_modules": contents.early_modules,
            "libraries": contents.libraries,
        },
        "disk_initramfs": {
            "file": DISK_INITRD,
            "bytes": stage1.len(),
            "uncompressed_content_bytes": stage1_contents.uncompressed_bytes,
            "modules": stage1_contents.modules,
            "early_modules": stage1_contents.early_modules,
            "libraries": stage1_contents.libraries,
        },
    });
    let ssh = OpenSsh::fetch(cache)?;
    let mut root_tree = root_tree(&archive, &inputs.bin_dir, &busybox_bin, &ssh)?;
    root_tree.add_file(
        &format!(
            "{}/{}.pub",
            berth_update::KEYS_DIR.trim_start_matches('/'),
            signer.key_id
        ),
        0o644,
        signer.public.clone(),
    )?;
    let grub = grub::Grub::fetch(cache)?;
    let disk = build_disk(
        &root_tree,
        &kernel.vmlinuz(),
        &out.join(DISK_INITRD),
        &grub,
        out,
        version,
    )?;
    let payload = update::write(
        out,
        &out.join(".build"),
        &update::Parts {
            root: &disk.root,
            vmlinuz: &out.join("vmlinuz"),
            initrd: &out.join(DISK_INITRD),
            cmdline: BASE_CMDLINE,
            version,
            build_id: &disk.build_id,
        },
        signer,
    )?;
    let mut manifest = manifest;
    manifest["disk"] = serde_json::to_value(&disk)?;
    manifest["update"] = serde_json::to_value(&payload)?;
    let text = serde_json::to_string_pretty(&manifest).context("rendering manifest.json")?;
    write(&out.join("manifest.json"), text.as_bytes())?;
    eprintln!(
        "image-build: {} variant: kernel {} ({} KiB), initramfs {} KiB ({} modules), the disk's stage-1 initramfs {} KiB ({} modules) in {}",
        format!("{variant:?}").to_lowercase(),
        kernel.release,
        vmlinuz.len() / 1024,
        initrd.len() / 1024,
        contents.modules.len(),
        stage1.len() / 1024,
        stage1_contents.modules.len(),
        out.display()
    );
    Ok(())
}

/// The root holds the initramfs's tree and what only stage 2 needs, which the firmware
/// then need not read at every boot: the container runtime, the image store and the
/// daemon (with their libraries), the network and config agents, the updater, the
/// daemon's service, the built-in container image.
fn root_tree(
    initramfs: &archive::Archive,
    bin_dir: &Path,
    busybox: &Path,
    ssh: &OpenSsh,
) -> Result<archive::Archive> {
    let mut root = initramfs.clone();
    let mut binaries = Vec::new();
    for bin in [
        "berth-runtime",
        "berth-store",
        "berth-daemon",
        "berth-net",
        "berth-agent",
        "berth-updater",
    ] {
        let host = bin_dir.join(bin);
        root.add_host_file(&format!("usr/bin/{bin}"), 0o755, &host)?;
        binaries.push(host);
    }
    // nft (Debian's nftables, GPL-2: run, not linked) writes the daemon's NAT table.
    let nft = Path::new(NFT);
    anyhow::ensure!(
        nft.exists(),
        "{NFT} is missing: run `make deps` (package nftables)"
    );
    root.add_host_file("usr/sbin/nft", 0o755, nft)?;
    binaries.push(nft.to_path_buf());
    // OpenSSH's server and key maker (Debian's, BSD-licensed, run, not linked): the
    // operator's way in (docs/access.md). root's shell is berth-login (init, by that
    // name), which runs berthctl's words only; sshd's privilege separation user.
    root.add_host_file("usr/sbin/sshd", 0o755, &ssh.sshd)?;
    root.add_host_file("usr/bin/ssh-keygen", 0o755, &ssh.keygen)?;
    binaries.extend([ssh.sshd.clone(), ssh.keygen.clone()]);
    root.add_symlink("usr/bin/berth-login", "/init")?;
    // root's home, where sshd starts a session (empty: nothing reads it).
    root.add_dir("root", 0o700)?;
    initramfs::add_libraries(&mut root, &binaries)?;
    root.add_file(
        "usr/lib/berth/services/berth-daemon.toml",
        0o644,
        DAEMON_SERVICE.as_bytes().to_vec(),
    )?;
    root.add_file(
        "usr/lib/berth/services/berth-updater.toml",
        0o644,
        UPDATER_SERVICE.as_bytes().to_vec(),
    )?;
    root.add_file(
        "usr/lib/berth/services/berth-autoupdate.toml",
        0o644,
        AUTOUPDATE_SERVICE.as_bytes().to_vec(),
    )?;
    root.add_file(
        "usr/lib/berth/services/berth-sshd.toml",
        0o644,
        SSHD_SERVICE.as_bytes().to_vec(),
    )?;
    root.add_file(
        "usr/lib/berth/services/berth-logforward.toml",
        0o644,
        LOGFORWARD_SERVICE.as_bytes().to_vec(),
    )?;
    root.add_file(
        "usr/lib/berth/services/berth-net.toml",
        0o644,
        NET_SERVICE.as_bytes().to_vec(),
    )?;
    root.add_file(
        "usr/lib/berth/services/berth-agent.toml",
        0o644,
        AGENT_SERVICE.as_bytes().to_vec(),
    )?;
    initramfs::check_services(&root)?;
    let applets = initramfs::busybox_applets(busybox)?;
    for (path, data) in builtin_image::layout(busybox, &applets)? {
        root.add_file(&format!("{}/{path}", builtin_image::DIR), 0o644, data)?;
    }
    Ok(root)
}

/// Every slot's command line before its own words (root label, verity).
/// panic=10: a trial kernel that panics reboots, and spends another of its tries.
pub const BASE_CMDLINE: &str = "console=ttyS0 panic=10";

/// The build machine's nft, with its libraries resolved like ours.
const NFT: &str = "/usr/sbin/nft";

/// The container daemon: a delegated cgroup subtree (its containers live beside it),
/// restarted whenever it dies, and given time to stop its containers. After the agent,
/// so its first reconcile sees the user-data's declarations (later ones reach it by
/// inotify).
const DAEMON_SERVICE: &str = "name = \"berth-daemon\"\nexec = \"/usr/bin/berth-daemon\"\n\
after = [\"berth-agent\"]\ndelegate = true\nrestart = \"always\"\nstop_timeout_ms = 15000\n";

/// The OS updater: started by init for each `berthctl update check|apply` (never at
/// boot, never restarted), one at a time; its log is the update's.
const UPDATER_SERVICE: &str = "name = \"berth-updater\"\nexec = \"/usr/bin/berth-updater\"\n\
args = [\"run\"]\nautostart = false\nrestart = \"never\"\n";

/// Automatic updates (`berth-updater auto`), as user-data's `berth.update` sets them:
/// after the agent wrote its settings and the network is up; ready (sd_notify) once it
/// runs them, done (exited 0) at once when they are off: the ready line's count is the
/// same every boot.
const AUTOUPDATE_SERVICE: &str = "name = \"berth-autoupdate\"\nexec = \"/usr/bin/berth-updater\"\n\
args = [\"auto\"]\nafter = [\"berth-agent\", \"berth-net\"]\nready = \"notify\"\nrestart = \"on-failure\"\n";

/// SSH (`berth-agent sshd`, which becomes OpenSSH's sshd): after the agent wrote the
/// keys and the network is up; done (exited 0) at once when no key is configured;
/// ready when sshd says so (Debian's sshd speaks sd_notify).
const SSHD_SERVICE: &str = "name = \"berth-sshd\"\nexec = \"/usr/bin/berth-agent\"\n\
args = [\"sshd\"]\nafter = [\"berth-agent\", \"berth-net\"]\nready = \"notify\"\nrestart = \"on-failure\"\n";

/// Log forwarding (`berth-agent logforward`) to user-data's syslog receivers: after
/// the agent wrote its settings and the network is up; done (exited 0) at once when
/// nothing is to be forwarded.
const LOGFORWARD_SERVICE: &str = "name = \"berth-logforward\"\nexec = \"/usr/bin/berth-agent\"\n\
args = [\"logforward\"]\nafter = [\"berth-agent\", \"berth-net\"]\nready = \"notify\"\nrestart = \"on-failure\"\n";

/// Debian's OpenSSH programs, fetched and unpacked into the cache (never installed on
/// the build machine: no sshd starts there).
struct OpenSsh {
    sshd: PathBuf,
    keygen: PathBuf,
}

impl OpenSsh {
    fn fetch(cache: &Path) -> Result<OpenSsh> {
        Ok(OpenSsh {
            sshd: deb_file(cache, "openssh-server", "usr/sbin/sshd")?,
            keygen: deb_file(cache, "openssh-client", "usr/bin/ssh-keygen")?,
        })
    }
}

/// The host's network: ready when the links present at boot are configured (or after
/// its bounded wait), so services that need the network can say `after = ["berth-net"]`.
/// It starts beside the agent and waits (at most 10 s) for the agent's local datasources
/// (config drive, ...), so a link their settings make static never takes a DHCP lease
/// first; it follows the agent's later changes to /run/berth/network.json by itself.
const NET_SERVICE: &str = "name = \"berth-net\"\nexec = \"/usr/bin/berth-net\"\n\
ready = \"notify\"\nrestart = \"always\"\n";

/// The config agent: reads the datasources at boot (a cloud's metadata service within
/// 60 s of retries) and applies them; ready once it has, so the daemon (after it) starts
/// with the user-data's containers declared.
const AGENT_SERVICE: &str = "name = \"berth-agent\"\nexec = \"/usr/bin/berth-agent\"\n\
ready = \"notify\"\nready_timeout_ms = 120000\nrestart = \"on-failure\"\n";

/// What the disk build made, for the manifest.
#[derive(Debug, serde::Serialize)]
struct DiskReport {
    /// Slot A's build (its slot.json's build_id).
    build_id: String,
    root: rootfs::RootImage,
    cmdline: String,
    partitions: Vec<disk::Placed>,
    raw_bytes: u64,
    qcow2_bytes: u64,
    gce_tarball_bytes: u64,
}

/// The root filesystem is the same tree as the initramfs (stage 1 and stage 2 are one
/// binary with one set of libraries and modules); the ESP carries the kernel and that
/// initramfs for slot A.
fn build_disk(
    tree: &archive::Archive,
    vmlinuz: &Path,
    initrd: &Path,
    grub: &grub::Grub,
    out: &Path,
    version: &str,
) -> Result<DiskReport> {
    let staging = out.join(".build");
    std::fs::create_dir_all(&staging)?;
    let seed = tree.digest();
    rootfs::write_tree(tree, &staging.join("root"))?;
    let root = rootfs::build(&staging.join("root"), &staging.join("root.img"), &seed)?;
    let cmdline = berth_bootslot::grub::slot_cmdline(
        BASE_CMDLINE,
        berth_bootslot::Slot::A,
        &root.root_hash,
        &root.salt,
        root.data_blocks,
        "",
    );
    let info = berth_bootslot::SlotInfo {
        version: version.to_string(),
        build_id: rootfs::hex(&seed[..8]),
        root_hash: root.root_hash.clone(),
    };
    let entry = esp::BootEntry {
        vmlinuz,
        initrd,
        cmdline: &cmdline,
        info: Some(&info),
    };
    esp::build(
        &staging.join("esp.img"),
        disk::ESP_MIB,
        &seed,
        &entry,
        grub,
        &staging,
    )?;
    let bios = disk::BiosBoot {
        boot_img: grub.boot_img()?,
        core: grub.bios_core(&staging)?,
    };
    let raw = out.join("berth.raw");
    let partitions = disk::assemble(
        &raw,
        &seed,
        &[
            disk::esp_partition(&staging.join("esp.img")),
            disk::root_partition("ROOT-A", Some(&root.path)),
            disk::root_partition("ROOT-B", None),
        ],
        &bios,
    )?;
    disk::to_qcow2(&raw, &out.join("berth.qcow2"))?;
    disk::to_gce_tarball(&raw, &staging, &out.join("berth-gce.tar.gz"))?;
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    Ok(DiskReport {
        build_id: info.build_id.clone(),
        raw_bytes: size(&raw),
        qcow2_bytes: size(&out.join("berth.qcow2")),
        gce_tarball_bytes: size(&out.join("berth-gce.tar.gz")),
        root,
        cmdline,
        partitions,
    })
}

/// SHA-256 over the parts, in order.
pub fn digest(parts: &[&[u8]]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn build_floor(cache: &Path, out: &Path) -> Result<()> {
    let kernel = kernel::prepare(cache)?;
    let archive = initramfs::floor(&busybox(cache)?)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let vmlinuz = std::fs::read(kernel.vmlinuz())
        .with_context(|| format!("reading {}", kernel.vmlinuz().display()))?;
    write(&out.join("vmlinuz"), &vmlinuz)?;
    write(&out.join("initrd.img"), &archive.to_zstd(ZSTD_LEVEL)?)?;
    // The same firmware path as Berth's disk: an ESP with the same bootloaders and
    // kernel, the floor initramfs in place of Berth's.
    let staging = out.join(".build");
    std::fs::create_dir_all(&staging)?;
    let seed = archive.digest();
    let entry = esp::BootEntry {
        vmlinuz: &kernel.vmlinuz(),
        initrd: &out.join("initrd.img"),
        cmdline: "console=ttyS0",
        info: None,
    };
    let grub = grub::Grub::fetch(cache)?;
    esp::build(
        &staging.join("esp.img"),
        disk::ESP_MIB,
        &seed,
        &entry,
        &grub,
        &staging,
    )?;
    let bios = disk::BiosBoot {
        boot_img: grub.boot_img()?,
        core: grub.bios_core(&staging)?,
    };
    disk::assemble(
        &out.join("floor.raw"),
        &seed,
        &[disk::esp_partition(&staging.join("esp.img"))],
        &bios,
    )?;
    eprintln!(
        "image-build: floor initramfs and floor.raw in {}",
        out.display()
    );
    Ok(())
}

/// busybox from Debian's busybox-static package (fetched, not installed).
fn busybox(cache: &Path) -> Result<PathBuf> {
    deb_file(cache, "busybox-static", "bin/busybox")
}

/// One file out of a Debian package, fetched and unpacked into the cache.
fn deb_file(cache: &Path, package: &str, path: &str) -> Result<PathBuf> {
    let root = debs::fetch_unpacked(&debs::resolve(package)?, cache)?;
    let file = root.join(path);
    anyhow::ensure!(file.exists(), "{package} unpacked without {path}");
    Ok(file)
}

/// Writes through berth-persist, so a failed build leaves no half file.
fn write(path: &Path, data: &[u8]) -> Result<()> {
    Ok(berth_persist::write_file(path, data, 0o644)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
