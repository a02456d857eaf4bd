//! A fleet from the real binaries: two control-plane replicas and two
//! proxies on one log. A statement held on one proxy is approved through
//! the replica it is not attached to; a replica is killed while a statement
//! is held, and the approval still arrives (the proxy fails over and
//! re-announces what it holds).

use std::process::{Command, Stdio};
use std::time::Duration;

use airlock_e2e::authed;
use airlock_eventlog::proto;
use airlock_testkit::{NatsServer, Postgres, free_port, workspace_binary};

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(port: u16) {
    for _ in 0..300 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on {port}");
}

const AGENTS: &str = "grp-agents";
const REVIEWERS: &str = "grp-reviewers";

fn config(nats: &str, issuer: &str, pg: u16, control: u16, proxy: u16, attach: &[u16]) -> String {
    let attach: Vec<String> = attach.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
    format!(
        "nats: {{ url: {nats} }}
identity:
  issuer: {issuer}
  audience: api://airlock
  group_names: {{ db-maintenance-agents: {AGENTS}, db-reviewers: {REVIEWERS} }}
approvals: {{ reviewers: [db-reviewers], timeout: 2m }}
control: {{ listen: 127.0.0.1:{control} }}
proxy:
  listen: 127.0.0.1:{proxy}
  control: [{}]
  allow_plaintext_loopback: true
connections:
  - name: prod-maintenance
    upstream: postgres://maint@127.0.0.1:{pg}/shop
    password_env: PROD_MAINT_PASSWORD
policies:
  - policy: db-maintenance-agents
    connection: prod-maintenance
    rules:
      - {{ match: SELECT, action: allow }}
      - {{ match: DELETE|DROP|UPDATE, action: require-approval }}
    record: true
",
        attach.join(", ")
    )
}

fn psql(port: u16, token: &str, sql: &str) -> std::process::Child {
    Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={port} dbname=prod-maintenance user=agent-7"
        ))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql")
}

async fn finish(child: std::process::Child) -> std::process::Output {
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("psql finished")
    .expect("join")
    .expect("output")
}

async fn pending(port: u16, token: &str, text: &str) -> String {
    let mut client =
        proto::reviewer_service_client::ReviewerServiceClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .expect("reviewer connects");
    for _ in 0..100 {
        if let Ok(r) = client
            .list_requests(authed(
                token,
                proto::ListRequestsRequest {
                    states: vec![proto::RequestState::Pending as i32],
                    ..Default::default()
                },
            ))
            .await
            && let Some(v) = r.into_inner().requests.into_iter().find(|v| {
                v.request
                    .as_ref()
                    .and_then(|r| r.statement.as_ref())
                    .is_some_and(|s| s.text == text)
            })
        {
            return v.request_id;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{text} was not held");
}

async fn approve(port: u16, token: &str, id: &str) {
    let mut client =
        proto::reviewer_service_client::ReviewerServiceClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .expect("reviewer connects");
    client
        .decide(authed(
            token,
            proto::DecideRequest {
                request_id: id.to_owned(),
                decision: proto::Decision::Approve as i32,
                reason: "fleet test".into(),
                statement_sha256: vec![],
            },
        ))
        .await
        .expect("approve");
}

#[tokio::test]
async fn approvals_cross_replicas_and_survive_a_replica_dying() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let pg = Postgres::start();
    pg.create_database("shop");
    pg.create_role("maint", "maint-secret");
    pg.psql(
        "shop",
        "CREATE TABLE orders (id int PRIMARY KEY); INSERT INTO orders SELECT generate_series(1, 10); \
         GRANT ALL ON orders TO maint",
    );
    let nats = NatsServer::start();
    let idp = free_port();
    let issuer = format!("http://127.0.0.1:{idp}");
    let mut keep = vec![Child(
        Command::new(workspace_binary("airlock-dev-idp"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{idp}"),
                "--issuer",
                &issuer,
            ])
            .arg("--key-file")
            .arg(dir.join("idp.key"))
            .stderr(Stdio::null())
            .spawn()
            .expect("idp"),
    )];
    wait_port(idp);
    let (c1, c2, p1, p2) = (free_port(), free_port(), free_port(), free_port());
    let mut controls = Vec::new();
    for (i, c) in [c1, c2].into_iter().enumerate() {
        let path = dir.join(format!("control-{i}.yaml"));
        std::fs::write(&path, config(&nats.url(), &issuer, pg.port(), c, p1, &[c1, c2])).expect("config");
        controls.push(Child(
            Command::new(workspace_binary("airlock-control"))
                .args(["serve", "--config"])
                .arg(&path)
                .stderr(Stdio::null())
                .spawn()
                .expect("control"),
        ));
        wait_port(c);
    }
    // Proxy 1 attaches to replica 1 first, proxy 2 to replica 2.
    for (i, (p, attach)) in [(p1, [c1, c2]), (p2, [c2, c1])].into_iter().enumerate() {
        let path = dir.join(format!("proxy-{i}.yaml"));
        std::fs::write(&path, config(&nats.url(), &issuer, pg.port(), c1, p, &attach)).expect("config");
        keep.push(Child(
            Command::new(workspace_binary("airlock-proxy"))
                .arg("--config")
                .arg(&path)
                .env("PROD_MAINT_PASSWORD", "maint-secret")
                .stderr(Stdio::null())
                .spawn()
                .expect("proxy"),
        ));
        wait_port(p);
    }
    let mint = |args: &[&str]| {
        let out = Command::new(workspace_binary("airlock-dev-idp"))
            .arg("token")
            .arg("--key-file")
            .arg(dir.join("idp.key"))
            .args(["--issuer", &issuer, "--audience", "api://airlock"])
            .args(args)
            .output()
            .expect("token");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let agent = mint(&[
        "--sub",
        "oid-agent",
        "--name",
        "agent-7",
        "--app",
        "--group",
        AGENTS,
    ]);
    let alice = mint(&["--sub", "oid-alice", "--name", "Alice", "--group", REVIEWERS]);
    // Give the proxies a moment to attach.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Held on proxy 1 (attached to replica 1), approved through replica 2.
    let held = psql(p1, &agent, "DELETE FROM orders WHERE id = 1");
    let id = pending(c2, &alice, "DELETE FROM orders WHERE id = 1").await;
    approve(c2, &alice, &id).await;
    let out = finish(held).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(pg.psql("shop", "SELECT count(*) FROM orders"), "9");

    // Held on proxy 1; replica 1 dies; the approval (through replica 2)
    // still reaches proxy 1, which fails over to replica 2.
    let held = psql(p1, &agent, "DELETE FROM orders WHERE id = 2");
    let id = pending(c2, &alice, "DELETE FROM orders WHERE id = 2").await;
    drop(controls.remove(0));
    approve(c2, &alice, &id).await;
    let out = finish(held).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(pg.psql("shop", "SELECT count(*) FROM orders"), "8");

    // And proxy 2 still works through the surviving replica.
    let held = psql(p2, &agent, "DELETE FROM orders WHERE id = 3");
    let id = pending(c2, &alice, "DELETE FROM orders WHERE id = 3").await;
    approve(c2, &alice, &id).await;
    let out = finish(held).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(pg.psql("shop", "SELECT count(*) FROM orders"), "7");
}
