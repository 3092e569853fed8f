//! The kernel command line: the `berth.*` keys init reads.

use std::path::Path;

/// Parsed `berth.*` settings from /proc/cmdline.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cmdline {
    /// `berth.hostname=NAME`
    pub hostname: Option<String>,
}

impl Cmdline {
    pub fn read(proc_cmdline: &Path) -> std::io::Result<Self> {
        Ok(Self::parse(&std::fs::read_to_string(proc_cmdline)?))
    }

    /// Whitespace-separated `key=value` words; later words win, as in the kernel.
    /// (Quoted values with spaces are not needed by any berth.* key.)
    pub fn parse(text: &str) -> Self {
        let mut cmdline = Self::default();
        for word in text.split_whitespace() {
            if let Some(v) = word.strip_prefix("berth.hostname=") {
                cmdline.hostname = (!v.is_empty()).then(|| v.to_string());
            }
        }
        cmdline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_hostname_last_one_wins() {
        let c = Cmdline::parse("console=ttyS0 berth.hostname=a quiet berth.hostname=web-1\n");
        assert_eq!(c.hostname.as_deref(), Some("web-1"));
    }

    #[test]
    fn empty_hostname_is_none() {
        assert_eq!(Cmdline::parse("berth.hostname=").hostname, None);
        assert_eq!(Cmdline::parse("").hostname, None);
    }
}
