//! The kernel command line: the `berth.*` keys init reads.

use std::path::Path;

/// Parsed `berth.*` settings from /proc/cmdline.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cmdline {
    /// `berth.hostname=NAME`
    pub hostname: Option<String>,
    /// `berth.root=GPT-NAME`: boot from that partition (else stay in the initramfs).
    pub root: Option<String>,
    /// `berth.verity.roothash=HEX`
    pub verity_roothash: Option<String>,
    /// `berth.verity.salt=HEX`
    pub verity_salt: Option<String>,
    /// `berth.verity.blocks=N`: 4 KiB data blocks; the hash tree follows them.
    pub verity_blocks: Option<u64>,
    /// `berth.start=NAME[,NAME...]` (repeatable): also start these services at boot
    /// though their definitions say `autostart = false` (like systemd.wants=).
    pub start: Vec<String>,
    /// `berth.slot=a|b`: GRUB booted this slot (absent when the kernel was booted
    /// directly: no slots then).
    pub slot: Option<String>,
    /// `berth.trial`: GRUB booted the slot on trial, having spent one of its tries.
    pub trial: bool,
    /// The kernel's own `panic=SECONDS` (positive: reboot after that long). A fatal
    /// stage 1 on a trial waits the same before its reboot, so one setting says how long
    /// a failed boot stays on the console.
    pub panic_seconds: Option<u64>,
}

impl Cmdline {
    pub fn read(proc_cmdline: &Path) -> std::io::Result<Self> {
        Ok(Self::parse(&std::fs::read_to_string(proc_cmdline)?))
    }

    /// Whitespace-separated `key=value` words; later words win, as in the kernel.
    /// (Quoted values with spaces are not needed by any berth.* key.)
    pub fn parse(text: &str) -> Self {
        let mut cmdline = Self::default();
        let value = |v: &str| (!v.is_empty()).then(|| v.to_string());
        for word in text.split_whitespace() {
            if word == berth_bootslot::grub::TRIAL_ARG {
                cmdline.trial = true;
                continue;
            }
            let Some((key, v)) = word.split_once('=') else {
                continue;
            };
            match key {
                "berth.hostname" => cmdline.hostname = value(v),
                "berth.root" => cmdline.root = value(v),
                "berth.slot" => cmdline.slot = value(v),
                "berth.verity.roothash" => cmdline.verity_roothash = value(v),
                "berth.verity.salt" => cmdline.verity_salt = value(v),
                // A malformed number is kept as None; stage 1 then says what is missing.
                "berth.verity.blocks" => cmdline.verity_blocks = v.parse().ok(),
                "panic" => cmdline.panic_seconds = v.parse().ok().filter(|s| *s > 0),
                "berth.start" => cmdline
                    .start
                    .extend(v.split(',').filter(|n| !n.is_empty()).map(String::from)),
                _ => {}
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
    fn reads_root_and_verity() {
        let c = Cmdline::parse(
            "berth.root=ROOT-A berth.verity.roothash=ab12 berth.verity.salt=00ff berth.verity.blocks=4365",
        );
        assert_eq!(c.root.as_deref(), Some("ROOT-A"));
        assert_eq!(c.verity_roothash.as_deref(), Some("ab12"));
        assert_eq!(c.verity_salt.as_deref(), Some("00ff"));
        assert_eq!(c.verity_blocks, Some(4365));
        assert_eq!(Cmdline::parse("berth.verity.blocks=x").verity_blocks, None);
    }

    #[test]
    fn reads_the_slot_and_the_trial_flag() {
        let c = Cmdline::parse("panic=10 berth.root=ROOT-B berth.slot=b berth.trial\n");
        assert_eq!(c.slot.as_deref(), Some("b"));
        assert!(c.trial);
        let c = Cmdline::parse("berth.slot=a berth.trials");
        assert_eq!(c.slot.as_deref(), Some("a"));
        assert!(!c.trial);
    }

    #[test]
    fn reads_the_kernels_panic_timeout_last_one_wins() {
        let c = Cmdline::parse("panic=10 berth.slot=b panic=1");
        assert_eq!(c.panic_seconds, Some(1));
        // 0 (wait forever) and -1 (at once) are not waits a trial reboot takes.
        assert_eq!(Cmdline::parse("panic=0").panic_seconds, None);
        assert_eq!(Cmdline::parse("panic=-1").panic_seconds, None);
        assert_eq!(Cmdline::parse("quiet").panic_seconds, None);
    }

    #[test]
    fn start_accumulates() {
        let c = Cmdline::parse("berth.start=a,b berth.start=c berth.start=");
        assert_eq!(c.start, ["a", "b", "c"]);
    }

    #[test]
    fn empty_hostname_is_none() {
        assert_eq!(Cmdline::parse("berth.hostname=").hostname, None);
        assert_eq!(Cmdline::parse("").hostname, None);
    }
}
