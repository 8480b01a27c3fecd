//! `session_impacts`: per (session, metric), the metric before, during and after a consumption
//! session, and the deltas (DOMAIN.md §4).

use std::collections::BTreeMap;
use std::sync::Arc;

use differential_dataflow::VecCollection;
use vitalflow_schemas::domain::Session;
use vitalflow_schemas::split::share;
use vitalflow_schemas::view::{ColumnType::*, RangeVia, col};
use vitalflow_schemas::{Datum, Epoch, Metric, OrdF64, Row, ValueKind, ViewDef};

use crate::registry::SamplesByUser;

/// BEFORE window length: 60 min.
pub const BEFORE_MS: i64 = 60 * 60_000;
/// AFTER window length: 120 min.
pub const AFTER_MS: i64 = 120 * 60_000;
/// Fewest discrete samples for a window mean.
pub const MIN_N: i64 = 1;
/// Longest session that produces an impact.
pub const MAX_SESSION_MS: i64 = 24 * 3_600_000;
/// Time buckets that pair sessions with the samples near them.
const BUCKET_MS: i64 = 3_600_000;

/// Key `(user_id, session_id, metric)`.
pub const DEF: ViewDef = ViewDef {
    name: "session_impacts",
    columns: &[
        col("user_id", Str),
        col("session_id", Str),
        col("metric", Str),
        col("product_id", Str),
        col("before_mean", Float),
        col("before_n", Int),
        col("during_mean", Float),
        col("during_n", Int),
        col("after_mean", Float),
        col("after_n", Int),
        col("delta_during", Float),
        col("delta_after", Float),
        col("pct_delta_during", Float),
        col("pct_delta_after", Float),
        col("baseline_contaminated", Bool),
    ],
    key_len: 3,
    route: Some("session-impacts"),
    filters: &["sessionId", "metric"],
    range_column: None,
    // `from`/`to`: sessions whose local start date is in the range (§8 gives impacts no date).
    range_via: Some(RangeVia { view: "sessions", column: "session_id" }),
};

/// Mean and n of one window.
pub type Window = (Option<OrdF64>, i64);

/// One session's impact on one metric, with what `product_impacts` needs of the session.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Impact {
    pub user_id: String,
    pub session_id: String,
    pub metric: Metric,
    pub product_id: String,
    pub start_ms: i64,
    pub quantity: OrdF64,
    pub contaminated: bool,
    /// BEFORE, DURING, AFTER.
    pub windows: [Window; 3],
}

impl Impact {
    /// `deltaDuring`, `deltaAfter`: null when either mean is null.
    pub fn deltas(&self) -> [Option<f64>; 2] {
        let before = self.windows[0].0.map(|m| m.0);
        [1, 2].map(|w| Some(self.windows[w].0?.0 - before?))
    }
}

/// Metrics with a session impact: the listed DISCRETE ones and every CUMULATIVE one.
pub fn has_impact(m: Metric) -> bool {
    use Metric::*;
    matches!(m, HeartRate | RestingHeartRate | HrvSdnn | HrvRmssd | RespiratoryRate | Spo2 | BloodGlucose)
        || m.kind() == ValueKind::Cumulative
}

fn buckets(a: i64, b: i64) -> std::ops::RangeInclusive<i64> {
    a.div_euclid(BUCKET_MS)..=(b.max(a + 1) - 1).div_euclid(BUCKET_MS)
}

/// §4 baseline contamination of one user's sessions: for every closed session `s`, whether
/// another session `o` (open sessions as the point of their start) overlaps `[s − B, s)`. That
/// holds exactly when `o` starts before `s` and its end (a point's start + 1) passes `s − B`, so
/// one sort and a running maximum of ends answer it for all sessions: O(n log n), not every pair
/// (a user with 10,000 sessions cost ~1 s of worker time per change).
pub fn contamination_flags(mut live: Vec<&Session>) -> Vec<(String, bool)> {
    live.sort_by_key(|s| s.start_ms);
    let reach = |o: &Session| match o.end_ms {
        Some(e) if e > o.start_ms => e,
        _ => o.start_ms.saturating_add(1),
    };
    let (mut out, mut i, mut max_reach) = (Vec::new(), 0, i64::MIN);
    while i < live.len() {
        // Sessions starting at the same instant are not in each other's BEFORE window.
        let start = live[i].start_ms;
        let group_end = live[i..].iter().position(|s| s.start_ms != start).map_or(live.len(), |n| i + n);
        for s in &live[i..group_end] {
            if s.end_ms.is_some() {
                out.push((s.session_id.clone(), max_reach > s.start_ms.saturating_sub(BEFORE_MS)));
            }
        }
        for o in &live[i..group_end] {
            max_reach = max_reach.max(reach(o));
        }
        i = group_end;
    }
    out
}

/// What a session window needs of one sample: metric, start and end (ms), value, source rank,
/// `sourceId`, `sourceRecordId` (the last keeps two otherwise equal samples apart).
type SampleLite = (Metric, i64, i64, OrdF64, u8, String, String);

/// The impact-relevant samples of one `(user, hour)` bucket, each with the first hour it touches and
/// its multiplicity, sorted. Sessions never copy it: each (session, hour) pair is reduced to a
/// small [`HourPart`] as the join reads it, so memory grows as sessions + samples, not sessions ×
/// samples (2,000 overlapping sessions used to copy every nearby sample 2,000 times). Behind an
/// `Arc`, so that the arrangement's merges copy a pointer, not the hour's samples. Equality and
/// order compare contents, with a pointer check first.
#[derive(Clone, Debug, Default)]
pub struct HourSamples(Arc<Vec<(SampleLite, i64, isize)>>);

impl PartialEq for HourSamples {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}
impl Eq for HourSamples {}
impl PartialOrd for HourSamples {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for HourSamples {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        if Arc::ptr_eq(&self.0, &other.0) { std::cmp::Ordering::Equal } else { self.0.cmp(&other.0) }
    }
}
impl serde::Serialize for HourSamples {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.as_slice().serialize(serializer)
    }
}
impl<'de> serde::Deserialize<'de> for HourSamples {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::deserialize(deserializer).map(|v| HourSamples(Arc::new(v)))
    }
}

/// In: current samples and sessions. Out: one [`Impact`] per (session, metric) with at least one
/// window holding a sample. Samples are gathered per `(user, hour)` into shared [`HourSamples`];
/// each session meets the hours its `[s − B, e + A)` covers, so a sample change reaches only the
/// sessions whose windows cover its hours.
pub fn impacts<'s>(
    samples: &SamplesByUser<'s>,
    sessions: VecCollection<'s, Epoch, Session>,
) -> VecCollection<'s, Epoch, Impact> {
    let eligible =
        sessions.clone().filter(|s| matches!(s.end_ms, Some(e) if e >= s.start_ms && e - s.start_ms <= MAX_SESSION_MS));

    let contamination = sessions
        .map(|s| (s.user_id.clone(), s))
        .reduce_named("Impact: contamination", |_user, input, output| {
            let live: Vec<&Session> = input.iter().filter(|(_, r)| *r > 0).map(|(s, _)| *s).collect();
            for flag in contamination_flags(live) {
                output.push((flag, 1));
            }
        })
        .map(|(user, (session_id, dirty))| ((user, session_id), dirty));

    let session_buckets = eligible
        .clone()
        .flat_map(|s| {
            let e = s.end_ms.unwrap_or(s.start_ms);
            let first = (s.start_ms - BEFORE_MS).div_euclid(BUCKET_MS);
            buckets(s.start_ms - BEFORE_MS, e + AFTER_MS)
                .map(|h| ((s.user_id.clone(), h), (s.session_id.clone(), s.start_ms, e, first)))
                .collect::<Vec<_>>()
        })
        .arrange_by_key_named("Impact: sessions by hour");
    let hours = samples
        .clone()
        .flat_map_ref(|user, x| {
            if !has_impact(x.metric) || x.value.is_none() {
                return Vec::new();
            }
            let lite: SampleLite = (
                x.metric,
                x.start_ms,
                x.end_ms,
                x.value.unwrap_or_default(),
                x.source_class.rank(),
                x.source_id.clone(),
                x.source_record_id.clone(),
            );
            let first = x.start_ms.div_euclid(BUCKET_MS);
            buckets(x.start_ms, x.end_ms).map(|h| ((user.clone(), h), (lite.clone(), first))).collect::<Vec<_>>()
        })
        .reduce_named("Impact: samples by hour", |_key, input, output| {
            let hour: Vec<_> =
                input.iter().filter(|(_, r)| *r > 0).map(|((lite, first), r)| (lite.clone(), *first, *r)).collect();
            if !hour.is_empty() {
                output.push((HourSamples(Arc::new(hour)), 1));
            }
        })
        .arrange_by_key_named("Impact: hours by user");

    // Each (session, hour) pair is reduced at once to what that hour adds to the session's
    // windows ([`HourPart`]); a session then sums at most 28 parts. A sample change costs the
    // sessions covering its hour one pass over that hour's samples each, not over their windows.
    let windows = session_buckets
        .join_core(hours, |(user, h), (sid, s, e, s_first), hour| {
            let parts = hour_parts(hour, *h, *s_first, *s, *e);
            (!parts.is_empty()).then(|| ((user.clone(), sid.clone(), *s, *e), (*h, parts)))
        })
        .reduce_named("Impact: windows", |(_, _, s, e), input, output| {
            for (metric, windows) in combine(*s, *e, input) {
                if windows.iter().any(|w| w.1 >= 1) {
                    output.push(((metric, windows), 1));
                }
            }
        })
        .map(|((user, sid, _, _), (metric, windows))| ((user, sid), (metric, windows)));

    let attributes =
        eligible.map(|s| ((s.user_id, s.session_id), (s.product_id, s.start_ms, s.quantity))).join(contamination);
    windows.join(attributes).map(
        |((user_id, session_id), ((metric, windows), ((product_id, start_ms, quantity), dirty)))| Impact {
            user_id,
            session_id,
            metric,
            product_id,
            start_ms,
            quantity,
            contaminated: dirty,
            windows,
        },
    )
}

/// One source's share of one window from one hour: the sum of its samples' C1 shares of the window
/// (DISCRETE: of their values) and how many of its samples count (overlap the window; DISCRETE:
/// start in it). `rank` and `source` order the sources (§1.5); DISCRETE uses one part, rank 0.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Part {
    pub rank: u8,
    pub source: String,
    pub total: OrdF64,
    pub n: i64,
}

/// What one hour adds to one session's BEFORE, DURING and AFTER windows, per metric.
pub type HourPart = Vec<(Metric, [Vec<Part>; 3])>;

/// The part of `hour` (bucket `h`) in the windows of the session `[s, e)` whose first bucket is
/// `s_first`. A sample touching several of the session's hours counts in the first of them only.
fn hour_parts(hour: &HourSamples, h: i64, s_first: i64, s: i64, e: i64) -> HourPart {
    let ranges = [(s - BEFORE_MS, s), (s, e), (e, e + AFTER_MS)];
    let mine: Vec<&(SampleLite, i64, isize)> =
        hour.0.iter().filter(|(_, x_first, _)| h == s_first.max(*x_first)).collect();
    let mut out = Vec::new();
    for samples in mine.chunk_by(|x, y| x.0.0 == y.0.0) {
        let metric = samples[0].0.0;
        let cumulative = metric.kind() == ValueKind::Cumulative;
        let windows = ranges.map(|(a, b)| {
            let mut parts: Vec<Part> = Vec::new();
            if cumulative && b <= a {
                return parts;
            }
            for (x, _, m) in samples {
                let (start, end, value) = (x.1, x.2, x.3.0);
                let counts = if cumulative {
                    if end > start { start < b && end > a } else { a <= start && start < b }
                } else {
                    a <= start && start < b
                };
                if !counts || *m <= 0 {
                    continue;
                }
                let (rank, source) = if cumulative { (x.4, x.5.as_str()) } else { (0, "") };
                let add = if cumulative { share(start, end, value, a, b) } else { value } * *m as f64;
                match parts.iter_mut().find(|p| p.rank == rank && p.source == source) {
                    Some(p) => {
                        p.total.0 += add;
                        p.n += *m as i64;
                    }
                    None => parts.push(Part { rank, source: source.to_owned(), total: OrdF64(add), n: *m as i64 }),
                }
            }
            parts.sort();
            parts
        });
        if windows.iter().any(|w| !w.is_empty()) {
            out.push((metric, windows));
        }
    }
    out
}

/// Per `(rank, sourceId)` of one window: the summed contribution and the samples that count.
type SourceTotals<'a> = BTreeMap<(u8, &'a str), (f64, i64)>;

/// A session's windows per metric from its hours' parts (§4): DISCRETE, the mean of the samples
/// starting in the window (null below `MIN_N`); CUMULATIVE, the best-ranked source with a sample
/// overlapping the window (ties to the smaller `sourceId`), its C1 total per hour of window.
fn combine(s: i64, e: i64, input: &[(&(i64, HourPart), isize)]) -> Vec<(Metric, [Window; 3])> {
    let ranges = [(s - BEFORE_MS, s), (s, e), (e, e + AFTER_MS)];
    // Per metric and window, per (rank, source): total and n, summed over hours in hour order.
    let mut acc: BTreeMap<Metric, [SourceTotals<'_>; 3]> = BTreeMap::new();
    for ((_, parts), r) in input {
        if *r <= 0 {
            continue;
        }
        for (metric, windows) in parts {
            let slot = acc.entry(*metric).or_default();
            for (w, window_parts) in windows.iter().enumerate() {
                for p in window_parts {
                    let t = slot[w].entry((p.rank, p.source.as_str())).or_insert((0.0, 0));
                    t.0 += p.total.0 * *r as f64;
                    t.1 += p.n * *r as i64;
                }
            }
        }
    }
    acc.into_iter()
        .map(|(metric, windows)| {
            let mut w = 0;
            let out = windows.map(|sources| {
                let (a, b) = ranges[w];
                w += 1;
                if metric.kind() == ValueKind::Cumulative {
                    if b <= a {
                        return (None, 0);
                    }
                    // The best-ranked (rank, sourceId) that has a sample overlapping the window; its
                    // total is every overlapping sample of that sourceId's (whatever class the
                    // others carry), as §4 counts by source.
                    let Some((&(_, best), _)) = sources.iter().find(|(_, (_, n))| *n > 0) else {
                        return (None, 0);
                    };
                    let (total, n) = sources
                        .iter()
                        .filter(|((_, source), _)| *source == best)
                        .fold((0.0, 0), |(t, c), (_, (total, n))| (t + total, c + n));
                    (Some(OrdF64(total / ((b - a) as f64 / 3_600_000.0))), n)
                } else {
                    let (sum, n) = sources.values().fold((0.0, 0), |(s, c), (t, n)| (s + t, c + n));
                    ((n >= MIN_N).then(|| OrdF64(sum / n as f64)), n)
                }
            });
            (metric, out)
        })
        .collect()
}

/// In: current samples and sessions. Out: one row per `(user_id, session_id, metric)`.
pub fn session_impacts<'s>(impacts: VecCollection<'s, Epoch, Impact>) -> VecCollection<'s, Epoch, Row> {
    impacts.map(|i| {
        let [dd, da] = i.deltas();
        let before = i.windows[0].0.map(|m| m.0).filter(|b| *b != 0.0);
        let pct = |d: Option<f64>| Some(d? / before?);
        let mut row = vec![
            Datum::Str(i.user_id.clone()),
            Datum::Str(i.session_id.clone()),
            Datum::Str(i.metric.key().to_owned()),
            Datum::Str(i.product_id.clone()),
        ];
        for (mean, n) in i.windows {
            row.push(mean.map_or(Datum::Null, Datum::Float));
            row.push(Datum::Int(n));
        }
        row.extend([Datum::float(dd), Datum::float(da), Datum::float(pct(dd)), Datum::float(pct(da))]);
        row.push(Datum::Bool(i.contaminated));
        row
    })
}
