//! The initramfs: init (as /init, and /usr/sbin/modprobe for the kernel's module
//! helper), the shared libraries it loads, the kernel modules `kernel-config/` lists
//! closed over their dependencies and softdeps with an index restricted to them, and
//! berthctl (init again, by another name), and for the test variant busybox, berth-testd and the fault-test services.
//! Service definitions are checked here: a bad one stops the build.
//!
//! Layout is merged-/usr (/bin, /sbin, /lib, /lib64 link into /usr), as the read-only
//! root will be.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kmod::ModuleIndex;

use crate::archive::{Archive, Node};
use crate::elf;
use crate::kernel::Kernel;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// What ships: no shell, no test daemon.
    Prod,
    /// Adds busybox and berth-testd (the harness's way in); never shipped.
    Test,
}

/// Inputs beyond the kernel.
pub struct Inputs {
    pub variant: Variant,
    /// Where cargo put init, berth-testd (target/release).
    pub bin_dir: PathBuf,
    /// busybox-static's binary, for the test variant.
    pub busybox: Option<PathBuf>,
    /// mkfs.btrfs from Debian's btrfs-progs: first boot formats DATA with it.
    pub mkfs_btrfs: PathBuf,
    /// (image path, host file): crun and runc for the test variant's benchmark.
    pub other_runtimes: Vec<(String, PathBuf)>,
}

/// What went in, for the manifest.
#[derive(Debug, Default, serde::Serialize)]
pub struct Contents {
    pub modules: Vec<String>,
    pub early_modules: Vec<String>,
    pub libraries: Vec<String>,
    pub files: u64,
    pub uncompressed_bytes: u64,
}

const MERGED_USR: &[(&str, &str)] = &[
    ("bin", "usr/bin"),
    ("sbin", "usr/sbin"),
    ("lib", "usr/lib"),
    ("lib64", "usr/lib64"),
];

/// Which of kernel-config's modules an initramfs carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Modules {
    /// All of them: the tree that is also the root.
    All,
    /// Those marked `stage1`: what finds and verifies the root.
    Stage1,
}

/// The skeleton every initramfs starts from: merged /usr, the console, the mount points,
/// init (also the kernel's module helper).
fn skeleton(init: &Path) -> Result<Archive> {
    let mut a = Archive::default();
    for (link, target) in MERGED_USR {
        a.add_symlink(link, target)?;
        a.add(target, Node::Dir { mode: 0o755 })?;
    }
    a.add_console()?;
    for dir in ["proc", "sys", "run", "tmp", "etc", "var"] {
        a.add(dir, Node::Dir { mode: 0o755 })?;
    }
    a.add_host_file("init", 0o755, init)?;
    a.add_symlink("usr/sbin/modprobe", "/init")?;
    Ok(a)
}

/// The initramfs a disk boots (the ESP's, and each update's): init, the libraries it
/// loads, and the modules marked `stage1`. Stage 1 needs nothing else to find, verify
/// and switch to the root; stage 2 loads the other modules from the root's full set. The
/// firmware and the kernel read and unpack a fraction of the whole tree.
pub fn stage1(kernel: &Kernel, bin_dir: &Path) -> Result<(Archive, Contents)> {
    let init = bin_dir.join("init");
    let mut a = skeleton(&init)?;
    let mut contents = Contents {
        libraries: add_libraries(&mut a, &[init])?,
        ..Contents::default()
    };
    let (modules, early) = add_modules(&mut a, kernel, Modules::Stage1)?;
    contents.modules = modules;
    contents.early_modules = early;
    contents.uncompressed_bytes = a.content_bytes();
    Ok((a, contents))
}

pub fn build(kernel: &Kernel, inputs: &Inputs) -> Result<(Archive, Contents)> {
    let init = inputs.bin_dir.join("init");
    let mut a = skeleton(&init)?;
    let mut contents = Contents::default();
    add_etc_defaults(&mut a)?;
    a.add_host_file("usr/sbin/mkfs.btrfs", 0o755, &inputs.mkfs_btrfs)?;
    a.add_symlink("usr/bin/berthctl", "/init")?;
    let mut binaries = vec![init, inputs.mkfs_btrfs.clone()];

    if inputs.variant == Variant::Test {
        add_test_tools(&mut a, inputs, &mut binaries)?;
    }
    check_services(&a)?;
    contents.libraries = add_libraries(&mut a, &binaries)?;
    let (modules, early) = add_modules(&mut a, kernel, Modules::All)?;
    contents.modules = modules;
    contents.early_modules = early;
    contents.uncompressed_bytes = a.content_bytes();
    Ok((a, contents))
}

/// /usr/lib/os-release and the defaults init copies into the tmpfs /etc at every boot.
fn add_etc_defaults(a: &mut Archive) -> Result<()> {
    let version = env!("CARGO_PKG_VERSION");
    let os_release = format!(
        "NAME=\"Berth\"\nID=berth\nVERSION_ID={version}\nPRETTY_NAME=\"Berth {version}\"\n"
    );
    a.add_file("usr/lib/os-release", 0o644, os_release.into_bytes())?;
    let etc = "usr/share/berth/etc";
    a.add_symlink(&format!("{etc}/os-release"), "../usr/lib/os-release")?;
    a.add_file(
        &format!("{etc}/hosts"),
        0o644,
        b"127.0.0.1 localhost\n::1 localhost\n".to_vec(),
    )?;
    a.add_file(
        &format!("{etc}/passwd"),
        0o644,
        // root's shell is the SSH login (berthctl's words); `*`: no password, and not
        // the locked `!` that sshd would refuse a key login for. sshd: its privilege
        // separation user.
        b"root:*:0:0:root:/root:/usr/bin/berth-login\nsshd:*:100:65534::/run/sshd:/usr/bin/false\n"
            .to_vec(),
    )?;
    a.add_file(
        &format!("{etc}/group"),
        0o644,
        b"root:x:0:\nnogroup:x:65534:\n".to_vec(),
    )?;
    Ok(())
}

fn add_test_tools(a: &mut Archive, inputs: &Inputs, binaries: &mut Vec<PathBuf>) -> Result<()> {
    let busybox = inputs
        .busybox
        .as_deref()
        .context("the test variant needs busybox (busybox-static)")?;
    a.add_host_file("usr/bin/busybox", 0o755, busybox)?;
    for applet in busybox_applets(busybox)? {
        let path = format!("usr/bin/{applet}");
        if !a.contains(&path) && !a.contains(&format!("usr/sbin/{applet}")) {
            a.add_symlink(&path, "busybox")?;
        }
    }
    for bin in TEST_BINARIES {
        let host = inputs.bin_dir.join(bin);
        a.add_host_file(&format!("usr/bin/{bin}"), 0o755, &host)?;
        binaries.push(host);
    }
    for (path, host) in &inputs.other_runtimes {
        a.add_host_file(path, 0o755, host)?;
        binaries.push(host.clone());
    }
    for (name, text) in TEST_SERVICES {
        a.add_file(
            &format!("{SERVICES_DIR}/{name}.toml"),
            0o644,
            text.as_bytes().to_vec(),
        )?;
    }
    Ok(())
}

const SERVICES_DIR: &str = "usr/lib/berth/services";

/// The test variant's workspace binaries, in its initramfs. The runtime, the store and
/// the daemon are among them for the direct-kernel tests (cgroup v2); every variant's
/// root carries those three anyway (main.rs, `root_tree`).
const TEST_BINARIES: [&str; 6] = [
    "berth-testd",
    "berth-testsvc",
    "berth-runtime",
    "berth-runtime-bench",
    "berth-store",
    "berth-daemon",
];

/// The test image's services: testd (the harness's way in) and, started only when a
/// test names them with `berth.start=`, the misbehaving services of the supervisor's
/// fault tests (`berth-testsvc MODE`).
const TEST_SERVICES: &[(&str, &str)] = &[
    (
        "berth-testd",
        "name = \"berth-testd\"\nexec = \"/usr/bin/berth-testd\"\nrestart = \"always\"\n",
    ),
    (
        "test-notify",
        "name = \"test-notify\"\nexec = \"/usr/bin/berth-testsvc\"\nargs = [\"notify\"]\n\
         ready = \"notify\"\nrestart = \"always\"\nrestart_delay_ms = 50\n\
         restart_delay_max_ms = 400\nautostart = false\n",
    ),
    (
        "test-crash",
        "name = \"test-crash\"\nexec = \"/usr/bin/berth-testsvc\"\nargs = [\"crash\"]\n\
         ready = \"notify\"\nrestart = \"always\"\nrestart_delay_ms = 200\n\
         restart_delay_max_ms = 1600\nautostart = false\n",
    ),
    (
        "test-after-crash",
        "name = \"test-after-crash\"\nexec = \"/usr/bin/berth-testsvc\"\nargs = [\"notify\"]\n\
         ready = \"notify\"\nafter = [\"test-crash\"]\nautostart = false\n",
    ),
    (
        "test-ignore-term",
        "name = \"test-ignore-term\"\nexec = \"/usr/bin/berth-testsvc\"\n\
         args = [\"ignore-term\"]\nstop_timeout_ms = 2000\nautostart = false\n",
    ),
    (
        "test-delegate",
        "name = \"test-delegate\"\nexec = \"/usr/bin/berth-testsvc\"\nargs = [\"delegate\"]\n\
         ready = \"notify\"\ndelegate = true\nrestart = \"always\"\nrestart_delay_ms = 100\n\
         memory_max = \"256M\"\npids_max = 64\nautostart = false\n",
    ),
    (
        "test-slow",
        "name = \"test-slow\"\nexec = \"/usr/bin/berth-testsvc\"\nargs = [\"slow\"]\n\
         ready = \"socket:/run/test-slow.sock\"\nready_timeout_ms = 60000\nautostart = false\n",
    ),
];

/// Refuses the image if a service definition in it is bad: it would not parse, names a
/// missing dependency, sits in a cycle, or runs a program the image does not have.
pub fn check_services(a: &Archive) -> Result<()> {
    let prefix = format!("{SERVICES_DIR}/");
    let mut defs = Vec::new();
    let mut errors = Vec::new();
    for (path, node) in a.nodes() {
        let Some(file) = path.strip_prefix(&prefix) else {
            continue;
        };
        let Node::File { data, .. } = node else {
            continue;
        };
        if !file.ends_with(".toml") || file.contains('/') {
            continue;
        }
        let text = String::from_utf8_lossy(data);
        let image_path = PathBuf::from(format!("/{path}"));
        match berth_services::parse(&image_path, &text) {
            Ok(def) => {
                let exec = def.exec.to_string_lossy();
                if !a.contains(exec.trim_start_matches('/')) {
                    errors.push(format!(
                        "service {}: exec {exec} is not in the image",
                        def.name
                    ));
                }
                defs.push((image_path, def));
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    let (_, set_errors) = berth_services::check_set(defs);
    errors.extend(set_errors.iter().map(ToString::to_string));
    if !errors.is_empty() {
        bail!("bad service definitions:\n  {}", errors.join("\n  "));
    }
    Ok(())
}

/// Applet names as `busybox --list` prints them (busybox-static runs on the build host).
pub fn busybox_applets(busybox: &Path) -> Result<Vec<String>> {
    let out = crate::debs::run(std::process::Command::new(busybox).arg("--list"))?;
    Ok(out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains('/') && *l != "busybox")
        .map(String::from)
        .collect())
}

/// Copies the libraries the binaries load. Several image paths for one host file (the
/// loader is both PT_INTERP /lib64/ld-linux-x86-64.so.2 and libc's DT_NEEDED) become
/// one file and symlinks.
pub fn add_libraries(a: &mut Archive, binaries: &[PathBuf]) -> Result<Vec<String>> {
    let libs = elf::library_closure(Path::new("/"), binaries)?;
    let mut by_file: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
    for (image_path, host) in &libs {
        let canonical = host
            .canonicalize()
            .with_context(|| format!("resolving {}", host.display()))?;
        by_file
            .entry(canonical)
            .or_default()
            .push(image_path.clone());
    }
    for (host, mut paths) in by_file {
        // Prefer the multiarch directory as the real file's home.
        paths.sort_by_key(|p| !p.starts_with("/usr/lib/x86_64-linux-gnu/"));
        let Some((first, rest)) = paths.split_first() else {
            continue;
        };
        a.add_host_file(&image_path_in_usr(first), 0o755, &host)?;
        for other in rest {
            a.add_symlink(image_path_in_usr(other).as_str(), first)?;
        }
    }
    Ok(libs.into_keys().collect())
}

/// `/lib64/x` -> `usr/lib64/x`: paths under the merged-/usr links must be added below
/// /usr, or they would collide with the link itself.
fn image_path_in_usr(path: &str) -> String {
    let rel = path.trim_start_matches('/');
    for (link, target) in MERGED_USR {
        if let Some(rest) = rel.strip_prefix(&format!("{link}/")) {
            return format!("{target}/{rest}");
        }
    }
    rel.to_string()
}

/// Checks the kernel config against kernel-config/, then carries the listed modules and
/// everything they need, with an index restricted to them and the early list.
fn add_modules(
    a: &mut Archive,
    kernel: &Kernel,
    which: Modules,
) -> Result<(Vec<String>, Vec<String>)> {
    let config = kernel_config::KernelConfig::load(&kernel.config())
        .with_context(|| format!("reading {}", kernel.config().display()))?;
    let report = kernel_config::check(&kernel_config::fragment(), &config);
    if !report.violations.is_empty() {
        let lines: Vec<String> = report.violations.iter().map(|v| v.to_string()).collect();
        bail!(
            "kernel {} does not meet kernel-config/berth.config:\n{}",
            kernel.release,
            lines.join("\n")
        );
    }
    let dir = kernel.modules_dir();
    let index = ModuleIndex::load(&dir)
        .with_context(|| format!("reading the module index in {}", dir.display()))?;
    let wanted = match which {
        Modules::All => &report.modules,
        Modules::Stage1 => &report.stage1,
    };
    let closure = index
        .closure(wanted)
        .context("closing the module list over its dependencies")?;
    let keep: BTreeSet<String> = closure.iter().cloned().collect();
    let base = format!("usr/lib/modules/{}", kernel.release);
    for module in &closure {
        let rel = index
            .path(module)
            .with_context(|| format!("module {module} has no file"))?;
        a.add_host_file(&format!("{base}/{rel}"), 0o644, &dir.join(rel))?;
    }
    let files = index.restricted(&keep);
    for (name, text) in [
        ("modules.dep", &files.dep),
        ("modules.alias", &files.alias),
        ("modules.softdep", &files.softdep),
        ("modules.builtin", &files.builtin),
    ] {
        a.add_file(&format!("{base}/{name}"), 0o644, text.clone().into_bytes())?;
    }
    let mut early = report.early.clone();
    early.sort();
    let early_text: String = early.iter().map(|m| format!("{m}\n")).collect();
    a.add_file(
        &format!("{base}/modules.early"),
        0o644,
        early_text.into_bytes(),
    )?;
    Ok((closure, early))
}

/// The kernel-only floor for `make bench`: busybox as /init's shell, printing one line
/// and powering off at once; the same kernel and console, nothing of Berth.
pub fn floor(busybox: &Path) -> Result<Archive> {
    let mut a = Archive::default();
    a.add_console()?;
    a.add_host_file("bin/busybox", 0o755, busybox)?;
    a.add_file(
        "init",
        0o755,
        b"#!/bin/busybox sh\n/bin/busybox echo 'floor: ready'\n/bin/busybox poweroff -f\n".to_vec(),
    )?;
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_under_merged_usr_links_move_into_usr() {
        assert_eq!(
            image_path_in_usr("/lib64/ld-linux-x86-64.so.2"),
            "usr/lib64/ld-linux-x86-64.so.2"
        );
        assert_eq!(
            image_path_in_usr("/usr/lib/x/libc.so.6"),
            "usr/lib/x/libc.so.6"
        );
        assert_eq!(image_path_in_usr("/lib/x/libc.so.6"), "usr/lib/x/libc.so.6");
    }

    fn with_service(name: &str, text: &str) -> Archive {
        let mut a = Archive::default();
        a.add_file("usr/bin/svc", 0o755, vec![]).unwrap();
        a.add_file(
            &format!("{SERVICES_DIR}/{name}.toml"),
            0o644,
            text.as_bytes().to_vec(),
        )
        .unwrap();
        a
    }

    #[test]
    fn the_test_services_pass_the_check() {
        let mut a = Archive::default();
        for bin in TEST_BINARIES {
            a.add_file(&format!("usr/bin/{bin}"), 0o755, vec![])
                .unwrap();
        }
        for (name, text) in TEST_SERVICES {
            a.add_file(
                &format!("{SERVICES_DIR}/{name}.toml"),
                0o644,
                text.as_bytes().to_vec(),
            )
            .unwrap();
        }
        check_services(&a).unwrap();
    }

    #[test]
    fn bad_service_definitions_stop_the_build() {
        let ok = with_service("svc", "name = \"svc\"\nexec = \"/usr/bin/svc\"\n");
        check_services(&ok).unwrap();
        let cases = [
            (
                "name = \"svc\"\nexec = \"/usr/bin/nope\"\n",
                "/usr/bin/nope is not in the image",
            ),
            (
                "name = \"svc\"\nexec = \"/usr/bin/svc\"\nrestart = \"maybe\"\n",
                "maybe",
            ),
            (
                "name = \"svc\"\nexec = \"/usr/bin/svc\"\nrequires = [\"db\"]\n",
                "requires names db",
            ),
        ];
        for (text, want) in cases {
            let err = format!(
                "{:#}",
                check_services(&with_service("svc", text)).unwrap_err()
            );
            assert!(err.contains(want), "{text}: {err}");
            assert!(err.contains("svc"), "{err}");
        }
    }
}
