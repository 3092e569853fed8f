//! Capability sets for containers: Docker's default set, `cap_add`/`cap_drop` with
//! `ALL`, and every capability for a privileged container. Names as capabilities(7)
//! lists them (Linux 6.1: CAP_CHOWN = 0 .. CAP_CHECKPOINT_RESTORE = 40).

use std::collections::BTreeSet;

/// capabilities(7), in number order.
pub const ALL: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The set a Docker container gets by default (what operators' images expect).
pub const DOCKER_DEFAULT: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// `net_admin`, `NET_ADMIN`, `CAP_NET_ADMIN` → `CAP_NET_ADMIN`; `ALL` stays `ALL`.
pub fn normalize(name: &str) -> Option<String> {
    let upper = name.trim().to_ascii_uppercase();
    if upper == "ALL" {
        return Some(upper);
    }
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    ALL.contains(&full.as_str()).then_some(full)
}

/// The container's capabilities, sorted by number.
pub fn effective(privileged: bool, add: &[String], drop: &[String]) -> Vec<String> {
    if privileged {
        return ALL.iter().map(|s| (*s).to_string()).collect();
    }
    let add: BTreeSet<String> = add.iter().filter_map(|c| normalize(c)).collect();
    let drop: BTreeSet<String> = drop.iter().filter_map(|c| normalize(c)).collect();
    let mut set: BTreeSet<&str> = DOCKER_DEFAULT.iter().copied().collect();
    if drop.contains("ALL") {
        set.clear();
    }
    if add.contains("ALL") {
        set = ALL.iter().copied().collect();
    }
    for a in &add {
        if let Some(c) = ALL.iter().find(|c| **c == a.as_str()) {
            set.insert(c);
        }
    }
    for d in &drop {
        set.remove(d.as_str());
    }
    ALL.iter()
        .filter(|c| set.contains(*c))
        .map(|c| (*c).to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_adds_and_drops() {
        assert_eq!(effective(false, &[], &[]).len(), 14);
        let s = effective(false, &["net_admin".into()], &["MKNOD".into()]);
        assert!(s.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!s.contains(&"CAP_MKNOD".to_string()));
        assert_eq!(
            effective(false, &["NET_BIND_SERVICE".into()], &["ALL".into()]),
            ["CAP_NET_BIND_SERVICE"]
        );
        assert_eq!(effective(true, &[], &[]).len(), 41);
        assert_eq!(normalize("fly"), None);
    }
}
