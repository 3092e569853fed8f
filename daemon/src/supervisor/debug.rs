//! `berthctl debug`: the break-glass container. Privileged, in the host's pid, network,
//! ipc and uts namespaces, with the host's root read-only at /host (its /etc and /run
//! too) and /var read-write at /host/var. It is created and never started: its init
//! waits for a `start` that never comes, holding the namespaces and the mounts, and
//! berthctl runs the operator's commands in it with `berth-runtime exec` (a terminal,
//! the exit code, as `exec` has them). Nothing is declared or kept: the container goes
//! when berthctl removes it, when berthctl's process is gone (checked at every request
//! and wake-up), or when the daemon starts again (a leftover). Every session is said on
//! the console and in the daemon's log, with who opened it.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::process::Stdio;

use berth_control::ApiError;
use rustix::event::{PollFd, PollFlags};

use crate::declaration::Declaration;

use super::{remove_leftovers, say, Supervisor};

/// What `berthctl debug` runs when it names no image.
pub const DEFAULT_IMAGE: &str = "berth.local/busybox:latest";
/// Debug containers' names begin so (and no declared container's may: the declaration
/// parser refuses them).
pub const PREFIX: &str = crate::declaration::DEBUG_PREFIX;
/// The program the never-started init would run: it must exist when the container is
/// created, in any image, and /host/init (the host's own init) always does.
const NEVER_RUN: &str = "/host/init";

impl Supervisor {
    pub(super) fn debug_create(
        &mut self,
        name: &str,
        image: &str,
        who: &str,
        client: u32,
    ) -> Result<(), ApiError> {
        self.reap_debug();
        if !name.starts_with(PREFIX) {
            return Err(ApiError::Invalid(format!(
                "a debug container's name begins with {PREFIX:?}: {name:?}"
            )));
        }
        if self.containers.contains_key(name) || self.debug.contains_key(name) {
            return Err(ApiError::AlreadyExists(format!(
                "a container named {name:?} exists"
            )));
        }
        let pid = rustix::process::Pid::from_raw(i32::try_from(client).unwrap_or(0))
            .ok_or_else(|| ApiError::Invalid(format!("client pid {client}")))?;
        let client_fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
            .map_err(|e| ApiError::Invalid(format!("client pid {client}: {e}")))?;
        let image = if image.is_empty() {
            DEFAULT_IMAGE
        } else {
            image
        };
        let text = format!(
            "image = {}\nprivileged = true\nnetwork = \"host\"\nallow_metadata = true\n\
             restart = \"no\"\ncommand = [\"{NEVER_RUN}\"]\n",
            serde_json::to_string(image).unwrap_or_default()
        );
        // Parsed under a plain name (the debug- prefix is refused to declarations), then
        // given its own.
        let mut decl = Declaration::parse("debug", &text, std::path::Path::new("(berthctl debug)"))
            .map_err(|e| ApiError::Invalid(e.to_string()))?;
        decl.name = name.to_string();
        if !crate::declaration::valid_name(name) {
            return Err(ApiError::Invalid(format!(
                "{name:?} is not a container name"
            )));
        }
        self.require_stored(image)?;
        let by = describe(who);
        crate::launch::create_debug(&self.paths, &decl, self.cgroup_parent.as_deref()).map_err(
            |e| {
                remove_leftovers(&self.paths, name);
                ApiError::Failed(format!("debug container {name}: {e}"))
            },
        )?;
        announce(&format!(
            "debug session {name} opened ({image}, privileged, host namespaces) by {by}"
        ));
        self.debug.insert(name.to_string(), client_fd);
        Ok(())
    }

    /// A debug image must be in the store already: a pull here would hold the daemon's
    /// loop (every restart and stop) for as long as it takes.
    fn require_stored(&self, image: &str) -> Result<(), ApiError> {
        let store = berth_store::store::Store::open(&self.paths.store, Default::default())
            .map_err(|e| ApiError::Failed(e.to_string()))?;
        let _lock = store
            .lock(berth_store::store::LockKind::Shared)
            .map_err(|e| ApiError::Failed(e.to_string()))?;
        match store.find(image) {
            Ok(_) => Ok(()),
            Err(berth_store::store::StoreError::NoSuchImage(_)) => Err(ApiError::NotFound(
                format!("image {image:?} is not on this machine: `berthctl pull {image}` first"),
            )),
            Err(e) => Err(ApiError::Failed(e.to_string())),
        }
    }

    pub(super) fn debug_remove(&mut self, name: &str) -> Result<(), ApiError> {
        if self.debug.remove(name).is_none() {
            return Err(ApiError::NotFound(format!(
                "no debug container named {name:?}"
            )));
        }
        self.remove_debug(name, "closed");
        Ok(())
    }

    /// Removes the debug containers whose berthctl is gone.
    pub(super) fn reap_debug(&mut self) {
        let gone: Vec<String> = self
            .debug
            .iter()
            .filter(|(_, fd)| exited(fd))
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            self.debug.remove(&name);
            self.remove_debug(&name, "ended (its berthctl is gone)");
        }
    }

    /// Debug containers an earlier daemon left (it died with sessions open): their
    /// berthctl cannot reach them any more.
    pub(super) fn remove_stale_debug(&self) {
        let Ok(entries) = std::fs::read_dir(&self.paths.runtime_root) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(PREFIX) && !self.containers.contains_key(&name) {
                self.remove_debug(&name, "ended (left by an earlier daemon)");
            }
        }
    }

    pub(super) fn remove_debug(&self, name: &str, how: &str) {
        crate::launch::delete(&self.paths, name);
        remove_leftovers(&self.paths, name);
        announce(&format!("debug session {name} {how}"));
    }
}

/// Whether the process behind a pidfd has exited (its pidfd is then readable).
fn exited(fd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
}

/// Said on the console too: a privileged session is something every operator of the
/// machine should be able to find.
fn announce(msg: &str) {
    say(msg);
    if let Ok(mut c) = std::fs::OpenOptions::new().write(true).open("/dev/console") {
        let _ = writeln!(c, "berth-daemon: {msg}");
    }
}

/// Who asked, from berthctl's `who` (lines `key TYPE BASE64` and `from ADDRESS PORT
/// ...`, as sshd told the session; none on the machine itself): the key's fingerprint
/// and the client's address. The text is the client's: only what parses is said.
fn describe(who: &str) -> String {
    let mut key = None;
    let mut from = None;
    for line in who.lines().take(4) {
        if let Some(k) = line.strip_prefix("key ") {
            key = k.split_whitespace().nth(1).and_then(fingerprint);
        } else if let Some(f) = line.strip_prefix("from ") {
            let addr = f.split_whitespace().next().unwrap_or_default();
            if !addr.is_empty()
                && addr.len() <= 45
                && addr
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() || c == '.' || c == ':')
            {
                from = Some(addr.to_string());
            }
        }
    }
    match (key, from) {
        (Some(k), Some(f)) => format!("SSH key {k} from {f}"),
        (Some(k), None) => format!("SSH key {k}"),
        (None, Some(f)) => format!("an SSH login from {f} (key unknown)"),
        (None, None) => "root on the machine".into(),
    }
}

/// OpenSSH's SHA256 fingerprint of a base64 key blob (as `ssh-keygen -l` prints it).
fn fingerprint(encoded: &str) -> Option<String> {
    use base64::Engine;
    use sha2::Digest;
    if encoded.len() > 8192 {
        return None;
    }
    let blob = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    Some(format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(sha2::Sha256::digest(blob))
    ))
}

/// The debug container's OCI config from the one `spec::build` made for its
/// declaration: the host's pid, network, ipc and uts namespaces (no hostname of its
/// own), the host's trees under /host.
pub fn host_view(mut cfg: serde_json::Value) -> serde_json::Value {
    if let Some(ns) = cfg["linux"]["namespaces"].as_array_mut() {
        ns.retain(|n| !matches!(n["type"].as_str(), Some("pid" | "network" | "ipc" | "uts")));
    }
    if let Some(o) = cfg.as_object_mut() {
        o.remove("hostname");
    }
    if let Some(mounts) = cfg["mounts"].as_array_mut() {
        for (source, destination, mode) in [
            ("/", "/host", "ro"),
            ("/etc", "/host/etc", "ro"),
            ("/run", "/host/run", "ro"),
            ("/var", "/host/var", "rw"),
        ] {
            mounts.push(serde_json::json!({
                "destination": destination,
                "type": "bind",
                "source": source,
                "options": ["bind", mode, "nosuid", "nodev"],
            }));
        }
    }
    cfg
}

/// `berth-runtime create` for a debug container. Its errors go to a file in the bundle's
/// directory, not a pipe: the container's init inherits that descriptor and holds it
/// as long as it waits, so a pipe would never reach its end.
pub fn create(paths: &super::Paths, name: &str, bundle: &std::path::Path) -> Result<(), String> {
    let errors = bundle.join("create.err");
    let file = std::fs::File::create(&errors).map_err(|e| format!("{}: {e}", errors.display()))?;
    let status = crate::launch::runtime(paths)
        .arg("create")
        .arg("--bundle")
        .arg(bundle)
        .arg(name)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .status()
        .map_err(|e| format!("running {}: {e}", paths.runtime.display()))?;
    if !status.success() {
        let said = std::fs::read(&errors).unwrap_or_default();
        let said = String::from_utf8_lossy(&said[..said.len().min(4096)]);
        return Err(format!("berth-runtime create: {}", said.trim()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_is_said_by_fingerprint_and_address_only() {
        let who = "key ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFEUKdzI6b2WCWo+iCT/FMefnoKrOglxS4fywEozLIdc\n\
                   from 10.0.2.2 51234 10.0.2.15 22\n";
        assert_eq!(
            describe(who),
            "SSH key SHA256:IPmkk1XTBH5MTLcyDD+SO4sH+DrwECbTyEEwM+E2Ec8 from 10.0.2.2"
        );
        assert_eq!(describe(""), "root on the machine");
        assert_eq!(
            describe("key ssh-ed25519 !!!\nfrom 10.0.2.2;reboot 1"),
            "root on the machine"
        );
    }

    #[test]
    fn the_host_view_shares_namespaces_and_mounts_the_host() {
        let cfg = serde_json::json!({
            "hostname": "debug-1",
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "linux": {"namespaces": [
                {"type": "pid"}, {"type": "mount"}, {"type": "network"},
                {"type": "ipc"}, {"type": "uts"}, {"type": "cgroup"}
            ]}
        });
        let v = host_view(cfg);
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|n| n["type"].as_str())
            .collect();
        assert_eq!(ns, ["mount", "cgroup"]);
        assert!(v.get("hostname").is_none());
        let mounts = v["mounts"].as_array().unwrap();
        let host = mounts.iter().find(|m| m["destination"] == "/host").unwrap();
        assert!(host["options"].as_array().unwrap().contains(&"ro".into()));
        let var = mounts
            .iter()
            .find(|m| m["destination"] == "/host/var")
            .unwrap();
        assert!(var["options"].as_array().unwrap().contains(&"rw".into()));
    }
}
