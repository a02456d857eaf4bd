//! The local demo's airlock.yaml, as `deploy/local/demo.sh` writes it, so
//! each binary's tests can check that the file the quick start hands every
//! binary is one that binary accepts. Test support: compiled only with the
//! `test-util` feature.

use std::path::Path;

const DEMO_SCRIPT: &str = include_str!("../../../deploy/local/demo.sh");

/// Where the script starts writing airlock.yaml; the here-document runs to
/// the next line that is only `YAML`.
const OPENING: &str = "cat >\"$state/airlock.yaml\" <<YAML\n";
const CLOSING: &str = "\nYAML\n";

/// The demo's airlock.yaml with the script's variables filled in: every
/// `*_PORT` with a port, every `*_GROUP` with an object id, and `state` (the
/// directory the demo keeps its files in) with `state`.
///
/// # Panics
/// When the script no longer writes airlock.yaml from a here-document, or
/// the here-document uses a variable or expansion not described above: the
/// calling test then fails and says which.
pub fn local_demo(state: &Path) -> String {
    let (_, rest) = DEMO_SCRIPT
        .split_once(OPENING)
        .expect("demo.sh writes airlock.yaml with cat >\"$state/airlock.yaml\" <<YAML");
    let (body, _) = rest
        .split_once(CLOSING)
        .expect("demo.sh's airlock.yaml here-document ends with a line `YAML`");
    expand(body, state)
}

/// The shell's `$NAME` and `${NAME}` expansion, for the variables the demo's
/// airlock.yaml uses.
fn expand(body: &str, state: &Path) -> String {
    let mut out = String::with_capacity(body.len());
    let mut rest = body;
    let mut made = 0;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        let (name, tail) = match after.strip_prefix('{') {
            Some(braced) => braced
                .split_once('}')
                .expect("an unclosed ${ in demo.sh's airlock.yaml"),
            None => after.split_at(
                after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len()),
            ),
        };
        made += 1;
        let value = if name == "state" {
            state.display().to_string()
        } else if name.ends_with("_PORT") {
            (20_000 + made).to_string()
        } else if name.ends_with("_GROUP") {
            format!("00000000-0000-4000-8000-{made:012x}")
        } else {
            panic!("demo.sh's airlock.yaml uses `${name}`: give it a value in example::expand");
        };
        out.push_str(&value);
        rest = tail;
    }
    out.push_str(rest);
    out
}
