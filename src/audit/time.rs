//! Time stamps of the audit log: written as RFC 3339 in UTC with milliseconds, parsed from
//! any RFC 3339 time stamp or a plain date.
//!
//! The `time` crate does the calendar work. `humantime` was the other candidate, but it
//! parses only UTC (`Z`) stamps, while `tvault audit --since` takes offsets such as `+02:00`;
//! `time` parses all of RFC 3339 and formats to an exact description, so the bytes written
//! stay those of earlier versions (which matters: they are inside the MAC).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc3339;
use time::format_description::BorrowedFormatItem;
use time::macros::{datetime, format_description};
use time::{Date, OffsetDateTime};

/// What the writer writes: milliseconds (truncated, not rounded) and always `Z`.
const WRITTEN: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// A plain date, taken as midnight UTC.
const DATE: &[BorrowedFormatItem<'static>] = format_description!("[year]-[month]-[day]");

/// The latest time a four-digit year can hold; a clock past it is written as this.
const LATEST: OffsetDateTime = datetime!(9999-12-31 23:59:59.999_999_999 UTC);

/// RFC 3339 in UTC with milliseconds, e.g. `2025-01-02T03:04:05.678Z`. Times before 1970
/// are written as the epoch, times after the year 9999 as its last millisecond.
pub fn format_time(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let at = i64::try_from(since.as_secs())
        .ok()
        .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok())
        .and_then(|at| at.replace_nanosecond(since.subsec_nanos()).ok())
        .unwrap_or(LATEST);
    // Cannot fail: an OffsetDateTime has every component, and its year has four digits.
    at.format(WRITTEN).unwrap_or_default()
}

/// Parses RFC 3339 (`2025-01-02T03:04:05Z`, optional fraction, `Z` or `±HH:MM`; `t`, `z` and
/// a space separator are accepted too) or a plain date `YYYY-MM-DD` (midnight UTC). Returns
/// `None` for anything else, and for times before 1970.
pub fn parse_time(text: &str) -> Option<SystemTime> {
    let t = text.trim();
    if !t.is_ascii() {
        return None;
    }
    let at = if t.len() == 10 {
        Date::parse(t, DATE).ok()?.midnight().assume_utc()
    } else {
        // `time` takes any byte between the date and the time; these are the ones RFC 3339
        // names (its section 5.6 note allows the space).
        if !matches!(t.as_bytes().get(10), Some(b'T' | b't' | b' ')) {
            return None;
        }
        OffsetDateTime::parse(t, &Rfc3339).ok()?
    };
    let secs = u64::try_from(at.unix_timestamp()).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, at.nanosecond()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(n)
    }

    /// The bytes are inside every line's MAC: they must stay what earlier versions wrote.
    #[test]
    fn written_stamps_are_pinned() {
        let t = ms(1_735_787_045_678);
        assert_eq!(format_time(t), "2025-01-02T03:04:05.678Z");
        assert_eq!(format_time(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time(ms(951_782_400_000)), "2000-02-29T00:00:00.000Z");
        assert_eq!(
            format_time(ms(4_102_444_799_999)),
            "2099-12-31T23:59:59.999Z"
        );
        assert_eq!(
            format_time(t + Duration::from_nanos(999_999)),
            "2025-01-02T03:04:05.678Z",
            "milliseconds are truncated"
        );
        assert_eq!(
            format_time(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            format_time(UNIX_EPOCH + Duration::from_secs(300_000_000_000)),
            "9999-12-31T23:59:59.999Z"
        );
        // Every stamp in the logs an earlier version wrote comes out the same again.
        let legacy = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/audit-legacy");
        let mut seen = 0;
        for file in ["audit.jsonl.1", "audit.jsonl"] {
            let text = std::fs::read_to_string(format!("{legacy}/{file}")).unwrap();
            for line in text.lines() {
                let entry: serde_json::Value = serde_json::from_str(line).unwrap();
                let stamp = entry["time"].as_str().unwrap();
                assert_eq!(format_time(parse_time(stamp).unwrap()), stamp);
                seen += 1;
            }
        }
        assert_eq!(seen, 8);
    }

    #[test]
    fn parsing_takes_rfc_3339_and_dates_and_nothing_else() {
        let t = ms(1_735_787_045_678);
        assert_eq!(parse_time("2025-01-02T03:04:05.678Z"), Some(t));
        assert_eq!(parse_time(" 2025-01-02T03:04:05.678Z\n"), Some(t));
        assert_eq!(parse_time("2025-01-02t05:04:05.678+02:00"), Some(t));
        assert_eq!(parse_time("2025-01-02T03:04:05.678z"), Some(t));
        assert_eq!(
            parse_time("2025-01-02T03:04:05.678123456789Z"),
            Some(t + Duration::from_nanos(123_456)),
            "digits past nanoseconds are dropped"
        );
        assert_eq!(parse_time("2025-01-02"), Some(ms(1_735_776_000_000)));
        assert_eq!(
            parse_time("2025-01-01 22:04:05-05:00"),
            Some(ms(1_735_787_045_000))
        );
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(UNIX_EPOCH));
        for bad in [
            "",
            "garbage",
            "2025-13-01",
            "2025-02-29",
            "2025-1-02",
            "+2025-01-02",
            "2025-01-02T25:00:00Z",
            "2025-01-02T03:04:05",
            "2025-01-02T03:04:05.Z",
            "2025-01-02T03:04:05+0200",
            "2025-01-02T03:04:05+24:00",
            "2025-01-02T03:04:05Zjunk",
            "2025-01-02x03:04:05Z",
            "2025-01-02_03:04:05Z",
            "1969-12-31",
            "1970-01-01T00:30:00+01:00",
            "2025-01-02Tx",
            "２０２５-01-02",
            "2025-01-02T03:04:05.678Z\u{0}",
        ] {
            assert_eq!(parse_time(bad), None, "{bad:?}");
        }
        // Whatever the writer writes parses back to the same millisecond.
        for day in (0..80_000u64).step_by(97) {
            let t = ms(day * 86_400_000 + 12_345_678);
            assert_eq!(parse_time(&format_time(t)), Some(t));
        }
        assert_eq!(
            parse_time(&format_time(
                UNIX_EPOCH + Duration::from_secs(300_000_000_000)
            )),
            Some(ms(253_402_300_799_999))
        );
    }
}
