//! Datasource volumes for the guest, built without mounting (design.md, "Testing"): a
//! FAT image (mkfs.vfat filled by mtools) or an ISO 9660 image (genisoimage) with a
//! label (OpenStack's `config-2`, NoCloud's `cidata`), to attach as a read-only virtio
//! disk.

use std::path::Path;
use std::process::Command;

/// A small FAT volume labelled `label` at `image` holding `files` (paths relative to its
/// root, directories made as needed).
pub fn fat(image: &Path, label: &str, files: &[(&str, &[u8])]) -> std::io::Result<()> {
    let staging = stage(files)?;
    let _ = std::fs::remove_file(image);
    run(Command::new("mkfs.vfat")
        .args(["-C", "-n", label])
        .arg(image)
        .arg("2048"))?;
    let mut copy = Command::new("mcopy");
    copy.env("MTOOLS_SKIP_CHECK", "1")
        .args(["-s", "-i"])
        .arg(image);
    for entry in std::fs::read_dir(staging.path())? {
        copy.arg(entry?.path());
    }
    run(copy.arg("::/"))
}

/// An ISO 9660 image labelled `label` (Rock Ridge and Joliet names, as cloud-localds
/// makes them) at `image` holding `files`.
pub fn iso(image: &Path, label: &str, files: &[(&str, &[u8])]) -> std::io::Result<()> {
    let staging = stage(files)?;
    run(Command::new("genisoimage")
        .args(["-quiet", "-output"])
        .arg(image)
        .args(["-volid", label, "-joliet", "-rock"])
        .arg(staging.path()))
}

/// The files in a temporary directory.
fn stage(files: &[(&str, &[u8])]) -> std::io::Result<tempfile::TempDir> {
    let staging = tempfile::tempdir()?;
    for (path, data) in files {
        let at = staging.path().join(path);
        if let Some(dir) = at.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(at, data)?;
    }
    Ok(staging)
}

/// QEMU arguments attaching `image` as a read-only virtio disk.
pub fn drive_args(image: &Path, id: &str) -> Vec<String> {
    vec![
        "-drive".into(),
        format!(
            "file={},format=raw,if=none,id={id},readonly=on",
            image.display()
        ),
        "-device".into(),
        format!("virtio-blk-pci,drive={id}"),
    ]
}

fn run(cmd: &mut Command) -> std::io::Result<()> {
    let out = cmd.output()?;
    if out.status.success() {
        return Ok(());
    }
    Err(std::io::Error::other(format!(
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    )))
}
