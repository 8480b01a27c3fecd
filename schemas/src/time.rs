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
    canonical_instant(s.as_bytes()).or_else(|| rfc3339_by_chrono(s))
}

/// chrono's RFC 3339 parse, which decides every instant [`canonical_instant`] does not take.
fn rfc3339_by_chrono(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s.trim()).ok().map(|dt| dt.timestamp_millis())
}

/// The shape phones send, `YYYY-MM-DDTHH:MM:SS[.f{1,9}](Z|±HH:MM)`, read without chrono (its
/// general parse was a fifth of validating a sample). `None` means "not this shape, or not a real
/// date and time": chrono then decides, so the answer is always chrono's (a test compares them).
/// Leap seconds (`:60`), lowercase `t`/`z`, a space for `T`, surrounding whitespace and more than
/// nine fraction digits are all left to chrono.
fn canonical_instant(b: &[u8]) -> Option<i64> {
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let field = b.get(range)?;
        field.iter().try_fold(0i64, |n, c| c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0')))
    };
    let punctuated = b.len() >= 20 && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':' && b[16] == b':';
    if !punctuated {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut at = 19;
    let mut millis = 0;
    if b[at] == b'.' {
        let count = b[at + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if !(1..=9).contains(&count) {
            return None;
        }
        let kept = count.min(3);
        millis = digits(at + 1..at + 1 + kept)? * [100, 10, 1][kept - 1];
        at += 1 + count;
    }
    let offset_s = match &b[at..] {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (digits(at + 1..at + 3)?, digits(at + 4..at + 6)?);
            if h > 23 || m > 59 {
                return None;
            }
            if *sign == b'-' { -(h * 3600 + m * 60) } else { h * 3600 + m * 60 }
        }
        _ => return None,
    };
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    Some(seconds * 1000 + millis)
}

/// Days in `month` (1–12) of the proleptic Gregorian `year`.
fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
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

    /// The shortcut for the usual shape answers exactly as chrono does: on that shape with every
    /// field in and out of range, and on its near misses.
    #[test]
    fn canonical_instants_read_as_chrono_reads_them() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        // Two digits, mostly within `lo..=hi` (a real field), sometimes anywhere up to `max`.
        let two = |lo: u32, hi: u32, max: u32| prop_oneof![4 => lo..=hi, 1 => 0..=max].prop_map(|n| format!("{n:02}"));
        let fraction = prop_oneof![
            Just(String::new()),
            (1..=12usize, any::<u64>())
                .prop_map(|(n, d)| { format!(".{}", format!("{d:020}").get(..n).unwrap_or_default()) })
        ];
        let offset = prop_oneof![
            3 => Just("Z".to_owned()),
            1 => Just("z".to_owned()),
            1 => Just("-00:00".to_owned()),
            3 => (prop::sample::select(vec!['+', '-']), two(0, 23, 30), two(0, 59, 70)).prop_map(|(s, h, m)| format!("{s}{h}:{m}")),
            1 => (prop::sample::select(vec!['+', '-']), two(0, 23, 30)).prop_map(|(s, h)| format!("{s}{h}")),
        ];
        let shaped = (
            prop_oneof![Just(1999u32), Just(2000), Just(2024), Just(2100), Just(1600), 0..=9999u32],
            (two(1, 12, 13), two(1, 28, 32), prop::sample::select(vec!['T', 'T', 'T', 't', ' ', '_'])),
            (two(0, 23, 25), two(0, 59, 61), two(0, 59, 61)),
            fraction,
            offset,
        )
            .prop_map(|(y, (mo, d, t), (h, mi, s), f, o)| format!("{y:04}-{mo}-{d}{t}{h}:{mi}:{s}{f}{o}"));
        // Near misses: one byte of a shaped instant replaced, removed or doubled.
        let mutated =
            (shaped.clone(), any::<prop::sample::Index>(), any::<u8>(), 0..3u8).prop_map(|(s, at, c, how)| {
                let mut b = s.into_bytes();
                let i = at.index(b.len());
                match how {
                    0 => b[i] = c & 0x7f,
                    1 => {
                        b.remove(i);
                    }
                    _ => b.insert(i, b[i]),
                }
                String::from_utf8(b).unwrap_or_default()
            });
        let mut runner = TestRunner::new(Config { cases: 20_000, ..Config::default() });
        let canonical = std::cell::Cell::new(0usize);
        runner
            .run(&prop_oneof![shaped, mutated], |s| {
                prop_assert_eq!(parse_instant(&s), rfc3339_by_chrono(&s), "{:?}", s);
                canonical.set(canonical.get() + usize::from(canonical_instant(s.as_bytes()).is_some()));
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
        // The shortcut is taken for a good share of the cases (about a sixth with this generator),
        // so the comparison above covers it as well as chrono's own path.
        assert!(canonical.get() > 2_000, "{}", canonical.get());
        for s in [
            "2024-02-29T23:59:59.999999999+23:59",
            "2023-02-29T00:00:00Z",
            "2024-06-01T03:50:00.Z",
            "2000-03-01T00:00:00-00:00",
        ] {
            assert_eq!(parse_instant(s), rfc3339_by_chrono(s), "{s}");
        }
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
