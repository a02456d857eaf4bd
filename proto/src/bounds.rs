//! The default row bounds of an approval, which the control plane puts on
//! a grant and the reviewer UI offers to change: what the reviewer was
//! shown of the statement's impact, so both ends must agree on it.

use crate::v1::{ApprovalRequested, TableBound};

/// The dry run's count of each table it changed, if it ran; else, from
/// the estimate of each target table, [`from_estimate`]; else none (the
/// statement runs unbounded unless a reviewer sets bounds).
pub fn default_bounds(asked: &ApprovalRequested) -> Vec<TableBound> {
    let impact = asked.impact.as_ref();
    let dry = impact
        .and_then(|i| i.dry_run.as_ref())
        .filter(|d| d.unavailable.is_empty());
    let estimate = impact
        .and_then(|i| i.estimate.as_ref())
        .filter(|e| e.unavailable.is_empty());
    let mut tables = match (dry, estimate) {
        (Some(d), _) => d.tables.clone(),
        (None, Some(e)) => {
            let mut t = e.tables.clone();
            for t in &mut t {
                t.rows = from_estimate(t.rows);
            }
            t
        }
        (None, None) => return Vec::new(),
    };
    // The statement's own targets (the estimate's) first, then what it
    // reaches (cascades, triggers): the first bound is the one a reviewer
    // thinks of.
    let target = |t: &str| estimate.is_some_and(|e| e.tables.iter().any(|e| e.table == t));
    tables.sort_by_key(|t| !target(&t.table));
    tables
        .into_iter()
        .map(|t| TableBound {
            table: t.table,
            max_rows: t.rows,
        })
        .collect()
}

/// The bound an estimate of `rows` gives: an estimate is the planner's
/// guess, often off by a few rows or a factor of two on small or freshly
/// changed tables, so the bound is twice it plus ten. That still stops the
/// runaway statement (thousands of rows where a handful were shown); a
/// dry run's exact count bounds tightly, and a reviewer can set any bound.
pub fn from_estimate(rows: u64) -> u64 {
    rows.saturating_mul(2).saturating_add(10)
}
