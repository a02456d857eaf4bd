//! `airlock-control policy simulate` over a real JetStream log of a million
//! recorded statements: its counts match a brute-force count of what was
//! written, and a candidate that holds DELETEs on one more table shows
//! exactly those statements as changed. The log is not written to.

use std::time::SystemTime;

use airlock_eventlog::proto::{self, event::Body};
use airlock_eventlog::{ChainWriter, EventLog, NatsSettings, SessionId, new_event, subjects};
use airlock_testkit::NatsServer;

const STATEMENTS: u64 = 1_000_000;
const SESSIONS: u64 = 20;
/// Statements per recorded group (a busy session's proxy groups them).
const PER_EVENT: u64 = 500;

/// The policies in force when the log was written: reads, and deletes in
/// `public`, allowed.
const CONFIG: &str = "\
nats:
  url: {NATS}
identity:
  issuer: https://issuer.example/v2.0
  audience: api://airlock
  group_names:
    agents: 6f1d1a52-0c3e-4b43-9d6e-2f1b5d0c9a11
control:
  listen: 127.0.0.1:7070
policies:
  - policy: agents
    connection: prod
    rules:
      - match: SELECT
        action: allow
      - match: DELETE
        tables: [public.*]
        action: allow
";

/// What statement `i` of a session is: a read or a delete of one of ten tables.
fn statement(i: u64) -> (bool, u64, String) {
    let table = i % 10;
    let delete = i.is_multiple_of(3);
    let sql = if delete {
        format!("DELETE FROM t{table} WHERE id = {}", i % 100)
    } else {
        format!("SELECT * FROM t{table} WHERE id = {}", i % 100)
    };
    (delete, table, sql)
}

async fn write_log(log: &EventLog) {
    let source = proto::Source {
        kind: proto::source::Kind::Proxy as i32,
        id: "synth-proxy".into(),
        ..Default::default()
    };
    for s in 0..SESSIONS {
        let session = SessionId::generate();
        let mut chain = ChainWriter::new_chain(subjects::session(&session));
        let on_session = |body: Body| {
            let mut e = new_event(&source, body);
            e.session_id = session.to_string();
            e
        };
        let opened = on_session(Body::SessionOpened(proto::SessionOpened {
            identity: Some(proto::Identity {
                subject: format!("oid-agent-{s}"),
                display_name: format!("agent-{s}"),
                groups: vec![proto::Group {
                    id: "6f1d1a52-0c3e-4b43-9d6e-2f1b5d0c9a11".into(),
                    name: "agents".into(),
                }],
                ..Default::default()
            }),
            connection: Some(proto::ConnectionInfo {
                name: "prod".into(),
                ..Default::default()
            }),
            record: true,
            ..Default::default()
        }));
        chain.append(log, opened).await.expect("append");
        let per_session = STATEMENTS / SESSIONS;
        let mut i = 0;
        while i < per_session {
            let statements = (i..(i + PER_EVENT).min(per_session))
                .map(|j| proto::RecordedStatement {
                    id: airlock_eventlog::EventId::generate().to_string(),
                    time: Some(SystemTime::now().into()),
                    statement: Some(proto::StatementExecuted {
                        statement: Some(proto::Statement {
                            text: statement(j).2,
                            ..Default::default()
                        }),
                        verdict: Some(proto::Verdict {
                            action: proto::verdict::Action::Allow as i32,
                            ..Default::default()
                        }),
                        command_tag: "SELECT 1".into(),
                        ..Default::default()
                    }),
                })
                .collect();
            let group = on_session(Body::StatementsExecuted(proto::StatementsExecuted { statements }));
            chain.append(log, group).await.expect("append");
            i += PER_EVENT;
        }
    }
}

fn run(args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_airlock-control"))
        .args(args)
        .output()
        .expect("run airlock-control");
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stderr).trim());
    serde_json::from_slice(&out.stdout).expect("a JSON report")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_million_statements_simulated_match_a_brute_force_count() {
    let nats = NatsServer::start();
    let log = EventLog::connect(NatsSettings::new(nats.url()))
        .await
        .expect("connect");
    log.ensure_stream().await.expect("stream");
    write_log(&log).await;
    let last = log.last_sequence().await.expect("last");

    // Brute force: what was written, counted from the generator.
    let per_session = STATEMENTS / SESSIONS;
    let deletes_of_t7 = (0..per_session)
        .filter(|&i| matches!(statement(i), (true, 7, _)))
        .count() as u64
        * SESSIONS;
    assert!(deletes_of_t7 > 0);

    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("airlock.yaml");
    std::fs::write(&config, CONFIG.replace("{NATS}", &nats.url())).expect("write");
    let candidate = dir.path().join("candidate.yaml");
    std::fs::write(
        &candidate,
        CONFIG.replace("{NATS}", &nats.url()).replace(
            "    rules:\n",
            "    rules:\n      - match: DELETE\n        tables: [public.t7]\n        action: require-approval\n        reviewers: [leads]\n",
        ),
    )
    .expect("write");
    let config = config.display().to_string();

    // The policies in force: nothing changes.
    let same = run(&[
        "policy", "simulate", "--config", &config, "--policy", &config, "--json",
    ]);
    assert_eq!(same["statements"], STATEMENTS);
    assert_eq!(same["changed"], 0);
    assert_eq!(same["outcomes"]["allow -> allow"], STATEMENTS);

    // One more table held: exactly its deletes change.
    let r = run(&[
        "policy",
        "simulate",
        "--config",
        &config,
        "--policy",
        &candidate.display().to_string(),
        "--json",
    ]);
    assert_eq!(r["statements"], STATEMENTS);
    assert_eq!(r["changed"], deletes_of_t7);
    assert_eq!(r["outcomes"]["allow -> require_approval"], deletes_of_t7);
    assert_eq!(r["outcomes"]["allow -> allow"], STATEMENTS - deletes_of_t7);
    assert_eq!(r["now_denied"], 0);
    assert_eq!(r["holds_by_group"]["leads"]["candidate"], deletes_of_t7);
    let by_identity = r["changed_by_identity"].as_object().expect("map");
    assert_eq!(by_identity.len() as u64, SESSIONS);
    assert!(
        by_identity
            .values()
            .all(|n| n.as_u64() == Some(deletes_of_t7 / SESSIONS))
    );
    for example in r["examples"].as_array().expect("examples") {
        assert!(
            example["sql"]
                .as_str()
                .is_some_and(|s| s.starts_with("DELETE FROM t7 ")),
            "{example}"
        );
    }

    // A range: only the first session's groups (its opening is event 1).
    let first = 1 + per_session / PER_EVENT;
    let ranged = run(&[
        "policy",
        "simulate",
        "--config",
        &config,
        "--policy",
        &candidate.display().to_string(),
        "--to",
        &first.to_string(),
        "--json",
    ]);
    assert_eq!(ranged["statements"], per_session);
    assert_eq!(ranged["changed"], deletes_of_t7 / SESSIONS);

    // Read, never written.
    assert_eq!(log.last_sequence().await.expect("last"), last);
}
