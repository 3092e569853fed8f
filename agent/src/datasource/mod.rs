//! Where a machine's configuration comes from. Only the OpenStack config drive so far
//! (its network description, for berth-net); the others and user-data arrive with
//! issue 9.

pub mod config_drive;
