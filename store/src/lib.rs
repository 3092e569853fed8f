//! Berth's container image store: images from registries, OCI layouts and `docker save`
//! archives, unpacked layer by layer into btrfs snapshots (or overlayfs layers where
//! the store is not on btrfs), each layer's content checked against its digest.
//!
//! Kept out of `berth-runtime`'s binary: the runtime's create path stays free of HTTP,
//! TLS and decompression code (`berth-runtime image ...` hands over to `berth-store`).

mod backend;
pub mod btrfs;
pub mod compression;
pub mod digest;
mod error;
pub mod image;
pub mod import;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod regular;
pub mod store;
pub mod unpack;

pub use digest::Digest;
