//! A query's deadline and batch bound inside its physical plan.
//!
//! Aborting the query's task stops it only at its next yield, and an operator that pulls batches
//! in a loop without yielding (the build side of a nested-loop or cross join, counting billions of
//! generated rows) never yields. So every node of the plan is wrapped in a [`DeadlineExec`] that
//! checks the deadline each time a batch crosses it: past the deadline the pull fails, the loop
//! ends, and the work stops with the query.
//!
//! The same wrapper bounds every batch that crosses a node: an operator that copies a value once
//! per output row (a cross join, `unnest`, a window) builds its output outside DataFusion's memory
//! pool, so a batch larger than `max_batch_bytes` fails the query (422 `QUERY_TOO_EXPENSIVE`)
//! before the next one is built.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::StreamExt;

/// Most rows one partition's stream may pass through one node (2^27, about 134 million).
const MAX_ROWS_PER_STREAM: usize = 1 << 27;

/// The message of the error a pull past the deadline fails with (the caller answers 408).
pub(crate) const DEADLINE_PASSED: &str = "vitalflow: the query passed its deadline";

/// `plan` with every node wrapped in a [`DeadlineExec`] for `deadline` and `max_batch_bytes`.
/// The inputs of window operators, which buffer a whole partition without reserving memory, are
/// charged to the query's memory pool as they arrive.
pub(crate) fn wrap(
    plan: Arc<dyn ExecutionPlan>,
    deadline: Instant,
    max_batch_bytes: usize,
) -> Result<Arc<dyn ExecutionPlan>> {
    wrap_node(plan, deadline, max_batch_bytes, false)
}

fn wrap_node(
    plan: Arc<dyn ExecutionPlan>,
    deadline: Instant,
    max_batch_bytes: usize,
    charged: bool,
) -> Result<Arc<dyn ExecutionPlan>> {
    let buffers = BUFFERING_WITHOUT_RESERVATION.contains(&plan.name());
    let children: Vec<Arc<dyn ExecutionPlan>> = plan
        .children()
        .into_iter()
        .map(|c| wrap_node(c.clone(), deadline, max_batch_bytes, buffers))
        .collect::<Result<_>>()?;
    let input = if children.is_empty() { plan } else { replace_children_if_necessary(plan, children)? };
    Ok(Arc::new(DeadlineExec { input, deadline, max_batch_bytes, charged }))
}

/// Operators that hold their whole input (a partition) without a memory reservation of their own.
/// (`BoundedWindowAggExec` drops the rows its frames no longer need, so it is not charged: a bounded
/// window over a view larger than the pool runs.)
const BUFFERING_WITHOUT_RESERVATION: &[&str] = &["WindowAggExec"];

/// Passes its input's batches through until `deadline`, refusing any batch over
/// `max_batch_bytes`. Transparent otherwise: same properties, statistics and downcast identity as
/// its input.
#[derive(Debug)]
pub(crate) struct DeadlineExec {
    input: Arc<dyn ExecutionPlan>,
    deadline: Instant,
    max_batch_bytes: usize,
    /// Whether the batches are charged to the query's memory pool (held until the stream ends):
    /// the input of an operator that buffers it without reserving memory.
    charged: bool,
}

impl DisplayAs for DeadlineExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "DeadlineExec: max_batch_bytes={}, charged={}", self.max_batch_bytes, self.charged)
    }
}

impl ExecutionPlan for DeadlineExec {
    fn name(&self) -> &str {
        "DeadlineExec"
    }

    fn downcast_delegate(&self) -> Option<&dyn ExecutionPlan> {
        Some(self.input.as_ref())
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    #[allow(deprecated)]
    fn with_new_children(self: Arc<Self>, mut children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal("DeadlineExec has one child".into()));
        }
        Ok(Arc::new(DeadlineExec {
            input: children.swap_remove(0),
            deadline: self.deadline,
            max_batch_bytes: self.max_batch_bytes,
            charged: self.charged,
        }))
    }

    fn execute(&self, partition: usize, ctx: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let mut reservation =
            self.charged.then(|| MemoryConsumer::new("vitalflow: window input").register(ctx.memory_pool()));
        let inner = self.input.execute(partition, ctx)?;
        let schema = inner.schema();
        let (deadline, max_bytes) = (self.deadline, self.max_batch_bytes);
        let mut rows: usize = 0;
        let stream = inner.map(move |batch| {
            if Instant::now() >= deadline {
                return Err(DataFusionError::Execution(DEADLINE_PASSED.into()));
            }
            let batch = batch?;
            // Rows without columns (`count(*)` over a cross join) weigh nothing per batch, yet an
            // operator that buffers them (a join's build side) grows by millions of batches.
            rows = rows.saturating_add(batch.num_rows());
            if rows > MAX_ROWS_PER_STREAM {
                return Err(DataFusionError::ResourcesExhausted(format!(
                    "more than {MAX_ROWS_PER_STREAM} rows crossed one operator"
                )));
            }
            let bytes: usize = batch.columns().iter().map(|c| super::guard::array_bytes(c.as_ref())).sum();
            if bytes > max_bytes {
                return Err(DataFusionError::ResourcesExhausted(format!(
                    "an operator built a batch of {bytes} bytes; the limit is {max_bytes}"
                )));
            }
            if let Some(r) = reservation.as_mut() {
                r.try_grow(batch.get_array_memory_size())?;
            }
            Ok(batch)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }

    #[allow(deprecated)]
    fn partition_statistics(&self, partition: Option<usize>) -> Result<Arc<datafusion::common::Statistics>> {
        self.input.partition_statistics(partition)
    }
}
