//! Read-only SQL over the current snapshots: one DataFusion table per view (DOMAIN.md §8 names),
//! built from the snapshot's shards without copying them, on a thread pool of its own and under
//! limits.
//!
//! ```text
//!  POST /v1/sql ─▶ SqlEngine::run: text ≤ max_sql_bytes, a permit (max_concurrent)
//!                   └▶ task on the SQL runtime (`threads` workers, 64 MiB stacks), aborted at `timeout`
//!                       ├▶ tables: every shard, or under RowVisibility::User(u) only u's shards
//!                       ├▶ parse (nesting ≤ RECURSION_LIMIT), check the shape (sql/shape.rs),
//!                       │   plan, guard values (sql/guard.rs)
//!                       └▶ execute with a memory pool of memory_limit_bytes, no spilling;
//!                           stop at row_limit rows or max_result_bytes (truncated)
//! ```
//!
//! What bounds a query's memory: DataFusion's pool sees the state of aggregates (`string_agg`,
//! `array_agg`, grouping tables), sorts, joins' build sides and repartitioning; [`guard`] bounds
//! what the pool does not see (values built by scalar functions and `||`, constants repeated per
//! row); the result is capped here. Still unbounded: operators that copy a value once per output
//! row (a join, `unnest`, a window) multiply whatever value reaches them by their fan-out.
//!
//! What bounds a query's time: at `timeout` the task is aborted, which stops it at its next
//! yield; an operator that pulls batches in a loop without yielding (a cross join's build side)
//! is stopped by [`deadline`]: every plan node fails its next pull past the deadline. Planning
//! does not yield; [`shape`] keeps plans small enough to plan in well under a second. One scalar
//! call runs to its end: the quadratic one (`levenshtein`) is bounded in work by the guard.

mod deadline;
mod guard;
mod shape;
mod table;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Array, StringArray};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::compute::kernels::cmp::eq;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::common::config::ConfigNonZeroUsize;
use datafusion::common::runtime::SpawnedTask;
use datafusion::error::DataFusionError;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::GreedyMemoryPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::{SessionStateBuilder, SessionStateDefaults};
use datafusion::logical_expr::ScalarUDF;
use datafusion::sql::sqlparser::parser::ParserError;
use futures::StreamExt;
use serde_json::{Map, Value};
use tokio::sync::Semaphore;
use vitalflow_schemas::ViewDef;
use vitalflow_schemas::auth::RowVisibility;

use crate::snapshot::{SnapshotStore, ViewSnapshot};
use guard::{GuardRule, Guarded, ValueLimits};

/// Deepest nesting of expressions and subqueries the SQL parser accepts (DataFusion's
/// `sql_parser.recursion_limit`). Deeper queries are refused instead of overflowing a stack.
pub const RECURSION_LIMIT: usize = 50;

pub use shape::{MAX_EXPRESSION_DEPTH, MAX_RELATIONS};

/// Stack of each SQL thread (reserved, touched only as used). Planning recurses over plans and
/// expressions; at the shape limits (sql/shape.rs) a debug build uses under a quarter of it.
const STACK_BYTES: usize = 64 << 20;

/// The column that makes a view per-user.
const USER_COLUMN: &str = "user_id";

/// Limits of `POST /v1/sql`. Byte figures count values: a string's length, 8 per number, a list's
/// elements.
#[derive(Clone, Debug)]
pub struct SqlLimits {
    /// Most rows a result returns; beyond it the result is cut and says `truncated: true`.
    pub row_limit: usize,
    /// Most bytes of values a result returns (16 MiB); beyond them the result is cut and says
    /// `truncated: true`.
    pub max_result_bytes: usize,
    /// Longest a query may take, planning included (10 s); then its task is aborted and the
    /// answer is 408 `QUERY_TIMEOUT`.
    pub timeout: Duration,
    /// Memory a query's operators may reserve (256 MiB) in DataFusion's pool, with spilling to
    /// disk disabled; one function call may build a quarter of it. Beyond: 422
    /// `QUERY_TOO_EXPENSIVE`.
    pub memory_limit_bytes: usize,
    /// Largest single value (string, binary, list) a function may build (256 KiB); larger: 422
    /// `QUERY_TOO_EXPENSIVE`.
    pub max_value_bytes: usize,
    /// Queries running at once (4); beyond: 429 `TOO_MANY_QUERIES` with `Retry-After`.
    pub max_concurrent: usize,
    /// Worker threads of the SQL runtime (2), apart from the runtime that serves ingestion and
    /// reads; also the partitions of each query.
    pub threads: usize,
    /// Longest SQL text accepted (64 KiB); longer: 413 `QUERY_TOO_LARGE`.
    pub max_sql_bytes: usize,
}

impl Default for SqlLimits {
    fn default() -> Self {
        SqlLimits {
            row_limit: 10_000,
            max_result_bytes: 16 << 20,
            timeout: Duration::from_secs(10),
            memory_limit_bytes: 256 << 20,
            max_value_bytes: 256 << 10,
            max_concurrent: 4,
            threads: 2,
            max_sql_bytes: 64 << 10,
        }
    }
}

/// A query's result and the freshness of the snapshots it read.
pub struct SqlResult {
    pub batches: Vec<RecordBatch>,
    pub schema: SchemaRef,
    /// The smallest `asOfEpoch` among the views registered for the query.
    pub as_of: u64,
    /// Whether rows were cut at `row_limit` or `max_result_bytes`.
    pub truncated: bool,
}

/// Why a query was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// Not a read-only query, or invalid SQL (the client's fault).
    #[error("{0}")]
    Invalid(String),
    /// The text is longer than `max_sql_bytes`, nested deeper than [`RECURSION_LIMIT`], or its
    /// plan would exceed [`MAX_EXPRESSION_DEPTH`] or [`MAX_RELATIONS`].
    #[error("{0}")]
    TooLarge(String),
    /// The query needs more memory or bigger values than its limits allow.
    #[error("{0}")]
    TooExpensive(String),
    /// The query ran longer than `timeout` and was cancelled.
    #[error("the query exceeded its time limit of {0:?}")]
    Timeout(Duration),
    /// `max_concurrent` queries are running; retrying later can help.
    #[error("{0} queries are already running")]
    Busy(usize),
    /// The engine failed while running a valid query (division by zero, a bad cast).
    #[error("query failed: {0}")]
    Execution(String),
    /// The query's task panicked: a fault of the engine, not of the query.
    #[error("the query engine failed")]
    Internal,
}

/// Runs SQL on a runtime of its own: `threads` workers with large stacks, at most
/// `max_concurrent` queries, each under the [`SqlLimits`].
pub struct SqlEngine {
    /// `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    permits: Arc<Semaphore>,
    limits: SqlLimits,
    guard: Arc<GuardRule>,
    /// DataFusion's scalar functions, each wrapped in a guard.
    functions: Vec<Arc<ScalarUDF>>,
}

impl SqlEngine {
    /// Starts the SQL runtime's threads.
    ///
    /// Errors: the OS refused to start a thread.
    pub fn new(limits: SqlLimits) -> io::Result<SqlEngine> {
        let threads = limits.threads.max(1);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .max_blocking_threads(threads)
            .thread_name("vitalflow-sql")
            .thread_stack_size(STACK_BYTES)
            .enable_time()
            .build()?;
        let values = ValueLimits {
            max_value: limits.max_value_bytes,
            max_call: limits.memory_limit_bytes / 4,
            // A projection repeats a constant once per row of a batch.
            max_constant: limits.memory_limit_bytes / BATCH_ROWS,
        };
        let functions =
            SessionStateDefaults::default_scalar_functions().into_iter().map(|f| Guarded::wrap(f, values)).collect();
        Ok(SqlEngine {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            permits: Arc::new(Semaphore::new(limits.max_concurrent.max(1))),
            limits,
            guard: Arc::new(GuardRule { limits: values }),
            functions,
        })
    }

    /// The limits queries run under.
    pub fn limits(&self) -> &SqlLimits {
        &self.limits
    }

    /// Runs `sql` over the current snapshots, seeing what `visibility` allows: under
    /// [`RowVisibility::User`] every per-user view (one with a `user_id` column) holds only that
    /// user's rows, so joins, subqueries and aggregates cannot reach other users; views without
    /// `user_id` (reference data such as `products`) are whole.
    pub async fn run(
        &self,
        store: Arc<SnapshotStore>,
        sql: String,
        visibility: RowVisibility,
    ) -> Result<SqlResult, SqlError> {
        if sql.len() > self.limits.max_sql_bytes {
            return Err(SqlError::TooLarge(format!(
                "the query has {} bytes; the limit is {}",
                sql.len(),
                self.limits.max_sql_bytes
            )));
        }
        let permit =
            self.permits.clone().try_acquire_owned().map_err(|_| SqlError::Busy(self.limits.max_concurrent))?;
        let query = Query { limits: self.limits.clone(), guard: self.guard.clone(), functions: self.functions.clone() };
        let deadline = std::time::Instant::now() + self.limits.timeout;
        let task = {
            let _runtime = self.handle.enter();
            SpawnedTask::spawn(async move {
                // Held until the task ends or, once aborted, stops at its next yield: a query that
                // timed out keeps counting against `max_concurrent` while it still runs.
                let _permit = permit;
                query.execute(&store, &sql, &visibility, deadline).await
            })
        };
        // Dropping the task (on timeout, or when the client goes away) aborts it.
        match tokio::time::timeout(self.limits.timeout, task).await {
            Err(_) => Err(SqlError::Timeout(self.limits.timeout)),
            Ok(Err(e)) => {
                if e.is_panic() {
                    metrics::counter!("vitalflow_panics_caught_total", "component" => "sql").increment(1);
                    tracing::error!("a SQL query panicked inside the engine; answered 500 INTERNAL");
                }
                Err(SqlError::Internal)
            }
            Ok(Ok(Err(SqlError::Timeout(_)))) => Err(SqlError::Timeout(self.limits.timeout)),
            Ok(Ok(result)) => result,
        }
    }
}

impl Drop for SqlEngine {
    fn drop(&mut self) {
        // Dropping a runtime blocks until its tasks stop, which is not allowed inside another
        // runtime (the router is dropped inside one).
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// DataFusion's batch size, which the constant limit assumes. Small, so that an operator copying
/// a large value per row builds a bounded batch (`BATCH_ROWS` × `max_value_bytes` per column at
/// most) before [`deadline`]'s batch bound refuses it.
const BATCH_ROWS: usize = 1024;

/// What one query's task needs.
struct Query {
    limits: SqlLimits,
    guard: Arc<GuardRule>,
    functions: Vec<Arc<ScalarUDF>>,
}

impl Query {
    async fn execute(
        self,
        store: &SnapshotStore,
        sql: &str,
        visibility: &RowVisibility,
        deadline: std::time::Instant,
    ) -> Result<SqlResult, SqlError> {
        let ctx = self.context()?;
        let as_of = register_views(&ctx, store, visibility, self.limits.threads.max(1))?;
        let state = ctx.state();
        let dialect = state.config().options().sql_parser.dialect;
        let statement = state.sql_to_statement(sql, &dialect).map_err(classify)?;
        shape::check(&statement).map_err(SqlError::Invalid)?.map_err(SqlError::TooLarge)?;
        let plan = state.statement_to_plan(statement).await.map_err(classify)?;
        let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
        options.verify_plan(&plan).map_err(classify)?;
        // EXPLAIN must stay the plan's root; its output is a few rows anyway.
        let explain = matches!(
            plan,
            datafusion::logical_expr::LogicalPlan::Explain(_) | datafusion::logical_expr::LogicalPlan::Analyze(_)
        );
        let df = ctx.execute_logical_plan(plan).await.map_err(classify)?;
        let df =
            if explain { df } else { df.limit(0, Some(self.limits.row_limit.saturating_add(1))).map_err(classify)? };
        let schema = Arc::new(df.schema().as_arrow().clone());
        let task_ctx = Arc::new(df.task_ctx());
        let plan = df.create_physical_plan().await.map_err(classify)?;
        let plan = deadline::wrap(plan, deadline, self.limits.memory_limit_bytes / 4).map_err(classify)?;
        let stream = datafusion::physical_plan::execute_stream(plan, task_ctx).map_err(classify)?;
        let (batches, truncated) = collect(stream, self.limits.row_limit, self.limits.max_result_bytes).await?;
        Ok(SqlResult { batches, schema, as_of: if as_of == u64::MAX { 0 } else { as_of }, truncated })
    }

    /// A session with the guarded functions, a memory pool of its own and no disk.
    fn context(&self) -> Result<SessionContext, SqlError> {
        let mut config = SessionConfig::new()
            .with_target_partitions(self.limits.threads.max(1))
            .with_batch_size(BATCH_ROWS)
            .with_information_schema(false);
        let options = config.options_mut();
        options.sql_parser.recursion_limit = ConfigNonZeroUsize::try_new(RECURSION_LIMIT).map_err(classify)?;
        // The guards are rules: an error of theirs must stop the query, not be skipped.
        options.optimizer.skip_failed_rules = false;
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(GreedyMemoryPool::new(self.limits.memory_limit_bytes)))
            .with_disk_manager_builder(DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled))
            .build_arc()
            .map_err(classify)?;
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_scalar_functions(self.functions.clone())
            .with_analyzer_rule(self.guard.clone())
            .with_optimizer_rule(self.guard.clone())
            .build();
        Ok(SessionContext::new_with_state(state))
    }
}

/// Registers one table per view with the rows `visibility` may see; returns the smallest
/// `asOfEpoch` among them.
fn register_views(
    ctx: &SessionContext,
    store: &SnapshotStore,
    visibility: &RowVisibility,
    partitions: usize,
) -> Result<u64, SqlError> {
    let mut as_of = u64::MAX;
    for view in 0..store.len() {
        let def = store.def(view);
        let snap = store.snapshot(view);
        as_of = as_of.min(snap.as_of);
        let table = table::ViewTable {
            def: *def,
            schema: def.arrow_schema(),
            snap,
            visibility: visibility.clone(),
            partitions,
        };
        ctx.register_table(def.name, Arc::new(table)).map_err(classify)?;
    }
    Ok(as_of)
}

/// The view's batches `visibility` may see: under `User(u)` only u's rows of a per-user view.
fn visible_batches(
    def: &ViewDef,
    snap: &ViewSnapshot,
    visibility: &RowVisibility,
) -> Result<Vec<RecordBatch>, SqlError> {
    let user = match visibility {
        RowVisibility::All => return Ok(snap.batches()),
        RowVisibility::User(user) => user,
    };
    match def.column_index(USER_COLUMN) {
        None => Ok(snap.batches()),
        // The first column shards the snapshot: the user's shard holds exactly their rows.
        Some(0) => Ok(snap.user(user).map(|shard| shard.batches().cloned().collect()).unwrap_or_default()),
        Some(col) => {
            let wanted = StringArray::new_scalar(user.as_str());
            snap.batches()
                .into_iter()
                .map(|b| {
                    let keep = eq(b.column(col), &wanted).map_err(|e| SqlError::Execution(e.to_string()))?;
                    filter_record_batch(&b, &keep).map_err(|e| SqlError::Execution(e.to_string()))
                })
                .collect()
        }
    }
}

/// Reads the stream until it ends or the result reaches `row_limit` rows or `max_bytes` bytes of
/// values; returns the batches and whether rows were cut. Stopping early drops the stream, which
/// stops the query.
async fn collect(
    mut stream: datafusion::execution::SendableRecordBatchStream,
    row_limit: usize,
    max_bytes: usize,
) -> Result<(Vec<RecordBatch>, bool), SqlError> {
    let (mut batches, mut rows, mut bytes) = (Vec::new(), 0usize, 0usize);
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(classify)?;
        let (take, used) = rows_within(&batch, row_limit - rows, max_bytes - bytes);
        rows += take;
        bytes += used;
        if take < batch.num_rows() {
            if take > 0 {
                batches.push(batch.slice(0, take));
            }
            return Ok((batches, true));
        }
        batches.push(batch);
    }
    Ok((batches, false))
}

/// How many leading rows of `batch` fit in `rows` rows and `bytes` bytes, and their bytes.
/// A row costs its values' bytes plus, per column, its name and a few bytes of JSON punctuation
/// (a JSON result repeats every column name on every row).
fn rows_within(batch: &RecordBatch, rows: usize, bytes: usize) -> (usize, usize) {
    let (mut taken, mut used) = (0, 0usize);
    let per_row: usize = batch.schema().fields().iter().map(|f| f.name().len() + 8).sum();
    while taken < batch.num_rows().min(rows) {
        let row: usize = per_row + batch.columns().iter().map(|c| guard::value_bytes(c.as_ref(), taken)).sum::<usize>();
        if used + row > bytes {
            break;
        }
        used += row;
        taken += 1;
    }
    (taken, used)
}

fn classify(e: DataFusionError) -> SqlError {
    let root = e.find_root();
    match root {
        DataFusionError::Execution(m) if m == deadline::DEADLINE_PASSED => SqlError::Timeout(Duration::ZERO),
        DataFusionError::ResourcesExhausted(m) => SqlError::TooExpensive(m.clone()),
        DataFusionError::SQL(p, _) if matches!(**p, ParserError::RecursionLimitExceeded) => SqlError::TooLarge(
            format!("the query nests expressions or subqueries deeper than {RECURSION_LIMIT} levels"),
        ),
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_) => SqlError::Invalid(root.to_string()),
        // The engine's own invariants, not the caller's mistake: its text names internals (and
        // asks for a bug report upstream), so the caller gets a stable sentence and the log the rest.
        DataFusionError::Internal(m) => {
            tracing::warn!(error = %m, "SQL engine internal error");
            SqlError::Execution("the query engine cannot run this query (an internal error of the engine)".into())
        }
        _ => SqlError::Execution(e.to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_engine_internal_error_keeps_its_internals_out_of_the_answer() {
        let e = DataFusionError::Internal("PhysicalExpr Column references column 'x' at index 3".into());
        let SqlError::Execution(message) = classify(e) else { panic!("an internal error is QUERY_FAILED") };
        assert!(!message.contains("index 3") && !message.contains("PhysicalExpr"), "{message}");
        let SqlError::Execution(message) = classify(DataFusionError::Execution("division by zero".into())) else {
            panic!("an execution error is QUERY_FAILED")
        };
        assert!(message.contains("division by zero"), "{message}");
    }
}
