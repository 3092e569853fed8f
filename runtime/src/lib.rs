//! Berth's container runtime: an OCI runtime (runtime-spec 1.x) with runc's command line,
//! so podman and containerd can drive it. The CLI is in `main.rs`; this library is what
//! the daemon (issue 7) will call.

pub mod cgroup;
pub mod cgroup_v1;
pub mod console;
pub mod container;
pub mod devices;
pub mod error;
pub mod exec;
pub mod handshake;
pub mod hooks;
pub mod inroot;
pub mod lsm;
pub mod mounts;
pub mod process;
pub mod seccomp;
pub mod state;
pub mod sys;
mod syscalls;

pub use error::{Error, Result};
