//! Modprobe mode: the kernel runs `/sbin/modprobe -q -- NAME` when it needs a module on
//! demand (a filesystem type at mount, a netfilter expression, a socket family, an nls
//! codepage). /sbin/modprobe links to init, which answers from the same module index as
//! at boot, so the image needs no kmod binary.

use std::ffi::OsString;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use crate::modules::{kernel_release, Loader};

/// What the kernel (or an operator) asked for.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub name: String,
    pub quiet: bool,
}

/// Parses modprobe's arguments as the kernel passes them (`-q -- NAME`), also taking
/// `NAME` alone. Module parameters after the name are not supported and are refused.
pub fn parse_args(args: &[String]) -> Result<Request, String> {
    let mut quiet = false;
    let mut rest = args.iter();
    let mut name = None;
    for arg in rest.by_ref() {
        match arg.as_str() {
            "--" => break,
            "-q" | "--quiet" => quiet = true,
            // -b (honour blacklist) and -v: nothing to do differently here.
            "-b" | "--use-blacklist" | "-v" | "--verbose" => {}
            a if a.starts_with('-') => return Err(format!("unsupported option {a}")),
            a => {
                name = Some(a.to_string());
                break;
            }
        }
    }
    let name = match name {
        Some(n) => n,
        None => rest.next().cloned().ok_or("no module name given")?,
    };
    if let Some(extra) = rest.next() {
        return Err(format!("module parameters are not supported ({extra})"));
    }
    Ok(Request { name, quiet })
}

pub fn main(args: impl Iterator<Item = OsString>) -> ExitCode {
    let args: Vec<String> = args.map(|a| a.to_string_lossy().into_owned()).collect();
    let request = match parse_args(&args) {
        Ok(r) => r,
        Err(e) => {
            kmsg(3, &format!("modprobe: {e}"));
            return ExitCode::from(1);
        }
    };
    let loaded = Loader::open(
        Path::new("/lib/modules"),
        &kernel_release(),
        Path::new("/proc/modules"),
    )
    .and_then(|mut loader| loader.load(&request.name));
    match loaded {
        Ok(mods) => {
            if !mods.is_empty() {
                kmsg(
                    6,
                    &format!("modprobe: loaded {} for {}", mods.join(" "), request.name),
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            // The kernel asks for many names that exist in no module (net-pf-*,
            // fs-* probes); with -q those are expected and stay quiet.
            if !request.quiet || !matches!(e, crate::modules::ModuleError::NotFound(_)) {
                kmsg(4, &format!("modprobe: {}: {e}", request.name));
            }
            ExitCode::from(1)
        }
    }
}

/// One line into the kernel log at `level` (it reaches the console from there); the
/// kernel discards a usermode helper's stdout.
fn kmsg(level: u8, msg: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = f.write_all(format!("<{level}>{msg}\n").as_bytes());
    } else {
        let _ = writeln!(std::io::stderr(), "{msg}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn kernel_style_request() {
        assert_eq!(
            parse_args(&args(&["-q", "--", "fs-btrfs"])),
            Ok(Request {
                name: "fs-btrfs".into(),
                quiet: true
            })
        );
    }

    #[test]
    fn plain_name_and_errors() {
        assert_eq!(
            parse_args(&args(&["vfat"])).map(|r| r.name),
            Ok("vfat".into())
        );
        assert!(parse_args(&args(&["-q", "--"])).is_err());
        assert!(parse_args(&args(&[])).is_err());
        assert!(parse_args(&args(&["-x", "vfat"])).is_err());
        assert!(parse_args(&args(&["vfat", "codepage=437"])).is_err());
    }
}
