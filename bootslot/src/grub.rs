//! The GRUB script both firmware paths run (grub.cfg on the ESP). It does what
//! [`BootState::pick`](crate::state::BootState::pick) does, in GRUB's language, which
//! has tests but no arithmetic: the trial's tries are counted down one `elif` per
//! value. Then it sources the picked slot's `boot.cfg` (its command line, with that
//! slot's root hash, written with the slot's kernel and initramfs) and boots.
//!
//! The environment block is saved before the kernel is loaded, so a kernel that never
//! reaches init has spent its try; one GRUB cannot load or start (Secure Boot refuses
//! its signature) reboots, spending the next.

use std::fmt::Write as _;

use crate::state::{Slot, MAX_TRIES, OUT_OF_TRIES};

/// Where the ESP keeps Berth's files, relative to its root.
pub const DIR: &str = "berth";
/// Where init mounts the ESP on a running machine (vfat, root only, no exec).
pub const ESP_MOUNT: &str = "/run/berth/esp";
/// The environment block, under `DIR`.
pub const ENV_FILE: &str = "grubenv";
/// Each slot's command line, under `DIR/<slot>/`: `set berth_cmdline="..."`.
pub const SLOT_CONFIG: &str = "boot.cfg";
/// Added to the command line of a trial boot (after `berth.slot=`), so that stage 1,
/// before any disk is read, knows a failure should reboot (spending the next try)
/// rather than halt with the error on the console.
pub const TRIAL_ARG: &str = "berth.trial";

/// The whole grub.cfg. `$root` is the ESP when it runs (GRUB's prefix device).
pub fn config() -> String {
    let env = format!("($root)/{DIR}/{ENV_FILE}");
    let vars = "berth_trial berth_tries berth_failed berth_failed_why berth_failed_told";
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Berth: picks the boot slot, spends a trial's try, boots."
    );
    let _ = writeln!(s, "set timeout=0");
    let _ = writeln!(s, "load_env --file {env} berth_default {vars}");
    let _ = writeln!(s, "set slot={}", Slot::A.name());
    let _ = writeln!(s, "set berth_trial_arg=");
    let _ = writeln!(
        s,
        "if [ \"$berth_default\" = {b} ]; then set slot={b}; fi",
        b = Slot::B.name()
    );
    let _ = writeln!(s, "if [ -n \"$berth_trial\" ]; then");
    for n in (1..=MAX_TRIES).rev() {
        let kw = if n == MAX_TRIES { "if" } else { "elif" };
        let _ = writeln!(
            s,
            "  {kw} [ \"$berth_tries\" = {n} ]; then set berth_tries={}; set slot=\"$berth_trial\"; set berth_trial_arg={TRIAL_ARG}",
            n - 1
        );
    }
    let _ = writeln!(s, "  else");
    let _ = writeln!(s, "    set berth_failed=\"$berth_trial\"");
    let _ = writeln!(s, "    set berth_failed_why={OUT_OF_TRIES}");
    let _ = writeln!(s, "    set berth_failed_told=");
    let _ = writeln!(s, "    set berth_trial=");
    let _ = writeln!(s, "    set berth_tries=");
    let _ = writeln!(s, "  fi");
    let _ = writeln!(s, "  save_env --file {env} {vars}");
    let _ = writeln!(s, "fi");
    let _ = writeln!(s, "source ($root)/{DIR}/$slot/{SLOT_CONFIG}");
    let _ = writeln!(
        s,
        "linux ($root)/{DIR}/$slot/vmlinuz $berth_cmdline berth.slot=$slot $berth_trial_arg"
    );
    let _ = writeln!(s, "initrd ($root)/{DIR}/$slot/initrd.img");
    let _ = writeln!(s, "boot");
    // Only reached when the kernel could not be loaded or started (a file missing, or a
    // signature Secure Boot refuses): the try is spent, so a reboot tries again or falls
    // back, where a GRUB prompt would wait forever.
    let _ = writeln!(s, "echo \"berth: slot $slot did not boot; rebooting\"");
    let _ = writeln!(s, "sleep 5");
    let _ = writeln!(s, "reboot");
    s
}

/// A slot's kernel command line: `base` (console, panic=10, ...), then the slot's own
/// words (its root partition and the dm-verity parameters stage 1 checks it with), then
/// `append`.
pub fn slot_cmdline(
    base: &str,
    slot: crate::Slot,
    root_hash: &str,
    salt: &str,
    data_blocks: u64,
    append: &str,
) -> String {
    let mut line = format!(
        "{base} berth.root={} berth.verity.roothash={root_hash} berth.verity.salt={salt} \
         berth.verity.blocks={data_blocks}",
        slot.partlabel()
    );
    if !append.is_empty() {
        line.push(' ');
        line.push_str(append);
    }
    line
}

/// A slot's `boot.cfg`: its kernel command line. GRUB's double quotes keep `$` and
/// `\` special, so a command line holding either (or a quote) is refused.
pub fn slot_config(cmdline: &str) -> Option<String> {
    if cmdline
        .chars()
        .any(|c| matches!(c, '"' | '$' | '\\') || c.is_control())
    {
        return None;
    }
    Some(format!("set berth_cmdline=\"{cmdline}\"\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_counts_every_try_down_and_saves_before_booting() {
        let cfg = config();
        for n in 1..=MAX_TRIES {
            let line = format!(
                "[ \"$berth_tries\" = {n} ]; then set berth_tries={};",
                n - 1
            );
            assert!(cfg.contains(&line), "no step for {n}:\n{cfg}");
        }
        assert_eq!(cfg.matches("set berth_trial_arg=berth.trial").count(), 9);
        assert!(cfg.contains("berth.slot=$slot $berth_trial_arg\n"));
        let save = cfg.find("save_env").unwrap();
        assert!(save < cfg.find("\nlinux ").unwrap());
        assert!(cfg.find("load_env").unwrap() < save);
        assert!(
            cfg.trim_end().ends_with(
                "boot\necho \"berth: slot $slot did not boot; rebooting\"\nsleep 5\nreboot"
            ),
            "{cfg}"
        );
        assert!(cfg.contains("set berth_failed_why=tries"));
        // Every variable the state keeps is loaded.
        for var in [
            "berth_default",
            "berth_trial",
            "berth_tries",
            "berth_failed",
            "berth_failed_why",
            "berth_failed_told",
        ] {
            assert!(cfg.contains(var), "{var}");
        }
    }

    #[test]
    fn a_command_line_grub_would_expand_is_refused() {
        assert_eq!(
            slot_config("console=ttyS0 berth.root=ROOT-B panic=10").unwrap(),
            "set berth_cmdline=\"console=ttyS0 berth.root=ROOT-B panic=10\"\n"
        );
        for bad in ["a=\"b\"", "x=$y", "a\\b", "a\nb"] {
            assert!(slot_config(bad).is_none(), "{bad:?}");
        }
    }
}
