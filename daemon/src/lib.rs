//! Berth's container daemon: container declarations (`declaration`), capability sets
//! (`caps`), the default seccomp profile (`seccomp`), the OCI runtime config made from a
//! declaration and its image (`spec`), bringing a container up (`launch`), logs,
//! volumes, the supervisor's loop (`supervisor`), what it remembers across its own
//! restarts (`status`, `fdstore`), and its D-Bus API (`api`).

pub mod api;
pub mod caps;
pub mod declaration;
pub mod fdstore;
pub mod launch;
pub mod logs;
pub mod netns;
pub mod network;
pub mod seccomp;
pub mod spec;
pub mod status;
pub mod supervisor;
pub mod volumes;
