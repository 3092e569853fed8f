//! The image store's host tests (root on the build machine), one test binary for all of
//! them: every test binary pays its own LTO link. Run one file's tests with a filter:
//! `cargo test --release -p berth-store --test integration unpack::`.
//!
//! Tests of different files run as threads of one process: none sets an environment
//! variable, changes the working directory or the umask, or keeps a static; each works
//! in its own temporary directory, and every registry and proxy listens on a port of
//! its own.

mod common;

mod registry;
mod store;
mod unpack;

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
