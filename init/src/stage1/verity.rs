//! dm-verity for the root: the table from the command line's root hash, salt and block
//! count (the hash tree is appended to the data on the same partition, no superblock,
//! as image-build writes it), loaded through the device-mapper ioctls.

use std::path::PathBuf;

use crate::cmdline::Cmdline;
use crate::stage1::root::Partition;
use crate::sys::dm;

/// Data and hash block size image-build uses.
pub const BLOCK: u64 = 4096;
const SECTORS_PER_BLOCK: u64 = BLOCK / 512;
pub const DEVICE_NAME: &str = "root";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityParams {
    pub root_hash: String,
    pub salt: String,
    pub data_blocks: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerityError {
    #[error("dm-verity: the kernel command line lacks {0}: the root cannot be verified, so it is not mounted")]
    Missing(&'static str),
    #[error("dm-verity: {key}={value:?} is not lowercase hex of {len} characters")]
    BadHex {
        key: &'static str,
        value: String,
        len: usize,
    },
    #[error("dm-verity: opening /dev/mapper/control: {0}")]
    Control(String),
    #[error("dm-verity: setting up {partition} ({dev}): {errno}")]
    Setup {
        partition: String,
        dev: String,
        errno: nix::errno::Errno,
    },
}

impl VerityParams {
    pub fn from_cmdline(c: &Cmdline) -> Result<Self, VerityError> {
        let root_hash = c
            .verity_roothash
            .clone()
            .ok_or(VerityError::Missing("berth.verity.roothash"))?;
        let salt = c
            .verity_salt
            .clone()
            .ok_or(VerityError::Missing("berth.verity.salt"))?;
        let data_blocks = c
            .verity_blocks
            .ok_or(VerityError::Missing("berth.verity.blocks"))?;
        check_hex("berth.verity.roothash", &root_hash, Some(64))?;
        check_hex("berth.verity.salt", &salt, None)?;
        Ok(Self {
            root_hash,
            salt,
            data_blocks,
        })
    }

    /// The verity target's parameters (Documentation/admin-guide/device-mapper/verity.rst):
    /// version, data and hash devices, block sizes, data block count, hash start block,
    /// algorithm, root digest, salt. The hash tree starts right after the data.
    pub fn table(&self, major: u32, minor: u32) -> String {
        let dev = format!("{major}:{minor}");
        format!(
            "1 {dev} {dev} {BLOCK} {BLOCK} {n} {n} sha256 {} {}",
            self.root_hash,
            self.salt,
            n = self.data_blocks
        )
    }
}

fn check_hex(key: &'static str, value: &str, len: Option<usize>) -> Result<(), VerityError> {
    let hex = !value.is_empty()
        && value.len().is_multiple_of(2)
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex || len.is_some_and(|l| value.len() != l) {
        return Err(VerityError::BadHex {
            key,
            value: value.to_string(),
            len: len.unwrap_or(value.len()),
        });
    }
    Ok(())
}

/// Creates /dev/mapper's `root` over `part`; returns the verified device's node.
pub fn open(part: &Partition, params: &VerityParams) -> Result<PathBuf, VerityError> {
    let control = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mapper/control")
        .map_err(|e| VerityError::Control(e.to_string()))?;
    let table = params.table(part.major, part.minor);
    let target = dm::Target {
        start_sector: 0,
        sectors: params.data_blocks * SECTORS_PER_BLOCK,
        kind: "verity",
        params: &table,
    };
    let uuid = format!("BERTH-VERITY-{}", part.label);
    let (_, minor) =
        dm::create_readonly(&control, DEVICE_NAME, &uuid, &target).map_err(|errno| {
            VerityError::Setup {
                partition: part.label.clone(),
                dev: part.dev_path().display().to_string(),
                errno,
            }
        })?;
    Ok(PathBuf::from(format!("/dev/dm-{minor}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmdline(text: &str) -> Cmdline {
        Cmdline::parse(text)
    }

    #[test]
    fn builds_the_table() {
        let hash = "ab".repeat(32);
        let c = cmdline(&format!(
            "berth.verity.roothash={hash} berth.verity.salt=00ff berth.verity.blocks=10"
        ));
        let p = VerityParams::from_cmdline(&c).unwrap();
        assert_eq!(
            p.table(254, 2),
            format!("1 254:2 254:2 4096 4096 10 10 sha256 {hash} 00ff")
        );
    }

    #[test]
    fn refuses_missing_or_bad_parameters() {
        let hash = "ab".repeat(32);
        assert_eq!(
            VerityParams::from_cmdline(&cmdline("berth.verity.salt=00 berth.verity.blocks=1")),
            Err(VerityError::Missing("berth.verity.roothash"))
        );
        let bad = VerityParams::from_cmdline(&cmdline(&format!(
            "berth.verity.roothash={hash}0 berth.verity.salt=00 berth.verity.blocks=1"
        )));
        assert!(matches!(bad, Err(VerityError::BadHex { .. })));
        let bad_salt = VerityParams::from_cmdline(&cmdline(&format!(
            "berth.verity.roothash={hash} berth.verity.salt=0g berth.verity.blocks=1"
        )));
        assert!(matches!(bad_salt, Err(VerityError::BadHex { .. })));
        assert!(VerityError::Missing("x")
            .to_string()
            .starts_with("dm-verity:"));
    }
}
