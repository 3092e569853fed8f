//! The kernel options Berth needs (`berth.config`, a Kconfig fragment with module
//! annotations) and a checker that verifies a kernel's config against them and names the
//! modules an initramfs must carry.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The shipped fragment.
pub const FRAGMENT: &str = include_str!("../berth.config");

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// `=y`
    BuiltIn,
    /// `=m`: a module or built in.
    ModuleOrBuiltIn,
    /// `# CONFIG_X is not set`
    NotSet,
    /// Any other value, matched exactly.
    Value(String),
}

impl fmt::Display for Want {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Want::BuiltIn => f.write_str("y (built in)"),
            Want::ModuleOrBuiltIn => f.write_str("m or y"),
            Want::NotSet => f.write_str("not set"),
            Want::Value(v) => write!(f, "{v}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// Without the `CONFIG_` prefix.
    pub option: String,
    pub want: Want,
    pub module: Option<String>,
    pub early: bool,
    /// Stage 1 needs it to find and verify the root: it goes into the small initramfs a
    /// disk boots (the others come from the root, once stage 2 runs). `early` implies it.
    pub stage1: bool,
    /// The `## ` heading it sits under.
    pub section: String,
    pub line: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fragment {
    pub requirements: Vec<Requirement>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("berth.config line {line}: {reason}")]
pub struct FragmentError {
    pub line: usize,
    pub reason: String,
}

/// A `# module:` line's flags.
#[derive(Debug, Clone, Copy, Default)]
struct Flags {
    early: bool,
    stage1: bool,
}

/// Parses a fragment. A `# module:` line must be followed directly by an `=m` option.
pub fn parse_fragment(text: &str) -> Result<Fragment, FragmentError> {
    let mut fragment = Fragment::default();
    let mut section = String::new();
    // (module, flags, line) waiting for its option.
    let mut pending: Option<(String, Flags, usize)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        let err = |reason: String| FragmentError {
            line: line_no,
            reason,
        };
        if let Some(rest) = line.strip_prefix("# module:") {
            if pending.is_some() {
                return Err(err("two `# module:` lines in a row".into()));
            }
            let mut words = rest.split_whitespace();
            let name = words
                .next()
                .ok_or_else(|| err("`# module:` without a name".into()))?;
            let mut flags = Flags::default();
            for word in words {
                match word {
                    "early" => flags.early = true,
                    "stage1" => flags.stage1 = true,
                    other => return Err(err(format!("unknown module flag {other:?}"))),
                }
            }
            flags.stage1 |= flags.early;
            pending = Some((name.to_string(), flags, line_no));
            continue;
        }
        let parsed = parse_option_line(line).map_err(err)?;
        let Some((option, want)) = parsed else {
            if let Some(h) = line.strip_prefix("## ") {
                section = h.trim().to_string();
            }
            if pending.is_some() {
                return Err(err(
                    "a `# module:` line must be followed directly by its option".into(),
                ));
            }
            continue;
        };
        let (module, flags) = match pending.take() {
            Some((m, flags, _)) if want == Want::ModuleOrBuiltIn => (Some(m), flags),
            Some((m, _, at)) => {
                return Err(FragmentError {
                    line: at,
                    reason: format!("module {m} annotates CONFIG_{option}, which is not =m"),
                })
            }
            None => (None, Flags::default()),
        };
        fragment.requirements.push(Requirement {
            option,
            want,
            module,
            early: flags.early,
            stage1: flags.stage1,
            section: section.clone(),
            line: line_no,
        });
    }
    if let Some((m, _, at)) = pending {
        return Err(FragmentError {
            line: at,
            reason: format!("module {m} is not followed by an option"),
        });
    }
    Ok(fragment)
}

/// `CONFIG_X=v` or `# CONFIG_X is not set` -> (X, want); other lines -> None.
fn parse_option_line(line: &str) -> Result<Option<(String, Want)>, String> {
    if let Some(rest) = line.strip_prefix("# CONFIG_") {
        return Ok(rest
            .strip_suffix(" is not set")
            .map(|opt| (opt.to_string(), Want::NotSet)));
    }
    let Some(rest) = line.strip_prefix("CONFIG_") else {
        if line.is_empty() || line.starts_with('#') {
            return Ok(None);
        }
        return Err(format!("not a config line: {line:?}"));
    };
    let (option, value) = rest
        .split_once('=')
        .ok_or_else(|| format!("no '=' in {line:?}"))?;
    if option.is_empty()
        || !option
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(format!("bad option name in {line:?}"));
    }
    let want = match value {
        "y" => Want::BuiltIn,
        "m" => Want::ModuleOrBuiltIn,
        "" => return Err(format!("empty value in {line:?}")),
        v => Want::Value(v.to_string()),
    };
    Ok(Some((option.to_string(), want)))
}

/// The shipped `berth.config`, parsed. It is tested to parse (`shipped_fragment_parses`),
/// so a failure here is a build-time bug; it still returns an empty fragment rather
/// than panicking, and the checker then reports nothing to carry.
pub fn fragment() -> Fragment {
    parse_fragment(FRAGMENT).unwrap_or_default()
}

/// A kernel `.config`.
#[derive(Debug, Clone, Default)]
pub struct KernelConfig {
    values: HashMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
#[error("reading kernel config {path}: {source}")]
pub struct ConfigError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

impl KernelConfig {
    pub fn parse(text: &str) -> Self {
        let values = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("CONFIG_"))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self { values }
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        std::fs::read_to_string(path)
            .map(|t| Self::parse(&t))
            .map_err(|source| ConfigError {
                path: path.to_path_buf(),
                source,
            })
    }

    /// The value of `option` (without `CONFIG_`), None when unset.
    pub fn get(&self, option: &str) -> Option<&str> {
        self.values.get(option).map(String::as_str)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub option: String,
    pub want: Want,
    pub found: Option<String>,
    pub section: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CONFIG_{}: need {}, kernel has {} ({})",
            self.option,
            self.want,
            self.found.as_deref().unwrap_or("it unset"),
            self.section
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub violations: Vec<Violation>,
    /// Listed modules the kernel has as `=m` (built-in ones need nothing carried).
    pub modules: Vec<String>,
    /// Of those, the ones PID 1 loads at boot.
    pub early: Vec<String>,
    /// Of those, the ones stage 1 needs to find and verify the root.
    pub stage1: Vec<String>,
}

pub fn check(fragment: &Fragment, config: &KernelConfig) -> Report {
    let mut report = Report::default();
    for req in &fragment.requirements {
        let found = config.get(&req.option);
        let ok = match (&req.want, found) {
            (Want::BuiltIn, Some("y")) => true,
            (Want::ModuleOrBuiltIn, Some("y" | "m")) => true,
            (Want::NotSet, None | Some("n")) => true,
            (Want::Value(v), Some(f)) => v == f,
            _ => false,
        };
        if !ok {
            report.violations.push(Violation {
                option: req.option.clone(),
                want: req.want.clone(),
                found: found.map(String::from),
                section: req.section.clone(),
            });
            continue;
        }
        if let (Some(module), Some("m")) = (&req.module, found) {
            report.modules.push(module.clone());
            if req.early {
                report.early.push(module.clone());
            }
            if req.stage1 {
                report.stage1.push(module.clone());
            }
        }
    }
    report
}

#[cfg(test)]
mod tests;
