//! Changes without restarts, through the real proxy binary: a new version
//! of `airlock.yaml` swapped in as Kubernetes updates a mounted ConfigMap
//! changes the verdict; a broken version is refused (log line and metric)
//! and the policy in force stays; a renewed front-door certificate is
//! served to the next client.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use airlock_e2e::StackBuilder;
use airlock_e2e::binaries::{BinaryStack, http_get};
use airlock_testkit::eventually_blocking;

const RULES: &str = "      - match: SELECT\n        action: allow\n";

fn psql(stack: &BinaryStack, token: &str, sql: &str) -> Output {
    stack.psql(token, sql).wait_with_output().expect("psql finished")
}

/// psql over TLS that trusts only `root` (sslmode=verify-ca).
fn psql_trusting(stack: &BinaryStack, token: &str, root: &Path) -> Output {
    Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} dbname=prod-maintenance user=agent-7 sslmode=verify-ca sslrootcert={}",
            stack.proxy_port,
            root.display()
        ))
        .args(["-X", "-A", "-t", "-c", "SELECT 1"])
        .env("PGPASSWORD", token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run psql")
}

/// `airlock_proxy_config_reloads_total` for `what` and `outcome`.
fn reloads(stack: &BinaryStack, what: &str, outcome: &str) -> u64 {
    let (status, body) = http_get(stack.proxy_health_ports[0], "/metrics");
    assert_eq!(status, 200, "{body}");
    let series = format!("airlock_proxy_config_reloads_total{{what=\"{what}\",outcome=\"{outcome}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map(|v| v.trim().parse().expect("a count"))
        .unwrap_or(0)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configmap_swap_changes_the_verdict_and_a_broken_one_leaves_the_policy_in_force() {
    tokio::task::block_in_place(|| {
        let stack = StackBuilder::new()
            .rules(RULES)
            .proxy_tls()
            .configmap()
            .start_binaries();
        let agent = stack.agent_token();
        let out = psql(&stack, &agent, "SELECT count(*) FROM orders");
        assert!(out.status.success(), "{}", stderr(&out));

        // The kubelet's swap: the file's path is a symlink that is never
        // written; `..data` is renamed to point at a new directory.
        let text = stack.configmap_text();
        let frozen = text.replace(
            "      - match: SELECT\n        action: allow",
            "      - match: SELECT\n        action: deny\n        reason: frozen for the audit",
        );
        assert_ne!(text, frozen);
        let swapped = Instant::now();
        stack.configmap_swap(&frozen);
        let out = eventually_blocking("the new policy to deny reads", Duration::from_secs(10), || {
            let out = psql(&stack, &agent, "SELECT count(*) FROM orders");
            if out.status.success() {
                Err(out.status)
            } else {
                Ok(out)
            }
        });
        let took = swapped.elapsed();
        assert!(stderr(&out).contains("frozen for the audit"), "{}", stderr(&out));
        eprintln!("verdict changed {took:?} after the swap");
        assert!(took < Duration::from_secs(5), "the swap took {took:?} to apply");
        assert_eq!(reloads(&stack, "policies", "applied"), 1);

        // A broken version (it would allow reads again, but does not parse)
        // is refused: the proxy says so, counts it, and keeps denying.
        let broken = text.replace("policies:", "policies: [unclosed\n");
        assert_ne!(broken, text);
        stack.configmap_swap(&broken);
        eventually_blocking("the broken version refused", Duration::from_secs(10), || {
            reloads(&stack, "policies", "refused") == 1
        });
        let out = psql(&stack, &agent, "SELECT count(*) FROM orders");
        assert!(
            !out.status.success() && stderr(&out).contains("frozen for the audit"),
            "the policy in force stays: {}",
            stderr(&out)
        );
        let log = std::fs::read_to_string(stack.dir.join("proxy-1.log")).unwrap_or_default()
            + &std::fs::read_to_string(stack.dir.join("proxy-1.err")).unwrap_or_default();
        assert!(log.contains("reload refused"), "{log}");
        assert_eq!(reloads(&stack, "policies", "applied"), 1);

        // The next good version is applied.
        stack.configmap_swap(&text);
        eventually_blocking("reads allowed again", Duration::from_secs(10), || {
            psql(&stack, &agent, "SELECT 1").status.success()
        });
        assert_eq!(reloads(&stack, "policies", "applied"), 2);
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn a_renewed_front_door_certificate_is_served_without_a_restart() {
    tokio::task::block_in_place(|| {
        let stack = StackBuilder::new().rules(RULES).proxy_tls().start_binaries();
        let agent = stack.agent_token();
        let first = stack.dir.join("first.crt");
        std::fs::copy(stack.dir.join("proxy.crt"), &first).expect("keep the first certificate");
        let out = psql_trusting(&stack, &agent, &first);
        assert!(out.status.success(), "{}", stderr(&out));

        // A renewal written in place, key first: for a moment the pair does
        // not match, which is refused, then the complete pair is applied.
        let renewed =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).expect("cert");
        let second = stack.dir.join("second.crt");
        std::fs::write(&second, renewed.cert.pem()).expect("second");
        std::fs::write(stack.dir.join("proxy.key"), renewed.signing_key.serialize_pem()).expect("key");
        std::thread::sleep(Duration::from_millis(1500));
        std::fs::write(stack.dir.join("proxy.crt"), renewed.cert.pem()).expect("cert");

        eventually_blocking("the renewed certificate served", Duration::from_secs(10), || {
            psql_trusting(&stack, &agent, &second).status.success()
        });
        let out = psql_trusting(&stack, &agent, &first);
        assert!(!out.status.success(), "the old certificate is no longer served");
        assert!(reloads(&stack, "proxy.tls", "applied") >= 1);
        assert!(
            reloads(&stack, "proxy.tls", "refused") >= 1,
            "the half-renewed pair was refused"
        );
    });
}

/// The subject of the certificate served on 127.0.0.1:`port`.
fn served_subject(port: u16) -> String {
    let shown = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "localhost",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-subject"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run openssl x509");
    use std::io::Write;
    let _ = x509.stdin.take().expect("stdin").write_all(&shown.stdout);
    String::from_utf8_lossy(&x509.wait_with_output().expect("openssl x509").stdout).replace(' ', "")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_renewed_control_plane_certificate_is_served_without_a_restart() {
    tokio::task::block_in_place(|| {
        let stack = StackBuilder::new().control_mtls().start_binaries();
        let port = stack.control_port;
        assert!(
            served_subject(port).contains("CN=control"),
            "{}",
            served_subject(port)
        );
        let ca = airlock_testkit::TestCa::new("renewal CA");
        let renewed = ca.server("control-renewed");
        std::fs::copy(&renewed.key, stack.dir.join("control.key")).expect("key");
        std::fs::copy(&renewed.cert, stack.dir.join("control.crt")).expect("cert");
        eventually_blocking("the renewed certificate served", Duration::from_secs(10), || {
            let subject = served_subject(port);
            if subject.contains("CN=control-renewed") {
                Ok(())
            } else {
                Err(subject)
            }
        });
    });
}
