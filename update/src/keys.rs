//! The public keys a machine trusts to sign payloads: minisign's public key files
//! (`untrusted comment: ...` then the base64 key) in one directory, named `NAME.pub`.
//! Signatures are minisign's too (Ed25519 over the BLAKE2b-512 of the manifest, plus a
//! signed trusted comment); checking one is `minisign-verify`'s work.

use std::io::Read;
use std::path::{Path, PathBuf};

use minisign_verify::{PublicKey, Signature};

use crate::Refusal;

/// A key or signature file is a few hundred bytes; anything larger is not one.
const MAX_FILE: u64 = 4096;
/// Enough keys for any rotation; more is a directory that is not what it should be.
const MAX_KEYS: usize = 64;

pub struct Keyring {
    dir: PathBuf,
    keys: Vec<(String, PublicKey)>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a regular file of at most {MAX_FILE} bytes")]
    NotAKeyFile { path: PathBuf },
    #[error("{path} is not a minisign public key: {why}")]
    Malformed { path: PathBuf, why: String },
    #[error("{dir} holds more than {MAX_KEYS} keys")]
    TooMany { dir: PathBuf },
}

impl Keyring {
    /// Every `*.pub` in `dir`, in name order. A file that is not a key is an error, not
    /// skipped: a trusted key that silently stopped counting would refuse every update.
    pub fn load(dir: &Path) -> Result<Keyring, KeyError> {
        let io = |source| KeyError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let name = entry.map_err(io)?.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".pub") {
                names.push(name.to_string());
            }
            if names.len() > MAX_KEYS {
                return Err(KeyError::TooMany {
                    dir: dir.to_path_buf(),
                });
            }
        }
        names.sort();
        let mut keys = Vec::new();
        for name in names {
            let path = dir.join(&name);
            let text = read_small(&path)?;
            let key = PublicKey::decode(&text).map_err(|e| KeyError::Malformed {
                path: path.clone(),
                why: e.to_string(),
            })?;
            keys.push((name, key));
        }
        Ok(Keyring {
            dir: dir.to_path_buf(),
            keys,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The trusted keys' file names.
    pub fn names(&self) -> Vec<&str> {
        self.keys.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Checks `signature` (a minisign signature file's text) over `message`; returns the
    /// name of the key that made it.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<String, Refusal> {
        if self.keys.is_empty() {
            return Err(Refusal::NoKeys {
                dir: self.dir.clone(),
            });
        }
        if signature.len() > usize::try_from(MAX_FILE).unwrap_or(usize::MAX) {
            return Err(Refusal::UnreadableSignature(format!(
                "larger than {MAX_FILE} bytes"
            )));
        }
        let text = std::str::from_utf8(signature)
            .map_err(|_| Refusal::UnreadableSignature("not UTF-8 text".into()))?;
        let sig =
            Signature::decode(text).map_err(|e| Refusal::UnreadableSignature(e.to_string()))?;
        // minisign-verify checks the key id first: the one key whose id matches decides.
        for (name, key) in &self.keys {
            match key.verify(message, &sig, false) {
                Ok(()) => return Ok(name.clone()),
                Err(minisign_verify::Error::UnexpectedKeyId) => continue,
                Err(_) => return Err(Refusal::BadSignature { key: name.clone() }),
            }
        }
        Err(Refusal::UnknownKey {
            key_id: signature_key_id(text).unwrap_or_else(|| "(unreadable)".into()),
            trusted: self.names().join(", "),
        })
    }
}

/// The key id a signature names, as minisign prints it (hex of the 8 id bytes, most
/// significant first: the id is stored little-endian after the 2-byte algorithm).
fn signature_key_id(text: &str) -> Option<String> {
    let line = text.lines().nth(1)?;
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(line.trim())
        .ok()?;
    let id = bytes.get(2..10)?;
    Some(id.iter().rev().map(|b| format!("{b:02X}")).collect())
}

/// A regular file of at most MAX_FILE bytes, opened without following a symlink.
fn read_small(path: &Path) -> Result<String, KeyError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::options()
        .read(true)
        // Non-blocking: a FIFO named *.pub would otherwise hold the open forever, before
        // the regular-file check below could refuse it.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() || meta.len() > MAX_FILE {
        return Err(KeyError::NotAKeyFile {
            path: path.to_path_buf(),
        });
    }
    let mut text = String::new();
    file.take(MAX_FILE).read_to_string(&mut text).map_err(io)?;
    Ok(text)
}
