//! The real binaries: `airlock-dev-idp` issues tokens, `airlock-control
//! serve` verifies them and serves reviewers; `verify` and `identity check`
//! work for auditors and operators.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use airlock_e2e::authed;
use airlock_eventlog::proto;
use airlock_testkit::{NatsServer, free_port, workspace_binary};

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(port: u16) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on {port}");
}

fn token(dir: &std::path::Path, issuer: &str, args: &[&str]) -> String {
    let out = Command::new(workspace_binary("airlock-dev-idp"))
        .arg("token")
        .arg("--key-file")
        .arg(dir.join("idp.key"))
        .args(["--issuer", issuer, "--audience", "api://airlock"])
        .args(args)
        .output()
        .expect("run airlock-dev-idp token");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn control_plane_binary_serves_reviewers_with_real_tokens() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().to_path_buf();
    let nats = NatsServer::start();
    let idp_port = free_port();
    let issuer = format!("http://127.0.0.1:{idp_port}");
    let _idp = Child(
        Command::new(workspace_binary("airlock-dev-idp"))
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{idp_port}"), "--issuer", &issuer])
            .arg("--key-file")
            .arg(dir.join("idp.key"))
            .stderr(Stdio::null())
            .spawn()
            .expect("start airlock-dev-idp"),
    );
    wait_port(idp_port);
    let control_port = free_port();
    let health_port = free_port();
    let config = dir.join("airlock.yaml");
    std::fs::write(
        &config,
        format!(
            "nats:\n  url: {}\nidentity:\n  issuer: {issuer}\n  audience: api://airlock\n  group_names:\n    db-reviewers: grp-reviewers\n\
             approvals:\n  reviewers: [db-reviewers]\ncontrol:\n  listen: 127.0.0.1:{control_port}\n  health_listen: 127.0.0.1:{health_port}\n",
            nats.url()
        ),
    )
    .expect("write config");
    let _control = Child(
        Command::new(workspace_binary("airlock-control"))
            .args(["serve", "--config"])
            .arg(&config)
            .stderr(Stdio::null())
            .spawn()
            .expect("start airlock-control"),
    );
    wait_port(control_port);

    let alice = token(
        &dir,
        &issuer,
        &[
            "--sub",
            "oid-alice",
            "--name",
            "Alice",
            "--group",
            "grp-reviewers",
        ],
    );
    let agent = token(
        &dir,
        &issuer,
        &[
            "--sub",
            "oid-agent",
            "--name",
            "agent-7",
            "--app",
            "--group",
            "grp-agents",
        ],
    );
    let mut reviewer = proto::reviewer_service_client::ReviewerServiceClient::connect(format!(
        "http://127.0.0.1:{control_port}"
    ))
    .await
    .expect("connect");
    let mut listed = None;
    for _ in 0..50 {
        match reviewer
            .list_requests(authed(&alice, proto::ListRequestsRequest::default()))
            .await
        {
            Ok(r) => {
                listed = Some(r.into_inner());
                break;
            }
            Err(s) if s.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(s) => panic!("list refused: {s:?}"),
        }
    }
    assert!(listed.expect("listed").requests.is_empty());
    let err = reviewer
        .list_requests(authed("not-a-token", proto::ListRequestsRequest::default()))
        .await
        .expect_err("garbage refused");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    // An operator checks the agent's token.
    let mut check = Command::new(workspace_binary("airlock-control"))
        .args(["identity", "check", "--config"])
        .arg(&config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("identity check");
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(agent.as_bytes())
        .expect("write token");
    let out = check.wait_with_output().expect("identity check output");
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{json}");
    assert!(
        json.contains("\"kind\": \"app\"") && json.contains("oid-agent"),
        "{json}"
    );
    assert!(!json.contains(&agent), "the token is never printed");

    // The health endpoint says ready once the replica caught up.
    wait_port(health_port);
    let mut health = std::net::TcpStream::connect(("127.0.0.1", health_port)).expect("health");
    health
        .write_all(b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut response = String::new();
    std::io::Read::read_to_string(&mut health, &mut response).expect("response");
    assert!(
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
        "{response}"
    );
    assert!(response.contains("ready"), "{response}");

    // replay rebuilds the state from the log.
    let out = Command::new(workspace_binary("airlock-control"))
        .args(["replay", "--config"])
        .arg(&config)
        .output()
        .expect("replay");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains("\"anomalies\": 0") && report.contains("\"events\""),
        "{report}"
    );

    // The auditor's verify passes on an untouched log.
    let out = Command::new(workspace_binary("airlock-control"))
        .args(["verify", "--config"])
        .arg(&config)
        .output()
        .expect("verify");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("\"ok\": true"), "{report}");
}
