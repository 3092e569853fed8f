use super::*;

#[test]
fn shipped_fragment_parses() {
    let f = parse_fragment(FRAGMENT).unwrap();
    assert!(f.requirements.len() > 50);
    let early: Vec<&str> = f
        .requirements
        .iter()
        .filter(|r| r.early)
        .filter_map(|r| r.module.as_deref())
        .collect();
    assert_eq!(early, ["erofs", "dm_verity"]);
    assert!(
        f.requirements.iter().all(|r| !r.section.is_empty()),
        "every option sits under a section"
    );
}

#[test]
fn parses_each_kind() {
    let f = parse_fragment("## S\nCONFIG_A=y\n# module: b_mod early\nCONFIG_B=m\n# CONFIG_C is not set\nCONFIG_D=\"x\"\nCONFIG_E=64\n").unwrap();
    let wants: Vec<(&str, &Want)> = f
        .requirements
        .iter()
        .map(|r| (r.option.as_str(), &r.want))
        .collect();
    assert_eq!(
        wants,
        [
            ("A", &Want::BuiltIn),
            ("B", &Want::ModuleOrBuiltIn),
            ("C", &Want::NotSet),
            ("D", &Want::Value("\"x\"".into())),
            ("E", &Want::Value("64".into()))
        ]
    );
    assert_eq!(f.requirements[1].module.as_deref(), Some("b_mod"));
    assert!(f.requirements[1].early);
    assert_eq!(f.requirements[1].section, "S");
    assert_eq!(f.requirements[1].line, 4);
}

#[test]
fn rejects_bad_fragments_with_line_numbers() {
    let cases = [
        ("# module: x\nCONFIG_A=y\n", 1),
        ("# module: x\n\nCONFIG_A=m\n", 2),
        ("# module: x\n", 1),
        ("# module: x late\nCONFIG_A=m\n", 1),
        ("CONFIG_A\n", 1),
        ("CONFIG_OK=y\nnonsense\n", 2),
        ("CONFIG_A=\n", 1),
        ("# module:\nCONFIG_A=m\n", 1),
    ];
    for (text, line) in cases {
        let err = parse_fragment(text).unwrap_err();
        assert_eq!(err.line, line, "{text:?}: {err}");
    }
}

#[test]
fn checks_each_kind() {
    let f = parse_fragment(
        "## S\nCONFIG_Y=y\n# module: mm early\nCONFIG_M=m\n# module: bb\nCONFIG_B=m\n# CONFIG_N is not set\nCONFIG_V=64\n",
    )
    .unwrap();
    let good = KernelConfig::parse(
        "CONFIG_Y=y\nCONFIG_M=m\nCONFIG_B=y\n# CONFIG_N is not set\nCONFIG_V=64\n",
    );
    let r = check(&f, &good);
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    // B is built in: nothing to carry.
    assert_eq!(r.modules, ["mm"]);
    assert_eq!(r.early, ["mm"]);

    let bad = KernelConfig::parse("CONFIG_Y=m\nCONFIG_N=y\nCONFIG_V=32\n");
    let r = check(&f, &bad);
    let failed: Vec<&str> = r.violations.iter().map(|v| v.option.as_str()).collect();
    assert_eq!(failed, ["Y", "M", "B", "N", "V"]);
    assert_eq!(
        r.violations[0].to_string(),
        "CONFIG_Y: need y (built in), kernel has m (S)"
    );
    assert_eq!(
        r.violations[1].to_string(),
        "CONFIG_M: need m or y, kernel has it unset (S)"
    );
    assert!(r.modules.is_empty());
}

#[test]
fn debian_kernel_passes_if_present() {
    let config = Path::new("/tmp/k/x/boot/config-6.1.0-56-amd64");
    if !config.exists() {
        eprintln!("skipping: no unpacked Debian kernel");
        return;
    }
    let r = check(&fragment(), &KernelConfig::load(config).unwrap());
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    let index = kmod::ModuleIndex::load(Path::new("/tmp/k/x/lib/modules/6.1.0-56-amd64")).unwrap();
    for m in &r.modules {
        assert!(index.contains(m), "{m} is not a module of this kernel");
    }
}

#[test]
fn stage1_flag_and_early_implying_it() {
    let f = parse_fragment(
        "## S\n# module: a early\nCONFIG_A=m\n# module: b stage1\nCONFIG_B=m\n# module: c\nCONFIG_C=m\n# module: d stage1 early\nCONFIG_D=m\n",
    )
    .unwrap();
    let flags: Vec<(bool, bool)> = f.requirements.iter().map(|r| (r.early, r.stage1)).collect();
    assert_eq!(
        flags,
        [(true, true), (false, true), (false, false), (true, true)]
    );
    let r = check(
        &f,
        &KernelConfig::parse("CONFIG_A=m\nCONFIG_B=m\nCONFIG_C=m\nCONFIG_D=y\n"),
    );
    // D is built in: nothing to carry in either initramfs.
    assert_eq!(r.stage1, ["a", "b"]);
    assert_eq!(r.early, ["a"]);
}

#[test]
fn the_shipped_stage1_set_finds_and_verifies_a_root() {
    let f = parse_fragment(FRAGMENT).unwrap();
    let stage1: Vec<&str> = f
        .requirements
        .iter()
        .filter(|r| r.stage1)
        .filter_map(|r| r.module.as_deref())
        .collect();
    for needed in [
        "erofs",
        "dm_mod",
        "dm_verity",
        "virtio_blk",
        "virtio_scsi",
        "nvme",
    ] {
        assert!(stage1.contains(&needed), "{needed} missing from {stage1:?}");
    }
    for later in ["btrfs", "virtio_net", "nf_tables", "vfat"] {
        assert!(!stage1.contains(&later), "{later} is stage 2's");
    }
}
