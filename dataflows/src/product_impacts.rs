//! `product_impacts`: per (user, product, metric), statistics over the sessions' impacts
//! (DOMAIN.md §4), recomputed from the child impact rows on any change (the groups are small).

use differential_dataflow::VecCollection;
use vitalflow_schemas::view::{ColumnType::*, col};
use vitalflow_schemas::{Datum, Epoch, OrdF64, Row, ViewDef};

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

/// n, mean, variance (M2/(n−1)), sd and se of a sample of deltas; what is undefined is null.
pub fn delta_stats(xs: &[f64]) -> (i64, Option<f64>, Option<f64>, Option<f64>, Option<f64>) {
    let n = xs.len();
    if n == 0 {
        return (0, None, None, None, None);
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (1, Some(mean), None, None, None);
    }
    let m2: f64 = xs.iter().map(|x| (x - mean) * (x - mean)).sum();
    let variance = m2 / (n - 1) as f64;
    let sd = variance.sqrt();
    (n as i64, Some(mean), Some(variance), Some(sd), Some(sd / (n as f64).sqrt()))
}

fn mean(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = xs.fold((0.0, 0), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| sum / f64::from(n))
}

/// In: session impacts. Out: one row per `(user_id, product_id, metric)` with at least one impact.
pub fn product_impacts<'s>(impacts: VecCollection<'s, Epoch, Impact>) -> VecCollection<'s, Epoch, Row> {
    impacts
        .map(|i| ((i.user_id.clone(), i.product_id.clone(), i.metric), i))
        .reduce_named("ProductImpact: stats", |_key, input, output| {
            let rows: Vec<&Impact> = input.iter().filter(|(_, r)| *r > 0).map(|(i, _)| *i).collect();
            if rows.is_empty() {
                return;
            }
            let f = |v: Option<f64>| v.map_or(Datum::Null, |x| Datum::Float(OrdF64(x)));
            let mut out = vec![
                Datum::Int(rows.len() as i64),
                Datum::Int(rows.iter().filter(|i| i.contaminated).count() as i64),
                Datum::Float(OrdF64(rows.iter().map(|i| i.quantity.0).sum())),
                Datum::Ts(rows.iter().map(|i| i.start_ms).max().unwrap_or_default()),
            ];
            for w in 0..3 {
                out.push(f(mean(rows.iter().filter_map(|i| i.windows[w].0.map(|m| m.0)))));
            }
            for d in 0..2 {
                let xs: Vec<f64> = rows.iter().filter_map(|i| i.deltas()[d]).collect();
                let (n, m, var, sd, se) = delta_stats(&xs);
                out.extend([Datum::Int(n), f(m), f(var), f(sd), f(se)]);
            }
            output.push((out, 1));
        })
        .map(|((user, product, metric), fields)| {
            let mut row = vec![Datum::Str(user), Datum::Str(product), Datum::Str(metric.key().to_owned())];
            row.extend(fields);
            row
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_example_4_delta_statistics() {
        let (n, mean, var, sd, se) = delta_stats(&[15.0, 5.0, 10.0]);
        assert_eq!((n, mean, var, sd), (3, Some(10.0), Some(25.0), Some(5.0)));
        assert!((se.unwrap_or(0.0) - 5.0 / 3f64.sqrt()).abs() < 1e-12);
        // Removing 5 leaves {15, 10}: n = 2, mean = 12.5, M2 = 12.5, variance = 12.5.
        let (n, mean, var, _, _) = delta_stats(&[15.0, 10.0]);
        assert_eq!((n, mean, var), (2, Some(12.5), Some(12.5)));
        assert_eq!(delta_stats(&[7.0]), (1, Some(7.0), None, None, None));
    }
}
