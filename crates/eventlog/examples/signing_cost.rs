//! What signing and checking one event costs, for instruction counts under
//! callgrind (stable on a noisy machine, unlike time):
//!
//! ```text
//! cargo build --release -p airlock-eventlog --example signing_cost
//! valgrind --tool=callgrind target/release/examples/signing_cost seal 1000
//! valgrind --tool=callgrind target/release/examples/signing_cost check 1000
//! ```
//!
//! Run each with a count of 1 as well and subtract: what is left is the cost
//! of 999 events. The event is a proxy's group of three recorded reads, the
//! commonest event in a busy log.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Instant, SystemTime};

use airlock_eventlog::proto::{self, event::Body};
use airlock_eventlog::signing::{Role, Signer, Trust, TrustedKey, seal};
use airlock_eventlog::{StoredEvent, new_event};
use prost::Message;

fn event() -> proto::Event {
    let source = proto::Source {
        kind: proto::source::Kind::Proxy as i32,
        id: "proxy-1".into(),
        ..Default::default()
    };
    let statements = (0..3)
        .map(|i| proto::RecordedStatement {
            id: airlock_eventlog::EventId::generate().to_string(),
            time: Some(SystemTime::now().into()),
            statement: Some(proto::StatementExecuted {
                statement: Some(proto::Statement {
                    text: format!("SELECT abalance FROM pgbench_accounts WHERE aid = {i}"),
                    ..Default::default()
                }),
                command_tag: "SELECT 1".into(),
                rows: 1,
                ..Default::default()
            }),
        })
        .collect();
    let mut e = new_event(
        &source,
        Body::StatementsExecuted(proto::StatementsExecuted { statements }),
    );
    e.session_id = airlock_eventlog::SessionId::generate().to_string();
    e
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "check".into());
    let n: u64 = args.next().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let signer = Signer::from_key(ed25519_dalek::SigningKey::from_bytes(&[7; 32]));
    let subject = "airlock.v1.session.01JDZ00000000000000000000";
    let event = event();
    let t = Instant::now();
    match mode.as_str() {
        "seal" => {
            let mut bytes = 0usize;
            for _ in 0..n {
                bytes += seal(subject, &event, &signer).len();
            }
            println!("sealed {n} events ({bytes} bytes)");
        }
        "check" => {
            let trust = Trust::new(vec![
                TrustedKey::new(Role::Proxy, signer.verifying_key()).for_writer("proxy-1"),
            ]);
            let raw = seal(subject, &event, &signer);
            let stored = StoredEvent {
                sequence: 1,
                subject: subject.into(),
                stored_at: time::OffsetDateTime::UNIX_EPOCH,
                event: proto::Event::decode(raw.as_slice()).expect("decodes"),
                raw: raw.into(),
            };
            for _ in 0..n {
                trust.check(&stored).expect("trusted");
            }
            println!("checked {n} events");
        }
        other => {
            eprintln!("signing_cost: unknown mode {other} (seal or check)");
            std::process::exit(2);
        }
    }
    let per = t.elapsed().as_secs_f64() * 1e6 / n.max(1) as f64;
    println!("{per:.1} us per event (wall clock, noisy)");
}
