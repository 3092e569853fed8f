//! The dm-verity hash tree of a root image, checked in user space: the tree against the
//! signed root hash, then each data block against the tree, so the apply path can check
//! every block of a new root before it is written, and read a written slot back.
//!
//! The format is the one `veritysetup format --no-superblock` writes and the kernel's
//! dm-verity reads (Documentation/admin-guide/device-mapper/verity.rst, "hash type 1"):
//! 4096-byte data and hash blocks, SHA-256, each hash over the salt then the block; a
//! hash block holds 128 hashes of 32 bytes, zero-padded; level 0 hashes the data blocks,
//! each level above hashes the one below, until a level is one block; on disk the levels
//! are stored top first; the root hash is the hash of that top block.

use sha2::{Digest, Sha256};

pub const BLOCK: usize = 4096;
const HASH: usize = 32;
const PER_BLOCK: usize = BLOCK / HASH;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerityError {
    #[error("the hash tree is {got} bytes; {data_blocks} data blocks need {want}")]
    TreeSize {
        got: u64,
        want: u64,
        data_blocks: u64,
    },
    #[error("the hash tree's top block does not hash to the signed root hash")]
    RootHash,
    #[error("hash block {block} (level {level}) does not match the level above it")]
    HashBlock { level: usize, block: u64 },
    #[error("data block {index} does not match the hash tree")]
    DataBlock { index: u64 },
    #[error("data block {index} is past the {data_blocks} the tree covers")]
    PastEnd { index: u64, data_blocks: u64 },
    #[error("a data block is {0} bytes, not {BLOCK}")]
    BlockSize(usize),
    #[error("{0} data blocks: a root image has at least 2")]
    TooSmall(u64),
    #[error("{0} data blocks: more than this machine can address")]
    TooLarge(u64),
}

/// Blocks per level, level 0 (hashing the data) first. One data block has no tree at
/// all (its hash is the root hash): not a root image, and refused by `Tree::verify`.
fn level_blocks(data_blocks: usize) -> Vec<usize> {
    let mut levels = Vec::new();
    let mut n = data_blocks;
    while n > 1 {
        n = n.div_ceil(PER_BLOCK);
        levels.push(n);
    }
    levels
}

/// The tree's size in bytes for `data_blocks` data blocks.
pub fn tree_bytes(data_blocks: u64) -> u64 {
    let Ok(n) = usize::try_from(data_blocks) else {
        return u64::MAX;
    };
    let blocks: usize = level_blocks(n).iter().sum();
    u64::try_from(blocks * BLOCK).unwrap_or(u64::MAX)
}

/// A hash tree checked against its root hash: it now decides which data blocks are good.
pub struct Tree {
    salt: Vec<u8>,
    data_blocks: u64,
    /// Where level 0 starts in `bytes` (the levels are stored top first).
    level0: usize,
    bytes: Vec<u8>,
}

fn hash(salt: &[u8], block: &[u8]) -> [u8; HASH] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

impl Tree {
    /// Checks the whole tree, top down, against `root_hash`.
    pub fn verify(
        root_hash: &[u8; HASH],
        salt: &[u8],
        data_blocks: u64,
        bytes: Vec<u8>,
    ) -> Result<Tree, VerityError> {
        if data_blocks < 2 {
            return Err(VerityError::TooSmall(data_blocks));
        }
        let n = usize::try_from(data_blocks).map_err(|_| VerityError::TooLarge(data_blocks))?;
        let levels = level_blocks(n);
        let want = tree_bytes(data_blocks);
        if bytes.len() as u64 != want {
            return Err(VerityError::TreeSize {
                got: bytes.len() as u64,
                want,
                data_blocks,
            });
        }
        // Start (in blocks) of each level, level 0 first, stored top first.
        let mut starts = vec![0usize; levels.len()];
        let mut at = 0;
        for (i, blocks) in levels.iter().enumerate().rev() {
            starts[i] = at;
            at += blocks;
        }
        let block = |b: usize| &bytes[b * BLOCK..(b + 1) * BLOCK];
        let top = levels.len() - 1;
        if hash(salt, block(starts[top])) != *root_hash {
            return Err(VerityError::RootHash);
        }
        for level in (1..levels.len()).rev() {
            // Entries this level holds: the blocks of the level below.
            let entries = levels[level - 1];
            for b in 0..levels[level] {
                // Each block is hashed whole, padding included, by the level above (the
                // top by the root hash): only the hashes in use need reading.
                let content = block(starts[level] + b);
                let used = (entries - b * PER_BLOCK).min(PER_BLOCK) * HASH;
                for (i, stored) in content[..used].chunks(HASH).enumerate() {
                    let below = b * PER_BLOCK + i;
                    if hash(salt, block(starts[level - 1] + below)) != stored {
                        return Err(VerityError::HashBlock {
                            level: level - 1,
                            block: below as u64,
                        });
                    }
                }
            }
        }
        Ok(Tree {
            salt: salt.to_vec(),
            data_blocks,
            level0: starts[0] * BLOCK,
            bytes,
        })
    }

    pub fn data_blocks(&self) -> u64 {
        self.data_blocks
    }

    /// The tree's bytes, as they go after the data on the partition.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Checks data block `index` against its hash in level 0.
    pub fn check(&self, index: u64, block: &[u8]) -> Result<(), VerityError> {
        if block.len() != BLOCK {
            return Err(VerityError::BlockSize(block.len()));
        }
        if index >= self.data_blocks {
            return Err(VerityError::PastEnd {
                index,
                data_blocks: self.data_blocks,
            });
        }
        // Below data_blocks, which fit a usize (verify).
        let at = self.level0 + usize::try_from(index).unwrap_or(0) * HASH;
        if hash(&self.salt, block)[..] != self.bytes[at..at + HASH] {
            return Err(VerityError::DataBlock { index });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::veritysetup;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn veritysetups_trees_verify_and_so_does_every_block() {
        let salt = "da2d3d24bf701818c043437523dd8353aee5f885fd21623c153ddc22bb9189f6";
        // One hash block, exactly full, one more (two levels), and three levels.
        for blocks in [2, 128, 129, 128 * 128 + 3] {
            let (data, tree, root) = veritysetup(blocks, salt);
            assert_eq!(tree.len() as u64, tree_bytes(blocks), "{blocks} blocks");
            let t = Tree::verify(&root, &unhex(salt), blocks, tree).unwrap();
            for (i, block) in data.chunks(BLOCK).enumerate() {
                t.check(i as u64, block).unwrap();
            }
        }
    }

    #[test]
    fn a_changed_byte_anywhere_is_found() {
        let salt = "00112233";
        let blocks = 128 * 3 + 1;
        let (data, tree, root) = veritysetup(blocks, salt);
        let salt = unhex(salt);
        let t = Tree::verify(&root, &salt, blocks, tree.clone()).unwrap();
        let mut block = data[5 * BLOCK..6 * BLOCK].to_vec();
        block[100] ^= 1;
        assert_eq!(t.check(5, &block), Err(VerityError::DataBlock { index: 5 }));
        assert_eq!(
            t.check(blocks, &block),
            Err(VerityError::PastEnd {
                index: blocks,
                data_blocks: blocks
            })
        );
        assert_eq!(
            t.check(0, &block[1..]),
            Err(VerityError::BlockSize(BLOCK - 1))
        );
        // The top block, a level-0 hash, and the zero padding of the last level-0 block
        // (the top block, then level 0's four).
        let level0 = BLOCK;
        for (at, want) in [
            (10, VerityError::RootHash),
            (
                level0 + 2 * BLOCK + 7,
                VerityError::HashBlock { level: 0, block: 2 },
            ),
            (
                level0 + 3 * BLOCK + 40,
                VerityError::HashBlock { level: 0, block: 3 },
            ),
        ] {
            let mut bad = tree.clone();
            bad[at] ^= 1;
            let got = Tree::verify(&root, &salt, blocks, bad).err();
            assert_eq!(got, Some(want), "byte {at}");
        }
        let e = Tree::verify(&root, &salt, blocks, tree[..BLOCK].to_vec()).err();
        assert!(matches!(e, Some(VerityError::TreeSize { .. })), "{e:?}");
        let e = Tree::verify(&root, b"other salt", blocks, tree.clone()).err();
        assert_eq!(e, Some(VerityError::RootHash));
        let e = Tree::verify(&root, &salt, 1, tree).err();
        assert_eq!(e, Some(VerityError::TooSmall(1)));
        let e = Tree::verify(&root, &salt, blocks, Vec::new()).err();
        assert!(matches!(e, Some(VerityError::TreeSize { .. })), "{e:?}");
    }
}
