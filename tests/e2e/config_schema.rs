//! The JSON Schemas of `airlock.yaml` and of standalone policy files
//! (`schema/`), which editors use to check a file as it is typed. They are
//! written by hand, so these tests hold them to the code and the docs:
//! - every example config in the repository matches them (the demo's, each
//!   YAML block of the docs, a test stack's);
//! - a misspelt key anywhere in a real stack's file is refused by the schema
//!   exactly when the binaries refuse it;
//! - every key the schema knows is documented, and the documented sections
//!   parse in the binaries (no key there that the code does not know);
//! - the statement kinds it offers are the policy crate's.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use airlock_e2e::StackBuilder;
use airlock_e2e::binaries::fresh_binary;
use airlock_policy::Kind;
use jsonschema::{Registry, Validator};
use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn schema(name: &str) -> Value {
    serde_json::from_str(&read(&format!("schema/{name}.schema.json")))
        .unwrap_or_else(|e| panic!("schema/{name}.schema.json is not JSON: {e}"))
}

/// The validators of airlock.yaml and of a standalone policy file; the
/// first refers to the second by its `$id`, as an editor resolves it.
struct Schemas {
    airlock: Validator,
    policy: Validator,
}

impl Schemas {
    fn load() -> Schemas {
        let policy = schema("policy");
        let airlock = schema("airlock");
        for (name, s) in [("policy", &policy), ("airlock", &airlock)] {
            if let Err(e) = jsonschema::meta::validate(s) {
                panic!("schema/{name}.schema.json is not a valid JSON Schema: {e}");
            }
        }
        // airlock.schema.json refers to policy.schema.json beside it, as an
        // editor that opened it from disk resolves the reference.
        let dir = root().join("schema").canonicalize().expect("schema/");
        let base = format!("file://{}/", dir.display());
        let registry = Registry::new()
            .add(format!("{base}policy.schema.json"), policy.clone())
            .and_then(|r| r.prepare())
            .expect("a registry of the policy schema");
        let build = |name: &str, s: &Value| {
            jsonschema::options()
                .with_registry(&registry)
                .with_base_uri(format!("{base}{name}.schema.json"))
                .build(s)
                .unwrap_or_else(|e| panic!("schema/{name}.schema.json does not compile: {e}"))
        };
        Schemas {
            airlock: build("airlock", &airlock),
            policy: build("policy", &policy),
        }
    }
}

/// What `validator` finds wrong in `doc`, one line each.
fn errors(validator: &Validator, doc: &Value) -> Vec<String> {
    validator
        .iter_errors(doc)
        .map(|e| format!("at {}: {e}", e.instance_path()))
        .collect()
}

fn yaml(text: &str, what: &str) -> Value {
    serde_norway::from_str(text).unwrap_or_else(|e| panic!("{what} is not YAML: {e}\n{text}"))
}

/// Every ```yaml block of a Markdown file, with its line.
fn yaml_blocks(path: &str) -> Vec<(String, String)> {
    let text = read(path);
    let mut blocks = Vec::new();
    let mut open: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        match &mut open {
            None if line.trim_start() == "```yaml" => open = Some((n + 2, String::new())),
            Some((at, body)) if line.trim_start() == "```" => {
                blocks.push((format!("{path}:{at}"), std::mem::take(body)));
                open = None;
            }
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    blocks
}

/// A docs block as a whole airlock.yaml: blocks show a file, some of its
/// sections, a list of policies, a policy's `rules:`, or one standalone
/// policy. `None` for a block that is not Airlock's configuration (the
/// development identity provider's login and Graph files).
fn as_config(block: &Value, at: &str) -> Option<(Value, &'static str)> {
    let sections: BTreeSet<&str> = airlock_config::SECTIONS.iter().copied().collect();
    match block {
        Value::Object(m) if m.contains_key("clients") && m.contains_key("users") => None,
        // The development issuer's Graph stand-in file.
        Value::Object(m) if m.contains_key("client_secret_env") && m.contains_key("members") => None,
        Value::Object(m) if m.contains_key("policy") => Some((block.clone(), "policy")),
        Value::Object(m) if m.len() == 1 && m.contains_key("rules") => Some((
            json!({"policy": "example-group", "connection": "example", "rules": m["rules"]}),
            "policy",
        )),
        Value::Object(m) if m.keys().all(|k| sections.contains(k.as_str())) => {
            Some((block.clone(), "airlock"))
        }
        Value::Array(items) if items.iter().all(|i| i.get("policy").is_some()) => {
            Some((json!({ "policies": items }), "airlock"))
        }
        _ => panic!("{at}: a YAML block this test cannot place; say here what it is"),
    }
}

fn docs() -> Vec<String> {
    let mut files = vec!["README.md".to_owned(), "ARCHITECTURE.md".to_owned()];
    let mut dir: Vec<_> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| format!("docs/{}", p.file_name().expect("a name").to_string_lossy()))
        .collect();
    dir.sort();
    files.extend(dir);
    files
}

#[test]
fn every_example_config_matches_the_schema() {
    let schemas = Schemas::load();
    let mut checked = 0;
    let mut wrong = Vec::new();
    let mut check = |what: String, doc: &Value, kind: &str| {
        let validator = if kind == "policy" {
            &schemas.policy
        } else {
            &schemas.airlock
        };
        let found = errors(validator, doc);
        if !found.is_empty() {
            wrong.push(format!("{what}:\n  {}", found.join("\n  ")));
        }
        checked += 1;
    };

    // The quick start's airlock.yaml, as deploy/local/demo.sh writes it.
    let demo = airlock_config::example::local_demo(Path::new("/var/lib/airlock-demo"));
    check(
        "deploy/local/demo.sh".into(),
        &yaml(&demo, "demo.sh's airlock.yaml"),
        "airlock",
    );

    // The production example, and the Kubernetes manifests' configurations.
    check(
        "deploy/examples/airlock.yaml".into(),
        &yaml(
            &read("deploy/examples/airlock.yaml"),
            "deploy/examples/airlock.yaml",
        ),
        "airlock",
    );
    let manifest = read("deploy/kubernetes/config.yaml");
    let config_map = yaml(&manifest, "deploy/kubernetes/config.yaml");
    for key in ["control.yaml", "proxy.yaml", "reviewer.yaml"] {
        let text = config_map["data"][key].as_str().expect("airlock-config's files");
        let at = format!("deploy/kubernetes/config.yaml: {key}");
        check(at.clone(), &yaml(text, &at), "airlock");
    }

    // Every YAML block of the docs.
    for file in docs() {
        for (at, body) in yaml_blocks(&file) {
            let block = yaml(&body, &at);
            if let Some((doc, kind)) = as_config(&block, &at) {
                check(at, &doc, kind);
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "examples the schema refuses:\n{}",
        wrong.join("\n")
    );
    assert!(
        checked >= 13,
        "only {checked} examples found: are the docs' blocks still ```yaml?"
    );
}

#[test]
fn the_schema_offers_the_policy_crates_statement_kinds() {
    let policy = schema("policy");
    let offered: BTreeSet<String> = policy["$defs"]["kindExpr"]["anyOf"][0]["enum"]
        .as_array()
        .expect("kindExpr's first choice lists the kinds")
        .iter()
        .map(|k| k.as_str().expect("a kind name").to_owned())
        .collect();
    let known: BTreeSet<String> = Kind::ALL.iter().map(|k| k.name().to_owned()).collect();
    assert_eq!(
        offered, known,
        "schema/policy.schema.json's kinds against kind.rs"
    );

    // Each name is accepted in a rule, alone, joined and in a list; near
    // misses are not.
    let schemas = Schemas::load();
    let with_match = |m: Value| {
        json!({"policy": "g", "connection": "c", "reviewers": ["r"],
               "rules": [{"match": m, "action": "deny"}]})
    };
    for name in &known {
        for m in [
            json!(name),
            json!(format!("{name}|SELECT")),
            json!([name, "DELETE"]),
        ] {
            let doc = with_match(m.clone());
            assert!(
                schemas.policy.is_valid(&doc),
                "match: {m} refused: {:?}",
                errors(&schemas.policy, &doc)
            );
        }
    }
    for m in [
        json!("DELET"),
        json!("SELECT|"),
        json!("SELECT|DELET"),
        json!([]),
        json!("ALL"),
    ] {
        assert!(
            !schemas.policy.is_valid(&with_match(m.clone())),
            "match: {m} accepted"
        );
    }
}

/// Every key path of `doc` (`proxy.tls.cert`, `policies[].rules[].match`).
fn key_paths(doc: &Value, prefix: &str, out: &mut Vec<(String, Vec<PathStep>)>, here: &mut Vec<PathStep>) {
    match doc {
        Value::Object(m) => {
            for (k, v) in m {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                here.push(PathStep::Key(k.clone()));
                out.push((path.clone(), here.clone()));
                key_paths(v, &path, out, here);
                here.pop();
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                here.push(PathStep::Index(i));
                key_paths(v, &format!("{prefix}[{i}]"), out, here);
                here.pop();
            }
        }
        _ => {}
    }
}

#[derive(Clone, Debug)]
enum PathStep {
    Key(String),
    Index(usize),
}

/// `doc` with the key at `path` renamed to `to`.
fn renamed(doc: &Value, path: &[PathStep], to: &str) -> Value {
    let mut out = doc.clone();
    let mut at = &mut out;
    for step in &path[..path.len() - 1] {
        at = match step {
            PathStep::Key(k) => &mut at[k.as_str()],
            PathStep::Index(i) => &mut at[*i],
        };
    }
    let Some(PathStep::Key(last)) = path.last() else {
        unreachable!("a key path ends at a key")
    };
    let map = at.as_object_mut().expect("a mapping");
    let value = map.remove(last).expect("the key");
    map.insert(to.to_owned(), value);
    out
}

fn config_check(config: &Path) -> (bool, String) {
    let out = Command::new(fresh_binary("airlock-control"))
        .args(["config", "check", "--config"])
        .arg(config)
        .env("PROD_MAINT_PASSWORD", "maint-secret")
        .output()
        .expect("run airlock-control config check");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_misspelt_key_is_refused_by_the_schema_exactly_when_the_binaries_refuse_it() {
    let schemas = Schemas::load();
    tokio::task::block_in_place(|| {
        let stack = StackBuilder::new()
            .proxy_tls()
            .control_mtls()
            .reviewer()
            .start_binaries();
        let text = std::fs::read_to_string(stack.config()).expect("the stack's airlock.yaml");
        let doc = yaml(&text, "the stack's airlock.yaml");
        let found = errors(&schemas.airlock, &doc);
        assert!(
            found.is_empty(),
            "a real stack's airlock.yaml:\n{}\n{text}",
            found.join("\n")
        );
        let (ok, said) = config_check(&stack.config());
        assert!(ok, "{said}");

        let mut paths = Vec::new();
        key_paths(&doc, "", &mut paths, &mut Vec::new());
        let mut disagree = Vec::new();
        let mut refused = 0;
        for (path, steps) in &paths {
            if path.contains("group_names.") {
                // Names of groups, not keys: any is accepted, and the
                // policies refer to them.
                continue;
            }
            let Some(PathStep::Key(key)) = steps.last() else {
                unreachable!()
            };
            let misspelt = format!("{key}_x");
            let mutated = renamed(&doc, steps, &misspelt);
            let file = stack.dir.join("misspelt.yaml");
            std::fs::write(&file, serde_norway::to_string(&mutated).expect("YAML")).expect("write");
            let schema_ok = schemas.airlock.is_valid(&mutated);
            let (binary_ok, said) = config_check(&file);
            if schema_ok != binary_ok {
                disagree.push(format!(
                    "{path} -> {misspelt}: schema {}, binaries {}: {said}",
                    if schema_ok { "accepts" } else { "refuses" },
                    if binary_ok { "accept" } else { "refuse" },
                ));
            }
            assert!(!binary_ok, "{path} -> {misspelt} accepted: {said}");
            assert!(
                said.contains(&misspelt),
                "{path}: the refusal names the key: {said}"
            );
            refused += 1;
        }
        assert!(
            disagree.is_empty(),
            "the schema and the binaries disagree:\n{}",
            disagree.join("\n")
        );
        assert!(refused >= 40, "only {refused} keys tried");
    });
}

/// Property names the schema knows, in every definition of both files.
fn schema_keys(s: &Value, out: &mut BTreeSet<String>) {
    match s {
        Value::Object(m) => {
            if let Some(Value::Object(props)) = m.get("properties") {
                out.extend(props.keys().cloned());
            }
            for v in m.values() {
                schema_keys(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| schema_keys(v, out)),
        _ => {}
    }
}

#[test]
fn every_key_of_the_schema_is_documented_and_the_documented_sections_parse() {
    let mut keys = BTreeSet::new();
    schema_keys(&schema("airlock"), &mut keys);
    schema_keys(&schema("policy"), &mut keys);
    let reference = format!(
        "{}{}{}",
        read("docs/configuration.md"),
        read("docs/policy.md"),
        read("docs/reviewer.md")
    );
    let undocumented: Vec<&String> = keys
        .iter()
        .filter(|k| !reference.contains(&format!("{k}:")) && !reference.contains(&format!("`{k}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "keys the schema knows and the docs do not show: {undocumented:?}"
    );

    // configuration.md's sections, one of each, in one file: whatever the
    // binaries find wrong with it (files that are not there, addresses),
    // it must not be a key or a value shape they do not know.
    let mut merged = serde_json::Map::new();
    for (at, body) in yaml_blocks("docs/configuration.md") {
        if let Some((Value::Object(doc), "airlock")) = as_config(&yaml(&body, &at), &at) {
            // The later blocks are each section's full reference.
            merged.extend(doc);
        }
    }
    let sections: BTreeSet<&str> = merged.keys().map(String::as_str).collect();
    let all: BTreeSet<&str> = airlock_config::SECTIONS.iter().copied().collect();
    let missing: Vec<_> = all
        .difference(&sections)
        .filter(|s| **s != "shadow_policies")
        .collect();
    assert!(
        missing.is_empty(),
        "sections configuration.md shows no example of: {missing:?}"
    );
    let dir = tempfile::tempdir().expect("a directory");
    let file = dir.path().join("airlock.yaml");
    std::fs::write(
        &file,
        serde_norway::to_string(&Value::Object(merged)).expect("YAML"),
    )
    .expect("write");
    let (_, said) = config_check(&file);
    for shape in [
        "unknown field",
        "unknown variant",
        "invalid type",
        "missing field",
        "unknown section",
    ] {
        assert!(
            !said.contains(shape),
            "the documented sections do not parse ({shape}):\n{said}"
        );
    }
}
