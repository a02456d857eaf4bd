//! Who may write what the control plane folds, against a real nats-server:
//! a replica that trusts its fleet's keys folds only events those keys
//! signed, in their place, each proxy only into what it owns.

use std::sync::Arc;
use std::time::Duration;

use airlock_control::live::Live;
use airlock_control::projection::Projection;
use airlock_eventlog::proto::{self, event::Body};
use airlock_eventlog::signing::{Role, Signer, Trust, TrustedKey};
use airlock_eventlog::{EventLog, NatsSettings, SessionId, new_event, subjects};
use airlock_testkit::NatsServer;

struct Fleet {
    control: Signer,
    proxy1: Signer,
    proxy2: Signer,
}

impl Fleet {
    fn new() -> Fleet {
        Fleet {
            control: Signer::generate(),
            proxy1: Signer::generate(),
            proxy2: Signer::generate(),
        }
    }

    fn trust(&self) -> Trust {
        Trust::new(vec![
            TrustedKey::new(Role::Control, self.control.verifying_key()),
            TrustedKey::new(Role::Proxy, self.proxy1.verifying_key()).for_writer("proxy-1"),
            TrustedKey::new(Role::Proxy, self.proxy2.verifying_key()).for_writer("proxy-2"),
        ])
    }
}

async fn log(nats: &NatsServer) -> EventLog {
    let log = EventLog::connect(NatsSettings::new(nats.url()))
        .await
        .expect("nats");
    log.ensure_stream().await.expect("stream");
    log
}

fn proxy(id: &str) -> proto::Source {
    proto::Source {
        kind: proto::source::Kind::Proxy as i32,
        id: id.into(),
        ..Default::default()
    }
}

fn on(session: &SessionId, writer: &str, body: Body) -> proto::Event {
    let mut e = new_event(&proxy(writer), body);
    e.session_id = session.to_string();
    e
}

/// The replica's view of `session`'s state once it has folded `sequence`.
async fn state_after(live: &Live, session: &SessionId, sequence: u64) -> i32 {
    assert!(live.wait_for(sequence, Duration::from_secs(10)).await, "folded");
    live.read(|s| {
        s.sessions
            .get(session.as_str())
            .map(|x| x.summary.state)
            .expect("session known")
    })
}

#[tokio::test]
async fn a_proxy_writes_only_into_its_own_sessions_and_a_replayed_event_is_not_folded_again() {
    let nats = NatsServer::start();
    let fleet = Fleet::new();
    let base = log(&nats).await;
    let trusting = base.clone().with_trust(Arc::new(fleet.trust()));
    let live = Live::spawn(trusting, Projection::new()).await;
    let as_proxy1 = base.clone().with_signer(Arc::new(fleet.proxy1.clone()));
    let as_proxy2 = base.clone().with_signer(Arc::new(fleet.proxy2.clone()));

    let session = SessionId::generate();
    let subject = subjects::session(&session);
    let opened = on(
        &session,
        "proxy-1",
        Body::SessionOpened(proto::SessionOpened {
            proxy_id: "proxy-1".into(),
            ..Default::default()
        }),
    );
    let (first, _) = as_proxy1.append_next(&subject, opened).await.expect("opened");
    let open = proto::SessionState::Open as i32;
    assert_eq!(state_after(&live, &session, first.sequence).await, open);

    // proxy-2's key, writing as proxy-2, closes proxy-1's session: refused.
    let closed = on(
        &session,
        "proxy-2",
        Body::SessionClosed(proto::SessionClosed::default()),
    );
    let (intruded, _) = as_proxy2.append_next(&subject, closed).await.expect("stored");
    assert_eq!(
        state_after(&live, &session, intruded.sequence).await,
        open,
        "another proxy's event changed nothing"
    );

    // proxy-1 closes it: folded, although its chain now runs through the
    // refused event.
    let closed = on(
        &session,
        "proxy-1",
        Body::SessionClosed(proto::SessionClosed::default()),
    );
    let (ended, _) = as_proxy1.append_next(&subject, closed).await.expect("closed");
    let closed_state = proto::SessionState::Closed as i32;
    assert_eq!(state_after(&live, &session, ended.sequence).await, closed_state);

    // The genuine SessionOpened, published again byte for byte (its
    // signature verifies): not folded again, the session stays closed.
    let raw = base.get(first.sequence).await.expect("get").raw;
    let js = async_nats::jetstream::new(base.client().clone());
    let replayed = js
        .publish(subject.clone(), raw)
        .await
        .expect("publish")
        .await
        .expect("stored");
    assert_eq!(
        state_after(&live, &session, replayed.sequence).await,
        closed_state,
        "a replayed event reopened the session"
    );
    // A message that is not an event at all does not stall the fold.
    js.publish(subject.clone(), vec![0xff, 0xff, 0xff].into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let other = SessionId::generate();
    let opened = on(
        &other,
        "proxy-2",
        Body::SessionOpened(proto::SessionOpened {
            proxy_id: "proxy-2".into(),
            ..Default::default()
        }),
    );
    let (after, _) = as_proxy2
        .append_next(&subjects::session(&other), opened)
        .await
        .expect("opened");
    assert_eq!(
        state_after(&live, &other, after.sequence).await,
        open,
        "folding went on"
    );

    let metrics = live.metrics().encode(&live);
    for reason in ["wrong_proxy", "replayed", "undecodable"] {
        assert!(
            metrics.contains(&format!(
                "airlock_control_events_rejected_total{{reason=\"{reason}\"}} 1"
            )),
            "{reason}: {metrics}"
        );
    }
}

#[tokio::test]
async fn the_unsigned_cut_may_only_name_history() {
    let nats = NatsServer::start();
    let base = log(&nats).await;
    let session = SessionId::generate();
    for _ in 0..3 {
        let e = on(
            &session,
            "proxy-1",
            Body::SessionClosed(proto::SessionClosed::default()),
        );
        base.append_next(&subjects::session(&session), e)
            .await
            .expect("append");
    }
    let with_cut = |cut| {
        base.clone()
            .with_trust(Arc::new(Trust::new(Vec::new()).with_unsigned_before(cut)))
    };
    // Up to the next sequence to be written: history only.
    for cut in [0, 1, 3, 4] {
        airlock_control::serve::check_unsigned_cut(&with_cut(cut))
            .await
            .unwrap_or_else(|e| panic!("cut {cut}: {e:#}"));
    }
    // Beyond it: unsigned events anyone appends from now on would pass.
    let err = airlock_control::serve::check_unsigned_cut(&with_cut(5))
        .await
        .expect_err("a cut past the end");
    assert!(format!("{err:#}").contains("at most 4"), "{err:#}");
}
