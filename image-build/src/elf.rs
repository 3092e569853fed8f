//! Shared-library closure of ELF executables: the interpreter (PT_INTERP) and every
//! DT_NEEDED, recursively, resolved the way the dynamic loader does on Debian (its
//! multiarch directories), so the image carries exactly what its binaries load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use object::elf::{FileHeader64, PT_INTERP};
use object::read::elf::{Dyn, FileHeader, ProgramHeader};
use object::Endianness;

/// Where Debian's loader looks (its built-in trusted directories, multiarch first).
pub const LIBRARY_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// What one ELF file asks the loader for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Needs {
    pub interpreter: Option<String>,
    pub needed: Vec<String>,
}

/// Reads PT_INTERP and DT_NEEDED from a 64-bit little-endian ELF file. A static binary
/// gives empty needs.
pub fn needs(data: &[u8]) -> Result<Needs> {
    let header = FileHeader64::<Endianness>::parse(data).context("not a 64-bit ELF file")?;
    let endian = header.endian().context("ELF endianness")?;
    if endian != Endianness::Little {
        bail!("big-endian ELF files are not for x86_64");
    }
    let mut needs = Needs::default();
    for ph in header
        .program_headers(endian, data)
        .context("reading program headers")?
    {
        if ph.p_type(endian) == PT_INTERP {
            let raw = ph.data(endian, data).ok().context("reading PT_INTERP")?;
            let path = raw.split(|b| *b == 0).next().unwrap_or_default();
            needs.interpreter = Some(String::from_utf8_lossy(path).into_owned());
        }
    }
    let sections = header
        .sections(endian, data)
        .context("reading section headers")?;
    if let Some((entries, link)) = sections.dynamic(endian, data).context("reading .dynamic")? {
        let strings = sections
            .strings(endian, data, link)
            .context("reading .dynstr")?;
        for entry in entries {
            if entry.d_tag(endian) == object::elf::DT_NEEDED {
                let name = entry.string(endian, strings).context("DT_NEEDED name")?;
                needs
                    .needed
                    .push(String::from_utf8_lossy(name).into_owned());
            }
        }
    }
    Ok(needs)
}

/// Finds a library by soname in `dirs` under `sysroot` (`/` for the build host).
pub fn find_library(sysroot: &Path, dirs: &[&str], soname: &str) -> Option<PathBuf> {
    dirs.iter()
        .map(|d| sysroot.join(d.trim_start_matches('/')).join(soname))
        .find(|p| p.exists())
}

/// Every library the `binaries` load, transitively: image path (as the loader asks for
/// it) -> host file to copy. The interpreter keeps its absolute PT_INTERP path; other
/// libraries go to /usr/lib/x86_64-linux-gnu/<soname>.
pub fn library_closure(sysroot: &Path, binaries: &[PathBuf]) -> Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    let mut todo: Vec<PathBuf> = binaries.to_vec();
    while let Some(file) = todo.pop() {
        let data = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let needs =
            needs(&data).with_context(|| format!("reading ELF headers of {}", file.display()))?;
        if let Some(interp) = needs.interpreter {
            if let std::collections::btree_map::Entry::Vacant(slot) = out.entry(interp) {
                let host = sysroot.join(slot.key().trim_start_matches('/'));
                if !host.exists() {
                    bail!(
                        "{} needs interpreter {}, which is not on this host",
                        file.display(),
                        slot.key()
                    );
                }
                slot.insert(host.clone());
                todo.push(host);
            }
        }
        for soname in needs.needed {
            let image_path = format!("/usr/lib/x86_64-linux-gnu/{soname}");
            if out.contains_key(&image_path) {
                continue;
            }
            let host = find_library(sysroot, LIBRARY_DIRS, &soname).with_context(|| {
                format!(
                    "{} needs {soname}, not found in {LIBRARY_DIRS:?}",
                    file.display()
                )
            })?;
            out.insert(image_path, host.clone());
            todo.push(host);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_needs_of_a_dynamic_binary() {
        // The test binary itself is a dynamically linked ELF built for this host.
        let exe = std::env::current_exe().unwrap();
        let n = needs(&std::fs::read(exe).unwrap()).unwrap();
        assert_eq!(
            n.interpreter.as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
        assert!(n.needed.iter().any(|l| l == "libc.so.6"), "{n:?}");
    }

    #[test]
    fn closure_includes_libc_and_loader() {
        let exe = std::env::current_exe().unwrap();
        let libs = library_closure(Path::new("/"), &[exe]).unwrap();
        assert!(libs.contains_key("/lib64/ld-linux-x86-64.so.2"), "{libs:?}");
        assert!(
            libs.contains_key("/usr/lib/x86_64-linux-gnu/libc.so.6"),
            "{libs:?}"
        );
    }

    #[test]
    fn rejects_non_elf() {
        assert!(needs(b"#!/bin/sh\n").is_err());
    }

    #[test]
    fn static_binary_needs_nothing() {
        // busybox-static, installed by `make deps`.
        let Ok(data) = std::fs::read("/bin/busybox") else {
            eprintln!("skipping: /bin/busybox not installed");
            return;
        };
        assert_eq!(needs(&data).unwrap(), Needs::default());
    }
}
