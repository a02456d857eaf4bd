//! Signed checkpoints. Every so often a replica appends a `Checkpoint` to
//! `airlock.v1.checkpoint`: the digest (eventlog's `checkpoint` module) of
//! every event since the previous checkpoint, signed with the control
//! plane's Ed25519 key. Chains protect each event by its successor; a
//! checkpoint protects the ends of chains, and a range as a whole, against
//! a rewrite by anyone without the key.
//!
//! Exactly one replica's checkpoint lands for a range: each appends with
//! `Nats-Expected-Last-Subject-Sequence` set to the checkpoint it extends,
//! so a second one for the same range is a conflict and is dropped.

use std::path::Path;
use std::time::Duration;

use airlock_eventlog::checkpoint::{ALGORITHM, RangeDigest, signed_message};
use airlock_eventlog::proto::{self, event::Body};
use airlock_eventlog::{ChainHead, EventLog, Expect, ReadFilter, link, new_event, subjects};
use anyhow::bail;
use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use futures::StreamExt;

/// At most this many events per checkpoint, so one append never waits on
/// reading an unbounded range; a long backlog takes several rounds.
pub const MAX_RANGE: u64 = 1_000_000;

/// The control plane's signing key: the same Ed25519 key signs its events
/// and its checkpoints.
pub type CheckpointSigner = airlock_eventlog::signing::Signer;

pub use airlock_eventlog::signing::key_id;

/// Writes a new key pair: the private key (PKCS#8 PEM, mode 0600) and the
/// public key (SPKI PEM) that auditors pass to `verify` and fleets list in
/// `signing.trust`. Returns the key id.
pub fn generate_key(private: &Path, public: &Path) -> anyhow::Result<String> {
    let signer = CheckpointSigner::generate();
    signer.write(private, public)?;
    Ok(signer.key_id().to_owned())
}

/// Reads an Ed25519 public key (SPKI PEM).
pub fn load_public_key(path: &Path) -> anyhow::Result<VerifyingKey> {
    Ok(airlock_eventlog::signing::load_public_key(path)?)
}

/// What happened to one checkpoint attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Appended, covering `first..=last`.
    Appended { first: u64, last: u64, sequence: u64 },
    /// Nothing new since the last checkpoint.
    NothingNew,
    /// Another replica's checkpoint landed first.
    Lost,
}

/// Appends one checkpoint over the events since the last one, if any.
pub async fn checkpoint_once(
    log: &EventLog,
    signer: &CheckpointSigner,
    source: &proto::Source,
) -> anyhow::Result<Outcome> {
    let previous = log.last(subjects::CHECKPOINT).await?;
    let (first, head) = match &previous {
        Some(p) => match &p.event.body {
            Some(Body::Checkpoint(c)) => (c.last_sequence + 1, ChainHead::of(p)),
            _ => bail!(
                "event {} (seq {}) on {} is not a checkpoint",
                p.event.id,
                p.sequence,
                subjects::CHECKPOINT
            ),
        },
        None => (1, ChainHead::empty()),
    };
    let end = log.last_sequence().await?;
    // Nothing but the previous checkpoint itself since: nothing to vouch for.
    if end < first || previous.as_ref().is_some_and(|p| end <= p.sequence) {
        return Ok(Outcome::NothingNew);
    }
    let last = end.min(first + MAX_RANGE - 1);
    let mut digest = RangeDigest::new(first);
    let stream = log.read(first, ReadFilter::all()).await?;
    futures::pin_mut!(stream);
    while let Some(item) = stream.next().await {
        let stored = item?;
        if stored.sequence > last {
            break;
        }
        digest
            .add(&stored)
            .map_err(|e| anyhow::anyhow!("the log has a hole: {e}"))?;
        if stored.sequence == last {
            break;
        }
    }
    if digest.last() != last {
        bail!("read the log up to {} of {first}..={last}", digest.last());
    }
    let count = digest.count();
    let value = digest.finish();
    let signature = signer.sign(&signed_message(first, last, count, &value));
    let mut event = new_event(
        source,
        Body::Checkpoint(proto::Checkpoint {
            first_sequence: first,
            last_sequence: last,
            event_count: count,
            digest: value.to_vec(),
            algorithm: ALGORITHM.to_owned(),
            key_id: signer.key_id().to_owned(),
            signature: signature.to_bytes().to_vec(),
        }),
    );
    link(&mut event, &head);
    match log
        .append(subjects::CHECKPOINT, &event, Expect::LastSequence(head.sequence))
        .await
    {
        Ok(a) => Ok(Outcome::Appended {
            first,
            last,
            sequence: a.sequence,
        }),
        Err(e) if e.is_conflict() => Ok(Outcome::Lost),
        Err(e) => Err(e.into()),
    }
}

/// Appends a checkpoint every `interval` while there is something new.
pub async fn checkpoint_forever(
    log: EventLog,
    signer: CheckpointSigner,
    source: proto::Source,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match checkpoint_once(&log, &signer, &source).await {
            Ok(Outcome::Appended {
                first,
                last,
                sequence,
            }) => {
                tracing::info!(
                    first,
                    last,
                    sequence,
                    key_id = signer.key_id(),
                    "checkpoint appended"
                );
            }
            Ok(Outcome::NothingNew | Outcome::Lost) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "checkpoint failed; will retry"),
        }
    }
}

/// Checks one checkpoint's signature against the known keys.
pub fn check_signature(c: &proto::Checkpoint, keys: &[VerifyingKey]) -> Result<(), String> {
    if c.algorithm != ALGORITHM {
        return Err(format!(
            "signature algorithm {:?}, expected {ALGORITHM}",
            c.algorithm
        ));
    }
    let Some(key) = keys.iter().find(|k| key_id(k) == c.key_id) else {
        return Err(format!(
            "signed with key {}, which is not among the keys given",
            c.key_id
        ));
    };
    let signature =
        Signature::from_slice(&c.signature).map_err(|e| format!("signature is malformed: {e}"))?;
    key.verify(
        &signed_message(c.first_sequence, c.last_sequence, c.event_count, &c.digest),
        &signature,
    )
    .map_err(|_| format!("signature does not verify with key {}", c.key_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    #[test]
    fn a_signature_verifies_only_with_its_key_and_range() {
        let signer = CheckpointSigner::from_key(SigningKey::from_bytes(&[7u8; 32]));
        let other = SigningKey::from_bytes(&[8u8; 32]).verifying_key();
        let digest = [1u8; 32];
        let sig = signer.sign(&signed_message(1, 10, 10, &digest));
        let mut c = proto::Checkpoint {
            first_sequence: 1,
            last_sequence: 10,
            event_count: 10,
            digest: digest.to_vec(),
            algorithm: ALGORITHM.into(),
            key_id: signer.key_id().into(),
            signature: sig.to_bytes().to_vec(),
        };
        assert_eq!(check_signature(&c, &[other, signer.verifying_key()]), Ok(()));
        let err = check_signature(&c, &[other]).expect_err("unknown key");
        assert!(err.contains("not among the keys"), "{err}");
        c.last_sequence = 11;
        let err = check_signature(&c, &[signer.verifying_key()]).expect_err("moved range");
        assert!(err.contains("does not verify"), "{err}");
        c.last_sequence = 10;
        c.signature.truncate(10);
        assert!(check_signature(&c, &[signer.verifying_key()]).is_err());
    }

    #[test]
    fn generated_keys_load_back_and_are_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (private, public) = (dir.path().join("cp.key"), dir.path().join("cp.pub"));
        let id = generate_key(&private, &public).expect("generate");
        let signer = CheckpointSigner::load(&private).expect("load private");
        let key = load_public_key(&public).expect("load public");
        assert_eq!(signer.key_id(), id);
        assert_eq!(key_id(&key), id);
        assert!(format!("{signer:?}").contains(&id));
        assert!(
            generate_key(&private, &public).is_err(),
            "existing key overwritten"
        );
        let err = CheckpointSigner::load(&public).expect_err("public is not private");
        assert!(format!("{err:#}").contains("PKCS#8"), "{err:#}");
    }
}
