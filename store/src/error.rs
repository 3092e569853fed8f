//! The store's errors: each variant names what failed and carries its inputs.

use std::path::PathBuf;

use crate::digest::Digest;
use crate::unpack;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Unpack(#[from] unpack::UnpackError),
    #[error("{what} digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("no image {0:?} in the store")]
    NoSuchImage(String),
    #[error("image {image} is used by container(s) {containers}: remove them first")]
    InUse { image: String, containers: String },
    #[error("the store's filesystem is nearly full: {free} bytes free, {needed} kept free; refusing to add {what} (remove images or run gc)")]
    NearlyFull {
        free: u64,
        needed: u64,
        what: String,
    },
    #[error("{path}: bad JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Persist(#[from] berth_persist::PersistError),
    #[error("{path}: {why}")]
    NotRegular { path: PathBuf, why: String },
    #[error("{path}: larger than {limit} bytes")]
    TooBig { path: PathBuf, limit: u64 },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.into();
    move |source| StoreError::Io { path, source }
}

pub(crate) fn errno_err(path: impl Into<PathBuf>) -> impl FnOnce(rustix::io::Errno) -> StoreError {
    let path = path.into();
    move |e| StoreError::Io {
        path,
        source: e.into(),
    }
}
