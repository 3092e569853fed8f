//! The checker binary against small fixture configs.

use std::process::Command;

fn check(config: &str, fragment: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config"), config).unwrap();
    std::fs::write(dir.path().join("fragment"), fragment).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kernel-config-check"))
        .arg("--config")
        .arg(dir.path().join("config"))
        .arg("--fragment")
        .arg(dir.path().join("fragment"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

const FRAGMENT: &str = "## Test\nCONFIG_A=y\n# module: b\nCONFIG_B=m\n";

#[test]
fn passing_config_exits_zero() {
    let (code, out) = check("CONFIG_A=y\nCONFIG_B=m\n", FRAGMENT);
    assert_eq!(code, 0, "{out}");
    assert!(out.is_empty(), "{out}");
}

#[test]
fn failing_config_names_each_option() {
    let (code, out) = check("CONFIG_A=m\n", FRAGMENT);
    assert_eq!(code, 1);
    assert_eq!(
        out,
        "unmet: CONFIG_A: need y (built in), kernel has m (Test)\nunmet: CONFIG_B: need m or y, kernel has it unset (Test)\n"
    );
}

#[test]
fn unreadable_inputs_exit_two() {
    let out = Command::new(env!("CARGO_BIN_EXE_kernel-config-check"))
        .args(["--config", "/nonexistent/config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/config"));
}
