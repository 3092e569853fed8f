//! Mounting the verified root and handing the machine over to it: the API filesystems
//! move into the new root, the initramfs's files are deleted (they would pin RAM
//! forever), the new root is moved over `/`, and init re-executes itself from it as
//! stage 2, still PID 1.

use std::convert::Infallible;
use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

/// Where stage 1 mounts the root before switching to it.
pub const NEW_ROOT: &str = "/sysroot";
/// init on the new root (the image puts the same binary there).
pub const STAGE2_INIT: &str = "/init";
pub const STAGE2_ARG: &str = "--stage2";

#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("mounting the verified root {dev} (erofs) on {NEW_ROOT}: {errno}")]
    MountRoot { dev: PathBuf, errno: Errno },
    #[error("moving {what} into the new root: {errno}")]
    Move { what: String, errno: Errno },
    #[error("{step} during switch_root: {errno}")]
    Step { step: &'static str, errno: Errno },
    #[error("executing {STAGE2_INIT} from the new root: {errno}")]
    Exec { errno: Errno },
}

/// Mounts `dev` (the dm-verity device) read-only at /sysroot.
pub fn mount_root(dev: &Path) -> Result<(), SwitchError> {
    let _ = std::fs::create_dir_all(NEW_ROOT);
    mount(
        Some(dev),
        NEW_ROOT,
        Some("erofs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|errno| SwitchError::MountRoot {
        dev: dev.to_path_buf(),
        errno,
    })
}

/// Never returns on success: the process becomes stage 2.
pub fn switch_root() -> Result<Infallible, SwitchError> {
    let new_root = Path::new(NEW_ROOT);
    for what in ["/dev", "/proc", "/sys", "/run"] {
        let target = new_root.join(what.trim_start_matches('/'));
        mount(
            Some(what),
            &target,
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(|errno| SwitchError::Move {
            what: what.to_string(),
            errno,
        })?;
    }
    let step = |step: &'static str| move |errno| SwitchError::Step { step, errno };
    nix::unistd::chdir(new_root).map_err(step("chdir to the new root"))?;
    delete_initramfs(Path::new("/"), new_root);
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(step("moving the new root onto /"))?;
    nix::unistd::chroot(".").map_err(step("chroot"))?;
    nix::unistd::chdir("/").map_err(step("chdir /"))?;
    let init = CString::new(STAGE2_INIT).map_err(|_| SwitchError::Exec {
        errno: Errno::EINVAL,
    })?;
    let arg = CString::new(STAGE2_ARG).map_err(|_| SwitchError::Exec {
        errno: Errno::EINVAL,
    })?;
    match nix::unistd::execv(&init, &[init.as_c_str(), arg.as_c_str()]) {
        Ok(never) => match never {},
        Err(errno) => Err(SwitchError::Exec { errno }),
    }
}

/// Removes everything on the initramfs (the filesystem `root` is on), without crossing
/// into other mounts and sparing `keep`. Errors are ignored: what cannot be deleted only
/// costs memory.
fn delete_initramfs(root: &Path, keep: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(root) else {
        return;
    };
    delete_children(root, meta.dev(), keep);
}

fn delete_children(dir: &Path, dev: u64, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path == keep {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            delete_children(&path, dev, keep);
            let _ = std::fs::remove_dir(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletes_all_but_the_kept_dir() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::fs::write(root.join("usr/lib/libc.so.6"), b"x").unwrap();
        std::fs::write(root.join("init"), b"x").unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        std::fs::create_dir_all(root.join("sysroot/usr")).unwrap();
        delete_initramfs(root, &root.join("sysroot"));
        let left: Vec<String> = std::fs::read_dir(root)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["sysroot"]);
        assert!(root.join("sysroot/usr").exists());
    }
}
