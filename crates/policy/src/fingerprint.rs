//! A statement's fingerprint: what a scoped grant ("allow statements like
//! this one") is bound to. Pure.
//!
//! The statement is parsed, and its tree normalised before it is printed:
//! every literal and parameter (`$1`) in a value position becomes `?` (see
//! `Normalise`: compared with or assigned to a column, or a row of VALUES;
//! elsewhere a literal is part of the shape), an IN list of nothing but such
//! values becomes one, a VALUES list whose rows are alike becomes one row,
//! and identifiers are folded as PostgreSQL folds them (unquoted ones to
//! lower case; quoted ones kept). Comments and
//! whitespace are gone with the parse. The fingerprint is SHA-256 over that
//! text and the statement's effects as judged (each kind with its
//! resolved tables), so two statements share one only if they read alike
//! and act alike on the same tables: `orders` resolved through another
//! search path is another fingerprint.
//!
//! Only statements a grant may cover get one ([`grantable`]): one parsed
//! statement whose effects are all row reads and writes (SELECT, INSERT,
//! UPDATE, DELETE, MERGE) on named tables. A literal can be code (a
//! function's SQL argument, a cast to `regclass`), so nothing that calls a
//! function not known to only read, runs a procedure, changes the schema,
//! a setting or a role is ever covered by a shape: those are held every
//! time.

use std::ops::ControlFlow;

use sha2::{Digest, Sha256};
use sqlparser::ast::{
    BinaryOperator, Expr, Ident, InTarget, Query, SetExpr, Statement, UnaryOperator, Value, ValueWithSpan,
    VisitMut, VisitorMut,
};

use crate::classify::{ANY_RELATION, Effect};
use crate::kind::Kind;

/// The fingerprint of one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// Hex SHA-256 over the version, the normalised text and the effects.
    pub hash: String,
    /// The normalised text, as shown to reviewers.
    pub normalized: String,
}

/// The kinds a grant may cover.
pub const GRANTABLE_KINDS: &[Kind] = &[
    Kind::Select,
    Kind::Insert,
    Kind::Update,
    Kind::Delete,
    Kind::Merge,
];

/// Bumped whenever normalisation changes: a grant made under one version
/// never matches a statement fingerprinted under another.
const VERSION: &str = "airlock-fingerprint-v1";

/// Whether a grant may cover a statement with `effects`: `Err` says why
/// not, for the reviewer who asked.
pub fn grantable(effects: &[&Effect]) -> Result<(), String> {
    if effects.is_empty() {
        return Err("the statement has no effect a grant could name".into());
    }
    for e in effects {
        if !GRANTABLE_KINDS.contains(&e.kind) {
            return Err(format!(
                "it {} ({}): a grant covers only reads and row writes (SELECT, INSERT, UPDATE, DELETE, MERGE); \
                 this is held every time",
                match e.kind {
                    Kind::Function | Kind::Call => "calls code not known to only read",
                    _ => "is not a row read or write",
                },
                e.kind.name()
            ));
        }
        if !e.functions.is_empty() {
            return Err(format!(
                "it calls {}, not known to only read: a grant never covers calls",
                e.functions.join(", ")
            ));
        }
        if e.kind != Kind::Select && e.tables.is_empty() {
            return Err(format!("its {} target is not resolved to a table", e.kind.name()));
        }
        if e.tables.iter().any(|t| t == ANY_RELATION || t.ends_with(".*")) {
            return Err("it acts on relations it does not name".into());
        }
    }
    Ok(())
}

/// The fingerprint of `sql` with its judged `effects`, or why it has none
/// (several statements, unparsed text, or effects a grant may not cover).
pub fn fingerprint(sql: &str, effects: &[&Effect]) -> Result<Fingerprint, String> {
    grantable(effects)?;
    let mut statement = crate::classify::parse_one(sql)?;
    if matches!(statement, Statement::Execute { .. } | Statement::Prepare { .. }) {
        // EXECUTE's shape is its prepared statement's, which the session
        // may make again with other text: never covered.
        return Err("it runs a prepared statement by name".into());
    }
    let mut normalise = Normalise::default();
    let _ = statement.visit(&mut normalise);
    if normalise.loose_parameter {
        return Err(
            "a parameter stands where it could decide which rows match (not compared with a column or \
             assigned to one)"
                .into(),
        );
    }
    let normalized = statement.to_string();
    let mut acts: Vec<String> = effects
        .iter()
        .map(|e| {
            let mut tables = e.tables.clone();
            tables.sort();
            tables.dedup();
            format!("{} {}", e.kind.name(), tables.join(","))
        })
        .collect();
    acts.sort();
    acts.dedup();
    let mut h = Sha256::new();
    for part in [VERSION, &normalized, &acts.join(";")] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    Ok(Fingerprint {
        hash: hex::encode(h.finalize()),
        normalized,
    })
}

/// Values to `?` where they are values, lists of them to one, identifiers
/// folded. A literal becomes `?` only in a value position: compared with a
/// column (`id = 42`, `id IN (1, 2)`, `id BETWEEN 1 AND 9`, `id =
/// ANY('{1,2}')`), assigned to one (`SET total = 0`), or a row of VALUES.
/// Anywhere else a literal is part of the shape (`OR 1 = 1` is not `OR 1
/// = 2`; `LIMIT 10` is not `LIMIT NULL`; `interval '30 days'` is not
/// `interval '1 day'`), and NULL is never a value. A parameter outside a
/// value position (`WHERE $1`, `COALESCE($1, id)`, `$1 IS NULL`, `LIMIT
/// $1`) could decide which rows match: the statement has no shape.
#[derive(Default)]
struct Normalise {
    loose_parameter: bool,
}

fn placeholder() -> Value {
    Value::Placeholder("?".into())
}

fn is_placeholder(e: &Expr) -> bool {
    matches!(e, Expr::Value(ValueWithSpan { value: Value::Placeholder(p), .. }) if p == "?")
}

/// A literal or parameter, possibly signed or cast: one value.
fn value_like(e: &Expr) -> bool {
    match e {
        Expr::Value(v) => !matches!(v.value, Value::Null),
        Expr::TypedString(_) => true,
        Expr::Cast { expr, .. } => value_like(expr),
        Expr::UnaryOp {
            op: UnaryOperator::Minus | UnaryOperator::Plus,
            expr,
        } => matches!(expr.as_ref(), Expr::Value(v) if !matches!(v.value, Value::Null)),
        Expr::Nested(inner) => value_like(inner),
        _ => false,
    }
}

fn is_column(e: &Expr) -> bool {
    match e {
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) => true,
        Expr::Nested(inner) => is_column(inner),
        _ => false,
    }
}

/// `e` as `?` if it is one value.
fn to_value(e: &mut Expr) {
    if value_like(e) {
        *e = Expr::value(placeholder());
    }
}

fn comparison(op: &BinaryOperator) -> bool {
    matches!(
        op,
        BinaryOperator::Eq
            | BinaryOperator::NotEq
            | BinaryOperator::Lt
            | BinaryOperator::LtEq
            | BinaryOperator::Gt
            | BinaryOperator::GtEq
    )
}

impl VisitorMut for Normalise {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        match expr {
            Expr::BinaryOp { left, op, right } if comparison(op) => {
                if is_column(left) {
                    to_value(right);
                } else if is_column(right) {
                    to_value(left);
                }
            }
            Expr::In {
                expr: column,
                target: InTarget::List(list),
                ..
            } if is_column(column) => {
                list.iter_mut().for_each(to_value);
                if list.len() > 1 && list.iter().all(is_placeholder) {
                    list.truncate(1);
                }
            }
            Expr::Between {
                expr: column,
                low,
                high,
                ..
            } if is_column(column) => {
                to_value(low);
                to_value(high);
            }
            Expr::AnyOp { left, right, .. } | Expr::AllOp { left, right, .. } if is_column(left) => {
                to_value(right)
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, statement: &mut Statement) -> ControlFlow<()> {
        if let Statement::Update(u) = statement {
            for a in &mut u.assignments {
                to_value(&mut a.value);
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        if let SetExpr::Values(values) = query.body.as_mut() {
            for row in &mut values.rows {
                row.iter_mut().for_each(to_value);
            }
            let mut rows = std::mem::take(&mut values.rows);
            rows.dedup();
            values.rows = rows;
        }
        ControlFlow::Continue(())
    }

    fn post_visit_value(&mut self, value: &mut ValueWithSpan) -> ControlFlow<()> {
        if let Value::Placeholder(p) = &value.value
            && p != "?"
        {
            self.loose_parameter = true;
        }
        ControlFlow::Continue(())
    }

    fn post_visit_ident(&mut self, ident: &mut Ident) -> ControlFlow<()> {
        if ident.quote_style.is_none() {
            // PostgreSQL folds unquoted names to lower case (ASCII only).
            ident.value.make_ascii_lowercase();
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
fn parsed(sql: &str) -> Statement {
    crate::classify::parse_one(sql).expect("one statement")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn effect(kind: Kind, tables: &[&str]) -> Effect {
        Effect {
            kind,
            tables: tables.iter().map(|t| (*t).to_owned()).collect(),
            functions: Vec::new(),
            has_where: None,
        }
    }

    fn fp(sql: &str, effects: &[Effect]) -> Fingerprint {
        let refs: Vec<&Effect> = effects.iter().collect();
        fingerprint(sql, &refs).expect("a fingerprint")
    }

    fn delete_orders() -> Vec<Effect> {
        vec![effect(Kind::Delete, &["public.orders"])]
    }

    #[test]
    fn literals_parameters_case_comments_and_space_do_not_matter() {
        let a = fp("DELETE FROM orders WHERE id = $1", &delete_orders());
        for same in [
            "delete from ORDERS where ID = 42",
            "DELETE  FROM orders\n WHERE id = '42' -- the stale one",
            "/* cleanup */ DELETE FROM Orders WHERE Id = $2",
            "DELETE FROM orders WHERE id = 7;",
        ] {
            assert_eq!(fp(same, &delete_orders()), a, "{same}");
        }
        assert_eq!(a.normalized, "DELETE FROM orders WHERE id = ?");
        assert_eq!(a.hash.len(), 64);
    }

    #[test]
    fn in_lists_and_values_rows_collapse() {
        let one = fp("DELETE FROM orders WHERE id IN (1)", &delete_orders());
        let many = fp("DELETE FROM orders WHERE id IN (1, 2, $3, 'x')", &delete_orders());
        assert_eq!(one, many);
        let ins = vec![effect(Kind::Insert, &["public.t"])];
        let a = fp("INSERT INTO t (a, b) VALUES (1, 'x')", &ins);
        let b = fp("INSERT INTO t (a, b) VALUES (2, 'y'), (3, 'z'), ($1, $2)", &ins);
        assert_eq!(a, b);
        // An IN list holding a column or an expression keeps its shape.
        let col = fp(
            "DELETE FROM orders WHERE id IN (1, customer_id)",
            &delete_orders(),
        );
        assert_ne!(col, one);
    }

    #[test]
    fn quoted_names_are_not_folded() {
        let plain = fp("DELETE FROM orders WHERE id = 1", &delete_orders());
        let quoted = fp("DELETE FROM orders WHERE \"ID\" = 1", &delete_orders());
        assert_ne!(plain, quoted);
        let quoted_lower = fp("DELETE FROM orders WHERE \"id\" = 1", &delete_orders());
        // "id" and id are one column to PostgreSQL; the texts differ in
        // their quotes, so the shapes do too: stricter, never looser.
        assert_ne!(plain.normalized, quoted_lower.normalized);
    }

    #[test]
    fn another_table_kind_column_set_or_clause_is_another_fingerprint() {
        let base = fp("DELETE FROM orders WHERE id = 1", &delete_orders());
        let other_table = fp(
            "DELETE FROM invoices WHERE id = 1",
            &[effect(Kind::Delete, &["public.invoices"])],
        );
        let same_text_other_resolution = fp(
            "DELETE FROM orders WHERE id = 1",
            &[effect(Kind::Delete, &["archive.orders"])],
        );
        let other_kind = fp(
            "UPDATE orders SET state = 'x' WHERE id = 1",
            &[effect(Kind::Update, &["public.orders"])],
        );
        let other_column = fp("DELETE FROM orders WHERE customer_id = 1", &delete_orders());
        let added_clause = fp("DELETE FROM orders WHERE id = 1 OR true", &delete_orders());
        let no_where = fp("DELETE FROM orders", &delete_orders());
        let returning = fp("DELETE FROM orders WHERE id = 1 RETURNING *", &delete_orders());
        let upd = vec![effect(Kind::Update, &["public.orders"])];
        let set_a = fp("UPDATE orders SET a = 1 WHERE id = 2", &upd);
        let set_ab = fp("UPDATE orders SET a = 1, b = 2 WHERE id = 2", &upd);
        let all = [
            &base,
            &other_table,
            &same_text_other_resolution,
            &other_kind,
            &other_column,
            &added_clause,
            &no_where,
            &returning,
            &set_a,
            &set_ab,
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a.hash, b.hash, "{} / {}", a.normalized, b.normalized);
            }
        }
    }

    #[test]
    fn only_row_reads_and_writes_on_named_tables_are_grantable() {
        let call = {
            let mut e = effect(Kind::Function, &[]);
            e.functions = vec!["pg_catalog.dblink_exec".into()];
            e
        };
        for (sql, effects) in [
            (
                "DELETE FROM orders WHERE id = 1; DELETE FROM orders",
                delete_orders(),
            ),
            ("DROP TABLE orders", vec![effect(Kind::Drop, &["public.orders"])]),
            ("SELECT dblink_exec('c', 'DELETE FROM x')", vec![call]),
            (
                "TRUNCATE orders",
                vec![effect(Kind::Truncate, &["public.orders"])],
            ),
            ("DELETE FROM orders WHERE id = 1", vec![effect(Kind::Delete, &[])]),
            (
                "DELETE FROM orders WHERE id = 1",
                vec![effect(Kind::Delete, &["*.*"])],
            ),
            ("DELETE FROM orders WHERE id = 1", vec![]),
            ("this is not sql", delete_orders()),
        ] {
            let refs: Vec<&Effect> = effects.iter().collect();
            assert!(fingerprint(sql, &refs).is_err(), "{sql}");
        }
    }

    /// Review findings: literals that decide which rows match are part of
    /// the shape, and a parameter that could decide it leaves no shape.
    #[test]
    fn literals_outside_value_positions_are_part_of_the_shape() {
        let sel = vec![effect(Kind::Select, &["public.customers"])];
        let upd = vec![effect(Kind::Update, &["public.orders"])];
        for (a, b, effects) in [
            (
                "SELECT * FROM customers LIMIT 10",
                "SELECT * FROM customers LIMIT NULL",
                &sel,
            ),
            (
                "DELETE FROM orders WHERE id = 42 OR false",
                "DELETE FROM orders WHERE id = 42 OR true",
                &delete_orders(),
            ),
            (
                "DELETE FROM orders WHERE id = 42 OR 1 = 2",
                "DELETE FROM orders WHERE id = 42 OR 1 = 1",
                &delete_orders(),
            ),
            (
                "UPDATE orders SET state = 'void' WHERE customer_id = COALESCE(42, customer_id)",
                "UPDATE orders SET state = 'void' WHERE customer_id = COALESCE(NULL, customer_id)",
                &upd,
            ),
            (
                "DELETE FROM orders WHERE id = 42",
                "DELETE FROM orders WHERE id = NULL",
                &delete_orders(),
            ),
            (
                "DELETE FROM orders WHERE placed < now() - interval '30 days'",
                "DELETE FROM orders WHERE placed < now() - interval '1 second'",
                &delete_orders(),
            ),
            (
                "DELETE FROM orders WHERE note LIKE 'x%'",
                "DELETE FROM orders WHERE note LIKE '%'",
                &delete_orders(),
            ),
        ] {
            assert_ne!(fp(a, effects).hash, fp(b, effects).hash, "{a} / {b}");
        }
        for sql in [
            "DELETE FROM orders WHERE ($1::int IS NULL OR id = $1)",
            "DELETE FROM orders WHERE $1",
            "DELETE FROM orders WHERE id = 1 OR $1",
            "UPDATE orders SET state = 'x' WHERE customer_id = COALESCE($1, customer_id)",
            "SELECT * FROM orders LIMIT $1",
        ] {
            let effects = if sql.starts_with("UPDATE") {
                upd.clone()
            } else if sql.starts_with("SELECT") {
                vec![effect(Kind::Select, &["public.orders"])]
            } else {
                delete_orders()
            };
            let refs: Vec<&Effect> = effects.iter().collect();
            assert!(fingerprint(sql, &refs).is_err(), "{sql}");
        }
        // EXECUTE takes its shape from a statement the session may make
        // again: none.
        assert!(fingerprint("EXECUTE p(42)", &delete_orders().iter().collect::<Vec<_>>()).is_err());
        // Values compared with or assigned to columns still vary.
        assert_eq!(
            fp(
                "UPDATE orders SET state = 'void', total = -1 WHERE id BETWEEN 1 AND 9",
                &upd
            ),
            fp(
                "UPDATE orders SET state = $1, total = 7 WHERE id BETWEEN $2 AND 20",
                &upd
            )
        );
        assert_eq!(
            fp("DELETE FROM orders WHERE id = ANY('{1,2}')", &delete_orders()),
            fp("DELETE FROM orders WHERE id = ANY($1)", &delete_orders())
        );
    }

    #[test]
    fn typed_literals_are_literals() {
        let sel = vec![effect(Kind::Select, &["public.orders"])];
        let a = fp("SELECT * FROM orders WHERE placed < DATE '2024-01-01'", &sel);
        let b = fp("SELECT * FROM orders WHERE placed < DATE '1999-12-31'", &sel);
        assert_eq!(a, b);
        assert!(!a.normalized.contains("2024"), "{}", a.normalized);
    }

    #[test]
    fn the_printed_shape_parses_again() {
        let s = parsed("DELETE FROM orders WHERE id IN (1, 2) AND note = 'x'");
        assert!(matches!(s, sqlparser::ast::Statement::Delete(_)));
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// Same shape, any literal values: same fingerprint.
            #[test]
            fn any_values_same_fingerprint(id in any::<i64>(), note in "[a-zA-Z0-9 ']{0,20}", n in 1usize..6) {
                let quoted = note.replace('\'', "''");
                let list: Vec<String> = (0..n).map(|i| (id.wrapping_add(i as i64)).to_string()).collect();
                let sql = format!("DELETE FROM orders WHERE id IN ({}) AND note = '{quoted}'", list.join(", "));
                let a = fp(&sql, &delete_orders());
                let b = fp("DELETE FROM orders WHERE id IN ($1) AND note = $2", &delete_orders());
                prop_assert_eq!(a, b);
            }

            /// Another column in the WHERE clause: another fingerprint.
            #[test]
            fn another_column_another_fingerprint(col in "c_[a-z_]{0,8}") {
                let a = fp("DELETE FROM orders WHERE id = 1", &delete_orders());
                let b = fp(&format!("DELETE FROM orders WHERE {col} = 1"), &delete_orders());
                prop_assert_ne!(a.hash, b.hash);
            }
        }
    }
}
