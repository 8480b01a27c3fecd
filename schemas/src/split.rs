//! Proportional splitting of samples across buckets (DOMAIN.md §2, rule C1) and the 15-minute UTC
//! slices that carry the cross-source merge M1 (§1.5) and the local-date attribution (C3).

use crate::zone::Zone;

/// Length of one M1 slice: 15 minutes, in milliseconds.
pub const SLICE_MS: i64 = 900_000;

/// C1: the share of a cumulative sample `(s, e, v)` that falls into bucket `[a, b)`.
pub fn share(s: i64, e: i64, v: f64, a: i64, b: i64) -> f64 {
    if e > s {
        let overlap = (e.min(b) - s.max(a)).max(0);
        v * overlap as f64 / (e - s) as f64
    } else if a <= s && s < b {
        v
    } else {
        0.0
    }
}

/// The slices `k` (slice `[k·SLICE_MS, (k+1)·SLICE_MS)`) a sample touches, each with its overlap in
/// milliseconds (0 for an instantaneous sample, whose instant lies in exactly one slice).
pub fn slice_overlaps(s: i64, e: i64) -> impl Iterator<Item = (i64, i64)> {
    let first = s.div_euclid(SLICE_MS);
    let last = if e > s { (e - 1).div_euclid(SLICE_MS) } else { first };
    (first..=last).map(move |k| {
        let (a, b) = (k * SLICE_MS, (k + 1) * SLICE_MS);
        (k, (e.min(b) - s.max(a)).max(0))
    })
}

/// C1 share of a slice given its overlap (from [`slice_overlaps`]).
pub fn share_of_overlap(s: i64, e: i64, v: f64, overlap: i64) -> f64 {
    if e > s { v * overlap as f64 / (e - s) as f64 } else { v }
}

/// C3: a sample's share of each local date it touches, as `(days since epoch, share, overlap ms)`.
/// A slice belongs to the local date of its start instant in `zone`. Shares are computed from the
/// summed overlap of the date's slices, so they conserve `v` (C2) up to one rounding per date.
pub fn day_shares(s: i64, e: i64, v: f64, zone: Zone) -> Vec<(i32, f64, i64)> {
    let mut out: Vec<(i32, i64)> = Vec::new();
    for (k, overlap) in slice_overlaps(s, e) {
        let day = crate::time::date_to_days(zone.local_date(k * SLICE_MS));
        match out.last_mut() {
            Some((d, o)) if *d == day => *o += overlap,
            _ => out.push((day, overlap)),
        }
    }
    out.into_iter().map(|(d, o)| (d, share_of_overlap(s, e, v, o), o)).collect()
}

/// The pieces of `[s, e)` that fall on each local date (C3/C4), as `(days since epoch, a, b)` in UTC
/// milliseconds, in time order. An instantaneous sample gives one empty piece `[s, s)`.
pub fn day_pieces(s: i64, e: i64, zone: Zone) -> Vec<(i32, i64, i64)> {
    let mut out: Vec<(i32, i64, i64)> = Vec::new();
    for (k, _) in slice_overlaps(s, e) {
        let day = crate::time::date_to_days(zone.local_date(k * SLICE_MS));
        let (a, b) = (s.max(k * SLICE_MS), e.min((k + 1) * SLICE_MS).max(s));
        match out.last_mut() {
            Some((d, _, end)) if *d == day => *end = b,
            _ => out.push((day, a, b)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::{date_to_days, parse_date, parse_instant};

    fn ms(s: &str) -> i64 {
        parse_instant(s).expect(s)
    }
    fn day(s: &str) -> i32 {
        date_to_days(parse_date(s).expect(s))
    }

    #[test]
    fn c1_share_is_proportional_and_instants_are_points() {
        assert_eq!(share(0, 40, 1200.0, 0, 10), 300.0);
        assert_eq!(share(0, 40, 1200.0, 40, 50), 0.0);
        assert_eq!(share(5, 5, 7.0, 0, 10), 7.0);
        assert_eq!(share(10, 10, 7.0, 0, 10), 0.0);
    }

    #[test]
    fn worked_example_2a_ordinary_midnight() {
        let ny = Zone::parse("America/New_York").unwrap();
        let shares = day_shares(ms("2024-06-01T03:50:00Z"), ms("2024-06-01T04:30:00Z"), 1200.0, ny);
        assert_eq!(shares.len(), 2);
        assert_eq!((shares[0].0, shares[0].1), (day("2024-05-31"), 300.0));
        assert_eq!((shares[1].0, shares[1].1), (day("2024-06-01"), 900.0));
    }

    #[test]
    fn worked_example_2b_spring_forward_uses_elapsed_time() {
        let ny = Zone::parse("America/New_York").unwrap();
        let shares = day_shares(ms("2024-03-10T04:00:00Z"), ms("2024-03-10T07:00:00Z"), 1200.0, ny);
        assert_eq!(shares.len(), 2);
        assert!((shares[0].1 - 400.0).abs() < 1e-9 && shares[0].0 == day("2024-03-09"));
        assert!((shares[1].1 - 800.0).abs() < 1e-9 && shares[1].0 == day("2024-03-10"));
    }

    #[test]
    fn c2_shares_conserve_the_value() {
        let zones = ["UTC", "America/New_York", "Asia/Kathmandu", "Australia/Lord_Howe", "+05:45"];
        for z in zones {
            let zone = Zone::parse(z).unwrap();
            for (s, len) in
                [(1_700_000_123_456_i64, 86_400_000_i64), (1_710_050_000_000, 7_777_777), (1_730_600_000_000, 1)]
            {
                let total: f64 = day_shares(s, s + len, 1234.5, zone).iter().map(|x| x.1).sum();
                assert!((total - 1234.5).abs() < 1e-9 * 1234.5, "{z}: {total}");
            }
        }
    }

    #[test]
    fn slices_cover_the_interval() {
        let v: Vec<_> = slice_overlaps(850_000, 1_900_000).collect();
        assert_eq!(v, vec![(0, 50_000), (1, 900_000), (2, 100_000)]);
        let inst: Vec<_> = slice_overlaps(900_000, 900_000).collect();
        assert_eq!(inst, vec![(1, 0)]);
    }
}
