//! `product_impacts`: per (user, product, metric), statistics over the sessions' impacts
//! (DOMAIN.md §4), recomputed from the child impact rows on any change (the groups are small).

use differential_dataflow::VecCollection;
use vitalflow_schemas::view::{ColumnType::*, col};
use vitalflow_schemas::{Datum, Epoch, Metric, OrdF64, Row, ViewDef};

use crate::names::Name;
use crate::session_impacts::Impact;

/// Key `(user_id, product_id, metric)`.
pub const DEF: ViewDef = ViewDef {
    name: "product_impacts",
    columns: &[
        col("user_id", Str),
        col("product_id", Str),
        col("metric", Str),
        col("session_count", Int),
        col("contaminated_count", Int),
        col("total_quantity", Float),
        col("last_session_at", Timestamp),
        col("mean_before", Float),
        col("mean_during", Float),
        col("mean_after", Float),
        col("delta_during_n", Int),
        col("delta_during_mean", Float),
        col("delta_during_variance", Float),
        col("delta_during_sd", Float),
        col("delta_during_se", Float),
        col("delta_after_n", Int),
        col("delta_after_mean", Float),
        col("delta_after_variance", Float),
        col("delta_after_sd", Float),
        col("delta_after_se", Float),
    ],
    key_len: 3,
    route: Some("product-impacts"),
    filters: &["productId", "metric"],
    range_column: None,
    range_via: None,
};

/// Statistics of one delta (`deltaDuring` or `deltaAfter`) over a product's sessions (§4): `n`,
/// `mean`, `variance = M2/(n−1)`, `sd` and `se = sd/√n`, in the metric's unit (rates per hour for
/// CUMULATIVE metrics); what is undefined for `n` is `None` (mean for n = 0, the rest for n < 2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct DeltaStats {
    pub n: i64,
    pub mean: Option<OrdF64>,
    pub variance: Option<OrdF64>,
    pub sd: Option<OrdF64>,
    pub se: Option<OrdF64>,
}

/// [`DeltaStats`] of a sample of deltas, recomputed from the values (§4 allows it: the groups are
/// small).
pub fn delta_stats(xs: &[f64]) -> DeltaStats {
    let n = xs.len();
    if n == 0 {
        return DeltaStats::default();
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return DeltaStats { n: 1, mean: Some(OrdF64(mean)), ..DeltaStats::default() };
    }
    let m2: f64 = xs.iter().map(|x| (x - mean) * (x - mean)).sum();
    let variance = m2 / (n - 1) as f64;
    let sd = variance.sqrt();
    DeltaStats {
        n: n as i64,
        mean: Some(OrdF64(mean)),
        variance: Some(OrdF64(variance)),
        sd: Some(OrdF64(sd)),
        se: Some(OrdF64(sd / (n as f64).sqrt())),
    }
}

fn mean(xs: impl Iterator<Item = f64>) -> Option<OrdF64> {
    let (sum, n) = xs.fold((0.0, 0), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| OrdF64(sum / f64::from(n)))
}

/// One `product_impacts` row (§4): per user, product and metric, over the sessions of that product
/// with an impact row for the metric. `last_session_at` is UTC ms; the means are the means of the
/// per-session window means (null where no session has one). [`ProductImpact::to_row`] is the one
/// mapping to [`DEF`]'s columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct ProductImpact {
    pub user_id: Name,
    pub product_id: Name,
    pub metric: Metric,
    pub session_count: i64,
    pub contaminated_count: i64,
    pub total_quantity: OrdF64,
    pub last_session_at: i64,
    pub mean_before: Option<OrdF64>,
    pub mean_during: Option<OrdF64>,
    pub mean_after: Option<OrdF64>,
    pub delta_during: DeltaStats,
    pub delta_after: DeltaStats,
}

impl ProductImpact {
    /// The row of [`DEF`].
    pub fn to_row(&self) -> Row {
        let f = |v: Option<OrdF64>| v.map_or(Datum::Null, Datum::Float);
        let mut row = vec![
            Datum::Str(self.user_id.to_string()),
            Datum::Str(self.product_id.to_string()),
            Datum::Str(self.metric.key().to_owned()),
            Datum::Int(self.session_count),
            Datum::Int(self.contaminated_count),
            Datum::Float(self.total_quantity),
            Datum::Ts(self.last_session_at),
            f(self.mean_before),
            f(self.mean_during),
            f(self.mean_after),
        ];
        for d in [self.delta_during, self.delta_after] {
            row.extend([Datum::Int(d.n), f(d.mean), f(d.variance), f(d.sd), f(d.se)]);
        }
        row
    }
}

/// In: session impacts. Out: one [`ProductImpact`] per `(user_id, product_id, metric)` with at
/// least one impact.
pub fn product_impacts<'s>(impacts: VecCollection<'s, Epoch, Impact>) -> VecCollection<'s, Epoch, ProductImpact> {
    impacts
        .map(|i| ((i.user_id, i.product_id, i.metric), i))
        .reduce_named("ProductImpact: stats", |(user_id, product_id, metric), input, output| {
            let rows: Vec<&Impact> = input.iter().filter(|(_, r)| *r > 0).map(|(i, _)| *i).collect();
            if rows.is_empty() {
                return;
            }
            let window_mean = |w: usize| mean(rows.iter().filter_map(|i| i.windows[w].0.map(|m| m.0)));
            let deltas = |d: usize| delta_stats(&rows.iter().filter_map(|i| i.deltas()[d]).collect::<Vec<f64>>());
            let impact = ProductImpact {
                user_id: *user_id,
                product_id: *product_id,
                metric: *metric,
                session_count: rows.len() as i64,
                contaminated_count: rows.iter().filter(|i| i.contaminated).count() as i64,
                total_quantity: OrdF64(rows.iter().map(|i| i.quantity.0).sum()),
                last_session_at: rows.iter().map(|i| i.start_ms).max().unwrap_or_default(),
                mean_before: window_mean(0),
                mean_during: window_mean(1),
                mean_after: window_mean(2),
                delta_during: deltas(0),
                delta_after: deltas(1),
            };
            output.push((impact, 1));
        })
        .map(|(_, impact)| impact)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_example_4_delta_statistics() {
        let d = delta_stats(&[15.0, 5.0, 10.0]);
        let v = |x: Option<OrdF64>| x.map(|x| x.0);
        assert_eq!((d.n, v(d.mean), v(d.variance), v(d.sd)), (3, Some(10.0), Some(25.0), Some(5.0)));
        assert!((v(d.se).unwrap_or(0.0) - 5.0 / 3f64.sqrt()).abs() < 1e-12);
        // Removing 5 leaves {15, 10}: n = 2, mean = 12.5, M2 = 12.5, variance = 12.5.
        let d = delta_stats(&[15.0, 10.0]);
        assert_eq!((d.n, v(d.mean), v(d.variance)), (2, Some(12.5), Some(12.5)));
        assert_eq!(delta_stats(&[7.0]), DeltaStats { n: 1, mean: Some(OrdF64(7.0)), ..DeltaStats::default() });
    }
}
