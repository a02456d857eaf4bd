//! `airlock-control config check`: a whole airlock.yaml, every binary's
//! part, each problem at its line; and the binaries refuse to start on the
//! same problems.

use std::path::Path;
use std::process::{Command, Output};

use airlock_e2e::StackBuilder;
use airlock_e2e::binaries::fresh_binary;

fn run(binary: &str, args: &[&str], config: &Path) -> Output {
    Command::new(fresh_binary(binary))
        .args(args)
        .arg("--config")
        .arg(config)
        .env("PROD_MAINT_PASSWORD", "maint-secret")
        .output()
        .unwrap_or_else(|e| panic!("run {binary}: {e}"))
}

/// `file:line` of the first line of `text` holding `needle`.
fn line_of(path: &Path, text: &str, needle: &str) -> String {
    let n = text
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line holds {needle}"));
    format!("{}:{}", path.display(), n + 1)
}

#[tokio::test(flavor = "multi_thread")]
async fn config_check_names_every_problem_at_its_line_and_the_binaries_refuse_the_same() {
    tokio::task::block_in_place(|| {
        let stack = StackBuilder::new()
            .proxy_tls()
            .control_mtls()
            .reviewer()
            .start_binaries();
        let good = stack.config();
        let out = run("airlock-control", &["config", "check"], &good);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("ok (control, proxy, reviewer)"), "{stdout}");

        let d = stack.dir.display().to_string();
        let text = std::fs::read_to_string(&good).expect("config");
        let broken_text = text
            // The proxy's certificate is not there.
            .replace(
                &format!("cert: {d}/proxy.crt"),
                &format!("cert: {d}/missing-proxy.crt"),
            )
            // The reviewer's client key is another's.
            .replace(
                &format!("key: {d}/reviewer.key"),
                &format!("key: {d}/proxy-1.key"),
            )
            // The control plane's key is another's.
            .replace(
                &format!("key: {d}/control.key"),
                &format!("key: {d}/reviewer.key"),
            )
            // A secret's variable that is not set.
            .replace(
                "  oidc:\n",
                "  oidc:\n    client_secret_env: AIRLOCK_TEST_UNSET_SECRET\n",
            )
            // A rule with an action no policy knows.
            .replace("action: require-approval", "action: require-aproval");
        let broken = stack.dir.join("broken.yaml");
        std::fs::write(&broken, &broken_text).expect("write");

        let out = run("airlock-control", &["config", "check"], &broken);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let expected = [
            (
                line_of(&broken, &broken_text, "missing-proxy.crt"),
                "proxy.tls",
                "missing-proxy.crt",
            ),
            (
                line_of(
                    &broken,
                    &broken_text,
                    &format!("reviewer.crt, key: {d}/proxy-1.key"),
                ),
                "reviewer.control_tls",
                "do not make a certificate and key",
            ),
            (
                line_of(&broken, &broken_text, &format!("key: {d}/reviewer.key")),
                "control.tls",
                "do not make a certificate and key",
            ),
            (
                line_of(&broken, &broken_text, "  oidc:"),
                "reviewer.oidc",
                "AIRLOCK_TEST_UNSET_SECRET, which is not set",
            ),
        ];
        for (at, key, says) in &expected {
            assert!(
                stderr
                    .lines()
                    .any(|l| l.starts_with(&format!("{at}: {key}:")) && l.contains(says)),
                "no `{at}: {key}: ...{says}` in:\n{stderr}"
            );
        }
        let policy_line = line_of(&broken, &broken_text, "require-aproval");
        assert!(
            stderr.contains(&policy_line) && stderr.contains("require-aproval"),
            "the policy error at {policy_line}:\n{stderr}"
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("problems"));

        // Each binary refuses to start on its own part's problems, in the
        // same words.
        let out = run("airlock-proxy", &[], &broken);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(said.contains(&format!("{}: proxy.tls:", expected[0].0)), "{said}");
        assert!(said.contains("does not check"), "{said}");
        let out = run("airlock-reviewer", &[], &broken);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            said.contains(&format!("{}: reviewer.control_tls:", expected[1].0)),
            "{said}"
        );
        let out = run("airlock-control", &["serve"], &broken);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            said.contains(&format!("{}: control.tls:", expected[2].0)),
            "{said}"
        );
    });
}
