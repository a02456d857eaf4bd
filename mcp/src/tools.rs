//! The tools an agent sees: their names, descriptions (written for a model:
//! what a hold is, never to retry a denial), input schemas, how arguments
//! are read, and how an answer becomes a tool result. Pure: no sockets.

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{CallToolResult, ContentBlock, JsonObject, Tool};
use serde_json::{Value, json};

use crate::session::Outcome;
use crate::wire::{Answer, DbError, Hold};

/// `query`'s row cap when the call names none.
pub const DEFAULT_MAX_ROWS: usize = 1_000;
/// The highest `max_rows` a call may ask for.
pub const MAX_ROWS_LIMIT: usize = 10_000;
/// `wait_for_decision`'s longest wait per call.
pub const MAX_WAIT: Duration = Duration::from_secs(120);
/// Its wait when the call names none.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);
/// At most this many parameters (PostgreSQL's own limit is 65,535).
const MAX_PARAMS: usize = 1_000;

const HOLD_EXPLAINED: &str = "Airlock is a human checkpoint between you and the database: every statement is \
judged by policy. Reads usually run at once. A statement policy gates (a delete, a schema change, a write to a \
sensitive table) is HELD: the result says status \"held\" with a request_id, and a person reviews exactly that \
statement. Tell the user it is waiting for approval, then call wait_for_decision with the request_id. Do not run \
the statement again while it is held. If it is denied or refused (SQLSTATE 42501), do not retry it or a reworded \
version to get around the decision: report the reason to the user.";

fn schema(v: Value) -> Arc<JsonObject> {
    match v {
        Value::Object(map) => Arc::new(map),
        _ => Arc::new(JsonObject::new()),
    }
}

fn params_schema() -> Value {
    json!({
        "type": "array",
        "description": "Values for $1, $2, ... in order. Strings, numbers, booleans and null are sent as text and \
                        cast by PostgreSQL; an object or array is sent as JSON text.",
        "maxItems": MAX_PARAMS
    })
}

/// Every tool, in the order listed.
pub fn all() -> Vec<Tool> {
    vec![
        Tool::new(
            "query",
            format!(
                "Run one SQL statement through Airlock and return its rows (at most max_rows, default \
                 {DEFAULT_MAX_ROWS}; a result cut short says truncated). {HOLD_EXPLAINED}"
            ),
            schema(json!({
                "type": "object",
                "properties": {
                    "sql": {"type": "string", "description": "One SQL statement. Use $1, $2, ... for values."},
                    "params": params_schema(),
                    "max_rows": {"type": "integer", "minimum": 1, "maximum": MAX_ROWS_LIMIT,
                                 "description": "Most rows to return (default 1000)."}
                },
                "required": ["sql"],
                "additionalProperties": false
            })),
        ),
        Tool::new(
            "wait_for_decision",
            "Wait for a reviewer's decision on a statement Airlock holds (from query's request_id), up to \
             timeout_s seconds (at most 120). Returns the statement's result once it is approved and has run, \
             an error if it was denied, refused, cancelled or expired, or status \"held\" again if nobody has \
             decided yet: then tell the user and call again later. Never re-run a denied statement.",
            schema(json!({
                "type": "object",
                "properties": {
                    "request_id": {"type": "string", "description": "The request_id query returned."},
                    "timeout_s": {"type": "integer", "minimum": 1, "maximum": 120,
                                  "description": "Seconds to wait (default 60)."}
                },
                "required": ["request_id"],
                "additionalProperties": false
            })),
        ),
        Tool::new(
            "list_tables",
            "List the tables and views you can see (schema, name, kind), read through Airlock like any query.",
            schema(json!({
                "type": "object",
                "properties": {
                    "schema": {"type": "string", "description": "Only this schema (default: all but the system schemas)."}
                },
                "additionalProperties": false
            })),
        ),
        Tool::new(
            "describe_table",
            "Describe a table's columns (name, type, nullable, default), read through Airlock like any query.",
            schema(json!({
                "type": "object",
                "properties": {
                    "table": {"type": "string", "description": "The table's name."},
                    "schema": {"type": "string", "description": "Its schema (default: public)."}
                },
                "required": ["table"],
                "additionalProperties": false
            })),
        ),
        Tool::new(
            "explain",
            format!(
                "Show PostgreSQL's plan for one statement (EXPLAIN, never ANALYZE: the statement is planned, \
                 not executed). The EXPLAIN \
                 itself goes through Airlock like any statement. {HOLD_EXPLAINED}"
            ),
            schema(json!({
                "type": "object",
                "properties": {
                    "sql": {"type": "string", "description": "The statement to plan."},
                    "params": params_schema()
                },
                "required": ["sql"],
                "additionalProperties": false
            })),
        ),
    ]
}

/// A tool call's arguments that cannot be used: said to the model plainly.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct BadArguments(pub String);

fn bad(msg: impl Into<String>) -> BadArguments {
    BadArguments(msg.into())
}

/// The arguments, an object (absent means empty).
pub fn object(args: Option<JsonObject>) -> JsonObject {
    args.unwrap_or_default()
}

/// A required string argument.
pub fn string(args: &JsonObject, key: &str) -> Result<String, BadArguments> {
    match args.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(bad(format!("`{key}` is empty"))),
        Some(_) => Err(bad(format!("`{key}` must be a string"))),
        None => Err(bad(format!("`{key}` is required"))),
    }
}

/// An optional string argument.
pub fn optional_string(args: &JsonObject, key: &str) -> Result<Option<String>, BadArguments> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(format!("`{key}` must be a string"))),
    }
}

/// An optional whole number in `min..=max`.
pub fn optional_count(args: &JsonObject, key: &str, min: u64, max: u64) -> Result<Option<u64>, BadArguments> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if (min..=max).contains(&v) => Ok(Some(v)),
            _ => Err(bad(format!("`{key}` must be a whole number from {min} to {max}"))),
        },
        Some(_) => Err(bad(format!("`{key}` must be a whole number from {min} to {max}"))),
    }
}

/// `params`: each value as the text PostgreSQL casts (NULL as `None`).
pub fn params(args: &JsonObject) -> Result<Vec<Option<String>>, BadArguments> {
    let list = match args.get("params") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(bad("`params` must be an array of values for $1, $2, ...")),
    };
    if list.len() > MAX_PARAMS {
        return Err(bad(format!(
            "`params` has {} values; at most {MAX_PARAMS}",
            list.len()
        )));
    }
    Ok(list
        .iter()
        .map(|v| match v {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Number(n) => Some(n.to_string()),
            other => Some(other.to_string()),
        })
        .collect())
}

/// Checks `sql` against the size cap and for NUL (which the wire cannot
/// carry).
pub fn statement(sql: String, max_bytes: usize) -> Result<String, BadArguments> {
    if sql.len() > max_bytes {
        return Err(bad(format!(
            "the statement is {} bytes; this server takes at most {max_bytes} (--max-statement-bytes)",
            sql.len()
        )));
    }
    if sql.contains('\0') {
        return Err(bad("the statement contains a NUL character"));
    }
    Ok(sql)
}

/// `EXPLAIN` for `sql`: the options fixed first, so the text given can
/// only be the statement planned (`(ANALYZE) ...` or `ANALYZE ...` after
/// them is a syntax error, and ANALYZE is never added).
pub fn explain(sql: &str) -> String {
    format!("EXPLAIN (FORMAT TEXT) {sql}")
}

/// The catalog read behind `list_tables`.
pub fn list_tables(schema: Option<String>) -> (String, Vec<Option<String>>) {
    let sql = "SELECT table_schema AS schema, table_name AS name, table_type AS kind \
               FROM information_schema.tables \
               WHERE ($1::text IS NULL AND table_schema NOT IN ('pg_catalog', 'information_schema')) \
                  OR table_schema = $1::text \
               ORDER BY 1, 2";
    (sql.to_owned(), vec![schema])
}

/// The catalog read behind `describe_table`.
pub fn describe_table(table: String, schema: Option<String>) -> (String, Vec<Option<String>>) {
    let sql = "SELECT column_name AS column, data_type AS type, is_nullable = 'YES' AS nullable, \
               column_default AS default \
               FROM information_schema.columns \
               WHERE table_schema = $1::text AND table_name = $2::text \
               ORDER BY ordinal_position";
    (
        sql.to_owned(),
        vec![Some(schema.unwrap_or_else(|| "public".into())), Some(table)],
    )
}

/// A type OID's name, for the common ones.
fn type_name(oid: u32) -> String {
    match oid {
        16 => "boolean",
        17 => "bytea",
        18 => "char",
        19 => "name",
        20 => "bigint",
        21 => "smallint",
        23 => "integer",
        25 => "text",
        26 => "oid",
        114 => "json",
        700 => "real",
        701 => "double precision",
        1042 => "character",
        1043 => "character varying",
        1082 => "date",
        1083 => "time",
        1114 => "timestamp",
        1184 => "timestamptz",
        1186 => "interval",
        1700 => "numeric",
        2950 => "uuid",
        3802 => "jsonb",
        _ => return format!("oid {oid}"),
    }
    .to_owned()
}

/// A text value as JSON: numbers, booleans and JSON as themselves, the
/// rest (numeric too, to keep its precision) as strings.
fn value(oid: u32, text: &str) -> Value {
    match oid {
        16 => Value::Bool(text == "t"),
        20 | 21 | 23 | 26 => text
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(text.into())),
        700 | 701 => text
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Value::from)
            .unwrap_or_else(|| Value::String(text.into())),
        114 | 3802 => serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.into())),
        _ => Value::String(text.into()),
    }
}

/// The rows of an answer as JSON.
fn rows(answer: &Answer) -> Value {
    Value::Array(
        answer
            .rows
            .iter()
            .map(|r| {
                Value::Array(
                    r.iter()
                        .zip(answer.columns.iter())
                        .map(|(v, c)| v.as_deref().map_or(Value::Null, |t| value(c.type_oid, t)))
                        .collect(),
                )
            })
            .collect(),
    )
}

fn error_result(value: Value, text: String) -> CallToolResult {
    let mut r = CallToolResult::error(vec![ContentBlock::text(text)]);
    r.structured_content = Some(value);
    r
}

/// A call refused before anything was sent (bad arguments, a busy session,
/// no connection): a tool error.
pub fn refused(message: &str) -> CallToolResult {
    error_result(json!({"status": "error", "message": message}), message.to_owned())
}

/// What a model should do after a database error.
fn advice(e: &DbError) -> &'static str {
    match e.sqlstate.as_str() {
        "42501" => {
            "Airlock or the database refused this statement. Do not run it again or reword it to get around \
             the decision; tell the user what was refused and why."
        }
        "57014" => "The statement was cancelled; nothing of it was committed.",
        "ZA001" => "The statement would have changed more rows than were approved; it was rolled back.",
        _ => "",
    }
}

/// A statement's end as a tool result, for a call without an MCP session
/// (`in_session` false) too: there its database session ends with the
/// call, so a transaction left open was rolled back, and that is said.
pub fn ended_in(outcome: &Outcome, request_id: Option<&str>, in_session: bool) -> CallToolResult {
    if let (false, Outcome::Ended(a)) = (in_session, outcome)
        && a.error.is_none()
        && a.transaction != b'I'
    {
        let msg = "the statement ran, but it left a transaction open, and without an MCP session each call is \
                   its own database session: the transaction was rolled back when this call ended. Use an MCP \
                   session (the initialize handshake) for transactions.";
        return error_result(
            json!({"status": "error", "message": msg, "request_id": request_id, "rolled_back": true}),
            msg.to_owned(),
        );
    }
    ended(outcome, request_id)
}

/// A statement's end as a tool result.
pub fn ended(outcome: &Outcome, request_id: Option<&str>) -> CallToolResult {
    let answer = match outcome {
        Outcome::Broken(why) => {
            let msg = format!(
                "{why}. The statement's fate is not known to this server{}; the next call opens a new session.",
                request_id
                    .map(|r| format!(" (request {r}: ask a reviewer)"))
                    .unwrap_or_default()
            );
            return error_result(
                json!({"status": "error", "message": msg, "request_id": request_id}),
                msg,
            );
        }
        Outcome::Ended(a) => a,
    };
    if let Some(e) = &answer.error {
        let advice = advice(e);
        let text = format!("SQLSTATE {}: {}. {advice}", e.sqlstate, e.message);
        return error_result(
            json!({
                "status": "error",
                "sqlstate": e.sqlstate,
                "message": e.message,
                "detail": e.detail,
                "hint": e.hint,
                "request_id": request_id,
                "advice": advice,
            }),
            text.trim_end().to_owned(),
        );
    }
    let columns: Vec<Value> = answer
        .columns
        .iter()
        .map(|c| json!({"name": c.name, "type": type_name(c.type_oid)}))
        .collect();
    let v = json!({
        "status": "ok",
        "request_id": request_id,
        "command": answer.command,
        "columns": columns,
        "rows": rows(answer),
        "row_count": answer.rows.len(),
                "truncated": answer.truncated,
        "notices": answer.notices,
        "transaction": match answer.transaction {
            b'T' => "open",
            b'E' => "failed (ROLLBACK to continue)",
            _ => "none",
        },
    });
    CallToolResult::structured(v)
}

/// A held statement as a tool result: not an error, not an outcome.
pub fn held(hold: &Hold, waited: Option<Duration>) -> CallToolResult {
    let next = match waited {
        None => {
            "A reviewer must approve it before it runs. Tell the user it is waiting for approval, then call \
                 wait_for_decision with this request_id. Do not run the statement again."
        }
        Some(_) => {
            "Not ended yet: nobody has decided, or it was approved and is still running. Tell the user, \
                 and call wait_for_decision again later. Do not run the statement again."
        }
    };
    CallToolResult::structured(json!({
        "status": "held",
        "request_id": hold.request_id,
        "message": hold.notice,
        "review_url": hold.review_url,
        "waited_s": waited.map(|d| d.as_secs()),
        "next": next,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Column;

    fn args(v: Value) -> JsonObject {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn params_are_text_and_bad_shapes_are_said() {
        let a = args(json!({"params": ["x", 3, 2.5, true, null, {"k": 1}, [1]]}));
        assert_eq!(
            params(&a).unwrap(),
            vec![
                Some("x".into()),
                Some("3".into()),
                Some("2.5".into()),
                Some("true".into()),
                None,
                Some("{\"k\":1}".into()),
                Some("[1]".into())
            ]
        );
        assert!(
            params(&args(json!({"params": "x"})))
                .unwrap_err()
                .0
                .contains("array")
        );
        let many = args(json!({ "params": vec![1; MAX_PARAMS + 1] }));
        assert!(params(&many).is_err());
        assert_eq!(params(&args(json!({}))).unwrap(), Vec::<Option<String>>::new());
    }

    #[test]
    fn arguments_are_checked_with_what_is_allowed() {
        let a = args(json!({"sql": "", "n": 0, "m": "x", "k": 5}));
        assert_eq!(string(&a, "sql").unwrap_err().0, "`sql` is empty");
        assert_eq!(string(&a, "other").unwrap_err().0, "`other` is required");
        assert!(optional_count(&a, "n", 1, 10).is_err());
        assert!(optional_count(&a, "m", 1, 10).is_err());
        assert_eq!(optional_count(&a, "k", 1, 10).unwrap(), Some(5));
        assert_eq!(optional_count(&a, "absent", 1, 10).unwrap(), None);
        assert!(
            statement("x".repeat(11), 10)
                .unwrap_err()
                .0
                .contains("--max-statement-bytes")
        );
        assert!(statement("SELECT '\0'".into(), 100).is_err());
    }

    #[test]
    fn explain_fixes_its_options_first() {
        assert_eq!(explain("SELECT 1"), "EXPLAIN (FORMAT TEXT) SELECT 1");
        // What a model might try: both are syntax errors after the options.
        assert!(explain("(ANALYZE) DELETE FROM t").starts_with("EXPLAIN (FORMAT TEXT) ("));
        assert!(explain("ANALYZE DELETE FROM t").starts_with("EXPLAIN (FORMAT TEXT) ANALYZE"));
    }

    #[test]
    fn rows_keep_their_types_and_truncation_is_said() {
        let answer = Answer {
            columns: vec![
                Column {
                    name: "id".into(),
                    type_oid: 23,
                },
                Column {
                    name: "ok".into(),
                    type_oid: 16,
                },
                Column {
                    name: "price".into(),
                    type_oid: 1700,
                },
                Column {
                    name: "doc".into(),
                    type_oid: 3802,
                },
                Column {
                    name: "f".into(),
                    type_oid: 701,
                },
            ],
            rows: vec![vec![
                Some("7".into()),
                Some("t".into()),
                Some("10.50".into()),
                Some("{\"a\": 1}".into()),
                Some("NaN".into()),
            ]],
            command: Some("SELECT 1".into()),
            truncated: Some("rows"),
            ..Answer::default()
        };
        let r = ended(&Outcome::Ended(Box::new(answer)), None);
        let v = r.structured_content.unwrap();
        assert_eq!(v["rows"], json!([[7, true, "10.50", {"a": 1}, "NaN"]]));
        assert_eq!(v["truncated"], "rows");
        assert_eq!(v["columns"][2]["type"], "numeric");
        assert_eq!(r.is_error, Some(false));
    }

    #[test]
    fn a_refusal_is_a_tool_error_with_its_sqlstate_and_advice() {
        let answer = Answer {
            error: Some(DbError {
                severity: "ERROR".into(),
                sqlstate: "42501".into(),
                message: "request r1 was denied by Alice: not tonight".into(),
                ..DbError::default()
            }),
            ..Answer::default()
        };
        let r = ended(&Outcome::Ended(Box::new(answer)), Some("r1"));
        assert_eq!(r.is_error, Some(true));
        let v = r.structured_content.unwrap();
        assert_eq!(v["sqlstate"], "42501");
        assert_eq!(v["request_id"], "r1");
        assert!(v["advice"].as_str().unwrap().contains("Do not run it again"));
    }

    #[test]
    fn every_tool_has_an_object_schema_and_the_hold_is_explained() {
        let tools = all();
        let names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
        assert_eq!(
            names,
            [
                "query",
                "wait_for_decision",
                "list_tables",
                "describe_table",
                "explain"
            ]
        );
        for t in &tools {
            assert_eq!(t.input_schema.get("type"), Some(&json!("object")), "{}", t.name);
        }
        let q = tools[0].description.as_deref().unwrap();
        assert!(q.contains("HELD") && q.contains("wait_for_decision") && q.contains("do not retry"));
    }
}
