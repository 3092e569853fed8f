//! Coldplug: load the drivers for devices the kernel found before init ran, as
//! `udevadm trigger` + udev's kmod builtin do, by reading every `modalias` under /sys.

use std::collections::BTreeSet;
use std::path::Path;

use super::Loader;

/// Every distinct modalias below `sys_devices` (normally /sys/devices). Symlinks are not
/// followed: sysfs links (`subsystem`, `driver`, `device`) point back into the same tree.
pub fn modaliases(sys_devices: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut stack = vec![sys_devices.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() && entry.file_name() == "modalias" {
                if let Ok(text) = std::fs::read_to_string(entry.path()) {
                    let alias = text.trim();
                    if !alias.is_empty() {
                        found.insert(alias.to_string());
                    }
                }
            }
        }
    }
    found
}

/// Loads drivers for the devices present until a pass loads nothing new: a driver that
/// binds often registers child devices (virtio_pci creates the virtio devices that
/// virtio_blk and virtio_console drive), which the next pass picks up. Returns the
/// modules inserted, in order.
pub fn settle(loader: &mut Loader, sys_devices: &Path) -> Vec<String> {
    const MAX_PASSES: usize = 8;
    let mut seen = BTreeSet::new();
    let mut inserted = Vec::new();
    for _ in 0..MAX_PASSES {
        let fresh: Vec<String> = modaliases(sys_devices)
            .into_iter()
            .filter(|a| seen.insert(a.clone()))
            .collect();
        let before = inserted.len();
        for alias in &fresh {
            for result in loader.load_for_modalias(alias) {
                match result {
                    Ok(mods) => inserted.extend(mods),
                    Err(e) => crate::warn!("driver for {alias}: {e}"),
                }
            }
        }
        if inserted.len() == before {
            break;
        }
    }
    inserted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_modaliases_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("pci0000:00/0000:00:03.0");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("modalias"), "pci:v00001AF4d00001001\n").unwrap();
        std::fs::create_dir_all(dir.path().join("platform")).unwrap();
        std::fs::write(dir.path().join("platform/modalias"), "\n").unwrap();
        std::os::unix::fs::symlink(dir.path(), dev.join("loop")).unwrap();
        let found = modaliases(dir.path());
        assert_eq!(
            found.into_iter().collect::<Vec<_>>(),
            vec!["pci:v00001AF4d00001001".to_string()]
        );
    }
}
