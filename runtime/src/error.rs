//! What can go wrong, each naming the input it is about.

use std::path::PathBuf;

use nix::errno::Errno;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("config.json: {field}: {problem}")]
    Config { field: String, problem: String },
    #[error("container {0:?} already exists")]
    Exists(String),
    #[error("container {0:?} does not exist")]
    NotFound(String),
    #[error("{0:?} is not a container ID (letters, digits, '.', '_', '-', '+' only)")]
    BadId(String),
    #[error("container {id} is {status}; {action} needs it {needed}")]
    WrongState {
        id: String,
        status: &'static str,
        action: &'static str,
        needed: &'static str,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{op}: {errno}")]
    Sys { op: String, errno: Errno },
    #[error("{0}")]
    Persist(#[from] berth_persist::PersistError),
    /// A path under the rootfs, resolved in it (as the container will see it).
    #[error("{dest} in the rootfs: {op}: {errno}")]
    InRoot {
        dest: PathBuf,
        op: &'static str,
        errno: Errno,
    },
    #[error("the container's setup failed: {0}")]
    Setup(String),
    #[error("{0}")]
    Unsupported(String),
}

pub type Result<T> = std::result::Result<T, Error>;

pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}

pub fn sys(op: impl Into<String>) -> impl FnOnce(Errno) -> Error {
    let op = op.into();
    move |errno| Error::Sys { op, errno }
}

pub fn config(field: &str, problem: impl Into<String>) -> Error {
    Error::Config {
        field: field.to_string(),
        problem: problem.into(),
    }
}
