//! The log benchmark: appends from many concurrent recorded sessions, the
//! fold rate over the whole log, and a replica's start-up time with and
//! without a snapshot, against a real nats-server (JetStream, file storage).
//! Events are signed and checked as in production (a proxy key and a
//! control key), so the figures include Ed25519 on both sides.
//!
//! `cargo bench -p airlock-control --bench log` (1,000,000 events);
//! `AIRLOCK_BENCH_EVENTS=100000` for a quicker run. Prints one JSON object
//! on the last line of standard output for scripts.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/synth.rs"]
mod synth;

use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_control::live::Live;
use airlock_control::projection::Projection;
use airlock_control::{snapshot, verify};
use airlock_eventlog::signing::{Role, Signer, Trust, TrustedKey};
use airlock_eventlog::{EventLog, NatsSettings};
use airlock_testkit::NatsServer;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn start_replica(log: &EventLog, start: Projection) -> (f64, u64) {
    let t = Instant::now();
    let live = Live::spawn(log.clone(), start).await;
    assert!(
        live.wait_ready(Duration::from_secs(600)).await,
        "replica never caught up"
    );
    (t.elapsed().as_secs_f64(), live.sequence())
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let events = env_u64("AIRLOCK_BENCH_EVENTS", 1_000_000);
    let concurrency = env_u64("AIRLOCK_BENCH_CONCURRENCY", 256) as usize;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let nats = NatsServer::start();
        let plain = EventLog::connect(NatsSettings::new(nats.url())).await.expect("connect");
        plain.ensure_stream().await.expect("stream");
        // Signed as in production: the proxy's events with a proxy key, the
        // decisions with a control key, and every reader checks both.
        let proxy_key = Arc::new(Signer::generate());
        let control_key = Arc::new(Signer::generate());
        let trust = Arc::new(Trust::new(vec![
            TrustedKey::new(Role::Proxy, proxy_key.verifying_key()).for_writer("synth-proxy"),
            TrustedKey::new(Role::Control, control_key.verifying_key()),
        ]));
        let proxy = plain.clone().with_signer(proxy_key);
        let control = plain.clone().with_signer(control_key.clone());
        let log = plain.with_signer(control_key).with_trust(trust);

        let sessions = events.div_ceil(synth::EVENTS_PER_SESSION);
        println!("writing {sessions} sessions ({} events), {concurrency} at a time", sessions * synth::EVENTS_PER_SESSION);
        let t = Instant::now();
        synth::write_sessions_as(&proxy, &control, sessions, concurrency).await;
        let append_s = t.elapsed().as_secs_f64();
        let stored = log.last_sequence().await.expect("last");
        let append_rate = stored as f64 / append_s;
        println!("append: {stored} events in {append_s:.1} s = {append_rate:.0} events/s");

        let replay = verify::replay(&log).await.expect("replay");
        assert_eq!(replay.untrusted, 0, "every synthetic event is signed by a trusted writer");
        println!(
            "fold (read + decode + fold, from the start): {} events in {:.2} s = {:.0} events/s",
            replay.events, replay.seconds, replay.events_per_second
        );

        let (cold_s, seq) = start_replica(&log, Projection::new()).await;
        println!("start-up without a snapshot: {cold_s:.2} s to fold {seq} events");
        assert_eq!(seq, stored, "the replica folded every event");

        let live = Live::spawn(log.clone(), Projection::new()).await;
        assert!(live.wait_ready(Duration::from_secs(600)).await);
        let t = Instant::now();
        snapshot::save_if_due(&live, &log, 1).await.expect("snapshot").expect("due");
        let save_s = t.elapsed().as_secs_f64();
        let bytes = snapshot::encode(&live.read(Projection::clone)).len();
        println!("snapshot: {bytes} bytes stored in {save_s:.2} s");

        // Events after the snapshot: a replica folds these on top of it.
        let after = (sessions / 100).max(1);
        synth::write_sessions_as(&proxy, &control, after, concurrency).await;
        let t = Instant::now();
        let (start, used) = snapshot::load(&log).await;
        let loaded_at = start.sequence;
        used.expect("snapshot used");
        let load_s = t.elapsed().as_secs_f64();
        let (catch_s, seq2) = start_replica(&log, start).await;
        let warm_s = load_s + catch_s;
        println!(
            "start-up with a snapshot: {warm_s:.2} s (load {load_s:.2} s at sequence {loaded_at}, then fold {} events to {seq2})",
            seq2 - loaded_at
        );
        println!(
            "{}",
            serde_json::json!({
                "events": stored,
                "sessions": sessions,
                "concurrency": concurrency,
                "append_events_per_second": append_rate.round(),
                "fold_events_per_second": replay.events_per_second.round(),
                "startup_without_snapshot_seconds": cold_s,
                "snapshot_bytes": bytes,
                "snapshot_save_seconds": save_s,
                "startup_with_snapshot_seconds": warm_s,
                "events_after_snapshot": seq2 - loaded_at,
            })
        );
    });
}
