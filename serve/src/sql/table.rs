//! A view as a DataFusion `TableProvider` over one snapshot, with `user_id` filters pushed down
//! (issue 14 §2): for a per-user view (first column `user_id`) a query that names its users
//! (`user_id = 'u'`, `user_id IN ('u', 'v')`) reads only those users' shards, not the whole view.
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

use crate::snapshot::ViewSnapshot;

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
        Ok(match wanted {
            None => self.snap.batches(),
            Some(users) => users.iter().filter_map(|u| self.snap.user(u)).flat_map(|s| s.batches().cloned()).collect(),
        })
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
                if self.per_user() && users_named(f).is_some() {
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
