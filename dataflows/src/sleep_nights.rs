//! `sleep_nights`: sleep periods per user and night (DOMAIN.md §3): noon-to-noon windows,
//! fragments, episodes, periods across sources, a canonical source, the night's fields, wake-date
//! attribution and main sleep vs nap.

use differential_dataflow::VecCollection;
use vitalflow_schemas::sleep::SleepStage;
use vitalflow_schemas::time::date_to_days;
use vitalflow_schemas::view::{ColumnType::*, col};
use vitalflow_schemas::{Datum, Epoch, Metric, OrdF64, Row, ViewDef, Zone};

use crate::names::Name;
use crate::registry::SamplesByUser;

/// Fragments of one source join an episode when the gap is below this.
pub const GAP_MERGE_MS: i64 = 60 * 60_000;
/// A gap between asleep fragments of at least this is an awakening.
pub const AWAKENING_MS: i64 = 5 * 60_000;

/// Key `(user_id, night_date, sleep_onset_at)`.
pub const DEF: ViewDef = ViewDef {
    name: "sleep_nights",
    columns: &[
        col("user_id", Str),
        col("night_date", Date),
        col("sleep_onset_at", Timestamp),
        col("wake_at", Timestamp),
        col("bedtime_at", Timestamp),
        col("rise_at", Timestamp),
        col("total_asleep_min", Float),
        col("core_min", Float),
        col("deep_min", Float),
        col("rem_min", Float),
        col("unspecified_min", Float),
        col("waso_min", Float),
        col("awakenings_count", Int),
        col("time_in_bed_min", Float),
        col("sleep_latency_min", Float),
        col("efficiency", Float),
        col("has_stages", Bool),
        col("canonical_source_id", Str),
        col("source_count", Int),
        col("zone_id", Str),
        col("is_main", Bool),
    ],
    key_len: 3,
    route: Some("sleep-nights"),
    filters: &[],
    range_column: Some("night_date"),
    range_via: None,
};

/// What the sleep pipeline (§3.3) needs of one sleep-stage sample: its interval (UTC ms), stage,
/// source rank (§1.5), `sourceId`, `sourceRecordId` (two equal stages of different records stay
/// two) and zone. Ordered by start, then end, as the fragment merge reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Stage {
    pub start_ms: i64,
    pub end_ms: i64,
    pub stage: SleepStage,
    pub rank: u8,
    pub source_id: Name,
    pub source_record_id: Name,
    pub zone: Zone,
}

/// A period's computed fields, before main/nap is decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Period {
    pub onset: i64,
    pub wake: i64,
    pub bedtime: i64,
    pub rise: i64,
    pub has_in_bed: bool,
    /// Milliseconds asleep: total, core, deep, rem, unspecified.
    pub asleep_ms: [i64; 5],
    pub awakenings: i64,
    pub canonical: Name,
    pub source_count: i64,
    pub zone: Zone,
    pub night_date: i32,
}

/// The local date `W` of the noon-to-noon window holding `t`: `t ∈ [W−1 12:00, W 12:00)`.
pub fn sleep_window(t: i64, zone: Zone) -> i32 {
    date_to_days((zone.local(t) + chrono::Duration::hours(12)).date())
}

fn priority(s: SleepStage) -> u8 {
    match s {
        SleepStage::Deep => 4,
        SleepStage::Rem => 3,
        SleepStage::Core => 2,
        SleepStage::Unspecified => 1,
        _ => 0,
    }
}

/// Merged asleep fragments `[a, b)` of one source's asleep samples (sorted by start).
fn fragments(asleep: &[&Stage]) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = Vec::new();
    for s in asleep {
        match out.last_mut() {
            Some(last) if s.start_ms <= last.1 => last.1 = last.1.max(s.end_ms),
            _ => out.push((s.start_ms, s.end_ms)),
        }
    }
    out
}

/// Stage milliseconds of `asleep` inside `[a, b)`, overlaps going to DEEP > REM > CORE > UNSPECIFIED.
fn stage_ms(asleep: &[&Stage], a: i64, b: i64) -> [i64; 4] {
    let mut points: Vec<i64> = asleep.iter().flat_map(|s| [s.start_ms.clamp(a, b), s.end_ms.clamp(a, b)]).collect();
    points.sort_unstable();
    points.dedup();
    let mut out = [0i64; 4]; // core, deep, rem, unspecified
    for w in points.windows(2) {
        let (x, y) = (w[0], w[1]);
        let top = asleep
            .iter()
            .filter(|s| s.start_ms <= x && s.end_ms >= y && s.end_ms > s.start_ms)
            .map(|s| priority(s.stage))
            .max();
        let slot = match top {
            Some(4) => 1,
            Some(3) => 2,
            Some(2) => 0,
            Some(1) => 3,
            _ => continue,
        };
        out[slot] += y - x;
    }
    out
}

/// Steps 1–6 of §3.3 for one `(user, window)`.
pub fn periods(samples: &[&Stage]) -> Vec<Period> {
    let mut sources: Vec<(u8, Name)> = samples.iter().map(|s| (s.rank, s.source_id)).collect();
    sources.sort_unstable();
    sources.dedup_by(|a, b| a.1 == b.1);
    // Episodes per source: (onset, offset, source).
    let mut episodes: Vec<(i64, i64, Name)> = Vec::new();
    for (_, src) in &sources {
        let mut asleep: Vec<&Stage> = samples
            .iter()
            .copied()
            .filter(|s| s.source_id == *src && s.stage.is_asleep() && s.end_ms > s.start_ms)
            .collect();
        asleep.sort();
        for (a, b) in fragments(&asleep) {
            match episodes.last_mut() {
                Some(e) if e.2 == *src && a - e.1 < GAP_MERGE_MS => e.1 = e.1.max(b),
                _ => episodes.push((a, b, *src)),
            }
        }
    }
    // Periods: episodes of different sources whose intervals overlap, joined transitively.
    episodes.sort_unstable();
    let mut groups: Vec<(i64, i64, Vec<Name>)> = Vec::new();
    for (a, b, src) in episodes {
        match groups.last_mut() {
            Some(g) if a < g.1 => {
                g.1 = g.1.max(b);
                g.2.push(src);
            }
            _ => groups.push((a, b, vec![src])),
        }
    }
    let mut out = Vec::new();
    for (pa, pb, mut srcs) in groups {
        srcs.sort_unstable();
        srcs.dedup();
        let in_period = |s: &&Stage, src: Name| {
            s.source_id == src && s.stage.is_asleep() && s.end_ms > s.start_ms && s.start_ms < pb && s.end_ms > pa
        };
        let asleep_of = |src: Name| -> Vec<&Stage> {
            let mut v: Vec<&Stage> = samples.iter().copied().filter(|s| in_period(s, src)).collect();
            v.sort();
            v
        };
        let total_of = |src: Name| fragments(&asleep_of(src)).iter().map(|(a, b)| b - a).sum::<i64>();
        let rank_of =
            |src: Name| samples.iter().filter(|s| s.source_id == src).map(|s| s.rank).min().unwrap_or(u8::MAX);
        let Some(canonical) =
            srcs.iter().copied().min_by(|&x, &y| (rank_of(x), -total_of(x), x).cmp(&(rank_of(y), -total_of(y), y)))
        else {
            continue;
        };
        let asleep = asleep_of(canonical);
        let frags = fragments(&asleep);
        let (Some(first), Some(last)) = (frags.first(), frags.last()) else { continue };
        let (onset, wake) = (first.0, last.1);
        let total: i64 = frags.iter().map(|(a, b)| b - a).sum();
        let [core, deep, rem, unspecified] = stage_ms(&asleep, onset, wake);
        let awakenings = frags.windows(2).filter(|w| w[1].0 - w[0].1 >= AWAKENING_MS).count() as i64;
        let in_bed = |s: &&&Stage| s.stage == SleepStage::InBed && s.start_ms < wake && s.end_ms > onset;
        let own: Vec<&Stage> = samples.iter().filter(in_bed).filter(|s| s.source_id == canonical).copied().collect();
        let candidates: Vec<&Stage> =
            if own.is_empty() { samples.iter().filter(in_bed).copied().collect() } else { own };
        let bedtime = candidates.iter().map(|s| s.start_ms).min().map_or(onset, |b| b.min(onset));
        let rise = candidates.iter().map(|s| s.end_ms).max().map_or(wake, |r| r.max(wake));
        let last_zone = samples
            .iter()
            .filter(|s| srcs.contains(&s.source_id) && s.stage.is_asleep() && s.start_ms < pb && s.end_ms > pa)
            .max_by(|x, y| (x.end_ms, x.start_ms, &x.source_id).cmp(&(y.end_ms, y.start_ms, &y.source_id)))
            .map_or(Zone::UTC, |s| s.zone);
        out.push(Period {
            onset,
            wake,
            bedtime,
            rise,
            has_in_bed: !candidates.is_empty(),
            asleep_ms: [total, core, deep, rem, unspecified],
            awakenings,
            canonical,
            source_count: srcs.len() as i64,
            zone: last_zone,
            night_date: date_to_days(last_zone.local_date(wake)),
        });
    }
    out
}

/// One `sleep_nights` row (§3.3): a user's sleep period and whether it is the night's main one.
/// [`SleepNight::to_row`] is the one mapping to [`DEF`]'s columns (durations in minutes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct SleepNight {
    pub user_id: Name,
    pub period: Period,
    pub is_main: bool,
}

impl SleepNight {
    /// The row of [`DEF`].
    pub fn to_row(&self) -> Row {
        let p = &self.period;
        let min = |ms: i64| Datum::Float(OrdF64(ms as f64 / 60_000.0));
        let in_bed = p.rise - p.bedtime;
        vec![
            Datum::Str(self.user_id.to_string()),
            Datum::Date(p.night_date),
            Datum::Ts(p.onset),
            Datum::Ts(p.wake),
            Datum::Ts(p.bedtime),
            Datum::Ts(p.rise),
            min(p.asleep_ms[0]),
            min(p.asleep_ms[1]),
            min(p.asleep_ms[2]),
            min(p.asleep_ms[3]),
            min(p.asleep_ms[4]),
            min((p.wake - p.onset) - p.asleep_ms[0]),
            Datum::Int(p.awakenings),
            min(in_bed),
            if p.has_in_bed { min(p.onset - p.bedtime) } else { Datum::Null },
            if in_bed > 0 { Datum::Float(OrdF64(p.asleep_ms[0] as f64 / in_bed as f64)) } else { Datum::Null },
            Datum::Bool(p.asleep_ms[1] + p.asleep_ms[2] + p.asleep_ms[3] > 0),
            Datum::Str(p.canonical.to_string()),
            Datum::Int(p.source_count),
            Datum::Str(p.zone.name()),
            Datum::Bool(self.is_main),
        ]
    }
}

/// In: current samples. Out: one [`SleepNight`] per sleep period, keyed `(user_id, night_date,
/// sleep_onset_at)`.
/// Each noon-to-noon window is computed on its own (a sample edit recomputes one window); main vs
/// nap is decided per `(user, night_date)` across windows.
pub fn sleep_nights<'s>(samples: &SamplesByUser<'s>) -> VecCollection<'s, Epoch, SleepNight> {
    samples
        .clone()
        .flat_map_ref(|user, s| {
            let stage = s.category.filter(|c| s.metric == Metric::SleepAnalysis && *c != SleepStage::Unknown)?;
            let stage = Stage {
                start_ms: s.start_ms,
                end_ms: s.end_ms,
                stage,
                rank: s.source_class.rank(),
                source_id: s.source_id,
                source_record_id: s.source_record_id,
                zone: s.zone,
            };
            Some(((*user, sleep_window(s.start_ms, s.zone)), stage))
        })
        .reduce_named("Sleep: periods per window", |_key, input, output| {
            let stages: Vec<&Stage> = input.iter().filter(|(_, r)| *r > 0).map(|(s, _)| *s).collect();
            for p in periods(&stages) {
                output.push((p, 1));
            }
        })
        .map(|((user, _window), p)| ((user, p.night_date), p))
        .reduce_named("Sleep: main vs nap", |_key, input, output| {
            let main = input.iter().filter(|(_, r)| *r > 0).map(|(p, _)| *p).max_by(|a, b| {
                (a.asleep_ms[0], a.wake).cmp(&(b.asleep_ms[0], b.wake)).then(b.canonical.cmp(&a.canonical))
            });
            for (p, r) in input.iter().filter(|(_, r)| *r > 0) {
                output.push(((*(*p), main == Some(*p)), *r));
            }
        })
        .map(|((user_id, _night), (period, is_main))| SleepNight { user_id, period, is_main })
}
