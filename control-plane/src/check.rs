//! `airlock-control config check`: a whole airlock.yaml checked at once,
//! for every binary that reads it. The control plane's own part is here
//! (and `serve` refuses to start on it); the proxy's and the reviewer's are
//! their own crates' checks, the same ones their binaries refuse to start
//! on, run when the file has their section.

use std::path::Path;

use airlock_config::ConfigFile;

/// What is wrong with the control plane's part of the file at `path`, each
/// problem as `file:line: key: what` (nothing when it checks).
pub fn check(path: &Path) -> Vec<String> {
    let file = match ConfigFile::load(path) {
        Ok(file) => file,
        Err(e) => return vec![airlock_config::with_causes(&e)],
    };
    let config = match crate::config::from_file(&file) {
        Ok(config) => config,
        Err(e) => return vec![format!("{e:#}")],
    };
    let mut problems = Vec::new();
    let mut at = |key: &str, what: String| problems.push(format!("{}: {key}: {what}", file.locate(key)));
    for p in config.nats.problems() {
        at("nats", p);
    }
    if let Err(e) = airlock_identity::Verifier::new(config.identity.clone()) {
        at("identity", e.to_string());
    }
    if let Some(id) = &config.control.replica_id
        && let Err(e) = airlock_eventlog::ProxyId::parse(id)
    {
        at("control.replica_id", e.to_string());
    }
    if let Some(tls) = &config.control.tls
        && let Err(e) = crate::tls::GrpcListener::load(tls)
    {
        at("control.tls", format!("{e:#}"));
    }
    if let Some(c) = &config.control.checkpoints
        && let Err(e) = crate::checkpoint::CheckpointSigner::load(&c.signing_key)
    {
        at("control.checkpoints.signing_key", format!("{e:#}"));
    }
    if let Err(e) = crate::serve::signing(&config) {
        at("signing", format!("{e:#}"));
    }
    problems
}

/// Which binaries' parts a file has, by its top-level sections.
fn parts(path: &Path) -> Result<Vec<&'static str>, String> {
    let file = ConfigFile::load(path).map_err(|e| airlock_config::with_causes(&e))?;
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
