//! The whole stack from its binaries, as an operator runs it: nats-server,
//! PostgreSQL, airlock-dev-idp, airlock-control, airlock-proxy with the seed
//! policy, and psql as the agent over TLS (sslmode=require).

use std::process::{Command, Stdio};
use std::time::Duration;

use airlock_e2e::authed;
use airlock_eventlog::proto;
use airlock_testkit::{NatsServer, Postgres, PostgresOptions, free_port, workspace_binary};

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(port: u16, what: &str) {
    for _ in 0..300 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} does not listen on {port}");
}

const AGENTS: &str = "6f1d1a52-0c3e-4b43-9d6e-2f1b5d0c9a11";
const REVIEWERS: &str = "0b7e2f4c-8a5d-4c1e-9f3a-7d2c6b1e4a90";

struct Stack {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    pg: Postgres,
    _nats: NatsServer,
    issuer: String,
    proxy_port: u16,
    control_port: u16,
    proxy_pid: u32,
    _children: Vec<Child>,
}

impl Stack {
    fn start() -> Stack {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_path_buf();
        let pg = Postgres::start_with(PostgresOptions::default().setting("log_statement", "all"));
        pg.create_database("shop");
        pg.create_role("maint", "maint-secret");
        pg.psql(
            "shop",
            "CREATE TABLE orders (id int PRIMARY KEY, total int); \
             INSERT INTO orders SELECT g, g * 100 FROM generate_series(1, 20) g; GRANT ALL ON orders TO maint",
        );
        let nats = NatsServer::start();
        let cert =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).expect("cert");
        std::fs::write(dir.join("proxy.crt"), cert.cert.pem()).expect("cert");
        std::fs::write(dir.join("proxy.key"), cert.signing_key.serialize_pem()).expect("key");

        let idp_port = free_port();
        let issuer = format!("http://127.0.0.1:{idp_port}");
        let mut children = vec![Child(
            Command::new(workspace_binary("airlock-dev-idp"))
                .arg("serve")
                .args(["--listen", &format!("127.0.0.1:{idp_port}"), "--issuer", &issuer])
                .arg("--key-file")
                .arg(dir.join("idp.key"))
                .stderr(Stdio::null())
                .spawn()
                .expect("start airlock-dev-idp"),
        )];
        wait_port(idp_port, "airlock-dev-idp");

        let (control_port, proxy_port) = (free_port(), free_port());
        let config = format!(
            r#"
nats:
  url: {nats}
identity:
  issuer: {issuer}
  audience: api://airlock
  group_names:
    db-maintenance-agents: {AGENTS}
    db-reviewers: {REVIEWERS}
approvals:
  reviewers: [db-reviewers]
  timeout: 2m
control:
  listen: 127.0.0.1:{control_port}
  checkpoints: {{ signing_key: {dir}/checkpoint.key, interval: 1s }}
proxy:
  listen: 127.0.0.1:{proxy_port}
  control: http://127.0.0.1:{control_port}
  tls: {{ cert: {dir}/proxy.crt, key: {dir}/proxy.key }}
  reviewer_url: https://airlock.example
connections:
  - name: prod-maintenance
    upstream: postgres://maint@127.0.0.1:{pg_port}/shop
    password_env: PROD_MAINT_PASSWORD
policies:
  - policy: db-maintenance-agents
    connection: prod-maintenance
    rules:
      - match: SELECT
        action: allow
      - match: DELETE|DROP|UPDATE
        action: require-approval
    record: true
"#,
            nats = nats.url(),
            dir = dir.display(),
            pg_port = pg.port(),
        );
        std::fs::write(dir.join("airlock.yaml"), config).expect("config");
        let keys = Command::new(workspace_binary("airlock-control"))
            .args(["checkpoint-key", "--private"])
            .arg(dir.join("checkpoint.key"))
            .arg("--public")
            .arg(dir.join("checkpoint.pub"))
            .output()
            .expect("airlock-control checkpoint-key");
        assert!(keys.status.success(), "{}", String::from_utf8_lossy(&keys.stderr));
        children.push(Child(
            Command::new(workspace_binary("airlock-control"))
                .args(["serve", "--config"])
                .arg(dir.join("airlock.yaml"))
                .stderr(Stdio::null())
                .spawn()
                .expect("start airlock-control"),
        ));
        wait_port(control_port, "airlock-control");
        children.push(Child(
            Command::new(workspace_binary("airlock-proxy"))
                .arg("--config")
                .arg(dir.join("airlock.yaml"))
                .env("PROD_MAINT_PASSWORD", "maint-secret")
                .stderr(Stdio::null())
                .spawn()
                .expect("start airlock-proxy"),
        ));
        wait_port(proxy_port, "airlock-proxy");
        let proxy_pid = children.last().map(|c| c.0.id()).unwrap_or(0);
        Stack {
            _tmp: tmp,
            dir,
            pg,
            _nats: nats,
            issuer,
            proxy_port,
            control_port,
            proxy_pid,
            _children: children,
        }
    }

    fn token(&self, args: &[&str]) -> String {
        let out = Command::new(workspace_binary("airlock-dev-idp"))
            .arg("token")
            .arg("--key-file")
            .arg(self.dir.join("idp.key"))
            .args(["--issuer", &self.issuer, "--audience", "api://airlock"])
            .args(args)
            .output()
            .expect("mint a token");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn agent_token(&self) -> String {
        self.token(&[
            "--sub",
            "oid-agent-7",
            "--name",
            "agent-7",
            "--app",
            "--group",
            AGENTS,
        ])
    }

    /// psql as the agent, over TLS.
    fn psql(&self, token: &str, sql: &str) -> std::process::Child {
        Command::new("psql")
            .arg(format!(
                "host=127.0.0.1 port={} dbname=prod-maintenance user=agent-7 sslmode=require",
                self.proxy_port
            ))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGPASSWORD", token)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run psql")
    }

    async fn reviewer(
        &self,
    ) -> proto::reviewer_service_client::ReviewerServiceClient<tonic::transport::Channel> {
        proto::reviewer_service_client::ReviewerServiceClient::connect(format!(
            "http://127.0.0.1:{}",
            self.control_port
        ))
        .await
        .expect("reviewer connects")
    }

    async fn pending(&self, reviewer_token: &str) -> proto::RequestView {
        self.pending_for(reviewer_token, "").await
    }

    /// The pending request whose statement starts with `prefix`.
    async fn pending_for(&self, reviewer_token: &str, prefix: &str) -> proto::RequestView {
        let mut client = self.reviewer().await;
        for _ in 0..100 {
            let r = client
                .list_requests(authed(
                    reviewer_token,
                    proto::ListRequestsRequest {
                        states: vec![proto::RequestState::Pending as i32],
                        ..Default::default()
                    },
                ))
                .await;
            if let Ok(r) = r
                && let Some(v) = r.into_inner().requests.into_iter().find(|v| {
                    v.request
                        .as_ref()
                        .and_then(|r| r.statement.as_ref())
                        .is_some_and(|s| s.text.starts_with(prefix))
                })
            {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no pending request appeared");
    }
}

async fn finish(child: std::process::Child) -> std::process::Output {
    tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("psql output")
}

#[tokio::test]
async fn psql_through_the_binaries_select_flows_delete_waits_for_a_human() {
    let stack = Stack::start();
    let agent = stack.agent_token();
    let alice = stack.token(&["--sub", "oid-alice", "--name", "Alice", "--group", REVIEWERS]);

    let out = finish(stack.psql(&agent, "SELECT count(*) FROM orders")).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "20");

    // The DELETE waits for approval...
    let held = stack.psql(&agent, "DELETE FROM orders WHERE id > 15");
    let request = stack.pending(&alice).await;
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
        .reviewer()
        .await
        .decide(authed(
            &agent,
            proto::DecideRequest {
                request_id: request.request_id.clone(),
                decision: proto::Decision::Approve as i32,
                reason: "self".into(),
                statement_sha256: vec![],
            },
        ))
        .await
        .expect_err("no self-approval");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    // ... a reviewer approves, and it runs.
    stack
        .reviewer()
        .await
        .decide(authed(
            &alice,
            proto::DecideRequest {
                request_id: request.request_id.clone(),
                decision: proto::Decision::Approve as i32,
                reason: "expired test orders".into(),
                statement_sha256: asked
                    .statement
                    .as_ref()
                    .map(|s| s.sha256.clone())
                    .unwrap_or_default(),
            },
        ))
        .await
        .expect("alice approves");
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
    let request = stack.pending(&alice).await;
    stack
        .reviewer()
        .await
        .decide(authed(
            &alice,
            proto::DecideRequest {
                request_id: request.request_id.clone(),
                decision: proto::Decision::Deny as i32,
                reason: "never drop orders".into(),
                statement_sha256: vec![],
            },
        ))
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
    let request = stack.pending_for(&alice, "WITH x AS (DELETE").await;
    assert_eq!(request.state, proto::RequestState::Pending as i32);
    let mut sneaky = sneaky;
    let _ = sneaky.kill();
    let _ = sneaky.wait();

    // A session does not outlive its token: the next statement ends it.
    let short = stack.token(&[
        "--sub",
        "oid-agent-7",
        "--name",
        "agent-7",
        "--app",
        "--group",
        AGENTS,
        "--ttl",
        "2s",
    ]);
    let out = finish(
        Command::new("psql")
            .arg(format!(
                "host=127.0.0.1 port={} dbname=prod-maintenance user=agent-7 sslmode=require",
                stack.proxy_port
            ))
            .args([
                "-X",
                "-A",
                "-t",
                "-c",
                "SELECT 'before'",
                "-c",
                "\\! sleep 3",
                "-c",
                "SELECT 'after'",
            ])
            .env("PGPASSWORD", &short)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("psql"),
    )
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

    // A dbname no connection has is PostgreSQL's "database does not exist"
    // (3D000); a refused token is its "password authentication failed"
    // (28P01), so drivers react as they would to PostgreSQL.
    for (dbname, password, code) in [
        ("no-such-connection", short.as_str(), "3D000"),
        ("prod-maintenance", "not-a-token", "28P01"),
    ] {
        let err = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(stack.proxy_port)
            .user("agent-7")
            .password(password)
            .dbname(dbname)
            .ssl_mode(tokio_postgres::config::SslMode::Disable)
            .connect(tokio_postgres::NoTls)
            .await
            .map(|_| ())
            .expect_err("refused");
        let db = err.as_db_error().expect("an error from the proxy");
        assert_eq!(db.code().code(), code, "{dbname}: {}", db.message());
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
        &format!("\\copy orders FROM '{}' WITH (FORMAT csv)", csv.display()),
    );
    let request = stack.pending_for(&alice, "COPY").await;
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
        .reviewer()
        .await
        .decide(authed(
            &alice,
            proto::DecideRequest {
                request_id: request.request_id.clone(),
                decision: proto::Decision::Approve as i32,
                reason: "import".into(),
                statement_sha256: vec![],
            },
        ))
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
    let path = stack.dir.join("airlock.yaml");
    let text = std::fs::read_to_string(&path).expect("config");
    let stricter = text.replace(
        "      - match: SELECT\n        action: allow",
        "      - match: SELECT\n        action: deny\n        reason: maintenance window",
    );
    assert_ne!(text, stricter);
    std::fs::write(&path, stricter).expect("write config");
    let status = Command::new("kill")
        .args(["-HUP", &stack.proxy_pid.to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
    let mut stderr = String::new();
    for _ in 0..50 {
        let out = finish(stack.psql(&agent, "SELECT count(*) FROM orders")).await;
        stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stderr.contains("maintenance window"), "{stderr}");

    // A forged token is refused at login.
    let out = finish(stack.psql("eyJhbGciOiJub25lIn0.e30.", "SELECT 1")).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("access token refused"));

    auditor_sees_the_same_exchange(&stack);
}

fn airlock_control(stack: &Stack, args: &[&str]) -> std::process::Output {
    Command::new(workspace_binary("airlock-control"))
        .args(args)
        .arg("--config")
        .arg(stack.dir.join("airlock.yaml"))
        .output()
        .expect("run airlock-control")
}

/// `export`, `replay` and `verify` tell the story the agent and the
/// reviewer lived: who asked, what was held, who approved or denied and
/// why, what ran, and that the log is intact under signed checkpoints.
fn auditor_sees_the_same_exchange(stack: &Stack) {
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
    let mut report = serde_json::Value::Null;
    for _ in 0..50 {
        let out = airlock_control(stack, &["verify", "--checkpoint-key", public]);
        report = serde_json::from_slice(&out.stdout).expect("verify JSON");
        assert!(out.status.success(), "{report}");
        if report["checkpoints"].as_u64() >= Some(1) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(report["ok"], true, "{report}");
    assert!(report["checkpoints"].as_u64() >= Some(1), "{report}");
    assert_eq!(report["signatures_checked"], true, "{report}");
}
