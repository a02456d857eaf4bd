//! The default row bounds of an approval, which the control plane puts on
//! a grant and the reviewer UI offers to change: what the reviewer was
//! shown of the statement's impact, so both ends must agree on it.

use crate::v1::{ApprovalRequested, TableBound};

/// What was measured of the statement: whether a dry run ran (then the
/// reviewer was shown every table it changes), and whether an estimate
/// was had. Neither: the statement is not bounded unless a reviewer sets
/// bounds.
pub fn measured(asked: &ApprovalRequested) -> (bool, bool) {
    let impact = asked.impact.as_ref();
    let dry = impact
        .and_then(|i| i.dry_run.as_ref())
        .is_some_and(|d| d.unavailable.is_empty());
    let estimate = impact
        .and_then(|i| i.estimate.as_ref())
        .is_some_and(|e| e.unavailable.is_empty());
    (dry, estimate)
}

/// The statement's own target tables first (the estimate's), each bounded
/// by the dry run's exact count (0 when the dry run changed none of it) or,
/// without a dry run, by [`from_estimate`]; then every other table the dry
/// run changed (cascades, trigger writes), by its count. Empty when
/// nothing was measured.
pub fn default_bounds(asked: &ApprovalRequested) -> Vec<TableBound> {
    let impact = asked.impact.as_ref();
    let dry = impact
        .and_then(|i| i.dry_run.as_ref())
        .filter(|d| d.unavailable.is_empty());
    let estimate = impact
        .and_then(|i| i.estimate.as_ref())
        .filter(|e| e.unavailable.is_empty());
    let mut out: Vec<TableBound> = Vec::new();
    for t in estimate.map(|e| e.tables.as_slice()).unwrap_or_default() {
        let max_rows = match dry {
            Some(d) => d.tables.iter().find(|c| c.table == t.table).map_or(0, |c| c.rows),
            None => from_estimate(t.rows),
        };
        out.push(TableBound {
            table: t.table.clone(),
            max_rows,
        });
    }
    for t in dry.map(|d| d.tables.as_slice()).unwrap_or_default() {
        if !out.iter().any(|b| b.table == t.table) {
            out.push(TableBound {
                table: t.table.clone(),
                max_rows: t.rows,
            });
        }
    }
    out
}

/// The bound an estimate of `rows` gives: an estimate is the planner's
/// guess, often off by a few rows or a factor of two on small or freshly
/// changed tables, so the bound is twice it plus ten. That still stops the
/// runaway statement (thousands of rows where a handful were shown); a
/// dry run's exact count bounds tightly, and a reviewer can set any bound.
pub fn from_estimate(rows: u64) -> u64 {
    rows.saturating_mul(2).saturating_add(10)
}
