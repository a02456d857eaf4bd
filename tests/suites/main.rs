//! The drivers' own test suites, run against PostgreSQL directly and then
//! through Airlock, as an operator would judge compatibility: every test
//! that passes directly must pass through Airlock, except the by-design
//! differences written in `tests/suites/differences/<suite>.txt` (a test id
//! and why, a line each). A test that fails through Airlock is run again
//! (alone, or with the other differing tests) before it counts, so a test
//! that is merely flaky under load is reported, not blamed on the proxy.
//! A listed test that passes through Airlock fails the run (the list must
//! stay true), unless its reason starts with `timing:` (it depends on how
//! loaded the machine is).
//!
//! Airlock runs each suite under a record-only policy (every kind allowed,
//! unparsed text allowed, everything recorded), on a connection named
//! `postgres` because the suites connect to that database. After the run,
//! every statement PostgreSQL logged for the proxy's sessions must be in
//! the event log, and `airlock-control verify` must pass.
//!
//! The suites are installed by `./deploy/local/install-deps.sh --suites`:
//! asyncpg's, pg8000's and psycopg2's test folders from their source
//! distributions, pgx's and pgconn's from Debian's Go source packages,
//! and node-postgres's pg-cursor and pg-pool packages (which carry their
//! tests), pinned in `tests/suites/package-lock.json`. Run them with
//! `./tests/suites/run.sh` (about 40 minutes on two cores; not part of
//! `./tests/run.sh`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use airlock_e2e::{BinaryStack, StackBuilder};

/// One suite at a time: they time things, and share two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn suites_dir() -> PathBuf {
    repo().join(".airlock/tools/suites")
}

/// Where a suite's files are, or a failure that says how to get them.
fn installed(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run ./deploy/local/install-deps.sh --suites",
        path.display()
    );
    path
}

/// How a suite is run and read.
enum Runner {
    /// `python -m pytest` over `paths` in `dir`, with `options` (on a run
    /// again too) and `env` set; `-rA` names every outcome.
    Pytest {
        dir: PathBuf,
        paths: Vec<String>,
        options: Vec<String>,
        env: Vec<(&'static str, &'static str)>,
    },
    /// Mocha over each package's `test/*.js`, read from its JSON report.
    Mocha { packages: Vec<PathBuf> },
    /// Each `*-tests.js` under `dir/tests` run with node, as node-postgres's
    /// own Makefile runs its suite: a file is one test, passed when node
    /// exits 0 (its runner stops a file at its first failure). `setup`, a
    /// script of the suite's, runs once directly first. Modules resolve from
    /// `tests/suites/node_modules` too.
    NodeScripts {
        dir: PathBuf,
        tests: &'static str,
        setup: &'static str,
    },
    /// `go test -json` of `packages` from Debian's Go source packages (in
    /// GOPATH mode, as Debian builds them), read from its events: a test
    /// is `<package> <name>`. The connection is given as a URL in each of
    /// `env`.
    GoTest {
        packages: Vec<&'static str>,
        env: Vec<&'static str>,
    },
}

/// Where a suite connects.
struct Target {
    port: u16,
    password: String,
}

/// The outcome of one run: the ids of the tests that passed, and of those
/// that ran and did not.
#[derive(Debug, Default)]
struct Outcome {
    passed: BTreeSet<String>,
    failed: BTreeSet<String>,
}

impl Runner {
    /// Runs the suite (or only the tests `only` names) against `target`.
    fn run(&self, target: &Target, only: Option<&BTreeSet<String>>, log: &Path) -> Outcome {
        match self {
            Runner::Pytest {
                dir,
                paths,
                options,
                env,
            } => {
                let mut command = Command::new(installed(suites_dir().join("venv/bin/python")));
                command
                    .current_dir(dir)
                    .envs(env.iter().copied())
                    .args(["-m", "pytest", "-q", "-rA", "-o"])
                    // Its cache out of the suite's folder (psycopg's own
                    // plugin needs it).
                    .arg(format!(
                        "cache_dir={}",
                        repo().join("target/suites/pytest-cache").display()
                    ))
                    .args(options);
                match only {
                    Some(ids) => command.args(ids),
                    None => command.args(paths),
                };
                let out = run_logged(command, target, log);
                read_pytest(&out)
            }
            Runner::Mocha { packages } => {
                let mut outcome = Outcome::default();
                for package in packages {
                    let name = package.file_name().expect("name").to_string_lossy().into_owned();
                    let report = log.with_extension(format!("{name}.json"));
                    let _ = std::fs::remove_file(&report);
                    let mut command =
                        Command::new(installed(repo().join("tests/suites/node_modules/.bin/mocha")));
                    command
                        .current_dir(package)
                        .args([
                            "--exit",
                            "--timeout",
                            "20000",
                            "--reporter",
                            "json",
                            "--reporter-option",
                        ])
                        .arg(format!("output={}", report.display()));
                    if let Some(ids) = only {
                        let titles: Vec<String> = ids
                            .iter()
                            .filter_map(|id| id.strip_prefix(&format!("{name}: ")))
                            .map(regex_quote)
                            .collect();
                        if titles.is_empty() {
                            continue;
                        }
                        command.arg("--grep").arg(format!("^({})$", titles.join("|")));
                    }
                    let tests: Vec<PathBuf> = std::fs::read_dir(package.join("test"))
                        .expect("the package's tests")
                        .map(|e| e.expect("entry").path())
                        .filter(|p| p.extension().is_some_and(|e| e == "js"))
                        .collect();
                    command.args(tests);
                    run_logged(command, target, log);
                    let json = std::fs::read_to_string(&report)
                        .unwrap_or_else(|e| panic!("mocha wrote no report {}: {e}", report.display()));
                    read_mocha(&name, &json, &mut outcome);
                }
                outcome
            }
            Runner::NodeScripts { dir, tests, .. } => {
                let mut files = Vec::new();
                script_files(&dir.join(tests), &mut files);
                files.sort();
                let mut outcome = Outcome::default();
                for file in files {
                    let id = file
                        .strip_prefix(dir)
                        .expect("under the suite")
                        .to_string_lossy()
                        .into_owned();
                    if only.is_some_and(|ids| !ids.contains(&id)) {
                        continue;
                    }
                    let (passed, _) = run_logged_status(node_script(dir, &id), target, log);
                    if passed {
                        outcome.passed.insert(id);
                    } else {
                        outcome.failed.insert(id);
                    }
                }
                outcome
            }
            Runner::GoTest { packages, env } => {
                let mut outcome = Outcome::default();
                for package in packages {
                    let names: Vec<String> = match only {
                        Some(ids) => ids
                            .iter()
                            .filter_map(|id| id.strip_prefix(&format!("{package} ")))
                            .map(|t| regex_quote(t.split('/').next().unwrap_or(t)))
                            .collect(),
                        None => Vec::new(),
                    };
                    if only.is_some() && names.is_empty() {
                        continue;
                    }
                    let gopath = repo().join("target/suites/gopath");
                    let url = format!(
                        "postgres://postgres:{}@127.0.0.1:{}/postgres?sslmode=disable",
                        target.password, target.port
                    );
                    let mut command = Command::new(airlock_testkit::find_binary("go", "AIRLOCK_GO", &[]));
                    command
                        // One test at a time: pgconn's tests otherwise open
                        // dozens of sessions at once, and with these debug
                        // builds on two cores some logins waited over 5 s
                        // for their opening's record and were refused
                        // (57P03, failing closed); one test then panics on
                        // the refused result and stops its package.
                        .args(["test", "-json", "-count=1", "-p=1", "-parallel=1", "-timeout=20m"])
                        .env("GO111MODULE", "off")
                        .env("GOPATH", format!("{}:/usr/share/gocode", gopath.display()))
                        .env("GOCACHE", repo().join("target/suites/gocache"))
                        .env("GOFLAGS", "")
                        .envs(env.iter().map(|name| (*name, url.as_str())));
                    if !names.is_empty() {
                        command.arg("-run").arg(format!("^({})$", names.join("|")));
                    }
                    command.arg(package);
                    let out = run_logged(command, target, log);
                    read_go_test(package, &out, &mut outcome);
                }
                outcome
            }
        }
    }

    /// What the suite needs in the database before it runs (once, directly).
    fn set_up(&self, target: &Target, log: &Path) {
        if let Runner::NodeScripts { dir, setup, .. } = self {
            let (ok, out) = run_logged_status(node_script(dir, setup), target, log);
            assert!(ok, "the suite's set-up {setup} failed: {out}");
        }
    }
}

/// `node <script> postgres://` in `dir`: node-postgres's scripts read their
/// connection from the argument, and libpq's variables supply the rest.
fn node_script(dir: &Path, script: &str) -> Command {
    let mut command = Command::new("node");
    command
        .current_dir(dir)
        .env("NODE_PATH", installed(repo().join("tests/suites/node_modules")))
        .args([script, "postgres://"]);
    command
}

/// Every `*-tests.js` below `dir`.
fn script_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            script_files(&path, files);
        } else if path.to_string_lossy().ends_with("-tests.js") {
            files.push(path);
        }
    }
}

/// Runs `command` with libpq's environment pointing at `target`, its output
/// appended to `log`; returns the output.
fn run_logged(command: Command, target: &Target, log: &Path) -> String {
    run_logged_status(command, target, log).1
}

/// [`run_logged`], and whether the command succeeded.
fn run_logged_status(mut command: Command, target: &Target, log: &Path) -> (bool, String) {
    // `postgres`, unless the caller chose a database.
    if !command.get_envs().any(|(k, _)| k == "PGDATABASE") {
        command.env("PGDATABASE", "postgres");
    }
    let out = command
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", target.port.to_string())
        .env("PGUSER", "postgres")
        .env("PGPASSWORD", &target.password)
        .env("PGSSLMODE", "disable")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The command without its environment (which holds the token).
    let args: Vec<String> = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut all = std::fs::read_to_string(log).unwrap_or_default();
    all.push_str(&format!("$ {}\n{text}\n", args.join(" ")));
    std::fs::write(log, all).expect("write the suite's log");
    (out.status.success(), text)
}

/// pytest's `-rA` summary: `PASSED id`, `FAILED id - why`, `ERROR id - why`.
fn read_pytest(out: &str) -> Outcome {
    let mut outcome = Outcome::default();
    for line in out.lines() {
        let id = |rest: &str| rest.split(" - ").next().unwrap_or(rest).trim().to_owned();
        if let Some(rest) = line.strip_prefix("PASSED ") {
            outcome.passed.insert(id(rest));
        } else if let Some(rest) = line
            .strip_prefix("FAILED ")
            .or_else(|| line.strip_prefix("ERROR "))
        {
            outcome.failed.insert(id(rest));
        }
    }
    // A test whose teardown errs after it passed did not pass.
    let failed = outcome.failed.clone();
    outcome.passed.retain(|t| !failed.contains(t));
    outcome
}

/// Mocha's JSON report: `passes` and `failures`, named `<package>: <full title>`.
fn read_mocha(package: &str, json: &str, outcome: &mut Outcome) {
    let report: serde_json::Value = serde_json::from_str(json).expect("mocha's JSON report");
    let titles = |key: &str| -> Vec<String> {
        report[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|t| format!("{package}: {}", t["fullTitle"].as_str().unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default()
    };
    outcome.passed.extend(titles("passes"));
    outcome.failed.extend(titles("failures"));
}

/// `go test -json`'s events: each test's last `pass` or `fail`.
fn read_go_test(package: &str, out: &str, outcome: &mut Outcome) {
    for line in out.lines().filter(|l| l.starts_with('{')) {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(action), Some(test)) = (event["Action"].as_str(), event["Test"].as_str()) else {
            continue;
        };
        let id = format!("{package} {test}");
        match action {
            "pass" => {
                outcome.failed.remove(&id);
                outcome.passed.insert(id);
            }
            "fail" => {
                outcome.passed.remove(&id);
                outcome.failed.insert(id);
            }
            _ => {}
        }
    }
}

/// `text` as a regular expression matching itself (JavaScript's syntax).
fn regex_quote(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let special = "\\^$.|?*+()[]{}/".contains(c);
            special.then_some('\\').into_iter().chain(std::iter::once(c))
        })
        .collect()
}

/// The by-design differences of a suite: test id -> why.
fn differences(suite: &str) -> BTreeMap<String, String> {
    let path = repo().join(format!("tests/suites/differences/{suite}.txt"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (id, why) = l
                .split_once('\t')
                .unwrap_or_else(|| panic!("{}: `{l}` is not `test id<TAB>why`", path.display()));
            (id.trim().to_owned(), why.trim().to_owned())
        })
        .collect()
}

/// Every kind a policy judges, allowed: with `unparsed` and `default`
/// allowed too, a record-only policy (`docs/policy.md`), over a connection
/// for each database the suite uses, named as the database (the suites
/// pick a database by name, and through Airlock the name picks the
/// connection).
fn record_only(databases: &[&str]) -> String {
    let kinds: Vec<&str> = airlock_policy::config::judged_kinds().map(|k| k.name()).collect();
    let mut connections = String::from("connections:\n");
    let mut policies = String::from("policies:\n");
    for db in databases {
        connections += &format!(
            "  - name: {db}\n    upstream: postgres://postgres@127.0.0.1:{{PG}}/{db}\n    password_env: PROD_MAINT_PASSWORD\n"
        );
        policies += &format!(
            "  - policy: db-maintenance-agents
    connection: {db}
    unparsed: allow
    default: allow
    rules:
      - match: {}
        action: allow
    record: true
",
            kinds.join("|")
        );
    }
    connections + &policies
}

/// Runs `suite` directly and through Airlock and compares; then checks the
/// record of the run through Airlock.
fn compare(suite: &str, databases: &[&str], runner: Runner) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let stack = StackBuilder::new()
        .access(&record_only(databases))
        .start_binaries();
    // The suites' output stays after the stack is gone, for reading.
    let logs = repo().join("target/suites");
    std::fs::create_dir_all(&logs).expect("target/suites");
    let log = logs.join(format!("{suite}.log"));
    for run in ["direct", "airlock", "again"] {
        let _ = std::fs::remove_file(log.with_extension(format!("{run}.log")));
    }
    let direct = Target {
        port: stack.pg.port(),
        password: "unused-trust".into(),
    };
    let airlock = Target {
        port: stack.proxy_port,
        password: stack.agent_token_with(&["--ttl", "2h"]),
    };
    runner.set_up(&direct, &log.with_extension("direct.log"));
    let first = runner.run(&direct, None, &log.with_extension("direct.log"));
    assert!(
        first.passed.len() > 20,
        "{suite} passed only {} tests directly; see {}",
        first.passed.len(),
        log.with_extension("direct.log").display()
    );
    let pg_log_start = stack.pg.server_log().len();
    let through = runner.run(&airlock, None, &log.with_extension("airlock.log"));
    let recorded_at = stack.pg.server_log().len();
    let mut suspects: BTreeSet<String> = first.passed.difference(&through.passed).cloned().collect();
    if !suspects.is_empty() {
        let again = runner.run(&airlock, Some(&suspects), &log.with_extension("again.log"));
        let flaky: Vec<String> = suspects.intersection(&again.passed).cloned().collect();
        if !flaky.is_empty() {
            eprintln!("{suite}: passed through Airlock when run again (flaky): {flaky:#?}");
        }
        suspects.retain(|t| !again.passed.contains(t));
    }
    let expected = differences(suite);
    let unexplained: Vec<&String> = suspects.iter().filter(|t| !expected.contains_key(*t)).collect();
    // A difference of timing may pass on a quiet machine: it is not stale.
    let stale: Vec<&String> = expected
        .iter()
        .filter(|(t, why)| !suspects.contains(*t) && !why.starts_with("timing:"))
        .map(|(t, _)| t)
        .collect();
    let only_through: Vec<&String> = through.passed.difference(&first.passed).collect();
    eprintln!(
        "{suite}: {} passed directly, {} through Airlock; {} by-design differences, {} passed only through Airlock: {only_through:#?}",
        first.passed.len(),
        through.passed.len(),
        suspects.len() - unexplained.len(),
        only_through.len(),
    );
    assert!(
        unexplained.is_empty(),
        "{suite}: tests that pass directly fail through Airlock (their output: {}): {unexplained:#?}",
        log.with_extension("again.log").display()
    );
    assert!(
        stale.is_empty(),
        "{suite}: listed as differences but pass through Airlock (remove them from tests/suites/differences/{suite}.txt): {stale:#?}"
    );
    every_statement_recorded(&stack, suite, &[(pg_log_start, recorded_at)]);
}

/// Every statement PostgreSQL logged in the `spans` of its log (`from`,
/// `to`: runs through Airlock) is in the event log, and the log verifies.
fn every_statement_recorded(stack: &BinaryStack, suite: &str, spans: &[(usize, usize)]) {
    let log = stack.pg.server_log();
    let ran: BTreeSet<String> = spans
        .iter()
        .flat_map(|&(from, to)| logged_statements(&log[from..to]))
        .collect();
    assert!(
        ran.len() > 20,
        "{suite}: PostgreSQL logged {} statements",
        ran.len()
    );
    let recorded = airlock_e2e::eventually_blocking(
        "the proxy to record the suite's statements",
        std::time::Duration::from_secs(30),
        || {
            let recorded = recorded_statements(stack);
            // A text too large for one event is recorded cut, with its
            // whole length (the recorder's `fit`): it counts when the
            // logged text starts with the kept part and is that long.
            let cut: Vec<(&str, usize)> = recorded
                .iter()
                .filter_map(|t| {
                    let (kept, rest) = t.split_once(" … [cut by the recorder: ")?;
                    let total = rest.split_once(' ')?.0.parse().ok()?;
                    Some((kept, total))
                })
                .collect();
            let missing: Vec<&String> = ran
                .iter()
                .filter(|t| {
                    !recorded.contains(*t)
                        && !cut
                            .iter()
                            .any(|(kept, total)| t.len() == *total && t.starts_with(kept))
                })
                .collect();
            airlock_e2e::satisfies(missing.len(), |n| *n == 0).map_err(|_| {
                let sample: Vec<&&String> = missing.iter().take(10).collect();
                format!("{} statements not recorded, e.g. {sample:#?}", missing.len())
            })
        },
    );
    let _ = recorded;
    parse_coverage(suite, &ran);
    let out = stack.control_command(&["verify"]).output().expect("verify");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{suite}: verify: {report}");
    assert!(report.contains("\"ok\": true"), "{suite}: verify: {report}");
    let out = stack.control_command(&["replay"]).output().expect("replay");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{suite}: replay: {report}");
    assert!(report.contains("\"anomalies\": 0"), "{suite}: replay: {report}");
}

/// How many of the statements the suite ran the classifier reads (the rest
/// meet a policy's `unparsed` action), printed for docs/policy.md's figure,
/// with the kinds of text it cannot read.
fn parse_coverage(suite: &str, ran: &BTreeSet<String>) {
    let prepared = airlock_policy::PreparedStatements::default();
    let ctx = airlock_policy::ClassifyContext {
        default_schema: "public",
        prepared: &prepared,
        max_statement_bytes: airlock_policy::DEFAULT_MAX_STATEMENT_BYTES,
        catalog: airlock_policy::Catalog::Assumed,
        session: airlock_policy::SessionNames::default(),
    };
    let mut unread: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for text in ran {
        let c = airlock_policy::classify(text, &ctx);
        if c.unparsed.is_some() || c.oversized.is_some() {
            let lead: Vec<String> = text
                .split_whitespace()
                .take(2)
                .map(|w| w.to_ascii_uppercase())
                .collect();
            let entry = unread.entry(lead.join(" ")).or_insert((0, text.clone()));
            entry.0 += 1;
        }
    }
    let missed: usize = unread.values().map(|(n, _)| n).sum();
    eprintln!(
        "{suite}: parse coverage: {} of {} distinct statements classified ({:.1}%); not read, by leading words: {:#?}",
        ran.len() - missed,
        ran.len(),
        100.0 * (ran.len() - missed) as f64 / ran.len() as f64,
        unread
            .iter()
            .map(|(lead, (n, e))| format!("{lead}: {n}, e.g. {}", e.chars().take(120).collect::<String>()))
            .collect::<Vec<_>>()
    );
}

/// The texts PostgreSQL logged as run (`log_statement = all`): simple
/// queries (`statement: ...`) and executed portals (`execute <name>: ...`).
/// An entry starts at a line with the log prefix (`%m [%p] `) and runs to
/// the next one; its further lines start with a tab that is not the
/// statement's.
fn logged_statements(log: &str) -> BTreeSet<String> {
    let mut entries: Vec<String> = Vec::new();
    for line in log.split_inclusive('\n') {
        let starts_entry = line.len() > 24
            && line.as_bytes()[..4].iter().all(u8::is_ascii_digit)
            && line.as_bytes()[4] == b'-'
            && line.contains(" [");
        match entries.last_mut() {
            // PostgreSQL starts each further line of a message with a tab.
            Some(entry) if !starts_entry => entry.push_str(line.strip_prefix('\t').unwrap_or(line)),
            _ => entries.push(line.to_owned()),
        }
    }
    let mut texts = BTreeSet::new();
    for entry in entries {
        let Some((_, message)) = entry.split_once("] LOG:  ") else {
            continue;
        };
        let text = if let Some(text) = message.strip_prefix("statement: ") {
            text
        } else if let Some(rest) = message.strip_prefix("execute ") {
            match rest.split_once(": ") {
                Some((_, text)) => text,
                None => continue,
            }
        } else {
            continue;
        };
        let text = text.strip_suffix('\n').unwrap_or(text);
        // An empty query runs nothing (PostgreSQL answers EmptyQueryResponse);
        // a refusal's stand-in is the proxy's, not the suite's (the refused
        // statement is recorded as refused).
        if !text.trim().is_empty() && !text.contains("airlock: statement refused") {
            texts.insert(text.to_owned());
        }
    }
    texts
}

/// Every statement text in the event log (`airlock-control export`).
fn recorded_statements(stack: &BinaryStack) -> BTreeSet<String> {
    let out = stack
        .control_command(&["export", "--from", "1"])
        .output()
        .expect("export");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut texts = BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let event: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        collect_texts(&event, &mut texts);
    }
    texts
}

/// Every `statement.text` below `value`.
fn collect_texts(value: &serde_json::Value, texts: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                if key == "statement"
                    && let Some(text) = v["text"].as_str()
                {
                    texts.insert(text.to_owned());
                }
                collect_texts(v, texts);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_texts(v, texts)),
        _ => {}
    }
}

#[test]
fn asyncpg_suite() {
    let dir = installed(suites_dir().join("asyncpg"));
    // The suite makes and uses two databases of its own besides `postgres`.
    compare(
        "asyncpg",
        &["postgres", "asyncpg_intro_test", "testdb"],
        Runner::Pytest {
            dir,
            paths: vec!["tests".into()],
            options: Vec::new(),
            env: Vec::new(),
        },
    );
}

#[test]
fn pg8000_suite() {
    let dir = installed(suites_dir().join("pg8000"));
    // Its SCRAM tests make and use a database of their own.
    compare(
        "pg8000",
        &["postgres", "pg8000_scram_sha_256"],
        Runner::Pytest {
            dir,
            paths: vec!["test".into()],
            // The benchmarks need pytest-benchmark and time nothing here.
            options: vec!["--ignore-glob=*test_benchmarks.py".into()],
            env: Vec::new(),
        },
    );
}

#[test]
fn psycopg2_suite() {
    let dir = installed(suites_dir().join("psycopg2"));
    compare(
        "psycopg2",
        &["postgres"],
        Runner::Pytest {
            dir,
            paths: vec!["tests".into()],
            options: Vec::new(),
            // Its tests pick their database by this name.
            env: vec![("PSYCOPG2_TESTDB", "postgres")],
        },
    );
}

#[test]
fn node_postgres_suite() {
    let modules = installed(repo().join("tests/suites/node_modules"));
    compare(
        "node-postgres",
        &["postgres"],
        Runner::Mocha {
            packages: vec![modules.join("pg-cursor"), modules.join("pg-pool")],
        },
    );
}

/// Where the suites whose tests no package registry carries are checked
/// out: `$AIRLOCK_SUITES_CHECKOUTS/<name>`, at the release `tag`; a failure
/// that says how to get it otherwise. `./tests/suites/run.sh` runs these
/// (ignored by default) when `AIRLOCK_SUITES_CHECKOUTS` is set.
fn checkout(name: &str, tag: &str, repository: &str) -> PathBuf {
    let hint = format!(
        "set AIRLOCK_SUITES_CHECKOUTS to a folder holding {name}/, a checkout of {repository} at {tag} \
         (git clone --depth 1 --branch {tag} {repository} $AIRLOCK_SUITES_CHECKOUTS/{name})"
    );
    let root = std::env::var_os("AIRLOCK_SUITES_CHECKOUTS").unwrap_or_else(|| panic!("{hint}"));
    let dir = PathBuf::from(root).join(name);
    assert!(dir.is_dir(), "{} is missing: {hint}", dir.display());
    dir
}

#[test]
#[ignore = "needs a checkout of psycopg (AIRLOCK_SUITES_CHECKOUTS; see docs/drivers.md)"]
fn psycopg_suite() {
    let dir = checkout("psycopg", "3.2.13", "https://github.com/psycopg/psycopg");
    compare(
        "psycopg",
        &["postgres"],
        Runner::Pytest {
            dir,
            paths: vec!["tests".into()],
            // The DSN comes from libpq's variables; the slow tests time
            // things under load.
            options: vec!["--test-dsn=".into(), "-m".into(), "not slow".into()],
            env: Vec::new(),
        },
    );
}

#[test]
#[ignore = "needs a checkout of node-postgres (AIRLOCK_SUITES_CHECKOUTS; see docs/drivers.md)"]
fn node_postgres_core_suite() {
    let dir = checkout(
        "node-postgres",
        "pg@8.13.1",
        "https://github.com/brianc/node-postgres",
    );
    compare(
        "node-postgres-core",
        // One test ends a session with psql on template1.
        &["postgres", "template1"],
        Runner::NodeScripts {
            dir: dir.join("packages/pg"),
            tests: "test/integration",
            setup: "script/create-test-tables.js",
        },
    );
}

/// A tool run for [`tools_through_airlock`]: what it is, and its command
/// (libpq's variables point it at Airlock or at PostgreSQL).
fn tool(target: &Target, database: &str, log: &Path, what: &str, mut command: Command) -> String {
    command.env("PGDATABASE", database);
    let (ok, out) = run_logged_status(command, target, log);
    assert!(ok, "{what} failed through Airlock (see {}): {out}", log.display());
    out
}

/// What migration tools, pg_dump and psql send, through Airlock under a
/// record-only policy: Django's contrib migrations, a pg_dump of their
/// database (refused through Airlock, so taken directly), that dump
/// restored into another with psql, and psql's describe commands. Each must succeed, every statement PostgreSQL ran must
/// be recorded, and the parse coverage of what they sent is printed (the
/// figure in docs/policy.md).
#[test]
fn tools_through_airlock() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let stack = StackBuilder::new()
        // Django also opens `postgres` (to check the server).
        .access(&record_only(&["django", "restored", "postgres"]))
        .start_binaries();
    stack.pg.create_database("django");
    stack.pg.create_database("restored");
    let logs = repo().join("target/suites");
    std::fs::create_dir_all(&logs).expect("target/suites");
    let log = logs.join("tools.log");
    let _ = std::fs::remove_file(&log);
    let airlock = Target {
        port: stack.proxy_port,
        password: stack.agent_token_with(&["--ttl", "1h"]),
    };
    let from = stack.pg.server_log().len();

    let mut django = Command::new(installed(suites_dir().join("venv/bin/django-admin")));
    django
        .args(["migrate", "--no-input"])
        .env("DJANGO_SETTINGS_MODULE", "django_settings")
        .env("PYTHONPATH", repo().join("tests/suites/tools"));
    tool(&airlock, "django", &log, "django-admin migrate", django);

    // pg_dump (15.8 and later) sets up its session with `set_config(name,
    // ...) FROM pg_settings WHERE name = '...'`, whose setting Airlock cannot
    // know (docs/drivers.md): refused through Airlock, so an operator dumps
    // directly, and the dump is restored through Airlock.
    let dump = logs.join("tools-django.sql");
    let pg_dump = || {
        let mut c = Command::new(airlock_testkit::find_binary("pg_dump", "AIRLOCK_PG_DUMP", &[]));
        c.args(["--no-owner", "-f"])
            .arg(&dump)
            .env("PGDATABASE", "django");
        c
    };
    let (ok, out) = run_logged_status(pg_dump(), &airlock, &log);
    assert!(
        !ok && out.contains("refused by Airlock") && out.contains("pg_settings"),
        "pg_dump through Airlock: {out}"
    );
    let direct = Target {
        port: stack.pg.port(),
        password: "unused-trust".into(),
    };
    let dumping = stack.pg.server_log().len();
    let (ok, out) = run_logged_status(pg_dump(), &direct, &log);
    assert!(ok, "pg_dump directly: {out}");
    let dumped = stack.pg.server_log().len();

    let mut restore = Command::new("psql");
    restore
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(&dump);
    tool(&airlock, "restored", &log, "psql -f (the dump)", restore);

    let mut describe = Command::new("psql");
    describe.args(["-X", "-v", "ON_ERROR_STOP=1"]);
    for meta in [
        "\\l",
        "\\dn+",
        "\\dt+",
        "\\d auth_user",
        "\\d+ django_session",
        "\\di",
        "\\ds",
        "\\dv",
        "\\df",
        "\\dT",
        "\\du",
        "\\dp",
        "\\dx",
        "\\dconfig",
    ] {
        describe.args(["-c", meta]);
    }
    let out = tool(&airlock, "restored", &log, "psql's describe commands", describe);
    assert!(out.contains("auth_user"), "{out}");

    let to = stack.pg.server_log().len();
    // The restore made what the migrations made (asked directly).
    let tables =
        "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'";
    let made = stack.pg.psql("django", tables);
    assert!(
        made.contains("auth_user") && made.contains("django_session"),
        "{made}"
    );
    assert_eq!(stack.pg.psql("restored", tables), made);
    every_statement_recorded(&stack, "tools", &[(from, dumping), (dumped, to)]);
}

#[test]
fn pgx_suite() {
    compare(
        "pgx",
        &["postgres"],
        Runner::GoTest {
            // pgconn is pgx's protocol layer; both carry their tests in
            // Debian's source packages (install-deps.sh --suites).
            packages: vec!["github.com/jackc/pgconn", "github.com/jackc/pgx/v4"],
            env: vec![
                "PGX_TEST_DATABASE",
                "PGX_TEST_CONN_STRING",
                "PGX_TEST_TCP_CONN_STRING",
            ],
        },
    );
}
