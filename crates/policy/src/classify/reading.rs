//! Settings that change how PostgreSQL reads the text of later statements.
//!
//! The proxy parses every statement as UTF-8 with standard-conforming
//! strings (a backslash in '...' is an ordinary character). If a session
//! switched `client_encoding` to an encoding in which a backslash can be the
//! second byte of a character (SJIS, BIG5, GBK, GB18030, UHC), or turned
//! `standard_conforming_strings` off, PostgreSQL would read a later
//! statement differently from the proxy, and what the proxy judged as a
//! string literal could be a DELETE to PostgreSQL. Such changes are found
//! here, by any route a statement can take: `SET` (and `SET LOCAL`, `SET
//! NAMES`), `set_config(...)` anywhere in a statement, and `ALTER ROLE`,
//! `ALTER DATABASE` or `ALTER SYSTEM ... SET`. Setting the value the proxy
//! reads under (UTF8, on) and `RESET` are harmless: the proxy logs into
//! PostgreSQL with `client_encoding=UTF8` and `standard_conforming_strings=on`
//! as startup parameters, which are what RESET returns to and which role,
//! database and system defaults do not override.

use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Set, Statement, Value, visit_expressions,
};

/// Whether changing `name` (a configuration parameter, any case) to
/// `value` keeps PostgreSQL reading text as the proxy does. `None`: the
/// value is not a plain literal, so it cannot be known.
fn harmless(name: &str, value: Option<&str>) -> bool {
    let norm = |v: &str| v.trim().to_ascii_lowercase().replace(['-', '_'], "");
    match name.to_ascii_lowercase().as_str() {
        "client_encoding" | "names" => {
            matches!(value.map(norm).as_deref(), Some("utf8" | "unicode" | "default"))
        }
        "standard_conforming_strings" => {
            matches!(
                value.map(norm).as_deref(),
                Some("on" | "true" | "yes" | "1" | "default")
            )
        }
        // Only meaningful with standard_conforming_strings off, or in E''
        // strings; no reason to change them through the gate.
        "backslash_quote" | "escape_string_warning" => matches!(value.map(norm).as_deref(), Some("default")),
        _ => true,
    }
}

/// A literal's text: quoted strings, numbers, booleans, bare words.
fn literal(e: &Expr) -> Option<String> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::Number(s, _) => Some(s.clone()),
            Value::Boolean(b) => Some(b.to_string()),
            _ => None,
        },
        Expr::Identifier(i) => Some(i.value.clone()),
        _ => None,
    }
}

/// The parameters a statement would change in a way that makes PostgreSQL
/// read later statements differently from the proxy (empty if none).
pub(super) fn reading_changes(statement: &Statement) -> Vec<String> {
    let mut found = Vec::new();
    let check = |found: &mut Vec<String>, name: String, value: Option<String>| {
        if !harmless(&name, value.as_deref()) {
            found.push(name.to_ascii_lowercase());
        }
    };
    match statement {
        Statement::Set(Set::SingleAssignment { variable, values, .. }) => {
            let value = match values.as_slice() {
                [one] => literal(one),
                _ => None,
            };
            check(&mut found, variable.to_string(), value);
        }
        Statement::Set(Set::MultipleAssignments { assignments }) => {
            for a in assignments {
                check(&mut found, a.name.to_string(), literal(&a.value));
            }
        }
        Statement::Set(Set::ParenthesizedAssignments { variables, values }) => {
            for (i, v) in variables.iter().enumerate() {
                check(&mut found, v.to_string(), values.get(i).and_then(literal));
            }
        }
        Statement::Set(Set::SetNames { charset_name, .. }) => {
            check(&mut found, "names".into(), Some(charset_name.value.clone()))
        }
        _ => {}
    }
    // ALTER ROLE ... SET: read from the statement's own text, as the
    // parser's shapes for it vary. (ALTER DATABASE and ALTER SYSTEM are not
    // parsed at all: the policy's `unparsed` action applies to them.)
    if let Some((name, value)) = alter_set(statement) {
        check(&mut found, name, value);
    }
    // set_config(name, value, is_local) anywhere, at any depth.
    let _ = visit_expressions(statement, |e| {
        if let Expr::Function(f) = e
            && f.name
                .0
                .last()
                .is_some_and(|p| p.to_string().eq_ignore_ascii_case("set_config"))
        {
            let args: Vec<Option<&Expr>> = match &f.args {
                FunctionArguments::List(list) => list
                    .args
                    .iter()
                    .map(|a| match a {
                        FunctionArg::Unnamed(FunctionArgExpr::Expr(e))
                        | FunctionArg::Named {
                            arg: FunctionArgExpr::Expr(e),
                            ..
                        }
                        | FunctionArg::ExprNamed {
                            arg: FunctionArgExpr::Expr(e),
                            ..
                        } => Some(e),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let name = args.first().copied().flatten().and_then(|e| match e {
                Expr::Value(v) => match &v.value {
                    Value::SingleQuotedString(s) => Some(s.clone()),
                    _ => None,
                },
                _ => None,
            });
            let value = args.get(1).copied().flatten().and_then(literal);
            match name {
                Some(name) => check(&mut found, name, value),
                // A name computed at run time could be any setting.
                None => found.push("set_config(<computed name>)".into()),
            }
        }
        ControlFlow::<()>::Continue(())
    });
    found
}

/// `ALTER ROLE|USER ... SET name = value` (or `TO`), from the statement's
/// text: the parameter name and its literal value.
fn alter_set(statement: &Statement) -> Option<(String, Option<String>)> {
    if !matches!(statement, Statement::AlterRole { .. } | Statement::AlterUser(_)) {
        return None;
    }
    let text = statement.to_string();
    let words: Vec<&str> = text.split_whitespace().collect();
    let at = words.iter().position(|w| w.eq_ignore_ascii_case("SET"))?;
    let name = words.get(at + 1)?.trim_end_matches('=').to_owned();
    let mut rest = words.get(at + 2..).unwrap_or_default().iter();
    let mut value = rest.next().copied();
    if value.is_some_and(|v| v == "=" || v.eq_ignore_ascii_case("TO")) {
        value = rest.next().copied();
    }
    let value = value.map(|v| v.trim_matches('\'').to_owned());
    Some((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    fn changes(sql: &str) -> Vec<String> {
        let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).expect(sql);
        statements.iter().flat_map(reading_changes).collect()
    }

    #[test]
    fn switching_to_an_encoding_the_proxy_does_not_read_is_found() {
        for sql in [
            "SET client_encoding = 'SJIS'",
            "SET client_encoding TO sjis",
            "SET LOCAL client_encoding = 'BIG5'",
            "SET SESSION CLIENT_ENCODING TO 'GBK'",
            "SET NAMES 'GB18030'",
            "SET standard_conforming_strings = off",
            "SET standard_conforming_strings TO false",
            "SET backslash_quote = on",
            "SELECT set_config('client_encoding', 'UHC', false)",
            "SELECT 1 FROM orders WHERE set_config('standard_conforming_strings', 'off', true) IS NOT NULL",
            "SELECT pg_catalog.set_config('CLIENT_ENCODING', 'SJIS', false)",
            "SELECT set_config(name, 'x', false) FROM settings",
            "SELECT set_config('client_' || 'encoding', 'SJIS', false)",
            "SELECT set_config('client_encoding', (SELECT 'SJIS'), false)",
            "ALTER ROLE agent SET client_encoding = 'SJIS'",
            "ALTER ROLE agent SET standard_conforming_strings TO off",
        ] {
            assert!(!changes(sql).is_empty(), "{sql}");
        }
    }

    #[test]
    fn the_values_the_proxy_reads_under_and_other_settings_are_harmless() {
        for sql in [
            "SET client_encoding = 'UTF8'",
            "SET client_encoding TO 'utf-8'",
            "SET client_encoding TO DEFAULT",
            "SET standard_conforming_strings = on",
            "SET search_path = public",
            "SET statement_timeout = '5s'",
            "RESET client_encoding",
            "RESET ALL",
            "SELECT set_config('app.tenant', '42', false)",
            "SELECT set_config('client_encoding', 'UTF8', false)",
        ] {
            assert!(changes(sql).is_empty(), "{sql}: {:?}", changes(sql));
        }
    }
}
