//! Network namespaces kept as files (as `ip netns` does): one made by a thread that
//! leaves its namespace for a new one and bind-mounts it at a path, so it outlives the
//! thread and the daemon, and containers join it by path. Work inside one is done by a
//! thread that enters it: a network namespace is per thread, so the daemon's other
//! threads never see the switch.

use std::os::fd::AsFd;
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

/// Runs `f` on a new thread and waits for its answer.
fn on_thread<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(f)
        .map_err(|e| format!("starting a thread: {e}"))?
        .join()
        .map_err(|_| "a network namespace thread panicked".to_string())?
}

/// A new network namespace, bind-mounted at `path` (made, with its directory).
pub fn create(path: &Path) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    remove(path); // a leftover
    std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let target = path.to_path_buf();
    on_thread(move || {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("binding the namespace to {}: {e}", target.display()))
    })
    .inspect_err(|_| {
        let _ = std::fs::remove_file(path);
    })
}

/// Runs `f` inside the namespace `ns` (an open namespace file).
pub fn run_in(
    ns: &std::fs::File,
    f: impl FnOnce() -> Result<(), String> + Send + 'static,
) -> Result<(), String> {
    let ns = ns
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("dup: {e}"))?;
    on_thread(move || {
        setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))?;
        f()
    })
}

/// Unmounts and removes a namespace file (the namespace ends once nothing uses it).
pub fn remove(path: &Path) {
    let _ = umount2(path, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_file(path);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root (CI runs as root): a namespace made, entered, configured, removed.
    #[test]
    fn a_kept_namespace_can_be_entered_and_removed() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("ns");
        create(&path).unwrap();
        let ns = std::fs::File::open(&path).unwrap();
        let host_ns = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        let before = host_ns.clone();
        run_in(&ns, move || {
            let inside = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
            if inside == host_ns {
                return Err("still in the host's namespace".into());
            }
            let mut nl = berth_netlink::Netlink::open().map_err(|e| e.to_string())?;
            let lo = nl.link_index("lo").map_err(|e| e.to_string())?;
            nl.set_up(lo, None).map_err(|e| e.to_string())
        })
        .unwrap();
        // This thread never left its namespace.
        assert_eq!(
            std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
            before
        );
        drop(ns);
        remove(&path);
        assert!(!path.exists());
    }
}
