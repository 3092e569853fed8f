//! `berth-agent sshd`: the `berth-sshd` service. With no key configured it says so and
//! exits 0 (the service is then done: SSH is off). Otherwise it makes the host keys on
//! the first boot (kept under /var), prints their fingerprints on the console between
//! the markers cloud images use (so `get-console-output` can check them), writes
//! sshd's configuration, fences what the sessions may forward, and becomes sshd.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use base64::Engine;

use crate::inroot::Root;

const SSHD: &str = "/usr/sbin/sshd";
const KEYGEN: &str = "/usr/bin/ssh-keygen";
/// Host keys, made once per machine (a new /var is a new machine).
const HOST_KEY_DIR: &str = "/var/lib/berth/ssh";
/// Written at every start: the bridge's pool may have changed.
const CONFIG: &str = "/run/berth/ssh/sshd_config";
/// Where Debian's sshd keeps the last login of each user.
const LASTLOG: &str = "/var/log/lastlog";
/// Debian's sshd is built with this privilege separation directory.
const PRIVSEP_DIR: &str = "/run/sshd";
/// The host key types made: Ed25519 for every OpenSSH client of the last decade, ECDSA
/// P-256 for the older and the FIPS-minded. No RSA: its key takes seconds to make on a
/// small machine's first boot, and no current client needs it.
const HOST_KEY_TYPES: [(&str, &str); 2] = [("ed25519", "ED25519"), ("ecdsa", "ECDSA")];
/// The nftables table that keeps the sessions' forwarding inside the bridge's pool.
const FENCE_TABLE: &str = "berth_ssh";

fn say(msg: &str) {
    crate::announce(&format!("ssh: {msg}"));
}

/// Runs the service; returns only when sshd could not be started, or SSH is off.
pub fn run() -> ExitCode {
    let root = match Root::open(Path::new("/")) {
        Ok(r) => r,
        Err(e) => {
            say(&format!("{e}"));
            return ExitCode::FAILURE;
        }
    };
    let keys = match root.read(Path::new(super::AUTHORIZED_KEYS), 1 << 20) {
        Ok(k) => String::from_utf8_lossy(&k)
            .lines()
            .filter(|l| !l.is_empty())
            .count(),
        Err(e) if e.is_not_found() => 0,
        Err(e) => {
            say(&format!("{e}; SSH stays off"));
            0
        }
    };
    if keys == 0 {
        say("off (no key in the user-data's ssh_authorized_keys or the cloud's metadata)");
        berth_net::notify("READY=1\nSTATUS=off: no SSH key configured\n");
        return ExitCode::SUCCESS;
    }
    match prepare(&root) {
        Ok(config) => {
            let e = Command::new(SSHD)
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdin(Stdio::null())
                .exec();
            say(&format!("running {SSHD}: {e}"));
            ExitCode::FAILURE
        }
        Err(e) => {
            say(&format!("not started: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// Host keys, fingerprints, the forwarding fence, the configuration; its path.
fn prepare(root: &Root) -> Result<PathBuf, String> {
    std::fs::create_dir_all(PRIVSEP_DIR).map_err(|e| format!("{PRIVSEP_DIR}: {e}"))?;
    // Debian's sshd records each terminal login there (and complains to the session
    // when it cannot): the login record, kept on /var.
    if let Err(e) = root.append(Path::new(LASTLOG), b"", 0o644, None) {
        say(&format!("{LASTLOG}: {e}"));
    }
    let mut public = Vec::new();
    for (kind, label) in HOST_KEY_TYPES {
        let path = host_key(root, kind)?;
        let line = root
            .read(&path.with_extension("pub"), 64 * 1024)
            .map_err(|e| e.to_string())?;
        public.push((String::from_utf8_lossy(&line).trim().to_string(), label));
    }
    print_host_keys(&public);
    let forwarding = match fence() {
        Ok(()) => "local",
        Err(e) => {
            say(&format!(
                "forwarding is off: the fence that keeps it to the containers' pool failed: {e}"
            ));
            "no"
        }
    };
    let text = config(forwarding);
    root.replace(Path::new(CONFIG), text.as_bytes(), 0o600, None)
        .map_err(|e| e.to_string())?;
    Ok(PathBuf::from(CONFIG))
}

/// The private key of `kind` under [`HOST_KEY_DIR`], made by ssh-keygen (into a
/// scratch directory on /run) when it or its public half is missing, then written
/// durably through the one helper: the public half first, so that a cut in between
/// leaves no private key without its public one (both are made again).
fn host_key(root: &Root, kind: &str) -> Result<PathBuf, String> {
    let key = Path::new(HOST_KEY_DIR).join(format!("ssh_host_{kind}_key"));
    let public = key.with_extension("pub");
    if key.is_file() && public.is_file() {
        return Ok(key);
    }
    let scratch = Path::new("/run/berth/ssh/new-host-key");
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let made = scratch.join("key");
    let out = Command::new(KEYGEN)
        .args(["-q", "-t", kind, "-N", "", "-C", "", "-f"])
        .arg(&made)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {KEYGEN}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{KEYGEN} -t {kind}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let read = |p: &Path| root.read(p, 64 * 1024).map_err(|e| e.to_string());
    let (private_text, public_text) = (read(&made)?, read(&made.with_extension("pub"))?);
    let _ = std::fs::remove_dir_all(scratch);
    root.replace(&public, &public_text, 0o644, None)
        .and_then(|()| root.replace(&key, &private_text, 0o600, None))
        .map_err(|e| e.to_string())?;
    say(&format!("made the {kind} host key"));
    Ok(key)
}

/// The fingerprints (as `ssh-keygen -l` prints them) and the public keys, between the
/// markers cloud-init prints, on the console and in the log.
fn print_host_keys(public: &[(String, &str)]) {
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut text = String::from("-----BEGIN SSH HOST KEY FINGERPRINTS-----\n");
    for (line, label) in public {
        let blob = line
            .split_whitespace()
            .nth(1)
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .unwrap_or_default();
        text += &format!(
            "{} {} root@{host} ({label})\n",
            key_bits(&blob, label),
            super::fingerprint(&blob)
        );
    }
    text += "-----END SSH HOST KEY FINGERPRINTS-----\n-----BEGIN SSH HOST KEY KEYS-----\n";
    for (line, _) in public {
        text += line;
        text += "\n";
    }
    text += "-----END SSH HOST KEY KEYS-----\n";
    eprint!("{text}");
    if let Ok(mut c) = std::fs::OpenOptions::new().write(true).open("/dev/console") {
        let _ = c.write_all(text.as_bytes());
    }
}

/// The size ssh-keygen prints for the two key types made here.
fn key_bits(blob: &[u8], label: &str) -> u32 {
    match label {
        "ECDSA" if blob.windows(9).any(|w| w == b"nistp384") => 384,
        "ECDSA" if blob.windows(9).any(|w| w == b"nistp521") => 521,
        _ => 256,
    }
}

/// sshd's configuration: public keys only, root's login only (its shell runs berthctl),
/// nothing forwarded but local TCP (`forwarding`: `local` or `no`; the fence keeps it
/// to the pool), no agent, X11, tunnel, stream-local or remote forwarding, no
/// subsystem (so no sftp, and scp's command is not a berthctl verb).
fn config(forwarding: &str) -> String {
    let host_keys: String = HOST_KEY_TYPES
        .iter()
        .map(|(kind, _)| format!("HostKey {HOST_KEY_DIR}/ssh_host_{kind}_key\n"))
        .collect();
    format!(
        "# Written by berth-agent at each start of berth-sshd; see docs/access.md.\n\
         Port 22\n\
         {host_keys}\
         AuthorizedKeysFile {keys}\n\
         AuthenticationMethods publickey\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         HostbasedAuthentication no\n\
         GSSAPIAuthentication no\n\
         KerberosAuthentication no\n\
         PermitEmptyPasswords no\n\
         PermitRootLogin prohibit-password\n\
         AllowUsers root\n\
         UsePAM no\n\
         AllowTcpForwarding {forwarding}\n\
         AllowAgentForwarding no\n\
         AllowStreamLocalForwarding no\n\
         GatewayPorts no\n\
         PermitListen none\n\
         PermitTunnel no\n\
         X11Forwarding no\n\
         PermitUserEnvironment no\n\
         PermitUserRC no\n\
         ExposeAuthInfo yes\n\
         PrintMotd no\n\
         PrintLastLog no\n\
         UseDNS no\n\
         DebianBanner no\n\
         PidFile none\n\
         LogLevel VERBOSE\n\
         MaxAuthTries 3\n\
         LoginGraceTime 30\n\
         ClientAliveInterval 60\n",
        keys = super::AUTHORIZED_KEYS,
    )
}

/// Keeps every connection the sessions open (local forwarding is sshd connecting out)
/// inside the containers' bridge pool, the bridge's own address excepted (that is the
/// host): an nftables rule on new connections from sockets of this service's cgroup.
/// sshd's own `PermitOpen` matches host names as strings, one by one, so it cannot say
/// "this /16"; the kernel can.
fn fence() -> Result<(), String> {
    let bridge = berth_schema::bridge::load_config(Path::new(berth_schema::bridge::CONFIG_PATH))?;
    let pool = berth_schema::bridge::Pool::parse(&bridge.subnet)?;
    let name_ok = !bridge.name.is_empty()
        && bridge.name.len() < 16
        && bridge
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !name_ok {
        return Err(format!(
            "bridge name {:?} is not an interface name",
            bridge.name
        ));
    }
    let cgroup = own_cgroup()?;
    let rules = fence_rules(&cgroup, &pool, &bridge.name);
    berth_netlink::nft::apply(&rules)
}

/// This process's cgroup v2 path, relative to the hierarchy's root.
fn own_cgroup() -> Result<String, String> {
    let text = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("/proc/self/cgroup: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::/"))
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .ok_or_else(|| format!("no cgroup v2 path in /proc/self/cgroup: {text:?}"))
}

/// The fence's table, replaced whole. `socket cgroupv2 level N PATH` matches a socket
/// made by any process under PATH (N its depth), so sshd's session children are in.
/// Its input chain keeps the containers on the bridge away from sshd: an operator's
/// way in is not theirs.
fn fence_rules(cgroup: &str, pool: &berth_schema::bridge::Pool, bridge: &str) -> String {
    let level = cgroup.split('/').count();
    let matches = format!("ct state new socket cgroupv2 level {level} \"{cgroup}\"");
    format!(
        "table inet {FENCE_TABLE}\n\
         delete table inet {FENCE_TABLE}\n\
         table inet {FENCE_TABLE} {{\n\
         \tchain out {{\n\
         \t\ttype filter hook output priority filter; policy accept;\n\
         \t\t{matches} meta nfproto ipv6 reject\n\
         \t\t{matches} ip daddr != {pool} reject\n\
         \t\t{matches} ip daddr {gateway} reject\n\
         \t}}\n\
         \tchain containers_in {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tiifname \"{bridge}\" tcp dport 22 reject with tcp reset\n\
         \t}}\n\
         }}\n",
        pool = pool.text(),
        gateway = pool.gateway(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_takes_keys_only_and_forwards_local_tcp_at_most() {
        let c = config("local");
        for line in [
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "AuthenticationMethods publickey",
            "AllowTcpForwarding local",
            "PermitListen none",
            "X11Forwarding no",
            "AllowAgentForwarding no",
            "AuthorizedKeysFile /run/berth/ssh/authorized_keys",
            "UsePAM no",
        ] {
            assert!(c.lines().any(|l| l == line), "{line} missing:\n{c}");
        }
        assert!(!c.contains("Subsystem"), "{c}");
        assert!(config("no").contains("AllowTcpForwarding no\n"));
    }

    #[test]
    fn the_fence_names_the_service_cgroup_and_the_pool() {
        let pool = berth_schema::bridge::Pool::parse("10.88.0.0/16").unwrap();
        let r = fence_rules("berth/berth-sshd", &pool, "berth0");
        assert!(
            r.contains(
                "socket cgroupv2 level 2 \"berth/berth-sshd\" ip daddr != 10.88.0.0/16 reject"
            ),
            "{r}"
        );
        assert!(r.contains("ip daddr 10.88.0.1 reject"), "{r}");
        assert!(r.contains("meta nfproto ipv6 reject"), "{r}");
        assert!(r.contains("iifname \"berth0\" tcp dport 22 reject"), "{r}");
    }
}
