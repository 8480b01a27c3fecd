//! `daily_rollups_by_source`: each source's own day figures, with no cross-source merge
//! (DOMAIN.md §1.2, §1.5 rule 6, §2). The naive all-source sum stays one SQL query away.

use differential_dataflow::VecCollection;
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use vitalflow_schemas::split::day_shares;
use vitalflow_schemas::view::{ColumnType::*, col};
use vitalflow_schemas::{Datum, Epoch, Metric, OrdF64, Row, ValueKind, ViewDef};

use crate::exact::WindowSum;
use crate::names::Name;
use crate::registry::{SamplesByUser, push_keyed};
use crate::stats::{DayKey, DiscreteByDay, DiscreteEntry, discrete_stats_by_source};

/// Key `(user_id, metric, local_date, source_id)`.
pub const DEF: ViewDef = ViewDef {
    name: "daily_rollups_by_source",
    columns: &[
        col("user_id", Str),
        col("metric", Str),
        col("local_date", Date),
        col("source_id", Str),
        col("unit", Str),
        col("value_kind", Str),
        col("count", Int),
        col("sum", Float),
        col("min", Float),
        col("max", Float),
    ],
    key_len: 4,
    route: Some("daily-rollups-by-source"),
    filters: &["metric", "sourceId"],
    range_column: Some("local_date"),
    range_via: None,
};

type SourceDayKey = (Name, Metric, i32, Name);

/// In: current samples. Out: one [`DailyRollupBySource`] per `(user_id, metric, local_date, source_id)`.
///
/// - CUMULATIVE: `sum` is the source's C1/C3 share of the date, `count` the source's samples that
///   touch the date; `min`/`max` null.
/// - DISCRETE: count, sum, min, max of the source's readings whose `startAt` falls on the date.
/// - INTERVAL (mindful minutes): `sum` is the source's minutes split by C4 (not a union), `count` the
///   samples that touch the date.
///
/// For CUMULATIVE and INTERVAL the count and the sum ride on the difference ([`WindowSum`]): the
/// sum is exact and rounded once, whatever order the samples came in (G5).
///
/// `discrete` is the DISCRETE readings by day, every source together, shared with
/// `daily_rollups` ([`DiscreteByDay`]); each day group yields one row per source in it.
pub fn daily_rollups_by_source<'s>(
    samples: &SamplesByUser<'s>,
    discrete: &DiscreteByDay<'s>,
) -> VecCollection<'s, Epoch, DailyRollupBySource> {
    let summed = samples
        .clone()
        .flat_map_ref(|user, s| {
            let summable = match s.metric.kind() {
                ValueKind::Cumulative => s.value().is_some(),
                ValueKind::Interval => s.metric != Metric::SleepAnalysis,
                ValueKind::Discrete => false,
            };
            if !summable {
                return Vec::new();
            }
            let v = match s.metric.kind() {
                ValueKind::Cumulative => s.value().map_or(0.0, |v| v.0),
                _ => (s.end_ms - s.start_ms) as f64 / 60_000.0,
            };
            let mut days = day_shares(s.start_ms, s.end_ms, v, s.zone);
            // One entry per date, so that the entry count is the sample count: a zone that falls
            // back across midnight revisits a date after the next one.
            days.sort_by_key(|(day, _, _)| *day);
            let mut shares: Vec<(i32, f64)> = Vec::with_capacity(days.len());
            for (day, share, _) in days {
                match shares.last_mut() {
                    Some((d, sum)) if *d == day => *sum += share,
                    _ => shares.push((day, share)),
                }
            }
            shares
                .into_iter()
                .map(|(day, share)| (((*user, s.metric, day, s.source_id), ()), OrdF64(share)))
                .collect::<Vec<_>>()
        })
        // The count and the exact sum ride on the difference (issue 13 §4): the arrangement holds
        // one update per source-day, not one per sample, and retractions cancel exactly.
        .explode(|(key, share)| Some((key, WindowSum::of(share.0))))
        .reduce_named("BySource: day sum", |_key: &SourceDayKey, input: &[(&(), WindowSum)], output| {
            if let Some((_, total)) = input.first().filter(|(_, total)| total.n > 0) {
                output.push((DayStats { count: total.n, sum: OrdF64(total.total_f64()), min: None, max: None }, 1));
            }
        })
        .map(DailyRollupBySource::of);

    let discrete = discrete
        .clone()
        .reduce_abelian::<_, ValBuilder<_, _, _, _>, ValSpine<DayKey, (Name, DayStats), Epoch, isize>, _, _>(
            "BySource: discrete day stats",
            |_day: &DayKey, input: &[(&DiscreteEntry, isize)], output: &mut Vec<((Name, DayStats), isize)>| {
                for (source, st) in discrete_stats_by_source(input) {
                    let stats = DayStats {
                        count: st.count,
                        sum: OrdF64(st.sum),
                        min: Some(OrdF64(st.min)),
                        max: Some(OrdF64(st.max)),
                    };
                    output.push(((source, stats), 1));
                }
            },
            push_keyed,
        )
        .as_collection(|&(user_id, metric, local_date), &(source_id, stats)| DailyRollupBySource {
            user_id,
            metric,
            local_date,
            source_id,
            stats,
        });

    summed.concat(discrete)
}

/// One source's figures for one local date: `count` and `sum` (CUMULATIVE: C1/C3 shares; INTERVAL:
/// minutes; DISCRETE: readings), and for DISCRETE metrics `min` and `max` (canonical units).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct DayStats {
    pub count: i64,
    pub sum: OrdF64,
    pub min: Option<OrdF64>,
    pub max: Option<OrdF64>,
}

/// One `daily_rollups_by_source` row (§1.5 rule 6): one source's unmerged day figures, per user,
/// metric, local date (days since 1970-01-01) and `sourceId`. [`DailyRollupBySource::to_row`] is
/// the one mapping to [`DEF`]'s columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct DailyRollupBySource {
    pub user_id: Name,
    pub metric: Metric,
    pub local_date: i32,
    pub source_id: Name,
    pub stats: DayStats,
}

impl DailyRollupBySource {
    fn of(((user_id, metric, local_date, source_id), stats): (SourceDayKey, DayStats)) -> Self {
        DailyRollupBySource { user_id, metric, local_date, source_id, stats }
    }

    /// The row of [`DEF`].
    pub fn to_row(&self) -> Row {
        let f = |v: Option<OrdF64>| v.map_or(Datum::Null, Datum::Float);
        vec![
            Datum::Str(self.user_id.to_string()),
            Datum::Str(self.metric.key().to_owned()),
            Datum::Date(self.local_date),
            Datum::Str(self.source_id.to_string()),
            Datum::Str(self.metric.canonical_unit().to_owned()),
            Datum::Str(self.metric.kind().as_str().to_owned()),
            Datum::Int(self.stats.count),
            Datum::Float(self.stats.sum),
            f(self.stats.min),
            f(self.stats.max),
        ]
    }
}
