//! Time zones (DOMAIN.md §6): an IANA zone or a fixed UTC offset, resolved once at ingest (Z1) and
//! stored on every row (Z2: never re-bucketed).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A resolved zone: an IANA name or a fixed offset such as `+05:45` (no DST).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum Zone {
    Iana(Tz),
    /// Offset east of UTC in seconds.
    Fixed(i32),
}

impl Zone {
    /// UTC, the last resort of zone resolution.
    pub const UTC: Zone = Zone::Iana(Tz::UTC);

    /// Parses an IANA name (`America/New_York`, `UTC`) or a fixed offset (`+05:45`, `+0545`,
    /// `-04:00`, `Z`; at most ±18:59). Anything else, including a string longer than
    /// [`MAX_ZONE_BYTES`], is `None`.
    pub fn parse(s: &str) -> Option<Zone> {
        if s.len() > MAX_ZONE_BYTES {
            return None;
        }
        let s = s.trim();
        if s.is_empty() {
            return None;
        }
        if let Some(offset) = parse_offset(s) {
            return Some(Zone::Fixed(offset));
        }
        Tz::from_str(s).ok().map(Zone::Iana)
    }

    /// Wall-clock date and time of the UTC instant `ms` in this zone.
    /// Out of chrono's range (about ±262 000 years, never reached by a validated instant) the answer
    /// is the UTC wall clock, or 1970-01-01 when `ms` itself is out of range.
    pub fn local(self, ms: i64) -> NaiveDateTime {
        let utc = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
        match self {
            Zone::Iana(tz) => utc.with_timezone(&tz).naive_local(),
            Zone::Fixed(secs) => {
                let naive = utc.naive_utc();
                naive.checked_add_signed(chrono::Duration::seconds(i64::from(secs))).unwrap_or(naive)
            }
        }
    }

    /// The local date of the UTC instant `ms`.
    pub fn local_date(self, ms: i64) -> NaiveDate {
        self.local(ms).date()
    }

    /// The UTC instant (ms) of the first moment of local date `d` (`startOfDay`, which is not always
    /// 00:00 when a zone springs forward at midnight).
    pub fn start_of_day(self, d: NaiveDate) -> i64 {
        self.first_instant_at_or_after(d.and_time(NaiveTime::MIN))
    }

    /// The UTC instant (ms) of the first moment whose wall clock is at or after `wall`.
    pub fn first_instant_at_or_after(self, wall: NaiveDateTime) -> i64 {
        match self {
            Zone::Fixed(secs) => wall
                .checked_sub_signed(chrono::Duration::seconds(i64::from(secs)))
                .unwrap_or(wall)
                .and_utc()
                .timestamp_millis(),
            Zone::Iana(tz) => {
                // Step forward in 15-minute increments through a gap; offsets are multiples of 15 min.
                let mut w = wall;
                for _ in 0..16 {
                    if let Some(dt) = tz.from_local_datetime(&w).earliest() {
                        return dt.timestamp_millis();
                    }
                    match w.checked_add_signed(chrono::Duration::minutes(15)) {
                        Some(next) => w = next,
                        None => break,
                    }
                }
                wall.and_utc().timestamp_millis()
            }
        }
    }

    /// The zone's name: the IANA name, or `±HH:MM`.
    pub fn name(self) -> String {
        self.to_string()
    }
}

/// Longest zone string accepted, in bytes. The longest IANA name has 32 bytes
/// (`America/Argentina/ComodRivadavia`), an offset 6.
pub const MAX_ZONE_BYTES: usize = 64;

/// `Z`, `±HH:MM` or `±HHMM`, read byte by byte: every byte must be ASCII, so that no input (such as
/// `+1é1`) is ever cut inside a character.
fn parse_offset(s: &str) -> Option<i32> {
    if s == "Z" {
        return Some(0);
    }
    let digit = |b: u8| b.is_ascii_digit().then(|| i32::from(b - b'0'));
    let (sign, h1, h2, m1, m2) = match *s.as_bytes() {
        [sign, h1, h2, b':', m1, m2] | [sign, h1, h2, m1, m2] => (sign, h1, h2, m1, m2),
        _ => return None,
    };
    let sign = match sign {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (h, m) = (digit(h1)? * 10 + digit(h2)?, digit(m1)? * 10 + digit(m2)?);
    if h > 18 || m > 59 {
        return None;
    }
    FixedOffset::east_opt(sign * (h * 3600 + m * 60)).map(|o| o.local_minus_utc())
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Zone::Iana(tz) => f.write_str(tz.name()),
            Zone::Fixed(secs) => {
                let sign = if *secs < 0 { '-' } else { '+' };
                let a = secs.unsigned_abs();
                write!(f, "{sign}{:02}:{:02}", a / 3600, (a % 3600) / 60)
            }
        }
    }
}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl PartialOrd for Zone {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Zone {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (self, other) {
            (Zone::Iana(a), Zone::Iana(b)) => a.name().cmp(b.name()),
            (Zone::Fixed(a), Zone::Fixed(b)) => a.cmp(b),
            (Zone::Iana(_), Zone::Fixed(_)) => std::cmp::Ordering::Less,
            (Zone::Fixed(_), Zone::Iana(_)) => std::cmp::Ordering::Greater,
        }
    }
}

impl Serialize for Zone {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
impl<'de> Deserialize<'de> for Zone {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Zone::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("invalid zone '{s}'")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_instant;

    fn ms(s: &str) -> i64 {
        parse_instant(s).expect(s)
    }

    /// A zone is stored by its name and read back at a restart (ADR 0012), so every fixed zone
    /// ingest can make, from a `±HH:MM` string or from whole minutes of a numeric offset, comes
    /// back as itself.
    #[test]
    fn every_fixed_zone_reads_back_from_its_name() {
        for minutes in -18 * 60..=18 * 60 + 59 {
            let z = Zone::Fixed(minutes * 60);
            assert_eq!(Zone::parse(&z.name()), Some(z), "{minutes} min");
        }
        for s in ["+05:45", "-09:30", "+0545", "Z", "-00:01"] {
            let z = Zone::parse(s).expect(s);
            assert_eq!(Zone::parse(&z.name()), Some(z), "{s}");
        }
    }

    #[test]
    fn parses_iana_and_offsets() {
        assert_eq!(Zone::parse("America/New_York").map(|z| z.name()), Some("America/New_York".into()));
        assert_eq!(Zone::parse("+05:45"), Some(Zone::Fixed(5 * 3600 + 45 * 60)));
        assert_eq!(Zone::parse("-04:00"), Some(Zone::Fixed(-4 * 3600)));
        assert_eq!(Zone::parse("+05:45").map(|z| z.name()), Some("+05:45".into()));
        assert_eq!(Zone::parse("Mars/Olympus"), None);
        assert_eq!(Zone::parse("+25:00"), None);
        assert_eq!(Zone::parse(""), None);
        assert_eq!(Zone::parse("+0545"), Some(Zone::Fixed(5 * 3600 + 45 * 60)));
        assert_eq!(Zone::parse("Z"), Some(Zone::Fixed(0)));
        assert_eq!(Zone::parse(" UTC "), Some(Zone::UTC));
    }

    /// Regressions of issue 10: none of these may panic, and none is a zone.
    #[test]
    fn hostile_zone_strings_are_rejected_without_panic() {
        let long_iana = format!("America/{}", "x".repeat(10_000));
        let long_padded = format!("{}UTC", " ".repeat(100));
        let bad = [
            "+1é1",
            "-é12",
            "+é:1",
            "+1:é",
            "+12:3é",
            "+99:99",
            "+18:60",
            "+19:00",
            "-24:00",
            "+1:00",
            "+01:0",
            "++01:00",
            "+-1:00",
            "+01:00:00",
            "+",
            "-",
            ":",
            "é",
            "\0",
            "+\0\0:00",
            "+０１:００",
            "UTC\0",
            "America/New\0York",
            "../../etc/passwd",
            "+9999999999",
        ];
        for s in bad.iter().copied().chain([long_iana.as_str(), long_padded.as_str()]) {
            assert_eq!(Zone::parse(s), None, "{s:?}");
        }
        assert_eq!(Zone::parse(&"x".repeat(10_000)), None);
        assert_eq!(Zone::parse("+18:59"), Some(Zone::Fixed(18 * 3600 + 59 * 60)));
        assert_eq!(Zone::parse("-18:00"), Some(Zone::Fixed(-18 * 3600)));
        let longest = "America/Argentina/ComodRivadavia";
        assert!(matches!(Zone::parse(longest), Some(Zone::Iana(_))), "{longest}");
    }

    #[test]
    fn extreme_instants_do_not_panic() {
        for z in
            [Zone::UTC, Zone::Fixed(18 * 3600 + 59 * 60), Zone::Fixed(-18 * 3600), Zone::parse("Asia/Tokyo").unwrap()]
        {
            for ms in [i64::MIN, i64::MAX, -8_210_298_412_800_000, 8_210_298_412_799_999] {
                let local = z.local(ms);
                let _ = z.first_instant_at_or_after(local);
                let _ = z.start_of_day(local.date());
            }
            let _ = z.start_of_day(NaiveDate::MIN);
            let _ = z.start_of_day(NaiveDate::MAX);
        }
    }

    #[test]
    fn z6_dst_examples() {
        let ny = Zone::parse("America/New_York").unwrap();
        let t = ms("2024-11-03T05:30:00Z");
        assert_eq!(ny.local(t).format("%Y-%m-%d %H").to_string(), "2024-11-03 01");
        let utc0 = Zone::parse("+00:00").unwrap();
        assert_eq!(utc0.local(t).format("%Y-%m-%d %H").to_string(), "2024-11-03 05");
    }

    #[test]
    fn start_of_day_handles_dst() {
        let ny = Zone::parse("America/New_York").unwrap();
        let d = NaiveDate::from_ymd_opt(2024, 3, 10).unwrap();
        assert_eq!(ny.start_of_day(d), ms("2024-03-10T05:00:00Z"));
        let next = NaiveDate::from_ymd_opt(2024, 3, 11).unwrap();
        assert_eq!(ny.start_of_day(next) - ny.start_of_day(d), 23 * 3_600_000);
        // A zone that springs forward at midnight starts its day at 01:00.
        let sp = Zone::parse("America/Sao_Paulo").unwrap();
        let d = NaiveDate::from_ymd_opt(2018, 11, 4).unwrap();
        assert_eq!(sp.local(sp.start_of_day(d)).format("%H:%M").to_string(), "01:00");
    }
}
