use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use super::*;

/// A section shaped like the binaries' own: unknown fields refused.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Listener {
    listen: SocketAddr,
    #[serde(default)]
    tls: Option<Tls>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Tls {
    cert: String,
    key: String,
}

const GOOD: &str = "\
nats:
  url: nats://127.0.0.1:4222
control:
  listen: 127.0.0.1:7070
policies: []
";

fn parse(text: &str) -> Result<ConfigFile, ConfigError> {
    ConfigFile::parse(text, "airlock.yaml")
}

fn section_error(text: &str, name: &str) -> String {
    let file = parse(text).expect("known sections");
    file.section::<Listener>(name)
        .expect_err("bad section")
        .to_string()
}

#[test]
fn a_present_section_is_read_and_an_absent_one_is_none() {
    let file = parse(GOOD).expect("valid");
    let control: Option<Listener> = file.section("control").expect("valid section");
    assert_eq!(
        control.map(|c| c.listen),
        Some("127.0.0.1:7070".parse().expect("addr"))
    );
    assert_eq!(
        file.section::<Listener>("reviewer").expect("absent is fine"),
        None
    );
    assert_eq!(file.text(), GOOD);
    assert_eq!(file.path(), Path::new("airlock.yaml"));
}

#[test]
fn an_unknown_section_is_refused_with_its_place_and_the_list() {
    let err = parse(&GOOD.replace("control:", "contrl:")).expect_err("typo");
    assert_eq!(
        err.to_string(),
        "airlock.yaml:3:1: unknown top-level section `contrl:`; the sections are nats, identity, \
         approvals, control, reviewer, proxy, connections, policies, shadow_policies, signing"
    );
}

#[test]
fn an_unknown_section_in_flow_style_is_refused_too() {
    let err = parse("{ nats: { url: x }, proxi: {} }").expect_err("typo");
    assert!(
        err.to_string()
            .starts_with("airlock.yaml:1:21: unknown top-level section `proxi:`;"),
        "{err}"
    );
}

#[test]
fn a_missing_required_section_says_what_to_write() {
    let file = parse(GOOD).expect("valid");
    let err = file
        .required::<Listener>("reviewer", "listen and control")
        .expect_err("absent");
    assert_eq!(
        err.to_string(),
        "airlock.yaml: missing section `reviewer:` (listen and control)"
    );
    let control: Listener = file.required("control", "listen: host:port").expect("present");
    assert_eq!(control.listen.port(), 7070);
}

#[test]
fn a_misspelt_field_is_reported_at_its_line_and_column() {
    let err = section_error(&GOOD.replace("  listen:", "  lisen:"), "control");
    assert_eq!(
        err,
        "airlock.yaml:4:3: section `control:`: unknown field `lisen`, expected `listen` or `tls`"
    );
}

#[test]
fn a_wrong_type_is_reported_at_its_line_and_column() {
    let err = section_error(&GOOD.replace("127.0.0.1:7070", "[7070]"), "control");
    assert_eq!(
        err,
        "airlock.yaml:4:11: section `control:`: control.listen: invalid type: sequence, expected socket address"
    );
}

#[test]
fn a_problem_deeper_in_a_section_names_its_path() {
    let text = GOOD.replace(
        "  listen: 127.0.0.1:7070\n",
        "  listen: 127.0.0.1:7070\n  tls:\n    cert: c.pem\n    kye: k.pem\n",
    );
    let err = section_error(&text, "control");
    assert_eq!(
        err,
        "airlock.yaml:7:5: section `control:`: control.tls: unknown field `kye`, expected `cert` or `key`"
    );
}

#[test]
fn a_section_of_the_wrong_kind_is_named() {
    let err = section_error(
        &GOOD.replace("control:\n  listen: 127.0.0.1:7070", "control: 7070"),
        "control",
    );
    assert!(
        err.starts_with("airlock.yaml:3:10: section `control:`: invalid type: integer `7070`"),
        "{err}"
    );
}

#[test]
fn a_file_that_is_not_a_mapping_is_refused() {
    let err = parse("- nats\n- proxy\n").expect_err("a list");
    assert!(
        err.to_string()
            .starts_with("airlock.yaml:1:1: not a YAML mapping: invalid type: sequence"),
        "{err}"
    );
    let err = parse("nats: [\n").expect_err("broken YAML");
    assert!(
        err.to_string()
            .starts_with("airlock.yaml:2:1: not a YAML mapping:"),
        "{err}"
    );
    let err = parse("1: x\n").expect_err("a number key");
    assert_eq!(
        err.to_string(),
        "airlock.yaml: a top-level key is not a string: Number(1)"
    );
}

#[test]
fn an_empty_file_has_no_sections() {
    let file = parse("").expect("empty is a mapping with no sections");
    assert_eq!(file.section::<Listener>("control").expect("absent"), None);
}

#[test]
fn an_unreadable_file_names_its_path() {
    let err = ConfigFile::load(Path::new("/nonexistent/airlock.yaml")).expect_err("no file");
    assert_eq!(err.to_string(), "reading /nonexistent/airlock.yaml");
    assert!(std::error::Error::source(&err).is_some(), "the io error is kept");
}

#[test]
fn the_local_demo_uses_only_known_sections() {
    let text = example::local_demo(Path::new("/var/lib/airlock-demo"));
    let file = parse(&text).expect("the demo's airlock.yaml");
    for name in SECTIONS {
        let value: Option<serde_norway::Value> = file.section(name).expect("any YAML");
        assert!(value.is_some(), "the demo writes `{name}:`");
    }
    assert!(text.contains("/var/lib/airlock-demo/proxy.crt"), "{text}");
    assert!(!text.contains('$'), "every variable filled in: {text}");
}

#[test]
fn a_key_is_located_at_its_line_or_its_deepest_parent() {
    let text = "nats:\n  url: nats://x\nproxy:\n  listen: 127.0.0.1:6432\n  # tls below\n  tls:\n    cert: a.crt\n    key: a.key\n  control_tls: { ca: ca.crt, cert: p.crt }\nreviewer:\n  tls:\n    cert: r.crt\n";
    let file = ConfigFile::parse(text, "airlock.yaml").unwrap();
    assert_eq!(file.locate("proxy.tls.key"), "airlock.yaml:8");
    assert_eq!(file.locate("reviewer.tls.cert"), "airlock.yaml:12");
    assert_eq!(file.locate("proxy.control_tls.cert"), "airlock.yaml:9");
    assert_eq!(
        file.locate("proxy.signing_key"),
        "airlock.yaml:3",
        "absent: its section"
    );
    assert_eq!(file.locate("nats"), "airlock.yaml:1");
    assert_eq!(file.locate("signing.trust"), "airlock.yaml");
    // A top-level key is found only at the top level, not nested in an
    // earlier section (reviewer.control before control:).
    let text = "reviewer:\n  control: https://c\ncontrol:\n  tls:\n    cert: c.crt\n";
    let file = ConfigFile::parse(text, "airlock.yaml").unwrap();
    assert_eq!(file.locate("control.tls"), "airlock.yaml:4");
}

#[test]
fn a_problem_is_placed_at_its_key_unless_it_already_names_its_line() {
    let file = ConfigFile::parse("proxy:\n  listen: 127.0.0.1:1\npolicies: []\n", "air.yaml").expect("parse");
    let mut found = Found {
        file: &file,
        problems: Vec::new(),
    };
    found.at("proxy.listen", "in use");
    // The policy crate places its own problems, to the column.
    found.at("policies", "air.yaml:3:11: policies[0]: unknown connection `x`");
    // A message that only mentions the file is placed like any other.
    found.at("policies", "air.yaml: is not a policy file");
    assert_eq!(
        found.problems,
        [
            "air.yaml:2: proxy.listen: in use",
            "air.yaml:3:11: policies[0]: unknown connection `x`",
            "air.yaml:3: policies: air.yaml: is not a policy file",
        ]
    );
}
