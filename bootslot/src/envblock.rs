//! GRUB's environment block (grub-core/lib/envblk.c, the format `grub-editenv` and
//! GRUB's `load_env`/`save_env` share): a fixed-size file that starts with the line
//! `# GRUB Environment Block`, then `name=value` lines, then `#` up to its size. In a
//! value, a backslash escapes the next character (GRUB writes `\\` and `\` + newline).
//!
//! `save_env` rewrites the block in place and never changes its size, so the file is
//! made once at its final size. Berth's is one 512-byte sector (the ESP's FAT has
//! 512-byte clusters): a sector is what a disk writes whole, so a power cut leaves the
//! old block or the new one, never half of each.
//!
//! Written by hand: no crate reads this format, and it is a few dozen lines.

/// The first line of every block.
pub const SIGNATURE: &str = "# GRUB Environment Block\n";
/// Berth's block: one sector.
pub const SIZE: usize = 512;
/// The largest block read: GRUB's own default is 1024 bytes.
pub const MAX_SIZE: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    #[error("the environment block is {size} bytes, over {MAX_SIZE}")]
    TooLarge { size: usize },
    #[error("no GRUB environment block signature at the start")]
    NoSignature,
    #[error("line {line} of the environment block is not name=value")]
    BadLine { line: usize },
    #[error("variable name {name:?} is not letters, digits and _")]
    BadName { name: String },
    #[error("the value of {name} holds a NUL or a character GRUB would have to escape")]
    BadValue { name: String },
    #[error("the variables take {needed} bytes, and the block holds {size}")]
    Full { needed: usize, size: usize },
}

/// The variables of a block, in their order (GRUB keeps the order it found).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvBlock {
    vars: Vec<(String, String)>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl EnvBlock {
    /// Parses a whole block, as read from its file.
    pub fn parse(bytes: &[u8]) -> Result<EnvBlock, EnvError> {
        if bytes.len() > MAX_SIZE {
            return Err(EnvError::TooLarge { size: bytes.len() });
        }
        let body = bytes
            .strip_prefix(SIGNATURE.as_bytes())
            .ok_or(EnvError::NoSignature)?;
        let mut vars = Vec::new();
        for (i, raw) in body.split(|b| *b == b'\n').enumerate() {
            let line = i + 2;
            // Padding: the rest of the block is '#' (a comment line to GRUB).
            if raw.is_empty() || raw[0] == b'#' {
                continue;
            }
            let text = std::str::from_utf8(raw).map_err(|_| EnvError::BadLine { line })?;
            let (name, value) = text.split_once('=').ok_or(EnvError::BadLine { line })?;
            if !valid_name(name) {
                return Err(EnvError::BadName { name: name.into() });
            }
            vars.push((name.to_string(), unescape(value)));
        }
        Ok(EnvBlock { vars })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `name`, in place when it exists. An empty value is kept as `name=`, as
    /// GRUB's `save_env` writes an unset variable.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), EnvError> {
        if !valid_name(name) {
            return Err(EnvError::BadName { name: name.into() });
        }
        // Berth's values are slot names, numbers and short reasons: nothing that needs
        // escaping, and nothing GRUB's `[ ]` tests would read differently.
        if value.chars().any(|c| c.is_control() || c == '\\') {
            return Err(EnvError::BadValue { name: name.into() });
        }
        match self.vars.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value.to_string(),
            None => self.vars.push((name.to_string(), value.to_string())),
        }
        Ok(())
    }

    /// The block as `size` bytes: signature, variables, `#` padding.
    pub fn to_bytes(&self, size: usize) -> Result<Vec<u8>, EnvError> {
        let mut out = SIGNATURE.as_bytes().to_vec();
        for (n, v) in &self.vars {
            out.extend_from_slice(n.as_bytes());
            out.push(b'=');
            out.extend_from_slice(v.as_bytes());
            out.push(b'\n');
        }
        if out.len() > size {
            return Err(EnvError::Full {
                needed: out.len(),
                size,
            });
        }
        out.resize(size, b'#');
        Ok(out)
    }
}

/// GRUB's escapes: a backslash keeps the next character as it is.
fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_at_a_fixed_size() {
        let mut env = EnvBlock::default();
        env.set("berth_default", "a").unwrap();
        env.set("berth_trial", "b").unwrap();
        env.set("berth_tries", "3").unwrap();
        env.set("berth_trial", "").unwrap();
        let bytes = env.to_bytes(SIZE).unwrap();
        assert_eq!(bytes.len(), SIZE);
        assert!(bytes.starts_with(SIGNATURE.as_bytes()));
        assert!(bytes.ends_with(b"###"));
        let back = EnvBlock::parse(&bytes).unwrap();
        assert_eq!(back, env);
        assert_eq!(back.get("berth_trial"), Some(""));
        assert_eq!(back.get("berth_tries"), Some("3"));
        assert_eq!(back.get("nothing"), None);
    }

    #[test]
    fn reads_what_grub_editenv_writes() {
        // `grub-editenv F create; grub-editenv F set saved_entry=x 'msg=a\b'`: GRUB's
        // own block, 1024 bytes, with an escaped backslash.
        let mut text = format!("{SIGNATURE}saved_entry=x\nmsg=a\\\\b\n");
        text.push_str(&"#".repeat(1024 - text.len()));
        let env = EnvBlock::parse(text.as_bytes()).unwrap();
        assert_eq!(env.get("saved_entry"), Some("x"));
        assert_eq!(env.get("msg"), Some("a\\b"));
    }

    #[test]
    fn refuses_what_is_not_a_block() {
        assert_eq!(EnvBlock::parse(b"garbage"), Err(EnvError::NoSignature));
        assert_eq!(
            EnvBlock::parse(&vec![b'#'; MAX_SIZE + 1]),
            Err(EnvError::TooLarge { size: MAX_SIZE + 1 })
        );
        let torn = format!("{SIGNATURE}berth_default\n");
        assert_eq!(
            EnvBlock::parse(torn.as_bytes()),
            Err(EnvError::BadLine { line: 2 })
        );
        let mut env = EnvBlock::default();
        assert!(env.set("bad name", "x").is_err());
        assert!(env.set("x", "two\nlines").is_err());
        env.set("long", &"x".repeat(600)).unwrap();
        assert!(matches!(env.to_bytes(SIZE), Err(EnvError::Full { .. })));
    }
}
