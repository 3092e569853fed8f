//! Linux security module labels: `process.apparmorProfile`, `process.selinuxLabel` and
//! `linux.mountLabel` (runtime-spec config.md "Process", config-linux.md "Mount Label").
//!
//! A label is applied, or the container is refused; it is never dropped. The program's
//! label is set for its exec: the init writes it into its own `attr/.../exec` file in
//! procfs (proc(5), /proc/pid/attr), and the kernel switches at execve. The file is
//! reached through the host's /proc, opened before any namespace or pivot, so an image
//! cannot hand the runtime a /proc of its own making; the file opened must be procfs.
//!
//! Where the host cannot honour a label (the LSM is not enabled), the container is
//! refused, as runc refuses an SELinux label on a host without SELinux. SELinux mount
//! contexts (`context=` on the container's tmpfs, devpts and mqueue mounts) are not
//! implemented: `linux.mountLabel` is refused everywhere, saying so.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use oci_spec::runtime::{Process, Spec};

use crate::error::{config, sys, Error, Result};

/// AppArmor says whether it is on here (its module parameter, also when built in).
const APPARMOR_ENABLED: &str = "/sys/module/apparmor/parameters/enabled";
/// selinuxfs, mounted where the kernel's SELinux is on.
const SELINUX_ENFORCE: &str = "/sys/fs/selinux/enforce";

/// The labels a process gets at its exec.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Labels {
    apparmor: Option<String>,
    selinux: Option<String>,
}

/// Which security modules this host has on.
#[derive(Debug, Clone, Copy)]
pub struct Host {
    pub apparmor: bool,
    pub selinux: bool,
}

impl Host {
    pub fn probe() -> Host {
        let apparmor = std::fs::read(APPARMOR_ENABLED).is_ok_and(|v| v.starts_with(b"Y"));
        Host {
            apparmor,
            selinux: Path::new(SELINUX_ENFORCE).exists(),
        }
    }
}

impl Labels {
    /// A container's labels, or why this host cannot honour them. Called before the
    /// fork, so `create` fails with nothing started.
    pub fn for_container(spec: &Spec, host: Host) -> Result<Labels> {
        let mount_label = spec.linux().as_ref().and_then(|l| l.mount_label().clone());
        if let Some(label) = mount_label.filter(|l| !l.is_empty()) {
            return Err(Error::Unsupported(format!(
                "linux.mountLabel ({label:?}): SELinux mount contexts are not supported by berth-runtime{}",
                if host.selinux {
                    ""
                } else {
                    ", and SELinux is not enabled on this host"
                }
            )));
        }
        match spec.process() {
            Some(p) => Labels::for_process(p, host),
            None => Ok(Labels::default()),
        }
    }

    /// An `exec`'d process's labels (its process document has the same two keys).
    pub fn for_process(process: &Process, host: Host) -> Result<Labels> {
        let apparmor = process.apparmor_profile().clone().filter(|p| !p.is_empty());
        let selinux = process.selinux_label().clone().filter(|l| !l.is_empty());
        if let Some(p) = &apparmor {
            if !host.apparmor {
                return Err(Error::Unsupported(format!(
                    "process.apparmorProfile ({p:?}): AppArmor is not enabled on this host"
                )));
            }
            check_value("process.apparmorProfile", p)?;
        }
        if let Some(l) = &selinux {
            if !host.selinux {
                return Err(Error::Unsupported(format!(
                    "process.selinuxLabel ({l:?}): SELinux is not enabled on this host"
                )));
            }
            check_value("process.selinuxLabel", l)?;
        }
        Ok(Labels { apparmor, selinux })
    }

    pub fn is_empty(&self) -> bool {
        self.apparmor.is_none() && self.selinux.is_none()
    }

    /// The host's /proc, which `apply` needs, opened now (before any namespace change
    /// or pivot); `None` when there are no labels to set.
    pub fn open_host_proc(&self) -> Result<Option<OwnedFd>> {
        if self.is_empty() {
            return Ok(None);
        }
        nix::fcntl::open(
            "/proc",
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map(Some)
        .map_err(sys("opening /proc"))
    }

    /// Sets the labels for this process's next exec. `proc` is the host's /proc,
    /// opened before any namespace change. Run by the process that execs.
    pub fn apply(&self, proc: BorrowedFd<'_>) -> Result<()> {
        if let Some(profile) = &self.apparmor {
            // AppArmor's own directory (Linux 5.8+), where stacked LSMs cannot take
            // the write; the shared file on older kernels. "exec NAME" is its
            // change_onexec command (the AppArmor kernel documentation).
            let cmd = format!("exec {profile}");
            write_attr(proc, &["apparmor/exec", "exec"], cmd.as_bytes()).map_err(|e| {
                Error::Setup(format!(
                    "process.apparmorProfile {profile:?}: {e} (is the profile loaded?)"
                ))
            })?;
        }
        if let Some(label) = &self.selinux {
            write_attr(proc, &["exec"], label.as_bytes())
                .map_err(|e| Error::Setup(format!("process.selinuxLabel {label:?}: {e}")))?;
        }
        Ok(())
    }
}

/// One line of printable text: the kernel would take a newline or NUL as the end.
fn check_value(key: &str, value: &str) -> Result<()> {
    if value.len() > 4096 || value.chars().any(|c| c.is_control()) {
        return Err(config(key, format!("{value:?} is not one printable line")));
    }
    Ok(())
}

/// Writes `value` into the first of `names` under `thread-self/attr/` that exists.
fn write_attr(
    proc: BorrowedFd<'_>,
    names: &[&str],
    value: &[u8],
) -> std::result::Result<(), String> {
    let mut last = String::new();
    for name in names {
        let path = format!("thread-self/attr/{name}");
        let fd = match nix::fcntl::openat(
            proc,
            path.as_str(),
            OFlag::O_WRONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::ENOENT) => {
                last = format!("/proc/{path}: no such file");
                continue;
            }
            Err(e) => return Err(format!("opening /proc/{path}: {e}")),
        };
        let fs = nix::sys::statfs::fstatfs(fd.as_fd())
            .map_err(|e| format!("statfs /proc/{path}: {e}"))?;
        if fs.filesystem_type() != nix::sys::statfs::PROC_SUPER_MAGIC {
            return Err(format!("/proc/{path} is not on procfs"));
        }
        return std::fs::File::from(fd)
            .write_all(value)
            .map_err(|e| format!("writing /proc/{path}: {e}"));
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(process: serde_json::Value, linux: serde_json::Value) -> Spec {
        let mut s = Spec::default();
        s.set_process(Some(serde_json::from_value(process).unwrap()));
        s.set_linux(Some(serde_json::from_value(linux).unwrap()));
        s
    }

    const NONE: Host = Host {
        apparmor: false,
        selinux: false,
    };
    const BOTH: Host = Host {
        apparmor: true,
        selinux: true,
    };

    fn process(extra: serde_json::Value) -> serde_json::Value {
        let mut p = serde_json::json!({"cwd": "/", "args": ["true"], "user": {"uid": 0, "gid": 0}});
        p.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        p
    }

    #[test]
    fn labels_the_host_cannot_honour_are_refused_naming_the_key() {
        let s = spec(
            process(serde_json::json!({"apparmorProfile": "p"})),
            serde_json::json!({}),
        );
        let e = Labels::for_container(&s, NONE).unwrap_err().to_string();
        assert!(
            e.contains("process.apparmorProfile") && e.contains("AppArmor"),
            "{e}"
        );
        assert_eq!(
            Labels::for_container(&s, BOTH).unwrap(),
            Labels {
                apparmor: Some("p".into()),
                selinux: None
            }
        );
        let s = spec(
            process(serde_json::json!({"selinuxLabel": "system_u:system_r:container_t:s0"})),
            serde_json::json!({}),
        );
        let e = Labels::for_container(&s, NONE).unwrap_err().to_string();
        assert!(
            e.contains("process.selinuxLabel") && e.contains("SELinux"),
            "{e}"
        );
        assert!(Labels::for_container(&s, BOTH).is_ok());
        let s = spec(
            process(serde_json::json!({})),
            serde_json::json!({"mountLabel": "system_u:object_r:container_file_t:s0"}),
        );
        for host in [NONE, BOTH] {
            let e = Labels::for_container(&s, host).unwrap_err().to_string();
            assert!(e.contains("linux.mountLabel"), "{e}");
        }
        // Empty strings are what some clients write for "none".
        let s = spec(
            process(serde_json::json!({"apparmorProfile": "", "selinuxLabel": ""})),
            serde_json::json!({"mountLabel": ""}),
        );
        assert!(Labels::for_container(&s, NONE).unwrap().is_empty());
    }

    #[test]
    fn a_label_that_is_not_one_line_is_refused() {
        let s = spec(
            process(serde_json::json!({"apparmorProfile": "p\nchangeprofile q"})),
            serde_json::json!({}),
        );
        let e = Labels::for_container(&s, BOTH).unwrap_err().to_string();
        assert!(e.contains("printable"), "{e}");
    }
}
