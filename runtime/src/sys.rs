//! The runtime's unsafe calls, each with its reason.

use nix::errno::Errno;
use nix::unistd::ForkResult;

/// fork(2). The runtime is single-threaded whenever it forks (no thread is ever
/// started), so the child may allocate and use std freely until it execs.
pub fn fork() -> Result<ForkResult, Errno> {
    // SAFETY: single-threaded process (see above): no lock can be held by another thread.
    unsafe { nix::unistd::fork() }
}

/// Restores SIGPIPE's default action before exec (Rust's runtime ignores it, and an
/// ignored signal stays ignored across exec).
pub fn default_sigpipe() -> Result<(), Errno> {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: SIG_DFL installs no handler code.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }.map(|_| ())
}
