//! `daily_rollups`: one row per (user, metric, local date), DOMAIN.md §1.2, §1.5 (M1), §2 and §6.

use differential_dataflow::VecCollection;
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use vitalflow_schemas::split::{SLICE_MS, day_pieces};
use vitalflow_schemas::view::{ColumnType::*, col};
use vitalflow_schemas::{Datum, Epoch, Metric, OrdF64, Row, SourceClass, ValueKind, ViewDef};

use crate::names::Name;
use crate::records::SampleRecord;
use crate::registry::{SamplesByUser, push_keyed};
use crate::stats::{DayKey, DiscreteByDay, DiscreteEntry, SlicePart, discrete_stats, slice_shares, sum_and_distinct};

/// Key `(user_id, metric, local_date)`; the fields a kind has no use for are null.
pub const DEF: ViewDef = ViewDef {
    name: "daily_rollups",
    columns: &[
        col("user_id", Str),
        col("metric", Str),
        col("local_date", Date),
        col("unit", Str),
        col("value_kind", Str),
        col("count", Int),
        col("sum", Float),
        col("mean", Float),
        col("min", Float),
        col("max", Float),
        col("last", Float),
        col("total_min", Float),
    ],
    key_len: 3,
    route: Some("daily-rollups"),
    filters: &["metric"],
    range_column: Some("local_date"),
    range_via: None,
};

/// One `daily_rollups` row (DOMAIN.md §1.2, §6): per user, metric and local date (days since
/// 1970-01-01), with the fields a kind has no use for as `None`: CUMULATIVE has `sum`; DISCRETE
/// `sum`, `mean`, `min`, `max`, `last`; INTERVAL `total_min` (minutes). Views built on the
/// rollups read these fields; [`DailyRollup::to_row`] is the one mapping to [`DEF`]'s columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct DailyRollup {
    pub user_id: Name,
    pub metric: Metric,
    pub local_date: i32,
    pub count: i64,
    pub sum: Option<OrdF64>,
    pub mean: Option<OrdF64>,
    pub min: Option<OrdF64>,
    pub max: Option<OrdF64>,
    pub last: Option<OrdF64>,
    pub total_min: Option<OrdF64>,
}

impl DailyRollup {
    fn new(user_id: Name, metric: Metric, local_date: i32, count: i64) -> Self {
        DailyRollup {
            user_id,
            metric,
            local_date,
            count,
            sum: None,
            mean: None,
            min: None,
            max: None,
            last: None,
            total_min: None,
        }
    }

    /// The row in [`DEF`]'s column order.
    pub fn to_row(&self) -> Row {
        let f = |v: Option<OrdF64>| v.map_or(Datum::Null, Datum::Float);
        vec![
            Datum::Str(self.user_id.to_string()),
            Datum::Str(self.metric.key().to_owned()),
            Datum::Date(self.local_date),
            Datum::Str(self.metric.canonical_unit().to_owned()),
            Datum::Str(self.metric.kind().as_str().to_owned()),
            Datum::Int(self.count),
            f(self.sum),
            f(self.mean),
            f(self.min),
            f(self.max),
            f(self.last),
            f(self.total_min),
        ]
    }
}

/// Slices per UTC day (96 of 15 minutes).
const SLICES_PER_DAY: i64 = 86_400_000 / SLICE_MS;

/// `(user_id, metric, UTC day)`: the group in which M1 decides every slice of one UTC day (days
/// since 1970-01-01). Every competitor of a slice is in its group, whatever the samples' zones.
type UtcDayKey = (Name, Metric, i64);

/// One CUMULATIVE sample's C1 share of one 15-minute slice, as it competes in M1 (§1.5 rules 2–4).
/// The derived order is the group's order: by slice, then by stream in priority order (the class's
/// rank, then `sourceId`; each class has its own rank, so the class only names the stream), so the
/// first entry of a slice belongs to its best stream. 24 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
struct SliceShare {
    /// The slice within its UTC day, 0..96.
    slice: u8,
    rank: u8,
    source_id: Name,
    source_class: SourceClass,
    source_record_id: Name,
    /// The local date of the slice's start in the sample's zone (rule 5; days since 1970-01-01).
    local_date: i32,
    /// Whether the sample also has slices of `local_date` in another UTC day (it spans a UTC
    /// midnight inside that local date), so that another group may count it for the date too.
    crosses: bool,
    share: OrdF64,
}

/// What one UTC day's winning slices give one local date (§1.5 rule 5): the sum of their shares,
/// the distinct samples among them, and which of those also have slices of the date in another UTC
/// day (`(sourceId, sourceRecordId)`, sorted), so that the date counts each sample once.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
struct DatePart {
    /// Keeps the parts of one date from different UTC days distinct values, so each enters the
    /// date's reduce with multiplicity 1.
    utc_day: i64,
    count: i64,
    sum: OrdF64,
    crossing: Vec<(Name, Name)>,
}

/// The UTC days a local date's slices of one sample lie in (first and last, in time order).
struct DateSpan {
    local_date: i32,
    first_utc_day: i64,
    last_utc_day: i64,
}

/// A CUMULATIVE sample's [`SliceShare`]s, each with its UTC day.
fn slice_entries(s: &SampleRecord) -> Vec<(i64, SliceShare)> {
    let parts: Vec<SlicePart> = slice_shares(s).collect();
    // Slices are in time order, so a date crosses a UTC midnight when its first and last slices
    // lie in different UTC days (a zone falling back across midnight revisits a date, as
    // America/St_Johns did until 2011; the search finds its slices wherever they are).
    let mut spans: Vec<DateSpan> = Vec::new();
    for part in &parts {
        let utc_day = part.slice.div_euclid(SLICES_PER_DAY);
        match spans.iter_mut().find(|span| span.local_date == part.local_date) {
            Some(span) => span.last_utc_day = utc_day,
            None => spans.push(DateSpan { local_date: part.local_date, first_utc_day: utc_day, last_utc_day: utc_day }),
        }
    }
    let crosses =
        |date: i32| spans.iter().any(|span| span.local_date == date && span.first_utc_day != span.last_utc_day);
    parts
        .iter()
        .map(|part| {
            let entry = SliceShare {
                slice: part.slice.rem_euclid(SLICES_PER_DAY) as u8,
                rank: s.source_class.rank(),
                source_id: s.source_id,
                source_class: s.source_class,
                source_record_id: s.source_record_id,
                local_date: part.local_date,
                crosses: crosses(part.local_date),
                share: OrdF64(part.share),
            };
            (part.slice.div_euclid(SLICES_PER_DAY), entry)
        })
        .collect()
}

/// M1 over one UTC day's slices, sorted ([`SliceShare`]'s order) with their multiplicities: per
/// slice the best stream present wins and only its shares count (§1.5 rules 3–4); the winners are
/// then summed per local date in `(sourceId, sourceRecordId)` order, one [`DatePart`] per date.
fn winning_parts(utc_day: i64, input: &[(&SliceShare, isize)]) -> Vec<(i32, DatePart)> {
    let mut winners: Vec<(&SliceShare, isize)> = Vec::new();
    for slice in input.chunk_by(|(a, _), (b, _)| a.slice == b.slice) {
        let stream = |e: &SliceShare| (e.rank, e.source_id, e.source_class);
        let Some(winner) = slice.iter().find(|(_, r)| *r > 0).map(|(e, _)| stream(e)) else { continue };
        winners.extend(slice.iter().filter(|(e, r)| stream(e) == winner && *r > 0).copied());
    }
    let order = |e: &SliceShare| (e.local_date, e.source_id, e.source_record_id, e.share);
    winners.sort_by(|(a, _), (b, _)| order(a).cmp(&order(b)));
    winners
        .chunk_by(|(a, _), (b, _)| a.local_date == b.local_date)
        .map(|date| {
            let id = |e: &SliceShare| (e.source_id, e.source_record_id);
            let (sum, count) = sum_and_distinct(date.iter().map(|(e, r)| (id(e), e.share.0, *r)));
            let mut crossing: Vec<(Name, Name)> = date.iter().filter(|(e, _)| e.crosses).map(|(e, _)| id(e)).collect();
            crossing.dedup();
            (date[0].0.local_date, DatePart { utc_day, count, sum: OrdF64(sum), crossing })
        })
        .collect()
}

/// In: current samples. Out: one [`DailyRollup`] per `(user_id, metric, local_date)`.
///
/// - CUMULATIVE (M1): each sample's C1 share of every 15-minute UTC slice; per slice the best
///   stream `(sourceId, sourceClass)` (rank of its class, then smaller `sourceId`) wins, and only
///   that stream's shares count: one origin writing for a phone and a band is two streams, so it
///   is never summed with itself. The day sums the winning shares of the slices whose start falls
///   on that local date in the sample's zone, and counts the distinct winning samples. The slices
///   of one UTC day are decided in one group ([`SliceShare`]s, one arrangement), which yields a
///   [`DatePart`] per local date its winners belong to; a local date takes the parts of the one to
///   three UTC days it overlaps. No arrangement holds the winners themselves.
/// - DISCRETE: not split; the day of `startAt`; count, sum, mean, min, max, last (K3).
/// - INTERVAL (mindful minutes; sleep has its own view): `total_min` is the union of all sources'
///   intervals clipped to the day, `count` the intervals starting that day.
///
/// `discrete` is the DISCRETE readings by day, shared with `daily_rollups_by_source`
/// ([`DiscreteByDay`]).
pub fn daily_rollups<'s>(
    samples: &SamplesByUser<'s>,
    discrete: &DiscreteByDay<'s>,
) -> VecCollection<'s, Epoch, DailyRollup> {
    let cumulative = samples
        .clone()
        .flat_map_ref(|user, s| {
            if s.metric.kind() != ValueKind::Cumulative || s.value().is_none() {
                return Vec::new();
            }
            slice_entries(s).into_iter().map(|(utc_day, entry)| ((*user, s.metric, utc_day), entry)).collect()
        })
        // The operator keeps its earlier name (docs/operations.md): it holds the same shares, now
        // keyed by UTC day.
        .reduce_named("M1: slice winner", |&(_, _, utc_day): &UtcDayKey, input, output| {
            for (local_date, part) in winning_parts(utc_day, input) {
                output.push(((local_date, part), 1));
            }
        })
        .map(|((user, metric, _utc_day), (local_date, part))| ((user, metric, local_date), part))
        .reduce_named("M1: day sum", |_day: &DayKey, input: &[(&DatePart, isize)], output| {
            // The parts come in UTC-day order. A sample counted by several parts (its slices of the
            // date won in two UTC days) is counted once.
            let (mut sum, mut count) = (0.0, 0_i64);
            let mut crossing: Vec<(Name, Name)> = Vec::new();
            for (part, r) in input {
                if *r <= 0 {
                    continue;
                }
                sum += part.sum.0;
                count += part.count - part.crossing.len() as i64;
                crossing.extend_from_slice(&part.crossing);
            }
            crossing.sort();
            crossing.dedup();
            count += crossing.len() as i64;
            if count > 0 {
                output.push(((count, OrdF64(sum)), 1));
            }
        })
        .map(|((user, metric, day), (count, sum))| DailyRollup {
            sum: Some(sum),
            ..DailyRollup::new(user, metric, day, count)
        });

    let discrete = discrete
        .clone()
        .reduce_abelian::<_, ValBuilder<_, _, _, _>, ValSpine<DayKey, (i64, [OrdF64; 5]), Epoch, isize>, _, _>(
            "Discrete: day stats",
            |_day: &DayKey, input: &[(&DiscreteEntry, isize)], output: &mut Vec<((i64, [OrdF64; 5]), isize)>| {
                if let Some(st) = discrete_stats(input) {
                    let mean = st.sum / st.count as f64;
                    output.push(((st.count, [st.sum, mean, st.min, st.max, st.last].map(OrdF64)), 1));
                }
            },
            push_keyed,
        )
        .as_collection(|&(user, metric, day), &(count, [sum, mean, min, max, last])| DailyRollup {
            sum: Some(sum),
            mean: Some(mean),
            min: Some(min),
            max: Some(max),
            last: Some(last),
            ..DailyRollup::new(user, metric, day, count)
        });

    let interval = samples
        .clone()
        .flat_map_ref(|user, s| {
            if s.metric.kind() != ValueKind::Interval || s.metric == Metric::SleepAnalysis {
                return Vec::new();
            }
            day_pieces(s.start_ms, s.end_ms, s.zone)
                .into_iter()
                .enumerate()
                .map(|(i, (day, a, b))| ((*user, s.metric, day), (a, b, i == 0, s.source_id, s.source_record_id)))
                .collect::<Vec<_>>()
        })
        .reduce_named("Interval: day union", |_day: &DayKey, input, output| {
            let (mut total_ms, mut count, mut cursor) = (0_i64, 0_i64, i64::MIN);
            for ((a, b, starts, _, _), r) in input {
                if *r <= 0 {
                    continue;
                }
                if *starts {
                    count += *r as i64;
                }
                let from = (*a).max(cursor);
                if *b > from {
                    total_ms += b - from;
                }
                cursor = cursor.max(*b);
            }
            if count > 0 || total_ms > 0 {
                output.push(((count, OrdF64(total_ms as f64 / 60_000.0)), 1));
            }
        })
        .map(|((user, metric, day), (count, total))| DailyRollup {
            total_min: Some(total),
            ..DailyRollup::new(user, metric, day, count)
        });

    cumulative.concat(discrete).concat(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slice_share_is_24_bytes() {
        // The M1 arrangement holds one per CUMULATIVE sample and slice it touches (issue 13 §3).
        assert_eq!(std::mem::size_of::<SliceShare>(), 24);
    }
}
