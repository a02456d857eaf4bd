//! `airlock-control policy simulate`: the recorded statements of the log
//! judged again under a candidate policy set, and what would change. Reads
//! the log, never writes it.
//!
//! Every statement the log records as judged counts once: each executed
//! statement (single or in a group), each refused one, and each held one
//! whose end is not in the log (yet). The candidate's policies bind a
//! session as the proxy would bind it (the identity's groups, by object id
//! or name, on the session's connection; the strictest verdict wins), and a
//! session keeps its SQL-level prepared statements, so `EXECUTE` is judged
//! as what it runs.
//!
//! Limits, stated in the report: only what was recorded is judged (a
//! policy with `record: false` leaves only its gated and refused statements
//! in the log); catalog facts are not in the log, so statements are judged
//! offline, names taken for what they say ([`Catalog::Assumed`]).

use std::collections::{BTreeMap, HashMap};

use airlock_eventlog::proto::{self, event::Body};
use airlock_eventlog::{ReadFilter, StoredEvent};
use airlock_policy::{
    Action, Catalog, Policy, PolicySet, PreparedStatements, SessionNames, Verdict, VerdictCache,
};
use futures::StreamExt;
use serde::Serialize;
use time::OffsetDateTime;

/// Where the simulated range starts or ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Sequence(u64),
    Time(OffsetDateTime),
}

impl std::str::FromStr for Bound {
    type Err = String;

    fn from_str(s: &str) -> Result<Bound, String> {
        if let Ok(n) = s.parse::<u64>() {
            return Ok(Bound::Sequence(n));
        }
        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .map(Bound::Time)
            .map_err(|_| format!("`{s}` is neither a stream sequence nor an RFC 3339 time"))
    }
}

/// What a statement got, or would get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Allow,
    RequireApproval,
    Deny,
    /// No candidate policy binds the identity to the connection: the
    /// session itself would be refused at login.
    NoPolicy,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::RequireApproval => "require_approval",
            Outcome::Deny => "deny",
            Outcome::NoPolicy => "no_policy",
        }
    }

    fn of_recorded(v: Option<&proto::Verdict>) -> Outcome {
        match v.map(|v| v.action()) {
            Some(proto::verdict::Action::Allow) => Outcome::Allow,
            Some(proto::verdict::Action::RequireApproval) => Outcome::RequireApproval,
            _ => Outcome::Deny,
        }
    }

    fn of(v: &Verdict) -> Outcome {
        match v.action {
            Action::Allow => Outcome::Allow,
            Action::RequireApproval => Outcome::RequireApproval,
            Action::Deny => Outcome::Deny,
        }
    }
}

/// A changed statement, as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Example {
    pub sequence: u64,
    pub session_id: String,
    pub identity: String,
    pub connection: String,
    pub sql: String,
    pub from: Outcome,
    pub to: Outcome,
    /// The candidate rule that decided.
    pub rule: String,
}

/// Reviews asked for, by reviewer group.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Holds {
    pub recorded: u64,
    pub candidate: u64,
    /// The busiest hour's count.
    pub recorded_peak_hour: u64,
    pub candidate_peak_hour: u64,
    /// Per hour of the range simulated.
    pub recorded_per_hour: f64,
    pub candidate_per_hour: f64,
}

/// What `policy simulate` prints.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub events_read: u64,
    /// Events no trusted writer signed (with `signing:`): not simulated.
    pub untrusted: u64,
    pub first_sequence: u64,
    pub last_sequence: u64,
    pub statements: u64,
    /// Recorded outcome -> candidate outcome, for every statement.
    pub outcomes: BTreeMap<String, u64>,
    pub changed: u64,
    /// Statements allowed or held then that the candidate denies (or
    /// whose session it would not bind).
    pub now_denied: u64,
    /// Changed statements by identity (display name and object id).
    pub changed_by_identity: BTreeMap<String, u64>,
    /// Changed statements by the candidate rule that decided them.
    pub changed_by_rule: BTreeMap<String, u64>,
    pub changed_by_connection: BTreeMap<String, u64>,
    /// Up to a few changed statements per transition.
    pub examples: Vec<Example>,
    pub holds_by_group: BTreeMap<String, Holds>,
    /// Hours the simulated statements span (at least 1).
    pub hours: f64,
    pub limits: Vec<String>,
}

/// Examples kept per transition.
const EXAMPLES_PER_TRANSITION: usize = 5;

/// Longest SQL text an example shows.
const EXAMPLE_SQL_CHARS: usize = 300;

struct Session {
    identity: String,
    subject: String,
    display_name: String,
    connection: String,
    /// Indices into the candidate's policies.
    policies: Vec<usize>,
    prepared: PreparedStatements,
    /// What it did to how its names resolve.
    names: SessionNames,
}

/// The simulation, fed the log's events in order.
#[allow(missing_debug_implementations)]
pub struct Simulation {
    candidate: PolicySet,
    cache: VerdictCache,
    sessions: HashMap<String, Session>,
    from: Option<Bound>,
    to: Option<Bound>,
    identity: Option<String>,
    /// Requests held and not (yet) ended in the log: their statement is
    /// counted at the end if it never is.
    open_requests: HashMap<String, (u64, String, proto::Statement, Option<proto::Verdict>, i64)>,
    /// Per group, per hour (unix hour): (recorded, candidate).
    holds: BTreeMap<String, BTreeMap<i64, (u64, u64)>>,
    hours: Option<(i64, i64)>,
    report: Report,
    examples: HashMap<(Outcome, Outcome), usize>,
}

impl Simulation {
    pub fn new(
        candidate: PolicySet,
        from: Option<Bound>,
        to: Option<Bound>,
        identity: Option<String>,
    ) -> Self {
        Simulation {
            candidate,
            cache: VerdictCache::new(100_000),
            sessions: HashMap::new(),
            from,
            to,
            identity,
            open_requests: HashMap::new(),
            holds: BTreeMap::new(),
            hours: None,
            report: Report {
                limits: vec![
                    "only recorded statements are judged: sessions under `record: false` policies left only \
                     their gated and refused statements in the log"
                        .into(),
                    "judged offline: the database's catalog facts are not in the log, so function and table \
                     names are taken for what they say (shadowed built-ins, views and the role's search path \
                     are not seen)"
                        .into(),
                ],
                ..Report::default()
            },
            examples: HashMap::new(),
        }
    }

    /// Whether the simulation is past `to`: the caller may stop reading.
    pub fn done(&self, e: &StoredEvent) -> bool {
        match self.to {
            Some(Bound::Sequence(n)) => e.sequence > n,
            _ => false,
        }
    }

    fn in_range(&self, sequence: u64, at: OffsetDateTime) -> bool {
        let after = match self.from {
            Some(Bound::Sequence(n)) => sequence >= n,
            Some(Bound::Time(t)) => at >= t,
            None => true,
        };
        let before = match self.to {
            Some(Bound::Sequence(n)) => sequence <= n,
            Some(Bound::Time(t)) => at <= t,
            None => true,
        };
        after && before
    }

    /// One event of the log, in order.
    pub fn observe(&mut self, e: &StoredEvent) {
        self.report.events_read += 1;
        let session_id = &e.event.session_id;
        match &e.event.body {
            Some(Body::SessionOpened(o)) => {
                let identity = o.identity.clone().unwrap_or_default();
                let connection = o.connection.as_ref().map(|c| c.name.clone()).unwrap_or_default();
                let policies = self.bind(&identity, &connection);
                self.sessions.insert(
                    session_id.clone(),
                    Session {
                        identity: describe(&identity),
                        subject: identity.subject.clone(),
                        display_name: identity.display_name.clone(),
                        connection,
                        policies,
                        prepared: PreparedStatements::new(),
                        names: SessionNames::default(),
                    },
                );
            }
            Some(Body::SessionClosed(_)) => {
                self.sessions.remove(session_id);
            }
            Some(Body::StatementExecuted(_) | Body::StatementsExecuted(_)) => {
                for x in airlock_eventlog::executed_statements(&e.event) {
                    let s = x.statement;
                    let at = x.time.map(timestamp).unwrap_or(e.stored_at);
                    if !s.request_id.is_empty() {
                        self.open_requests.remove(&s.request_id);
                    }
                    let Some(statement) = &s.statement else { continue };
                    let ran = s.error_sqlstate.is_empty();
                    self.statement(e.sequence, at, session_id, statement, s.verdict.as_ref(), ran);
                }
            }
            Some(Body::StatementRefused(r)) => {
                if !r.request_id.is_empty() {
                    self.open_requests.remove(&r.request_id);
                }
                if let Some(statement) = &r.statement {
                    let at = e.event.time.as_ref().map(timestamp).unwrap_or(e.stored_at);
                    self.statement(e.sequence, at, session_id, statement, r.verdict.as_ref(), false);
                }
            }
            Some(Body::ApprovalRequested(a)) => {
                let at = e.event.time.as_ref().map(timestamp).unwrap_or(e.stored_at);
                if self.in_range(e.sequence, at) && self.identity_matches(session_id) {
                    for g in &a.reviewer_groups {
                        let name = if g.name.is_empty() { &g.id } else { &g.name };
                        self.hold(name, at, true);
                    }
                }
                if let Some(statement) = &a.statement {
                    self.open_requests.insert(
                        e.event.request_id.clone(),
                        (
                            e.sequence,
                            session_id.clone(),
                            statement.clone(),
                            a.verdict.clone(),
                            at.unix_timestamp(),
                        ),
                    );
                }
            }
            _ => {}
        }
    }

    /// The report, once every event has been observed.
    pub fn finish(mut self) -> Report {
        let mut open: Vec<_> = std::mem::take(&mut self.open_requests).into_values().collect();
        open.sort_by_key(|o| o.0);
        for (sequence, session, statement, verdict, at) in open {
            let at = OffsetDateTime::from_unix_timestamp(at).unwrap_or(OffsetDateTime::UNIX_EPOCH);
            self.statement(sequence, at, &session, &statement, verdict.as_ref(), false);
        }
        let (first, last) = self.hours.unwrap_or((0, 0));
        let hours = ((last - first + 1) as f64).max(1.0);
        self.report.hours = hours;
        for (group, by_hour) in &self.holds {
            let mut h = Holds::default();
            for (recorded, candidate) in by_hour.values() {
                h.recorded += recorded;
                h.candidate += candidate;
                h.recorded_peak_hour = h.recorded_peak_hour.max(*recorded);
                h.candidate_peak_hour = h.candidate_peak_hour.max(*candidate);
            }
            h.recorded_per_hour = h.recorded as f64 / hours;
            h.candidate_per_hour = h.candidate as f64 / hours;
            self.report.holds_by_group.insert(group.clone(), h);
        }
        self.report
    }

    fn identity_matches(&self, session_id: &str) -> bool {
        let Some(wanted) = &self.identity else { return true };
        self.sessions
            .get(session_id)
            .is_some_and(|s| s.subject == *wanted || s.display_name == *wanted)
    }

    /// The candidate's policies binding `identity` to `connection`.
    fn bind(&self, identity: &proto::Identity, connection: &str) -> Vec<usize> {
        let mut out = Vec::new();
        for g in &identity.groups {
            for key in [
                Some(g.id.as_str()),
                (!g.name.is_empty()).then_some(g.name.as_str()),
            ]
            .into_iter()
            .flatten()
            {
                for p in self.candidate.select(Some(connection), Some(key)) {
                    if let Some(i) = self
                        .candidate
                        .policies
                        .iter()
                        .position(|c| c.name == p.name && c.connection == p.connection)
                        && !out.contains(&i)
                    {
                        out.push(i);
                    }
                }
            }
        }
        out
    }

    fn hold(&mut self, group: &str, at: OffsetDateTime, recorded: bool) {
        let hour = at.unix_timestamp().div_euclid(3600);
        let slot = self
            .holds
            .entry(group.to_owned())
            .or_default()
            .entry(hour)
            .or_default();
        if recorded {
            slot.0 += 1;
        } else {
            slot.1 += 1;
        }
    }

    fn statement(
        &mut self,
        sequence: u64,
        at: OffsetDateTime,
        session_id: &str,
        statement: &proto::Statement,
        recorded: Option<&proto::Verdict>,
        ran: bool,
    ) {
        let in_range = self.in_range(sequence, at) && self.identity_matches(session_id);
        let Some(session) = self.sessions.get_mut(session_id) else {
            // Opened before the log begins (or by an untrusted writer).
            if in_range {
                self.report.statements += 1;
                *self.report.outcomes.entry("unknown session".into()).or_default() += 1;
            }
            return;
        };
        // Judged even out of range: prepared statements carry over.
        let mut strictest: Option<std::sync::Arc<Verdict>> = None;
        for &i in &session.policies {
            let policy: &Policy = &self.candidate.policies[i];
            let schema = self.candidate.default_schema(&policy.connection);
            let v = self.cache.evaluate_on(
                policy,
                &statement.text,
                schema,
                Catalog::Assumed,
                session.names,
                &session.prepared,
            );
            if strictest.as_ref().is_none_or(|s| v.action > s.action) {
                strictest = Some(v);
            }
        }
        if ran && let Some(v) = &strictest {
            session.prepared.apply(&v.prepared_changes);
            session.names = v.names_after(session.names);
        }
        if !in_range {
            return;
        }
        let (identity, connection) = (session.identity.clone(), session.connection.clone());
        let from = Outcome::of_recorded(recorded);
        let to = strictest.as_deref().map(Outcome::of).unwrap_or(Outcome::NoPolicy);
        let hour = at.unix_timestamp().div_euclid(3600);
        self.hours = Some(match self.hours {
            None => (hour, hour),
            Some((a, b)) => (a.min(hour), b.max(hour)),
        });
        let r = &mut self.report;
        r.statements += 1;
        r.first_sequence = if r.first_sequence == 0 {
            sequence
        } else {
            r.first_sequence.min(sequence)
        };
        r.last_sequence = r.last_sequence.max(sequence);
        *r.outcomes
            .entry(format!("{} -> {}", from.name(), to.name()))
            .or_default() += 1;
        if let Some(v) = &strictest
            && to == Outcome::RequireApproval
        {
            let groups: Vec<String> = v.reviewers.clone();
            for g in groups {
                self.hold(&g, at, false);
            }
        }
        if from == to {
            return;
        }
        let r = &mut self.report;
        r.changed += 1;
        if matches!(to, Outcome::Deny | Outcome::NoPolicy) && from != Outcome::Deny {
            r.now_denied += 1;
        }
        *r.changed_by_identity.entry(identity.clone()).or_default() += 1;
        *r.changed_by_connection.entry(connection.clone()).or_default() += 1;
        let rule = match &strictest {
            Some(v) => format!("{}: {}", v.policy, crate::policy_cmd::decided_by_text(v)),
            None => "no candidate policy binds this identity to the connection".into(),
        };
        *r.changed_by_rule.entry(rule.clone()).or_default() += 1;
        let shown = self.examples.entry((from, to)).or_default();
        if *shown < EXAMPLES_PER_TRANSITION {
            *shown += 1;
            self.report.examples.push(Example {
                sequence,
                session_id: session_id.to_owned(),
                identity,
                connection,
                sql: as_shown(&statement.text),
                from,
                to,
                rule,
            });
        }
    }
}

/// Statement text as a report shows it: control characters escaped (an
/// agent's text cannot forge or hide report lines), cut with a mark.
fn as_shown(sql: &str) -> String {
    let mut out: String = sql
        .chars()
        .take(EXAMPLE_SQL_CHARS)
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    if sql.chars().count() > EXAMPLE_SQL_CHARS {
        out.push_str(&format!(" … (cut; {} characters in all)", sql.chars().count()));
    }
    out
}

fn describe(identity: &proto::Identity) -> String {
    if identity.display_name.is_empty() {
        identity.subject.clone()
    } else {
        format!("{} ({})", identity.display_name, identity.subject)
    }
}

fn timestamp(t: &prost_types::Timestamp) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t.seconds).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Reads the whole log (the sessions opened before `from` are needed) and
/// simulates the range.
pub async fn run(log: &airlock_eventlog::EventLog, mut simulation: Simulation) -> anyhow::Result<Report> {
    let stream = log.read(0, ReadFilter::all()).await?;
    futures::pin_mut!(stream);
    let mut untrusted = 0;
    while let Some(item) = stream.next().await {
        let e = item?;
        if simulation.done(&e) {
            break;
        }
        if log.trust().is_some_and(|t| t.check(&e).is_err()) {
            untrusted += 1;
            continue;
        }
        simulation.observe(&e);
    }
    let mut report = simulation.finish();
    report.untrusted = untrusted;
    Ok(report)
}

/// The report for people.
pub fn text(r: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} statements simulated (events #{} to #{}, {} events read, {:.1} hours)",
        r.statements, r.first_sequence, r.last_sequence, r.events_read, r.hours
    );
    let _ = writeln!(
        out,
        "{} would change; {} would now be denied",
        r.changed, r.now_denied
    );
    let _ = writeln!(out, "\nrecorded -> candidate:");
    for (k, n) in &r.outcomes {
        let _ = writeln!(out, "  {k}: {n}");
    }
    let section = |out: &mut String, title: &str, map: &BTreeMap<String, u64>| {
        if map.is_empty() {
            return;
        }
        let _ = writeln!(out, "\nchanged by {title}:");
        let mut rows: Vec<_> = map.iter().collect();
        rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (k, n) in rows {
            let _ = writeln!(out, "  {n:>8}  {k}");
        }
    };
    section(&mut out, "identity", &r.changed_by_identity);
    section(&mut out, "rule", &r.changed_by_rule);
    section(&mut out, "connection", &r.changed_by_connection);
    if !r.holds_by_group.is_empty() {
        let _ = writeln!(out, "\nholds by reviewer group (recorded -> candidate):");
        for (g, h) in &r.holds_by_group {
            let _ = writeln!(
                out,
                "  {g}: {} -> {} in all, {:.1} -> {:.1} per hour, busiest hour {} -> {}",
                h.recorded,
                h.candidate,
                h.recorded_per_hour,
                h.candidate_per_hour,
                h.recorded_peak_hour,
                h.candidate_peak_hour
            );
        }
    }
    if !r.examples.is_empty() {
        let _ = writeln!(out, "\nexamples:");
        for x in &r.examples {
            let _ = writeln!(
                out,
                "  #{} {} on {}: {} -> {} ({})\n    {}",
                x.sequence,
                x.identity,
                x.connection,
                x.from.name(),
                x.to.name(),
                x.rule,
                x.sql
            );
        }
    }
    if r.untrusted > 0 {
        let _ = writeln!(
            out,
            "\n{} events not signed by a trusted writer were skipped",
            r.untrusted
        );
    }
    let _ = writeln!(out, "\nlimits:");
    for l in &r.limits {
        let _ = writeln!(out, "  * {l}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORDED: &str = "
identity:
  group_names:
    agents: id-agents
    dba: id-dba
    leads: id-leads
approvals:
  reviewers: [dba]
policies:
  - policy: agents
    connection: prod
    rules:
      - match: SELECT
        action: allow
      - match: DELETE
        tables: [public.*]
        action: allow
";

    fn set(rules_before: &str) -> PolicySet {
        let yaml = RECORDED.replace("    rules:\n", &format!("    rules:\n{rules_before}"));
        PolicySet::from_config_yaml(&yaml, "candidate.yaml").expect("policy")
    }

    struct Log {
        sequence: u64,
        events: Vec<StoredEvent>,
    }

    impl Log {
        fn push(&mut self, session: &str, request: &str, body: Body, at: i64) {
            self.sequence += 1;
            self.events.push(StoredEvent {
                sequence: self.sequence,
                subject: String::new(),
                stored_at: OffsetDateTime::from_unix_timestamp(at).expect("time"),
                raw: Default::default(),
                event: proto::Event {
                    session_id: session.into(),
                    request_id: request.into(),
                    time: Some(prost_types::Timestamp {
                        seconds: at,
                        nanos: 0,
                    }),
                    body: Some(body),
                    ..Default::default()
                },
            });
        }

        fn open(&mut self, session: &str, who: &str, group: &str, at: i64) {
            self.push(
                session,
                "",
                Body::SessionOpened(proto::SessionOpened {
                    identity: Some(proto::Identity {
                        subject: format!("oid-{who}"),
                        display_name: who.into(),
                        groups: vec![proto::Group {
                            id: format!("id-{group}"),
                            name: group.into(),
                        }],
                        ..Default::default()
                    }),
                    connection: Some(proto::ConnectionInfo {
                        name: "prod".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                at,
            );
        }

        fn ran(&mut self, session: &str, sql: &str, action: proto::verdict::Action, at: i64) {
            self.push(
                session,
                "",
                Body::StatementExecuted(proto::StatementExecuted {
                    statement: Some(proto::Statement {
                        text: sql.into(),
                        ..Default::default()
                    }),
                    verdict: Some(proto::Verdict {
                        action: action as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                at,
            );
        }
    }

    fn simulate(candidate: PolicySet, log: &Log, from: Option<Bound>, identity: Option<&str>) -> Report {
        let mut s = Simulation::new(candidate, from, None, identity.map(str::to_owned));
        for e in &log.events {
            s.observe(e);
        }
        s.finish()
    }

    use proto::verdict::Action as A;

    #[test]
    fn a_candidate_holding_one_more_table_changes_exactly_those_statements() {
        let mut log = Log {
            sequence: 0,
            events: Vec::new(),
        };
        log.open("s1", "agent-7", "agents", 0);
        log.ran("s1", "SELECT * FROM t1", A::Allow, 10);
        log.ran("s1", "DELETE FROM t7 WHERE id = 1", A::Allow, 20);
        log.ran("s1", "DELETE FROM t1 WHERE id = 1", A::Allow, 7300);
        // Held, then approved and run: its request and its execution.
        log.push(
            "s1",
            "r1",
            Body::ApprovalRequested(proto::ApprovalRequested {
                statement: Some(proto::Statement {
                    text: "DROP TABLE t1".into(),
                    ..Default::default()
                }),
                reviewer_groups: vec![proto::Group {
                    id: "id-dba".into(),
                    name: "dba".into(),
                }],
                ..Default::default()
            }),
            30,
        );
        log.push(
            "s1",
            "r1",
            Body::StatementExecuted(proto::StatementExecuted {
                statement: Some(proto::Statement {
                    text: "DROP TABLE t1".into(),
                    ..Default::default()
                }),
                verdict: Some(proto::Verdict {
                    action: A::RequireApproval as i32,
                    ..Default::default()
                }),
                request_id: "r1".into(),
                ..Default::default()
            }),
            40,
        );
        let same = simulate(set(""), &log, None, None);
        assert_eq!(same.statements, 4);
        assert_eq!(same.changed, 0, "{same:?}");
        assert_eq!(same.holds_by_group["dba"].recorded, 1);

        let stricter = set(
            "      - match: DELETE\n        tables: [public.t7]\n        action: require-approval\n        reviewers: [leads]\n",
        );
        let r = simulate(stricter, &log, None, None);
        assert_eq!(r.changed, 1, "{r:?}");
        assert_eq!(r.outcomes["allow -> require_approval"], 1);
        assert_eq!(r.examples[0].sql, "DELETE FROM t7 WHERE id = 1");
        assert_eq!(r.changed_by_identity["agent-7 (oid-agent-7)"], 1);
        assert_eq!(r.holds_by_group["leads"].candidate, 1);
        assert!(
            r.changed_by_rule
                .keys()
                .next()
                .is_some_and(|k| k.contains("rule 1")),
            "{r:?}"
        );
        // Two hours spanned: 0 s to 7300 s.
        assert_eq!(r.hours, 3.0);
        assert_eq!(r.now_denied, 0);
    }

    #[test]
    fn deny_no_policy_ranges_and_identities() {
        let mut log = Log {
            sequence: 0,
            events: Vec::new(),
        };
        log.open("s1", "agent-7", "agents", 0);
        log.open("s2", "intruder", "others", 0);
        log.ran("s1", "SELECT 1", A::Allow, 1);
        log.ran("s2", "SELECT 2", A::Allow, 2);
        log.ran("s1", "DELETE FROM t1", A::Allow, 3);
        let deny = set("      - match: DELETE\n        action: deny\n");
        let r = simulate(deny, &log, None, None);
        assert_eq!(r.outcomes["allow -> deny"], 1);
        assert_eq!(
            r.outcomes["allow -> no_policy"], 1,
            "s2's group has no candidate policy"
        );
        assert_eq!(r.now_denied, 2);
        // From the fourth event on (the first statement is out of range).
        let r = simulate(set(""), &log, Some(Bound::Sequence(4)), None);
        assert_eq!(r.statements, 2);
        let r = simulate(set(""), &log, None, Some("agent-7"));
        assert_eq!(r.statements, 2);
    }

    #[test]
    fn execute_is_judged_as_what_the_session_prepared() {
        let mut log = Log {
            sequence: 0,
            events: Vec::new(),
        };
        log.open("s1", "agent-7", "agents", 0);
        log.ran("s1", "PREPARE d AS DELETE FROM t7", A::Allow, 1);
        log.ran("s1", "EXECUTE d", A::Allow, 2);
        let stricter =
            set("      - match: DELETE\n        tables: [public.t7]\n        action: require-approval\n");
        let r = simulate(stricter, &log, Some(Bound::Sequence(3)), None);
        assert_eq!(r.statements, 1);
        assert_eq!(r.outcomes["allow -> require_approval"], 1, "{r:?}");
    }

    #[test]
    fn bounds_parse_as_sequences_or_times() {
        assert_eq!("42".parse::<Bound>(), Ok(Bound::Sequence(42)));
        assert!(matches!(
            "2026-12-01T00:00:00Z".parse::<Bound>(),
            Ok(Bound::Time(_))
        ));
        assert!("yesterday".parse::<Bound>().is_err());
    }
}
