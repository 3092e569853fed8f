//! What a slot holds: `berth/<slot>/slot.json` on the ESP, written with the slot's
//! kernel, initramfs and command line (by the image builder for slot A, by an update
//! for either). A slot without one is empty: nothing can roll back to it.

use serde::{Deserialize, Serialize};

/// The file's name under `berth/<slot>/`.
pub const FILE: &str = "slot.json";
/// The most bytes of it read: it is a few hundred.
pub const MAX_BYTES: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotInfo {
    /// Berth's version, as `berth: ready` prints it.
    pub version: String,
    /// The build's identity: a digest of its inputs.
    pub build_id: String,
    /// The dm-verity root hash of the slot's root (hex).
    pub root_hash: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SlotInfoError {
    #[error("slot.json is {len} bytes, more than {MAX_BYTES}")]
    TooLarge { len: usize },
    #[error("slot.json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("slot.json: {field} {value:?} is not {expected}")]
    BadField {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
}

impl SlotInfo {
    pub fn parse(bytes: &[u8]) -> Result<SlotInfo, SlotInfoError> {
        if bytes.len() > MAX_BYTES {
            return Err(SlotInfoError::TooLarge { len: bytes.len() });
        }
        let info: SlotInfo = serde_json::from_slice(bytes)?;
        info.check()?;
        Ok(info)
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, SlotInfoError> {
        self.check()?;
        let mut v = serde_json::to_vec_pretty(self)?;
        v.push(b'\n');
        Ok(v)
    }

    /// The values end up on the console and in `berthctl slots`: printable, short.
    fn check(&self) -> Result<(), SlotInfoError> {
        let printable = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._+-~".contains(&b))
        };
        for (field, value) in [("version", &self.version), ("build_id", &self.build_id)] {
            if !printable(value) {
                return Err(SlotInfoError::BadField {
                    field,
                    value: value.clone(),
                    expected: "1 to 128 of [A-Za-z0-9._+-~]",
                });
            }
        }
        if self.root_hash.len() != 64 || !self.root_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SlotInfoError::BadField {
                field: "root_hash",
                value: self.root_hash.clone(),
                expected: "64 hex digits",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> SlotInfo {
        SlotInfo {
            version: "0.1.0".into(),
            build_id: "3f2a".into(),
            root_hash: "ab".repeat(32),
        }
    }

    #[test]
    fn round_trips() {
        let i = info();
        assert_eq!(SlotInfo::parse(&i.to_bytes().unwrap()).unwrap(), i);
    }

    #[test]
    fn hostile_content_is_refused() {
        let mut i = info();
        i.version = "1.0\n\x1b[2J".into();
        assert!(matches!(
            i.to_bytes(),
            Err(SlotInfoError::BadField {
                field: "version",
                ..
            })
        ));
        let bad = br#"{"version":"1","build_id":"x","root_hash":"zz"}"#;
        assert!(matches!(
            SlotInfo::parse(bad),
            Err(SlotInfoError::BadField {
                field: "root_hash",
                ..
            })
        ));
        let extra = format!(
            r#"{{"version":"1","build_id":"x","root_hash":"{}","more":1}}"#,
            "a".repeat(64)
        );
        assert!(matches!(
            SlotInfo::parse(extra.as_bytes()),
            Err(SlotInfoError::Json(_))
        ));
        assert!(matches!(
            SlotInfo::parse(&vec![b' '; MAX_BYTES + 1]),
            Err(SlotInfoError::TooLarge { .. })
        ));
    }
}
