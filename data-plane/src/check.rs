//! Everything the proxy checks in airlock.yaml before it starts, found all
//! at once: the sections it reads, its policies, the files they name (TLS
//! certificates and keys, signing keys, CAs) and the environment variables
//! that hold its secrets. `airlock-proxy` refuses to start on any of them;
//! `airlock-control config check` reports the same list.

use std::path::Path;
use std::sync::Arc;

use airlock_eventlog::signing::{Role, Signer, Trust};
use airlock_policy::PolicySet;
use anyhow::Context;

use crate::config::ProxyConfig;

/// What is wrong with the proxy's part of the file at `path`, each problem
/// as `file:line: key: what` (nothing when it checks).
pub fn check(path: &Path) -> Vec<String> {
    airlock_config::check_file(
        path,
        |file| crate::config::from_file(file, &|name| std::env::var(name).ok()),
        |file, config, found| {
            if let Err(e) = PolicySet::from_config_yaml(file.text(), &path.display().to_string()) {
                found.at("policies", e.to_string());
            }
            for p in config.nats.problems() {
                found.at("nats", p);
            }
            if let Err(e) = airlock_identity::Verifier::new(config.identity.clone()) {
                found.at("identity", e.to_string());
            }
            if let Some(id) = &config.proxy.proxy_id
                && let Err(e) = airlock_eventlog::ProxyId::parse(id)
            {
                found.at("proxy.proxy_id", e.to_string());
            }
            match &config.proxy.tls {
            Some(tls) => {
                if let Err(e) = airlock_reload::load_certified_key(&tls.cert, &tls.key) {
                    found.at("proxy.tls", e);
                }
            }
            None if !config.proxy.allow_plaintext_loopback => found.at(
                "proxy.tls",
                "not set, and plain text is not allowed (allow_plaintext_loopback): no client could log in",
            ),
            None => {}
        }
            if let Some(tls) = &config.proxy.control_tls
                && let Err(e) = crate::attach::ControlTls::load(tls)
            {
                found.at("proxy.control_tls", format!("{e:#}"));
            }
            for (name, upstream) in &config.connections {
                if let crate::upstream::UpstreamTls::VerifyFull { root_cert } = &upstream.tls
                    && let Err(e) = std::fs::read(root_cert)
                {
                    found.at(
                        "connections",
                        format!("connection {name}: root_cert {}: {e}", root_cert.display()),
                    );
                }
            }
            if let Err(e) = signing(config) {
                found.at("signing", format!("{e:#}"));
            }
            if let Err(e) = cancel_key(config) {
                found.at("proxy.cancel_key_env", format!("{e:#}"));
            }
        },
    )
}

/// This proxy's signing key and the writers it trusts: both required. Its
/// events must say who wrote them, and it runs a held statement only on a
/// grant a trusted control-plane key signed.
pub fn signing(config: &ProxyConfig) -> anyhow::Result<(Arc<Signer>, Arc<Trust>)> {
    let Some(path) = &config.proxy.signing_key else {
        anyhow::bail!(
            "proxy.signing_key is not set: every event a proxy appends must be signed. Create a key pair \
             with `airlock-control signing-key --private proxy.key --public proxy.pub`, set \
             proxy.signing_key to the private key and list the public key in signing.trust as role: proxy"
        );
    };
    let signer = Signer::load(path).context("proxy.signing_key")?;
    let Some(section) = &config.signing else {
        anyhow::bail!(
            "no `signing:` section: a proxy runs a held statement only on a grant signed by a control-plane \
             key it trusts. List them: signing: {{ trust: [{{ role: control, key: control.pub }}] }}"
        );
    };
    let trust = section.load().context("signing.trust")?;
    if !trust.has_role(Role::Control) {
        anyhow::bail!(
            "signing.trust lists no key with role: control: no grant could ever be confirmed, so every \
             held statement would be refused"
        );
    }
    own_key_trusted(&trust, &signer, config.proxy.proxy_id.as_deref())?;
    Ok((Arc::new(signer), Arc::new(trust)))
}

/// This proxy's own key is in `trust` as `role: proxy`, for `id` when it is
/// known: else every event it appends would be refused by the control
/// plane's fold, and what its agents do would never reach a reviewer.
pub fn own_key_trusted(
    trust: &airlock_eventlog::signing::Trust,
    signer: &Signer,
    id: Option<&str>,
) -> anyhow::Result<()> {
    let own = signer.verifying_key();
    let listed: Vec<_> = trust
        .keys()
        .iter()
        .filter(|k| k.role == Role::Proxy && k.key == own)
        .collect();
    if listed.is_empty() {
        anyhow::bail!(
            "signing.trust does not list this proxy's own key ({}) as role: proxy: every event it \
             appends would be refused",
            signer.key_id()
        );
    }
    if let Some(id) = id
        && !listed.iter().any(|k| k.writer.as_deref() == Some(id))
    {
        let ids: Vec<&str> = listed.iter().filter_map(|k| k.writer.as_deref()).collect();
        anyhow::bail!(
            "signing.trust lists this proxy's own key ({}) for {}, not for this proxy's id {id} \
             (proxy.proxy_id, or --proxy-id): every event it appends would be refused",
            signer.key_id(),
            if ids.is_empty() {
                "no id".to_owned()
            } else {
                ids.join(", ")
            }
        );
    }
    Ok(())
}

/// The fleet's cancel key, from the variable `proxy.cancel_key_env` names.
pub fn cancel_key(config: &ProxyConfig) -> anyhow::Result<Option<crate::cancel::CancelKey>> {
    let Some(var) = &config.proxy.cancel_key_env else {
        return Ok(None);
    };
    let value = std::env::var(var)
        .with_context(|| format!("proxy.cancel_key_env: the environment variable {var} is not set"))?;
    crate::cancel::CancelKey::new(value.as_bytes())
        .map(Some)
        .map_err(|e| anyhow::anyhow!("proxy.cancel_key_env ({var}): {e}"))
}
