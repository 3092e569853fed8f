//! `/etc/berth/update.toml`: user-data's `berth.update`, as the agent writes it. init
//! reads the trial's health settings from it; `berth-updater auto` the automatic
//! updates'.
//!
//! ```toml
//! health_seconds = 60               # a trial stays healthy this long to be blessed
//! health_timeout_seconds = 600
//! source = "registry.example.com/berth/os"   # automatic updates: off without one
//! tag = "stable"
//! check_interval = "1h"             # s, m, h or d; checks are jittered
//! reboot = "immediately"            # or "never", or { window = "Sat 02:00-04:00" } (UTC)
//! fleetlock_url = "http://fleetlock.example.com:8080"
//! fleetlock_group = "default"
//! ```

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the agent writes it.
pub const CONFIG_PATH: &str = "/etc/berth/update.toml";
/// The tag checked when none is given.
pub const DEFAULT_TAG: &str = "stable";
/// How often a machine checks when not told.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3600);
/// Checks more often than this are a mistake (and a load on the registry).
pub const MIN_INTERVAL: Duration = Duration::from_secs(10);
pub const MAX_INTERVAL: Duration = Duration::from_secs(30 * 86_400);
/// A day: longer settle times or timeouts are mistakes, not policies.
pub const MAX_HEALTH_SECONDS: u64 = 86_400;

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfig {
    /// How long a trial boot must stay healthy before it is blessed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_seconds: Option<u64>,
    /// How long after `berth: ready` it has to become so before the trial fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_timeout_seconds: Option<u64>,
    /// The repository automatic updates come from (`REGISTRY/REPOSITORY`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check_interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reboot: Option<Reboot>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleetlock_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleetlock_group: Option<String>,
}

/// When a machine reboots into a version it applied by itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reboot {
    Policy(Policy),
    Window { window: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    Immediately,
    Never,
}

pub use crate::Invalid;

fn invalid(key: &'static str, why: impl Into<String>) -> Invalid {
    Invalid {
        section: "update",
        key,
        why: why.into(),
    }
}

impl UpdateConfig {
    pub fn parse(text: &str) -> Result<UpdateConfig, String> {
        let c: UpdateConfig = toml::from_str(text).map_err(|e| e.message().to_string())?;
        c.check().map_err(|e| e.to_string())?;
        Ok(c)
    }

    pub fn load(path: &Path) -> Result<Option<UpdateConfig>, String> {
        let Some(text) = crate::read_settings(path, 64 * 1024)? else {
            return Ok(None);
        };
        UpdateConfig::parse(&text)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Every value in bounds; the first that is not, named.
    pub fn check(&self) -> Result<(), Invalid> {
        for (key, value) in [
            ("health_seconds", self.health_seconds),
            ("health_timeout_seconds", self.health_timeout_seconds),
        ] {
            if value.is_some_and(|v| v > MAX_HEALTH_SECONDS) {
                return Err(invalid(
                    key,
                    format!("at most {MAX_HEALTH_SECONDS} (a day)"),
                ));
            }
        }
        if self.health_timeout_seconds == Some(0) {
            return Err(invalid("health_timeout_seconds", "must be at least 1"));
        }
        if let Some(s) = &self.source {
            if s.is_empty() || s.len() > 255 || s.contains([':', '@']) && !s.contains('/') {
                return Err(invalid("source", "REGISTRY/REPOSITORY, without a tag"));
            }
            let repo = s.rsplit('/').next().unwrap_or_default();
            if repo.contains([':', '@']) {
                return Err(invalid(
                    "source",
                    "REGISTRY/REPOSITORY, without a tag (see tag)",
                ));
            }
        }
        if let Some(t) = &self.tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !ok {
                return Err(invalid("tag", format!("{t:?} is not a tag")));
            }
        }
        if let Some(i) = &self.check_interval {
            parse_interval(i).map_err(|why| invalid("check_interval", why))?;
        }
        if let Some(Reboot::Window { window }) = &self.reboot {
            window
                .parse::<Window>()
                .map_err(|why| invalid("reboot.window", why))?;
        }
        if let Some(u) = &self.fleetlock_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) || u.len() > 512 {
                return Err(invalid("fleetlock_url", "an http:// or https:// URL"));
            }
        }
        if let Some(g) = &self.fleetlock_group {
            if g.is_empty() || g.len() > 64 || g.chars().any(|c| !c.is_ascii_graphic()) {
                return Err(invalid(
                    "fleetlock_group",
                    format!("{g:?} is not a group name"),
                ));
            }
        }
        if self.source.is_none()
            && (self.tag.is_some()
                || self.check_interval.is_some()
                || self.reboot.is_some()
                || self.fleetlock_url.is_some())
        {
            return Err(invalid(
                "source",
                "automatic updates need a source (tag, check_interval, reboot and fleetlock_url apply to it)",
            ));
        }
        Ok(())
    }

    /// `SOURCE:TAG`, when automatic updates are on.
    pub fn reference(&self) -> Option<String> {
        let source = self.source.as_deref()?;
        Some(format!(
            "{source}:{}",
            self.tag.as_deref().unwrap_or(DEFAULT_TAG)
        ))
    }

    pub fn interval(&self) -> Duration {
        self.check_interval
            .as_deref()
            .and_then(|i| parse_interval(i).ok())
            .unwrap_or(DEFAULT_INTERVAL)
    }
}

/// `90s`, `30m`, `1h`, `1d`: within [`MIN_INTERVAL`] and [`MAX_INTERVAL`].
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?}: a number and s, m, h or d (as 30m)");
    let unit = text.chars().last().ok_or_else(bad)?;
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    let n: u64 = text[..text.len() - 1].parse().map_err(|_| bad())?;
    let d = Duration::from_secs(n.checked_mul(scale).ok_or_else(bad)?);
    if d < MIN_INTERVAL || d > MAX_INTERVAL {
        return Err(format!(
            "{text:?}: between {} s and {} days",
            MIN_INTERVAL.as_secs(),
            MAX_INTERVAL.as_secs() / 86_400
        ));
    }
    Ok(d)
}

/// A reboot window, `[DAYS ]HH:MM-HH:MM` in UTC (Berth keeps no time zone): DAYS is a
/// day (`Sat`), a list (`Sat,Sun`) or a range (`Mon-Fri`), every day when left out. A
/// window that ends before it starts runs past midnight into the next day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Monday first.
    days: [bool; 7],
    start: u32,
    end: u32,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
/// `Mon,Tue,Wed,Thu,Fri,Sat,Sun 23:00-01:00` is 37: room to spare, and the whole file
/// stays well inside what init reads of it.
const MAX_WINDOW: usize = 64;

/// `Mon`, `monday`, `MON`...: the first three letters name the day.
fn day(text: &str) -> Result<usize, String> {
    let lower = text.to_ascii_lowercase();
    // By `get`, not by slicing: user-data is anything, and a character of several bytes
    // must be a refusal, not a panic (init parses this file too).
    let head = lower.get(..3).filter(|_| lower.len() <= 9);
    head.and_then(|h| DAYS.iter().position(|d| *d == h))
        .ok_or_else(|| format!("{text:?} is not a day (Mon ... Sun)"))
}

fn minutes(text: &str) -> Result<u32, String> {
    let bad = || format!("{text:?} is not a time (HH:MM)");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 || text.len() != 5 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

impl std::str::FromStr for Window {
    type Err = String;

    fn from_str(text: &str) -> Result<Window, String> {
        if text.len() > MAX_WINDOW {
            return Err(format!("at most {MAX_WINDOW} characters"));
        }
        let words: Vec<&str> = text.split_whitespace().collect();
        let (days_text, times) = match words[..] {
            [times] => (None, times),
            [days, times] => (Some(days), times),
            _ => return Err(format!("{text:?}: [DAYS ]HH:MM-HH:MM")),
        };
        let mut days = [days_text.is_none(); 7];
        for item in days_text
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
        {
            match item.split_once('-') {
                Some((from, to)) => {
                    let (from, to) = (day(from)?, day(to)?);
                    let mut d = from;
                    loop {
                        days[d] = true;
                        if d == to {
                            break;
                        }
                        d = (d + 1) % 7;
                    }
                }
                None => days[day(item)?] = true,
            }
        }
        if !days.contains(&true) {
            return Err(format!("{text:?}: no day"));
        }
        let (start, end) = times
            .split_once('-')
            .ok_or_else(|| format!("{times:?}: HH:MM-HH:MM"))?;
        let (start, end) = (minutes(start)?, minutes(end)?);
        if start == end {
            return Err(format!("{times:?}: an empty window"));
        }
        Ok(Window { days, start, end })
    }
}

impl Window {
    /// Whether `unix_seconds` (UTC) falls in the window.
    pub fn contains(&self, unix_seconds: u64) -> bool {
        let days = unix_seconds / 86_400;
        // 1970-01-01 was a Thursday: Monday-first index 3.
        let weekday = ((days + 3) % 7) as usize;
        let minute = ((unix_seconds % 86_400) / 60) as u32;
        if self.start < self.end {
            self.days[weekday] && (self.start..self.end).contains(&minute)
        } else {
            let yesterday = (weekday + 6) % 7;
            (self.days[weekday] && minute >= self.start)
                || (self.days[yesterday] && minute < self.end)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Saturday 2026-11-28 at `hh:mm` UTC, plus `days`.
    fn sat(days: u64, hh: u64, mm: u64) -> u64 {
        1_795_996_800 - 86_400 * 2 + days * 86_400 + hh * 3600 + mm * 60
    }

    #[test]
    fn the_epoch_arithmetic_knows_a_monday() {
        // 2026-11-30 00:00 UTC is a Monday.
        let monday = 1_795_996_800;
        assert_eq!(((monday / 86_400 + 3) % 7), 0);
    }

    #[test]
    fn windows_by_day_and_across_midnight() {
        let w: Window = "Sat 02:00-04:00".parse().unwrap();
        assert!(w.contains(sat(0, 2, 0)) && w.contains(sat(0, 3, 59)));
        assert!(!w.contains(sat(0, 4, 0)) && !w.contains(sat(0, 1, 59)));
        assert!(!w.contains(sat(1, 3, 0)), "a Sunday");
        assert_eq!(
            "saturday 02:00-04:00".parse::<Window>(),
            "Sat 02:00-04:00".parse()
        );
        let w: Window = "Fri-Sun 23:00-01:00".parse().unwrap();
        assert!(w.contains(sat(0, 23, 30)) && w.contains(sat(1, 0, 30)));
        assert!(
            w.contains(sat(2, 0, 30)),
            "Monday 00:30, from Sunday's window"
        );
        assert!(!w.contains(sat(2, 23, 30)), "Monday's own evening");
        let every: Window = "12:00-12:30".parse().unwrap();
        assert!(every.contains(sat(3, 12, 10)) && !every.contains(sat(3, 12, 30)));
        for bad in [
            "Sat",
            "Sat 2:00-04:00",
            "Xyz 02:00-04:00",
            "02:00-02:00",
            "24:00-01:00",
            "Sat Sun 01:00-02:00",
            "Moé 02:00-04:00",
            "é 02:00-04:00",
            ", 02:00-04:00",
            "Mon,Mon,Mon,Mon,Mon,Mon,Mon,Mon,Mon,Mon,Mon,Mon,Mon,Mon,Mon,Mon 02:00-04:00",
        ] {
            assert!(bad.parse::<Window>().is_err(), "{bad}");
        }
    }

    #[test]
    fn intervals_and_the_config_checked_by_key() {
        assert_eq!(parse_interval("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_interval("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "h", "5s", "1x", "-1h", "99999d"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
        let c = UpdateConfig::parse(
            "source = \"r.example/berth/os\"\ncheck_interval = \"30m\"\nreboot = { window = \"Sat 02:00-04:00\" }\n",
        )
        .unwrap();
        assert_eq!(c.reference().as_deref(), Some("r.example/berth/os:stable"));
        assert_eq!(c.interval(), Duration::from_secs(1800));
        let c = UpdateConfig::parse("source = \"r.example/os\"\nreboot = \"never\"\n").unwrap();
        assert_eq!(c.reboot, Some(Reboot::Policy(Policy::Never)));
        for (text, key) in [
            ("reboot = \"never\"\n", "berth.update.source"),
            ("source = \"r.example/os:1\"\n", "berth.update.source"),
            ("source = \"r/os\"\ntag = \"a b\"\n", "berth.update.tag"),
            (
                "source = \"r/os\"\nreboot = { window = \"Sat\" }\n",
                "berth.update.reboot.window",
            ),
            (
                "source = \"r/os\"\nfleetlock_url = \"ftp://x\"\n",
                "berth.update.fleetlock_url",
            ),
            (
                "health_timeout_seconds = 0\n",
                "berth.update.health_timeout_seconds",
            ),
        ] {
            let e = UpdateConfig::parse(text).unwrap_err();
            assert!(e.starts_with(key), "{text}: {e}");
        }
        // A config written back reads the same.
        let text = toml::to_string(&c).unwrap();
        assert_eq!(UpdateConfig::parse(&text).unwrap(), c);
    }
}
