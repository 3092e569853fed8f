//! Berth's version numbers: `MAJOR.MINOR.PATCH`, optionally `-PRERELEASE`, ordered as
//! Semantic Versioning 2.0.0 orders them (§11: numbers numerically; a pre-release before
//! its release; pre-release identifiers compared one by one, numeric ones numerically
//! and below alphanumeric ones). Build metadata (`+...`) is not part of a Berth version:
//! the build id travels beside it.

use std::cmp::Ordering;
use std::fmt;

/// The longest version string accepted.
const MAX_LEN: usize = 64;

#[derive(Debug, Clone)]
pub struct Version {
    core: [u64; 3],
    pre: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a version (MAJOR.MINOR.PATCH[-PRERELEASE], at most {MAX_LEN} characters): {why}")]
pub struct VersionError {
    pub text: String,
    pub why: &'static str,
}

impl Version {
    pub fn parse(text: &str) -> Result<Version, VersionError> {
        let err = |why| VersionError {
            text: text.chars().take(MAX_LEN + 8).collect(),
            why,
        };
        if text.len() > MAX_LEN {
            return Err(err("too long"));
        }
        let (core, pre) = match text.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (text, None),
        };
        let mut numbers = core.split('.');
        let mut out = [0u64; 3];
        for slot in &mut out {
            let n = numbers
                .next()
                .ok_or_else(|| err("fewer than three numbers"))?;
            *slot = number(n)
                .ok_or_else(|| err("a number is empty, not decimal, or has a leading zero"))?;
        }
        if numbers.next().is_some() {
            return Err(err("more than three numbers"));
        }
        let pre = match pre {
            None => Vec::new(),
            Some(pre) => pre
                .split('.')
                .map(|id| {
                    let numeric = !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit());
                    // SemVer §9: numeric identifiers have no leading zero, and here fit
                    // a u64 (so they compare as numbers, never as text).
                    let ok = if numeric {
                        number(id).is_some()
                    } else {
                        !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    };
                    ok.then(|| id.to_string())
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    err("a pre-release identifier is empty, not [0-9A-Za-z-], or a number with a leading zero")
                })?,
        };
        Ok(Version { core: out, pre })
    }
}

/// A decimal number without a leading zero (SemVer §2).
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

impl Ord for Version {
    fn cmp(&self, other: &Version) -> Ordering {
        self.core
            .cmp(&other.core)
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => compare_pre(&self.pre, &other.pre),
            })
    }
}

/// Equal exactly when ordered equal (the order is the one that matters).
impl PartialEq for Version {
    fn eq(&self, other: &Version) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Version) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn compare_pre(a: &[String], b: &[String]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        let order = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            (Ok(_), Err(_)) => Ordering::Less,
            (Err(_), Ok(_)) => Ordering::Greater,
            (Err(_), Err(_)) => x.cmp(y),
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    a.len().cmp(&b.len())
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [major, minor, patch] = self.core;
        write!(f, "{major}.{minor}.{patch}")?;
        if !self.pre.is_empty() {
            write!(f, "-{}", self.pre.join("."))?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Version {
    type Err = VersionError;
    fn from_str(s: &str) -> Result<Version, VersionError> {
        Version::parse(s)
    }
}

impl<'de> serde::Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Version, D::Error> {
        let s = String::deserialize(d)?;
        Version::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn ordered_as_semver_orders_them() {
        // SemVer 2.0.0 §11's own example chain.
        let chain = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.1",
            "1.1.0",
            "2.0.0",
            "10.0.0",
        ];
        for pair in chain.windows(2) {
            assert!(v(pair[0]) < v(pair[1]), "{} < {}", pair[0], pair[1]);
        }
        assert_eq!(v("0.1.3-corrupt").to_string(), "0.1.3-corrupt");
        assert_eq!(v("1.0.0-rc.1"), v("1.0.0-rc.1"));
        assert_ne!(v("1.0.0-rc.1"), v("1.0.0-rc.2"));
    }

    #[test]
    fn refuses_what_is_not_a_version() {
        for bad in [
            "",
            "1",
            "1.2",
            "1.2.3.4",
            "01.2.3",
            "1.2.x",
            "1.2.3-",
            "1.2.3-a..b",
            "1.2.3+build",
            "1.2.3-ä",
            " 1.2.3",
        ] {
            assert!(Version::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Version::parse(&format!("1.2.3-{}", "a".repeat(80))).is_err());
    }
}
