//! `airlock-control config check`: a whole airlock.yaml checked at once,
//! for every binary that reads it. The control plane's own part is here
//! (and `serve` refuses to start on it); the proxy's and the reviewer's are
//! their own crates' checks, the same ones their binaries refuse to start
//! on, run when the file has their section.

use std::path::Path;

/// What is wrong with the control plane's part of the file at `path`, each
/// problem as `file:line: key: what` (nothing when it checks).
pub fn check(path: &Path) -> Vec<String> {
    airlock_config::check_file(path, crate::config::from_file, |_, config, found| {
        for p in config.nats.problems() {
            found.at("nats", p);
        }
        if let Err(e) = airlock_identity::Verifier::new(config.identity.clone()) {
            found.at("identity", e.to_string());
        }
        if let Some(id) = &config.control.replica_id
            && let Err(e) = airlock_eventlog::ProxyId::parse(id)
        {
            found.at("control.replica_id", e.to_string());
        }
        if let Some(tls) = &config.control.tls
            && let Err(e) = crate::tls::GrpcListener::load(tls)
        {
            found.at("control.tls", format!("{e:#}"));
        }
        if let Some(c) = &config.control.checkpoints
            && let Err(e) = crate::checkpoint::CheckpointSigner::load(&c.signing_key)
        {
            found.at("control.checkpoints.signing_key", format!("{e:#}"));
        }
        let lost = config.control.proxy_lost_after;
        if !lost.is_zero()
            && !(crate::presence::LOST_AFTER_MIN..=crate::presence::LOST_AFTER_MAX).contains(&lost)
        {
            found.at(
                "control.proxy_lost_after",
                format!(
                    "{lost:?} is out of range: 0s (never judge a proxy gone) or {:?} to {:?} (shorter would take live proxies for gone before their announcements arrive)",
                    crate::presence::LOST_AFTER_MIN,
                    crate::presence::LOST_AFTER_MAX
                ),
            );
        }
        if let Err(e) = crate::serve::signing(config) {
            found.at("signing", format!("{e:#}"));
        }
    })
}

/// Which binaries' parts a file has, by its top-level sections.
fn parts(path: &Path) -> Result<Vec<&'static str>, String> {
    let file = airlock_config::ConfigFile::load(path).map_err(|e| airlock_config::with_causes(&e))?;
    let has = |section: &str| {
        file.section::<serde_norway::Value>(section)
            .ok()
            .flatten()
            .is_some()
    };
    Ok(["control", "proxy", "reviewer"]
        .into_iter()
        .filter(|part| has(part))
        .collect())
}

/// Every problem of every part the file has, each once (a `nats:` problem
/// is the same for every binary that reads it), and the parts checked.
pub fn check_all(path: &Path) -> (Vec<&'static str>, Vec<String>) {
    let parts = match parts(path) {
        Ok(parts) => parts,
        Err(e) => return (Vec::new(), vec![e]),
    };
    let mut problems: Vec<String> = Vec::new();
    for part in &parts {
        let found = match *part {
            "control" => check(path),
            "proxy" => airlock_proxy::check::check(path),
            _ => airlock_reviewer::check::check(path),
        };
        for p in found {
            if !problems.contains(&p) {
                problems.push(p);
            }
        }
    }
    if parts.is_empty() && problems.is_empty() {
        problems.push(format!(
            "{}: no `control:`, `proxy:` or `reviewer:` section: nothing here starts a binary",
            path.display()
        ));
    }
    (parts, problems)
}
