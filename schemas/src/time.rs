//! Instants (DOMAIN.md G1): UTC, millisecond precision, ISO 8601 with `Z` on output.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};

/// Longest timestamp string accepted, in bytes (`2024-06-01T03:50:00.123456789+05:45` has 35).
pub const MAX_INSTANT_BYTES: usize = 64;

/// G6: the earliest plausible instant, 2000-01-01T00:00:00Z, in UTC milliseconds. An earlier
/// `startAt` is `INVALID_TIMESTAMP` (epoch-zero and 32-bit overflow dates).
pub const MIN_PLAUSIBLE_MS: i64 = 946_684_800_000;

/// G6: how far after the moment the server receives it an instant may lie (24 h, in milliseconds).
/// Later is `FUTURE_TIMESTAMP` (a broken device clock or a mis-decoded timestamp).
pub const MAX_FUTURE_MS: i64 = 86_400_000;

/// Parses an RFC 3339 timestamp into UTC milliseconds (an offset is converted to UTC; sub-millisecond
/// digits are truncated). A string longer than [`MAX_INSTANT_BYTES`] is `None`.
pub fn parse_instant(s: &str) -> Option<i64> {
    if s.len() > MAX_INSTANT_BYTES {
        return None;
    }
    DateTime::parse_from_rfc3339(s.trim()).ok().map(|dt| dt.timestamp_millis())
}

/// Why an instant is implausible (G6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Implausible {
    /// Before [`MIN_PLAUSIBLE_MS`].
    TooEarly,
    /// More than [`MAX_FUTURE_MS`] after `received_at_ms`.
    TooLate,
}

/// G6: whether `ms` lies between 2000-01-01T00:00:00Z and 24 h after `received_at_ms`.
pub fn check_plausible(ms: i64, received_at_ms: i64) -> Result<(), Implausible> {
    if ms < MIN_PLAUSIBLE_MS {
        Err(Implausible::TooEarly)
    } else if ms > received_at_ms.saturating_add(MAX_FUTURE_MS) {
        Err(Implausible::TooLate)
    } else {
        Ok(())
    }
}

/// Formats UTC milliseconds as `2024-06-01T03:50:00.000Z`.
pub fn format_instant(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|dt| dt.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

const EPOCH_DAYS_FROM_CE: i32 = 719_163;

/// Days since 1970-01-01 (Arrow `Date32`).
pub fn date_to_days(d: NaiveDate) -> i32 {
    use chrono::Datelike;
    d.num_days_from_ce() - EPOCH_DAYS_FROM_CE
}

/// The date `days` after 1970-01-01 (1970-01-01 itself when out of chrono's range).
pub fn days_to_date(days: i32) -> NaiveDate {
    days.checked_add(EPOCH_DAYS_FROM_CE).and_then(NaiveDate::from_num_days_from_ce_opt).unwrap_or_default()
}

/// Parses exactly `YYYY-MM-DD`: four-digit year, two-digit month and day, nothing around them
/// (`2024-5-1`, ` 2024-05-01` and `-2024-05-01` are `None`), and a real calendar date.
pub fn parse_date(s: &str) -> Option<NaiveDate> {
    let b = s.as_bytes();
    let shaped = b.len() == 10
        && b.iter().enumerate().all(|(i, c)| if i == 4 || i == 7 { *c == b'-' } else { c.is_ascii_digit() });
    if !shaped {
        return None;
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_exactly_yyyy_mm_dd() {
        assert_eq!(parse_date("2024-05-01").map(date_to_days), Some(19_844));
        for bad in [
            "2024-5-1",
            " 2024-05-01",
            "2024-05-01\n",
            "-2024-05-01",
            "+2024-05-01",
            "2024-02-30",
            "2024/05/01",
            "",
            "20240501xx",
        ] {
            assert_eq!(parse_date(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn instants_round_trip_in_utc() {
        let t = parse_instant("2024-06-01T03:50:00Z").unwrap();
        assert_eq!(format_instant(t), "2024-06-01T03:50:00.000Z");
        assert_eq!(parse_instant("2024-05-31T23:50:00-04:00"), Some(t));
        assert_eq!(parse_instant("yesterday"), None);
    }

    /// Issue 10: odd timestamps are `None` or a number, never a panic.
    #[test]
    fn hostile_instants_do_not_panic() {
        let long = format!("2024-06-01T03:50:00.{}Z", "1".repeat(10_000));
        for s in [
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999999Z",
            "-0001-01-01T00:00:00Z",
            "+275760-09-13T00:00:00Z",
            "99999-01-01T00:00:00Z",
            "2024-02-30T00:00:00Z",
            "2024-06-01T24:00:00Z",
            "2024-06-01T23:59:60Z",
            "2024-06-01T03:50:00+99:99",
            "2024-06-01T03:50:00+1é:00",
            "2024-06-01T03:50:00.é",
            "2024-06-01T03:50:00\0Z",
            "2024-06-01T03:50:00.00000000000000000000000001Z",
            "",
            "é",
            long.as_str(),
        ] {
            let _ = parse_instant(s);
        }
        assert_eq!(parse_instant(&long), None);
        assert!(parse_instant("9999-12-31T23:59:59.999Z").is_some());
        assert_eq!(days_to_date(i32::MAX), NaiveDate::default());
        assert_eq!(days_to_date(i32::MIN), NaiveDate::default());
        assert_eq!(format_instant(i64::MAX), "");
    }

    #[test]
    fn g6_plausible_window() {
        let now = parse_instant("2026-01-01T00:00:00Z").unwrap();
        assert_eq!(check_plausible(MIN_PLAUSIBLE_MS, now), Ok(()));
        assert_eq!(check_plausible(MIN_PLAUSIBLE_MS - 1, now), Err(Implausible::TooEarly));
        assert_eq!(check_plausible(now + MAX_FUTURE_MS, now), Ok(()));
        assert_eq!(check_plausible(now + MAX_FUTURE_MS + 1, now), Err(Implausible::TooLate));
        assert_eq!(check_plausible(i64::MAX, i64::MAX), Ok(()));
        assert_eq!(check_plausible(i64::MIN, now), Err(Implausible::TooEarly));
    }

    #[test]
    fn dates_are_days_since_unix_epoch() {
        let d = parse_date("1970-01-02").unwrap();
        assert_eq!(date_to_days(d), 1);
        assert_eq!(days_to_date(19_875), parse_date("2024-06-01").unwrap());
    }
}
