//! `session_impacts`: per (session, metric), the metric before, during and after a consumption
//! session, and the deltas (DOMAIN.md §4).

use differential_dataflow::VecCollection;
use differential_dataflow::difference::{IsZero, Multiply, Semigroup};
use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use vitalflow_schemas::view::{ColumnType::*, RangeVia, col};
use vitalflow_schemas::{Datum, Epoch, Metric, OrdF64, Row, ValueKind, ViewDef};

pub use crate::exact::WindowSum;
use crate::names::Name;
use crate::records::SessionRecord;
use crate::registry::{SamplesByUser, push_keyed};

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
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Impact {
    pub user_id: Name,
    pub session_id: Name,
    pub metric: Metric,
    pub product_id: Name,
    pub start_ms: i64,
    pub quantity: OrdF64,
    pub contaminated: bool,
    /// BEFORE, DURING, AFTER.
    pub windows: [Window; 3],
    /// `deltaDuring`, `deltaAfter` (see [`Impact::deltas`]).
    pub deltas: [Option<OrdF64>; 2],
}

impl Impact {
    /// `deltaDuring = duringMean − beforeMean` and `deltaAfter` likewise (§4), null when either
    /// mean is null: the difference of the exact means, rounded once or twice (not the
    /// difference of the two rounded means, which is off by an ulp of the means: 6·10⁻⁸ for
    /// means near 3·10⁸, beyond G4's 10⁻⁹ for a delta near 0).
    pub fn deltas(&self) -> [Option<f64>; 2] {
        self.deltas.map(|d| d.map(|d| d.0))
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
/// another session `o` overlaps `[s − B, s)`; `o` is its interval `[startAt, endAt)`, the point of
/// its start while open or when `endAt == startAt`, and nothing when `endAt < startAt` (an empty
/// interval). That holds exactly when `o` starts before `s` and its end (a point's start + 1) passes `s − B`, so
/// one sort and a running maximum of ends answer it for all sessions: O(n log n), not every pair
/// (a user with 10,000 sessions cost ~1 s of worker time per change).
pub fn contamination_flags(mut live: Vec<&SessionRecord>) -> Vec<(Name, bool)> {
    live.sort_by_key(|s| s.start_ms);
    let reach = |o: &SessionRecord| match o.end_ms {
        Some(e) if e > o.start_ms => e,
        Some(e) if e < o.start_ms => i64::MIN,
        _ => o.start_ms.saturating_add(1),
    };
    let (mut out, mut i, mut max_reach) = (Vec::new(), 0, i64::MIN);
    while i < live.len() {
        // Sessions starting at the same instant are not in each other's BEFORE window.
        let start = live[i].start_ms;
        let group_end = live[i..].iter().position(|s| s.start_ms != start).map_or(live.len(), |n| i + n);
        for s in &live[i..group_end] {
            if s.end_ms.is_some() {
                out.push((s.session_id, max_reach > s.start_ms.saturating_sub(BEFORE_MS)));
            }
        }
        for o in &live[i..group_end] {
            max_reach = max_reach.max(reach(o));
        }
        i = group_end;
    }
    out
}

/// A session as its windows see it: its bounds (UTC ms; `end_ms` is the end of an eligible, closed
/// session).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct SessionSpan {
    pub session_id: Name,
    pub start_ms: i64,
    pub end_ms: i64,
}

/// BEFORE `[s − B, s)`, DURING `[s, e)` and AFTER `[e, e + A)` of the session `[s, e)`.
fn windows_of(s: i64, e: i64) -> [(i64, i64); 3] {
    [(s - BEFORE_MS, s), (s, e), (e, e + AFTER_MS)]
}

/// One window of one session, as a block of time it meets is keyed under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct SessionWindow {
    pub span: SessionSpan,
    /// 0 BEFORE, 1 DURING, 2 AFTER.
    pub window: u8,
}

impl SessionWindow {
    fn bounds(&self) -> (i64, i64) {
        windows_of(self.span.start_ms, self.span.end_ms)[self.window as usize]
    }
}

/// How one window `[a, b)` meets the aligned hour buckets (UTC): the hours it holds whole and
/// the hours it only partly covers (at most two).
struct Blocks {
    whole_hours: std::ops::Range<i64>,
    partial_hours: Vec<i64>,
}

/// Whether `[a, b)` holds the aligned block `k` of `size` ms whole.
fn holds(a: i64, b: i64, size: i64, k: i64) -> bool {
    a <= k * size && (k + 1) * size <= b
}

fn blocks(a: i64, b: i64) -> Blocks {
    if b <= a {
        return Blocks { whole_hours: 0..0, partial_hours: Vec::new() };
    }
    let whole_hours = (-(-a).div_euclid(BUCKET_MS))..b.div_euclid(BUCKET_MS);
    let partial_hours = buckets(a, b).filter(|h| !holds(a, b, BUCKET_MS, *h)).collect();
    Blocks { whole_hours, partial_hours }
}

/// Minutes inside hour buckets ([`HourIndex`]'s minute tables).
const MINUTE_MS: i64 = 60_000;

/// What a session window needs of one sample: metric, `[start_ms, end_ms)` (UTC ms), value, source
/// rank and `sourceId` (§1.5). Equal samples of different `sourceRecordId`s are one record with
/// multiplicity 2, as they count twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct HourSample {
    pub metric: Metric,
    pub start_ms: i64,
    pub end_ms: i64,
    pub value: OrdF64,
    pub rank: u8,
    pub source_id: Name,
}

/// A CUMULATIVE [`HourSample`] as the arrangement of one hour bucket it touches holds it: 24 bytes
/// instead of 32, its instants in ms from the hour's start. A sample lasts at most 24 h (G3), so
/// both lie within ±25 h of the start of any hour it touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct HourSpan {
    pub metric: Metric,
    pub start: i32,
    pub end: i32,
    pub value: OrdF64,
    pub rank: u8,
    pub source_id: Name,
}

impl HourSpan {
    /// `x` under hour bucket `hour`. Instants of validated samples fit; others saturate (and
    /// cannot come back as they were, which only a corrupted store could cause).
    fn of(x: &HourSample, hour: i64) -> Self {
        let h0 = hour * BUCKET_MS;
        let offset = |t: i64| (t - h0).clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32;
        HourSpan {
            metric: x.metric,
            start: offset(x.start_ms),
            end: offset(x.end_ms),
            value: x.value,
            rank: x.rank,
            source_id: x.source_id,
        }
    }

    /// The sample again, under hour bucket `hour`.
    #[cfg(test)]
    fn sample(&self, hour: i64) -> HourSample {
        let h0 = hour * BUCKET_MS;
        HourSample {
            metric: self.metric,
            start_ms: h0 + i64::from(self.start),
            end_ms: h0 + i64::from(self.end),
            value: self.value,
            rank: self.rank,
            source_id: self.source_id,
        }
    }
}

impl HourSample {
    fn cumulative(&self) -> bool {
        self.metric.kind() == ValueKind::Cumulative
    }

    /// The first hour bucket the sample touches.
    fn first_hour(&self) -> i64 {
        self.start_ms.div_euclid(BUCKET_MS)
    }

    /// The instants that decide where the sample counts, as `[from, to)`: its start alone for a
    /// DISCRETE or instantaneous sample, its interval for a CUMULATIVE one.
    fn extent(&self) -> (i64, i64) {
        if self.cumulative() && self.end_ms > self.start_ms {
            (self.start_ms, self.end_ms)
        } else {
            (self.start_ms, self.start_ms + 1)
        }
    }

    /// The hour buckets the sample's extent touches.
    fn hours(&self) -> std::ops::RangeInclusive<i64> {
        let (from, to) = self.extent();
        buckets(from, to)
    }
}

/// A CUMULATIVE sample as the builders of one hour bucket's indexes read it
/// ([`HourIndex::build`], [`SourceHours::build`]): the arrangement's [`HourSpan`]s directly, and
/// [`HourSample`]s (the tests' model).
trait InHour {
    /// `[from, to)` ([`HourSample::extent`]) in ms from `h0`, the start of the hour bucket.
    fn extent_from(&self, h0: i64) -> (i64, i64);
    /// The stream `(rank, sourceId)` (§1.5).
    fn stream(&self) -> (u8, Name);
    fn value(&self) -> OrdF64;
}

impl InHour for HourSample {
    fn extent_from(&self, h0: i64) -> (i64, i64) {
        let (from, to) = self.extent();
        (from - h0, to - h0)
    }

    fn stream(&self) -> (u8, Name) {
        (self.rank, self.source_id)
    }

    fn value(&self) -> OrdF64 {
        self.value
    }
}

impl InHour for HourSpan {
    /// The span's offsets are from its own hour's start: `h0` is that hour's (the builders are
    /// given the hour the arrangement keyed the span by).
    fn extent_from(&self, _h0: i64) -> (i64, i64) {
        let (start, end) = (i64::from(self.start), i64::from(self.end));
        if self.metric.kind() == ValueKind::Cumulative && end > start { (start, end) } else { (start, start + 1) }
    }

    fn stream(&self) -> (u8, Name) {
        (self.rank, self.source_id)
    }

    fn value(&self) -> OrdF64 {
        self.value
    }
}

/// "No stream" in an [`HourIndex`].
const NO_STREAM: u32 = u32::MAX;
/// Minutes per hour bucket.
const MINUTES: usize = (BUCKET_MS / MINUTE_MS) as usize;

/// Consecutive minutes `first..=last` of an hour with the same best streams: the best stream with
/// a sample touching the minute, the best whose sample also lasts to the minute's end, the best
/// whose sample also began by the minute's start, and the best whose sample does both
/// ([`NO_STREAM`] where there is none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct MinuteRun {
    pub first: u8,
    pub last: u8,
    pub touching: u32,
    pub through_end: u32,
    pub through_start: u32,
    pub through_both: u32,
}

/// One hour's CUMULATIVE samples of one metric, reduced to what a session window needs of them in
/// step 1 of [`impacts`]: the best stream overlapping any part of the hour (a window shorter than a
/// minute included), found from minute tables instead of the samples one by one, so that a window's
/// candidates do not grow with the hour's sources. Offsets are ms from the hour's start, extents
/// clipped to the hour. Streams are numbered in rank order (§1.5: rank, then `sourceId`), so the
/// best of several is the smallest number. Built anew when a sample of the hour changes (O(n log n)
/// for the hour's n samples); its size is the hour's streams plus a few entries per sample.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct HourIndex {
    pub metric: Metric,
    /// The hour's streams `(rank, sourceId)`, sorted: stream `i` is `streams[i]`.
    pub streams: Vec<(u8, Name)>,
    /// The minutes with a sample, as runs of minutes with the same best streams, in order.
    runs: Vec<MinuteRun>,
    /// Samples ending inside a minute, as `(minute, end offset, best stream ending there or
    /// later)`: by minute, then end descending, kept only where the best improves.
    ending: Vec<(u8, i32, u32)>,
    /// Samples starting inside a minute, as `(minute, start offset, best stream starting there
    /// or earlier)`: by minute, then start ascending, kept only where the best improves.
    starting: Vec<(u8, i32, u32)>,
    /// As `ending`, of the samples that also began by the minute's start.
    entering: Vec<(u8, i32, u32)>,
    /// As `starting`, of the samples that also last to the minute's end.
    leaving: Vec<(u8, i32, u32)>,
    /// Samples starting and ending inside one minute: `(minute, start offset, end offset,
    /// stream)`, by minute. Only a window shorter than a minute scans them.
    inside: Vec<(u8, i32, i32, u32)>,
}

/// Whether the part of `[a, b)` inside hour bucket `hour` lies inside one minute without holding
/// it whole (a window shorter than a minute).
fn inside_one_minute(a: i64, b: i64, hour: i64) -> bool {
    let h0 = hour * BUCKET_MS;
    let (a, b) = (a.max(h0), b.min(h0 + BUCKET_MS));
    a < b
        && a.div_euclid(MINUTE_MS) == (b - 1).div_euclid(MINUTE_MS)
        && !holds(a, b, MINUTE_MS, a.div_euclid(MINUTE_MS))
}

impl HourIndex {
    /// The index of `samples`, every one of `metric` and touching hour bucket `hour`.
    fn build<'a, X: InHour + 'a>(metric: Metric, hour: i64, samples: impl Iterator<Item = &'a X> + Clone) -> Self {
        let mut streams: Vec<(u8, Name)> = samples.clone().map(InHour::stream).collect();
        streams.sort();
        streams.dedup();
        let (h0, minute) = (hour * BUCKET_MS, MINUTE_MS as i32);
        let mut touching = [NO_STREAM; MINUTES];
        let mut through_end = [NO_STREAM; MINUTES];
        let mut through_start = [NO_STREAM; MINUTES];
        let mut through_both = [NO_STREAM; MINUTES];
        let (mut ending, mut starting, mut entering, mut leaving, mut inside) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for x in samples {
            // Names order as their strings, and equal ones compare without reading them.
            let stream = streams.binary_search(&x.stream()).map_or(NO_STREAM, |i| i as u32);
            let (from, to) = x.extent_from(h0);
            // The sample touches the hour, so 0 ≤ f < t ≤ one hour.
            let (f, t) = (from.max(0) as i32, to.min(BUCKET_MS) as i32);
            let (first, last) = (f / minute, (t - 1) / minute);
            for m in first..=last {
                let i = m as usize;
                touching[i] = touching[i].min(stream);
                if t >= (m + 1) * minute {
                    through_end[i] = through_end[i].min(stream);
                }
                if f <= m * minute {
                    through_start[i] = through_start[i].min(stream);
                }
                if f <= m * minute && t >= (m + 1) * minute {
                    through_both[i] = through_both[i].min(stream);
                }
            }
            let (ends_inside, starts_inside) = (t < (last + 1) * minute, f > first * minute);
            if ends_inside {
                ending.push((last as u8, t, stream));
                if first < last || !starts_inside {
                    entering.push((last as u8, t, stream));
                }
            }
            if starts_inside {
                starting.push((first as u8, f, stream));
                if first < last || !ends_inside {
                    leaving.push((first as u8, f, stream));
                }
            }
            if first == last && starts_inside && ends_inside {
                inside.push((first as u8, f, t, stream));
            }
        }
        let mut runs: Vec<MinuteRun> = Vec::new();
        for m in 0..MINUTES {
            if touching[m] == NO_STREAM {
                continue;
            }
            let run = MinuteRun {
                first: m as u8,
                last: m as u8,
                touching: touching[m],
                through_end: through_end[m],
                through_start: through_start[m],
                through_both: through_both[m],
            };
            match runs.last_mut() {
                Some(prev)
                    if prev.last + 1 == run.first
                        && MinuteRun { first: prev.first, last: prev.last, ..run } == *prev =>
                {
                    prev.last = run.last;
                }
                _ => runs.push(run),
            }
        }
        for by_end in [&mut ending, &mut entering] {
            by_end.sort_by_key(|(m, t, s)| (*m, std::cmp::Reverse(*t), *s));
        }
        starting.sort();
        leaving.sort();
        inside.sort();
        for steps in [&mut ending, &mut starting, &mut entering, &mut leaving] {
            let mut best: Option<(u8, u32)> = None;
            steps.retain(|(m, _, s)| {
                let improves = best.is_none_or(|(bm, bs)| bm != *m || *s < bs);
                if improves {
                    best = Some((*m, *s));
                }
                improves
            });
        }
        HourIndex { metric, streams, runs, ending, starting, entering, leaving, inside }
    }

    fn stream(&self, i: u32) -> Option<&(u8, Name)> {
        self.streams.get(i as usize)
    }

    /// The best stream with a sample in the hour.
    fn best(&self) -> Option<&(u8, Name)> {
        self.stream(self.runs.iter().map(|r| r.touching).min().unwrap_or(NO_STREAM))
    }

    /// The run holding minute `m`, if any sample touches it.
    fn run(&self, m: i32) -> Option<&MinuteRun> {
        let i = self.runs.partition_point(|r| i32::from(r.last) < m);
        self.runs.get(i).filter(|r| i32::from(r.first) <= m)
    }

    /// The best stream with a sample overlapping `[a, b)` (UTC ms) within the hour bucket
    /// `hour` (§4: positive overlap, or an instant inside it).
    fn best_in(&self, a: i64, b: i64, hour: i64) -> Option<&(u8, Name)> {
        let short = inside_one_minute(a, b, hour);
        let (h0, minute) = (hour * BUCKET_MS, MINUTE_MS as i32);
        let (a, b) = ((a.max(h0) - h0) as i32, (b.min(h0 + BUCKET_MS) - h0) as i32);
        if a >= b {
            return None;
        }
        let (first, last) = (a / minute, (b - 1) / minute);
        if short {
            // Inside minute `first`, holding neither of its ends' neighbours: a sample touching
            // it overlaps if it spans the minute, or began by its start and ends after `a`, or
            // lasts to its end and starts before `b`, or lies inside it and meets `[a, b)`.
            let mut best = self.run(first).map_or(NO_STREAM, |r| r.through_both);
            let entering = self.steps(&self.entering, first);
            let reaching = entering.partition_point(|(_, t, _)| *t > a);
            if reaching > 0 {
                best = best.min(entering[reaching - 1].2);
            }
            let leaving = self.steps(&self.leaving, first);
            let begun = leaving.partition_point(|(_, f, _)| *f < b);
            if begun > 0 {
                best = best.min(leaving[begun - 1].2);
            }
            let from = self.inside.partition_point(|(m, ..)| i32::from(*m) < first);
            for (_, f, t, s) in self.inside[from..].iter().take_while(|(m, ..)| i32::from(*m) == first) {
                if *f < b && *t > a {
                    best = best.min(*s);
                }
            }
            return self.stream(best);
        }
        // Whole minutes `lo..hi` (none when `lo ≥ hi`: a window of two partly covered minutes):
        // every sample touching them overlaps.
        let (lo, hi) = ((a + minute - 1) / minute, b / minute);
        let mut best = self
            .runs
            .iter()
            .filter(|r| lo < hi && i32::from(r.last) >= lo && i32::from(r.first) < hi)
            .map(|r| r.touching)
            .min()
            .unwrap_or(NO_STREAM);
        if a % minute != 0 {
            // Partly covered first minute: samples touching it that end after `a`.
            best = best.min(self.run(first).map_or(NO_STREAM, |r| r.through_end));
            let steps = self.steps(&self.ending, first);
            let reaching = steps.partition_point(|(_, t, _)| *t > a);
            if reaching > 0 {
                best = best.min(steps[reaching - 1].2);
            }
        }
        if b % minute != 0 {
            // Partly covered last minute: samples touching it that start before `b`.
            best = best.min(self.run(last).map_or(NO_STREAM, |r| r.through_start));
            let steps = self.steps(&self.starting, last);
            let begun = steps.partition_point(|(_, f, _)| *f < b);
            if begun > 0 {
                best = best.min(steps[begun - 1].2);
            }
        }
        self.stream(best)
    }

    /// The entries of `steps` for minute `m`.
    fn steps<'a>(&self, steps: &'a [(u8, i32, u32)], m: i32) -> &'a [(u8, i32, u32)] {
        let from = steps.partition_point(|(sm, _, _)| i32::from(*sm) < m);
        let to = steps.partition_point(|(sm, _, _)| i32::from(*sm) <= m);
        &steps[from..to]
    }
}

/// The reduce key of one (session, metric): the session's bounds travel with it, as the
/// CUMULATIVE rate divides by the window's length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct WindowKey {
    pub user_id: Name,
    pub session_id: Name,
    pub start_ms: i64,
    pub end_ms: i64,
    pub metric: Metric,
}

impl WindowKey {
    fn new(user_id: Name, s: &SessionSpan, metric: Metric) -> Self {
        WindowKey { user_id, session_id: s.session_id, start_ms: s.start_ms, end_ms: s.end_ms, metric }
    }

    fn bounds(&self, window: u8) -> (i64, i64) {
        windows_of(self.start_ms, self.end_ms)[window as usize]
    }
}

/// A CUMULATIVE stream that has a sample in window `window` (0 BEFORE, 1 DURING, 2 AFTER) of a
/// session. Ordered so that a window's best stream (smallest rank, then smallest `sourceId`, §1.5)
/// comes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct WindowStream {
    pub window: u8,
    pub rank: u8,
    pub source: Name,
}

/// In: current samples and sessions. Out: one [`Impact`] per (session, metric) with at least one
/// window holding a sample.
///
/// Every window's sums ride on the difference type ([`WindowSum`]) and are built from aligned
/// blocks, as a segment tree would, so that neither a change nor the state grows with the samples
/// or sources near a session (ADR 0007):
/// - DISCRETE metrics pool every source. A window takes the total of every hour it holds whole and,
///   in the (at most two) hours it partly covers, a difference of that hour's prefix sums
///   ([`DiscreteHour`]) in O(log n), however many readings the hour has.
/// - CUMULATIVE metrics take one source per window (§4), found in two steps. First the window's
///   best stream: one candidate per hour it touches, read from that hour's [`HourIndex`] (the
///   hour's best stream where the window holds the hour whole, else the best overlapping the part
///   it covers), however many sources the hour has. Then the best `sourceId`'s sums in every hour
///   of the window, read from that source's prefix sums of the hour ([`SourceHour`]) in O(log n),
///   however many samples the hour has.
///
/// A sample change rebuilds its hours' structures (DISCRETE: the hour's prefix sums, O(n) in the
/// hour's readings of every metric; CUMULATIVE: the hour's index and every source's prefix sums of
/// the hour, O(n log n)), then costs O(log n) per session window touching those hours; a new session costs O(log n) per hour
/// it touches; memory holds the samples, the sessions, per-hour prefix sums and indexes, and a
/// few candidates per window.
pub fn impacts<'s>(
    samples: &SamplesByUser<'s>,
    sessions: VecCollection<'s, Epoch, SessionRecord>,
) -> VecCollection<'s, Epoch, Impact> {
    let eligible =
        sessions.clone().filter(|s| matches!(s.end_ms, Some(e) if e >= s.start_ms && e - s.start_ms <= MAX_SESSION_MS));

    let contamination = sessions
        .map(|s| (s.user_id, s))
        .reduce_named("Impact: contamination", |_user, input, output| {
            let live: Vec<&SessionRecord> = input.iter().filter(|(_, r)| *r > 0).map(|(s, _)| *s).collect();
            for flag in contamination_flags(live) {
                output.push((flag, 1));
            }
        })
        .map(|(user, (session_id, dirty))| ((user, session_id), dirty));

    let spans = eligible.clone().map(|s| {
        let e = s.end_ms.unwrap_or(s.start_ms);
        (s.user_id, SessionSpan { session_id: s.session_id, start_ms: s.start_ms, end_ms: e })
    });
    // Per window, the hours it meets; `Block` tells the two kinds apart.
    let session_blocks = spans.flat_map(|(user, span)| {
        let mut out = Vec::new();
        for (w, (a, b)) in (0u8..).zip(windows_of(span.start_ms, span.end_ms)) {
            let sw = SessionWindow { span, window: w };
            let Blocks { whole_hours, partial_hours } = blocks(a, b);
            out.extend(whole_hours.map(|h| (Block::WholeHour, (user, h), sw)));
            out.extend(partial_hours.into_iter().map(|h| (Block::PartialHour, (user, h), sw)));
        }
        out
    });
    let of_kind = |kind: Block, name: &str| {
        session_blocks
            .clone()
            .filter(move |(k, _, _)| *k == kind)
            .map(|(_, key, sw)| (key, sw))
            .arrange_by_key_named(name)
    };
    let whole_hours = of_kind(Block::WholeHour, "Impact: session windows by whole hour");
    let partial_hours = of_kind(Block::PartialHour, "Impact: session windows by partial hour");

    let lite = samples.clone().flat_map_ref(|user, x| {
        let value = x.value().filter(|_| has_impact(x.metric))?;
        let lite = HourSample {
            metric: x.metric,
            start_ms: x.start_ms,
            end_ms: x.end_ms,
            value,
            rank: x.source_class.rank(),
            source_id: x.source_id,
        };
        Some((*user, lite))
    });
    let discrete = discrete_sums(lite.clone().filter(|(_, x)| !x.cumulative()), &whole_hours, &partial_hours);
    let cumulative = cumulative_sums(lite.filter(|(_, x)| x.cumulative()), &whole_hours, &partial_hours);

    let windows = discrete
        .concat(cumulative)
        .reduce_named("Impact: windows", |key: &WindowKey, input, output| {
            let (windows, deltas) = window_means(key, input);
            if windows.iter().any(|w| w.1 >= 1) {
                output.push(((windows, deltas), 1isize));
            }
        })
        .map(|(key, windows)| ((key.user_id, key.session_id), (key.metric, windows)));

    let attributes =
        eligible.map(|s| ((s.user_id, s.session_id), (s.product_id, s.start_ms, s.quantity))).join(contamination);
    windows.join(attributes).map(
        |((user_id, session_id), ((metric, (windows, deltas)), ((product_id, start_ms, quantity), dirty)))| Impact {
            user_id,
            session_id,
            metric,
            product_id,
            start_ms,
            quantity,
            contaminated: dirty,
            windows,
            deltas,
        },
    )
}

/// The runs of consecutive items with the same key, in order, with their key: a reduce's input
/// group sorted by a value whose first field is its metric, split by metric, or one hour's
/// samples sorted by source, split by source.
fn runs<T, K: PartialEq>(items: &[T], key: impl Fn(&T) -> K) -> impl Iterator<Item = (K, &[T])> {
    let mut rest = items;
    std::iter::from_fn(move || {
        let k = key(rest.first()?);
        let n = rest.iter().position(|x| key(x) != k).unwrap_or(rest.len());
        let (run, tail) = rest.split_at(n);
        rest = tail;
        Some((k, run))
    })
}

/// Session windows arranged by the (user, hour) block they meet.
type WindowsByBlock<'s> = Arranged<'s, TraceAgent<ValSpine<(Name, i64), SessionWindow, Epoch, isize>>>;

/// Per (session, metric, window), the sum of a DISCRETE metric's samples starting in the window,
/// every source pooled (§4: a DISCRETE sample counts, its value whole, in the window where it
/// starts): from each hour's [`DiscreteHour`], its total for an hour the window holds whole, a
/// difference of two prefix sums for an hour it covers in part.
fn discrete_sums<'s>(
    samples: VecCollection<'s, Epoch, (Name, HourSample)>,
    whole_hours: &WindowsByBlock<'s>,
    partial_hours: &WindowsByBlock<'s>,
) -> VecCollection<'s, Epoch, (WindowKey, u8), WindowSum> {
    let hours = samples
        .map(|(user, x)| {
            let h = x.first_hour();
            let offset = (x.start_ms - h * BUCKET_MS) as u32;
            ((user, h), DiscreteReading { metric: x.metric, offset, value: x.value })
        })
        .arrange_by_key_named("Impact: discrete samples by hour")
        .reduce_abelian::<_, ValBuilder<_, _, _, _>, ValSpine<(Name, i64), DiscreteHour, Epoch, isize>, _, _>(
            "Impact: discrete prefix sums per hour",
            |_key: &(Name, i64), input: &[(&DiscreteReading, isize)], output: &mut Vec<(DiscreteHour, isize)>| {
                // Sorted by reading, so by metric, then by offset.
                for (metric, readings) in runs(input, |(x, _)| x.metric) {
                    output.push((DiscreteHour::build(metric, readings), 1));
                }
            },
            push_keyed,
        );
    let sum_of = |(user, h): &(Name, i64), sw: &SessionWindow, hour: &DiscreteHour| {
        let (a, b) = sw.bounds();
        Some(((WindowKey::new(*user, &sw.span, hour.metric), sw.window), hour.window_sum(a, b, *h)?))
    };
    whole_hours
        .clone()
        .join_core(hours.clone(), sum_of)
        .concat(partial_hours.clone().join_core(hours, sum_of))
        .explode(|(key, sum)| Some((key, sum)))
}

/// A DISCRETE reading as its hour bucket keeps it: its metric, its start in ms from the hour's
/// start (`0..3_600_000`) and its value in the metric's canonical unit. Equal readings of
/// different `sourceRecordId`s are one record with a multiplicity, as they count twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct DiscreteReading {
    pub metric: Metric,
    pub offset: u32,
    pub value: OrdF64,
}

/// One reading of a [`DiscreteHour`]: offset and value as in [`DiscreteReading`], and its
/// multiplicity. 16 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
struct HourReading {
    value: OrdF64,
    offset: u32,
    weight: i32,
}

impl HourReading {
    fn sum(&self) -> WindowSum {
        WindowSum::of(self.value.0).multiply(&(self.weight as isize))
    }
}

/// One hour bucket's DISCRETE readings of one metric, as prefix sums that answer what any part
/// `[a, b)` of the hour adds to a window (the readings starting in it, §4) in O(log n) and at most
/// `PREFIX_EVERY − 1` readings summed one by one per bound, however many readings the hour holds. Sums are
/// exact ([`WindowSum`]), so a difference of two prefixes is the exact sum of the readings between
/// them, and a window's total is the same number whichever blocks it was assembled from. Built
/// anew when a reading of the hour changes (O(n) for the hour's n readings of all metrics, which
/// arrive sorted); it takes 16 bytes per reading and a 48-byte prefix every `PREFIX_EVERY`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct DiscreteHour {
    pub metric: Metric,
    /// The readings by offset.
    readings: Vec<HourReading>,
    /// Sums over `readings[..k · PREFIX_EVERY]`, k = 1, 2, … (an hour of fewer keeps none).
    prefixes: Vec<WindowSum>,
    /// The sum over every reading.
    total: WindowSum,
}

impl DiscreteHour {
    /// The prefix sums of `input`, one metric's readings sorted by offset, with their
    /// multiplicities, counted linearly as differential gives them (positive in a collection of
    /// current rows; a multiplicity beyond `i32`'s range, which no store holds, would be cut to it).
    fn build(metric: Metric, input: &[(&DiscreteReading, isize)]) -> Self {
        let readings: Vec<HourReading> = input
            .iter()
            .map(|(x, w)| {
                let weight = i32::try_from(*w).unwrap_or(if *w < 0 { i32::MIN } else { i32::MAX });
                HourReading { value: x.value, offset: x.offset, weight }
            })
            .collect();
        let mut prefixes = Vec::with_capacity(readings.len() / PREFIX_EVERY);
        let mut total = WindowSum::default();
        for (i, reading) in readings.iter().enumerate() {
            total.plus_equals(&reading.sum());
            if (i + 1) % PREFIX_EVERY == 0 {
                prefixes.push(total);
            }
        }
        DiscreteHour { metric, readings, prefixes, total }
    }

    /// The sum over the readings starting before `t` (ms from the hour's start).
    fn before(&self, t: i64) -> WindowSum {
        let k = self.readings.partition_point(|r| i64::from(r.offset) < t);
        let mut acc = prefix(&self.prefixes, k);
        for reading in &self.readings[k / PREFIX_EVERY * PREFIX_EVERY..k] {
            acc.plus_equals(&reading.sum());
        }
        acc
    }

    /// The sum over the readings starting in `[a, b)` (UTC ms) within hour bucket `hour`, with
    /// their count as `n`; `None` when there are none.
    fn window_sum(&self, a: i64, b: i64, hour: i64) -> Option<WindowSum> {
        let h0 = hour * BUCKET_MS;
        let (lo, hi) = (a.max(h0) - h0, b.min(h0 + BUCKET_MS) - h0);
        if lo >= hi {
            return None;
        }
        let sum = if lo == 0 && hi == BUCKET_MS { self.total } else { minus(self.before(hi), &self.before(lo)) };
        (sum.n != 0).then_some(sum)
    }
}

/// Per (session, metric, window), the sum of a CUMULATIVE metric's best source (§4) over the
/// window, in two steps (see [`impacts`]): each window's best stream, then its `sourceId`'s sums.
fn cumulative_sums<'s>(
    samples: VecCollection<'s, Epoch, (Name, HourSample)>,
    whole_hours: &WindowsByBlock<'s>,
    partial_hours: &WindowsByBlock<'s>,
) -> VecCollection<'s, Epoch, (WindowKey, u8), WindowSum> {
    // Every sample under every hour its extent touches (with positive overlap).
    let touching =
        samples.flat_map(|(user, x)| x.hours().map(|h| ((user, h), HourSpan::of(&x, h))).collect::<Vec<_>>());
    // One index per (user, hour, metric) of the streams of the samples touching the hour.
    let by_hour = touching.arrange_by_key_named("Impact: cumulative samples by hour");
    let index = by_hour
        .clone()
        .reduce_abelian::<_, ValBuilder<_, _, _, _>, ValSpine<(Name, i64), HourIndex, Epoch, isize>, _, _>(
            "Impact: stream index per hour",
            |(_, h): &(Name, i64), input: &[(&HourSpan, isize)], output: &mut Vec<(HourIndex, isize)>| {
                for (metric, spans) in runs(input, |(x, _)| x.metric) {
                    output.push((HourIndex::build(metric, *h, spans.iter().map(|(x, _)| *x)), 1));
                }
            },
            push_keyed,
        );

    // Step 1: candidates, one per hour of the window: the hour's best stream where the window
    // holds the hour whole, else the best stream overlapping the part it covers.
    let candidate = |user: &Name, sw: &SessionWindow, metric: Metric, &(rank, source): &(u8, Name)| {
        let stream = WindowStream { window: sw.window, rank, source };
        (WindowKey::new(*user, &sw.span, metric), stream)
    };
    let from_whole_hours = whole_hours
        .clone()
        .join_core(index.clone(), move |(user, _), sw, index| Some(candidate(user, sw, index.metric, index.best()?)));
    let from_partial_hours = partial_hours.clone().join_core(index, move |(user, h), sw, index| {
        let (a, b) = sw.bounds();
        Some(candidate(user, sw, index.metric, index.best_in(a, b, *h)?))
    });
    let best = from_whole_hours.concat(from_partial_hours).reduce_named(
        "Impact: best stream per window",
        |_key: &WindowKey, input: &[(&WindowStream, isize)], output| {
            // Sorted by (window, rank, source): the first stream of each window is its best.
            let mut last = None;
            for (stream, _) in input {
                if last != Some(stream.window) {
                    last = Some(stream.window);
                    output.push(((stream.window, stream.source), 1isize));
                }
            }
        },
    );

    // Step 2: the best `sourceId`'s sums in every hour of the window, all its classes included,
    // each read from that source's prefix sums of the hour in O(log n): however many samples the
    // hour holds, a window meets none of them one by one.
    let by_source = best
        .flat_map(|(key, (window, source))| {
            let (a, b) = key.bounds(window);
            buckets(a, b).map(|h| ((key.user_id, h), (source, key, window))).collect::<Vec<_>>()
        })
        .arrange_by_key_named("Impact: best source's hours per window");
    // From the same arrangement as the index: one value per (user, hour, metric) holding every
    // source's prefix sums, found by binary search.
    let source_hours = by_hour
        .reduce_abelian::<_, ValBuilder<_, _, _, _>, ValSpine<(Name, i64), SourceHours, Epoch, isize>, _, _>(
            "Impact: sources' prefix sums per hour",
            |(_, h): &(Name, i64), input: &[(&HourSpan, isize)], output: &mut Vec<(SourceHours, isize)>| {
                for (metric, spans) in runs(input, |(x, _)| x.metric) {
                    output.push((SourceHours::build(metric, *h, spans), 1));
                }
            },
            push_keyed,
        );
    by_source
        .join_core(source_hours, |(_, h), (source, key, window), hours| {
            let hour = hours.of(key.metric, *source)?;
            let (a, b) = key.bounds(*window);
            Some(((*key, *window), hour.window_sum(a, b, *h)?))
        })
        .explode(|(key, sum)| Some((key, sum)))
}

/// One hour bucket's CUMULATIVE samples of one metric as each `sourceId`'s [`SourceHour`] (§4 sums
/// a source over all its classes), sorted by the source's interned id (any fixed order serves a
/// lookup, and ids compare without reading the strings).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct SourceHours {
    pub metric: Metric,
    sources: Vec<(Name, SourceHour)>,
}

impl SourceHours {
    /// The prefix sums of every source of `input`, the samples of `metric` touching hour bucket
    /// `hour` with their multiplicities. Equal spans of one source (two classes, or two records)
    /// are one entry counted as often. O(n log n) for the hour's n samples of the metric.
    fn build<X: InHour>(metric: Metric, hour: i64, input: &[(&X, isize)]) -> Self {
        let h0 = hour * BUCKET_MS;
        let mut spans: Vec<(Name, Span, isize)> = input
            .iter()
            .map(|(x, w)| {
                let (start, end) = x.extent_from(h0);
                (x.stream().1, Span { start, end, value: x.value() }, *w)
            })
            .collect();
        spans.sort_unstable_by(|a, b| (a.0.id(), a.1).cmp(&(b.0.id(), b.1)));
        // Equal spans of one source: one entry, their multiplicities added.
        spans.dedup_by(|next, kept| {
            let equal = next.0 == kept.0 && next.1 == kept.1;
            if equal {
                kept.2 += next.2;
            }
            equal
        });
        spans.retain(|(_, _, w)| *w != 0);
        let sources = runs(&spans, |(source, _, _)| *source)
            .map(|(source, run)| {
                let group: Vec<(&Span, isize)> = run.iter().map(|(_, span, w)| (span, *w)).collect();
                (source, SourceHour::build(&group))
            })
            .collect();
        SourceHours { metric, sources }
    }

    /// The prefix sums of `source`'s samples of `metric`, if it has any in the hour.
    fn of(&self, metric: Metric, source: Name) -> Option<&SourceHour> {
        if metric != self.metric {
            return None;
        }
        let i = self.sources.binary_search_by_key(&source.id(), |(s, _)| s.id()).ok()?;
        Some(&self.sources[i].1)
    }
}

/// The kinds of block a session window meets (see [`impacts`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
enum Block {
    WholeHour,
    PartialHour,
}

/// One CUMULATIVE sample of one source as an hour bucket it touches keeps it: its extent
/// `[start, end)` in ms from the hour's start (an instantaneous sample as `[s, s + 1)`, the
/// instants where it counts; a sample spanning hours keeps its whole extent, so `start` may be
/// negative and `end` past the hour) and its value in the metric's canonical unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Span {
    pub start: i64,
    pub end: i64,
    pub value: OrdF64,
}

impl Span {
    /// Its value per ms (C1: a window takes `value · overlap / duration`), in [`SCALED`] fixed
    /// point: off by less than 2⁻¹⁶⁰ per ms, so `rate · overlap` is off by less than 2⁻¹³³ for any
    /// overlap the G-rules allow, and the parts of a share are exact to the 2⁻¹²⁸ a [`WindowSum`]
    /// keeps, whatever the sample's length. An instant's rate is never used: no instant `t` lies
    /// strictly inside `[s, s + 1)`.
    fn rate(&self) -> WindowSum {
        scaled_up(self.value.0).divided_by((self.end - self.start).unsigned_abs().max(1))
    }
}

/// The sums of [`SourceHour`] are kept 2³² times larger than the values they stand for (a
/// [`WindowSum`] holding `x · 2³²`), so that a rate's truncation (2⁻¹⁶⁰ per ms) times any
/// elapsed time the G-rules allow (under 2²⁷ ms) stays below the 2⁻¹²⁸ a `WindowSum` keeps:
/// unscaled, `value − rate · elapsed` (the part of a sample after `t`) was off by up to
/// 2⁻¹²⁸ · duration, 10⁻⁹ of a 1 ms share of a day-long sample of 10⁻¹⁴. Values up to 2⁹⁴ fit
/// (the G-bound is 10⁹; a store written before it may hold more), and larger ones saturate
/// there, as [`WindowSum::of`] saturates at 2¹²⁷.
const SCALED: u32 = 32;

/// `v · 2³²` as a [`WindowSum`] (`n = 0`), exactly (as [`WindowSum::of`]) for |v| < 2⁹⁴.
fn scaled_up(v: f64) -> WindowSum {
    const LIMIT: f64 = 19_807_040_628_566_084_398_385_987_584.0; // 2⁹⁴
    let x = WindowSum::of(v.clamp(-LIMIT, LIMIT));
    let units = (x.units << SCALED) | (x.fraction >> (128 - SCALED)) as i128;
    WindowSum { n: 0, units, fraction: x.fraction << SCALED }
}

/// `x / 2³²`, rounded toward −∞ at 2⁻¹²⁸ (`n` kept): the value a scaled sum stands for.
fn scaled_down(x: WindowSum) -> WindowSum {
    let fraction = (x.fraction >> SCALED) | ((x.units as u128) << (128 - SCALED));
    WindowSum { n: x.n, units: x.units >> SCALED, fraction }
}

/// One sample of a [`SourceHour`] with its multiplicity: 32 bytes. Its rate ([`Span::rate`]) is
/// computed where it is summed (once per entry when the hour is built, and for fewer than
/// [`PREFIX_EVERY`] entries per bound of a lookup), not stored: it would double the entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub span: Span,
    pub weight: i64,
}

/// Exact sums over samples, `weight` times each, in [`SCALED`] fixed point: the count
/// (`value.n`), the values, the rates and rate × start. Exact, so that a difference of two
/// prefixes is the exact sum over the samples between them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Moments {
    pub value: WindowSum,
    pub rate: WindowSum,
    pub rate_start: WindowSum,
}

impl Moments {
    fn of(entry: &Entry) -> Self {
        let weight = entry.weight as isize;
        let rate = entry.span.rate().multiply(&weight);
        Moments {
            value: WindowSum { n: entry.weight, ..scaled_up(entry.span.value.0).multiply(&weight) },
            rate,
            rate_start: rate.multiply(&(entry.span.start as isize)),
        }
    }

    fn add(&mut self, other: &Moments) {
        self.value.plus_equals(&other.value);
        self.rate.plus_equals(&other.rate);
        self.rate_start.plus_equals(&other.rate_start);
    }
}

/// `a − b`, exactly.
fn minus(mut a: WindowSum, b: &WindowSum) -> WindowSum {
    a.plus_equals(&b.multiply(&-1));
    a
}

/// Samples between two stored prefix sums of a [`SourceHour`] or a [`DiscreteHour`]: a lookup sums
/// fewer than this many samples one by one per bound, and the prefix sums take `3 · 48 / PREFIX_EVERY` bytes per
/// sample per order in a `SourceHour`, `48 / PREFIX_EVERY` in a `DiscreteHour` (none for an hour
/// of fewer samples).
const PREFIX_EVERY: usize = 16;

/// One source's CUMULATIVE samples of one metric touching one hour bucket, as prefix sums that
/// answer what any part `[a, b)` of the hour adds to a window in O(log n), however many samples
/// the hour holds (step 2 of [`impacts`]). With `F(t)` the samples' C1 shares of `(−∞, t)`,
///
/// `F(t) = Σ_{end ≤ t} value + t · Σ_{start < t < end} rate − Σ_{start < t < end} rate · start`,
///
/// the part of a window inside the hour adds `F(b) − F(a)`: the value of a sample it holds whole,
/// `rate · overlap` of one it cuts. Each straddling sum is a prefix by start minus a prefix by
/// end, in exact fixed point, so the only rounding is each sample's rate (2⁻¹⁶⁰ per ms); across
/// the hours of a window a spanning sample's parts telescope exactly. The whole hour's sum is
/// kept apart, so a window holding the hour reads it in O(1). Built anew, with every other
/// source's of the hour ([`SourceHours`]), when a sample of the user's hour changes (O(n log n)).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct SourceHour {
    /// The samples by start.
    by_start: Vec<Entry>,
    /// Indexes into `by_start`, by end.
    by_end: Vec<u32>,
    /// Sums over `by_start[..k · PREFIX_EVERY]`, k = 1, 2, … (an hour of fewer samples keeps none).
    start_prefixes: Vec<Moments>,
    /// Sums over the samples of `by_end[..k · PREFIX_EVERY]`, k = 1, 2, ….
    end_prefixes: Vec<Moments>,
    /// What the whole hour adds (`n`: every sample, as they all touch it).
    whole: WindowSum,
    /// The samples starting in the hour (what a window begun in an earlier hour counts here).
    starting_here: i64,
}

/// The stored sum over the first `k / PREFIX_EVERY · PREFIX_EVERY` samples of an order.
fn prefix<T: Copy + Default>(prefixes: &[T], k: usize) -> T {
    (k / PREFIX_EVERY).checked_sub(1).map_or_else(T::default, |i| prefixes[i])
}

impl SourceHour {
    /// The prefix sums of `input`, the samples by `Span` with their multiplicities.
    fn build(input: &[(&Span, isize)]) -> Self {
        let by_start: Vec<Entry> = input.iter().map(|(span, w)| Entry { span: **span, weight: *w as i64 }).collect();
        let mut by_end: Vec<u32> = (0..by_start.len() as u32).collect();
        by_end.sort_by_key(|i| (by_start[*i as usize].span.end, *i));
        // Each entry's moments once (its rate is a division), for both orders.
        let moments: Vec<Moments> = by_start.iter().map(Moments::of).collect();
        let prefixes = |order: &mut dyn Iterator<Item = &Moments>| {
            let mut out = Vec::new();
            let mut acc = Moments::default();
            for (i, m) in order.enumerate() {
                acc.add(m);
                if (i + 1) % PREFIX_EVERY == 0 {
                    out.push(acc);
                }
            }
            out
        };
        let start_prefixes = prefixes(&mut moments.iter());
        let end_prefixes = prefixes(&mut by_end.iter().map(|i| &moments[*i as usize]));
        let starting_here = by_start.iter().filter(|e| e.span.start >= 0).map(|e| e.weight).sum();
        let mut hour =
            SourceHour { by_start, by_end, start_prefixes, end_prefixes, whole: WindowSum::default(), starting_here };
        let (at_end, all, _) = hour.shares_before(BUCKET_MS);
        let (at_start, _, _) = hour.shares_before(0);
        hour.whole = WindowSum { n: all.value.n, ..scaled_down(minus(at_end, &at_start)) };
        hour
    }

    /// Sums over the samples starting before `t` (ms from the hour's start).
    fn starting_before(&self, t: i64) -> Moments {
        let k = self.by_start.partition_point(|e| e.span.start < t);
        let mut acc = prefix(&self.start_prefixes, k);
        for entry in &self.by_start[k / PREFIX_EVERY * PREFIX_EVERY..k] {
            acc.add(&Moments::of(entry));
        }
        acc
    }

    /// Sums over the samples ending by `t`.
    fn ending_by(&self, t: i64) -> Moments {
        let k = self.by_end.partition_point(|i| self.by_start[*i as usize].span.end <= t);
        let mut acc = prefix(&self.end_prefixes, k);
        for i in &self.by_end[k / PREFIX_EVERY * PREFIX_EVERY..k] {
            acc.add(&Moments::of(&self.by_start[*i as usize]));
        }
        acc
    }

    /// `F(t)` (see above, scaled), and the sums over the samples begun before `t` and ended by it.
    fn shares_before(&self, t: i64) -> (WindowSum, Moments, Moments) {
        let (starting, ending) = (self.starting_before(t), self.ending_by(t));
        let straddling = minus(starting.rate, &ending.rate).multiply(&(t as isize));
        let mut f = minus(ending.value, &minus(starting.rate_start, &ending.rate_start));
        f.plus_equals(&straddling);
        (f, starting, ending)
    }

    /// What these samples add to the window `[a, b)` (UTC ms) within hour bucket `hour` (§4):
    /// their C1 shares of the part of the window inside the hour, and as `n` the samples that
    /// overlap the window and are counted here, each in the first hour it shares with the window
    /// (the window's first hour for a sample begun before it, else its start hour). `None` when
    /// the window misses the hour or adds nothing here.
    fn window_sum(&self, a: i64, b: i64, hour: i64) -> Option<WindowSum> {
        let h0 = hour * BUCKET_MS;
        let (lo, hi) = (a.max(h0) - h0, b.min(h0 + BUCKET_MS) - h0);
        if lo >= hi {
            return None;
        }
        let first_hour = lo == a - h0;
        let sum = if lo == 0 && hi == BUCKET_MS {
            WindowSum { n: if first_hour { self.whole.n } else { self.starting_here }, ..self.whole }
        } else {
            let (at_hi, begun_hi, _) = self.shares_before(hi);
            let (at_lo, _, ended_lo) = self.shares_before(lo);
            // Overlapping `[lo, hi)`: begun before `hi` and not ended by `lo`. A later hour of the
            // window counts only the samples starting in it.
            let n = if first_hour {
                begun_hi.value.n - ended_lo.value.n
            } else {
                // Begun before the hour: every sample touching it but those starting in it.
                begun_hi.value.n - (self.whole.n - self.starting_here)
            };
            WindowSum { n, ..scaled_down(minus(at_hi, &at_lo)) }
        };
        (!sum.is_zero()).then_some(sum)
    }
}

/// A session's three windows for one metric from its per-window sums (§4): DISCRETE, the mean of
/// the samples starting in the window (null below `MIN_N`); CUMULATIVE, the best source's total
/// (every overlapping sample of that `sourceId`, whatever its class) per hour of window. `input`
/// holds only non-zero sums, by window. Also the deltas DURING − BEFORE and AFTER − BEFORE, from
/// the exact sums: with mean `T · k / d` (CUMULATIVE `d` the window's ms and `k` 3,600,000 ms per
/// hour; DISCRETE `d = n`, `k = 1`), `mean_w − mean_0 = (T_w · d_0 − T_0 · d_w) · k / (d_w · d_0)`,
/// whose numerator is exact in the fixed point.
fn window_means(key: &WindowKey, input: &[(&u8, WindowSum)]) -> ([Window; 3], [Option<OrdF64>; 2]) {
    let cumulative = key.metric.kind() == ValueKind::Cumulative;
    let mut out = [(None, 0); 3];
    // Per window with a mean: its exact total and the denominator `d` above.
    let mut exact: [Option<(WindowSum, i64)>; 3] = [None; 3];
    for (window, acc) in input {
        if acc.n <= 0 {
            continue;
        }
        let w = usize::from(**window);
        let (a, b) = key.bounds(**window);
        out[w] = if cumulative {
            let hours = (b - a) as f64 / 3_600_000.0;
            exact[w] = Some((*acc, b - a));
            (Some(OrdF64(acc.total_f64() / hours)), acc.n)
        } else {
            let mean = (acc.n >= MIN_N).then(|| OrdF64(acc.total_f64() / acc.n as f64));
            if mean.is_some() {
                exact[w] = Some((*acc, acc.n));
            }
            (mean, acc.n)
        };
    }
    let k = if cumulative { 3_600_000.0 } else { 1.0 };
    let delta = |w: usize| {
        let ((t_w, d_w), (t_0, d_0)) = (exact[w]?, exact[0]?);
        let mut numerator = t_w.multiply(&(d_0 as isize));
        numerator.plus_equals(&t_0.multiply(&(-d_w as isize)));
        Some(OrdF64(numerator.total_f64() * k / (d_w as f64 * d_0 as f64)))
    };
    (out, [delta(1), delta(2)])
}

/// In: current samples and sessions. Out: one row per `(user_id, session_id, metric)`.
pub fn session_impacts<'s>(impacts: VecCollection<'s, Epoch, Impact>) -> VecCollection<'s, Epoch, Row> {
    impacts.map(|i| {
        let [dd, da] = i.deltas();
        let before = i.windows[0].0.map(|m| m.0).filter(|b| *b != 0.0);
        let pct = |d: Option<f64>| Some(d? / before?);
        let mut row = vec![
            Datum::Str(i.user_id.to_string()),
            Datum::Str(i.session_id.to_string()),
            Datum::Str(i.metric.key().to_owned()),
            Datum::Str(i.product_id.to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use differential_dataflow::difference::Abelian;
    use vitalflow_schemas::split::share;

    #[test]
    fn an_hour_span_is_24_bytes_and_gives_its_sample_back_at_the_widest_offsets() {
        assert_eq!(std::mem::size_of::<HourSpan>(), 24);
        let source = Name::intern("watch");
        let day = 24 * BUCKET_MS;
        // A 24-hour sample (G3) seen from its first and its last hour, an instant, and a sample
        // before 1970 (negative instants).
        for (start_ms, end_ms) in
            [(1_700_000_000_123, 1_700_000_000_123 + day), (7 * BUCKET_MS + 5, 7 * BUCKET_MS + 5), (-day - 1, -1)]
        {
            let x =
                HourSample { metric: Metric::Steps, start_ms, end_ms, value: OrdF64(1.5), rank: 1, source_id: source };
            for h in x.hours() {
                assert_eq!(HourSpan::of(&x, h).sample(h), x, "hour {h}");
            }
        }
    }

    fn values() -> Vec<f64> {
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut out =
            vec![0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 1e-21, -3e-15, 1e9, -1e9, 1.0 / 3.0, 2f64.powi(-120), 7.25e18];
        for _ in 0..2000 {
            let mantissa = (next() % (1 << 53)) as f64 / (1u64 << 53) as f64;
            let exponent = (next() % 140) as i32 - 100;
            let sign = if next() % 2 == 0 { 1.0 } else { -1.0 };
            out.push(sign * mantissa * 2f64.powi(exponent));
        }
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, ..Default::default() })]

        /// An hour's index finds the best stream overlapping any part of the hour, as a scan of
        /// every sample does: instants on and off minute boundaries, samples within, across and
        /// spanning the hour, windows inside one minute, across minutes and past the hour.
        #[test]
        fn an_hour_index_finds_the_best_stream_a_scan_finds(
            samples in proptest::collection::vec((0..7u8, 0..4u8, 0..5_400_000i64, 0..5_400_000i64, 0..4u8), 1..40),
            windows in proptest::collection::vec((0..4_000_000i64, 0..4_000_000i64, 0..4u8, 0..4u8), 1..20),
        ) {
            let hour = 10i64;
            let h0 = hour * BUCKET_MS;
            let snap = |v: i64, how: u8| match how {
                0 => v - v.rem_euclid(MINUTE_MS),
                1 => v - v.rem_euclid(BUCKET_MS),
                2 => v - v.rem_euclid(MINUTE_MS) + MINUTE_MS - 1,
                _ => v,
            };
            let xs: Vec<HourSample> = samples
                .iter()
                .map(|(source, rank, start, len, how)| {
                    let start = snap(h0 - 900_000 + start, *how);
                    let end = if *len % 5 == 0 { start } else { snap(start + *len / 2, *how).max(start + 1) };
                    HourSample {
                        metric: Metric::Steps,
                        start_ms: start,
                        end_ms: end,
                        value: OrdF64(1.0),
                        rank: *rank,
                        source_id: Name::intern(&format!("s{source}")),
                    }
                })
                .filter(|x| x.hours().contains(&hour))
                .collect();
            proptest::prop_assume!(!xs.is_empty());
            let index = HourIndex::build(Metric::Steps, hour, xs.iter());
            // The dataflow builds it from the arrangement's spans: the same index.
            let spans: Vec<HourSpan> = xs.iter().map(|x| HourSpan::of(x, hour)).collect();
            proptest::prop_assert_eq!(&HourIndex::build(Metric::Steps, hour, spans.iter()), &index);
            let want_best = xs.iter().map(|x| (x.rank, x.source_id)).min();
            proptest::prop_assert_eq!(index.best().cloned(), want_best);
            for (a, len, how_a, how_b) in windows {
                let a = snap(h0 - 200_000 + a, how_a);
                let b = snap(a + len / (1 + i64::from(how_b) * 40), how_b).max(a);
                let (ca, cb) = (a.max(h0), b.min(h0 + BUCKET_MS));
                let want = xs
                    .iter()
                    .filter(|x| {
                        let (f, t) = x.extent();
                        ca < cb && f < cb && t > ca
                    })
                    .map(|x| (x.rank, x.source_id))
                    .min();
                proptest::prop_assert_eq!(index.best_in(a, b, hour).cloned(), want, "window [{}, {})", a - h0, b - h0);
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 1024, ..Default::default() })]

        /// A source's prefix sums, summed over the hours of a window, give what summing every
        /// sample's C1 share does (`n` exactly, the total to 1e-12 of the shares' magnitude):
        /// instants, samples within one hour, spanning hours and overlapping each other, equal
        /// samples counted twice, windows of 1 ms to five hours on and off the hour.
        #[test]
        fn prefix_sums_give_the_shares_a_scan_gives(
            samples in proptest::collection::vec((0..4u8, 0..4u8, 0..18_000_000i64, 0..4u8, -20.0..9.0f64, 1..3i64), 1..60),
            windows in proptest::collection::vec((0..18_000_000i64, 0..4u8, 0..6u8), 1..12),
        ) {
            let snap = |v: i64, how: u8| match how {
                0 => v - v.rem_euclid(MINUTE_MS),
                1 => v - v.rem_euclid(BUCKET_MS),
                _ => v,
            };
            let spans: Vec<(i64, i64, f64, i64)> = samples
                .iter()
                .map(|(how_s, how_e, start, len, value, weight)| {
                    let s = snap(start - 1_000_000, *how_s);
                    let e = match len {
                        0 => s,
                        1 => s + 1 + start % 7_000,
                        2 => snap(s + start % 9_000_000, *how_e).max(s + 1),
                        _ => s + 3_600_000 + start % 50_000_000,
                    };
                    // Magnitudes from 10⁻²⁰ to 10⁹ (the G-bound), both signs.
                    let v = 10f64.powf(*value) * if start % 3 == 0 { -1.0 } else { 1.0 };
                    (s, e, v, *weight)
                })
                .collect();
            let hours: std::collections::BTreeSet<i64> =
                spans.iter().flat_map(|(s, e, _, _)| buckets(*s, (*e).max(s + 1))).collect();
            let index: std::collections::BTreeMap<i64, SourceHour> = hours
                .iter()
                .map(|h| {
                    let mut input: Vec<(Span, isize)> = spans
                        .iter()
                        .filter(|(s, e, _, _)| buckets(*s, (*e).max(s + 1)).contains(h))
                        .map(|(s, e, v, w)| {
                            let e = (*e).max(s + 1);
                            (Span { start: s - h * BUCKET_MS, end: e - h * BUCKET_MS, value: OrdF64(*v) }, *w as isize)
                        })
                        .collect();
                    input.sort();
                    let refs: Vec<(&Span, isize)> = input.iter().map(|(x, w)| (x, *w)).collect();
                    (*h, SourceHour::build(&refs))
                })
                .collect();
            for (a, how, len) in windows {
                let a = snap(a - 1_000_000, how);
                let b = a + [1, 999, 60_000, 3_600_000, 7_200_000, 18_000_001][usize::from(len)];
                let (mut want, mut want_n, mut magnitude) = (0.0, 0, 0.0);
                for (s, e, v, w) in &spans {
                    let overlaps = if e > s { *s < b && *e > a } else { a <= *s && *s < b };
                    if overlaps {
                        let add = share(*s, *e, *v, a, b) * *w as f64;
                        want += add;
                        magnitude += add.abs();
                        want_n += w;
                    }
                }
                let mut got = WindowSum::default();
                for h in buckets(a, b) {
                    if let Some(sum) = index.get(&h).and_then(|x| x.window_sum(a, b, h)) {
                        got.plus_equals(&sum);
                    }
                }
                proptest::prop_assert_eq!(got.n, want_n, "n of [{}, {})", a, b);
                // The shares' own f64 rounding is 1e-16 of each; the fixed point keeps 2⁻¹²⁸.
                proptest::prop_assert!(
                    (got.total_f64() - want).abs() <= 1e-13 * magnitude + 1e-37,
                    "sum of [{}, {}): {} vs {}", a, b, got.total_f64(), want
                );
            }
        }
    }

    proptest::proptest! {
        /// A window's DISCRETE sum assembled from hours' totals and prefix differences is exactly
        /// the sum of the readings starting in it, taken one by one: readings on and off the
        /// minute and the hour, several metrics in one hour, equal readings counted twice, hours
        /// of fewer and of more than `PREFIX_EVERY` readings, windows of 1 ms to five hours.
        #[test]
        fn discrete_prefix_sums_give_the_sum_a_scan_gives(
            readings in proptest::collection::vec((0..4u8, 0..10_800_000i64, 0..2u8, -20.0..9.0f64, 1..3i64), 1..120),
            windows in proptest::collection::vec((0..10_800_000i64, 0..4u8, 0..6u8), 1..12),
        ) {
            let snap = |v: i64, how: u8| match how {
                0 => v - v.rem_euclid(MINUTE_MS),
                1 => v - v.rem_euclid(BUCKET_MS),
                // The hour's last millisecond.
                2 => v - v.rem_euclid(BUCKET_MS) + BUCKET_MS - 1,
                _ => v,
            };
            let metrics = [Metric::HeartRate, Metric::RestingHeartRate];
            let readings: Vec<(i64, Metric, f64, i64)> = readings
                .iter()
                .map(|(how, start, metric, value, weight)| {
                    let v = 10f64.powf(*value) * if start % 3 == 0 { -1.0 } else { 1.0 };
                    (snap(*start, *how), metrics[usize::from(*metric)], v, *weight)
                })
                .collect();
            // As the arrangement feeds the reduce: per hour, sorted, equal readings consolidated.
            let mut by_hour: std::collections::BTreeMap<i64, std::collections::BTreeMap<DiscreteReading, isize>> =
                Default::default();
            for (t, metric, v, w) in &readings {
                let h = t.div_euclid(BUCKET_MS);
                let x = DiscreteReading { metric: *metric, offset: (t - h * BUCKET_MS) as u32, value: OrdF64(*v) };
                *by_hour.entry(h).or_default().entry(x).or_default() += *w as isize;
            }
            let hours: Vec<(i64, DiscreteHour)> = by_hour
                .iter()
                .flat_map(|(h, input)| {
                    metrics.iter().filter_map(move |m| {
                        let mine: Vec<(&DiscreteReading, isize)> =
                            input.iter().filter(|(x, _)| x.metric == *m).map(|(x, w)| (x, *w)).collect();
                        (!mine.is_empty()).then(|| (*h, DiscreteHour::build(*m, &mine)))
                    })
                })
                .collect();
            for (a, how, len) in windows {
                let a = snap(a - 1_000_000, how);
                let b = a + [1, 999, 60_000, 3_600_000, 7_200_000, 18_000_001][usize::from(len)];
                for m in metrics {
                    let mut want = WindowSum::default();
                    for (t, metric, v, w) in &readings {
                        if *metric == m && a <= *t && *t < b {
                            want.plus_equals(&WindowSum::of(*v).multiply(&(*w as isize)));
                        }
                    }
                    let mut got = WindowSum::default();
                    for (h, hour) in hours.iter().filter(|(_, x)| x.metric == m) {
                        if let Some(sum) = hour.window_sum(a, b, *h) {
                            got.plus_equals(&sum);
                        }
                    }
                    proptest::prop_assert_eq!(got, want, "{:?} over [{}, {})", m, a, b);
                }
            }
        }
    }

    /// A 1 ms share of a day-long sample of 10⁻¹⁴ keeps its digits (a break attempt found the
    /// rate's truncation at 2⁻¹²⁸ per ms off by 2·10⁻⁹ of it, enough to break G4 on a percentage).
    #[test]
    fn a_tiny_share_of_a_long_sample_keeps_its_digits() {
        for v in [1e-14, 1e-15, 1e-20, 3.3e-7, 1e9] {
            let hour = 24i64;
            let h0 = hour * BUCKET_MS;
            // Ends 1 ms into the hour; began 24 h before.
            let span = Span { start: 1 - 86_400_000, end: 1, value: OrdF64(v) };
            let index = SourceHour::build(&[(&span, 1)]);
            let got = index.window_sum(h0, h0 + 600_000, hour).map(|x| x.total_f64()).unwrap_or(f64::NAN);
            let want = v / 86_400_000.0;
            // A `WindowSum` keeps 2⁻¹²⁸ (1e-20 gives a share of 1e-28: 35 bits).
            assert!((got - want).abs() <= 1e-15 * want + 2f64.powi(-124), "{v:e}: {got:e} vs {want:e}");
            // The rest of the day telescopes to the value: hour by hour, exactly.
            let mut total = WindowSum::default();
            for h in hour - 24..=hour {
                let span =
                    Span { start: span.start + (hour - h) * BUCKET_MS, end: span.end + (hour - h) * BUCKET_MS, ..span };
                if let Some(x) = SourceHour::build(&[(&span, 1)]).window_sum(h0 - 86_400_000, h0 + 1, h) {
                    total.plus_equals(&x);
                }
            }
            assert_eq!((total.n, total.total_f64()), (1, v), "{v:e}");
        }
    }

    /// A value beyond the G-bound, as a store written before the bound may hold, keeps its
    /// shares (a break attempt found 10¹⁹ wrapping to a negative mean under a 2⁶⁴ scale).
    #[test]
    fn a_value_beyond_the_g_bound_keeps_its_shares() {
        for v in [1e19, 9.3e18, -4e27, 1e9] {
            let hour = 4i64;
            // Two hours from the hour's start; the window holds its first half hour.
            let span = Span { start: 0, end: 2 * BUCKET_MS, value: OrdF64(v) };
            let h0 = hour * BUCKET_MS;
            let mut got = WindowSum::default();
            for (h, span) in
                [(hour, span), (hour + 1, Span { start: span.start - BUCKET_MS, end: span.end - BUCKET_MS, ..span })]
            {
                if let Some(x) = SourceHour::build(&[(&span, 1)]).window_sum(h0, h0 + 1_800_000, h) {
                    got.plus_equals(&x);
                }
            }
            assert_eq!((got.n, got.total_f64()), (1, v / 4.0), "{v:e}");
        }
    }

    /// A window of two partly covered minutes holds no whole minute: a run of minutes with one
    /// best stream does not count as overlapping it (found by a break attempt).
    #[test]
    fn a_window_across_one_minute_boundary_sees_only_what_overlaps_it() {
        let hour = 10i64;
        let h0 = hour * BUCKET_MS;
        let sample = |source: &str, rank: u8, a: i64, b: i64| HourSample {
            metric: Metric::Steps,
            start_ms: h0 + a,
            end_ms: h0 + b,
            value: OrdF64(1.0),
            rank,
            source_id: Name::intern(source),
        };
        let xs = [
            sample("a-manual", 0, 10_000, 20_000),
            sample("a-manual", 0, 90_000, 100_000),
            sample("b-phone", 3, -1_800_000, 1_800_000),
        ];
        let index = HourIndex::build(Metric::Steps, hour, xs.iter());
        assert_eq!(index.best_in(h0 + 40_000, h0 + 80_000, hour), Some(&(3, Name::intern("b-phone"))));
        assert_eq!(index.best_in(h0 + 15_000, h0 + 80_000, hour), Some(&(0, Name::intern("a-manual"))));
    }

    proptest::proptest! {
        /// Every source's prefix sums inside an hour's `SourceHours` answer any window as that
        /// source's samples alone, consolidated, give (the arrangement by source it replaced):
        /// interleaved sources of more than `PREFIX_EVERY` samples each, equal spans in two
        /// classes, samples spanning the hour.
        #[test]
        fn source_hours_answer_as_each_source_alone(
            samples in proptest::collection::vec((0..3u8, 0..4u8, -30..60i64, 0..3u8, 1..4u8), 1..150),
            windows in proptest::collection::vec((-600_000..4_200_000i64, 0..5u8), 1..10),
        ) {
            let hour = 7i64;
            let h0 = hour * BUCKET_MS;
            let sources = ["ring", "a-watch", "phone"];
            let xs: Vec<HourSample> = samples
                .iter()
                .map(|(source, rank, start, len, v)| HourSample {
                    metric: Metric::Steps,
                    // On a minute grid with few values, so that equal spans recur across classes.
                    start_ms: h0 + start * 60_000,
                    end_ms: h0 + start * 60_000 + [0, 60_000, 5_400_000][usize::from(*len)],
                    value: OrdF64(f64::from(*v)),
                    rank: *rank,
                    source_id: Name::intern(sources[usize::from(*source)]),
                })
                .filter(|x| x.hours().contains(&hour))
                .collect();
            let mut counted: std::collections::BTreeMap<HourSample, isize> = Default::default();
            for x in &xs {
                *counted.entry(*x).or_default() += 1;
            }
            let input: Vec<(&HourSample, isize)> = counted.iter().map(|(x, w)| (x, *w)).collect();
            let hours = SourceHours::build(Metric::Steps, hour, &input);
            // The dataflow builds it from the arrangement's spans: the same prefix sums.
            let spans: Vec<(HourSpan, isize)> = input.iter().map(|(x, w)| (HourSpan::of(x, hour), *w)).collect();
            let spans: Vec<(&HourSpan, isize)> = spans.iter().map(|(x, w)| (x, *w)).collect();
            proptest::prop_assert_eq!(&SourceHours::build(Metric::Steps, hour, &spans), &hours);
            for source in sources.map(Name::intern) {
                let mut spans: std::collections::BTreeMap<Span, isize> = Default::default();
                for x in xs.iter().filter(|x| x.source_id == source) {
                    let (from, to) = x.extent();
                    *spans.entry(Span { start: from - h0, end: to - h0, value: x.value }).or_default() += 1;
                }
                let refs: Vec<(&Span, isize)> = spans.iter().map(|(x, w)| (x, *w)).collect();
                let alone = (!refs.is_empty()).then(|| SourceHour::build(&refs));
                let found = hours.of(Metric::Steps, source);
                proptest::prop_assert_eq!(found, alone.as_ref());
                for (a, len) in &windows {
                    let b = a + [1, 59_999, 600_000, 3_600_000, 7_200_000][usize::from(*len)];
                    proptest::prop_assert_eq!(
                        found.and_then(|x| x.window_sum(*a + h0, b + h0, hour)),
                        alone.as_ref().and_then(|x| x.window_sum(*a + h0, b + h0, hour))
                    );
                }
            }
        }
    }

    /// An hour's `SourceHours` hold each source's samples, every class of it, as the prefix sums
    /// that source's samples alone give; equal spans of two classes of one source count twice.
    #[test]
    fn source_hours_keep_each_source_apart_and_its_classes_together() {
        let hour = 10i64;
        let h0 = hour * BUCKET_MS;
        let sample = |source: &str, rank: u8, a: i64, b: i64, v: f64| HourSample {
            metric: Metric::Steps,
            start_ms: h0 + a,
            end_ms: h0 + b,
            value: OrdF64(v),
            rank,
            source_id: Name::intern(source),
        };
        let mut xs = vec![
            (sample("z-watch", 1, 0, 600_000, 100.0), 1),
            (sample("z-watch", 3, 0, 600_000, 100.0), 1),
            (sample("a-phone", 3, -1_800_000, 1_800_000, 50.0), 1),
            (sample("a-phone", 3, 1_000_000, 1_000_000, 7.0), 2),
            (sample("m-scale", 0, 30_000, 90_000, 3.0), 1),
        ];
        xs.sort();
        let input: Vec<(&HourSample, isize)> = xs.iter().map(|(x, w)| (x, *w)).collect();
        let hours = SourceHours::build(Metric::Steps, hour, &input);
        let whole = |source: &str| hours.of(Metric::Steps, Name::intern(source)).map(|s| s.whole.total_f64());
        // z-watch: one span in two classes, counted twice; a-phone: half of 50 in this hour, and 7 twice.
        assert_eq!(whole("z-watch"), Some(200.0));
        assert_eq!(whole("a-phone"), Some(25.0 + 14.0));
        assert_eq!(whole("m-scale"), Some(3.0));
        assert_eq!(whole("b-none"), None);
        assert!(hours.of(Metric::Distance, Name::intern("z-watch")).is_none());
        let z = hours.of(Metric::Steps, Name::intern("z-watch")).expect("z-watch");
        assert_eq!(z.window_sum(h0, h0 + 300_000, hour).map(|s| s.n), Some(2));
    }

    #[test]
    fn a_window_sum_holds_any_value_exactly() {
        for v in values() {
            let got = WindowSum::of(v).total_f64();
            if v.abs() >= 2f64.powi(-75) {
                assert_eq!(got, v, "{v:e}");
            } else {
                // Below 2⁻⁷⁵ the mantissa reaches under 2⁻¹²⁸: off by less than 2⁻¹²⁸.
                assert!((got - v).abs() <= 2f64.powi(-128), "{v:e}: {got:e}");
            }
        }
    }

    /// The total is rounded once: the sum of two exactly held values is IEEE's `a + b`.
    #[test]
    fn a_window_sum_total_is_correctly_rounded() {
        let xs: Vec<f64> = values().into_iter().filter(|v| *v == 0.0 || v.abs() >= 2f64.powi(-75)).collect();
        let mut checked = 0;
        for (i, a) in xs.iter().enumerate() {
            for b in xs.iter().skip(i % 7).step_by(13) {
                let mut sum = WindowSum::of(*a);
                sum.plus_equals(&WindowSum::of(*b));
                assert_eq!(sum.total_f64(), a + b, "{a:e} + {b:e}");
                checked += 1;
            }
        }
        let third = WindowSum::of(5.0).divided_by(3);
        assert_eq!(third.total_f64(), 5.0 / 3.0);
        assert!(checked > 10_000, "{checked}");
    }

    #[test]
    fn window_sums_add_and_retract_exactly() {
        let xs = values();
        let mut acc = WindowSum::default();
        for x in &xs {
            acc.plus_equals(&WindowSum::of(*x));
        }
        // The exact sum is independent of the order; retracting every value leaves exactly zero.
        let mut reversed = WindowSum::default();
        for x in xs.iter().rev() {
            reversed.plus_equals(&WindowSum::of(*x));
        }
        assert_eq!(acc, reversed);
        for x in &xs {
            acc.plus_equals(&WindowSum::of(*x).multiply(&-1));
        }
        assert!(acc.is_zero(), "{acc:?}");
        // Tiny values keep their relative precision.
        let mut tiny = WindowSum::of(1e-21);
        tiny.plus_equals(&WindowSum::of(2e-21));
        assert!((tiny.total_f64() - 3e-21).abs() <= 1e-15 * 3e-21, "{}", tiny.total_f64());
    }

    #[test]
    fn dividing_a_window_sum_truncates_at_its_last_bit() {
        for v in values().into_iter().step_by(7) {
            for d in [1u64, 3, 7, 1_000, 60_000, 3_600_000, 86_400_000, 90_061_001, u64::MAX >> 1] {
                let q = WindowSum::of(v).divided_by(d);
                // q · d is within d units of 2⁻¹²⁸ of v, below it in magnitude.
                let back = q.multiply(&(d as isize));
                let (gap_units, gap_fraction) = {
                    let mut gap = WindowSum::of(v);
                    gap.plus_equals(&back.multiply(&-1));
                    (gap.units, gap.fraction)
                };
                let toward_zero =
                    if v >= 0.0 { gap_units == 0 } else { gap_units == -1 || (gap_units, gap_fraction) == (0, 0) };
                assert!(toward_zero, "{v:e} / {d}: gap {gap_units} {gap_fraction}");
                let gap = if v >= 0.0 { gap_fraction } else { gap_fraction.wrapping_neg() };
                assert!(gap < u128::from(d), "{v:e} / {d}: gap {gap}");
                let want = v / d as f64;
                assert!(
                    (q.total_f64() - want).abs() <= 2.0 * f64::EPSILON * want.abs() + 2f64.powi(-127),
                    "{v:e} / {d}"
                );
            }
        }
    }

    #[test]
    fn multiplying_a_window_sum_is_repeated_addition() {
        for v in values().into_iter().step_by(37) {
            let one = WindowSum::of(v);
            for r in -4isize..=4 {
                let mut want = WindowSum::default();
                for _ in 0..r.unsigned_abs() {
                    want.plus_equals(&one);
                }
                if r < 0 {
                    want.negate();
                }
                assert_eq!(one.multiply(&r), want, "{v:e} × {r}");
                assert_eq!(r.multiply(&one), want);
            }
        }
    }
}
