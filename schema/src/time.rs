//! UTC instants as RFC 3339 text, both ways, for what Berth's parts write and read
//! (the runtime's `created`, event times, `--since`, cloud metadata's expiry times).
//! The calendar arithmetic is Howard Hinnant's well-known proleptic Gregorian
//! conversions ("chrono-Compatible Low-Level Date Algorithms"); a date crate would be
//! more than these few lines need.

/// Days from 1970-01-01 to a date; None before 1970 or for a month or day out of range.
pub fn days_from_civil(y: u64, m: u64, d: u64) -> Option<u64> {
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || y < 1970 {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// The date `days` after 1970-01-01: (year, month, day).
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + u64::from(month <= 2), month, day)
}

/// `2026-12-01T10:00:00.123456789Z`: seconds since the epoch and nanoseconds.
pub fn rfc3339(secs: u64, nanos: u32) -> String {
    let (year, month, day) = civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
    )
}

/// Now, as [`rfc3339`] writes it.
pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs(), now.subsec_nanos())
}

/// Seconds since the epoch of `YYYY-MM-DDTHH:MM:SS[.fraction]` in UTC (`Z`, `+00:00`
/// or `+0000`; a `t` or a blank may stand for the `T`). Other offsets are refused
/// rather than guessed.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let t = text.trim();
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let s = t.get(r)?;
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    if t.get(4..5)? != "-" || t.get(7..8)? != "-" || !matches!(t.get(10..11)?, "T" | "t" | " ") {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if t.get(13..14)? != ":" || t.get(16..17)? != ":" {
        return None;
    }
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut rest = t.get(19..)?;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    if !matches!(rest, "Z" | "z" | "+00:00" | "+0000") {
        return None;
    }
    Some(days_from_civil(y, mo, d)? * 86_400 + h * 3600 + mi * 60 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ways() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        let t = 1_796_087_645; // 2026-12-01T01:14:05Z
        assert_eq!(rfc3339(t, 5), "2026-12-01T01:14:05.000000005Z");
        assert_eq!(parse_rfc3339("2026-12-01T01:14:05Z"), Some(t));
        assert_eq!(parse_rfc3339("2026-12-01T01:14:05.5+00:00"), Some(t));
        assert_eq!(parse_rfc3339(&rfc3339(t, 123)), Some(t));
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z"), Some(1_709_164_800));
        for bad in [
            "2026-12-01T01:14:05+01:00",
            "2026-12-01",
            "2026-13-01T00:00:00Z",
            "2026-12-01T24:00:00Z",
            "2026-12-01T01:14:05.Z",
            "1969-12-31T23:59:59Z",
            "+026-12-01T01:14:05Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
