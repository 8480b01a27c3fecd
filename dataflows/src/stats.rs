//! Group kernels shared by the rollup views: they run inside `reduce` over one group's sorted
//! values, so every sum is taken in the same order whatever order the rows arrived in (G5).

use vitalflow_schemas::OrdF64;
use vitalflow_schemas::split::{SLICE_MS, share_of_overlap, slice_overlaps};
use vitalflow_schemas::time::date_to_days;

use crate::names::Name;
use crate::records::SampleRecord;

/// A discrete reading inside a day group, ordered so that the last element is `last` (K3): greatest
/// `startAt`, then greater `endAt`, then greater `sourceRecordId` (then `sourceId`, for determinism).
pub type DiscreteEntry = (i64, i64, Name, Name, OrdF64);

/// A discrete sample's local date (of `startAt`, in its zone) and its entry; `None` for other kinds
/// and for samples without a value.
pub fn discrete_entry(s: &SampleRecord) -> Option<(i32, DiscreteEntry)> {
    let value = s.value.filter(|_| s.metric.kind() == vitalflow_schemas::ValueKind::Discrete)?;
    let day = date_to_days(s.zone.local_date(s.start_ms));
    Some((day, (s.start_ms, s.end_ms, s.source_record_id, s.source_id, value)))
}

/// count, sum, min, max and last of a day group of discrete readings (K2–K4).
pub struct DiscreteStats {
    pub count: i64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub last: f64,
}

/// Computes [`DiscreteStats`] over `(entry, multiplicity)` pairs sorted by entry.
pub fn discrete_stats(input: &[(&DiscreteEntry, isize)]) -> Option<DiscreteStats> {
    let mut st = DiscreteStats { count: 0, sum: 0.0, min: f64::INFINITY, max: f64::NEG_INFINITY, last: f64::NAN };
    for (entry, r) in input {
        if *r <= 0 {
            continue;
        }
        let v = entry.4.0;
        st.count += *r as i64;
        st.sum += v * *r as f64;
        st.min = st.min.min(v);
        st.max = st.max.max(v);
        st.last = v;
    }
    (st.count > 0).then_some(st)
}

/// The local date (days since epoch) of a slice's start in the sample's zone (C3).
pub fn slice_day(sample: &SampleRecord, k: i64) -> i32 {
    date_to_days(sample.zone.local_date(k * SLICE_MS))
}

/// A cumulative sample's C1 share of every slice it touches, with the slice's local date.
pub fn slice_shares(sample: &SampleRecord) -> impl Iterator<Item = (i64, i32, f64)> + '_ {
    let v = sample.value.map_or(0.0, |v| v.0);
    slice_overlaps(sample.start_ms, sample.end_ms)
        .map(move |(k, o)| (k, slice_day(sample, k), share_of_overlap(sample.start_ms, sample.end_ms, v, o)))
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
