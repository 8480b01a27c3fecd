//! A query's deadline inside its physical plan. Aborting the query's task stops it only at its
//! next yield, and an operator that pulls batches in a loop without yielding (the build side of a
//! nested-loop or cross join, counting billions of generated rows) never yields. So every node of
//! the plan is wrapped in a [`DeadlineExec`] that checks the deadline each time a batch crosses
//! it: past the deadline the pull fails, the loop ends, and the work stops with the query.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::StreamExt;

/// The message of the error a pull past the deadline fails with (the caller answers 408).
pub(crate) const DEADLINE_PASSED: &str = "vitalflow: the query passed its deadline";

/// `plan` with every node wrapped in a [`DeadlineExec`] for `deadline`.
pub(crate) fn wrap(plan: Arc<dyn ExecutionPlan>, deadline: Instant) -> Result<Arc<dyn ExecutionPlan>> {
    Ok(plan
        .transform_up(|node| {
            Ok(Transformed::yes(Arc::new(DeadlineExec { input: node, deadline }) as Arc<dyn ExecutionPlan>))
        })?
        .data)
}

/// Passes its input's batches through until `deadline`, then fails the pull. Transparent
/// otherwise: same properties, statistics and downcast identity as its input.
#[derive(Debug)]
pub(crate) struct DeadlineExec {
    input: Arc<dyn ExecutionPlan>,
    deadline: Instant,
}

impl DisplayAs for DeadlineExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        self.input.fmt_as(t, f)
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
        Ok(Arc::new(DeadlineExec { input: children.swap_remove(0), deadline: self.deadline }))
    }

    fn execute(&self, partition: usize, ctx: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let inner = self.input.execute(partition, ctx)?;
        let schema = inner.schema();
        let deadline = self.deadline;
        let stream = inner.map(move |batch| {
            if Instant::now() >= deadline { Err(DataFusionError::Execution(DEADLINE_PASSED.into())) } else { batch }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }

    #[allow(deprecated)]
    fn partition_statistics(&self, partition: Option<usize>) -> Result<Arc<datafusion::common::Statistics>> {
        self.input.partition_statistics(partition)
    }
}
