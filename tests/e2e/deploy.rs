//! What `deploy/` ships, checked here rather than written blind: the
//! production example configuration (`config check` passes it, and refuses
//! each broken variant at its line), the systemd units (`systemd-analyze
//! verify`, and their exposure), the alert rules (`promtool check` and
//! `promtool test`), and the dashboard and alerts naming only metrics the
//! binaries export. The Kubernetes manifests are in `kubernetes.rs`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use airlock_e2e::StackBuilder;
use airlock_e2e::binaries::{fresh_binary, http_get};
use airlock_testkit::{find_binary, free_port};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn output(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `deploy/examples/dev-material.sh` into a new directory under `dir`.
pub fn dev_material(dir: &Path, args: &[&str]) -> PathBuf {
    let out = dir.join("material");
    let made = Command::new(repo().join("deploy/examples/dev-material.sh"))
        .arg(&out)
        .args(args)
        .env("AIRLOCK_CONTROL", fresh_binary("airlock-control"))
        .output()
        .expect("run dev-material.sh");
    assert!(made.status.success(), "dev-material.sh: {}", output(&made));
    out
}

/// The example's `/etc/airlock` tree, laid out in `dir` from the
/// development material: what a host running every binary would mount.
fn etc_airlock(dir: &Path) -> PathBuf {
    let material = dev_material(dir, &[]);
    let etc = dir.join("etc-airlock");
    for sub in ["tls", "trust", "checkpoint", "db"] {
        copy_dir(&material.join(sub), &etc.join(sub));
    }
    copy_dir(
        &material.join("identities/airlock-control-0"),
        &etc.join("identity"),
    );
    copy_dir(
        &material.join("identities/airlock-proxy-0"),
        &etc.join("identity"),
    );
    etc
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

/// The secrets the example reads from the environment, set on `command`.
fn example_env(command: &mut Command) -> &mut Command {
    command
        .env("AIRLOCK_NATS_PASSWORD", "nats-secret")
        .env("AIRLOCK_CANCEL_KEY", "0123456789abcdef0123456789abcdef01234567")
        .env("REPORTING_DB_PASSWORD", "report-secret")
        // What the workload identity webhook sets in a pod.
        .env("AZURE_CLIENT_ID", "4b2c9d1e-7f3a-4e5b-8c6d-0a1b2c3d4e5f")
        .env("AZURE_TENANT_ID", "8d5c3e2a-6f41-4b7e-9a0d-1c2b3a4d5e6f")
}

/// `config check` of `config`, with the example's environment.
fn config_check(config: &Path) -> Output {
    example_env(
        Command::new(fresh_binary("airlock-control"))
            .args(["config", "check", "--config"])
            .arg(config),
    )
    .output()
    .expect("run airlock-control config check")
}

#[test]
fn the_production_example_checks_and_each_broken_variant_is_refused_at_its_line() {
    let tmp = tempfile::tempdir().expect("tmp");
    let etc = etc_airlock(tmp.path());
    let example = text(&repo().join("deploy/examples/airlock.yaml"));
    let here = example.replace("/etc/airlock/", &format!("{}/", etc.display()));
    let good = tmp.path().join("airlock.yaml");
    std::fs::write(&good, &here).expect("write");
    let out = config_check(&good);
    assert!(out.status.success(), "the shipped example: {}", output(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok (control, proxy, reviewer)"),
        "{}",
        output(&out)
    );

    // Each: what is broken, the text changed, the line's marker, and what
    // the complaint names.
    let broken: &[(&str, &str, &str, &str, &str)] = &[
        (
            "a misspelt key",
            "  drain_timeout: 20s",
            "  drain_timout: 20s",
            "drain_timout",
            "unknown field `drain_timout`",
        ),
        (
            "a certificate that is not there",
            // A certificate and key are checked as a pair: placed at their
            // section.
            "  tls:\n    cert: ETC/tls/control.crt",
            "  tls:\n    cert: ETC/tls/control-renewed.crt",
            "tls:",
            "control-renewed.crt",
        ),
        (
            "a key that belongs to another certificate",
            "  tls:                            # agents' TLS\n    cert: ETC/tls/proxy.crt\n    key: ETC/tls/proxy.key",
            "  tls:                            # agents' TLS\n    cert: ETC/tls/proxy.crt\n    key: ETC/tls/control.key",
            "tls:",
            "proxy.tls",
        ),
        (
            "a signing key no one trusts as control",
            // Placed at the list the key is missing from.
            "signing_key: ETC/identity/control-signing.key",
            "signing_key: ETC/identity/proxy-signing.key",
            "signing:\n  # The public half",
            "does not list this replica's own key",
        ),
        (
            "a proxy id its key is not trusted for",
            "proxy:\n  listen: 0.0.0.0:6432",
            "proxy:\n  proxy_id: airlock-proxy-2\n  listen: 0.0.0.0:6432",
            "signing:\n  # The public half",
            "not for this proxy's id airlock-proxy-2",
        ),
        (
            "a rule with an action that does not exist",
            "        action: deny\n        reason: never",
            "        action: refuse\n        reason: never",
            "action: refuse",
            "refuse",
        ),
        (
            "a policy on a connection that is not configured",
            "    connection: reporting\n    default: deny",
            "    connection: reportng\n    default: deny",
            // Placed at its policy.
            "- policy: reporting-agents",
            "unknown connection `reportng`",
        ),
        (
            "a database password in the URL",
            "postgres://airlock_report@orders-replica",
            "postgres://airlock_report:hunter2@orders-replica",
            // Placed at the connection's name.
            "- name: reporting",
            "connection `reporting`: do not put the password",
        ),
        (
            "a duration that is not one",
            "  timeout: 15m\n",
            "  timeout: fifteen minutes\n",
            "fifteen minutes",
            "timeout",
        ),
    ];
    let mut failures = Vec::new();
    for (what, from, to, marker, names) in broken {
        let etc_path = etc.display().to_string();
        let (from, to, marker) = (
            from.replace("ETC", &etc_path),
            to.replace("ETC", &etc_path),
            marker.replace("ETC", &etc_path),
        );
        assert!(
            here.contains(&from),
            "{what}: the example no longer holds {from:?}"
        );
        let text = here.replacen(&from, &to, 1);
        let path = tmp.path().join("broken.yaml");
        std::fs::write(&path, &text).expect("write");
        // The line of the marker: within the replaced text, else its first
        // place in the file.
        let at = match to.find(&marker) {
            Some(i) => here.find(&from).expect("found above") + i,
            None => text
                .find(&marker)
                .unwrap_or_else(|| panic!("{what}: no marker {marker:?}")),
        };
        let line = text[..at].matches('\n').count() + 1;
        let out = config_check(&path);
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        let at = format!("{}:{line}:", path.display());
        let complaint = said.lines().find(|l| l.starts_with(&at) && l.contains(names));
        if out.status.code() != Some(1) || complaint.is_none() {
            failures.push(format!(
                "{what}: expected `{at} ...{names}...`, got (exit {:?}):\n{said}",
                out.status.code()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_proxy_named_at_start_refuses_a_key_not_trusted_for_its_name() {
    let tmp = tempfile::tempdir().expect("tmp");
    let etc = etc_airlock(tmp.path());
    let config = tmp.path().join("airlock.yaml");
    std::fs::write(
        &config,
        text(&repo().join("deploy/examples/airlock.yaml"))
            .replace("/etc/airlock/", &format!("{}/", etc.display())),
    )
    .expect("write");
    let proxy = |id: &str| {
        example_env(
            Command::new(fresh_binary("airlock-proxy"))
                .arg("--config")
                .arg(&config)
                .args(["--proxy-id", id]),
        )
        .output()
        .expect("run airlock-proxy")
    };
    // The identity mounted is airlock-proxy-0's; the proxy is told it is -1.
    let out = proxy("airlock-proxy-1");
    assert!(!out.status.success(), "started: {}", output(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not for this proxy's id airlock-proxy-1"),
        "{}",
        output(&out)
    );
    // A name that is no id (a host's full name) is refused as such.
    let out = proxy("proxy.example.com");
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("--proxy-id"), "{}", output(&out));
}

/// A root for `systemd-analyze --root`: the system's own units (targets
/// the units order against), `kill` for `ExecReload`, the binaries where the
/// units expect them, and the units.
fn systemd_root(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    let bin = root.join("usr/local/bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    std::fs::create_dir_all(root.join("usr/bin")).expect("mkdir");
    std::os::unix::fs::symlink("usr/bin", root.join("bin")).expect("bin link");
    std::fs::copy(
        find_binary("kill", "AIRLOCK_KILL", &[]),
        root.join("usr/bin/kill"),
    )
    .expect("kill");
    let units = root.join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units).expect("mkdir");
    for system in ["/usr/lib/systemd/system", "/lib/systemd/system"] {
        let Ok(entries) = std::fs::read_dir(system) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let n = name.to_string_lossy();
            if n.ends_with(".target") || n.ends_with(".slice") {
                let _ = std::fs::copy(entry.path(), units.join(&name));
            }
        }
    }
    for name in ["airlock-proxy", "airlock-control", "airlock-reviewer"] {
        let binary = fresh_binary(name);
        if std::fs::hard_link(&binary, bin.join(name)).is_err() {
            std::fs::copy(&binary, bin.join(name)).expect("copy binary");
        }
    }
    let etc = root.join("etc/systemd/system");
    std::fs::create_dir_all(&etc).expect("mkdir");
    copy_dir(&repo().join("deploy/systemd"), &etc);
    root
}

fn units() -> Vec<String> {
    let mut units: Vec<String> = std::fs::read_dir(repo().join("deploy/systemd"))
        .expect("deploy/systemd")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".service"))
        .collect();
    units.sort();
    units
}

#[test]
fn the_systemd_units_verify_cleanly_and_are_hardened() {
    let analyze = find_binary("systemd-analyze", "AIRLOCK_SYSTEMD_ANALYZE", &[]);
    let units = units();
    assert_eq!(
        units,
        [
            "airlock-control.service",
            "airlock-proxy.service",
            "airlock-reviewer.service"
        ],
        "one unit per binary"
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let root = systemd_root(tmp.path());
    let paths: Vec<String> = units.iter().map(|u| format!("/etc/systemd/system/{u}")).collect();
    let verify = |paths: &[String]| {
        Command::new(&analyze)
            .arg("verify")
            .arg(format!("--root={}", root.display()))
            .args(paths)
            .output()
            .expect("run systemd-analyze verify")
    };
    let out = verify(&paths);
    // Warnings (an unknown key, a bad value) go to standard error with
    // exit 0: both must be clean.
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        output(&out)
    );
    for unit in &units {
        let body = text(&root.join("etc/systemd/system").join(unit));
        for needed in [
            "DynamicUser=yes",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "CapabilityBoundingSet=\n",
            "LoadCredential=",
            "Restart=on-failure",
            "ExecReload=/bin/kill -HUP $MAINPID",
        ] {
            assert!(body.contains(needed), "{unit} lacks {needed:?}");
        }
    }
    // systemd's own exposure score: 2.0 or less ("OK") for each.
    let out = Command::new(&analyze)
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(format!("--root={}", root.display()))
        .args(&units)
        .output()
        .expect("run systemd-analyze security");
    assert!(out.status.success(), "systemd-analyze security: {}", output(&out));

    // The check can fail: a misspelt key is reported.
    let bad = root.join("etc/systemd/system/airlock-broken.service");
    std::fs::write(
        &bad,
        text(&root.join("etc/systemd/system/airlock-proxy.service")).replace("ProtectHome=", "ProtectHom="),
    )
    .expect("write");
    let out = verify(&["/etc/systemd/system/airlock-broken.service".to_owned()]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ProtectHom"),
        "a misspelt key went unnoticed: {}",
        output(&out)
    );
}

fn promtool() -> PathBuf {
    find_binary("promtool", "AIRLOCK_PROMTOOL", &[])
}

#[test]
fn the_alert_rules_check_and_pass_their_unit_tests() {
    let dir = repo().join("deploy/observability");
    for (what, file) in [("check", "alerts.yaml"), ("test", "alerts.test.yaml")] {
        let out = Command::new(promtool())
            .args([what, "rules", file])
            .current_dir(&dir)
            .output()
            .expect("run promtool");
        assert!(out.status.success(), "promtool {what} rules: {}", output(&out));
    }
    // Every alert has a unit test.
    let rules = text(&dir.join("alerts.yaml"));
    let tests = text(&dir.join("alerts.test.yaml"));
    for line in rules.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert: ") {
            assert!(
                tests.contains(&format!("alertname: {name}\n")),
                "alert {name} has no test in alerts.test.yaml"
            );
        }
    }
}

/// Names of `airlock_*` metrics in `text` (PromQL expressions).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("airlock_") {
        let start = i + at;
        let boundary = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |e| start + e);
        let name = &text[start..end];
        // `airlock_proxy_...`: a metric; a word like airlock_test is not.
        if boundary
            && ["airlock_proxy_", "airlock_control_", "airlock_reviewer_"]
                .iter()
                .any(|p| name.starts_with(p))
        {
            names.insert(name.to_owned());
        }
        i = end;
    }
    names
}

/// The sample names an OpenMetrics exposition offers: from each `# TYPE`
/// line, with the suffixes its type gives its samples.
fn exported(exposition: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            "summary" => &["", "_sum", "_count", "_created"],
            "info" => &["_info"],
            _ => &[""],
        };
        // The family's own name too: text may name a histogram by it.
        out.insert(name.to_owned());
        for s in suffixes {
            out.insert(format!("{name}{s}"));
        }
    }
    out
}

fn value(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_the_dashboard_and_alerts_name_is_exported_with_live_values() {
    let control_metrics = free_port();
    let stack = tokio::task::block_in_place(|| {
        StackBuilder::new()
            .reviewer()
            .checkpoints()
            .hold_timeout(std::time::Duration::from_secs(120))
            .control_yaml(&format!("  metrics_listen: 127.0.0.1:{control_metrics}\n"))
            .start_binaries()
    });
    let token = stack.agent_token();
    // A hold, so the hold and pending series move.
    let held = airlock_e2e::binaries::hold(&stack, &token, "DELETE FROM orders WHERE id = 1").await;

    let scrape = |port: u16| {
        let (status, body) = http_get(port, "/metrics");
        assert_eq!(status, 200, "{body}");
        body
    };
    let proxy = scrape(stack.proxy_health_ports[0]);
    let reviewer_port: u16 = stack
        .reviewer_url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("reviewer port");
    let reviewer = scrape(reviewer_port);
    // The hold folded, and a checkpoint appended after it (every second
    // here): no event left after the newest checkpoint but that one.
    let control = airlock_testkit::eventually_blocking(
        "the hold and a checkpoint after it folded",
        std::time::Duration::from_secs(20),
        || {
            let body = scrape(control_metrics);
            let pending = value(&body, "airlock_control_pending_requests") == Some(1.0);
            let covered = value(&body, "airlock_control_events_since_checkpoint").is_some_and(|n| n <= 1.0);
            (pending && covered).then_some(body)
        },
    );
    let age = value(&control, "airlock_control_checkpoint_age_seconds").expect("checkpoint age");
    assert!((0.0..10.0).contains(&age), "a checkpoint just now: {age}");
    let all: BTreeSet<String> = [&proxy, &control, &reviewer]
        .iter()
        .flat_map(|e| exported(e))
        .collect();

    let dir = repo().join("deploy/observability");
    let dashboard: serde_json::Value =
        serde_json::from_str(&text(&dir.join("grafana-dashboard.json"))).expect("the dashboard is JSON");
    let mut exprs = String::new();
    let mut titles = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        if panel["type"] == "row" {
            continue;
        }
        titles.push(panel["title"].as_str().expect("a title").to_owned());
        let targets = panel["targets"].as_array().expect("every panel has targets");
        assert!(!targets.is_empty(), "panel {} shows nothing", panel["title"]);
        for t in targets {
            exprs += t["expr"].as_str().expect("an expression");
            exprs += "\n";
        }
    }
    let named_by_dashboard = metric_names(&exprs);
    let named_by_alerts = metric_names(&text(&dir.join("alerts.yaml")));
    let missing: Vec<_> = named_by_dashboard
        .iter()
        .chain(&named_by_alerts)
        .filter(|n| !all.contains(*n))
        .collect();
    assert!(missing.is_empty(), "named but exported by no binary: {missing:?}");
    // What the issue asks the dashboard to show is there.
    for wanted in [
        "airlock_proxy_statements_total",
        "airlock_proxy_held_now",
        "airlock_proxy_hold_seconds_bucket",
        "airlock_control_decide_duration_seconds_bucket",
        "airlock_proxy_refusals_total",
        "airlock_proxy_record_buffered",
        "airlock_proxy_log_append_seconds_bucket",
        "airlock_control_fold_lag_events",
        "airlock_proxy_connections_open",
    ] {
        assert!(
            named_by_dashboard.contains(wanted),
            "no panel shows {wanted} ({titles:?})"
        );
    }

    // The series the alerts stand on have live values.
    assert_eq!(value(&proxy, "airlock_proxy_attached"), Some(1.0), "{proxy}");
    assert_eq!(
        value(&proxy, "airlock_proxy_record_buffer_capacity"),
        Some(16384.0)
    );
    assert!(value(&proxy, "airlock_proxy_record_buffered").is_some_and(|v| (0.0..16384.0).contains(&v)));
    assert!(
        value(&proxy, "airlock_proxy_log_append_seconds_count").is_some_and(|v| v >= 1.0),
        "the session's opening went through the recorder: {proxy}"
    );
    assert_eq!(value(&control, "airlock_control_log_reachable"), Some(1.0));
    let expiry = value(&control, "airlock_control_pending_expiry_seconds").expect("pending expiry");
    let timeout = 120.0;
    assert!(
        expiry > 0.0 && expiry <= timeout,
        "the held DELETE expires within the hold timeout ({timeout} s): {expiry}"
    );
    drop(held);
}

/// Every event of the log as `export` writes it: (sequence, SHA-256, kind).
fn exported_events(stack: &airlock_e2e::binaries::BinaryStack) -> Vec<(u64, String, String)> {
    let out = stack
        .control_command(&["export", "--from", "1"])
        .output()
        .expect("export");
    assert!(out.status.success(), "export: {}", output(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            (
                v["sequence"].as_u64().expect("sequence"),
                v["sha256"].as_str().expect("sha256").to_owned(),
                v["kind"].as_str().expect("kind").to_owned(),
            )
        })
        .collect()
}

/// The backup docs/operations.md describes for one NATS server: its store
/// copied while it is stopped, put back after the store is lost. The log
/// comes back whole (verify passes, every event the same bytes) and the
/// fleet goes on deciding.
#[tokio::test(flavor = "multi_thread")]
async fn a_cold_copy_of_the_nats_store_restores_the_whole_log() {
    use airlock_e2e::binaries::{ALICE, hold};
    use airlock_e2e::review::vote;
    use airlock_eventlog::proto;

    let mut stack = tokio::task::block_in_place(|| StackBuilder::new().checkpoints().start_binaries());
    let agent = stack.agent_token();
    let alice = stack.user_token(ALICE);
    let held = hold(&stack, &agent, "DELETE FROM orders WHERE id = 1").await;
    stack
        .decide(
            &alice,
            vote(&held.request_id, proto::Decision::Approve, "backup test"),
        )
        .await
        .expect("approve");
    held.outcome.await.expect("task").expect("the DELETE ran");
    // A checkpoint covers it (every second here).
    let before = tokio::task::block_in_place(|| {
        airlock_testkit::eventually_blocking(
            "a checkpoint after the DELETE",
            std::time::Duration::from_secs(20),
            || {
                let events = exported_events(&stack);
                let last = events.iter().filter(|e| e.2 != "checkpoint").map(|e| e.0).max();
                let out = stack.control_command(&["verify"]).output().expect("verify");
                let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                let covered = report["covered_through"].as_u64();
                if out.status.success() && covered.is_some() && covered >= last {
                    Ok(events)
                } else {
                    Err(format!(
                        "covered through {covered:?}, last event {last:?}: {report}"
                    ))
                }
            },
        )
    });
    assert!(before.len() >= 6, "{before:?}");

    // The backup: the server stopped, its store copied.
    let store = stack.nats_server().store_dir();
    let backup = stack.dir.join("nats-backup");
    stack.nats_server().stop();
    let copy = |from: &Path, to: &Path| {
        let out = Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(to)
            .output()
            .expect("cp");
        assert!(out.status.success(), "cp: {}", output(&out));
    };
    copy(&store, &backup);
    // The disaster: the store is gone. The restore, as documented: every
    // Airlock binary stopped, the copy put back, NATS started, then them.
    stack.kill_proxy(0);
    stack.kill_replica(0);
    std::fs::remove_dir_all(&store).expect("lose the store");
    copy(&backup, &store);
    stack.nats_server().restart();
    stack.start_replica(0);
    stack.start_proxy(0);

    tokio::task::block_in_place(|| stack.assert_verify_passes());
    let after = tokio::task::block_in_place(|| exported_events(&stack));
    assert_eq!(
        after[..before.len()],
        before[..],
        "the restored log holds every event, byte for byte"
    );
    // And the fleet goes on: the proxy ready again (NATS reconnected),
    // another DELETE held and approved.
    let port = stack.proxy_health_ports[0];
    tokio::task::block_in_place(|| {
        airlock_testkit::eventually_blocking(
            "the proxy ready again",
            std::time::Duration::from_secs(30),
            || (http_get(port, "/readyz").0 == 200).then_some(()),
        )
    });
    let held = hold(&stack, &agent, "DELETE FROM orders WHERE id = 2").await;
    stack
        .decide(
            &alice,
            vote(&held.request_id, proto::Decision::Approve, "after the restore"),
        )
        .await
        .expect("approve after the restore");
    held.outcome.await.expect("task").expect("the second DELETE ran");
    assert_eq!(
        stack
            .pg
            .psql("shop", "SELECT count(*) FROM orders WHERE id IN (1, 2)"),
        "0"
    );
}
