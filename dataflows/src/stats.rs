//! Group kernels shared by the rollup views: they run inside `reduce` over one group's sorted
//! values, so every sum is taken in the same order whatever order the rows arrived in (G5).

use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::implementations::ValSpine;
use vitalflow_schemas::split::{SLICE_MS, share_of_overlap, slice_overlaps};
use vitalflow_schemas::time::date_to_days;
use vitalflow_schemas::{Epoch, Metric, OrdF64};

use crate::names::Name;
use crate::records::SampleRecord;
use crate::registry::SamplesByUser;

/// `(user_id, metric, local_date)`: one user's metric on one local date (days since 1970-01-01).
pub type DayKey = (Name, Metric, i32);

/// DISCRETE readings arranged by [`DayKey`] (the local date of `startAt` in the sample's zone),
/// every source together, each as its [`DiscreteEntry`]. One arrangement serves both
/// `daily_rollups` (K2–K4 over all sources) and `daily_rollups_by_source` (the same per source):
/// a source's readings keep their relative order in the group, so each source's figures are
/// summed in the order they would be in a group of their own (G5). Built once, by
/// [`crate::Inputs::discrete_by_day`].
pub type DiscreteByDay<'s> = Arranged<'s, TraceAgent<ValSpine<DayKey, DiscreteEntry, Epoch, isize>>>;

/// Arranges the DISCRETE samples with a value by [`DayKey`] ([`DiscreteByDay`]).
pub fn discrete_by_day<'s>(samples: &SamplesByUser<'s>) -> DiscreteByDay<'s> {
    samples
        .clone()
        .flat_map_ref(|user, s| {
            let (day, entry) = discrete_entry(s)?;
            Some(((*user, s.metric, day), entry))
        })
        .arrange_by_key_named("Discrete: readings by day")
}

/// Milliseconds per day.
const DAY_MS: i64 = 86_400_000;

/// A discrete reading inside a day group (24 bytes), ordered so that the last element is `last`
/// (K3): greatest `startAt`, then greater `endAt`, then greater `sourceRecordId` (then `sourceId`,
/// for determinism). Instants are kept relative to the group's date, so they fit 32 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct DiscreteEntry {
    /// `startAt` in ms from 00:00 UTC of the group's local date (days × 86,400,000 ms): a local
    /// date's readings start from −14 h to +36 h of it in IANA zones since 2000, from −18:59 h to
    /// +42:59 h at the widest fixed offset Z1 accepts (±18:59).
    pub start: i32,
    /// `endAt − startAt` in ms (G3: at most 24 h).
    pub duration: u32,
    pub source_record_id: Name,
    pub source_id: Name,
    /// Canonical unit.
    pub value: OrdF64,
}

/// A discrete sample's local date (of `startAt`, in its zone) and its entry; `None` for other kinds
/// and for samples without a value.
pub fn discrete_entry(s: &SampleRecord) -> Option<(i32, DiscreteEntry)> {
    let value = s.value().filter(|_| s.metric.kind() == vitalflow_schemas::ValueKind::Discrete)?;
    let day = date_to_days(s.zone.local_date(s.start_ms));
    // Validated samples are well inside both ranges (Z1 offsets, G3); a stored row that is not
    // saturates instead of wrapping.
    let start = (s.start_ms - i64::from(day) * DAY_MS).clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32;
    let duration = (s.end_ms - s.start_ms).clamp(0, i64::from(u32::MAX)) as u32;
    Some((day, DiscreteEntry { start, duration, source_record_id: s.source_record_id, source_id: s.source_id, value }))
}

/// count, sum, min, max and last of a day group of discrete readings (K2–K4).
pub struct DiscreteStats {
    pub count: i64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub last: f64,
}

impl DiscreteStats {
    /// No readings yet.
    pub const EMPTY: DiscreteStats =
        DiscreteStats { count: 0, sum: 0.0, min: f64::INFINITY, max: f64::NEG_INFINITY, last: f64::NAN };

    /// Takes in the next reading of a sorted group, with its multiplicity (none for `r <= 0`).
    pub fn add(&mut self, entry: &DiscreteEntry, r: isize) {
        if r <= 0 {
            return;
        }
        let v = entry.value.0;
        self.count += r as i64;
        self.sum += v * r as f64;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.last = v;
    }

    /// The figures, once at least one reading counted.
    pub fn done(self) -> Option<DiscreteStats> {
        (self.count > 0).then_some(self)
    }
}

/// Computes [`DiscreteStats`] over `(entry, multiplicity)` pairs sorted by entry.
pub fn discrete_stats(input: &[(&DiscreteEntry, isize)]) -> Option<DiscreteStats> {
    let mut st = DiscreteStats::EMPTY;
    for (entry, r) in input {
        st.add(entry, *r);
    }
    st.done()
}

/// [`DiscreteStats`] of each `sourceId` in a sorted day group of every source's readings: one
/// pass, each source's readings taken in the group's order (the order a group of that source
/// alone would have), so its figures are those of [`discrete_stats`] over that group. Cost:
/// O(n) hash lookups by id, however many sources the day has.
pub fn discrete_stats_by_source(input: &[(&DiscreteEntry, isize)]) -> Vec<(Name, DiscreteStats)> {
    let mut by_source: std::collections::HashMap<Name, DiscreteStats> = std::collections::HashMap::new();
    for (entry, r) in input {
        by_source.entry(entry.source_id).or_insert(DiscreteStats::EMPTY).add(entry, *r);
    }
    by_source.into_iter().filter_map(|(source, st)| Some((source, st.done()?))).collect()
}

/// The local date (days since epoch) of a slice's start in the sample's zone (C3).
pub fn slice_day(sample: &SampleRecord, k: i64) -> i32 {
    date_to_days(sample.zone.local_date(k * SLICE_MS))
}

/// A CUMULATIVE sample's C1 share of one 15-minute slice (DOMAIN.md §1.4, §1.5).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlicePart {
    /// The slice: `start / SLICE_MS`, counted from the Unix epoch in UTC.
    pub slice: i64,
    /// The slice's local date in the sample's zone, days since 1970-01-01.
    pub local_date: i32,
    /// The sample's value × the fraction of its interval inside the slice (C1).
    pub share: f64,
}

/// A CUMULATIVE sample's C1 share of every slice it touches, in time order.
pub fn slice_shares(sample: &SampleRecord) -> impl Iterator<Item = SlicePart> + '_ {
    let v = sample.value().map_or(0.0, |v| v.0);
    slice_overlaps(sample.start_ms, sample.end_ms).map(move |(k, o)| SlicePart {
        slice: k,
        local_date: slice_day(sample, k),
        share: share_of_overlap(sample.start_ms, sample.end_ms, v, o),
    })
}

/// Σ value × multiplicity over a sorted group, and the number of distinct `id`s with positive
/// multiplicity (the group is sorted, so equal ids are adjacent).
pub fn sum_and_distinct<I: PartialEq>(input: impl Iterator<Item = (I, f64, isize)>) -> (f64, i64) {
    let mut sum = 0.0;
    let mut count = 0;
    let mut prev: Option<I> = None;
    for (id, v, r) in input {
        if r <= 0 {
            continue;
        }
        sum += v * r as f64;
        if prev.as_ref() != Some(&id) {
            count += 1;
            prev = Some(id);
        }
    }
    (sum, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_discrete_entry_is_24_bytes() {
        // `Discrete: readings by day` holds one per DISCRETE reading (issue 13 §3).
        assert_eq!(std::mem::size_of::<DiscreteEntry>(), 24);
    }
}
