//! Everything the reviewer checks in airlock.yaml before it starts, found
//! all at once: its sections, the files they name (TLS certificates and
//! keys, CAs, the notifier's token) and the environment variables that hold
//! its secrets. `airlock-reviewer` refuses to start on any of them;
//! `airlock-control config check` reports the same list.

use std::path::Path;

use crate::config::WebhookKind;

/// What is wrong with the reviewer's part of the file at `path`, each
/// problem as `file:line: key: what` (nothing when it checks).
pub fn check(path: &Path) -> Vec<String> {
    airlock_config::check_file(path, crate::config::from_file, |_, config, found| {
        let env_set = |var: &str| std::env::var_os(var).is_some_and(|v| !v.is_empty());
        if let Some(nats) = &config.nats {
            for p in nats.problems() {
                found.at("nats", p);
            }
        }
        let reviewer = &config.reviewer;
        if let Some(tls) = &reviewer.tls
            && let Err(e) = airlock_reload::load_certified_key(&tls.cert, &tls.key)
        {
            found.at("reviewer.tls", e);
        }
        if let Some(tls) = &reviewer.control_tls
            && let Err(e) = crate::control::client_tls(tls)
        {
            found.at("reviewer.control_tls", format!("{e:#}"));
        }
        if let Some(oidc) = &reviewer.oidc
            && let Err(e) = crate::oidc::Oidc::new(oidc, &config.identity, &config.public_url(), None)
        {
            found.at("reviewer.oidc", format!("{e:#}"));
        }
        if let Some(n) = &reviewer.notifications {
            if let Err(e) = std::fs::read(&n.token_file) {
                found.at(
                    "reviewer.notifications.token_file",
                    format!("{}: {e}", n.token_file.display()),
                );
            }
            for hook in &n.webhooks {
                if let (WebhookKind::Generic, Some(var)) = (&hook.kind, &hook.secret_env)
                    && !env_set(var)
                {
                    found.at(
                        "reviewer.notifications.webhooks",
                        format!(
                            "webhook {}: the environment variable {var} is not set (or empty)",
                            hook.url
                        ),
                    );
                }
            }
        }
    })
}
