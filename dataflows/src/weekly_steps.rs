//! `weekly_steps`: step totals per user and ISO week, built on `daily_rollups` (the example of
//! `docs/adding-a-view.md`).

use chrono::Datelike;
use differential_dataflow::VecCollection;
use vitalflow_schemas::time::{date_to_days, days_to_date};
use vitalflow_schemas::view::{ColumnType::*, col};
use vitalflow_schemas::{Datum, Epoch, Metric, OrdF64, Row, ViewDef};

use crate::daily_rollups::DailyRollup;
use crate::names::Name;

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

/// One `weekly_steps` row: a user's merged step total of one ISO week (the sum of its days'
/// `daily_rollups.sum`, DOMAIN.md §1.5 M1) and the number of its days with steps.
/// [`WeeklySteps::to_row`] is the one mapping to [`DEF`]'s columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct WeeklySteps {
    pub user_id: Name,
    /// The Monday of the ISO week, in days since 1970-01-01.
    pub week_start: i32,
    pub steps: OrdF64,
    pub days: i64,
}

impl WeeklySteps {
    /// The row of [`DEF`].
    pub fn to_row(&self) -> Row {
        vec![
            Datum::Str(self.user_id.to_string()),
            Datum::Date(self.week_start),
            Datum::Float(self.steps),
            Datum::Int(self.days),
        ]
    }
}

/// The week's figures, as the reduce keeps them per `(user_id, week_start)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
struct WeekTotal {
    steps: OrdF64,
    days: i64,
}

/// In: `daily_rollups`. Out: one [`WeeklySteps`] per `(user_id, week_start)` with steps.
pub fn weekly_steps<'s>(daily: VecCollection<'s, Epoch, DailyRollup>) -> VecCollection<'s, Epoch, WeeklySteps> {
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
                output.push((WeekTotal { steps: OrdF64(total), days }, 1));
            }
        })
        .map(|((user_id, week_start), total)| WeeklySteps { user_id, week_start, steps: total.steps, days: total.days })
}
