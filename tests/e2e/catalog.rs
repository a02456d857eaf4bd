//! The gate judges what PostgreSQL will run, not the names written: against
//! a database whose functions shadow read-only built-ins (in `public` and
//! in another schema on the role's search path), whose views call
//! functions that write, whose updatable view sits over a protected table,
//! whose row-level security calls a function that deletes, and whose role
//! resolves unqualified names through `hr, app, public`,
//! nothing that writes runs without approval, and ordinary reads still
//! flow. The facts follow a function created through the proxy, and a role
//! that cannot read the catalog fails closed and says so.

use std::time::Duration;

use airlock_e2e::binaries::{ALICE, BinaryStack, http_get};
use airlock_e2e::review::vote;
use airlock_e2e::{StackBuilder, request_id};
use airlock_eventlog::proto;

/// Objects a production database holds, each a way a name-based judgement
/// would let a write through.
const DATABASE: &str = "
CREATE SCHEMA app; CREATE SCHEMA hr;
GRANT USAGE, CREATE ON SCHEMA app, hr, public TO maint;
CREATE TABLE hr.salaries (id int PRIMARY KEY, pay int);
INSERT INTO hr.salaries SELECT g, g * 1000 FROM generate_series(1, 5) g;
GRANT ALL ON hr.salaries TO maint;
-- lower(int): no built-in takes an int, so lower(id) runs this.
CREATE FUNCTION public.lower(i int) RETURNS int LANGUAGE sql
  AS $$ DELETE FROM public.orders WHERE id = i; SELECT i $$;
-- abs(text), on the role's path: abs('3') prefers it to the numeric built-ins.
CREATE FUNCTION app.abs(t text) RETURNS int LANGUAGE sql
  AS $$ DELETE FROM hr.salaries WHERE id = t::int; SELECT 0 $$;
CREATE FUNCTION public.touch() RETURNS int LANGUAGE sql
  AS $$ DELETE FROM public.orders WHERE id = 4; SELECT 1 $$;
CREATE VIEW public.v_touch AS SELECT touch() AS t;
CREATE VIEW public.v_totals AS SELECT id, upper(status) AS status, total FROM public.orders;
CREATE VIEW public.pay AS SELECT id, pay FROM hr.salaries;
GRANT SELECT ON public.v_touch, public.v_totals TO maint;
GRANT ALL ON public.pay TO maint;
-- Row-level security whose policy calls a function that deletes.
CREATE TABLE public.notes (id int, body text);
INSERT INTO public.notes VALUES (1, 'x');
CREATE FUNCTION public.stamp() RETURNS boolean LANGUAGE sql
  AS $$ DELETE FROM public.orders WHERE id = 7; SELECT true $$;
ALTER TABLE public.notes ENABLE ROW LEVEL SECURITY;
CREATE POLICY notes_read ON public.notes USING (public.stamp());
GRANT SELECT ON public.notes TO maint;
-- Calls sqlparser reads as expressions of their own.
CREATE FUNCTION public.floor(i int) RETURNS int LANGUAGE sql
  AS $$ DELETE FROM public.orders WHERE id = i; SELECT i $$;
-- Views calling built-ins that write or run SQL.
CREATE SEQUENCE public.s;
CREATE VIEW public.v_reset AS SELECT pg_catalog.setval('public.s', 1) AS v;
CREATE VIEW public.v_xml AS SELECT pg_catalog.query_to_xml('select public.touch()', true, false, '') AS x;
GRANT SELECT ON public.v_reset, public.v_xml TO maint;
GRANT ALL ON SEQUENCE public.s TO maint;
-- A cascade into a protected table, and a default that runs user code.
CREATE TABLE public.customers (id int PRIMARY KEY);
INSERT INTO public.customers VALUES (1), (2);
CREATE TABLE hr.contracts (id int, customer int REFERENCES public.customers ON DELETE CASCADE);
INSERT INTO hr.contracts VALUES (1, 1);
CREATE TABLE public.stamped (id int, at int DEFAULT public.touch());
GRANT ALL ON public.customers, public.stamped, hr.contracts TO maint;
ALTER ROLE maint IN DATABASE shop SET search_path = hr, app, public;
";

/// A schema off the role's path holding another `orders`.
const VAULT: &str = "
CREATE SCHEMA vault;
CREATE TABLE vault.orders AS SELECT * FROM public.orders;
GRANT USAGE ON SCHEMA vault TO maint;
GRANT ALL ON vault.orders TO maint;
";

fn counts(stack: &BinaryStack) -> (String, String) {
    (
        stack.pg.psql("shop", "SELECT count(*) FROM public.orders"),
        stack.pg.psql("shop", "SELECT count(*) FROM hr.salaries"),
    )
}

/// Runs `sql` on a new session: `Ok(rows)` if it ran at once, `Err(request
/// id)` if the proxy held it (the session is left waiting).
async fn run_or_hold(stack: &BinaryStack, token: &str, sql: &str) -> Result<usize, String> {
    let (client, mut notices) = stack.connect(token).await;
    let sql = sql.to_owned();
    let mut ran = tokio::spawn(async move {
        let r = client.simple_query(&sql).await;
        (client, r)
    });
    tokio::select! {
        done = &mut ran => {
            let (_client, r) = done.expect("task");
            Ok(r.map(|m| m.len()).unwrap_or_else(|e| panic!("the statement failed: {e}")))
        }
        notice = tokio::time::timeout(Duration::from_secs(15), notices.recv()) => {
            let notice = notice.expect("a notice or an answer in time").expect("notice");
            Err(request_id(&notice).unwrap_or_else(|| panic!("not a hold notice: {notice}")))
        }
    }
}

/// Runs `sql` on a new session of the agent's, held and then approved by
/// alice; the session, once the statement has run.
async fn approved(stack: &BinaryStack, agent: &str, sql: &str) -> tokio_postgres::Client {
    let alice = stack.user_token(ALICE);
    let (session, mut notices) = stack.connect(agent).await;
    let text = sql.to_owned();
    let run = tokio::spawn(async move {
        let r = session.simple_query(&text).await;
        (session, r)
    });
    let notice = tokio::time::timeout(Duration::from_secs(15), notices.recv())
        .await
        .expect("held in time")
        .expect("notice");
    let id = request_id(&notice).expect("request id");
    stack
        .decide(&alice, vote(&id, proto::Decision::Approve, "looks fine"))
        .await
        .expect("alice approves");
    let (session, r) = run.await.expect("task");
    r.unwrap_or_else(|e| panic!("{sql} failed once approved: {e:?}"));
    session
}

async fn assert_held(stack: &BinaryStack, token: &str, sql: &str) {
    let before = counts(stack);
    let held = run_or_hold(stack, token, sql).await;
    assert!(held.is_err(), "{sql} ran without approval");
    assert_eq!(counts(stack), before, "{sql} changed rows while held");
}

async fn assert_runs(stack: &BinaryStack, token: &str, sql: &str) {
    let ran = run_or_hold(stack, token, sql).await;
    assert!(ran.is_ok(), "{sql} was held: {ran:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_that_would_write_are_held_and_ordinary_reads_flow() {
    let stack = tokio::task::block_in_place(|| StackBuilder::new().database_setup(DATABASE).start_binaries());
    let agent = stack.agent_token();
    // Ordinary reads of tables and views, built-ins nobody shadows, and
    // a shadowed name qualified with pg_catalog.
    for sql in [
        "SELECT count(*) FROM orders",
        "SELECT * FROM v_totals",
        "SELECT upper(status), total FROM orders",
        "SELECT pg_catalog.lower('A')",
        "SELECT count(*) FROM salaries",
    ] {
        assert_runs(&stack, &agent, sql).await;
    }
    // Calls that resolve to user functions that delete, and a view that
    // calls one: held under the seed policy (SELECT -> allow).
    for sql in [
        "SELECT lower(id) FROM orders WHERE id = 2",
        "SELECT abs('3')",
        "SELECT * FROM v_touch",
        "SELECT * FROM notes",
        "SELECT floor(id) FROM orders WHERE id = 8",
        "SELECT * FROM v_reset",
        "SELECT * FROM v_xml",
    ] {
        assert_held(&stack, &agent, sql).await;
    }
    assert_eq!(counts(&stack), ("10".into(), "5".into()));
}

#[tokio::test(flavor = "multi_thread")]
async fn table_scoped_rules_see_the_search_path_and_the_table_under_a_view() {
    let rules = "      - match: SELECT
        action: allow
      - match: DELETE|UPDATE|INSERT
        tables: [public.*]
        action: allow
      - functions: [pg_cancel_backend]
        action: allow
";
    let stack = tokio::task::block_in_place(|| {
        StackBuilder::new()
            .rules(rules)
            .database_setup(DATABASE)
            .start_binaries()
    });
    let agent = stack.agent_token();
    assert_runs(&stack, &agent, "DELETE FROM orders WHERE id = 10").await;
    assert_eq!(counts(&stack).0, "9", "public.orders is the agent's to change");
    // `salaries` is hr.salaries on this role's path; `pay` is a view
    // over it.
    for sql in [
        "DELETE FROM salaries WHERE id = 1",
        "DELETE FROM pay WHERE id = 2",
        "UPDATE public.pay SET pay = 0",
        "INSERT INTO pay VALUES (9, 9)",
        // Cascades into hr.contracts; runs touch() for the default.
        "DELETE FROM customers WHERE id = 1",
        "INSERT INTO stamped (id) VALUES (1)",
    ] {
        assert_held(&stack, &agent, sql).await;
    }
    assert_eq!(counts(&stack), ("9".into(), "5".into()));
    assert_eq!(stack.pg.psql("shop", "SELECT count(*) FROM hr.contracts"), "1");

    // A session with a call allowed in an open transaction still sees
    // through views (its facts are only distrusted for calls).
    let (client, mut notices) = stack.connect(&agent).await;
    client.simple_query("BEGIN").await.expect("begin");
    client
        .simple_query("SELECT pg_cancel_backend(0)")
        .await
        .expect("an allowed call");
    let delete = tokio::spawn(async move { client.simple_query("DELETE FROM pay WHERE id = 2").await });
    let held = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(n) = notices.recv().await {
            if n.contains("holding") {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(held, Ok(true)),
        "the DELETE through the view was not held: {held:?} (finished: {})",
        delete.is_finished()
    );
    assert_eq!(counts(&stack), ("9".into(), "5".into()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_function_created_through_the_proxy_is_seen_at_once() {
    let stack = tokio::task::block_in_place(|| StackBuilder::new().database_setup(DATABASE).start_binaries());
    let agent = stack.agent_token();
    // length(int) does not exist yet: the call is taken for the built-in.
    let (client, _n) = stack.connect(&agent).await;
    let err = client
        .simple_query("SELECT length(id) FROM orders WHERE id = 5")
        .await
        .expect_err("no length(integer) yet");
    let message = err
        .as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains("does not exist"), "{err:?}");

    // Created through the proxy, once approved.
    let creator = approved(
        &stack,
        &agent,
        "CREATE FUNCTION public.length(i int) RETURNS int LANGUAGE sql \
         AS $$ DELETE FROM public.orders WHERE id = i; SELECT i $$",
    )
    .await;

    // At once, on the same session and on another: a call, held.
    let same = creator.simple_query("SELECT length(id) FROM orders WHERE id = 5");
    let held = tokio::time::timeout(Duration::from_secs(3), same).await;
    assert!(
        held.is_err(),
        "the creating session ran the new function: {held:?}"
    );
    assert_held(&stack, &agent, "SELECT length(id) FROM orders WHERE id = 6").await;
    assert_eq!(counts(&stack).0, "10");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_role_that_cannot_read_the_catalog_fails_closed_and_says_so() {
    let stack = tokio::task::block_in_place(|| {
        StackBuilder::new()
            .database_setup("REVOKE SELECT ON pg_catalog.pg_rewrite FROM PUBLIC")
            .start_binaries()
    });
    let agent = stack.agent_token();
    let port = stack.proxy_health_ports[0];
    let body = tokio::task::block_in_place(|| {
        airlock_testkit::eventually_blocking(
            "readyz to report the degraded connection",
            Duration::from_secs(15),
            || {
                let (status, body) = http_get(port, "/readyz");
                if status == 200 && body.contains("degraded") {
                    Ok(body)
                } else {
                    Err((status, body))
                }
            },
        )
    });
    assert!(body.contains("prod-maintenance"), "{body}");
    assert!(body.contains("permission denied"), "{body}");
    // Only calls qualified with pg_catalog are taken for built-ins, and
    // any relation may be a view: reads of tables are held too.
    assert_runs(&stack, &agent, "SELECT pg_catalog.upper('a')").await;
    for sql in ["SELECT count(*)", "SELECT pg_catalog.count(*) FROM orders"] {
        let held = run_or_hold(&stack, &agent, sql).await;
        assert!(held.is_err(), "{sql} ran without the catalog's facts");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_temporary_view_does_not_pass_for_the_table_it_shadows() {
    let rules = "      - match: SELECT
        action: allow
      - match: DELETE|UPDATE|INSERT
        tables: [public.*]
        action: allow
";
    let stack = tokio::task::block_in_place(|| {
        StackBuilder::new()
            .rules(rules)
            .database_setup(DATABASE)
            .start_binaries()
    });
    let agent = stack.agent_token();
    let session = approved(
        &stack,
        &agent,
        "CREATE TEMP VIEW orders AS SELECT id, pay FROM hr.salaries",
    )
    .await;
    // `orders` is now pg_temp.orders, over hr.salaries: not public.orders.
    let delete = session.simple_query("DELETE FROM orders WHERE id = 4");
    let held = tokio::time::timeout(Duration::from_secs(3), delete).await;
    assert!(
        held.is_err(),
        "the DELETE through the temporary view ran: {held:?}"
    );
    assert_eq!(counts(&stack).1, "5");
}

/// A session that sets its own search path (allowed here) resolves its
/// unqualified names through it, not the role's: `orders` is then
/// `vault.orders`, which a rule for `public.*` does not cover. Before,
/// the gate took it for `public.orders` and let the DELETE run.
#[tokio::test(flavor = "multi_thread")]
async fn a_search_path_set_by_the_session_is_not_taken_for_the_roles() {
    let rules = "      - match: SELECT|SET
        action: allow
      - functions: [set_config]
        action: allow
      - match: DELETE
        tables: [public.*]
        action: allow
";
    let setup = format!("{DATABASE}{VAULT}");
    let stack = tokio::task::block_in_place(|| {
        StackBuilder::new()
            .rules(rules)
            .database_setup(&setup)
            .start_binaries()
    });
    let vault = || stack.pg.psql("shop", "SELECT count(*) FROM vault.orders");
    let agent = stack.agent_token();
    for set in [
        "SET search_path = vault",
        "SELECT set_config('search_path', 'vault', false)",
    ] {
        let (client, mut notices) = stack.connect(&agent).await;
        // Prepared while the path is the role's: judged as public.orders.
        let prepared = client
            .prepare("DELETE FROM orders WHERE id = $1")
            .await
            .expect("prepared");
        client
            .simple_query(set)
            .await
            .unwrap_or_else(|e| panic!("{set}: {e:?}"));
        // PostgreSQL plans it again against vault: it may not run as judged.
        let err = client
            .execute(&prepared, &[&1i32])
            .await
            .expect_err("a statement prepared before the path changed ran");
        assert!(
            format!("{err:?}").contains("42501") || format!("{err:?}").contains("26000"),
            "{set}: {err:?}"
        );
        let text = "DELETE FROM orders WHERE id = 2";
        let run = tokio::spawn(async move { client.simple_query(text).await });
        let notice = tokio::time::timeout(Duration::from_secs(15), notices.recv())
            .await
            .unwrap_or_else(|_| panic!("{set}: the DELETE was not held (finished: {})", run.is_finished()))
            .unwrap_or_else(|| panic!("{set}: no hold notice: the DELETE ran and the session ended"));
        assert!(request_id(&notice).is_some(), "{set}: {notice}");
        run.abort();
        assert_eq!(vault(), "10", "{set}: vault.orders lost rows");
    }
    // In one text: PostgreSQL looks the DELETE's names up after the SET ran.
    assert_held(
        &stack,
        &agent,
        "SET search_path = vault; DELETE FROM orders WHERE id = 3",
    )
    .await;
    // A SQL PREPARE made under the role's path, executed after the SET in
    // the same text: PostgreSQL plans it again against vault (review
    // finding).
    let (client, _notices) = stack.connect(&agent).await;
    client
        .simple_query("PREPARE d AS DELETE FROM orders WHERE id = $1")
        .await
        .expect("prepared as a DELETE on public.orders");
    let err = client
        .simple_query("SET search_path = vault; EXECUTE d(4)")
        .await
        .expect_err("EXECUTE of a statement prepared under another path ran");
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{err:?}");
    assert_eq!(vault(), "10", "vault.orders lost rows");
    assert_eq!(counts(&stack).0, "10", "public.orders untouched");
}

/// PostgreSQL keeps the search path a session started with, though the
/// role's default changes: a session that started under `vault` still
/// reads `orders` as vault.orders after the facts (read again on SIGHUP)
/// say a fresh session's path is `public` (review finding).
#[tokio::test(flavor = "multi_thread")]
async fn a_session_keeps_the_path_it_started_with_when_the_roles_default_changes() {
    let rules = "      - match: SELECT|SHOW
        action: allow
      - match: DELETE
        tables: [public.*]
        action: allow
";
    let setup = format!("{DATABASE}{VAULT}ALTER ROLE maint IN DATABASE shop SET search_path = vault;\n");
    let stack = tokio::task::block_in_place(|| {
        StackBuilder::new()
            .rules(rules)
            .database_setup(&setup)
            .start_binaries()
    });
    let agent = stack.agent_token();
    let (old, mut notices) = stack.connect(&agent).await;
    let rows = old.simple_query("SHOW search_path").await.expect("show");
    assert!(format!("{rows:?}").contains("vault"), "{rows:?}");
    // Under vault, a DELETE of `orders` is not covered by public.*.
    stack.pg.psql(
        "shop",
        "ALTER ROLE maint IN DATABASE shop SET search_path = public",
    );
    stack.signal_proxy("HUP");
    // A fresh session now deletes from public.orders at once...
    airlock_e2e::eventually(
        "the facts to show the new path",
        Duration::from_secs(15),
        || async {
            run_or_hold(&stack, &agent, "DELETE FROM orders WHERE id = 9")
                .await
                .ok()
        },
    )
    .await;
    assert_eq!(counts(&stack).0, "9");
    // ...while the old session's is still held.
    let delete = tokio::spawn(async move { old.simple_query("DELETE FROM orders WHERE id = 1").await });
    let notice = tokio::time::timeout(Duration::from_secs(15), notices.recv())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the old session's DELETE was not held (finished: {})",
                delete.is_finished()
            )
        })
        .unwrap_or_else(|| panic!("no hold notice: the DELETE ran and the session ended"));
    assert!(request_id(&notice).is_some(), "{notice}");
    assert_eq!(
        stack.pg.psql("shop", "SELECT count(*) FROM vault.orders"),
        "10",
        "vault.orders lost a row"
    );
}
