//! `weekly_steps`: step totals per user and ISO week, built on `daily_rollups` (the example of
//! `docs/adding-a-view.md`).

use chrono::Datelike;
use differential_dataflow::VecCollection;
use vitalflow_schemas::time::{date_to_days, days_to_date};
use vitalflow_schemas::view::{ColumnType::*, col};
use vitalflow_schemas::{Datum, Epoch, Metric, OrdF64, Row, ViewDef};

use crate::daily_rollups::DailyRollup;

/// Key `(user_id, week_start)`; `week_start` is the Monday of the ISO week.
pub const DEF: ViewDef = ViewDef {
    name: "weekly_steps",
    columns: &[col("user_id", Str), col("week_start", Date), col("steps", Float), col("days", Int)],
    key_len: 2,
    route: Some("weekly-steps"),
    filters: &[],
    range_column: Some("week_start"),
    range_via: None,
};

/// In: `daily_rollups`. Out: one row per `(user_id, week_start)`: the week's merged step total
/// (the sum of its days' `sum`) and the number of days with steps.
pub fn weekly_steps<'s>(daily: VecCollection<'s, Epoch, DailyRollup>) -> VecCollection<'s, Epoch, Row> {
    daily
        .flat_map(|r| {
            let sum = r.sum.filter(|_| r.metric == Metric::Steps)?;
            let date = days_to_date(r.local_date);
            let monday = date - chrono::Duration::days(i64::from(date.weekday().num_days_from_monday()));
            Some(((r.user_id, date_to_days(monday)), (r.local_date, sum)))
        })
        .reduce_named("WeeklySteps: sum", |_week, input, output| {
            let days = input.iter().filter(|(_, r)| *r > 0).count() as i64;
            let total: f64 = input.iter().filter(|(_, r)| *r > 0).map(|((_, s), r)| s.0 * *r as f64).sum();
            if days > 0 {
                output.push(((OrdF64(total), days), 1));
            }
        })
        .map(|((user, week), (total, days))| {
            vec![Datum::Str(user), Datum::Date(week), Datum::Float(total), Datum::Int(days)]
        })
}
