//! `berthctl events`: what happened on the machine, as `docker events` shows it:
//! containers (create, start, die with its exit code, oom, stop, restart, remove),
//! images (pull, remove), services (restart, failure) and updates (each state and
//! step), from init's ring. Without `--since`, only what happens from now on; with
//! `--until`, it returns at that time (`--until now`: at once).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_control::{Event, InitProxy};

#[derive(clap::Args)]
pub struct Args {
    /// Show the events since then: a duration ago (`10m`, `1h30m`, `2d`), seconds since
    /// the epoch, or an RFC 3339 UTC time (`2026-12-01T10:00:00Z`).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Return at that time (the same forms, or `now`).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
}

/// How often init is asked for new events while following.
const POLL: Duration = Duration::from_millis(250);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A time as the flags take it, in milliseconds since the epoch.
pub fn parse_time(text: &str, now_ms: u64) -> Result<u64, String> {
    let t = text.trim();
    if t == "now" {
        return Ok(now_ms);
    }
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = t.parse().map_err(|_| format!("{t:?}: too large"))?;
        return Ok(secs.saturating_mul(1000));
    }
    if let Some(secs) = berth_schema::time::parse_rfc3339(t) {
        return Ok(secs * 1000);
    }
    let ago = parse_duration(t).ok_or_else(|| {
        format!(
            "{t:?} is not a time: give a duration ago (10m, 1h30m), seconds since the epoch, \
             an RFC 3339 UTC time (2026-12-01T10:00:00Z) or now"
        )
    })?;
    Ok(now_ms.saturating_sub(ago.as_millis().try_into().unwrap_or(u64::MAX)))
}

/// `90s`, `10m`, `1h30m`, `2d`: a sum of numbers with units s, m, h, d.
fn parse_duration(t: &str) -> Option<Duration> {
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return None,
        };
        let n: u64 = number.parse().ok()?;
        total = total.checked_add(n.checked_mul(unit)?)?;
        number.clear();
    }
    (number.is_empty() && !t.is_empty()).then_some(Duration::from_secs(total))
}

pub async fn run(init: &InitProxy<'_>, args: Args, json: bool) -> Result<(), String> {
    let start = now_ms();
    let since = args
        .since
        .as_deref()
        .map(|t| parse_time(t, start))
        .transpose()?;
    let until = args
        .until
        .as_deref()
        .map(|t| parse_time(t, start))
        .transpose()?;
    let err = |e: berth_control::zbus::Error| format!("init's events: {e}");
    let backlog = init.events(0).await.map_err(err)?;
    let mut last = backlog.last().map_or(0, |e| e.seq);
    let shown =
        |e: &Event| since.is_none_or(|s| e.time_ms >= s) && until.is_none_or(|u| e.time_ms <= u);
    if since.is_some() {
        for e in backlog.iter().filter(|e| shown(e)) {
            print(e, json);
        }
    }
    loop {
        // Past `until`: one last look (an event stamped before it may arrive a moment
        // later), then done.
        let done = until.is_some_and(|u| now_ms() > u);
        if !done {
            std::thread::sleep(POLL);
        }
        let batch = init.events(last).await.map_err(err)?;
        if let Some(first) = batch.first() {
            if first.seq > last + 1 {
                eprintln!(
                    "berthctl: {} events went out of init's ring before they were read",
                    first.seq - last - 1
                );
            }
        }
        for e in &batch {
            last = e.seq;
            if until.is_none_or(|u| e.time_ms <= u) {
                print(e, json);
            }
        }
        if done {
            return Ok(());
        }
    }
}

fn print(e: &Event, json: bool) {
    let secs = e.time_ms / 1000;
    let nanos = u32::try_from(e.time_ms % 1000).unwrap_or(0) * 1_000_000;
    let line = if json {
        // docker's shape: Type, Action, Actor.ID and Actor.Attributes, time, timeNano.
        let mut attributes = serde_json::Map::new();
        for (k, v) in &e.attributes {
            attributes.insert(k.clone(), v.clone().into());
        }
        attributes.insert("name".into(), e.name.clone().into());
        serde_json::json!({
            "Type": e.kind,
            "Action": e.action,
            "Actor": {"ID": e.name, "Attributes": attributes},
            "time": secs,
            "timeNano": u128::from(e.time_ms) * 1_000_000,
        })
        .to_string()
    } else {
        format!("{} {}", berth_schema::time::rfc3339(secs, nanos), e.line())
    };
    crate::print_raw(&format!("{line}\n"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_as_the_flags_take_them() {
        let now = 1_796_087_645_000;
        assert_eq!(parse_time("now", now), Ok(now));
        assert_eq!(parse_time("10m", now), Ok(now - 600_000));
        assert_eq!(parse_time("1h30m", now), Ok(now - 5_400_000));
        assert_eq!(parse_time("1796087645", now), Ok(now));
        assert_eq!(parse_time("2026-12-01T01:14:05Z", now), Ok(now));
        for bad in [
            "",
            "m",
            "10x",
            "yesterday",
            "1h30",
            "2026-12-01T01:14:05+02:00",
        ] {
            assert!(parse_time(bad, now).is_err(), "{bad}");
        }
    }
}
