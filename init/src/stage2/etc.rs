//! Seeding /etc from the image's defaults (files, directories and symlinks, modes kept).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Copies the tree under `from` into `to`; returns how many files and links it copied.
pub fn seed(from: &Path, to: &Path) -> std::io::Result<usize> {
    let mut count = 0;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&src)?;
        if meta.file_type().is_symlink() {
            let _ = std::fs::remove_file(&dst);
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
            count += 1;
        } else if meta.is_dir() {
            std::fs::create_dir_all(&dst)?;
            std::fs::set_permissions(
                &dst,
                std::fs::Permissions::from_mode(meta.permissions().mode()),
            )?;
            count += seed(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst)?;
            count += 1;
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_files_dirs_and_links() {
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(from.path().join("ssl/certs")).unwrap();
        std::fs::write(from.path().join("hosts"), "127.0.0.1 localhost\n").unwrap();
        std::fs::write(from.path().join("ssl/certs/ca.pem"), "x").unwrap();
        std::os::unix::fs::symlink("../usr/lib/os-release", from.path().join("os-release"))
            .unwrap();
        assert_eq!(seed(from.path(), to.path()).unwrap(), 3);
        assert_eq!(
            std::fs::read_to_string(to.path().join("hosts")).unwrap(),
            "127.0.0.1 localhost\n"
        );
        assert!(to.path().join("ssl/certs/ca.pem").exists());
        assert_eq!(
            std::fs::read_link(to.path().join("os-release")).unwrap(),
            Path::new("../usr/lib/os-release")
        );
    }
}
