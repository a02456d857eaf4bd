//! The auditor's side and start-up, against a real nats-server: snapshots,
//! signed checkpoints, `verify` on an altered copy of the log, `export`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use airlock_control::checkpoint::{self, CheckpointSigner, Outcome};
use airlock_control::live::Live;
use airlock_control::projection::Projection;
use airlock_control::{snapshot, verify};
use airlock_eventlog::proto::{self, event::Body};
use airlock_eventlog::{EventLog, Expect, NatsSettings, ReadFilter, SnapshotMeta, StoredEvent};
use airlock_testkit::NatsServer;
use common::synth;
use ed25519_dalek::SigningKey;
use futures::StreamExt;

async fn log(nats: &NatsServer) -> EventLog {
    let log = EventLog::connect(NatsSettings::new(nats.url()))
        .await
        .expect("connect");
    log.ensure_stream().await.expect("stream");
    log
}

async fn live(log: &EventLog, start: Projection) -> Arc<Live> {
    let live = Live::spawn(log.clone(), start).await;
    assert!(
        live.wait_ready(Duration::from_secs(30)).await,
        "replica caught up"
    );
    live
}

async fn all(log: &EventLog) -> Vec<StoredEvent> {
    let stream = log.read(0, ReadFilter::all()).await.expect("read");
    futures::pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(e) = stream.next().await {
        out.push(e.expect("event"));
    }
    out
}

fn source(id: &str) -> proto::Source {
    proto::Source {
        kind: proto::source::Kind::Control as i32,
        id: id.into(),
        ..Default::default()
    }
}

fn signer(seed: u8) -> CheckpointSigner {
    CheckpointSigner::from_key(SigningKey::from_bytes(&[seed; 32]))
}

#[tokio::test]
async fn a_replica_started_from_a_snapshot_folds_only_the_rest_and_agrees_with_a_full_fold() {
    let nats = NatsServer::start();
    let log = log(&nats).await;
    synth::write_sessions(&log, 40, 8).await;
    let first = live(&log, Projection::new()).await;
    let written = snapshot::save_if_due(&first, &log, 1)
        .await
        .expect("save")
        .expect("a snapshot is due");
    assert_eq!(written, 40 * synth::EVENTS_PER_SESSION);
    // Not due again until enough new events.
    assert_eq!(snapshot::save_if_due(&first, &log, 1).await.expect("save"), None);

    synth::write_sessions(&log, 15, 4).await;
    let (loaded, meta) = snapshot::load(&log).await;
    let meta = meta.expect("snapshot used");
    assert_eq!(meta.sequence, written);
    assert_eq!(loaded.sequence, written, "the snapshot starts where it was taken");
    assert_eq!(loaded.sessions.len(), 40);
    let from_snapshot = live(&log, loaded).await;
    let from_scratch = live(&log, Projection::new()).await;
    let end = 55 * synth::EVENTS_PER_SESSION;
    for l in [&first, &from_snapshot, &from_scratch] {
        assert!(l.wait_for(end, Duration::from_secs(10)).await);
    }
    let a = from_snapshot.read(Projection::clone);
    let b = from_scratch.read(Projection::clone);
    assert_eq!(a.sessions.len(), 55);
    // Each synthetic session ran 5 statements: 1 alone, 3 recorded
    // together, and the approved DELETE.
    assert!(
        a.sessions.values().all(|s| s.summary.statements_executed == 5),
        "a group counts as the statements it holds"
    );
    assert_eq!(a, b, "snapshot + rest == the whole log folded");
    assert_eq!(first.read(Projection::clone), b);
    assert_eq!(
        snapshot::encode(&a),
        snapshot::encode(&b),
        "the same state encodes to the same bytes"
    );
}

/// Review finding: a snapshot's metadata is not signed on its own, so a
/// stored one claiming a sequence far past the log kept every replica from
/// saving snapshots (each thought the stored one newer than its state).
#[tokio::test]
async fn a_stored_snapshot_claiming_to_be_ahead_of_the_log_does_not_stop_saving() {
    let nats = NatsServer::start();
    let log = log(&nats).await;
    synth::write_sessions(&log, 2, 2).await;
    let live = live(&log, Projection::new()).await;
    let forged = SnapshotMeta {
        sequence: 1_000_000,
        event_id: "x".into(),
        format: snapshot::FORMAT.into(),
    };
    log.save_snapshot(snapshot::NAME, &forged, b"forged")
        .await
        .expect("save");
    let saved = snapshot::save_if_due(&live, &log, 1).await.expect("save_if_due");
    assert_eq!(saved, Some(live.sequence()), "a real snapshot replaces it");
    let (p, used) = snapshot::load(&log).await;
    used.expect("the saved snapshot loads");
    assert_eq!(p.sequence, live.sequence());
}

#[tokio::test]
async fn a_snapshot_that_does_not_belong_to_this_log_is_ignored() {
    let nats = NatsServer::start();
    let log = log(&nats).await;
    synth::write_sessions(&log, 3, 3).await;
    let state = live(&log, Projection::new()).await.read(Projection::clone);
    let bytes = snapshot::encode(&state);
    let cases = [
        (
            SnapshotMeta {
                sequence: state.sequence,
                event_id: "01J00000000000000000000000".into(),
                format: snapshot::FORMAT.into(),
            },
            "another log",
        ),
        (
            SnapshotMeta {
                sequence: 1_000_000,
                event_id: "x".into(),
                format: snapshot::FORMAT.into(),
            },
            "log ends at",
        ),
        (
            SnapshotMeta {
                sequence: state.sequence,
                event_id: log.get(state.sequence).await.expect("get").event.id,
                format: "airlock.control.projection.v0".into(),
            },
            "format",
        ),
    ];
    for (meta, why) in cases {
        log.save_snapshot(snapshot::NAME, &meta, &bytes)
            .await
            .expect("save");
        let (p, used) = snapshot::load(&log).await;
        let err = used.expect_err("must not be used");
        assert!(err.contains(why), "{why}: {err}");
        assert_eq!(p, Projection::new(), "falls back to an empty fold");
    }
    // Right metadata, damaged body: refused, not misread.
    let meta = SnapshotMeta {
        sequence: state.sequence,
        event_id: log.get(state.sequence).await.expect("get").event.id,
        format: snapshot::FORMAT.into(),
    };
    log.save_snapshot(snapshot::NAME, &meta, &[0xff; 64])
        .await
        .expect("save");
    let (_, used) = snapshot::load(&log).await;
    assert!(used.expect_err("garbage").contains("undecodable"));

    // Right metadata and body, but anyone with access to NATS can store a
    // snapshot: a replica that trusts writers starts only from one a
    // trusted control-plane key signed.
    use airlock_eventlog::signing::{Role, Signer, Trust, TrustedKey};
    let control = Signer::generate();
    let trusting = log
        .clone()
        .with_trust(std::sync::Arc::new(Trust::new(vec![TrustedKey::new(
            Role::Control,
            control.verifying_key(),
        )])));
    let unsigned = log.clone();
    let stranger = log.clone().with_signer(std::sync::Arc::new(Signer::generate()));
    for (writer, why) in [(&unsigned, "not signed"), (&stranger, "not trusted")] {
        writer
            .save_snapshot(snapshot::NAME, &meta, &bytes)
            .await
            .expect("save");
        let (p, used) = snapshot::load(&trusting).await;
        let err = used.expect_err("an untrusted snapshot is not used");
        assert!(err.contains(why), "{why}: {err}");
        assert_eq!(p, Projection::new(), "falls back to an empty fold");
    }
    let replica = log.clone().with_signer(std::sync::Arc::new(control));
    replica
        .save_snapshot(snapshot::NAME, &meta, &bytes)
        .await
        .expect("save");
    let (p, used) = snapshot::load(&trusting).await;
    used.expect("a snapshot the replica's key signed is used");
    assert_eq!(p, state);
}

#[tokio::test]
async fn replicas_racing_land_one_checkpoint_per_range_and_verify_checks_them() {
    let nats = NatsServer::start();
    let log = log(&nats).await;
    synth::write_sessions(&log, 10, 5).await;
    let key = signer(7);
    let (source_a, source_b) = (source("replica-a"), source("replica-b"));
    let (a, b) = tokio::join!(
        checkpoint::checkpoint_once(&log, &key, &source_a),
        checkpoint::checkpoint_once(&log, &key, &source_b),
    );
    let outcomes = [a.expect("a"), b.expect("b")];
    let appended: Vec<_> = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Appended { .. }))
        .collect();
    assert_eq!(appended.len(), 1, "exactly one checkpoint lands: {outcomes:?}");
    assert!(
        matches!(
            appended[0],
            Outcome::Appended {
                first: 1,
                last: 90,
                ..
            }
        ),
        "{outcomes:?}"
    );
    // Nothing new: no checkpoint over the checkpoint alone.
    assert_eq!(
        checkpoint::checkpoint_once(&log, &key, &source("replica-a"))
            .await
            .expect("again"),
        Outcome::NothingNew
    );
    synth::write_sessions(&log, 5, 5).await;
    let second = checkpoint::checkpoint_once(&log, &key, &source("replica-b"))
        .await
        .expect("second");
    assert!(
        matches!(
            second,
            Outcome::Appended {
                first: 91,
                last: 136,
                ..
            }
        ),
        "the next range starts after the last: {second:?}"
    );
    synth::write_sessions(&log, 1, 1).await;

    let report = verify::verify(&log, &[key.verifying_key()], None)
        .await
        .expect("verify");
    assert!(report.ok, "{:?}", report.broken);
    assert_eq!(report.checkpoints, 2);
    assert_eq!(report.covered_through, 136);
    assert_eq!(report.uncovered_events, 1 + synth::EVENTS_PER_SESSION);
    assert!(report.signatures_checked);

    let wrong = verify::verify(&log, &[signer(9).verifying_key()], None)
        .await
        .expect("verify");
    assert!(!wrong.ok);
    assert!(
        wrong.broken[0].contains("not among the keys given"),
        "{:?}",
        wrong.broken
    );
    let unchecked = verify::verify(&log, &[], None).await.expect("verify");
    assert!(unchecked.ok && !unchecked.signatures_checked);
}

/// Copies `events` into another server's log, passing each through `alter`.
async fn copy(
    events: &[StoredEvent],
    alter: impl Fn(&StoredEvent) -> proto::Event,
) -> (NatsServer, EventLog) {
    let nats = NatsServer::start();
    let copy = log(&nats).await;
    for e in events {
        copy.append(&e.subject, &alter(e), Expect::Anything)
            .await
            .expect("copy an event");
    }
    (nats, copy)
}

#[tokio::test]
async fn verify_names_the_event_altered_in_a_copy_of_the_log() {
    let nats = NatsServer::start();
    let log = log(&nats).await;
    synth::write_sessions(&log, 6, 3).await;
    let key = signer(3);
    checkpoint::checkpoint_once(&log, &key, &source("replica-a"))
        .await
        .expect("checkpoint");
    let events = all(&log).await;
    let (_keep, faithful) = copy(&events, |e| e.event.clone()).await;
    let report = verify::verify(&faithful, &[key.verifying_key()], None)
        .await
        .expect("verify");
    assert!(report.ok, "an unaltered copy verifies: {:?}", report.broken);

    // An approved DELETE's text changed in the middle of its chain: the
    // chain names it, and the checkpoint's digest no longer matches.
    let target = events
        .iter()
        .find(|e| matches!(&e.event.body, Some(Body::StatementExecuted(s)) if !s.request_id.is_empty()))
        .expect("an executed DELETE")
        .clone();
    let rewrite = |e: &StoredEvent| {
        let mut ev = e.event.clone();
        if e.sequence == target.sequence
            && let Some(Body::StatementExecuted(s)) = &mut ev.body
            && let Some(st) = &mut s.statement
        {
            st.text = "DELETE FROM orders".into();
        }
        ev
    };
    let (_keep2, altered) = copy(&events, rewrite).await;
    let report = verify::verify(&altered, &[key.verifying_key()], None)
        .await
        .expect("verify");
    assert!(!report.ok);
    assert!(
        report
            .broken
            .iter()
            .any(|b| b.contains(&target.event.id) && b.contains("was altered")),
        "the altered event is named: {:?}",
        report.broken
    );
    assert!(
        report.broken.iter().any(|b| b.contains("digest")),
        "{:?}",
        report.broken
    );

    // The last event of a chain has no successor: only the checkpoint sees it.
    let last_close = events
        .iter()
        .rev()
        .find(|e| matches!(e.event.body, Some(Body::SessionClosed(_))))
        .expect("a close")
        .clone();
    let rewrite = |e: &StoredEvent| {
        let mut ev = e.event.clone();
        if e.sequence == last_close.sequence {
            ev.source = Some(source("someone-else"));
        }
        ev
    };
    let (_keep3, altered) = copy(&events, rewrite).await;
    let report = verify::verify(&altered, &[key.verifying_key()], None)
        .await
        .expect("verify");
    assert!(!report.ok);
    assert_eq!(report.broken.len(), 1, "{:?}", report.broken);
    assert!(
        report.broken[0].contains("an event in that range was altered"),
        "{:?}",
        report.broken
    );
}
