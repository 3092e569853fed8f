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
