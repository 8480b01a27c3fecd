//! Read-only SQL over the current snapshots: one DataFusion table per view (DOMAIN.md §8 names),
//! built from the snapshot's shards without copying them.

use std::sync::Arc;

use datafusion::arrow::array::Array;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use serde_json::{Map, Value};

use crate::snapshot::SnapshotStore;

/// A query's result and the freshness of the snapshots it read.
pub struct SqlResult {
    pub batches: Vec<RecordBatch>,
    pub schema: datafusion::arrow::datatypes::SchemaRef,
    /// The smallest `asOfEpoch` among the views registered for the query.
    pub as_of: u64,
    pub truncated: bool,
}

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// Not a read-only query, or invalid SQL (the client's fault).
    #[error("{0}")]
    Invalid(String),
    /// The engine failed while running a valid query.
    #[error("query failed: {0}")]
    Execution(String),
}

/// Runs `sql` over the current snapshots, returning at most `row_limit` rows.
pub async fn run(store: &SnapshotStore, sql: &str, row_limit: usize) -> Result<SqlResult, SqlError> {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
    let mut as_of = u64::MAX;
    for view in 0..store.len() {
        let def = store.def(view);
        let snap = store.snapshot(view);
        as_of = as_of.min(snap.as_of);
        let batches = snap.batches();
        let mut partitions: Vec<Vec<RecordBatch>> = vec![Vec::new(), Vec::new()];
        for (i, b) in batches.into_iter().enumerate() {
            partitions[i % 2].push(b);
        }
        let table =
            MemTable::try_new(def.arrow_schema(), partitions).map_err(|e| SqlError::Execution(e.to_string()))?;
        ctx.register_table(def.name, Arc::new(table)).map_err(|e| SqlError::Execution(e.to_string()))?;
    }
    let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
    let df = ctx.sql_with_options(sql, options).await.map_err(classify)?;
    let df = df.limit(0, Some(row_limit.saturating_add(1))).map_err(classify)?;
    let schema = Arc::new(df.schema().as_arrow().clone());
    let mut batches = df.collect().await.map_err(classify)?;
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let truncated = total > row_limit;
    if truncated {
        let mut left = row_limit;
        for b in &mut batches {
            let take = b.num_rows().min(left);
            *b = b.slice(0, take);
            left -= take;
        }
    }
    Ok(SqlResult { batches, schema, as_of: if as_of == u64::MAX { 0 } else { as_of }, truncated })
}

fn classify(e: DataFusionError) -> SqlError {
    match e {
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_) => SqlError::Invalid(e.to_string()),
        DataFusionError::Context(_, inner) => classify(*inner),
        other => SqlError::Execution(other.to_string()),
    }
}

/// Result rows as JSON objects keyed by column name.
pub fn batches_to_json(batches: &[RecordBatch]) -> Vec<Value> {
    let mut out = Vec::new();
    for b in batches {
        let schema = b.schema();
        for i in 0..b.num_rows() {
            let mut map = Map::with_capacity(b.num_columns());
            for (field, col) in schema.fields().iter().zip(b.columns()) {
                map.insert(field.name().clone(), cell_to_json(col.as_ref(), i));
            }
            out.push(Value::Object(map));
        }
    }
    out
}

fn cell_to_json(col: &dyn Array, i: usize) -> Value {
    if col.is_null(i) {
        return Value::Null;
    }
    let Ok(v) = ScalarValue::try_from_array(col, i) else { return Value::Null };
    match v {
        ScalarValue::Boolean(Some(b)) => Value::Bool(b),
        ScalarValue::Int8(Some(x)) => x.into(),
        ScalarValue::Int16(Some(x)) => x.into(),
        ScalarValue::Int32(Some(x)) => x.into(),
        ScalarValue::Int64(Some(x)) => x.into(),
        ScalarValue::UInt8(Some(x)) => x.into(),
        ScalarValue::UInt16(Some(x)) => x.into(),
        ScalarValue::UInt32(Some(x)) => x.into(),
        ScalarValue::UInt64(Some(x)) => x.into(),
        ScalarValue::Float32(Some(x)) => serde_json::Number::from_f64(f64::from(x)).map_or(Value::Null, Value::Number),
        ScalarValue::Float64(Some(x)) => serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number),
        ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => {
            Value::String(s)
        }
        ScalarValue::Date32(Some(d)) => {
            Value::String(vitalflow_schemas::time::days_to_date(d).format("%Y-%m-%d").to_string())
        }
        ScalarValue::TimestampMillisecond(Some(ms), _) => Value::String(vitalflow_schemas::time::format_instant(ms)),
        other => Value::String(other.to_string()),
    }
}
