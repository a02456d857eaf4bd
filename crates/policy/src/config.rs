//! Policy files: the `policies:` list of `airlock.yaml` (with the
//! `approvals:`, `identity.group_names` and `connections:` sections it
//! depends on) and standalone files holding one policy. Owns parsing, strict
//! validation with file:line errors, normalisation and the policy digest.
//! Other sections of `airlock.yaml` belong to other crates and are ignored.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::classify::DEFAULT_MAX_STATEMENT_BYTES;
use crate::error::{Location, PolicyError};
use crate::kind::{Kind, known_kind_names};

/// How long a held statement waits unless a rule or `approvals:` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// What happens to a statement. Ordered by strictness: `Deny` is the strictest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Allow,
    RequireApproval,
    Deny,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::RequireApproval => "require-approval",
            Action::Deny => "deny",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One rule, normalised: defaults resolved, lists sorted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// 1-based position in the policy.
    #[serde(skip)]
    pub index: usize,
    /// Canonical one-line text, shown in verdicts.
    #[serde(skip)]
    pub text: String,
    /// Kinds the rule matches (sorted). Empty only when `functions` is set,
    /// which then implies `FUNCTION`.
    pub kinds: Vec<Kind>,
    /// Globs on schema-qualified table names; empty means any table.
    pub tables: Vec<String>,
    /// Globs on function names; empty means any function.
    pub functions: Vec<String>,
    pub action: Action,
    /// For require-approval: distinct reviewers needed.
    pub approvals: u32,
    /// For require-approval: groups whose members may approve.
    pub reviewers: Vec<String>,
    /// For require-approval: how long the statement is held.
    #[serde(rename = "timeout_secs", serialize_with = "as_secs")]
    pub timeout: Duration,
    pub reason: Option<String>,
    /// For require-approval: authentication contexts (Entra `acrs`, e.g.
    /// `c1` for "MFA within the hour") every approving sign-in must have
    /// met (step-up). Left out of the digest when empty, so policies
    /// without step-up keep theirs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub require_acrs: Vec<String>,
    /// For require-approval: run the held statement once inside a
    /// transaction that is rolled back, and show the reviewer the rows it
    /// would change. Left out of the digest when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// One policy: which group on which connection, its rules and defaults.
#[derive(Debug, Clone, Serialize)]
pub struct Policy {
    /// Format marker, so a digest never collides with a future format's.
    format: &'static str,
    /// The Entra group (name from `identity.group_names`, or object id).
    pub name: String,
    pub connection: String,
    pub rules: Vec<Rule>,
    pub record: bool,
    /// For statements no rule matches: require-approval or deny (allow only
    /// in a record-only policy, see [`Policy::records_only`]).
    pub default: Action,
    /// For SQL the parser cannot read: require-approval or deny (allow only
    /// in a record-only policy).
    pub unparsed: Action,
    /// Reviewers, approvals and timeout for `default` and `unparsed` holds.
    pub reviewers: Vec<String>,
    pub approvals: u32,
    #[serde(rename = "timeout_secs", serialize_with = "as_secs")]
    pub timeout: Duration,
    pub max_statement_bytes: usize,
    /// Step-up for approving `default` and `unparsed` holds, and the
    /// default of the policy's require-approval rules.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub require_acrs: Vec<String>,
    /// Members of these groups may approve their own held statements,
    /// loudly (left out of the digest when unset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<BreakGlass>,
    /// The longest grant an approval of this policy's holds may carry
    /// (unset: [`MAX_GRANT_TTL`]; left out of the digest when unset).
    #[serde(
        rename = "max_grant_ttl_secs",
        skip_serializing_if = "Option::is_none",
        serialize_with = "opt_secs"
    )]
    pub max_grant_ttl: Option<Duration>,
    #[serde(skip)]
    digest: String,
    /// The file it came from.
    #[serde(skip)]
    pub source: String,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

fn opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_u64(d.as_secs()),
        None => s.serialize_none(),
    }
}

/// A policy's `break_glass:`: who may approve their own held statement,
/// and the longest grant such an approval may carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BreakGlass {
    pub groups: Vec<String>,
    #[serde(rename = "max_ttl_secs", serialize_with = "as_secs")]
    pub max_ttl: Duration,
    /// The client applications a break-glass approval must come through
    /// (empty: any but the session's own; left out of the digest then).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<String>,
}

/// The longest `break_glass.max_ttl`.
pub const MAX_BREAK_GLASS_TTL: Duration = Duration::from_secs(8 * 3600);

/// The longest grant any approval may carry, and the most a policy's
/// `max_grant_ttl` may say.
pub const MAX_GRANT_TTL: Duration = Duration::from_secs(8 * 3600);

impl Policy {
    /// A record-only policy: it allows every statement, even text the
    /// parser cannot read (`unparsed: allow`), and records them. Loading
    /// accepts that only when every rule allows and the rules cover every
    /// kind, with `record: true`; binaries warn when they load one.
    pub fn records_only(&self) -> bool {
        self.unparsed == Action::Allow
    }

    /// Hex SHA-256 of the canonical JSON of the normalised policy. Stable
    /// across key order, whitespace, comments and defaults written out or left implicit.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    fn seal(mut self) -> Self {
        let canonical = serde_json::to_vec(&self).unwrap_or_default();
        self.digest = hex::encode(Sha256::digest(&canonical));
        self
    }

    /// Parses a standalone policy file. `defaults` are the `approvals:` of the
    /// `airlock.yaml` it will be used with, if known.
    pub fn from_yaml(text: &str, file: &str, defaults: &ApprovalDefaults) -> Result<Policy, PolicyError> {
        let ctx = Context {
            defaults: defaults.clone(),
            connections: None,
            groups: None,
        };
        let raw: RawPolicyFile = parse_located(text, file, &ctx, |raw: &RawPolicyFile| {
            check_policies(std::slice::from_ref(&raw.0), &ctx)
        })?;
        Ok(build_policy(raw.0.value, &ctx, file))
    }
}

/// `approvals:` in `airlock.yaml`: defaults for require-approval rules.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalDefaults {
    #[serde(default)]
    pub reviewers: Vec<String>,
    #[serde(default, deserialize_with = "de_timeout_opt")]
    pub timeout: Option<Duration>,
    /// Authentication contexts every approval must have met (step-up),
    /// unless a policy or rule says otherwise.
    #[serde(default)]
    pub require_acrs: Vec<String>,
}

impl ApprovalDefaults {
    /// The `approvals:` section of an `airlock.yaml` (empty when absent), for
    /// checking standalone policy files against the config they will run under.
    pub fn from_config_yaml(text: &str, file: &str) -> Result<ApprovalDefaults, PolicyError> {
        #[derive(Deserialize)]
        struct OnlyApprovals {
            approvals: Option<ApprovalDefaults>,
        }
        let only: OnlyApprovals = serde_norway::from_str(text).map_err(|e| yaml_error(&e, file))?;
        Ok(only.approvals.unwrap_or_default())
    }
}

/// What a connection entry tells the policy engine.
#[derive(Debug, Clone)]
pub struct ConnectionPolicyInfo {
    /// Where unqualified table names resolve (`public` unless set).
    pub default_schema: String,
}

/// Every policy of an `airlock.yaml` (or of one standalone file), with what
/// is needed to pick one for a session.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    pub policies: Vec<Policy>,
    pub connections: BTreeMap<String, ConnectionPolicyInfo>,
    /// Readable group name -> Entra object id.
    pub group_names: BTreeMap<String, String>,
    pub approvals: ApprovalDefaults,
}

impl PolicySet {
    /// Parses `airlock.yaml` text: its `policies:` and the sections they refer to.
    pub fn from_config_yaml(text: &str, file: &str) -> Result<PolicySet, PolicyError> {
        // First the sections policies depend on, wherever they are in the file.
        let header: ConfigHeader = serde_norway::from_str(text).map_err(|e| yaml_error(&e, file))?;
        let connections: BTreeMap<String, ConnectionPolicyInfo> = header
            .connections
            .iter()
            .map(|c| {
                let schema = c.default_schema.clone().unwrap_or_else(|| "public".to_owned());
                (
                    c.name.clone(),
                    ConnectionPolicyInfo {
                        default_schema: schema,
                    },
                )
            })
            .collect();
        let group_names = header.identity.map(|i| i.group_names).unwrap_or_default();
        let approvals = header.approvals.unwrap_or_default();
        if !approvals.require_acrs.is_empty()
            && let Some(bad) = bad_acrs(&approvals.require_acrs)
        {
            return Err(invalid_without_line(file, &format!("approvals: {bad}")));
        }
        let ctx = Context {
            defaults: approvals.clone(),
            connections: (!header.connections.is_empty()).then(|| connections.keys().cloned().collect()),
            groups: Some(group_names.clone()),
        };
        let body: ConfigPolicies = parse_located(text, file, &ctx, |b: &ConfigPolicies| {
            check_policies(&b.policies, &ctx)
        })?;
        if body.policies.is_empty() {
            return Err(PolicyError::NoPolicies {
                file: file.to_owned(),
            });
        }
        let policies = body
            .policies
            .into_iter()
            .map(|p| build_policy(p.value, &ctx, file))
            .collect();
        Ok(PolicySet {
            policies,
            connections,
            group_names,
            approvals,
        })
    }

    /// The `shadow_policies:` of `airlock.yaml` text (same format as
    /// `policies:`, judged beside them and recorded, never enforced); an
    /// empty set when the file has none.
    pub fn shadow_from_config_yaml(text: &str, file: &str) -> Result<PolicySet, PolicyError> {
        let whole: serde_norway::Value = serde_norway::from_str(text).map_err(|e| yaml_error(&e, file))?;
        let Some(shadow) = whole.get("shadow_policies") else {
            return Ok(PolicySet::default());
        };
        // The shadow policies, under `policies:`, with the sections they
        // refer to: parsed exactly as enforced policies are.
        let mut doc = serde_norway::Mapping::new();
        for key in ["identity", "connections", "approvals"] {
            if let Some(v) = whole.get(key) {
                doc.insert(key.into(), v.clone());
            }
        }
        doc.insert("policies".into(), shadow.clone());
        let text = serde_norway::to_string(&doc).map_err(|e| yaml_error(&e, file))?;
        PolicySet::from_config_yaml(&text, &format!("{file} (shadow_policies, as re-read)"))
    }

    /// Parses either form: `airlock.yaml` (has `policies:`) or a standalone
    /// policy (has `policy:`). `defaults` apply to a standalone policy.
    pub fn from_yaml(text: &str, file: &str, defaults: &ApprovalDefaults) -> Result<PolicySet, PolicyError> {
        let probe: Probe = serde_norway::from_str(text).map_err(|e| yaml_error(&e, file))?;
        if probe.policy.is_some() && probe.policies.is_none() {
            let policy = Policy::from_yaml(text, file, defaults)?;
            Ok(PolicySet {
                policies: vec![policy],
                approvals: defaults.clone(),
                ..PolicySet::default()
            })
        } else if probe.policies.is_some() {
            Self::from_config_yaml(text, file)
        } else {
            Err(PolicyError::NoPolicies {
                file: file.to_owned(),
            })
        }
    }

    /// Where unqualified table names resolve on `connection`.
    /// Every group the set names: each policy's group, its reviewers and
    /// its rules' reviewers, and `approvals.reviewers` (names or object ids,
    /// as written). For asking Graph about callers with group overage.
    pub fn named_groups(&self) -> std::collections::BTreeSet<String> {
        let mut groups: std::collections::BTreeSet<String> =
            self.approvals.reviewers.iter().cloned().collect();
        for policy in &self.policies {
            groups.insert(policy.name.clone());
            groups.extend(policy.reviewers.iter().cloned());
            for rule in &policy.rules {
                groups.extend(rule.reviewers.iter().cloned());
            }
        }
        groups
    }

    pub fn default_schema(&self, connection: &str) -> &str {
        self.connections
            .get(connection)
            .map(|c| c.default_schema.as_str())
            .unwrap_or("public")
    }

    /// Whether `policy_name` (a group name or object id) names `group`
    /// (either form).
    fn names_group(&self, policy_name: &str, group: &str) -> bool {
        let id_of = |n: &str| self.group_names.get(n).cloned().unwrap_or_else(|| n.to_owned());
        policy_name == group || id_of(policy_name) == id_of(group)
    }

    /// Policies for `connection` and `group`, either filter optional.
    pub fn select(&self, connection: Option<&str>, group: Option<&str>) -> Vec<&Policy> {
        self.policies
            .iter()
            .filter(|p| connection.is_none_or(|c| p.connection == c))
            .filter(|p| group.is_none_or(|g| self.names_group(&p.name, g)))
            .collect()
    }

    /// Exactly one policy for `connection` and `group`, or an error saying why not.
    pub fn select_one(&self, connection: Option<&str>, group: Option<&str>) -> Result<&Policy, PolicyError> {
        let found = self.select(connection, group);
        let describe = |ps: &[&Policy]| {
            ps.iter()
                .map(|p| format!("{} on {}", p.name, p.connection))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match found.as_slice() {
            [one] => Ok(one),
            [] => Err(PolicyError::NoPolicyMatches {
                connection: connection.map(str::to_owned),
                group: group.map(str::to_owned),
                available: describe(&self.policies.iter().collect::<Vec<_>>()),
            }),
            many => Err(PolicyError::SeveralPoliciesMatch {
                candidates: describe(many),
            }),
        }
    }
}

// ---------------------------------------------------------------------------
// What the YAML holds.

#[derive(Deserialize)]
struct Probe {
    policy: Option<serde_norway::Value>,
    policies: Option<serde_norway::Value>,
}

#[derive(Deserialize)]
struct ConfigHeader {
    approvals: Option<ApprovalDefaults>,
    identity: Option<IdentityNames>,
    #[serde(default)]
    connections: Vec<ConnectionEntry>,
}

#[derive(Deserialize)]
struct IdentityNames {
    #[serde(default)]
    group_names: BTreeMap<String, String>,
}

/// Only the keys the policy engine reads; the proxy owns the rest.
#[derive(Deserialize)]
struct ConnectionEntry {
    name: String,
    default_schema: Option<String>,
}

#[derive(Deserialize)]
struct ConfigPolicies {
    #[serde(default)]
    policies: Vec<Counted<RawPolicy>>,
}

struct RawPolicyFile(Counted<RawPolicy>);

impl<'de> Deserialize<'de> for RawPolicyFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Counted::deserialize(d).map(RawPolicyFile)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    policy: String,
    connection: String,
    rules: Vec<Counted<RawRule>>,
    #[serde(default)]
    record: bool,
    default: Option<Fallback>,
    unparsed: Option<Fallback>,
    reviewers: Option<Vec<String>>,
    approvals: Option<Approvals>,
    #[serde(default, deserialize_with = "de_timeout_opt")]
    timeout: Option<Duration>,
    max_statement_bytes: Option<usize>,
    require_acrs: Option<Vec<String>>,
    break_glass: Option<RawBreakGlass>,
    #[serde(default, deserialize_with = "de_timeout_opt")]
    max_grant_ttl: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreakGlass {
    groups: Vec<String>,
    #[serde(default, deserialize_with = "de_timeout_opt")]
    max_ttl: Option<Duration>,
    clients: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(rename = "match")]
    kinds: Option<Kinds>,
    tables: Option<Vec<TableGlob>>,
    functions: Option<Vec<String>>,
    action: RuleAction,
    approvals: Option<Approvals>,
    reviewers: Option<Vec<String>>,
    #[serde(default, deserialize_with = "de_timeout_opt")]
    timeout: Option<Duration>,
    reason: Option<String>,
    require_acrs: Option<Vec<String>>,
    dry_run: Option<bool>,
}

/// Separates a message from its hint inside a serde custom error.
const HINT: &str = "\u{1f}";

fn invalid<E: de::Error>(message: impl fmt::Display, hint: impl fmt::Display) -> E {
    E::custom(format!("{message}{HINT}{hint}"))
}

/// Reads a string and converts it inside the string visitor, so a failed
/// conversion is reported at the value's own line and column.
fn de_str<'de, D: Deserializer<'de>, T>(
    d: D,
    what: &'static str,
    convert: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    struct V<T> {
        what: &'static str,
        convert: fn(&str) -> Result<T, String>,
    }
    impl<T> Visitor<'_> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.what)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.convert)(v).map_err(E::custom)
        }
    }
    d.deserialize_str(V { what, convert })
}

fn hinted(message: impl fmt::Display, hint: impl fmt::Display) -> String {
    format!("{message}{HINT}{hint}")
}

struct Kinds(Vec<Kind>);

struct KindNames(Vec<Kind>);

fn parse_kinds(s: &str) -> Result<KindNames, String> {
    let mut kinds = Vec::new();
    for name in s.split('|') {
        let kind = name
            .parse::<Kind>()
            .map_err(|e| hinted(e, format_args!("write one of: {}", known_kind_names())))?;
        kinds.push(kind);
    }
    Ok(KindNames(kinds))
}

impl<'de> Deserialize<'de> for KindNames {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_str(d, "a statement kind such as SELECT", parse_kinds)
    }
}

impl<'de> Deserialize<'de> for Kinds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Kinds;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("kinds, as `DELETE|UPDATE` or `[DELETE, UPDATE]`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Kinds, E> {
                parse_kinds(v).map(|k| Kinds(k.0)).map_err(E::custom)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Kinds, A::Error> {
                let mut kinds = Vec::new();
                while let Some(KindNames(mut k)) = seq.next_element()? {
                    kinds.append(&mut k);
                }
                if kinds.is_empty() {
                    return Err(invalid(
                        "`match` is empty",
                        "name at least one kind, e.g. `match: SELECT`",
                    ));
                }
                Ok(Kinds(kinds))
            }
        }
        d.deserialize_any(V)
    }
}

fn parse_action(s: &str) -> Result<Action, String> {
    match s {
        "allow" => Ok(Action::Allow),
        "require-approval" => Ok(Action::RequireApproval),
        "deny" => Ok(Action::Deny),
        other => Err(hinted(
            format_args!("unknown action `{other}`"),
            "write `allow`, `require-approval` or `deny`",
        )),
    }
}

struct RuleAction(Action);

impl<'de> Deserialize<'de> for RuleAction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_str(d, "an action", |s| parse_action(s).map(RuleAction))
    }
}

/// `default:` and `unparsed:`. `allow` is read here and accepted later only
/// in a record-only policy (see [`check_policies`]).
struct Fallback(Action);

impl<'de> Deserialize<'de> for Fallback {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_str(d, "require-approval or deny", |s| parse_action(s).map(Fallback))
    }
}

/// The kinds a rule can decide: all but transaction control (always
/// allowed). A record-only policy allows every one of them.
pub fn judged_kinds() -> impl Iterator<Item = Kind> {
    Kind::ALL.iter().copied().filter(|k| !k.is_transaction_control())
}

/// Whether a policy's rules allow every statement and gate none: every
/// rule allows, and rules naming no tables or functions cover every kind.
/// Only such a policy may write `unparsed: allow` or `default: allow`.
fn rules_allow_everything(rules: &[Counted<RawRule>]) -> Result<(), String> {
    if let Some(i) = rules.iter().position(|r| r.value.action.0 != Action::Allow) {
        return Err(format!("rule {} is `{}`", i + 1, rules[i].value.action.0));
    }
    let covered: Vec<Kind> = rules
        .iter()
        .filter(|r| {
            r.value.tables.as_ref().is_none_or(Vec::is_empty)
                && r.value.functions.as_ref().is_none_or(Vec::is_empty)
        })
        .flat_map(|r| r.value.kinds.as_ref().map(|k| k.0.clone()).unwrap_or_default())
        .collect();
    let missing: Vec<&str> = judged_kinds()
        .filter(|k| !covered.contains(k))
        .map(|k| k.name())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "no rule without `tables` or `functions` allows {}",
            missing.join(", ")
        ))
    }
}

struct Approvals(u32);

impl<'de> Deserialize<'de> for Approvals {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Approvals;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of distinct reviewers, e.g. `approvals: 2`")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Approvals, E> {
                match u32::try_from(n) {
                    Ok(n) if (1..=100).contains(&n) => Ok(Approvals(n)),
                    _ => Err(invalid(
                        format_args!("`approvals: {n}` is out of range"),
                        "write the number of distinct reviewers needed, from 1 to 100",
                    )),
                }
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Approvals, E> {
                self.visit_i64(i64::try_from(n).unwrap_or(i64::MAX))
            }
        }
        d.deserialize_any(V)
    }
}

fn de_timeout_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_str(d, "a duration such as 15m", |s| {
        match humantime::parse_duration(s) {
            Ok(t) if !t.is_zero() => Ok(Some(t)),
            Ok(_) => Err(hinted(
                "a zero timeout would expire every hold at once",
                "write e.g. `timeout: 15m`",
            )),
            Err(e) => Err(hinted(
                format_args!("bad duration `{s}`: {e}"),
                "write e.g. `timeout: 15m`, `90s` or `2h`",
            )),
        }
    })
}

/// A `schema.table` pattern, folded as PostgreSQL folds the names it
/// matches: unquoted parts to ASCII lower case (`public.Orders` is the table
/// `CREATE TABLE Orders` made, `public.orders`), double-quoted parts kept as
/// written (`public."Orders"`). A pattern that kept its case would never
/// match the folded name, and a deny or hold on it would silently do nothing.
struct TableGlob(String);

impl TableGlob {
    fn parse(s: &str) -> Result<TableGlob, String> {
        if s == "*" {
            return Ok(TableGlob(s.to_owned()));
        }
        let mut parts = vec![String::new()];
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '"' => {
                    let mut closed = false;
                    while let Some(q) = chars.next() {
                        if q == '"' {
                            if chars.peek() == Some(&'"') {
                                chars.next();
                                if let Some(p) = parts.last_mut() {
                                    p.push('"');
                                }
                                continue;
                            }
                            closed = true;
                            break;
                        }
                        if q == '*' || q == '.' {
                            return Err(format!(
                                "table pattern `{s}`: a quoted name may not hold `{q}` (it would read as a pattern)"
                            ));
                        }
                        if let Some(p) = parts.last_mut() {
                            p.push(q);
                        }
                    }
                    if !closed {
                        return Err(format!("table pattern `{s}` has an unclosed quote"));
                    }
                }
                '.' => parts.push(String::new()),
                c => {
                    if let Some(p) = parts.last_mut() {
                        p.push(c.to_ascii_lowercase());
                    }
                }
            }
        }
        if parts.len() == 2 && parts.iter().all(|p| !p.is_empty()) {
            Ok(TableGlob(parts.join(".")))
        } else {
            Err(format!("table pattern `{s}` is not schema-qualified"))
        }
    }
}

impl<'de> Deserialize<'de> for TableGlob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_str(d, "a schema-qualified table pattern", |s| {
            TableGlob::parse(s).map_err(|message| {
                hinted(
                    message,
                    format_args!(
                        "write `public.{}` or `schema.*` (quote a name to keep its case: `public.\"Orders\"`)",
                        s.rsplit('.').next().unwrap_or(s)
                    ),
                )
            })
        })
    }
}

// ---------------------------------------------------------------------------
// Checks that need more than one key, reported at the right line.
//
// serde's errors carry the position of the node being read when they are
// raised. A check that spans keys (a rule's action and its reviewers, which
// may be set on the policy) runs after the file is read; to report it at the
// offending rule, the file is read a second time with a trap that fails on
// the same rule, so the YAML parser supplies its position.

/// A value with its place in document order (1-based), counted per type.
struct Counted<T> {
    value: T,
    ordinal: usize,
}

#[derive(Default)]
struct Trap {
    counters: [usize; 2],
    fire: Option<(usize, usize, String)>,
}

thread_local! {
    static TRAP: RefCell<Trap> = RefCell::new(Trap::default());
}

trait Slot {
    const SLOT: usize;
    const WHAT: &'static str;
}
impl Slot for RawPolicy {
    const SLOT: usize = 0;
    const WHAT: &'static str = "a policy (a mapping with `policy`, `connection` and `rules`)";
}
impl Slot for RawRule {
    const SLOT: usize = 1;
    const WHAT: &'static str = "a rule (a mapping with `match` and `action`)";
}

impl<'de, T: Deserialize<'de> + Slot> Deserialize<'de> for Counted<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de> + Slot> Visitor<'de> for V<T> {
            type Value = Counted<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(T::WHAT)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Counted<T>, A::Error> {
                let value = T::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let (ordinal, fire) = TRAP.with(|t| {
                    let mut t = t.borrow_mut();
                    t.counters[T::SLOT] += 1;
                    let n = t.counters[T::SLOT];
                    let fire = match &t.fire {
                        Some((slot, at, msg)) if *slot == T::SLOT && *at == n => Some(msg.clone()),
                        _ => None,
                    };
                    (n, fire)
                });
                match fire {
                    Some(msg) => Err(<A::Error as de::Error>::custom(msg)),
                    None => Ok(Counted { value, ordinal }),
                }
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// A problem found after reading: which node (slot, ordinal) and the message.
struct Late {
    slot: usize,
    ordinal: usize,
    message: String,
}

struct Context {
    defaults: ApprovalDefaults,
    /// Connection names, when the file declares `connections:`.
    connections: Option<Vec<String>>,
    /// Group names, when reading an `airlock.yaml`.
    groups: Option<BTreeMap<String, String>>,
}

fn check_policies(policies: &[Counted<RawPolicy>], ctx: &Context) -> Result<(), Late> {
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for p in policies {
        let at_policy = |message: String| Late {
            slot: 0,
            ordinal: p.ordinal,
            message,
        };
        let raw = &p.value;
        if let Some(conns) = &ctx.connections
            && !conns.contains(&raw.connection)
        {
            return Err(at_policy(format!(
                "unknown connection `{}`{HINT}write one of the `connections:` names: {}",
                raw.connection,
                conns.join(", ")
            )));
        }
        if let Some(groups) = &ctx.groups {
            let known = groups.contains_key(&raw.policy) || groups.values().any(|v| *v == raw.policy);
            if !known && !looks_like_object_id(&raw.policy) {
                return Err(at_policy(format!(
                    "unknown group `{}`{HINT}add it under `identity.group_names`, or write the group's object id",
                    raw.policy
                )));
            }
        }
        if seen.contains(&(raw.policy.as_str(), raw.connection.as_str())) {
            return Err(at_policy(format!(
                "a second policy for group `{}` on connection `{}`{HINT}merge their rules into one policy",
                raw.policy, raw.connection
            )));
        }
        seen.push((&raw.policy, &raw.connection));
        if raw.rules.is_empty() {
            return Err(at_policy(format!(
                "policy `{}` has no rules{HINT}add e.g. `rules: [{{match: SELECT, action: allow}}]`",
                raw.policy
            )));
        }
        if raw.reviewers.as_ref().is_some_and(Vec::is_empty) {
            // Its holds (the default's included) could be approved by no
            // one, and would be refused at once.
            return Err(at_policy(format!(
                "policy `{}` has `reviewers: []`{HINT}name at least one group, or leave `reviewers` out \
                 to use `approvals.reviewers` of airlock.yaml",
                raw.policy
            )));
        }
        // Record-only: a policy may let everything through, the unreadable
        // included, only if its rules gate nothing, and it must record.
        let allows = |f: &Option<Fallback>| matches!(f, Some(Fallback(Action::Allow)));
        if allows(&raw.unparsed) || allows(&raw.default) {
            let key = if allows(&raw.unparsed) {
                "unparsed"
            } else {
                "default"
            };
            if let Err(why) = rules_allow_everything(&raw.rules) {
                return Err(at_policy(format!(
                    "`{key}: allow` is accepted only in a record-only policy, whose rules allow every kind \
                     and hold or deny nothing, but {why}{HINT}write `{key}: require-approval` or `{key}: deny`; \
                     for a connection Airlock records without gating, allow every kind \
                     (`match: {}`) and nothing else",
                    judged_kinds().map(Kind::name).collect::<Vec<_>>().join("|")
                )));
            }
            if !raw.record {
                return Err(at_policy(format!(
                    "`{key}: allow` without `record: true` would let every statement through unrecorded\
                     {HINT}add `record: true`: a record-only policy exists to record"
                )));
            }
        }
        // A DO block runs any code: allowing it lets every statement
        // through, so only a record-only policy may.
        if rules_allow_everything(&raw.rules).is_err()
            && let Some(i) = raw.rules.iter().position(|r| {
                r.value.action.0 == Action::Allow
                    && r.value.kinds.as_ref().is_some_and(|k| k.0.contains(&Kind::Do))
            })
        {
            return Err(at_policy(format!(
                "rule {} allows DO, but a DO block runs any code (a DELETE inside one included), so \
                 allowing it lets every statement through ungated{HINT}hold DO (`require-approval`) \
                 or deny it; allow it only in a record-only policy",
                i + 1
            )));
        }
        if let Some(bad) = raw.require_acrs.as_deref().and_then(bad_acrs) {
            return Err(at_policy(bad));
        }
        if let Some(b) = &raw.break_glass {
            if b.groups.is_empty() {
                return Err(at_policy(format!(
                    "policy `{}` has `break_glass` with no groups{HINT}name the groups whose members may \
                     approve their own held statements, or leave `break_glass` out",
                    raw.policy
                )));
            }
            if let Some(groups) = &ctx.groups
                && let Some(g) = b.groups.iter().find(|g| {
                    !groups.contains_key(*g) && !groups.values().any(|v| v == *g) && !looks_like_object_id(g)
                })
            {
                return Err(at_policy(format!(
                    "break_glass: unknown group `{g}`{HINT}add it under `identity.group_names`, or write the group's object id"
                )));
            }
            if b.clients
                .as_ref()
                .is_some_and(|c| c.is_empty() || c.iter().any(|x| x.trim().is_empty()))
            {
                return Err(at_policy(format!(
                    "break_glass.clients must name client application ids{HINT}e.g. the reviewer UI's and \
                     airlock-cli's, or leave `clients` out"
                )));
            }
            if b.max_ttl.is_some_and(|t| t.is_zero() || t > MAX_BREAK_GLASS_TTL) {
                return Err(at_policy(format!(
                    "break_glass.max_ttl must be more than 0 and at most 8h{HINT}e.g. `max_ttl: 1h`"
                )));
            }
        }
        if raw.max_grant_ttl.is_some_and(|t| t > MAX_GRANT_TTL) {
            return Err(at_policy(format!(
                "max_grant_ttl must be at most 8h{HINT}e.g. `max_grant_ttl: 2h`, or leave it out for 8h"
            )));
        }
        let policy_reviewers = raw.reviewers.is_some() || !ctx.defaults.reviewers.is_empty();
        for r in &raw.rules {
            let rule = &r.value;
            let at_rule = |message: String| Late {
                slot: 1,
                ordinal: r.ordinal,
                message,
            };
            if rule.kinds.is_none() && rule.functions.is_none() {
                return Err(at_rule(format!(
                    "rule has no `match`{HINT}add e.g. `match: SELECT`, or `functions: [name]` for function calls"
                )));
            }
            let holds = rule.action.0 == Action::RequireApproval;
            if holds && rule.reviewers.is_none() && !policy_reviewers {
                return Err(at_rule(format!(
                    "this rule requires approval but names no reviewers{HINT}add `reviewers: [group]` to the rule or the policy, or `approvals: {{reviewers: [group]}}` to airlock.yaml"
                )));
            }
            if matches!(&rule.reviewers, Some(r) if r.is_empty()) && holds {
                return Err(at_rule(format!(
                    "`reviewers` is empty{HINT}name at least one group"
                )));
            }
            if !holds
                && (rule.approvals.is_some()
                    || rule.reviewers.is_some()
                    || rule.timeout.is_some()
                    || rule.require_acrs.is_some()
                    || rule.dry_run.is_some())
            {
                return Err(at_rule(format!(
                    "`approvals`, `reviewers`, `timeout`, `require_acrs` and `dry_run` only apply to require-approval rules{HINT}remove them, or write `action: require-approval`"
                )));
            }
            if let Some(bad) = rule.require_acrs.as_deref().and_then(bad_acrs) {
                return Err(at_rule(bad));
            }
        }
    }
    Ok(())
}

/// What is wrong with a `require_acrs` list, if anything: authentication
/// context ids are short tokens (Entra's are `c1` to `c99`).
fn bad_acrs(acrs: &[String]) -> Option<String> {
    if acrs.is_empty() {
        return Some(format!(
            "`require_acrs` is empty{HINT}name an authentication context (e.g. `c1`), or leave the key out"
        ));
    }
    acrs.iter()
        .find(|a| {
            a.is_empty() || a.len() > 64 || !a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(|a| {
            format!(
                "`require_acrs` has {a:?}, which is not an authentication context id{HINT}write the id Conditional \
                 Access shows for it, e.g. `c1`"
            )
        })
}

/// Entra object ids are GUIDs.
fn looks_like_object_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && parts.iter().all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Reads `text`, runs `check`, and on a late problem reads again with the trap
/// set so the error carries the offending node's line.
fn parse_located<T, F>(text: &str, file: &str, _ctx: &Context, check: F) -> Result<T, PolicyError>
where
    T: for<'de> Deserialize<'de>,
    F: Fn(&T) -> Result<(), Late>,
{
    TRAP.with(|t| *t.borrow_mut() = Trap::default());
    let first: Result<T, _> = serde_norway::from_str(text);
    let value = first.map_err(|e| yaml_error(&e, file))?;
    let Err(late) = check(&value) else {
        return Ok(value);
    };
    TRAP.with(|t| {
        *t.borrow_mut() = Trap {
            counters: [0, 0],
            fire: Some((late.slot, late.ordinal, late.message.clone())),
        }
    });
    let second: Result<T, _> = serde_norway::from_str(text);
    TRAP.with(|t| *t.borrow_mut() = Trap::default());
    match second {
        Err(e) => Err(yaml_error(&e, file)),
        // The trap did not fire (cannot happen: same text, same order); report without a line.
        Ok(_) => Err(invalid_without_line(file, &late.message)),
    }
}

/// A problem of `file` no line can be given for; `message` may carry a hint.
fn invalid_without_line(file: &str, message: &str) -> PolicyError {
    let (message, hint) = split_hint(message);
    PolicyError::InvalidPolicy {
        at: Location {
            file: file.to_owned(),
            line: None,
            column: None,
        },
        message,
        hint,
    }
}

fn split_hint(s: &str) -> (String, Option<String>) {
    match s.split_once(HINT) {
        Some((m, h)) => (m.to_owned(), Some(h.to_owned())),
        None => (s.to_owned(), None),
    }
}

fn yaml_error(e: &serde_norway::Error, file: &str) -> PolicyError {
    let mut text = e.to_string();
    let (line, column) = match e.location() {
        Some(l) => {
            let suffix = format!(" at line {} column {}", l.line(), l.column());
            if let Some(stripped) = text.strip_suffix(&suffix) {
                text = stripped.to_owned();
            }
            (Some(l.line()), Some(l.column()))
        }
        None => (None, None),
    };
    let (message, mut hint) = split_hint(&text);
    if hint.is_none() {
        hint = builtin_hint(&message);
    }
    PolicyError::InvalidPolicy {
        at: Location {
            file: file.to_owned(),
            line,
            column,
        },
        message,
        hint,
    }
}

/// Hints for serde's own messages.
fn builtin_hint(message: &str) -> Option<String> {
    if let Some(rest) = message.split("unknown field `").nth(1) {
        let unknown = rest.split('`').next().unwrap_or("");
        let allowed: Vec<&str> = rest
            .split("expected ")
            .nth(1)
            .unwrap_or("")
            .split('`')
            .skip(1)
            .step_by(2)
            .collect();
        Some(match allowed.iter().min_by_key(|k| edit_distance(unknown, k)) {
            Some(best) if edit_distance(unknown, best) <= 2 => format!("did you mean `{best}`?"),
            _ => "remove the key or correct its spelling (the keys allowed here are listed above)".into(),
        })
    } else if let Some(rest) = message.split("missing field `").nth(1) {
        let field = rest.split('`').next().unwrap_or("");
        let example = match field {
            "action" => "action: allow | require-approval | deny",
            "policy" => "policy: <Entra group name or object id>",
            "connection" => "connection: <a name from connections:>",
            "rules" => "rules: [{match: SELECT, action: allow}]",
            _ => "",
        };
        Some(format!(
            "add `{}`",
            if example.is_empty() { field } else { example }
        ))
    } else if message.contains("invalid type") {
        Some("check the value's form against the policy format (lists in [..], durations like 15m)".into())
    } else {
        None
    }
}

/// Levenshtein distance, for "did you mean" hints on short keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn build_policy(raw: RawPolicy, ctx: &Context, file: &str) -> Policy {
    let policy_reviewers = sorted(
        raw.reviewers
            .clone()
            .unwrap_or_else(|| ctx.defaults.reviewers.clone()),
    );
    let policy_timeout = raw.timeout.or(ctx.defaults.timeout).unwrap_or(DEFAULT_TIMEOUT);
    let policy_approvals = raw.approvals.as_ref().map(|a| a.0).unwrap_or(1);
    // Step-up adds up: `approvals.require_acrs` is a floor every hold
    // keeps (the control plane enforces it too), the policy's and a rule's
    // add to it.
    let policy_acrs = sorted(
        ctx.defaults
            .require_acrs
            .iter()
            .chain(raw.require_acrs.iter().flatten())
            .cloned()
            .collect(),
    );
    let rules = raw
        .rules
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let r = r.value;
            let holds = r.action.0 == Action::RequireApproval;
            let mut kinds = r.kinds.map(|k| k.0).unwrap_or_else(|| vec![Kind::Function]);
            kinds.sort();
            kinds.dedup();
            let mut rule = Rule {
                index: i + 1,
                text: String::new(),
                kinds,
                tables: sorted(r.tables.unwrap_or_default().into_iter().map(|t| t.0).collect()),
                functions: sorted(
                    r.functions
                        .unwrap_or_default()
                        .into_iter()
                        .map(|f| f.to_ascii_lowercase())
                        .collect(),
                ),
                action: r.action.0,
                approvals: if holds {
                    r.approvals.map(|a| a.0).unwrap_or(policy_approvals)
                } else {
                    0
                },
                reviewers: if holds {
                    r.reviewers
                        .map(sorted)
                        .unwrap_or_else(|| policy_reviewers.clone())
                } else {
                    vec![]
                },
                timeout: if holds {
                    r.timeout.unwrap_or(policy_timeout)
                } else {
                    Duration::ZERO
                },
                reason: r.reason,
                require_acrs: if holds {
                    sorted(
                        policy_acrs
                            .iter()
                            .chain(r.require_acrs.iter().flatten())
                            .cloned()
                            .collect(),
                    )
                } else {
                    vec![]
                },
                dry_run: holds && r.dry_run.unwrap_or(false),
            };
            rule.text = rule_text(&rule);
            rule
        })
        .collect();
    Policy {
        format: "airlock.policy.v1",
        name: raw.policy,
        connection: raw.connection,
        rules,
        record: raw.record,
        default: raw.default.map(|a| a.0).unwrap_or(Action::RequireApproval),
        unparsed: raw.unparsed.map(|a| a.0).unwrap_or(Action::RequireApproval),
        reviewers: policy_reviewers,
        approvals: policy_approvals,
        timeout: policy_timeout,
        max_statement_bytes: raw.max_statement_bytes.unwrap_or(DEFAULT_MAX_STATEMENT_BYTES),
        require_acrs: policy_acrs,
        break_glass: raw.break_glass.map(|b| BreakGlass {
            groups: sorted(b.groups),
            max_ttl: b.max_ttl.unwrap_or(Duration::from_secs(3600)),
            clients: sorted(b.clients.unwrap_or_default()),
        }),
        max_grant_ttl: raw.max_grant_ttl,
        digest: String::new(),
        source: file.to_owned(),
    }
    .seal()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

/// `match: DELETE|DROP, tables: [public.orders], action: require-approval`
fn rule_text(r: &Rule) -> String {
    let mut parts = vec![format!(
        "match: {}",
        r.kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join("|")
    )];
    if !r.tables.is_empty() {
        parts.push(format!("tables: [{}]", r.tables.join(", ")));
    }
    if !r.functions.is_empty() {
        parts.push(format!("functions: [{}]", r.functions.join(", ")));
    }
    parts.push(format!("action: {}", r.action));
    if !r.require_acrs.is_empty() {
        parts.push(format!("require_acrs: [{}]", r.require_acrs.join(", ")));
    }
    if r.dry_run {
        parts.push("dry_run: true".into());
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests;
