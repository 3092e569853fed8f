use super::*;

const DEP: &str = "\
kernel/fs/erofs/erofs.ko: kernel/lib/libcrc32c.ko
kernel/lib/libcrc32c.ko:
kernel/crypto/crc32c_generic.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_pci_legacy_dev.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/block/virtio_blk.ko:
kernel/fs/btrfs/btrfs.ko: kernel/crypto/xor.ko kernel/lib/raid6/raid6_pq.ko kernel/lib/libcrc32c.ko
kernel/crypto/xor.ko:
kernel/lib/raid6/raid6_pq.ko:
kernel/a.ko: kernel/b.ko
kernel/b.ko: kernel/a.ko
";
const ALIAS: &str = "\
# Aliases extracted from modules themselves.
alias crypto-crc32c crc32c_intel
alias crc32c crc32c_intel
alias crc32c crc32c_generic
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000002v* virtio_blk
alias fs-erofs erofs
";
const SOFTDEP: &str = "\
softdep libcrc32c pre: crc32c
softdep btrfs post: virtio_blk
softdep cifs gcm
";
const BUILTIN: &str = "kernel/drivers/virtio/virtio.ko\nkernel/fs/ext4/ext4.ko\n";

fn index() -> ModuleIndex {
    ModuleIndex::parse(DEP, ALIAS, SOFTDEP, BUILTIN).unwrap()
}

#[test]
fn normalizes_names() {
    assert_eq!(
        normalize("kernel/arch/x86/crypto/crc32c-intel.ko"),
        "crc32c_intel"
    );
    assert_eq!(normalize("virtio-blk"), "virtio_blk");
    assert_eq!(normalize("x.ko.xz"), "x");
}

#[test]
fn fnmatch_globs() {
    assert!(fnmatch(
        "pci:v00001AF4d*sv*sd*bc*sc*i*",
        "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00"
    ));
    assert!(!fnmatch(
        "pci:v00001AF4d*sv*sd*bc*sc*i*",
        "pci:v00008086d00001001sv00001AF4sd00000002bc01sc00i00"
    ));
    assert!(fnmatch("a?c", "abc"));
    assert!(!fnmatch("a?c", "ac"));
    assert!(fnmatch("x[0-9]y", "x5y"));
    assert!(!fnmatch("x[!0-9]y", "x5y"));
    assert!(fnmatch("x[!0-9]y", "xay"));
    assert!(fnmatch("[]]", "]"));
    assert!(fnmatch("*", ""));
    assert!(fnmatch("a*", "a"));
    assert!(!fnmatch("a", ""));
    assert!(!fnmatch("[abc", "a"));
    assert!(fnmatch("*a*b*c", "xxaxxbxxc"));
    assert!(!fnmatch("*a*b*c", "xxaxxbxx"));
}

#[test]
fn resolves_names_then_aliases() {
    let idx = index();
    assert_eq!(idx.resolve("virtio-blk"), ["virtio_blk"]);
    assert_eq!(idx.resolve("crc32c"), ["crc32c_intel", "crc32c_generic"]);
    assert_eq!(
        idx.resolve("pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00"),
        ["virtio_pci"]
    );
    assert_eq!(idx.resolve("ext4"), ["ext4"]);
    assert!(idx.resolve("fs-nothing").is_empty());
}

#[test]
fn load_order_follows_softdeps_and_deps() {
    let idx = index();
    let order = idx.load_order("erofs").unwrap();
    assert_eq!(
        order,
        ["crc32c_intel", "crc32c_generic", "libcrc32c", "erofs"]
    );
    let order = idx.load_order("btrfs").unwrap();
    let pos = |m: &str| order.iter().position(|x| x == m).unwrap();
    assert!(pos("libcrc32c") < pos("btrfs"));
    assert!(pos("raid6_pq") < pos("btrfs"));
    assert!(
        pos("btrfs") < pos("virtio_blk"),
        "post softdep after: {order:?}"
    );
}

#[test]
fn builtins_and_unknowns() {
    let idx = index();
    assert!(idx.load_order("ext4").unwrap().is_empty());
    assert!(matches!(
        idx.load_order("nope"),
        Err(IndexError::UnknownModule(_))
    ));
    assert!(idx.is_builtin("virtio"));
    assert!(!idx.contains("virtio"));
}

#[test]
fn cycles_end() {
    let order = index().load_order("a").unwrap();
    assert_eq!(order, ["b", "a"]);
}

#[test]
fn closure_and_restricted_round_trip() {
    let idx = index();
    let closure = idx.closure(&["erofs", "virtio_pci"]).unwrap();
    assert_eq!(
        closure,
        [
            "crc32c_generic",
            "crc32c_intel",
            "erofs",
            "libcrc32c",
            "virtio_pci",
            "virtio_pci_legacy_dev",
            "virtio_pci_modern_dev"
        ]
    );
    let keep: BTreeSet<String> = closure.iter().cloned().collect();
    let files = idx.restricted(&keep);
    assert!(!files.dep.contains("btrfs"));
    assert!(!files.alias.contains("virtio_blk"));
    let small =
        ModuleIndex::parse(&files.dep, &files.alias, &files.softdep, &files.builtin).unwrap();
    assert_eq!(
        small.load_order("erofs").unwrap(),
        idx.load_order("erofs").unwrap()
    );
    assert_eq!(small.modules().count(), keep.len());
    assert!(small.is_builtin("ext4"));
}

#[test]
fn parse_errors_name_file_and_line() {
    let err = ModuleIndex::parse("ok.ko:\nbroken line\n", "", "", "").unwrap_err();
    assert_eq!(
        err.to_string(),
        "modules.dep line 2: no ':' in \"broken line\""
    );
    let err = ModuleIndex::parse("", "alias only-two\n", "", "").unwrap_err();
    assert!(err.to_string().starts_with("modules.alias line 1"), "{err}");
    let err = ModuleIndex::parse("", "", "nonsense\n", "").unwrap_err();
    assert!(
        err.to_string().starts_with("modules.softdep line 1"),
        "{err}"
    );
}

#[test]
fn debian_kernel_index_if_present() {
    let dir = Path::new("/tmp/k/x/lib/modules/6.1.0-56-amd64");
    if !dir.join("modules.dep").exists() {
        eprintln!("skipping: no unpacked Debian kernel at {}", dir.display());
        return;
    }
    let idx = ModuleIndex::load(dir).unwrap();
    let crc = idx.resolve("crc32c");
    assert!(
        crc.contains(&"crc32c_intel".to_string()) && crc.contains(&"crc32c_generic".to_string())
    );
    let order = idx.load_order("erofs").unwrap();
    let pos = |m: &str| order.iter().position(|x| x == m).unwrap();
    assert!(pos("crc32c_generic") < pos("libcrc32c") && pos("libcrc32c") < pos("erofs"));
}
