//! A view as a DataFusion `TableProvider` over one snapshot, with `user_id` filters pushed down
//! (issue 14 §2): for a per-user view (first column `user_id`) a query that names its users
//! (`user_id = 'u'`, `user_id IN ('u', 'v')`) reads only those users' shards, not the whole view;
//! a filter on the view's date column (`local_date >= DATE '2024-06-01'`, `BETWEEN`) skips the
//! chunks whose dates it excludes (each chunk knows its first and last date). The scan hands
//! DataFusion the chunks' own batches (≤ 512 rows, no copy): concatenating them into larger
//! batches per query was measured 16% faster on a 1M-row aggregate but holds a copy of the view
//! outside the query's memory pool, and concatenating as they stream was 33% slower.
//! Row visibility (`health:read` callers see their own rows only) is applied here too, before any
//! filter of the query.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{Result, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::logical_expr::{Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use vitalflow_schemas::ViewDef;
use vitalflow_schemas::auth::RowVisibility;
use vitalflow_schemas::view::ColumnType;

use crate::snapshot::{Chunk, ViewSnapshot};

/// One view's snapshot as a table, as `visibility` may see it.
#[derive(Debug)]
pub(crate) struct ViewTable {
    pub def: ViewDef,
    pub schema: SchemaRef,
    pub snap: Arc<ViewSnapshot>,
    pub visibility: RowVisibility,
    /// Partitions of a scan (batches are dealt round-robin).
    pub partitions: usize,
}

impl ViewTable {
    /// Whether the snapshot is sharded by `user_id` (its first column).
    fn per_user(&self) -> bool {
        self.def.column_index(super::USER_COLUMN) == Some(0)
    }

    /// The batches a scan with `filters` needs to read.
    fn batches(&self, filters: &[Expr]) -> Result<Vec<RecordBatch>, super::SqlError> {
        if !self.per_user() {
            return super::visible_batches(&self.def, &self.snap, &self.visibility);
        }
        let mut wanted: Option<BTreeSet<String>> = match &self.visibility {
            RowVisibility::All => None,
            RowVisibility::User(u) => Some(BTreeSet::from([u.clone()])),
        };
        for users in filters.iter().filter_map(users_named) {
            wanted = Some(match wanted {
                None => users,
                Some(w) => w.intersection(&users).cloned().collect(),
            });
        }
        let (lo, hi) = self.day_bounds(filters);
        let keep = |c: &&Arc<Chunk>| c.days.is_none_or(|(first, last)| first <= hi && last >= lo);
        Ok(match wanted {
            None => self
                .snap
                .buckets
                .iter()
                .flat_map(|b| b.users.values())
                .flat_map(|s| s.chunks().iter().filter(keep).map(|c| c.batch.clone()))
                .collect(),
            Some(users) => users
                .iter()
                .filter_map(|u| self.snap.user(u))
                .flat_map(|s| s.chunks().iter().filter(keep).map(|c| c.batch.clone()))
                .collect(),
        })
    }

    /// The inclusive range of days (of the view's date `range_column`) that `filters` allow;
    /// chunks whose dates lie outside it are not read.
    fn day_bounds(&self, filters: &[Expr]) -> (i32, i32) {
        let Some(column) = self.date_column() else { return (i32::MIN, i32::MAX) };
        filters
            .iter()
            .filter_map(|f| days_allowed(f, column))
            .fold((i32::MIN, i32::MAX), |(lo, hi), (l, h)| (lo.max(l), hi.min(h)))
    }

    /// The view's `range_column` when it is a date.
    fn date_column(&self) -> Option<&'static str> {
        let c = self.def.range_column?;
        let i = self.def.column_index(c)?;
        (self.def.columns[i].ty == ColumnType::Date).then_some(c)
    }
}

/// The days a filter on the date column `column` allows: `column op DATE` (either side; `=`, `<`,
/// `<=`, `>`, `>=`) or `column BETWEEN DATE AND DATE`; `None` for any other filter.
fn days_allowed(e: &Expr, column: &str) -> Option<(i32, i32)> {
    let is_col = |e: &Expr| matches!(e, Expr::Column(c) if c.name == column);
    let day = |e: &Expr| match e {
        Expr::Literal(ScalarValue::Date32(Some(d)), _) => Some(*d),
        _ => None,
    };
    match e {
        Expr::BinaryExpr(b) => {
            let (d, op) = if is_col(&b.left) {
                (day(&b.right)?, b.op)
            } else if is_col(&b.right) {
                (day(&b.left)?, b.op.swap()?)
            } else {
                return None;
            };
            match op {
                Operator::Eq => Some((d, d)),
                Operator::Lt => Some((i32::MIN, d.saturating_sub(1))),
                Operator::LtEq => Some((i32::MIN, d)),
                Operator::Gt => Some((d.saturating_add(1), i32::MAX)),
                Operator::GtEq => Some((d, i32::MAX)),
                _ => None,
            }
        }
        Expr::Between(b) if !b.negated && is_col(&b.expr) => Some((day(&b.low)?, day(&b.high)?)),
        _ => None,
    }
}

/// The users a filter restricts `user_id` to: `user_id = 'u'` (either side) or
/// `user_id IN ('u', …)`; `None` for any other filter.
fn users_named(e: &Expr) -> Option<BTreeSet<String>> {
    fn is_user_col(e: &Expr) -> bool {
        matches!(e, Expr::Column(c) if c.name == super::USER_COLUMN)
    }
    fn text(e: &Expr) -> Option<String> {
        match e {
            Expr::Literal(
                ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)),
                _,
            ) => Some(s.clone()),
            _ => None,
        }
    }
    match e {
        Expr::BinaryExpr(b) if b.op == Operator::Eq => {
            let value = if is_user_col(&b.left) {
                text(&b.right)
            } else if is_user_col(&b.right) {
                text(&b.left)
            } else {
                None
            };
            value.map(|v| BTreeSet::from([v]))
        }
        Expr::InList(l) if !l.negated && is_user_col(&l.expr) => l.list.iter().map(text).collect(),
        _ => None,
    }
}

#[async_trait]
impl TableProvider for ViewTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// `user_id` filters narrow the scan to the users' shards; DataFusion still applies every
    /// filter above the scan (inexact), so nothing depends on the pushdown for correctness.
    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                let dates = self.date_column().is_some_and(|c| days_allowed(f, c).is_some());
                if self.per_user() && (users_named(f).is_some() || dates) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batches =
            self.batches(filters).map_err(|e| datafusion::common::DataFusionError::Execution(e.to_string()))?;
        let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(); self.partitions.max(1)];
        let n = parts.len();
        for (i, b) in batches.into_iter().enumerate() {
            parts[i % n].push(b);
        }
        MemorySourceConfig::try_new_exec(&parts, self.schema.clone(), projection.cloned())
            .map(|e| e as Arc<dyn ExecutionPlan>)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vitalflow_schemas::auth::RowVisibility;
    use vitalflow_schemas::view::{ColumnType, col};
    use vitalflow_schemas::{Datum, Row, ViewDef};

    use crate::SnapshotStore;
    use crate::sql::{SqlEngine, SqlLimits};

    const DEF: ViewDef = ViewDef {
        name: "t",
        columns: &[
            col("user_id", ColumnType::Str),
            col("metric", ColumnType::Str),
            col("local_date", ColumnType::Date),
            col("v", ColumnType::Int),
        ],
        key_len: 3,
        route: Some("t"),
        filters: &[],
        range_column: Some("local_date"),
        range_via: None,
    };

    /// Date and user filters prune chunks, never rows: every query answers what a model of the
    /// rows says (users with histories of many chunks, two metrics interleaving their dates).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pruned_scans_answer_what_the_rows_say() {
        let rows: Vec<Row> = (0..5)
            .flat_map(|u| {
                ["steps", "hr"].into_iter().flat_map(move |m| {
                    (0..900).map(move |d| {
                        vec![Datum::Str(format!("u{u}")), Datum::Str(m.into()), Datum::Date(19_000 + d), Datum::Int(1)]
                    })
                })
            })
            .collect();
        let store = Arc::new(SnapshotStore::new([DEF]));
        store.apply(0, 2, rows.iter().map(|r| (r.clone(), 1)).collect());
        let engine = SqlEngine::new(SqlLimits::default()).expect("engine");
        let day = |d: i32| vitalflow_schemas::time::days_to_date(d).to_string();
        let count = |pred: &dyn Fn(&Row) -> bool| rows.iter().filter(|r| pred(r)).count() as i64;
        let d = |r: &Row| match r[2] {
            Datum::Date(d) => d,
            _ => unreachable!(),
        };
        let cases: Vec<(String, i64)> = vec![
            (format!("local_date = DATE '{}'", day(19_450)), count(&|r| d(r) == 19_450)),
            (format!("DATE '{}' = local_date", day(19_000)), count(&|r| d(r) == 19_000)),
            (format!("local_date < DATE '{}'", day(19_300)), count(&|r| d(r) < 19_300)),
            (format!("local_date <= DATE '{}'", day(19_300)), count(&|r| d(r) <= 19_300)),
            (format!("local_date > DATE '{}'", day(19_899)), count(&|r| d(r) > 19_899)),
            (format!("DATE '{}' <= local_date", day(19_600)), count(&|r| d(r) >= 19_600)),
            (
                format!("local_date BETWEEN DATE '{}' AND DATE '{}'", day(19_100), day(19_200)),
                count(&|r| (19_100..=19_200).contains(&d(r))),
            ),
            (
                format!(
                    "local_date >= DATE '{}' AND local_date < DATE '{}' AND user_id = 'u3'",
                    day(19_500),
                    day(19_510)
                ),
                count(&|r| (19_500..19_510).contains(&d(r)) && r[0] == Datum::Str("u3".into())),
            ),
            (format!("local_date > DATE '{}' AND local_date < DATE '{}'", day(19_500), day(19_400)), 0),
            (format!("local_date = '{}'", day(19_777)), count(&|r| d(r) == 19_777)),
            (format!("NOT (local_date = DATE '{}')", day(19_777)), count(&|r| d(r) != 19_777)),
        ];
        for (filter, want) in cases {
            let sql = format!("SELECT count(*) AS n FROM t WHERE {filter}");
            let got = engine.run(store.clone(), sql.clone(), RowVisibility::All).await.expect(&sql);
            let json = crate::sql::batches_to_json(&got.batches);
            assert_eq!(json[0]["n"], serde_json::json!(want), "{sql}");
        }
    }
}
