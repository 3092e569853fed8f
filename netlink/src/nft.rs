//! nftables rules, through Debian's `nft` binary (GPL-2, shipped beside ours, run, not
//! linked): nftables' own netlink protocol is expression bytecode per rule, and the only
//! Rust crates that speak it are GPL-3 or link GPL libnftnl. Used by the daemon (NAT and
//! the bridge's guards) and the agent (SSH's forwarding fence).

use std::io::Write;
use std::process::{Command, Stdio};

/// Runs `nft -f -` with `script`: one transaction, all of it or nothing.
pub fn apply(script: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        if let Err(e) = stdin.write_all(script.as_bytes()) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("writing to nft: {e}"));
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("running nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft refused the ruleset: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
