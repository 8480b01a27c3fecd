//! Instants (DOMAIN.md G1): UTC, millisecond precision, ISO 8601 with `Z` on output.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};

/// Parses an RFC 3339 timestamp into UTC milliseconds (an offset is converted to UTC; sub-millisecond
/// digits are truncated).
pub fn parse_instant(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s.trim()).ok().map(|dt| dt.timestamp_millis())
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

/// The date `days` after 1970-01-01.
pub fn days_to_date(days: i32) -> NaiveDate {
    NaiveDate::from_num_days_from_ce_opt(days + EPOCH_DAYS_FROM_CE).unwrap_or_default()
}

/// Parses `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_round_trip_in_utc() {
        let t = parse_instant("2024-06-01T03:50:00Z").unwrap();
        assert_eq!(format_instant(t), "2024-06-01T03:50:00.000Z");
        assert_eq!(parse_instant("2024-05-31T23:50:00-04:00"), Some(t));
        assert_eq!(parse_instant("yesterday"), None);
    }

    #[test]
    fn dates_are_days_since_unix_epoch() {
        let d = parse_date("1970-01-02").unwrap();
        assert_eq!(date_to_days(d), 1);
        assert_eq!(days_to_date(19_875), parse_date("2024-06-01").unwrap());
    }
}
