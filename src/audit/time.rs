//! Time stamps of the audit log: RFC 3339 in UTC with milliseconds, written and parsed without
//! a date library.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = y - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * if m > 2 { m - 3 } else { m + 9 } + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// RFC 3339 in UTC with milliseconds, e.g. `2025-01-02T03:04:05.678Z`. Times before 1970
/// are written as the epoch.
pub fn format_time(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

pub(super) fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses RFC 3339 (`2025-01-02T03:04:05Z`, optional fraction, `Z` or `±HH:MM`; `t`, `z` and
/// a space separator are accepted too) or a plain date `YYYY-MM-DD` (midnight UTC). Returns
/// `None` for anything else, and for times before 1970.
pub fn parse_time(text: &str) -> Option<SystemTime> {
    let t = text.trim();
    if !t.is_ascii() || t.len() < 10 {
        return None;
    }
    let (date, rest) = t.split_at(10);
    let b = date.as_bytes();
    if b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y = i64::from(digits(&date[0..4])?);
    let m = digits(&date[5..7])?;
    let d = digits(&date[8..10])?;
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return None;
    }
    let mut secs = days_from_civil(y, m, d) * 86_400;
    let mut nanos = 0u32;
    if !rest.is_empty() {
        let rest = rest.strip_prefix(['T', 't', ' '])?;
        if rest.len() < 8 {
            return None;
        }
        let (clock, mut zone) = rest.split_at(8);
        let c = clock.as_bytes();
        if c[2] != b':' || c[5] != b':' {
            return None;
        }
        let (hh, mm, ss) = (
            digits(&clock[0..2])?,
            digits(&clock[3..5])?,
            digits(&clock[6..8])?,
        );
        if hh > 23 || mm > 59 || ss > 60 {
            return None;
        }
        // A leap second counts as the last second of its minute.
        secs += i64::from(hh * 3600 + mm * 60 + ss.min(59));
        if let Some(frac) = zone.strip_prefix('.') {
            let n = frac.bytes().take_while(u8::is_ascii_digit).count();
            if n == 0 {
                return None;
            }
            let (fd, z) = frac.split_at(n);
            let mut padded: String = fd.chars().take(9).collect();
            while padded.len() < 9 {
                padded.push('0');
            }
            nanos = digits(&padded)?;
            zone = z;
        }
        match zone {
            "Z" | "z" => {}
            _ => {
                let sign = match zone.as_bytes().first()? {
                    b'+' => 1,
                    b'-' => -1,
                    _ => return None,
                };
                let z = &zone[1..];
                if z.len() != 5 || z.as_bytes()[2] != b':' {
                    return None;
                }
                let (oh, om) = (digits(&z[0..2])?, digits(&z[3..5])?);
                if oh > 23 || om > 59 {
                    return None;
                }
                secs -= sign * i64::from(oh * 3600 + om * 60);
            }
        }
    }
    let secs = u64::try_from(secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_format_and_parse() {
        let t = UNIX_EPOCH + Duration::from_millis(1_735_787_045_678);
        assert_eq!(format_time(t), "2025-01-02T03:04:05.678Z");
        assert_eq!(format_time(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_time(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(parse_time("2025-01-02T03:04:05.678Z"), Some(t));
        assert_eq!(parse_time("2025-01-02t05:04:05.678+02:00"), Some(t));
        assert_eq!(
            parse_time("2025-01-02"),
            Some(UNIX_EPOCH + Duration::from_secs(1_735_776_000))
        );
        assert_eq!(
            parse_time("2025-01-01 22:04:05-05:00"),
            Some(UNIX_EPOCH + Duration::from_secs(1_735_787_045))
        );
        for bad in [
            "",
            "2025-13-01",
            "2025-02-29",
            "2025-01-02T25:00:00Z",
            "2025-01-02T03:04:05",
            "2025-01-02T03:04:05.Z",
            "2025-01-02T03:04:05+0200",
            "1969-12-31",
            "2025-01-02Tx",
            "２０２５-01-02",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
        // Round trip over a range of days, including leap years.
        for day in (0..80_000u64).step_by(97) {
            let t = UNIX_EPOCH + Duration::from_millis(day * 86_400_000 + 12_345_678);
            assert_eq!(parse_time(&format_time(t)), Some(t));
        }
    }
}
