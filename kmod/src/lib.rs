//! The kernel's module index as `depmod` writes it (modules.dep, modules.alias,
//! modules.softdep, modules.builtin): lookup by name or alias, and the order in which
//! modules must be inserted. Used at build time to pick what the initramfs carries and at
//! boot by PID 1 to load drivers, so nothing here may panic on any input.
//!
//! Formats (from depmod(8) output): `kernel/a.ko: kernel/b.ko kernel/c.ko` lists the
//! full transitive dependency set; `alias PATTERN NAME` with fnmatch globs;
//! `softdep NAME pre: x y post: z` (depmod also writes words with no keyword, taken as
//! `pre`); modules.builtin lists `kernel/x.ko` paths compiled into the kernel.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{file} line {line}: {reason}")]
    Parse {
        file: &'static str,
        line: usize,
        reason: String,
    },
    #[error("no module named {0:?} in the index")]
    UnknownModule(String),
}

/// A module name as the kernel knows it: file basename without the `.ko` suffix (and
/// any compression suffix), `-` written as `_`.
pub fn normalize(name: &str) -> String {
    let base = name.rsplit('/').next().unwrap_or(name);
    let base = [".ko.xz", ".ko.zst", ".ko.gz", ".ko"]
        .iter()
        .find_map(|s| base.strip_suffix(s))
        .unwrap_or(base);
    base.replace('-', "_")
}

/// Shell-style glob match (`*`, `?`, `[abc]`, `[a-z]`, `[!x]`), as modules.alias
/// patterns use it. Hand-written: it runs in PID 1 for every device at boot, and the
/// glob crates bring path semantics and allocation we do not want here.
pub fn fnmatch(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0usize, 0usize);
    // Backtracking point for the last `*`: (pattern index after it, text index).
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = match p.get(pi) {
            Some(b'*') => {
                star = Some((pi + 1, ti));
                pi += 1;
                continue;
            }
            Some(b'?') => Some(pi + 1),
            Some(b'[') => match_class(p, pi, t.get(ti).copied().unwrap_or(0)),
            Some(c) if Some(c) == t.get(ti) => Some(pi + 1),
            _ => None,
        };
        match (step, star) {
            (Some(next), _) => {
                pi = next;
                ti += 1;
            }
            (None, Some((sp, st))) => {
                pi = sp;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            (None, None) => return false,
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|c| *c == b'*'))
}

/// Matches `c` against the bracket expression starting at `p[start]` (`[`); returns
/// the index after the closing `]` on a match. An unterminated `[` matches itself.
fn match_class(p: &[u8], start: usize, c: u8) -> Option<usize> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some(b'!') | Some(b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = *p.get(i)?;
        if lo == b']' && !first {
            break;
        }
        first = false;
        if p.get(i + 1) == Some(&b'-') && p.get(i + 2).is_some_and(|h| *h != b']') {
            let hi = *p.get(i + 2)?;
            matched |= lo <= c && c <= hi;
            i += 3;
        } else {
            matched |= lo == c;
            i += 1;
        }
    }
    (matched != negate).then_some(i + 1)
}

#[derive(Debug, Default, Clone)]
struct SoftDeps {
    pre: Vec<String>,
    post: Vec<String>,
}

/// The four index files, parsed.
#[derive(Debug, Default, Clone)]
pub struct ModuleIndex {
    /// name -> relative path, for loadable modules.
    paths: BTreeMap<String, String>,
    /// name -> dependency names, as listed in modules.dep.
    deps: HashMap<String, Vec<String>>,
    /// (pattern, module) in file order.
    aliases: Vec<(String, String)>,
    softdeps: BTreeMap<String, SoftDeps>,
    /// name -> relative path, for modules built into the kernel.
    builtin: BTreeMap<String, String>,
}

/// The index rendered back to text, e.g. restricted to what an initramfs carries.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IndexFiles {
    pub dep: String,
    pub alias: String,
    pub softdep: String,
    pub builtin: String,
}

impl IndexFiles {
    pub fn write_to(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::write(dir.join("modules.dep"), &self.dep)?;
        std::fs::write(dir.join("modules.alias"), &self.alias)?;
        std::fs::write(dir.join("modules.softdep"), &self.softdep)?;
        std::fs::write(dir.join("modules.builtin"), &self.builtin)
    }
}

impl ModuleIndex {
    /// Reads the index in `dir`: modules.dep is required, the others optional.
    pub fn load(dir: &Path) -> Result<Self, IndexError> {
        let read = |name: &str, required: bool| -> Result<String, IndexError> {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => Ok(text),
                Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                    Ok(String::new())
                }
                Err(source) => Err(IndexError::Read { path, source }),
            }
        };
        Self::parse(
            &read("modules.dep", true)?,
            &read("modules.alias", false)?,
            &read("modules.softdep", false)?,
            &read("modules.builtin", false)?,
        )
    }

    pub fn parse(dep: &str, alias: &str, softdep: &str, builtin: &str) -> Result<Self, IndexError> {
        let mut index = Self::default();
        for (n, line) in content_lines(dep) {
            let (module, rest) = line.split_once(':').ok_or_else(|| IndexError::Parse {
                file: "modules.dep",
                line: n,
                reason: format!("no ':' in {line:?}"),
            })?;
            let name = normalize(module.trim());
            index.paths.insert(name.clone(), module.trim().to_string());
            index
                .deps
                .insert(name, rest.split_whitespace().map(normalize).collect());
        }
        for (n, line) in content_lines(alias) {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next(), words.next()) {
                (Some("alias"), Some(pattern), Some(module), None) => {
                    index.aliases.push((pattern.to_string(), normalize(module)));
                }
                _ => {
                    return Err(IndexError::Parse {
                        file: "modules.alias",
                        line: n,
                        reason: format!("expected `alias PATTERN MODULE`, got {line:?}"),
                    })
                }
            }
        }
        for (n, line) in content_lines(softdep) {
            let mut words = line.split_whitespace();
            let (Some("softdep"), Some(module)) = (words.next(), words.next()) else {
                return Err(IndexError::Parse {
                    file: "modules.softdep",
                    line: n,
                    reason: format!("expected `softdep MODULE ...`, got {line:?}"),
                });
            };
            let entry = index.softdeps.entry(normalize(module)).or_default();
            let mut post = false;
            for word in words {
                match word {
                    "pre:" => post = false,
                    "post:" => post = true,
                    w if post => entry.post.push(w.to_string()),
                    w => entry.pre.push(w.to_string()),
                }
            }
        }
        for (_, line) in content_lines(builtin) {
            index.builtin.insert(normalize(line), line.to_string());
        }
        Ok(index)
    }

    pub fn contains(&self, module: &str) -> bool {
        self.paths.contains_key(&normalize(module))
    }

    pub fn is_builtin(&self, module: &str) -> bool {
        self.builtin.contains_key(&normalize(module))
    }

    pub fn path(&self, module: &str) -> Option<&str> {
        self.paths.get(&normalize(module)).map(String::as_str)
    }

    pub fn modules(&self) -> impl Iterator<Item = &str> {
        self.paths.keys().map(String::as_str)
    }

    /// The dependencies modules.dep lists for `module` (the full transitive set).
    pub fn dependencies(&self, module: &str) -> &[String] {
        self.deps
            .get(&normalize(module))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Module names for a name or alias, as modprobe resolves it: a module (or builtin)
    /// of that exact name, else every module with a matching alias pattern, in
    /// modules.alias order without duplicates.
    pub fn resolve(&self, name_or_alias: &str) -> Vec<String> {
        let name = normalize(name_or_alias);
        if self.paths.contains_key(&name) || self.builtin.contains_key(&name) {
            return vec![name];
        }
        let mut seen = HashSet::new();
        self.aliases
            .iter()
            .filter(|(pattern, _)| fnmatch(pattern, name_or_alias))
            .filter(|(_, module)| seen.insert(module.as_str()))
            .map(|(_, module)| module.clone())
            .collect()
    }

    /// Every module to insert for `module`, in insertion order: softdep `pre` targets
    /// (each with its own order), dependencies before dependents, the module, softdep
    /// `post` targets. Builtins are left out; cycles end.
    pub fn load_order(&self, module: &str) -> Result<Vec<String>, IndexError> {
        let name = normalize(module);
        if !self.paths.contains_key(&name) && !self.builtin.contains_key(&name) {
            return Err(IndexError::UnknownModule(module.to_string()));
        }
        let mut order = Vec::new();
        let mut visiting = HashSet::new();
        self.visit(&name, &mut order, &mut visiting);
        Ok(order)
    }

    fn visit(&self, name: &str, order: &mut Vec<String>, visiting: &mut HashSet<String>) {
        if !visiting.insert(name.to_string()) || self.builtin.contains_key(name) {
            return;
        }
        let soft = self.softdeps.get(name);
        for target in soft.map(|s| s.pre.as_slice()).unwrap_or_default() {
            for m in self.resolve(target) {
                self.visit(&m, order, visiting);
            }
        }
        // modules.dep lists the full set; recursing gives each dependency its own
        // dependencies first, which is the insertion order.
        for dep in self.dependencies(name) {
            self.visit(dep, order, visiting);
        }
        if self.paths.contains_key(name) && !order.iter().any(|m| m == name) {
            order.push(name.to_string());
        }
        for target in soft.map(|s| s.post.as_slice()).unwrap_or_default() {
            for m in self.resolve(target) {
                self.visit(&m, order, visiting);
            }
        }
    }

    /// Union of the load orders of `roots`, sorted: what an initramfs must carry.
    pub fn closure<S: AsRef<str>>(&self, roots: &[S]) -> Result<Vec<String>, IndexError> {
        let mut all = BTreeSet::new();
        for root in roots {
            all.extend(self.load_order(root.as_ref())?);
        }
        Ok(all.into_iter().collect())
    }

    /// The index limited to `keep`: their deps, the aliases and softdeps naming them
    /// (softdep targets are kept as written: an alias that resolves to nothing carried
    /// simply loads nothing). modules.builtin is kept whole.
    pub fn restricted(&self, keep: &BTreeSet<String>) -> IndexFiles {
        let mut files = IndexFiles::default();
        for (name, path) in &self.paths {
            if !keep.contains(name) {
                continue;
            }
            let deps: Vec<&str> = self
                .dependencies(name)
                .iter()
                .filter_map(|d| self.paths.get(d).map(String::as_str))
                .collect();
            files.dep.push_str(&format!("{path}:"));
            for d in deps {
                files.dep.push(' ');
                files.dep.push_str(d);
            }
            files.dep.push('\n');
        }
        for (pattern, module) in &self.aliases {
            if keep.contains(module) {
                files.alias.push_str(&format!("alias {pattern} {module}\n"));
            }
        }
        for (module, soft) in &self.softdeps {
            if !keep.contains(module) {
                continue;
            }
            files.softdep.push_str(&format!("softdep {module}"));
            if !soft.pre.is_empty() {
                files
                    .softdep
                    .push_str(&format!(" pre: {}", soft.pre.join(" ")));
            }
            if !soft.post.is_empty() {
                files
                    .softdep
                    .push_str(&format!(" post: {}", soft.post.join(" ")));
            }
            files.softdep.push('\n');
        }
        for path in self.builtin.values() {
            files.builtin.push_str(path);
            files.builtin.push('\n');
        }
        files
    }
}

/// Non-empty, non-comment lines with 1-based numbers.
fn content_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

#[cfg(test)]
mod tests;
