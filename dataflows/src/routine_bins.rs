//! `routine_bins`: hour-of-week histograms of consumption sessions with a Dirichlet posterior
//! (DOMAIN.md §5), per user (`scope = *`) and per (user, product).

use chrono::{Datelike, NaiveDateTime, Timelike};
use differential_dataflow::VecCollection;
use vitalflow_schemas::view::{ColumnType::*, col};
use vitalflow_schemas::{Datum, Epoch, OrdF64, Row, ViewDef};

use crate::names::Name;
use crate::records::SessionRecord;

/// Symmetric Dirichlet prior (Jeffreys).
pub const ALPHA: f64 = 0.5;
/// Bins per week.
pub const K: u32 = 168;
/// Events a scope needs before it can have peaks.
pub const N_MIN: i64 = 5;
/// Events a bin needs to be a peak.
pub const C_MIN: i64 = 2;
/// Lift a bin needs to be a peak.
pub const LIFT_MIN: f64 = 3.0;
/// Most peaks per scope.
pub const MAX_PEAKS: usize = 5;

/// Key `(user_id, scope, bin)`; one row per bin with at least one event.
pub const DEF: ViewDef = ViewDef {
    name: "routine_bins",
    columns: &[
        col("user_id", Str),
        col("scope", Str),
        col("bin", Int),
        col("iso_weekday", Int),
        col("hour", Int),
        col("count", Int),
        col("n", Int),
        col("posterior_mean", Float),
        col("lift", Float),
        col("is_peak", Bool),
    ],
    key_len: 3,
    route: Some("routines"),
    filters: &["scope"],
    range_column: None,
    range_via: None,
};

/// `computeBinIndex`: `(isoWeekday − 1) × 24 + hour` of a wall-clock time (Mon 00h = 0, Sun 23h = 167).
pub fn bin_index(local: NaiveDateTime) -> u32 {
    (local.weekday().number_from_monday() - 1) * 24 + local.hour()
}

/// One bin of one scope's histogram (§5): its events `count` of the scope's `n`, the posterior
/// mean `(count + α) / (n + K·α)`, the lift `posterior_mean · K`, and whether it is a peak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct BinStats {
    /// `(isoWeekday − 1) × 24 + hour`, 0..168.
    pub bin: u32,
    pub count: i64,
    pub n: i64,
    pub posterior_mean: OrdF64,
    pub lift: OrdF64,
    pub is_peak: bool,
}

/// One `routine_bins` row (§5): per user, scope (`*` or a product id) and bin with at least one
/// event. [`RoutineBin::to_row`] is the one mapping to [`DEF`]'s columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct RoutineBin {
    pub user_id: Name,
    /// `*` or a product id (a product id `*` shares the all-products scope).
    pub scope: Name,
    pub stats: BinStats,
}

impl RoutineBin {
    /// The row of [`DEF`]: the bin, then its ISO weekday (1–7) and hour (0–23).
    pub fn to_row(&self) -> Row {
        let b = &self.stats;
        vec![
            Datum::Str(self.user_id.to_string()),
            Datum::Str(self.scope.to_string()),
            Datum::Int(i64::from(b.bin)),
            Datum::Int(i64::from(b.bin / 24 + 1)),
            Datum::Int(i64::from(b.bin % 24)),
            Datum::Int(b.count),
            Datum::Int(b.n),
            Datum::Float(b.posterior_mean),
            Datum::Float(b.lift),
            Datum::Bool(b.is_peak),
        ]
    }
}

/// In: current sessions (open ones included). Out: one [`RoutineBin`] per `(user_id, scope, bin)`
/// with `count ≥ 1`, binned by `startAt` in the session's zone; `scope` is `*` or the product id.
/// Peaks: at most [`MAX_PEAKS`] bins by posterior mean (ties to the smaller bin), among those with
/// `n ≥ N_MIN`, `count ≥ C_MIN` and `lift ≥ LIFT_MIN`.
pub fn routine_bins<'s>(sessions: VecCollection<'s, Epoch, SessionRecord>) -> VecCollection<'s, Epoch, RoutineBin> {
    let all = Name::intern("*");
    sessions
        .flat_map(move |s| {
            let bin = bin_index(s.zone.local(s.start_ms));
            [((s.user_id, all), bin), ((s.user_id, s.product_id), bin)]
        })
        .reduce_named("Routine: scope histogram", |_scope, input: &[(&u32, isize)], output| {
            let n: i64 = input.iter().map(|(_, c)| *c as i64).sum();
            let denominator = n as f64 + f64::from(K) * ALPHA;
            let mut stats: Vec<BinStats> = input
                .iter()
                .filter(|(_, c)| *c > 0)
                .map(|(bin, c)| {
                    let p = (*c as f64 + ALPHA) / denominator;
                    BinStats {
                        bin: **bin,
                        count: *c as i64,
                        n,
                        posterior_mean: OrdF64(p),
                        lift: OrdF64(p * f64::from(K)),
                        is_peak: false,
                    }
                })
                .collect();
            let mut peaks: Vec<&BinStats> =
                stats.iter().filter(|b| n >= N_MIN && b.count >= C_MIN && b.lift.0 >= LIFT_MIN).collect();
            peaks.sort_by(|a, b| b.posterior_mean.0.total_cmp(&a.posterior_mean.0).then(a.bin.cmp(&b.bin)));
            let peak_bins: Vec<u32> = peaks.iter().take(MAX_PEAKS).map(|b| b.bin).collect();
            for b in &mut stats {
                b.is_peak = peak_bins.contains(&b.bin);
                output.push((*b, 1));
            }
        })
        .map(|((user_id, scope), stats)| RoutineBin { user_id, scope, stats })
}
