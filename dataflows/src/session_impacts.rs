//! `session_impacts`: per (session, metric), the metric before, during and after a consumption
//! session, and the deltas (DOMAIN.md §4).

use differential_dataflow::VecCollection;
use differential_dataflow::difference::{Abelian, IsZero, Monoid, Multiply, Semigroup};
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
/// another session `o` overlaps `[s − B, s)`; `o` is its interval `[startAt, endAt)`, the point of
/// its start while open or when `endAt == startAt`, and nothing when `endAt < startAt` (an empty
/// interval). That holds exactly when `o` starts before `s` and its end (a point's start + 1) passes `s − B`, so
/// one sort and a running maximum of ends answer it for all sessions: O(n log n), not every pair
/// (a user with 10,000 sessions cost ~1 s of worker time per change).
pub fn contamination_flags(mut live: Vec<&Session>) -> Vec<(String, bool)> {
    live.sort_by_key(|s| s.start_ms);
    let reach = |o: &Session| match o.end_ms {
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

/// What one source adds to one session window, carried in the difference type (issue 13 §4, ADR
/// 0007): `n` samples that count (CUMULATIVE: overlap the window; DISCRETE: start in it) and their
/// summed contribution (CUMULATIVE: C1 shares of the window; DISCRETE: values) as an exact 256-bit
/// fixed-point number, `units + fraction · 2⁻¹²⁸` in two's complement. Every finite `f64` from
/// 2⁻⁷⁵ to 2¹²⁷ in magnitude converts exactly (its 53 bits fit; a smaller one is off by less than
/// 2⁻¹²⁸, so 10⁻²⁵ keeps 14 digits), and sums and retractions are exact: a
/// window's total after any sequence of edits equals the total computed afresh, bit for bit, and
/// one rounding happens, when the total is read. Differential adds these as it adds counts, so a
/// sample change costs one update per session whose windows it falls in, never a rescan of the
/// window's samples. Arithmetic wraps, an exact abelian group (the range, ±1.7·10³⁸ units, is far
/// beyond any sum of values within the G-bounds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct WindowSum {
    pub n: i64,
    /// The integer part (floor) of the total, in the metric's canonical unit.
    pub units: i128,
    /// The fractional part of the total, in units of 2⁻¹²⁸.
    pub fraction: u128,
}

impl WindowSum {
    /// One sample contributing `value` (canonical unit). Non-finite values never reach here
    /// (G-validation); they would count as 0, and magnitudes beyond 2¹²⁷ saturate.
    pub fn of(value: f64) -> Self {
        let (units, fraction) = fixed_of(value);
        WindowSum { n: 1, units, fraction }
    }

    /// The total in the metric's canonical unit: the exact sum, rounded once or twice.
    pub fn total_f64(&self) -> f64 {
        const TWO_POW_128: f64 = 340_282_366_920_938_463_463_374_607_431_768_211_456.0;
        let (negative, (units, fraction)) = if self.units < 0 {
            (true, negate(self.units, self.fraction))
        } else {
            (false, (self.units, self.fraction))
        };
        let magnitude = units as f64 + fraction as f64 / TWO_POW_128;
        if negative { -magnitude } else { magnitude }
    }
}

/// `v` as `(units, fraction)` of [`WindowSum`]: exactly for `2⁻⁷⁵ ≤ |v| < 2¹²⁷`, below that off by
/// less than 2⁻¹²⁸ (the bits under 2⁻¹²⁸ are dropped).
fn fixed_of(v: f64) -> (i128, u128) {
    if !v.is_finite() || v == 0.0 {
        return (0, 0);
    }
    let bits = v.to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as i32;
    let mantissa = bits & ((1u64 << 52) - 1);
    // |v| = m · 2^k.
    let (m, k) = if exponent == 0 { (mantissa, -1074) } else { (mantissa | (1u64 << 52), exponent - 1075) };
    let m = u128::from(m);
    let (units, fraction) = if k >= 0 {
        if k >= 75 { (i128::MAX, 0) } else { ((m << k) as i128, 0) }
    } else {
        let s = k.unsigned_abs();
        if s >= 128 {
            // No integer part; the bits below 2⁻¹²⁸ are dropped.
            (0, if s - 128 >= 128 { 0 } else { m >> (s - 128) })
        } else {
            // m < 2⁵³, so the fraction bits (fewer than 2^min(s, 53)) shifted to 2⁻¹²⁸ fit.
            ((m >> s) as i128, (m & ((1u128 << s) - 1)) << (128 - s))
        }
    };
    if bits >> 63 == 1 { negate(units, fraction) } else { (units, fraction) }
}

/// Two's-complement negation of `units · 2¹²⁸ + fraction`.
fn negate(units: i128, fraction: u128) -> (i128, u128) {
    let fraction = (!fraction).wrapping_add(1);
    (if fraction == 0 { units.wrapping_neg() } else { !units }, fraction)
}

impl IsZero for WindowSum {
    fn is_zero(&self) -> bool {
        self.n == 0 && self.units == 0 && self.fraction == 0
    }
}
impl Semigroup for WindowSum {
    fn plus_equals(&mut self, rhs: &Self) {
        let (fraction, carry) = self.fraction.overflowing_add(rhs.fraction);
        self.n = self.n.wrapping_add(rhs.n);
        self.units = self.units.wrapping_add(rhs.units).wrapping_add(i128::from(carry));
        self.fraction = fraction;
    }
}
impl Monoid for WindowSum {
    fn zero() -> Self {
        WindowSum::default()
    }
}
impl Abelian for WindowSum {
    fn negate(&mut self) {
        self.n = self.n.wrapping_neg();
        (self.units, self.fraction) = negate(self.units, self.fraction);
    }
}
impl Multiply<isize> for WindowSum {
    type Output = WindowSum;
    fn multiply(self, rhs: &isize) -> WindowSum {
        // units · 2¹²⁸ + fraction, times |r|: the fraction's product carries into the units.
        let r = rhs.unsigned_abs() as u128;
        let (low, high) = (self.fraction & u128::from(u64::MAX), self.fraction >> 64);
        let (a, b) = (low * r, high * r);
        let (fraction, carried) = a.overflowing_add(b << 64);
        let carry = (b >> 64) + u128::from(carried);
        let units = self.units.wrapping_mul(r as i128).wrapping_add(carry as i128);
        let mut out = WindowSum { n: self.n.wrapping_mul(r as i64), units, fraction };
        if *rhs < 0 {
            out.negate();
        }
        out
    }
}

impl Multiply<WindowSum> for isize {
    type Output = WindowSum;
    fn multiply(self, rhs: &WindowSum) -> WindowSum {
        rhs.multiply(&self)
    }
}

/// A session as the hours its windows cover see it: its bounds (UTC ms; `end_ms` is the end of an
/// eligible, closed session).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct SessionSpan {
    pub session_id: String,
    pub start_ms: i64,
    pub end_ms: i64,
}

impl SessionSpan {
    /// The first hour bucket of `[start − B, end + A)`.
    fn first_hour(&self) -> i64 {
        (self.start_ms - BEFORE_MS).div_euclid(BUCKET_MS)
    }
}

/// BEFORE `[s − B, s)`, DURING `[s, e)` and AFTER `[e, e + A)` of the session `[s, e)`.
fn windows_of(s: i64, e: i64) -> [(i64, i64); 3] {
    [(s - BEFORE_MS, s), (s, e), (e, e + AFTER_MS)]
}

/// One window of one session, as a block of time it meets is keyed under.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
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

/// How one window `[a, b)` meets the aligned hour and minute blocks (UTC): the hours it holds
/// whole, the hours it only partly covers, and the minutes it only partly covers (at most two,
/// inside the partly covered hours). The minutes it holds whole inside a partly covered hour are
/// found from the hour's minute sums.
struct Blocks {
    whole_hours: std::ops::Range<i64>,
    partial_hours: Vec<i64>,
    partial_minutes: Vec<i64>,
}

fn blocks(a: i64, b: i64) -> Blocks {
    if b <= a {
        return Blocks { whole_hours: 0..0, partial_hours: Vec::new(), partial_minutes: Vec::new() };
    }
    let whole = |size: i64, k: i64| a <= k * size && (k + 1) * size <= b;
    let touched = |size: i64| a.div_euclid(size)..=(b - 1).div_euclid(size);
    let whole_hours = (-(-a).div_euclid(BUCKET_MS))..b.div_euclid(BUCKET_MS);
    let partial_hours = touched(BUCKET_MS).filter(|h| !whole(BUCKET_MS, *h)).collect();
    let (first, last) = (a.div_euclid(MINUTE_MS), (b - 1).div_euclid(MINUTE_MS));
    let mut partial_minutes: Vec<i64> = [first, last].into_iter().filter(|m| !whole(MINUTE_MS, *m)).collect();
    partial_minutes.dedup();
    Blocks { whole_hours, partial_hours, partial_minutes }
}

/// Minute blocks inside hour buckets.
const MINUTE_MS: i64 = 60_000;

/// The smallest aligned block that holds a sample whole, which decides how sessions meet it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    /// Inside one minute (every DISCRETE sample, which counts where it starts, and every
    /// instantaneous one): in its minute's and its hour's sums, and met one by one in the minutes
    /// a window only partly covers.
    Minute,
    /// Inside one hour: in its hour's sums, and met one by one in the hours a window only partly
    /// covers.
    Hour,
    /// Across hours: met one by one in every hour it touches.
    Spanning,
}

/// What a session window needs of one sample: metric, `[start_ms, end_ms)` (UTC ms), value, source
/// rank and `sourceId` (§1.5). Equal samples of different `sourceRecordId`s are one record with
/// multiplicity 2, as they count twice.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct HourSample {
    pub metric: Metric,
    pub start_ms: i64,
    pub end_ms: i64,
    pub value: OrdF64,
    pub rank: u8,
    pub source_id: String,
}

impl HourSample {
    /// The first hour bucket the sample touches.
    fn first_hour(&self) -> i64 {
        self.start_ms.div_euclid(BUCKET_MS)
    }

    /// The instants that decide where the sample counts, as `[from, to)`: its start alone for a
    /// DISCRETE or instantaneous sample, its interval for a CUMULATIVE one.
    fn extent(&self) -> (i64, i64) {
        if self.metric.kind() == ValueKind::Cumulative && self.end_ms > self.start_ms {
            (self.start_ms, self.end_ms)
        } else {
            (self.start_ms, self.start_ms + 1)
        }
    }

    fn held(&self) -> Held {
        let (from, to) = self.extent();
        if from.div_euclid(MINUTE_MS) == (to - 1).div_euclid(MINUTE_MS) {
            Held::Minute
        } else if from.div_euclid(BUCKET_MS) == (to - 1).div_euclid(BUCKET_MS) {
            Held::Hour
        } else {
            Held::Spanning
        }
    }

    /// The (rank, source) the sample's sums are kept under: CUMULATIVE by source (§1.5), DISCRETE
    /// pooled (rank 0, no source).
    fn source(&self, window: u8) -> WindowSource {
        if self.metric.kind() == ValueKind::Cumulative {
            WindowSource { window, rank: self.rank, source: self.source_id.clone() }
        } else {
            WindowSource { window, rank: 0, source: String::new() }
        }
    }

    fn hour_source(&self) -> HourSource {
        let WindowSource { rank, source, .. } = self.source(0);
        HourSource { metric: self.metric, rank, source }
    }
}

/// The key of an hour's sums: a metric and a source, as [`HourSample::source`] keeps them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct HourSource {
    pub metric: Metric,
    pub rank: u8,
    pub source: String,
}

/// The key of a minute's sums inside its hour: the minute (since the Unix epoch) and the source.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct MinuteSource {
    pub minute: i64,
    pub source: HourSource,
}

/// The reduce key of one (session, metric): the session's bounds travel with it, as the
/// CUMULATIVE rate divides by the window's length.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct WindowKey {
    pub user_id: String,
    pub session_id: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub metric: Metric,
}

impl WindowKey {
    fn new(user_id: &str, s: &SessionSpan, metric: Metric) -> Self {
        WindowKey {
            user_id: user_id.to_owned(),
            session_id: s.session_id.clone(),
            start_ms: s.start_ms,
            end_ms: s.end_ms,
            metric,
        }
    }
}

/// Which window (0 BEFORE, 1 DURING, 2 AFTER) and which source a [`WindowSum`] belongs to.
/// DISCRETE metrics pool every source: rank 0, empty `source`. Ordered so that a window's best
/// CUMULATIVE source (smallest rank, then smallest `sourceId`) comes first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct WindowSource {
    pub window: u8,
    pub rank: u8,
    pub source: String,
}

/// In: current samples and sessions. Out: one [`Impact`] per (session, metric) with at least one
/// window holding a sample.
///
/// Window sums are built from aligned blocks, as a two-level segment tree would: each window
/// takes the per-source [`WindowSum`] of every hour it holds whole, of every minute it holds whole
/// inside the (at most two) hours it only partly covers, and meets one by one only the samples of
/// the (at most two) minutes it partly covers, the samples held by a partly covered hour but no
/// minute, and the samples spanning hours (those in every hour they touch, a pair counted once, in
/// the first hour both touch). A reduce per (session, metric) then reads a handful of
/// per-(window, source) sums. A sample change costs one update per session whose windows cover
/// it, whatever the number of samples near it; a new session costs O(hours + 60 · partial hours)
/// sums plus the samples of its partial minutes; memory holds samples, sessions and sums, never
/// sessions × samples.
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

    let spans = eligible.clone().map(|s| {
        let e = s.end_ms.unwrap_or(s.start_ms);
        (s.user_id, SessionSpan { session_id: s.session_id, start_ms: s.start_ms, end_ms: e })
    });
    // Per window, the blocks it meets; `Block` tells the three kinds apart.
    let session_blocks = spans.clone().flat_map(|(user, span)| {
        let mut out = Vec::new();
        for (w, (a, b)) in (0u8..).zip(windows_of(span.start_ms, span.end_ms)) {
            let sw = SessionWindow { span: span.clone(), window: w };
            let Blocks { whole_hours, partial_hours, partial_minutes } = blocks(a, b);
            out.extend(whole_hours.map(|h| (Block::WholeHour, (user.clone(), h), sw.clone())));
            out.extend(partial_hours.into_iter().map(|h| (Block::PartialHour, (user.clone(), h), sw.clone())));
            out.extend(partial_minutes.into_iter().map(|m| (Block::PartialMinute, (user.clone(), m), sw.clone())));
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
    let partial_minutes = of_kind(Block::PartialMinute, "Impact: session windows by partial minute");
    let all_hours = spans
        .flat_map(|(user, span)| {
            buckets(span.start_ms - BEFORE_MS, span.end_ms + AFTER_MS)
                .map(|h| ((user.clone(), h), span.clone()))
                .collect::<Vec<_>>()
        })
        .arrange_by_key_named("Impact: sessions by hour");

    let lite = samples.clone().flat_map_ref(|user, x| {
        let value = x.value.filter(|_| has_impact(x.metric))?;
        let lite = HourSample {
            metric: x.metric,
            start_ms: x.start_ms,
            end_ms: x.end_ms,
            value,
            rank: x.source_class.rank(),
            source_id: x.source_id.clone(),
        };
        Some((user.clone(), lite))
    });
    let held = |level: Held| lite.clone().filter(move |(_, x)| x.held() == level);
    let in_minute = held(Held::Minute);
    let in_hour = held(Held::Hour);
    // Per (user, hour, metric, source): the samples held by the hour, summed in the diff.
    let hour_sums = in_minute
        .clone()
        .concat(in_hour.clone())
        .explode(|(user, x)| Some((((user, x.first_hour()), x.hour_source()), WindowSum::of(x.value.0))))
        .arrange_by_key_named("Impact: hour sums");
    // Per (user, hour, minute, metric, source): the samples held by the minute, summed in the diff.
    let minute_sums = in_minute
        .clone()
        .explode(|(user, x)| {
            let source = MinuteSource { minute: x.start_ms.div_euclid(MINUTE_MS), source: x.hour_source() };
            Some((((user, x.first_hour()), source), WindowSum::of(x.value.0)))
        })
        .arrange_by_key_named("Impact: minute sums");
    let by_minute = in_minute
        .map(|(user, x)| ((user, x.start_ms.div_euclid(MINUTE_MS)), x))
        .arrange_by_key_named("Impact: samples by minute");
    let by_hour = in_hour.map(|(user, x)| ((user, x.first_hour()), x)).arrange_by_key_named("Impact: samples by hour");
    let spanning = held(Held::Spanning)
        .flat_map(|(user, x)| {
            let (from, to) = x.extent();
            buckets(from, to).map(|h| ((user.clone(), h), x.clone())).collect::<Vec<_>>()
        })
        .arrange_by_key_named("Impact: spanning samples by hour");

    // Whole hours and whole minutes of partial hours: the blocks' sums.
    let from_hours = whole_hours.join_core(hour_sums, |(user, _), sw, src| {
        let source = WindowSource { window: sw.window, rank: src.rank, source: src.source.clone() };
        Some((WindowKey::new(user, &sw.span, src.metric), source))
    });
    let from_minutes = partial_hours.clone().join_core(minute_sums, |(user, _), sw, src| {
        let (a, b) = sw.bounds();
        let whole = a <= src.minute * MINUTE_MS && (src.minute + 1) * MINUTE_MS <= b;
        whole.then(|| {
            let source = WindowSource { window: sw.window, rank: src.source.rank, source: src.source.source.clone() };
            (WindowKey::new(user, &sw.span, src.source.metric), source)
        })
    });
    // Sample by sample: partial minutes, samples of partial hours held by no minute, and samples
    // spanning hours.
    let in_partial_minutes =
        partial_minutes.join_core(by_minute, |(user, _), sw, x| contributions(user, &sw.span, x, Some(sw.window)));
    let in_partial_hours =
        partial_hours.join_core(by_hour, |(user, _), sw, x| contributions(user, &sw.span, x, Some(sw.window)));
    let across_hours = all_hours.join_core(spanning, |(user, h), s, x| {
        // The pair meets in every hour both touch; it counts in the first of them only.
        if *h == s.first_hour().max(x.first_hour()) { contributions(user, s, x, None) } else { Vec::new() }
    });
    let one_by_one = in_partial_minutes
        .concat(in_partial_hours)
        .concat(across_hours)
        .explode(|(key, source, sum)| Some(((key, source), sum)));

    let windows = from_hours
        .concat(from_minutes)
        .concat(one_by_one)
        .reduce_named("Impact: windows", |key: &WindowKey, input, output| {
            let windows = window_means(key, input);
            if windows.iter().any(|w| w.1 >= 1) {
                output.push((windows, 1isize));
            }
        })
        .map(|(key, windows)| ((key.user_id, key.session_id), (key.metric, windows)));

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

/// The kinds of block a session window meets (see [`impacts`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
enum Block {
    WholeHour,
    PartialHour,
    PartialMinute,
}

/// What sample `x` adds to the windows of session `s` (§4), to window `only` alone if given: per
/// window it counts in, one [`WindowSum`] for its source (CUMULATIVE: its C1 share of the window,
/// the whole value when the window holds it whole; DISCRETE: its value, all sources pooled). A
/// CUMULATIVE sample counts where it overlaps (an instantaneous one where its instant lies); a
/// DISCRETE one where it starts. A zero-length DURING has no CUMULATIVE rate.
fn contributions(
    user: &str,
    s: &SessionSpan,
    x: &HourSample,
    only: Option<u8>,
) -> Vec<(WindowKey, WindowSource, WindowSum)> {
    let cumulative = x.metric.kind() == ValueKind::Cumulative;
    let mut out = Vec::new();
    for (w, (a, b)) in (0u8..).zip(windows_of(s.start_ms, s.end_ms)) {
        if only.is_some_and(|o| o != w) {
            continue;
        }
        let inside = a <= x.start_ms && x.end_ms <= b;
        let counts = if cumulative {
            b > a
                && if x.end_ms > x.start_ms {
                    x.start_ms < b && x.end_ms > a
                } else {
                    a <= x.start_ms && x.start_ms < b
                }
        } else {
            a <= x.start_ms && x.start_ms < b
        };
        if !counts {
            continue;
        }
        let add = if cumulative && !inside { share(x.start_ms, x.end_ms, x.value.0, a, b) } else { x.value.0 };
        out.push((WindowKey::new(user, s, x.metric), x.source(w), WindowSum::of(add)));
    }
    out
}

/// A session's three windows for one metric from its per-(window, source) sums (§4): DISCRETE, the
/// mean of the samples starting in the window (null below `MIN_N`); CUMULATIVE, the best-ranked
/// source with a sample overlapping the window (ties to the smaller `sourceId`), whose total is
/// every overlapping sample of that `sourceId` (whatever class the others carry), per hour of
/// window. `input` is sorted by [`WindowSource`] and holds only non-zero sums.
fn window_means(key: &WindowKey, input: &[(&WindowSource, WindowSum)]) -> [Window; 3] {
    let ranges = windows_of(key.start_ms, key.end_ms);
    let cumulative = key.metric.kind() == ValueKind::Cumulative;
    let mut out = [(None, 0); 3];
    for (w, (a, b)) in (0u8..).zip(ranges) {
        let mine = input.iter().filter(|(src, sum)| src.window == w && sum.n > 0);
        let mut acc = WindowSum::default();
        if cumulative {
            let mut mine = mine.peekable();
            let Some(best) = mine.peek().map(|(src, _)| src.source.clone()) else { continue };
            mine.filter(|(src, _)| src.source == best).for_each(|(_, sum)| acc.plus_equals(sum));
            let hours = (b - a) as f64 / 3_600_000.0;
            out[w as usize] = (Some(OrdF64(acc.total_f64() / hours)), acc.n);
        } else {
            mine.for_each(|(_, sum)| acc.plus_equals(sum));
            out[w as usize] = ((acc.n >= MIN_N).then(|| OrdF64(acc.total_f64() / acc.n as f64)), acc.n);
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

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
