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
//! NAMES`), `set_config(...)` anywhere in a statement (a table function in
//! FROM included), and `ALTER ROLE`,
//! `ALTER DATABASE` or `ALTER SYSTEM ... SET`. Setting the value the proxy
//! reads under (UTF8, on) and `RESET` are harmless: the proxy logs into
//! PostgreSQL with `client_encoding=UTF8` and `standard_conforming_strings=on`
//! as startup parameters, which are what RESET returns to and which role,
//! database and system defaults do not override.
//!
//! Parameter names are compared as PostgreSQL compares them: by the values
//! of their identifiers, without regard to ASCII case, quoted or not (`SET
//! "CLIENT_ENCODING"` is `client_encoding`), never by their printed form.

use std::ops::ControlFlow;

use sqlparser::ast::{
    AlterRoleOperation, BinaryOperator, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, ObjectName,
    ObjectNamePart, ResetConfig, SelectItem, Set, SetConfigValue, SetExpr, Statement, TableFactor, Value,
    Visit, Visitor,
};

/// A configuration parameter's name as PostgreSQL looks it up: the values
/// of its identifiers (not their printed form, which keeps the quotes of
/// `SET "client_encoding"`), joined by `.`. Compare it without regard to
/// ASCII case, as PostgreSQL's `guc_name_compare` does.
pub(super) fn setting_name(name: &ObjectName) -> String {
    name.0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(i) => crate::ident::truncate(&i.value).to_owned(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// `role` and `session_authorization`: setting either is `SET ROLE` or `SET
/// SESSION AUTHORIZATION`, whatever the route (`SET "Role" = x`,
/// `set_config('ROLE', ...)`).
pub(super) fn is_role_setting(name: &str) -> bool {
    name.eq_ignore_ascii_case("role") || name.eq_ignore_ascii_case("session_authorization")
}

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
        // SET, SET SESSION and SET LOCAL alike.
        Statement::Set(Set::SingleAssignment { variable, values, .. }) => {
            let value = match values.as_slice() {
                [one] => literal(one),
                _ => None,
            };
            check(&mut found, setting_name(variable), value);
        }
        Statement::Set(Set::MultipleAssignments { assignments }) => {
            for a in assignments {
                check(&mut found, setting_name(&a.name), literal(&a.value));
            }
        }
        Statement::Set(Set::ParenthesizedAssignments { variables, values }) => {
            for (i, v) in variables.iter().enumerate() {
                check(&mut found, setting_name(v), values.get(i).and_then(literal));
            }
        }
        Statement::Set(Set::SetNames { charset_name, .. }) => {
            check(&mut found, "names".into(), Some(charset_name.value.clone()))
        }
        // ALTER ROLE|USER ... [IN DATABASE ...] SET. (ALTER DATABASE and
        // ALTER SYSTEM are not parsed at all: the policy's `unparsed` action
        // applies to them.)
        Statement::AlterRole {
            operation:
                AlterRoleOperation::Set {
                    config_name,
                    config_value,
                    ..
                },
            ..
        } => {
            let value = match config_value {
                SetConfigValue::Default => Some("default".to_owned()),
                SetConfigValue::FromCurrent => None,
                SetConfigValue::Value(e) => literal(e),
            };
            check(&mut found, setting_name(config_name), value);
        }
        _ => {}
    }
    for call in set_config_calls(statement) {
        match call.name {
            Some(name) => check(&mut found, name, call.value),
            // A name computed at run time could be any setting.
            None => found.push("set_config(<computed name>)".into()),
        }
    }
    found
}

/// Whether `statement` calls `set_config` on `role` or
/// `session_authorization`, or on a name computed at run time (which could
/// be either): a `SET ROLE` by another route.
pub(super) fn sets_role_by_call(statement: &Statement) -> bool {
    set_config_calls(statement)
        .iter()
        .any(|c| c.name.as_deref().is_none_or(is_role_setting))
}

/// Whether `statement` may change the session's search path, after which
/// its unqualified names no longer resolve as a fresh session's do (the
/// catalog facts' view): SET of `search_path` (or its alias `schema`), in
/// any form; `set_config` of it, or of a name computed at run time; and
/// `ALTER ROLE ... SET|RESET` of it or of everything (the role's default,
/// which the facts then follow while this session keeps the path it
/// started with). `SET ROLE` changes what `$user` means: the caller counts
/// it too.
pub(super) fn changes_search_path(statement: &Statement) -> bool {
    let path = |name: &str| name.eq_ignore_ascii_case("search_path") || name.eq_ignore_ascii_case("schema");
    let named = match statement {
        Statement::Set(Set::SingleAssignment { variable, .. }) => path(&setting_name(variable)),
        Statement::Set(Set::MultipleAssignments { assignments }) => {
            assignments.iter().any(|a| path(&setting_name(&a.name)))
        }
        Statement::Set(Set::ParenthesizedAssignments { variables, .. }) => {
            variables.iter().any(|v| path(&setting_name(v)))
        }
        Statement::AlterRole {
            operation: AlterRoleOperation::Set { config_name, .. },
            ..
        } => path(&setting_name(config_name)),
        Statement::AlterRole {
            operation: AlterRoleOperation::Reset { config_name, .. },
            ..
        } => match config_name {
            ResetConfig::ALL => true,
            ResetConfig::ConfigName(name) => path(&setting_name(name)),
        },
        _ => false,
    };
    named
        || set_config_calls(statement)
            .iter()
            .any(|c| c.name.as_deref().is_none_or(path))
}

/// One `set_config(setting_name, new_value, is_local)` call: its name and
/// value, when they are literals.
struct SetConfigCall {
    name: Option<String>,
    value: Option<String>,
}

/// Every `set_config` call in `statement`, at any depth: in expressions, and
/// as a table function in FROM (`SELECT * FROM set_config(...)`, `LATERAL
/// set_config(...)`), which PostgreSQL runs all the same. Found by the last
/// part of the name, ignoring case and quotes (`"pg_catalog"."SET_CONFIG"`
/// counts too): a false match only makes a judgement stricter.
fn set_config_calls(statement: &Statement) -> Vec<SetConfigCall> {
    struct Calls(Vec<SetConfigCall>);
    impl Visitor for Calls {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            if let Expr::Function(f) = e
                && is_set_config(&f.name)
            {
                let args = match &f.args {
                    FunctionArguments::List(list) => list.args.as_slice(),
                    FunctionArguments::None | FunctionArguments::Subquery(_) => &[],
                };
                self.0.push(set_config_call(args));
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<()> {
            match t {
                TableFactor::Table {
                    name,
                    args: Some(args),
                    ..
                } if is_set_config(name) => self.0.push(set_config_call(&args.args)),
                TableFactor::Function { name, args, .. } if is_set_config(name) => {
                    self.0.push(set_config_call(args))
                }
                _ => {}
            }
            ControlFlow::Continue(())
        }
    }
    let mut calls = Calls(Vec::new());
    let _ = statement.visit(&mut calls);
    if let [call] = calls.0.as_mut_slice()
        && call.name.is_none()
    {
        call.name = pinned_by_pg_settings(statement);
    }
    calls.0
}

/// The setting name of `SELECT set_config(name, ...) FROM
/// pg_catalog.pg_settings WHERE name = '<setting>'`: the computed name can
/// only be that literal. Exactly this shape: one set_config call in the
/// select list and nowhere else, its name the bare column `name`, the one
/// relation `pg_catalog.pg_settings` without alias, joins or CTEs, and a
/// filter that is exactly `name = '<literal>'`. The schema must be written:
/// an unqualified `pg_settings` may be a temporary table (the session's
/// temporary schema is searched before pg_catalog), whose `name` may be a
/// `char(n)` column, where `'role '` equals `'role'`. pg_dump writes it
/// unqualified, so its set-up is refused through Airlock (docs/drivers.md).
/// (A text `=` other than PostgreSQL's would take a SET of search_path and
/// CREATE OPERATOR first, each judged on its own.)
fn pinned_by_pg_settings(statement: &Statement) -> Option<String> {
    let is_name_column = |e: &Expr| matches!(e, Expr::Identifier(i) if i.value == "name");
    let Statement::Query(query) = statement else {
        return None;
    };
    if query.with.is_some() {
        return None;
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let [
        SelectItem::UnnamedExpr(Expr::Function(call))
        | SelectItem::ExprWithAlias {
            expr: Expr::Function(call),
            ..
        },
    ] = select.projection.as_slice()
    else {
        return None;
    };
    let FunctionArguments::List(list) = &call.args else {
        return None;
    };
    match list.args.first() {
        Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(e)))
            if is_set_config(&call.name) && is_name_column(e) => {}
        _ => return None,
    }
    let [from] = select.from.as_slice() else {
        return None;
    };
    let TableFactor::Table {
        name,
        alias: None,
        args: None,
        ..
    } = &from.relation
    else {
        return None;
    };
    let relation: Vec<String> = name.0.iter().map(|p| p.to_string()).collect();
    if !from.joins.is_empty()
        || !matches!(relation.as_slice(), [s, t] if s == "pg_catalog" && t == "pg_settings")
    {
        return None;
    }
    match &select.selection {
        Some(Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        }) if is_name_column(left) => match right.as_ref() {
            Expr::Value(v) => match &v.value {
                Value::SingleQuotedString(s) => Some(s.clone()),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

fn is_set_config(name: &ObjectName) -> bool {
    match name.0.last() {
        Some(ObjectNamePart::Identifier(i)) => i.value.eq_ignore_ascii_case("set_config"),
        Some(other) => other.to_string().eq_ignore_ascii_case("set_config"),
        None => false,
    }
}

/// The setting name and value of one call, by position or by name
/// (`setting_name => ..., new_value => ...`, in any order). The name is
/// known only when it is a string literal.
fn set_config_call(args: &[FunctionArg]) -> SetConfigCall {
    let expr = |a: &FunctionArgExpr| -> Option<Expr> {
        match a {
            FunctionArgExpr::Expr(e) => Some(e.clone()),
            _ => None,
        }
    };
    let mut positional: Vec<Option<Expr>> = Vec::new();
    let mut named: Vec<(String, Option<Expr>)> = Vec::new();
    for arg in args {
        match arg {
            FunctionArg::Unnamed(a) => positional.push(expr(a)),
            FunctionArg::Named { name, arg, .. } => named.push((name.value.to_ascii_lowercase(), expr(arg))),
            FunctionArg::ExprNamed { name, arg, .. } => {
                let key = match name {
                    Expr::Identifier(i) => i.value.to_ascii_lowercase(),
                    other => other.to_string(),
                };
                named.push((key, expr(arg)));
            }
        }
    }
    let get = |position: usize, key: &str| -> Option<Expr> {
        match positional.get(position) {
            Some(e) => e.clone(),
            None => named.iter().find(|(k, _)| k == key).and_then(|(_, e)| e.clone()),
        }
    };
    let name = get(0, "setting_name").and_then(|e| match e {
        Expr::Value(v) => match v.value {
            Value::SingleQuotedString(s) => Some(s),
            _ => None,
        },
        _ => None,
    });
    SetConfigCall {
        name,
        value: get(1, "new_value").as_ref().and_then(literal),
    }
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
            // The filter pins the computed name.
            "SELECT set_config(name, 'view, foreign-table', false) FROM pg_catalog.pg_settings \
             WHERE name = 'restrict_nonsystem_relation_kind'",
            "SELECT pg_catalog.set_config(name, 'x', false) FROM pg_catalog.pg_settings WHERE name = 'work_mem'",
        ] {
            assert!(changes(sql).is_empty(), "{sql}: {:?}", changes(sql));
        }
    }

    #[test]
    fn a_name_from_pg_settings_counts_as_known_only_when_the_filter_pins_it() {
        for sql in [
            // The pinned name is itself a reading change.
            "SELECT set_config(name, 'SJIS', false) FROM pg_catalog.pg_settings WHERE name = 'client_encoding'",
            // pg_dump's, unqualified: a temporary pg_settings with a char(n)
            // column passes `role` (or `client_encoding`) for 'role ' (a
            // review found it).
            "SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings \
             WHERE name = 'restrict_nonsystem_relation_kind'",
            "SELECT set_config(name, 'SJIS', false) FROM pg_settings WHERE name = 'client_encoding '",
            "SELECT set_config(name, 'SJIS', false) FROM pg_temp.pg_settings WHERE name = 'work_mem'",
            // Not pinned: another filter, a disjunction, none, a join, an
            // alias, a CTE that shadows pg_settings, another relation, a
            // second call, another column.
            "SELECT set_config(name, 'SJIS', false) FROM pg_catalog.pg_settings WHERE name <> 'work_mem'",
            "SELECT set_config(name, 'SJIS', false) FROM pg_catalog.pg_settings WHERE name = 'work_mem' OR true",
            "SELECT set_config(name, 'SJIS', false) FROM pg_catalog.pg_settings",
            "SELECT set_config(name, 'SJIS', false) FROM pg_catalog.pg_settings, t WHERE name = 'work_mem'",
            "SELECT set_config(s.name, 'SJIS', false) FROM pg_catalog.pg_settings s WHERE s.name = 'work_mem'",
            "WITH pg_settings AS (SELECT 'client_encoding' AS name) \
             SELECT set_config(name, 'SJIS', false) FROM pg_settings WHERE name = 'work_mem'",
            "SELECT set_config(name, 'SJIS', false) FROM my.pg_settings WHERE name = 'work_mem'",
            "SELECT set_config(name, 'SJIS', false), set_config(name, 'x', false) FROM pg_catalog.pg_settings \
             WHERE name = 'work_mem'",
            "SELECT set_config(setting, 'SJIS', false) FROM pg_catalog.pg_settings WHERE name = 'work_mem'",
            "SELECT set_config(name, 'SJIS', false) FROM pg_catalog.pg_settings WHERE setting = 'work_mem'",
        ] {
            assert!(!changes(sql).is_empty(), "{sql}");
        }
        let role = |sql: &str| {
            let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).expect(sql);
            statements.iter().any(sets_role_by_call)
        };
        assert!(role(
            "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'role '"
        ));
        assert!(role(
            "SELECT set_config(name, 'x', false) FROM pg_catalog.pg_settings WHERE name = 'ROLE'"
        ));
        assert!(!role(
            "SELECT set_config(name, 'x', false) FROM pg_catalog.pg_settings WHERE name = 'work_mem'"
        ));
    }
}
