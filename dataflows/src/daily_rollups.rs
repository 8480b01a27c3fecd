//! `daily_rollups`: one row per (user, metric, local date), DOMAIN.md §1.2, §1.5 (M1), §2 and §6.

use differential_dataflow::VecCollection;
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use vitalflow_schemas::split::day_pieces;
use vitalflow_schemas::view::{ColumnType::*, col};
use vitalflow_schemas::{Datum, Epoch, Metric, OrdF64, Row, SourceClass, ValueKind, ViewDef};

use crate::names::Name;
use crate::registry::{SamplesByUser, push_keyed};
use crate::stats::{DayKey, DiscreteByDay, DiscreteEntry, discrete_stats, slice_shares, sum_and_distinct};

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

/// The unit that competes for an M1 slice: a `(sourceId, sourceClass)` pair, led by the class's
/// rank so that the derived order is the priority order (rank, then `sourceId`). Each class has its
/// own rank, so the class only names the stream; it never reorders two streams.
type Stream = (u8, Name, SourceClass);

/// In: current samples. Out: one [`DailyRollup`] per `(user_id, metric, local_date)`.
///
/// - CUMULATIVE (M1): each sample's C1 share of every 15-minute UTC slice; per slice the best
///   [`Stream`] (rank of its class, then smaller `sourceId`) wins, and only that stream's shares
///   count: one origin writing for a phone and a band is two streams, so it is never summed with
///   itself. The day sums the winning shares of the slices whose start falls on that local date in
///   the sample's zone, and counts the distinct winning samples.
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
            let stream: Stream = (s.source_class.rank(), s.source_id, s.source_class);
            slice_shares(s)
                .map(|(k, day, share)| {
                    let entry = (stream, s.source_record_id, day, OrdF64(share));
                    ((*user, s.metric, k), entry)
                })
                .collect::<Vec<_>>()
        })
        .reduce_named("M1: slice winner", |_slice, input, output| {
            // The group is sorted by stream, so the first present entry belongs to the best stream.
            let Some(winner) = input.iter().find(|(_, r)| *r > 0).map(|(e, _)| &e.0) else { return };
            for ((stream, record, day, share), r) in input {
                if stream == winner && *r > 0 {
                    output.push(((*day, stream.1, *record, *share), *r));
                }
            }
        })
        .map(|((user, metric, _k), (day, source, record, share))| ((user, metric, day), ((source, record), share)))
        .reduce_named("M1: day sum", |_day, input, output| {
            let (sum, count) = sum_and_distinct(input.iter().map(|((id, share), r)| (id, share.0, *r)));
            output.push(((count, OrdF64(sum)), 1));
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
