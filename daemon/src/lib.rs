//! Berth's container daemon (issue 7), built up in parts: container declarations
//! (`declaration`), capability sets (`caps`), the default seccomp profile (`seccomp`),
//! and the OCI runtime config made from a declaration and its image (`spec`).

pub mod caps;
pub mod declaration;
pub mod logs;
pub mod seccomp;
pub mod spec;
pub mod supervisor;
pub mod volumes;
