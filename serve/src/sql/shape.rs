//! The shape of a parsed query, checked before DataFusion plans it. Planning and optimizing walk
//! plans and expressions recursively and without yielding, so a deep or huge plan can overflow a
//! thread's stack (which aborts the process) or hold a SQL thread past any timeout. The parser's
//! recursion limit counts only nesting in the text; these are plan-shaped:
//!
//! - expression depth: `1+1+…+1` and `a OR b OR …` parse into trees as deep as they are long;
//! - relations: every `SELECT` block and every table reference, a reference to a CTE (outside the
//!   CTE bodies) counting the relations of that CTE: DataFusion inlines a CTE at each reference,
//!   so a chain of CTEs that each reference the previous one twice doubles the plan at every
//!   link. A long `FROM` list, join chain or `UNION` becomes a plan as deep as it is long.

use std::collections::HashMap;
use std::ops::ControlFlow;

use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{Expr, ObjectName, Query, Select, Statement, Visit, Visitor, visit_relations};

/// Deepest expression tree accepted.
pub const MAX_EXPRESSION_DEPTH: usize = 256;
/// Most relations (SELECT blocks and table references, CTEs counted as inlined) accepted.
pub const MAX_RELATIONS: u64 = 128;

/// Refuses a statement that is not a query, or whose plan would exceed the limits above; the
/// error says which (`Ok(Err)` is a refusal of the query's size, `Err` a statement that is not
/// a query).
pub(crate) fn check(statement: &DfStatement) -> Result<Result<(), String>, String> {
    match statement {
        DfStatement::Statement(s) if matches!(**s, Statement::Query(_)) => Ok(check_query(s)),
        DfStatement::Explain(e) => check(&e.statement),
        _ => Err("only read-only queries (SELECT, WITH, VALUES, EXPLAIN) are allowed".to_owned()),
    }
}

fn check_query(statement: &Statement) -> Result<(), String> {
    let mut shape = Shape::default();
    match statement.visit(&mut shape) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(message) => Err(message),
    }
}

#[derive(Default)]
struct Shape {
    depth: usize,
    relations: u64,
    /// Relations of each CTE seen so far, by lowercase name.
    ctes: HashMap<String, u64>,
    /// The CTE bodies seen so far (by address: the tree does not move while visited), and how
    /// many of them the visit is inside. A body is planned once, so its references count 1; a
    /// reference elsewhere counts the whole CTE.
    bodies: Vec<*const Query>,
    in_body: usize,
}

impl Shape {
    fn add_relations(&mut self, n: u64) -> ControlFlow<String> {
        self.relations = self.relations.saturating_add(n);
        if self.relations > MAX_RELATIONS {
            return ControlFlow::Break(format!(
                "the query's plan would join, union or inline more than {MAX_RELATIONS} relations"
            ));
        }
        ControlFlow::Continue(())
    }

    /// Relations a reference to `name` brings in: a CTE's, or 1 for a table.
    fn weight(&self, name: &ObjectName) -> u64 {
        let last = name.0.last().and_then(|p| p.as_ident()).map(|i| i.value.to_lowercase());
        last.and_then(|n| self.ctes.get(&n).copied()).unwrap_or(1)
    }
}

impl Visitor for Shape {
    type Break = String;

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<String> {
        if self.bodies.contains(&std::ptr::from_ref(query)) {
            self.in_body += 1;
        }
        // Before the CTE bodies are visited: their references count the CTEs they name.
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                self.bodies.push(std::ptr::from_ref(cte.query.as_ref()));
                let mut inner = 1u64;
                let _ = visit_relations(&cte.query, |name| {
                    inner = inner.saturating_add(self.weight(name));
                    ControlFlow::<()>::Continue(())
                });
                self.ctes.insert(cte.alias.name.value.to_lowercase(), inner);
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, query: &Query) -> ControlFlow<String> {
        if self.bodies.contains(&std::ptr::from_ref(query)) {
            self.in_body -= 1;
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, _select: &Select) -> ControlFlow<String> {
        self.add_relations(1)
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<String> {
        let weight = if self.in_body > 0 { 1 } else { self.weight(relation) };
        self.add_relations(weight)
    }

    fn pre_visit_expr(&mut self, _expr: &Expr) -> ControlFlow<String> {
        self.depth += 1;
        if self.depth > MAX_EXPRESSION_DEPTH {
            return ControlFlow::Break(format!(
                "the query nests expressions deeper than {MAX_EXPRESSION_DEPTH} levels (a long chain of \
                 operators such as a OR b OR … counts as deep; IN (…) does not)"
            ));
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, _expr: &Expr) -> ControlFlow<String> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }
}
