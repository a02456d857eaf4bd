//! The gate reads names, literals and bound parameters as PostgreSQL does.
//!
//! Random identifiers (quoted and not, ASCII and not, longer than 63 bytes),
//! random string literals (standard, escape, dollar-quoted, with quotes,
//! backslashes, semicolons and comment markers inside) and random binary
//! parameters are given both to the proxy's own readers and to a real
//! PostgreSQL, and what each makes of them is compared. A disagreement is a
//! place where the gate could judge one statement while PostgreSQL runs
//! another. The seed is printed; `AIRLOCK_AGREEMENT_SEED=<n>` replays a run.

use airlock_policy::classify::{ClassifyContext, PreparedStatements, classify};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlparser::ast::{Expr, SelectItem, SetExpr, Statement, Value};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{NoTls, SimpleQueryMessage};

const CASES: usize = 300;

fn rng() -> StdRng {
    let seed = std::env::var("AIRLOCK_AGREEMENT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().r#gen::<u64>());
    eprintln!("pg_agreement seed: {seed} (AIRLOCK_AGREEMENT_SEED={seed} replays it)");
    StdRng::seed_from_u64(seed)
}

async fn postgres() -> tokio_postgres::Client {
    let pg = airlock_testkit::shared_postgres();
    let db = format!("agreement_{}", std::process::id());
    let _ = pg.try_psql("postgres", &format!("CREATE DATABASE {db}"));
    let (client, conn) = tokio_postgres::connect(&pg.url(&db), NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(conn);
    // What the proxy forces on every upstream session.
    client
        .batch_execute("SET client_encoding = 'UTF8'; SET standard_conforming_strings = on")
        .await
        .expect("settings");
    client
}

/// Characters that make lexing interesting.
const TRICKY: &[char] = &[
    '\'', '"', '\\', '$', ';', '-', '/', '*', ' ', '\n', '\t', 'a', 'Z', '_', '0', 'é', 'É', 'ß', '表',
    '\u{212A}', 'İ', 'ſ', 'x', 'E', 'e', 'U', '&',
];

fn tricky_text(rng: &mut StdRng, max: usize) -> String {
    let n = rng.gen_range(0..=max);
    (0..n).map(|_| TRICKY[rng.gen_range(0..TRICKY.len())]).collect()
}

/// An identifier as written in SQL, quoted or not.
fn identifier(rng: &mut StdRng) -> String {
    let letters: Vec<char> = "abcxyzABCXYZ_éÉßİ\u{212A}表".chars().collect();
    let len = rng.gen_range(1..=40);
    let word: String = (0..len)
        .map(|_| letters[rng.gen_range(0..letters.len())])
        .collect();
    match rng.gen_range(0..4) {
        0 => {
            let body = tricky_text(rng, 70);
            let body = if body.is_empty() { "x".to_owned() } else { body };
            format!("\"{}\"", body.replace('"', "\"\""))
        }
        1 => format!("\"{word}\""),
        2 => format!("{word}{}", "Q".repeat(rng.gen_range(0..40))),
        _ => word,
    }
}

/// What the proxy makes of `SELECT 1 AS <ident>`'s label: parsed by the
/// same parser, folded by the same function as every name the gate judges.
fn proxy_label(sql: &str) -> Option<String> {
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let Statement::Query(q) = statements.first()? else {
        return None;
    };
    let SetExpr::Select(s) = q.body.as_ref() else {
        return None;
    };
    match s.projection.first()? {
        SelectItem::ExprWithAlias { alias, .. } => Some(airlock_policy::ident::fold(
            &alias.value,
            alias.quote_style.is_some(),
        )),
        _ => None,
    }
}

async fn pg_label(client: &tokio_postgres::Client, sql: &str) -> Option<String> {
    let messages = client.simple_query(sql).await.ok()?;
    messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => Some(row.columns()[0].name().to_owned()),
        _ => None,
    })
}

#[tokio::test]
async fn names_fold_and_truncate_as_postgresql_folds_them() {
    let client = postgres().await;
    let mut rng = rng();
    let mut compared = 0;
    for _ in 0..CASES {
        let ident = identifier(&mut rng);
        if ident.contains('\0') || ident == "\"\"" {
            continue;
        }
        let sql = format!("SELECT 1 AS {ident}");
        let ours = proxy_label(&sql);
        let theirs = pg_label(&client, &sql).await;
        // Text only one side accepts is refused by the gate (unparsed is
        // never allowed) or by PostgreSQL: no disagreement on what runs.
        if let (Some(a), Some(b)) = (&ours, &theirs) {
            assert_eq!(a, b, "label of {sql:?}");
            compared += 1;
        }
        // The gate's own path for prepared statements: PREPARE's name.
        let prepare = format!("PREPARE {ident} AS SELECT 1");
        let prepared = PreparedStatements::new();
        let c = classify(
            &prepare,
            &ClassifyContext {
                default_schema: "public",
                prepared: &prepared,
                max_statement_bytes: 1 << 20,
                catalog: airlock_policy::Catalog::Assumed,
                session: airlock_policy::SessionNames::default(),
            },
        );
        if let Some(airlock_policy::classify::PreparedChange::Prepare { name, .. }) =
            c.prepared_changes.first()
            && client.batch_execute(&prepare).await.is_ok()
        {
            let rows = client
                .simple_query("SELECT name FROM pg_prepared_statements WHERE from_sql")
                .await
                .expect("prepared statements");
            let stored = rows
                .iter()
                .find_map(|m| match m {
                    SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                    _ => None,
                })
                .expect("the prepared statement");
            client.batch_execute("DEALLOCATE ALL").await.expect("deallocate");
            assert_eq!(
                airlock_policy::classify::prepared_key(name),
                stored,
                "name of {prepare:?}"
            );
        }
    }
    assert!(compared > CASES / 2, "only {compared} of {CASES} compared");
}

/// A string literal as written in SQL.
fn literal(rng: &mut StdRng) -> String {
    let body = tricky_text(rng, 30);
    match rng.gen_range(0..4) {
        0 => format!("'{}'", body.replace('\'', "''")),
        1 => {
            // Escape string: backslashes escape, including \' for a quote.
            let escaped: String = body
                .chars()
                .map(|c| match c {
                    '\\' => ["\\\\", "\\n", "\\x41", "\\u00e9", "\\'"][rng.gen_range(0..5)].to_owned(),
                    '\'' => "''".to_owned(),
                    c => c.to_string(),
                })
                .collect();
            format!("E'{escaped}'")
        }
        2 => {
            let tag = ["", "t", "tag_1", "X"][rng.gen_range(0..4)];
            let body = body.replace('$', "");
            format!("${tag}${body}${tag}$")
        }
        // Adjacent literals separated by a newline are one string.
        _ => format!("'{}'\n'{}'", body.replace('\'', "''"), "more"),
    }
}

fn proxy_literal(sql: &str) -> Option<String> {
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    if statements.len() != 1 {
        return None;
    }
    let Statement::Query(q) = &statements[0] else {
        return None;
    };
    let SetExpr::Select(s) = q.body.as_ref() else {
        return None;
    };
    let expr = match s.projection.first()? {
        SelectItem::ExprWithAlias { expr, .. } | SelectItem::UnnamedExpr(expr) => expr,
        _ => return None,
    };
    match expr {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => Some(s.clone()),
            Value::DollarQuotedString(d) => Some(d.value.clone()),
            _ => None,
        },
        _ => None,
    }
}

#[tokio::test]
async fn literals_end_where_postgresql_ends_them() {
    let client = postgres().await;
    let mut rng = rng();
    let mut compared = 0;
    for _ in 0..CASES {
        let lit = literal(&mut rng);
        // A marker statement after the literal: if either side ended the
        // literal elsewhere, it would see another statement (or none).
        let sql = format!("SELECT {lit} AS v; SELECT 'end' AS v");
        let prepared = PreparedStatements::new();
        let judged = classify(
            &sql,
            &ClassifyContext {
                default_schema: "public",
                prepared: &prepared,
                max_statement_bytes: 1 << 20,
                catalog: airlock_policy::Catalog::Assumed,
                session: airlock_policy::SessionNames::default(),
            },
        );
        let pg = client.simple_query(&sql).await;
        let (Ok(messages), None) = (pg, judged.unparsed.as_ref()) else {
            // Refused by one side: unparsed text is never allowed through.
            continue;
        };
        let values: Vec<String> = messages
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .collect();
        assert_eq!(values.len(), 2, "PostgreSQL saw other statements in {sql:?}");
        assert_eq!(
            judged.effects.len(),
            2,
            "the gate saw other statements in {sql:?}: {:?}",
            judged.effects
        );
        let ours = proxy_literal(&format!("SELECT {lit} AS v")).expect("one literal");
        assert_eq!(ours, values[0], "value of {lit:?}");
        compared += 1;
    }
    assert!(compared > CASES / 2, "only {compared} of {CASES} compared");
}

/// A value sent as raw binary bytes for a given type.
#[derive(Debug)]
struct Raw(Vec<u8>);

impl ToSql for Raw {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&self.0);
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

#[tokio::test]
async fn binary_parameters_show_reviewers_what_postgresql_reads() {
    let client = postgres().await;
    let mut rng = rng();
    let types = [
        (Type::BOOL, 16u32, 1usize),
        (Type::INT2, 21, 2),
        (Type::INT4, 23, 4),
        (Type::INT8, 20, 8),
        (Type::OID, 26, 4),
        (Type::FLOAT4, 700, 4),
        (Type::FLOAT8, 701, 8),
        (Type::UUID, 2950, 16),
        (Type::TEXT, 25, 0),
    ];
    let mut compared = 0;
    for _ in 0..CASES {
        let (ty, oid, len) = types[rng.gen_range(0..types.len())].clone();
        let bytes: Vec<u8> = if len == 0 {
            tricky_text(&mut rng, 20).into_bytes()
        } else {
            (0..len).map(|_| rng.r#gen::<u8>()).collect()
        };
        let shown = airlock_proxy::params::describe(oid, 1, Some(&bytes)).display;
        let read = client
            .query_typed(
                &format!("SELECT $1::{}::text", ty.name()),
                &[(&Raw(bytes.clone()), ty.clone())],
            )
            .await;
        let Ok(rows) = read else {
            // PostgreSQL refused the bytes: the proxy must not have shown
            // them as a value of the type, only raw.
            assert!(
                shown.starts_with("\\x"),
                "{ty} {bytes:?} shown as {shown:?} but PostgreSQL refused it"
            );
            continue;
        };
        let theirs: String = rows[0].get(0);
        if shown.starts_with("\\x") && ty != Type::TEXT {
            // Raw bytes are always an honest display.
            continue;
        }
        match ty {
            Type::FLOAT4 | Type::FLOAT8 => {
                let parse = |s: &str| match s {
                    "Infinity" | "inf" => f64::INFINITY,
                    "-Infinity" | "-inf" => f64::NEG_INFINITY,
                    s => s.parse::<f64>().unwrap_or(f64::NAN),
                };
                let (a, b) = (parse(&shown), parse(&theirs));
                assert!(
                    (a.is_nan() && b.is_nan()) || a == b || ((a - b) / b).abs() < 1e-6,
                    "{ty} {bytes:?}: shown {shown:?}, PostgreSQL reads {theirs:?}"
                );
            }
            _ => assert_eq!(shown, theirs, "{ty} {bytes:?}"),
        }
        compared += 1;
    }
    assert!(compared > CASES / 3, "only {compared} of {CASES} compared");
}
