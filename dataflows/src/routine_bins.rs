//! `routine_bins`: hour-of-week histograms of consumption sessions with a Dirichlet posterior
//! (DOMAIN.md §5), per user (`scope = *`) and per (user, product).

use chrono::{Datelike, NaiveDateTime, Timelike};
use differential_dataflow::VecCollection;
use vitalflow_schemas::domain::Session;
use vitalflow_schemas::view::{ColumnType::*, col};
use vitalflow_schemas::{Datum, Epoch, OrdF64, Row, ViewDef};

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

/// In: current sessions (open ones included). Out: one row per `(user_id, scope, bin)` with
/// `count ≥ 1`, binned by `startAt` in the session's zone; `scope` is `*` or the product id.
pub fn routine_bins<'s>(sessions: VecCollection<'s, Epoch, Session>) -> VecCollection<'s, Epoch, Row> {
    sessions
        .flat_map(|s| {
            let bin = bin_index(s.zone.local(s.start_ms));
            [((s.user_id.clone(), "*".to_owned()), bin), ((s.user_id, s.product_id), bin)]
        })
        .reduce_named("Routine: scope histogram", |_scope, input: &[(&u32, isize)], output| {
            let n: i64 = input.iter().map(|(_, c)| *c as i64).sum();
            let denominator = n as f64 + f64::from(K) * ALPHA;
            let stats: Vec<(u32, i64, f64, f64)> = input
                .iter()
                .filter(|(_, c)| *c > 0)
                .map(|(bin, c)| {
                    let p = (*c as f64 + ALPHA) / denominator;
                    (**bin, *c as i64, p, p * f64::from(K))
                })
                .collect();
            let mut peaks: Vec<&(u32, i64, f64, f64)> =
                stats.iter().filter(|(_, c, _, lift)| n >= N_MIN && *c >= C_MIN && *lift >= LIFT_MIN).collect();
            peaks.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)));
            let peak_bins: Vec<u32> = peaks.iter().take(MAX_PEAKS).map(|p| p.0).collect();
            for &(bin, c, p, lift) in &stats {
                output.push(((bin, c, n, OrdF64(p), OrdF64(lift), peak_bins.contains(&bin)), 1));
            }
        })
        .map(|((user, scope), (bin, c, n, p, lift, peak))| {
            vec![
                Datum::Str(user),
                Datum::Str(scope),
                Datum::Int(i64::from(bin)),
                Datum::Int(i64::from(bin / 24 + 1)),
                Datum::Int(i64::from(bin % 24)),
                Datum::Int(c),
                Datum::Int(n),
                Datum::Float(p),
                Datum::Float(lift),
                Datum::Bool(peak),
            ]
        })
}
