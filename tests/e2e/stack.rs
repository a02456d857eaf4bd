//! The whole stack from its binaries, as an operator runs it: nats-server,
//! PostgreSQL, airlock-dev-idp, airlock-control, airlock-proxy with the seed
//! policy, and psql as the agent over TLS (sslmode=require).

use std::time::Duration;

use airlock_e2e::binaries::{BinaryStack, REVIEWERS, finish};
use airlock_e2e::review::vote;
use airlock_e2e::{StackBuilder, eventually, eventually_blocking, satisfies};
use airlock_eventlog::proto;

/// Reads flow; DELETE, DROP and UPDATE wait for one reviewer.
const RULES: &str = "      - match: SELECT
        action: allow
      - match: DELETE|DROP|UPDATE
        action: require-approval
";

/// The pending request whose statement starts with `prefix`, as `token` sees it.
async fn pending_for(stack: &BinaryStack, token: &str, prefix: &str) -> proto::RequestView {
    stack.pending(token, |text| text.starts_with(prefix)).await
}

#[tokio::test]
async fn psql_through_the_binaries_select_flows_delete_waits_for_a_human() {
    let stack = StackBuilder::new()
        .orders(20)
        .rules(RULES)
        .proxy_tls()
        .checkpoints()
        .start_binaries();
    let agent = stack.agent_token();
    let alice = stack.user_token(("oid-alice", "Alice", REVIEWERS));

    let out = finish(stack.psql(&agent, "SELECT count(*) FROM orders")).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "20");

    // The DELETE waits for approval...
    let held = stack.psql(&agent, "DELETE FROM orders WHERE id > 15");
    let request = pending_for(&stack, &alice, "").await;
    let asked = request.request.clone().expect("request");
    assert_eq!(
        asked.statement.as_ref().map(|s| s.text.as_str()),
        Some("DELETE FROM orders WHERE id > 15")
    );
    assert_eq!(
        asked.identity.as_ref().map(|i| i.subject.as_str()),
        Some("oid-agent-7")
    );
    let rule = asked.verdict.as_ref().map(|v| v.rule.clone()).unwrap_or_default();
    assert!(
        rule.contains("DELETE"),
        "the reviewer sees the rule that held it: {rule:?}"
    );
    assert_eq!(
        stack.pg.psql("shop", "SELECT count(*) FROM orders"),
        "20",
        "nothing ran yet"
    );

    // ... the agent's own token cannot approve it ...
    let err = stack
        .decide(
            &agent,
            vote(&request.request_id, proto::Decision::Approve, "self"),
        )
        .await
        .expect_err("no self-approval");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    // ... a reviewer approves, and it runs.
    let pinned = proto::DecideRequest {
        statement_sha256: asked
            .statement
            .as_ref()
            .map(|s| s.sha256.clone())
            .unwrap_or_default(),
        ..vote(
            &request.request_id,
            proto::Decision::Approve,
            "expired test orders",
        )
    };
    stack.decide(&alice, pinned).await.expect("alice approves");
    let out = finish(held).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("holding this statement for approval"),
        "psql showed the notice: {stderr}"
    );
    assert_eq!(
        stack.pg.psql("shop", "SELECT count(*) FROM orders"),
        "15",
        "rows gone"
    );

    // A denied one never reaches PostgreSQL.
    let held = stack.psql(&agent, "DROP TABLE orders");
    let request = pending_for(&stack, &alice, "").await;
    stack
        .decide(
            &alice,
            vote(&request.request_id, proto::Decision::Deny, "never drop orders"),
        )
        .await
        .expect("alice denies");
    let out = finish(held).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("denied by Alice: never drop orders"), "{stderr}");
    assert_eq!(stack.pg.psql("shop", "SELECT count(*) FROM orders"), "15");
    assert!(!stack.pg.server_log().contains("DROP TABLE orders"));

    // A CTE that hides a DELETE behind a SELECT is not a read.
    let sneaky = stack.psql(
        &agent,
        "WITH x AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM x",
    );
    let request = pending_for(&stack, &alice, "WITH x AS (DELETE").await;
    assert_eq!(request.state, proto::RequestState::Pending as i32);
    let mut sneaky = sneaky;
    let _ = sneaky.kill();
    let _ = sneaky.wait();

    // A session does not outlive its token: the next statement ends it.
    let short = stack.agent_token_with(&["--ttl", "2s"]);
    let out = finish(stack.psql_at(
        0,
        "prod-maintenance",
        &short,
        &[
            "-c",
            "SELECT 'before'",
            "-c",
            "\\! sleep 3",
            "-c",
            "SELECT 'after'",
        ],
    ))
    .await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        stdout.contains("before") && !stdout.contains("after"),
        "{stdout} / {stderr}"
    );
    assert!(
        stderr.contains("has expired; reconnect with a fresh token"),
        "{stderr}"
    );

    // A dbname no connection has, and a refused token, are refused at login
    // with what to fix (their SQLSTATEs, 3D000 and 28P01, are checked in the
    // proxy's own tests: psql does not print a login's SQLSTATE).
    for (dbname, password, says) in [
        (
            "no-such-connection",
            short.as_str(),
            "no connection named \"no-such-connection\"",
        ),
        ("prod-maintenance", "not-a-token", "access token refused"),
    ] {
        let out = finish(stack.psql_at(0, dbname, password, &["-c", "SELECT 1"])).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(says),
            "{dbname}: {stderr}"
        );
    }

    // COPY: out is a read and flows; in is a write and waits for a reviewer,
    // then its data flows.
    let out = finish(stack.psql(
        &agent,
        "\\copy (SELECT id FROM orders WHERE id <= 3 ORDER BY id) TO STDOUT",
    ))
    .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().collect::<Vec<_>>(),
        vec!["1", "2", "3"]
    );
    let csv = stack.dir.join("new-orders.csv");
    std::fs::write(&csv, "101,10100\n102,10200\n").expect("csv");
    let copy_in = stack.psql(
        &agent,
        &format!(
            "\\copy orders (id, total) FROM '{}' WITH (FORMAT csv)",
            csv.display()
        ),
    );
    let request = pending_for(&stack, &alice, "COPY").await;
    let text = request
        .request
        .as_ref()
        .and_then(|r| r.statement.as_ref())
        .map(|s| s.text.clone())
        .unwrap_or_default();
    assert!(text.contains("FROM STDIN"), "{text}");
    assert_eq!(
        stack
            .pg
            .psql("shop", "SELECT count(*) FROM orders WHERE id > 100"),
        "0"
    );
    stack
        .decide(
            &alice,
            vote(&request.request_id, proto::Decision::Approve, "import"),
        )
        .await
        .expect("approve the import");
    let out = finish(copy_in).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        stack
            .pg
            .psql("shop", "SELECT count(*) FROM orders WHERE id > 100"),
        "2"
    );

    // SIGHUP reloads the policies: reads are now denied, for a stated reason.
    let path = stack.config();
    let text = std::fs::read_to_string(&path).expect("config");
    let stricter = text.replace(
        "      - match: SELECT\n        action: allow",
        "      - match: SELECT\n        action: deny\n        reason: maintenance window",
    );
    assert_ne!(text, stricter);
    std::fs::write(&path, stricter).expect("write config");
    stack.signal_proxy("HUP");
    let out = eventually(
        "the reloaded policy to deny reads",
        Duration::from_secs(10),
        || async {
            satisfies(
                finish(stack.psql(&agent, "SELECT count(*) FROM orders")).await,
                |out| !out.status.success(),
            )
        },
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("maintenance window"), "{stderr}");

    // A forged token is refused at login.
    let out = finish(stack.psql("eyJhbGciOiJub25lIn0.e30.", "SELECT 1")).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("access token refused"));

    auditor_sees_the_same_exchange(&stack);
}

fn airlock_control(stack: &BinaryStack, args: &[&str]) -> std::process::Output {
    stack.control_command(args).output().expect("run airlock-control")
}

/// `export`, `replay` and `verify` tell the story the agent and the
/// reviewer lived: who asked, what was held, who approved or denied and
/// why, what ran, and that the log is intact under signed checkpoints.
fn auditor_sees_the_same_exchange(stack: &BinaryStack) {
    let out = airlock_control(stack, &["export", "--from", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is a JSON object"))
        .collect();
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["sequence"].as_u64(), Some(i as u64 + 1), "in order, no gaps");
    }
    let find = |kind: &str, pred: &dyn Fn(&serde_json::Value) -> bool| {
        lines
            .iter()
            .find(|l| l["kind"] == kind && pred(&l["event"]))
            .unwrap_or_else(|| panic!("no {kind} in the export"))
            .clone()
    };
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();

    // The approved DELETE: request, vote, grant, execution, one session.
    let vote = find("approval_voted", &|e| {
        e["approval_voted"]["reason"] == "expired test orders"
    });
    let request_id = text(&vote["event"]["request_id"]);
    assert_eq!(
        vote["event"]["approval_voted"]["reviewer"]["subject"],
        "oid-alice"
    );
    assert_eq!(vote["event"]["approval_voted"]["decision"], "DECISION_APPROVE");
    let asked = find("approval_requested", &|e| e["request_id"] == request_id.as_str());
    assert_eq!(
        asked["event"]["approval_requested"]["statement"]["text"],
        "DELETE FROM orders WHERE id > 15"
    );
    assert_eq!(
        asked["event"]["approval_requested"]["identity"]["subject"],
        "oid-agent-7"
    );
    find("approval_granted", &|e| e["request_id"] == request_id.as_str());
    let ran = find("statement_executed", &|e| {
        e["statement_executed"]["request_id"] == request_id.as_str()
    });
    assert_eq!(ran["event"]["statement_executed"]["command_tag"], "DELETE 5");
    let session_id = text(&asked["event"]["session_id"]);
    assert_eq!(ran["event"]["session_id"], session_id.as_str());
    let opened = find("session_opened", &|e| e["session_id"] == session_id.as_str());
    assert_eq!(
        opened["event"]["session_opened"]["identity"]["subject"],
        "oid-agent-7"
    );

    // The denied DROP: denied by Alice with her reason, refused, never run.
    let denied = find("approval_voted", &|e| {
        e["approval_voted"]["reason"] == "never drop orders"
    });
    let drop_id = text(&denied["event"]["request_id"]);
    assert_eq!(denied["event"]["approval_voted"]["decision"], "DECISION_DENY");
    find("approval_denied", &|e| e["request_id"] == drop_id.as_str());
    let refused = find("statement_refused", &|e| {
        e["statement_refused"]["request_id"] == drop_id.as_str()
    });
    assert_eq!(refused["event"]["statement_refused"]["cause"], "CAUSE_DENIED");
    assert!(
        !lines.iter().any(|l| {
            let single = [&l["event"]["statement_executed"]];
            let grouped = l["event"]["statements_executed"]["statements"]
                .as_array()
                .map(|g| g.iter().map(|r| &r["statement"]).collect::<Vec<_>>())
                .unwrap_or_default();
            single.into_iter().chain(grouped).any(|x| {
                x["statement"]["text"]
                    .as_str()
                    .is_some_and(|t| t.contains("DROP"))
            })
        }),
        "the DROP never executed"
    );

    // replay counts the same people and outcomes.
    let out = airlock_control(stack, &["replay"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let replay: serde_json::Value = serde_json::from_slice(&out.stdout).expect("replay JSON");
    let alice = &replay["approvals_by_reviewer"]["oid-alice"];
    assert!(alice["approved"].as_u64() >= Some(2), "{replay}");
    assert_eq!(alice["denied"].as_u64(), Some(1), "{replay}");
    let agent = &replay["identities"]["oid-agent-7"];
    assert!(agent["statements_executed"].as_u64() >= Some(3), "{replay}");
    assert!(agent["approvals_requested"].as_u64() >= Some(3), "{replay}");
    assert_eq!(replay["anomalies"].as_u64(), Some(0), "{replay}");

    // verify: chains and signed checkpoints hold (a checkpoint lands each second).
    let public = stack.dir.join("checkpoint.pub");
    let public = public.to_str().expect("utf-8 path");
    let report = eventually_blocking("a signed checkpoint", Duration::from_secs(10), || {
        let out = airlock_control(stack, &["verify", "--checkpoint-key", public]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("verify JSON");
        assert!(out.status.success(), "{report}");
        satisfies(report, |r| r["checkpoints"].as_u64() >= Some(1))
    });
    assert_eq!(report["ok"], true, "{report}");
    assert!(report["checkpoints"].as_u64() >= Some(1), "{report}");
    assert_eq!(report["signatures_checked"], true, "{report}");
    // Every event's writer is known: proxies wrote the facts, the replica
    // the decisions, and nothing is unsigned or refused.
    let writers = &report["writers"];
    assert_eq!(writers["checked"], true, "{report}");
    assert_eq!(
        (writers["unsigned"].as_u64(), writers["refused"].as_u64()),
        (Some(0), Some(0)),
        "{report}"
    );
    assert!(writers["signed"]["proxy"].as_u64() >= Some(5), "{report}");
    assert!(writers["signed"]["control"].as_u64() >= Some(3), "{report}");
}
