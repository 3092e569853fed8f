//! Berth's end-to-end tests in QEMU, one test binary for all of them: every test binary
//! pays its own LTO link, so the files below are modules of this one rather than binaries
//! of their own. Run one file's tests with a filter:
//! `cargo test --release -p berth-tests --test qemu disk::`.
//!
//! Tests of different files now run as threads of one process. They share no process
//! state beyond the VM lock (tests/src/lock.rs, one VM at a time across threads and
//! processes) and the accelerator probe cached in tests/src/accel.rs.

mod common;

mod agent;
mod bridge;
mod clouds;
mod daemon;
mod disk;
mod harness;
mod logforward;
mod metrics;
mod network;
mod runtime;
mod services;
mod slots;
mod ssh;
mod storage;
mod store;
mod update;
mod vm;

/// With `autotests = false`, a file added to this directory is compiled and run only once
/// it is declared above: fail rather than skip it silently.
#[test]
fn every_test_file_is_declared_here() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let main = std::fs::read_to_string(dir.join("main.rs")).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if let Some(module) = name.strip_suffix(".rs").filter(|m| *m != "main") {
            assert!(
                main.contains(&format!("\nmod {module};\n")),
                "{name} is not declared in main.rs: its tests would never run"
            );
        }
    }
}
