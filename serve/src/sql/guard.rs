//! Bounds on the values a query's expressions build. DataFusion's memory pool tracks the state of
//! operators (aggregates, sorts, the build side of joins) but not the arrays a scalar function
//! returns, nor a constant that a projection repeats once per row. So:
//!
//! ```text
//!  every scalar function ─▶ Guarded: estimate before the call (the sum of its arguments; for
//!                            functions whose output can dwarf their input, such as repeat, lpad,
//!                            range, replace, a bound of their own), measure after it
//!  a || b                ─▶ checked(a || b): measures the value
//!  the optimized plan    ─▶ no constant larger than max_constant (a projection repeats it per row)
//! ```
//!
//! [`GuardRule`] installs the wrappers as the last analyzer rule (before any constant folding)
//! and checks again as the last optimizer rule. A refusal is a `ResourcesExhausted` error.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, FieldRef, IntervalMonthDayNanoType, TimeUnit};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::ExprSchemable;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::preimage::PreimageResult;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ExpressionPlacement, LogicalPlan, Operator, ReturnFieldArgs,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, StructFieldMapping, Volatility,
};
use datafusion::optimizer::{AnalyzerRule, OptimizerConfig, OptimizerRule};

/// Limits on the values expressions build, in bytes of values (a string's length, 8 per number,
/// a list's elements).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ValueLimits {
    /// Largest single value (string, binary, list) a function may return.
    pub max_value: usize,
    /// Largest output of one function call (one batch of rows).
    pub max_call: usize,
    /// Largest constant the optimized plan may hold.
    pub max_constant: usize,
}

fn refuse(message: String) -> DataFusionError {
    DataFusionError::ResourcesExhausted(message)
}

/// A scalar function with its output bounded; everything else is the wrapped function's.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct Guarded {
    inner: Arc<ScalarUDF>,
    limits: ValueLimits,
}

impl Guarded {
    /// `udf` guarded (unchanged if it already is).
    pub(crate) fn wrap(udf: Arc<ScalarUDF>, limits: ValueLimits) -> Arc<ScalarUDF> {
        if is_guarded(&udf) {
            return udf;
        }
        Arc::new(ScalarUDF::new_from_impl(Guarded { inner: udf, limits }))
    }

    fn f(&self) -> &dyn ScalarUDFImpl {
        self.inner.inner().as_ref()
    }
}

fn is_guarded(udf: &ScalarUDF) -> bool {
    udf.inner().downcast_ref::<Guarded>().is_some() || udf.inner().downcast_ref::<Checked>().is_some()
}

impl ScalarUDFImpl for Guarded {
    fn name(&self) -> &str {
        self.f().name()
    }
    fn aliases(&self) -> &[String] {
        self.f().aliases()
    }
    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.f().schema_name(args)
    }
    #[allow(deprecated)]
    fn display_name(&self, args: &[Expr]) -> Result<String> {
        self.f().display_name(args)
    }
    fn signature(&self) -> &Signature {
        self.f().signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.f().return_type(arg_types)
    }
    fn with_updated_config(&self, config: &ConfigOptions) -> Option<ScalarUDF> {
        let updated = self.f().with_updated_config(config)?;
        Some(ScalarUDF::new_from_impl(Guarded { inner: Arc::new(updated), limits: self.limits }))
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.f().return_field_from_args(args)
    }
    #[allow(deprecated)]
    fn is_nullable(&self, args: &[Expr], schema: &dyn datafusion::common::ExprSchema) -> bool {
        self.f().is_nullable(args, schema)
    }
    fn is_strict(&self) -> bool {
        self.f().is_strict()
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = self.f().name();
        precheck(name, &args, &self.limits)?;
        let out = self.f().invoke_with_args(args)?;
        postcheck(name, &out, &self.limits)?;
        Ok(out)
    }
    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        // A simplification may call functions by their unguarded singletons (`concat_ws` with an
        // empty separator becomes `concat`).
        Ok(match self.f().simplify(args, info)? {
            ExprSimplifyResult::Simplified(e) => {
                ExprSimplifyResult::Simplified(guard_expr(e, self.limits, false)?.data)
            }
            original => original,
        })
    }
    fn preimage(&self, args: &[Expr], lit_expr: &Expr, info: &SimplifyContext) -> Result<PreimageResult> {
        self.f().preimage(args, lit_expr, info)
    }
    fn short_circuits(&self) -> bool {
        self.f().short_circuits()
    }
    fn conditional_arguments<'a>(&self, args: &'a [Expr]) -> Option<(Vec<&'a Expr>, Vec<&'a Expr>)> {
        self.f().conditional_arguments(args)
    }
    fn evaluate_bounds(&self, input: &[&Interval]) -> Result<Interval> {
        self.f().evaluate_bounds(input)
    }
    fn propagate_constraints(&self, interval: &Interval, inputs: &[&Interval]) -> Result<Option<Vec<Interval>>> {
        self.f().propagate_constraints(interval, inputs)
    }
    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.f().output_ordering(inputs)
    }
    fn preserves_lex_ordering(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.f().preserves_lex_ordering(inputs)
    }
    fn strictly_order_preserving(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.f().strictly_order_preserving(inputs)
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.f().coerce_types(arg_types)
    }
    fn struct_field_mapping(&self, literal_args: &[Option<ScalarValue>]) -> Option<StructFieldMapping> {
        self.f().struct_field_mapping(literal_args)
    }
    fn documentation(&self) -> Option<&Documentation> {
        self.f().documentation()
    }
    fn placement(&self, args: &[ExpressionPlacement]) -> ExpressionPlacement {
        self.f().placement(args)
    }
}

/// The identity on one value, refusing it when it exceeds the limits: wraps operators that build
/// values (`a || b`). Named after its argument, so output columns keep their names.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct Checked {
    signature: Signature,
    limits: ValueLimits,
}

fn checked(expr: Expr, limits: ValueLimits) -> Expr {
    let udf = ScalarUDF::new_from_impl(Checked { signature: Signature::any(1, Volatility::Immutable), limits });
    Expr::ScalarFunction(ScalarFunction { func: Arc::new(udf), args: vec![expr] })
}

impl ScalarUDFImpl for Checked {
    fn name(&self) -> &str {
        "vitalflow_checked"
    }
    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        Ok(args.first().map(|a| a.schema_name().to_string()).unwrap_or_default())
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types.first().cloned().unwrap_or(DataType::Null))
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        args.arg_fields.first().cloned().ok_or_else(|| DataFusionError::Internal("checked takes one argument".into()))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let Some(value) = args.args.into_iter().next() else {
            return Err(DataFusionError::Internal("checked takes one argument".into()));
        };
        postcheck("||", &value, &self.limits)?;
        Ok(value)
    }
}

/// Installs the guards: as the last analyzer rule, every scalar function becomes [`Guarded`] and
/// every `a || b` is [`checked`] before the optimizer folds any constant; as the last optimizer
/// rule, functions the optimizer introduced are guarded too, and constants larger than
/// `max_constant` are refused.
#[derive(Debug)]
pub(crate) struct GuardRule {
    pub limits: ValueLimits,
}

impl AnalyzerRule for GuardRule {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.apply_with_subqueries(|p| {
            check_before_folding(p)?;
            check_aggregate_sizes(p)?;
            check_window_outputs(p)?;
            Ok(TreeNodeRecursion::Continue)
        })?;
        Ok(plan.transform_up_with_subqueries(|p| guard_plan(p, self.limits, true))?.data)
    }
    fn name(&self) -> &str {
        "vitalflow_guard_values"
    }
}

impl OptimizerRule for GuardRule {
    fn name(&self) -> &str {
        "vitalflow_guard_values"
    }
    fn rewrite(&self, plan: LogicalPlan, _config: &dyn OptimizerConfig) -> Result<Transformed<LogicalPlan>> {
        plan.transform_up_with_subqueries(|p| {
            check_constants(&p, self.limits.max_constant)?;
            check_aggregate_sizes(&p)?;
            guard_plan(p, self.limits, false)
        })
    }
}

fn guard_plan(plan: LogicalPlan, limits: ValueLimits, wrap_concat: bool) -> Result<Transformed<LogicalPlan>> {
    let names = NamePreserver::new(&plan);
    plan.map_expressions(|e| {
        let saved = names.save(&e);
        Ok(guard_expr(e, limits, wrap_concat)?.update_data(|e| saved.restore(e)))
    })
}

fn guard_expr(expr: Expr, limits: ValueLimits, wrap_concat: bool) -> Result<Transformed<Expr>> {
    expr.transform_up(|e| match e {
        Expr::ScalarFunction(f) if !is_guarded(&f.func) => Ok(Transformed::yes(Expr::ScalarFunction(ScalarFunction {
            func: Guarded::wrap(f.func, limits),
            args: f.args,
        }))),
        Expr::BinaryExpr(b) if wrap_concat && b.op == Operator::StringConcat => {
            Ok(Transformed::yes(checked(Expr::BinaryExpr(b), limits)))
        }
        e => Ok(Transformed::no(e)),
    })
}

fn check_constants(plan: &LogicalPlan, max_constant: usize) -> Result<()> {
    plan.apply_expressions(|e| {
        e.apply(|e| {
            if let Expr::Literal(v, _) = e {
                let bytes = scalar_bytes(v);
                if bytes > max_constant {
                    return Err(refuse(format!(
                        "a constant of {bytes} bytes is larger than the {max_constant} a query may repeat per row"
                    )));
                }
            }
            Ok(TreeNodeRecursion::Continue)
        })
    })?;
    Ok(())
}

/// Most centroids a t-digest aggregate may ask for. `approx_percentile_cont(v, p, n)` allocates
/// for `n` centroids up front: `n = 2^58` aborted the process on a failed allocation.
const MAX_CENTROIDS: i128 = 10_000;

/// Refuses aggregates whose size arguments make them allocate without bound.
fn check_aggregate_sizes(plan: &LogicalPlan) -> Result<()> {
    plan.apply_expressions(|e| {
        e.apply(|e| {
            // As an aggregate or as a window (`… OVER ()`): the same accumulator.
            let (name, args) = match e {
                Expr::AggregateFunction(f) => (f.func.name(), &f.params.args),
                Expr::WindowFunction(w) => (w.fun.name(), &w.params.args),
                _ => return Ok(TreeNodeRecursion::Continue),
            };
            if name.starts_with("approx_percentile_cont") {
                for arg in args {
                    if let Expr::Literal(v, _) = arg
                        && let Some(n) = integer(v)
                        && !(1..=MAX_CENTROIDS).contains(&n)
                    {
                        return Err(refuse(format!("{name} with {n} centroids; 1 to {MAX_CENTROIDS} are allowed")));
                    }
                }
            }
            Ok(TreeNodeRecursion::Continue)
        })
    })?;
    Ok(())
}

/// Refuses window functions that return values of variable width (strings, binaries, lists,
/// structs). A window operator evaluates a whole partition at once, outside DataFusion's memory
/// pool, and such a function's value per row can be as large as its frame (`array_agg(…) OVER`,
/// `string_agg`) or repeat a large value once per row (`first_value(repeat('x', 200000)) OVER`),
/// gigabytes before any batch bound sees them. Numbers, booleans and dates are fixed width.
fn check_window_outputs(plan: &LogicalPlan) -> Result<()> {
    let LogicalPlan::Window(w) = plan else { return Ok(()) };
    for e in &w.window_expr {
        let t = e.get_type(w.input.schema())?;
        if is_var_width(&t) {
            let name = match e.clone().unalias() {
                Expr::WindowFunction(f) => f.fun.name().to_owned(),
                other => other.schema_name().to_string(),
            };
            return Err(refuse(format!(
                "window function {name} returns {t}; window functions must return fixed-width values \
                 (numbers, booleans, dates), because a partition is evaluated at once outside the memory pool"
            )));
        }
    }
    Ok(())
}

/// Largest size an `arrow_cast` target type may name (a `FixedSizeList(2147483647, …)` of a null
/// allocates its whole size while the optimizer folds constants, before any other check).
const MAX_CAST_SIZE: u64 = 65_536;

/// Refuses, before the optimizer folds constants, what cannot be bounded later: `arrow_cast` to
/// types of huge fixed sizes, and regular expressions whose pattern is not a constant (each row's
/// pattern is compiled, outside the memory pool: `'\w{200}' || v` took gigabytes).
fn check_before_folding(plan: &LogicalPlan) -> Result<()> {
    plan.apply_expressions(|e| {
        e.apply(|e| {
            match e {
                Expr::ScalarFunction(f) if f.func.name() == "arrow_cast" => {
                    if let Some(Expr::Literal(ScalarValue::Utf8(Some(t)) | ScalarValue::Utf8View(Some(t)), _)) =
                        f.args.get(1)
                    {
                        let largest = t
                            .split(|c: char| !c.is_ascii_digit())
                            .filter_map(|n| n.parse::<u64>().ok().or(if n.is_empty() { None } else { Some(u64::MAX) }))
                            .max()
                            .unwrap_or(0);
                        if t.contains("FixedSize") && largest > MAX_CAST_SIZE {
                            return Err(refuse(format!(
                                "arrow_cast to a fixed size above {MAX_CAST_SIZE} is not allowed"
                            )));
                        }
                    }
                }
                Expr::ScalarFunction(f)
                    if f.func.name().starts_with("regexp_") && f.args.get(1).is_some_and(|p| !is_constant(p)) =>
                {
                    return Err(refuse(format!("{}: the pattern must be a constant", f.func.name())));
                }
                Expr::BinaryExpr(b)
                    if matches!(
                        b.op,
                        Operator::RegexMatch
                            | Operator::RegexIMatch
                            | Operator::RegexNotMatch
                            | Operator::RegexNotIMatch
                    ) && !is_constant(&b.right) =>
                {
                    return Err(refuse("a regular expression's pattern must be a constant".into()));
                }
                Expr::SimilarTo(l) if !is_constant(&l.pattern) => {
                    return Err(refuse("SIMILAR TO needs a constant pattern".into()));
                }
                _ => {}
            }
            Ok(TreeNodeRecursion::Continue)
        })
    })?;
    Ok(())
}

/// Whether `e` refers to no column (a literal, or an expression of literals).
fn is_constant(e: &Expr) -> bool {
    let mut constant = true;
    let _ = e.apply(|x| {
        if matches!(x, Expr::Column(_) | Expr::OuterReferenceColumn(..) | Expr::ScalarSubquery(_)) {
            constant = false;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    constant
}

/// An integer literal's value.
fn integer(v: &ScalarValue) -> Option<i128> {
    Some(match v {
        ScalarValue::Int8(Some(n)) => i128::from(*n),
        ScalarValue::Int16(Some(n)) => i128::from(*n),
        ScalarValue::Int32(Some(n)) => i128::from(*n),
        ScalarValue::Int64(Some(n)) => i128::from(*n),
        ScalarValue::UInt8(Some(n)) => i128::from(*n),
        ScalarValue::UInt16(Some(n)) => i128::from(*n),
        ScalarValue::UInt32(Some(n)) => i128::from(*n),
        ScalarValue::UInt64(Some(n)) => i128::from(*n),
        _ => return None,
    })
}

/// Refuses a call whose output would exceed the limits, before making it.
fn precheck(name: &str, args: &ScalarFunctionArgs, limits: &ValueLimits) -> Result<()> {
    let all_scalar = args.args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
    let rows = if all_scalar { 1 } else { args.number_rows };
    if name == "levenshtein" {
        check_quadratic(name, &args.args, rows)?;
    }
    if name == "array_position" {
        // A start index near i64::MIN overflowed inside the function (a panic).
        if let Some(ColumnarValue::Scalar(v)) = args.args.get(2)
            && integer(v).is_some_and(|n| n.unsigned_abs() > u128::from(u32::MAX))
        {
            return Err(refuse(format!("{name}: the start index is out of range")));
        }
        if let Some(ColumnarValue::Array(a)) = args.args.get(2)
            && let Ok(a) = cast(a, &DataType::Int64)
            && a.as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                .iter()
                .flatten()
                .any(|n| n.unsigned_abs() > u64::from(u32::MAX))
        {
            return Err(refuse(format!("{name}: the start index is out of range")));
        }
    }
    if is_var_width(args.return_field.data_type()) {
        // The output of most value-building functions is bounded by their arguments; the sum
        // catches fan-in such as `concat(s, s, s, …)`.
        let total = args.args.iter().fold(0usize, |acc, a| {
            acc.saturating_add(match a {
                ColumnarValue::Scalar(s) => scalar_bytes(s).saturating_mul(rows),
                ColumnarValue::Array(a) => array_bytes(a.as_ref()),
            })
        });
        if total > limits.max_call {
            return Err(refuse(format!(
                "{name} would build {total} bytes in one call; the limit is {}",
                limits.max_call
            )));
        }
    }
    let Some(per_row) = amplification(name, &args.args, rows)? else { return Ok(()) };
    let (mut total, mut largest) = (0usize, 0usize);
    for bytes in per_row {
        largest = largest.max(bytes);
        total = total.saturating_add(bytes);
    }
    if largest > limits.max_value {
        return Err(refuse(format!(
            "{name} would build a value of {largest} bytes; the limit is {}",
            limits.max_value
        )));
    }
    if total > limits.max_call {
        return Err(refuse(format!("{name} would build {total} bytes in one call; the limit is {}", limits.max_call)));
    }
    Ok(())
}

/// Most character pairs one call of a quadratic function (levenshtein: length × length per row)
/// may compare: about a second of CPU, which a timeout cannot interrupt inside the call.
const MAX_QUADRATIC_WORK: u128 = 200_000_000;

fn check_quadratic(name: &str, args: &[ColumnarValue], rows: usize) -> Result<()> {
    let len = |a: &ColumnarValue, i: usize| -> u128 {
        match a {
            ColumnarValue::Scalar(s) => scalar_bytes(s) as u128,
            ColumnarValue::Array(a) if i < a.len() => value_bytes(a.as_ref(), i) as u128,
            ColumnarValue::Array(_) => 0,
        }
    };
    let (Some(a), Some(b)) = (args.first(), args.get(1)) else { return Ok(()) };
    let mut work: u128 = 0;
    for i in 0..rows {
        work = work.saturating_add(len(a, i).saturating_mul(len(b, i)));
        if work > MAX_QUADRATIC_WORK {
            return Err(refuse(format!(
                "{name} would compare more than {MAX_QUADRATIC_WORK} character pairs in one call"
            )));
        }
    }
    Ok(())
}

/// Refuses an output that exceeds the limits.
fn postcheck(name: &str, out: &ColumnarValue, limits: &ValueLimits) -> Result<()> {
    let largest = match out {
        ColumnarValue::Scalar(s) => scalar_bytes(s),
        ColumnarValue::Array(a) => {
            let total = array_bytes(a.as_ref());
            if total > limits.max_call {
                return Err(refuse(format!(
                    "{name} built {total} bytes in one call; the limit is {}",
                    limits.max_call
                )));
            }
            if total <= limits.max_value {
                return Ok(());
            }
            (0..a.len()).map(|i| value_bytes(a.as_ref(), i)).max().unwrap_or(0)
        }
    };
    if largest > limits.max_value {
        return Err(refuse(format!("{name} built a value of {largest} bytes; the limit is {}", limits.max_value)));
    }
    Ok(())
}

/// For a function whose output can be far larger than its arguments, an upper bound on the bytes
/// of each row's output; `None` for other functions.
fn amplification(name: &str, args: &[ColumnarValue], rows: usize) -> Result<Option<Vec<usize>>> {
    let a = Args { args, rows };
    let n = args.len();
    let per_row: Vec<usize> = match name {
        "repeat" => {
            let times = a.ints(1)?;
            (0..rows).map(|r| a.bytes(0, r).saturating_mul(nonneg(&times, r))).collect()
        }
        "lpad" | "rpad" => {
            let len = a.ints(1)?;
            (0..rows)
                .map(|r| {
                    let width = if n > 2 && !a.str(2, r).is_none_or(str::is_ascii) { 4 } else { 1 };
                    a.bytes(0, r).saturating_add(nonneg(&len, r).saturating_mul(width))
                })
                .collect()
        }
        "array_repeat" => {
            let times = a.ints(1)?;
            (0..rows).map(|r| a.bytes(0, r).max(1).saturating_mul(nonneg(&times, r))).collect()
        }
        "array_resize" => {
            let len = a.ints(1)?;
            (0..rows)
                .map(|r| {
                    let element = if n > 2 { a.bytes(2, r).max(8) } else { 8 };
                    a.bytes(0, r).saturating_add(nonneg(&len, r).saturating_mul(element))
                })
                .collect()
        }
        "range" | "generate_series" => range_elements(args, rows)?.into_iter().map(|c| c.saturating_mul(8)).collect(),
        "replace" => (0..rows)
            .map(|r| {
                let (s, from, to) = (a.bytes(0, r), a.bytes(1, r), a.bytes(2, r));
                s.saturating_add((s / from.max(1)).saturating_add(1).saturating_mul(to))
            })
            .collect(),
        "regexp_replace" => (0..rows)
            .map(|r| {
                let (s, rep) = (a.bytes(0, r), a.bytes(2, r));
                // Every match (at most one per position) adds the replacement, and every group
                // reference in it adds at most the whole input over all matches.
                let refs = a.str(2, r).map_or(rep, |t| t.matches(['$', '\\']).count());
                s.saturating_add(s.saturating_add(1).saturating_mul(rep)).saturating_add(refs.saturating_mul(s))
            })
            .collect(),
        "array_to_string" => (0..rows)
            .map(|r| {
                // A list's bytes count at least one per element; an element prints in at most
                // three times its bytes, and each one adds the separator (or the null string).
                let extra = a.bytes(1, r).saturating_add(if n > 2 { a.bytes(2, r) } else { 0 });
                a.bytes(0, r).saturating_mul(extra.saturating_add(3))
            })
            .collect(),
        "concat_ws" => (0..rows)
            .map(|r| {
                let separators = a.bytes(0, r).saturating_mul(n.saturating_sub(2));
                (1..n).fold(separators, |acc, i| acc.saturating_add(a.bytes(i, r)))
            })
            .collect(),
        _ => return Ok(None),
    };
    Ok(Some(per_row))
}

fn nonneg(values: &Int64Array, row: usize) -> usize {
    if values.is_null(row) { 0 } else { usize::try_from(values.value(row).max(0)).unwrap_or(usize::MAX) }
}

/// The arguments of one call, read row by row without broadcasting constants.
struct Args<'a> {
    args: &'a [ColumnarValue],
    rows: usize,
}

impl Args<'_> {
    /// Bytes of argument `i`'s value in row `r` (0 when absent).
    fn bytes(&self, i: usize, r: usize) -> usize {
        match self.args.get(i) {
            Some(ColumnarValue::Scalar(s)) => scalar_bytes(s),
            Some(ColumnarValue::Array(a)) if r < a.len() => value_bytes(a.as_ref(), r),
            _ => 0,
        }
    }

    /// Argument `i`'s string in row `r`, if it is a non-null string.
    fn str(&self, i: usize, r: usize) -> Option<&str> {
        match self.args.get(i)? {
            ColumnarValue::Scalar(ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s)) => {
                s.as_deref()
            }
            ColumnarValue::Array(a) if r < a.len() && a.is_valid(r) => match a.data_type() {
                DataType::Utf8 => Some(a.as_string::<i32>().value(r)),
                DataType::LargeUtf8 => Some(a.as_string::<i64>().value(r)),
                DataType::Utf8View => Some(a.as_string_view().value(r)),
                _ => None,
            },
            _ => None,
        }
    }

    /// Argument `i` as 64-bit integers, one per row (all null when absent or not a number).
    fn ints(&self, i: usize) -> Result<Int64Array> {
        let Some(arg) = self.args.get(i) else { return Ok(Int64Array::new_null(self.rows)) };
        let array = arg.to_array(self.rows)?;
        match cast(&array, &DataType::Int64) {
            Ok(a) => Ok(a.as_primitive().clone()),
            Err(_) => Ok(Int64Array::new_null(self.rows)),
        }
    }
}

/// Elements of each row's `range`/`generate_series` list (integers, dates or timestamps).
fn range_elements(args: &[ColumnarValue], rows: usize) -> Result<Vec<usize>> {
    let a = Args { args, rows };
    let first = args.first().map(ColumnarValue::data_type).unwrap_or(DataType::Null);
    const DAY_NS: i128 = 86_400_000_000_000;
    let (start, stop, step_ns, unit_ns): (Int64Array, Int64Array, Option<Vec<i128>>, i128) = match first {
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(..) if args.len() == 3 => {
            let unit_ns = if matches!(first, DataType::Timestamp(..)) { 1 } else { DAY_NS };
            let as_ints = |i: usize| -> Result<Int64Array> {
                let array = args[i].to_array(rows)?;
                let array = match array.data_type() {
                    DataType::Timestamp(_, tz) => cast(&array, &DataType::Timestamp(TimeUnit::Nanosecond, tz.clone()))?,
                    _ => cast(&array, &DataType::Date32)?,
                };
                Ok(cast(&array, &DataType::Int64)?.as_primitive().clone())
            };
            let steps = args[2].to_array(rows)?;
            let steps: Vec<i128> = match steps.data_type() {
                DataType::Interval(_) => {
                    let steps =
                        cast(&steps, &DataType::Interval(datafusion::arrow::datatypes::IntervalUnit::MonthDayNano))?;
                    let steps = steps.as_primitive::<IntervalMonthDayNanoType>();
                    (0..rows)
                        .map(|r| {
                            if steps.is_null(r) {
                                return 0;
                            }
                            let (months, days, ns) = IntervalMonthDayNanoType::to_parts(steps.value(r));
                            // A month is at least 28 days: the estimate errs toward more elements.
                            i128::from(months).abs() * 28 * DAY_NS
                                + i128::from(days).abs() * DAY_NS
                                + i128::from(ns).abs()
                        })
                        .collect()
                }
                _ => vec![0; rows],
            };
            (as_ints(0)?, as_ints(1)?, Some(steps), unit_ns)
        }
        _ => match args.len() {
            1 => (Int64Array::from(vec![0; rows]), a.ints(0)?, None, 1),
            _ => (a.ints(0)?, a.ints(1)?, None, 1),
        },
    };
    let int_steps = if step_ns.is_none() && args.len() > 2 { Some(a.ints(2)?) } else { None };
    Ok((0..rows)
        .map(|r| {
            if start.is_null(r) || stop.is_null(r) {
                return 0;
            }
            let span = (i128::from(stop.value(r)) - i128::from(start.value(r))).abs() * unit_ns;
            let step = match (&step_ns, &int_steps) {
                (Some(steps), _) => steps[r],
                (None, Some(steps)) if steps.is_null(r) => 0,
                (None, Some(steps)) => i128::from(steps.value(r)).abs(),
                (None, None) => 1,
            };
            if step == 0 {
                return 0; // the function itself refuses a zero step
            }
            usize::try_from(span / step + 1).unwrap_or(usize::MAX)
        })
        .collect())
}

fn is_var_width(t: &DataType) -> bool {
    match t {
        DataType::Dictionary(_, values) => return is_var_width(values),
        DataType::RunEndEncoded(_, values) => return is_var_width(values.data_type()),
        _ => {}
    }
    matches!(
        t,
        DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::List(_)
            | DataType::LargeList(_)
            | DataType::ListView(_)
            | DataType::LargeListView(_)
            | DataType::FixedSizeList(..)
            | DataType::FixedSizeBinary(_)
            | DataType::Union(..)
            | DataType::Struct(_)
            | DataType::Map(..)
    )
}

/// Bytes of the part of `array`'s buffers that its rows use.
pub(crate) fn array_bytes(array: &dyn Array) -> usize {
    array.to_data().get_slice_memory_size().unwrap_or_else(|_| array.get_array_memory_size())
}

/// Bytes of a constant's value.
pub(crate) fn scalar_bytes(v: &ScalarValue) -> usize {
    match v {
        ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s) => {
            s.as_ref().map_or(0, String::len)
        }
        ScalarValue::Binary(b)
        | ScalarValue::LargeBinary(b)
        | ScalarValue::BinaryView(b)
        | ScalarValue::FixedSizeBinary(_, b) => b.as_ref().map_or(0, Vec::len),
        ScalarValue::List(a) => array_bytes(a.as_ref()),
        ScalarValue::LargeList(a) => array_bytes(a.as_ref()),
        ScalarValue::FixedSizeList(a) => array_bytes(a.as_ref()),
        ScalarValue::Struct(a) => array_bytes(a.as_ref()),
        ScalarValue::Map(a) => array_bytes(a.as_ref()),
        other => other.size(),
    }
}

/// Bytes of row `i`'s value: a string's length, a number's width, the sum of a list's elements
/// (at least one per element) or a struct's fields; 0 for null.
pub(crate) fn value_bytes(array: &dyn Array, i: usize) -> usize {
    if array.is_null(i) {
        return 0;
    }
    match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().value(i).len(),
        DataType::LargeUtf8 => array.as_string::<i64>().value(i).len(),
        DataType::Utf8View => array.as_string_view().value(i).len(),
        DataType::Binary => array.as_binary::<i32>().value(i).len(),
        DataType::LargeBinary => array.as_binary::<i64>().value(i).len(),
        DataType::BinaryView => array.as_binary_view().value(i).len(),
        DataType::FixedSizeBinary(w) => usize::try_from(*w).unwrap_or(0),
        DataType::List(_) => {
            let list = array.as_list::<i32>();
            let offsets = list.value_offsets();
            elements_bytes(list.values(), offsets[i].max(0) as usize, offsets[i + 1].max(0) as usize)
        }
        DataType::LargeList(_) => {
            let list = array.as_list::<i64>();
            let offsets = list.value_offsets();
            elements_bytes(list.values(), offsets[i].max(0) as usize, offsets[i + 1].max(0) as usize)
        }
        DataType::FixedSizeList(..) => {
            let list = array.as_fixed_size_list();
            let start = list.value_offset(i).max(0) as usize;
            elements_bytes(list.values(), start, start + list.value_length().max(0) as usize)
        }
        DataType::Struct(_) => array.as_struct().columns().iter().map(|c| value_bytes(c.as_ref(), i)).sum(),
        t => t.primitive_width().unwrap_or(1),
    }
}

fn elements_bytes(values: &ArrayRef, start: usize, end: usize) -> usize {
    let end = end.min(values.len());
    if let Some(width) = values.data_type().primitive_width() {
        return end.saturating_sub(start) * width;
    }
    (start..end).map(|k| value_bytes(values.as_ref(), k).max(1)).sum()
}
