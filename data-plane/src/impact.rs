//! Facts for the reviewer, asked of PostgreSQL before a held statement is
//! filed, on a connection of the proxy's own made with the connection's
//! credential (never the agent's session):
//!
//! * the estimate: `EXPLAIN (VERBOSE, FORMAT JSON)` of the exact held text
//!   with its bound parameters, never `ANALYZE`, in a `READ ONLY`
//!   transaction under a short `statement_timeout`;
//! * the dry run (a rule's `dry_run: true`): the statement itself, inside
//!   `BEGIN` ... `ROLLBACK` under `statement_timeout` and `lock_timeout`,
//!   with the rows each table gained, changed or lost read from
//!   PostgreSQL's per-transaction counters (`pg_stat_xact_user_tables`),
//!   so foreign-key cascades and trigger writes count too.
//!
//! Whether a statement may be tried at all is the policy crate's call
//! (`airlock_policy::trial`), made at judgement. Neither ever fails the
//! hold: a failure or a timeout becomes the `unavailable` reason shown.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use crate::upstream::query::{Row, extended, simple};
use crate::upstream::{Upstream, UpstreamConfig};
use airlock_eventlog::proto;

/// How long the estimate and the dry run may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The estimate's `statement_timeout`, and its whole budget with the
    /// connection's login.
    pub estimate: Duration,
    /// The dry run's `statement_timeout`.
    pub dry_run: Duration,
    /// The dry run's `lock_timeout`: the longest it waits for a row or
    /// table lock another transaction holds.
    pub dry_run_locks: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            estimate: Duration::from_secs(2),
            dry_run: Duration::from_secs(5),
            dry_run_locks: Duration::from_secs(1),
        }
    }
}

/// The estimate for `statement`; `refused` is why it may not be planned.
pub async fn estimate(
    upstream: &UpstreamConfig,
    statement: &proto::Statement,
    refused: Option<&str>,
    limits: Limits,
) -> proto::ImpactEstimate {
    let started = Instant::now();
    let unavailable = |why: String| proto::ImpactEstimate {
        unavailable: why,
        took: prost_types::Duration::try_from(started.elapsed()).ok(),
        ..Default::default()
    };
    if let Some(why) = refused {
        return unavailable(format!("not estimated: {why}"));
    }
    // The login counts against the budget too, with a second of grace
    // for the answer after PostgreSQL's own timeout.
    let budget = limits.estimate + Duration::from_secs(1);
    match tokio::time::timeout(budget, explain(upstream, statement, limits.estimate)).await {
        Err(_) => unavailable(format!("no estimate within {}", secs(budget))),
        Ok(Err(e)) => unavailable(format!("no estimate: {e}")),
        Ok(Ok(mut e)) => {
            e.took = prost_types::Duration::try_from(started.elapsed()).ok();
            e
        }
    }
}

/// The dry run of `statement`; `refused` is why it may not be tried.
pub async fn dry_run(
    upstream: &UpstreamConfig,
    statement: &proto::Statement,
    refused: Option<&str>,
    limits: Limits,
) -> proto::DryRun {
    let started_at = SystemTime::now();
    let started = Instant::now();
    let mut run = match refused {
        Some(why) => proto::DryRun {
            unavailable: format!("not dry-run: {why}"),
            ..Default::default()
        },
        None => {
            let budget = limits.dry_run + limits.dry_run_locks + Duration::from_secs(2);
            match tokio::time::timeout(budget, try_and_roll_back(upstream, statement, limits)).await {
                Ok(run) => run,
                Err(_) => proto::DryRun {
                    unavailable: format!("the dry run did not finish within {}", secs(budget)),
                    ..Default::default()
                },
            }
        }
    };
    run.started_at = Some(started_at.into());
    run.took = prost_types::Duration::try_from(started.elapsed()).ok();
    run
}

/// PostgreSQL's error, in the reviewer's terms where it has some.
fn failure(sqlstate: &str, message: &str) -> String {
    if sqlstate == "42601" && message.contains("multiple commands") {
        "the text holds several statements, and PostgreSQL plans or runs one at a time on its own".into()
    } else {
        format!("{message} ({sqlstate})")
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

async fn side_connection(upstream: &UpstreamConfig) -> Result<Upstream, String> {
    let params = [("application_name".to_owned(), "airlock-impact".to_owned())];
    Upstream::connect(upstream, &params)
        .await
        .map_err(|e| format!("the database could not be reached ({e})"))
}

async fn explain(
    upstream: &UpstreamConfig,
    statement: &proto::Statement,
    timeout: Duration,
) -> Result<proto::ImpactEstimate, String> {
    let mut up = side_connection(upstream).await?;
    let result = async {
        simple(
            &mut up,
            &format!(
                "BEGIN READ ONLY; SET LOCAL statement_timeout = {}",
                timeout.as_millis().max(1)
            ),
        )
        .await?;
        let text = format!("EXPLAIN (VERBOSE, FORMAT JSON) {}", statement.text);
        let answer = extended(&mut up, &text, &statement.parameters, true).await?;
        if let Some((sqlstate, message)) = answer.error {
            return Err(failure(&sqlstate, &message));
        }
        let plan = answer
            .rows
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten())
            .ok_or_else(|| "EXPLAIN returned no plan".to_owned())?;
        let mut estimate = read_plan(&plan).ok_or_else(|| "PostgreSQL's plan could not be read".to_owned())?;
        // Each target under the name its rows are counted by: a partition
        // or an inheritance child as its topmost parent (as COUNTS names
        // it); a target whose rows are never counted is no estimate.
        let mut tables: Vec<proto::TableRows> = Vec::new();
        for t in std::mem::take(&mut estimate.tables) {
            let (schema, name) = t.table.split_once('.').unwrap_or(("", &t.table));
            let rows = simple(&mut up, &canonical_query(schema, name)).await?;
            let row = rows.into_iter().next().unwrap_or_default();
            let field = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
            let (canonical, kind) = (field(0), field(1));
            if canonical.is_empty() || !matches!(kind.as_str(), "r" | "p") {
                return Err(format!(
                    "its target {} is not a table whose rows PostgreSQL counts (a view, a foreign table, ...)",
                    t.table
                ));
            }
            match tables.iter_mut().find(|e| e.table == canonical) {
                Some(e) => e.rows += t.rows,
                None => tables.push(proto::TableRows { table: canonical, ..t }),
            }
        }
        estimate.tables = tables;
        Ok(estimate)
    }
    .await;
    let _ = up.send(&[b'X', 0, 0, 0, 4]).await;
    result
}

async fn try_and_roll_back(
    upstream: &UpstreamConfig,
    statement: &proto::Statement,
    limits: Limits,
) -> proto::DryRun {
    let failed = |why: String, sqlstate: String| proto::DryRun {
        unavailable: why,
        error_sqlstate: sqlstate,
        ..Default::default()
    };
    let mut up = match side_connection(upstream).await {
        Ok(up) => up,
        Err(e) => return failed(format!("not dry-run: {e}"), String::new()),
    };
    let run = async {
        simple(
            &mut up,
            &format!(
                "BEGIN; SET LOCAL statement_timeout = {}; SET LOCAL lock_timeout = {}",
                limits.dry_run.as_millis().max(1),
                limits.dry_run_locks.as_millis().max(1)
            ),
        )
        .await
        .map_err(|e| (e, String::new()))?;
        counting(&mut up).await.map_err(|e| (e, String::new()))?;
        let before = counts(&mut up).await.map_err(|e| (e, String::new()))?;
        let answer = extended(&mut up, &statement.text, &statement.parameters, false)
            .await
            .map_err(|e| (e, String::new()))?;
        if let Some((sqlstate, message)) = answer.error {
            let why = match sqlstate.as_str() {
                "55P03" => format!(
                    "the dry run waited longer than {} for a lock another transaction holds ({message})",
                    secs(limits.dry_run_locks)
                ),
                "57014" => format!(
                    "the dry run took longer than {} ({message})",
                    secs(limits.dry_run)
                ),
                _ => format!("the dry run failed: {}", failure(&sqlstate, &message)),
            };
            return Err((why, sqlstate));
        }
        // Deferred constraint triggers would fire only at a COMMIT that
        // never comes: fired now, so what they write counts too.
        simple(&mut up, "SET CONSTRAINTS ALL IMMEDIATE")
            .await
            .map_err(|e| (format!("the dry run failed: {e}"), String::new()))?;
        let after = counts(&mut up).await.map_err(|e| (e, String::new()))?;
        Ok((answer.tags.join("; "), changed(&before, &after)))
    }
    .await;
    // Rolled back whatever happened; the connection closes after it.
    let _ = simple(&mut up, "ROLLBACK").await;
    let _ = up.send(&[b'X', 0, 0, 0, 4]).await;
    match run {
        Ok((command_tag, tables)) => proto::DryRun {
            tables,
            command_tag,
            ..Default::default()
        },
        Err((why, sqlstate)) => failed(why, sqlstate),
    }
}

/// Per-table counts of this transaction's writes, as `schema.table`: a
/// partition's, or an inheritance child's, under its topmost parent. Run
/// inside the agent's session too, so every function and operator is
/// `pg_catalog`'s by name: the session's search path cannot put others in
/// their place.
pub(crate) const COUNTS: &str = "WITH RECURSIVE up(relid, top, depth) AS ( \
       SELECT s.relid, s.relid, 0 FROM pg_catalog.pg_stat_xact_user_tables s \
       UNION ALL \
       SELECT up.relid, i.inhparent, up.depth OPERATOR(pg_catalog.+) 1 \
         FROM up JOIN pg_catalog.pg_inherits i ON i.inhrelid OPERATOR(pg_catalog.=) up.top \
        WHERE up.depth OPERATOR(pg_catalog.<) 64) \
     SELECT pg_catalog.concat(n.nspname, '.', c.relname), s.n_tup_ins, s.n_tup_upd, s.n_tup_del \
     FROM pg_catalog.pg_stat_xact_user_tables s \
     JOIN LATERAL (SELECT up.top FROM up WHERE up.relid OPERATOR(pg_catalog.=) s.relid \
                   ORDER BY up.depth DESC LIMIT 1) r ON true \
     JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) r.top \
     JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace";

/// The name [`COUNTS`] gives the rows of the relation `schema`.`name`, and
/// the relation's kind (`r` table, `p` partitioned table, ...).
fn canonical_query(schema: &str, name: &str) -> String {
    let literal = |s: &str| format!("'{}'", s.replace('\'', "''"));
    format!(
        "WITH RECURSIVE up(top, depth) AS ( \
           SELECT c.oid, 0 FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
            WHERE n.nspname OPERATOR(pg_catalog.=) {} AND c.relname OPERATOR(pg_catalog.=) {} \
           UNION ALL \
           SELECT i.inhparent, up.depth OPERATOR(pg_catalog.+) 1 \
             FROM up JOIN pg_catalog.pg_inherits i ON i.inhrelid OPERATOR(pg_catalog.=) up.top \
            WHERE up.depth OPERATOR(pg_catalog.<) 64) \
         SELECT pg_catalog.concat(n.nspname, '.', c.relname), \
                (SELECT o.relkind::text FROM up u JOIN pg_catalog.pg_class o ON o.oid OPERATOR(pg_catalog.=) u.top \
                  WHERE u.depth OPERATOR(pg_catalog.=) 0) \
           FROM (SELECT top FROM up ORDER BY depth DESC LIMIT 1) t \
           JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) t.top \
           JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace",
        literal(schema),
        literal(name)
    )
}

/// Inserted, updated, deleted.
pub(crate) type Counts = BTreeMap<String, [u64; 3]>;

/// Refuses to count when PostgreSQL does not keep the counters: every
/// count would read zero.
async fn counting(up: &mut Upstream) -> Result<(), String> {
    let rows = simple(up, "SHOW track_counts").await?;
    match rows.first().and_then(|r| r.first()).cloned().flatten().as_deref() {
        Some("on") => Ok(()),
        other => Err(format!(
            "rows cannot be counted: PostgreSQL's track_counts is {}",
            other.unwrap_or("unknown")
        )),
    }
}

async fn counts(up: &mut Upstream) -> Result<Counts, String> {
    parse_counts(simple(up, COUNTS).await?)
}

pub(crate) fn parse_counts(rows: Vec<Row>) -> Result<Counts, String> {
    let mut out = Counts::new();
    for row in rows {
        let field = |i: usize| row.get(i).cloned().flatten();
        let table = field(0).ok_or("a count without its table")?;
        let n = |i: usize| {
            field(i)
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| format!("an unreadable count for {table}"))
        };
        let entry = out.entry(table.clone()).or_default();
        for (k, slot) in entry.iter_mut().enumerate() {
            *slot += n(k + 1)?;
        }
    }
    Ok(out)
}

/// What changed between two readings of the counters, per table.
pub(crate) fn changed(before: &Counts, after: &Counts) -> Vec<proto::TableRows> {
    after
        .iter()
        .filter_map(|(table, now)| {
            let was = before.get(table).copied().unwrap_or_default();
            let d: Vec<u64> = now.iter().zip(was).map(|(n, w)| n.saturating_sub(w)).collect();
            let rows = d.iter().sum::<u64>();
            (rows > 0).then(|| proto::TableRows {
                table: table.clone(),
                rows,
                inserted: d[0],
                updated: d[1],
                deleted: d[2],
            })
        })
        .collect()
}

/// The estimate from EXPLAIN's JSON: per target table, the rows the
/// ModifyTable node's input would hand it; the top node's own figures.
pub(crate) fn read_plan(json: &str) -> Option<proto::ImpactEstimate> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let top = v.get(0)?.get("Plan")?;
    let mut tables: BTreeMap<String, f64> = BTreeMap::new();
    // Every plan: a rule adds plans of its own (an ALSO rule's before the
    // statement's own).
    let mut stack: Vec<&serde_json::Value> = v.as_array()?.iter().filter_map(|p| p.get("Plan")).collect();
    while let Some(node) = stack.pop() {
        if node.get("Node Type").and_then(|t| t.as_str()) == Some("ModifyTable") {
            let target = node
                .get("Schema")
                .and_then(|s| s.as_str())
                .zip(node.get("Relation Name").and_then(|r| r.as_str()))
                .map(|(s, r)| format!("{s}.{r}"));
            // Since PostgreSQL 14 a ModifyTable without RETURNING says 0
            // rows: what it acts on is its input's.
            let rows = node
                .get("Plans")
                .and_then(|p| p.get(0))
                .and_then(|p| p.get("Plan Rows"))
                .or_else(|| node.get("Plan Rows"))
                .and_then(|r| r.as_f64())
                .unwrap_or(0.0);
            if let Some(t) = target {
                *tables.entry(t).or_default() += rows;
            }
        }
        if let Some(children) = node.get("Plans").and_then(|p| p.as_array()) {
            stack.extend(children.iter());
        }
    }
    Some(proto::ImpactEstimate {
        tables: tables
            .into_iter()
            .map(|(table, rows)| proto::TableRows {
                table,
                rows: rows.max(0.0).ceil() as u64,
                ..Default::default()
            })
            .collect(),
        top_node: top.get("Node Type")?.as_str()?.to_owned(),
        plan_rows: top.get("Plan Rows").and_then(|r| r.as_f64()).unwrap_or(0.0),
        total_cost: top.get("Total Cost").and_then(|r| r.as_f64()).unwrap_or(0.0),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delete_plan_gives_its_input_rows_for_its_table() {
        let plan = r#"[{"Plan": {"Node Type": "ModifyTable", "Operation": "Delete", "Relation Name": "orders",
            "Schema": "public", "Plan Rows": 0, "Total Cost": 12.5,
            "Plans": [{"Node Type": "Seq Scan", "Plan Rows": 9.6, "Total Cost": 12.5}]}}]"#;
        let e = read_plan(plan).expect("read");
        assert_eq!(e.top_node, "ModifyTable");
        assert_eq!(e.tables.len(), 1);
        assert_eq!(
            (e.tables[0].table.as_str(), e.tables[0].rows),
            ("public.orders", 10)
        );
        assert_eq!(e.total_cost, 12.5);
    }

    #[test]
    fn a_read_has_no_target_and_garbage_is_no_estimate() {
        let plan = r#"[{"Plan": {"Node Type": "Seq Scan", "Plan Rows": 1200, "Total Cost": 20}}]"#;
        let e = read_plan(plan).expect("read");
        assert!(e.tables.is_empty());
        assert_eq!(e.plan_rows, 1200.0);
        assert!(read_plan("not json").is_none());
        assert!(read_plan("[]").is_none());
    }

    #[test]
    fn counts_add_partitions_up_and_only_changes_show() {
        let row = |t: &str, i: &str, u: &str, d: &str| {
            vec![Some(t.into()), Some(i.into()), Some(u.into()), Some(d.into())]
        };
        let before = parse_counts(vec![row("public.orders", "0", "0", "2")]).expect("counts");
        let after = parse_counts(vec![
            row("public.orders", "0", "0", "5"),
            row("public.orders", "0", "0", "4"),
            row("public.audit", "7", "0", "0"),
        ])
        .expect("counts");
        let d = changed(&before, &after);
        assert_eq!(d.len(), 2);
        assert_eq!(
            (d[0].table.as_str(), d[0].inserted, d[0].rows),
            ("public.audit", 7, 7)
        );
        assert_eq!(
            (d[1].table.as_str(), d[1].deleted, d[1].rows),
            ("public.orders", 7, 7)
        );
        assert!(parse_counts(vec![row("public.x", "a", "0", "0")]).is_err());
        assert!(parse_counts(vec![vec![None]]).is_err());
    }
}
