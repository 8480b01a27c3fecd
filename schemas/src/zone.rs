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

    /// Parses an IANA name (`America/New_York`, `UTC`) or a fixed offset (`+05:45`, `-04:00`, `Z`).
    pub fn parse(s: &str) -> Option<Zone> {
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
    pub fn local(self, ms: i64) -> NaiveDateTime {
        let utc = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
        match self {
            Zone::Iana(tz) => utc.with_timezone(&tz).naive_local(),
            Zone::Fixed(secs) => utc.naive_utc() + chrono::Duration::seconds(i64::from(secs)),
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
            Zone::Fixed(secs) => (wall - chrono::Duration::seconds(i64::from(secs))).and_utc().timestamp_millis(),
            Zone::Iana(tz) => {
                // Step forward in 15-minute increments through a gap; offsets are multiples of 15 min.
                let mut w = wall;
                for _ in 0..16 {
                    if let Some(dt) = tz.from_local_datetime(&w).earliest() {
                        return dt.timestamp_millis();
                    }
                    w += chrono::Duration::minutes(15);
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

fn parse_offset(s: &str) -> Option<i32> {
    if s == "Z" {
        return Some(0);
    }
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let (h, m) = match rest.split_once(':') {
        Some((h, m)) => (h, m),
        None if rest.len() == 4 => rest.split_at(2),
        None => return None,
    };
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
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

    #[test]
    fn parses_iana_and_offsets() {
        assert_eq!(Zone::parse("America/New_York").map(|z| z.name()), Some("America/New_York".into()));
        assert_eq!(Zone::parse("+05:45"), Some(Zone::Fixed(5 * 3600 + 45 * 60)));
        assert_eq!(Zone::parse("-04:00"), Some(Zone::Fixed(-4 * 3600)));
        assert_eq!(Zone::parse("+05:45").map(|z| z.name()), Some("+05:45".into()));
        assert_eq!(Zone::parse("Mars/Olympus"), None);
        assert_eq!(Zone::parse("+25:00"), None);
        assert_eq!(Zone::parse(""), None);
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
