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
    /// A forked child's setup failed, as it reported over the handshake.
    #[error("the container's setup failed while {stage}: {message}")]
    Init {
        stage: crate::handshake::Stage,
        errno: Option<Errno>,
        message: String,
    },
    /// The handshake with a forked child broke (timed out, malformed, out of order).
    #[error("talking to {peer}: {source}")]
    Handshake {
        peer: &'static str,
        source: crate::handshake::HandshakeError,
    },
    #[error("{0}")]
    Unsupported(String),
}

impl Error {
    /// The system's error number behind this error, when there is one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Sys { errno, .. } | Error::InRoot { errno, .. } => Some(*errno),
            Error::Io { source, .. } => source.raw_os_error().map(Errno::from_raw),
            Error::Init { errno, .. } => *errno,
            _ => None,
        }
    }
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
