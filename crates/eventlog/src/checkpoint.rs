//! The digest a `Checkpoint` event carries: SHA-256 over every event of a
//! contiguous range of stream sequences, so one signature vouches for the
//! whole range, including the last event of each chain, which no successor
//! protects. Pure (no I/O); the control plane signs and `verify` checks.
//!
//! Construction (version 1), byte for byte, so anyone can recompute it:
//!
//! ```text
//! digest = SHA-256( "airlock.v1.checkpoint.range\n"
//!                   || for each event, in stream order, first..=last:
//!                        u64be(sequence) || SHA-256(subject) || SHA-256(stored bytes) )
//! ```
//!
//! The signature is Ed25519 over [`signed_message`]: the digest bound to its
//! range, so a valid signature cannot be moved to another range.

use sha2::{Digest, Sha256};

use crate::StoredEvent;

/// Signature algorithm named in `Checkpoint.algorithm`.
pub const ALGORITHM: &str = "ed25519";

const DOMAIN: &[u8] = b"airlock.v1.checkpoint.range\n";
const SIGNED_DOMAIN: &[u8] = b"airlock.v1.checkpoint.signed\n";

/// What the digest takes from one event: 72 bytes, so a verifier can keep
/// the events not yet covered by a checkpoint without keeping the events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    pub sequence: u64,
    subject: [u8; 32],
    raw: [u8; 32],
}

impl Leaf {
    pub fn of(stored: &StoredEvent) -> Leaf {
        Leaf {
            sequence: stored.sequence,
            subject: Sha256::digest(stored.subject.as_bytes()).into(),
            raw: Sha256::digest(&stored.raw).into(),
        }
    }
}

/// Accumulates the digest of a range as its events are read.
#[derive(Debug, Clone)]
pub struct RangeDigest {
    hasher: Sha256,
    first: u64,
    next: u64,
    count: u64,
}

/// An event out of place in a range: a sequence missing or repeated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("range digest: expected stream sequence {expected}, got {found}")]
pub struct RangeGap {
    pub expected: u64,
    pub found: u64,
}

impl RangeDigest {
    /// A digest of the range starting at stream sequence `first`.
    pub fn new(first: u64) -> RangeDigest {
        let mut hasher = Sha256::new();
        hasher.update(DOMAIN);
        RangeDigest {
            hasher,
            first,
            next: first,
            count: 0,
        }
    }

    /// Adds the next event; it must be the very next sequence.
    pub fn add(&mut self, stored: &StoredEvent) -> Result<(), RangeGap> {
        self.add_leaf(&Leaf::of(stored))
    }

    /// Adds the next event's leaf; it must be the very next sequence.
    pub fn add_leaf(&mut self, leaf: &Leaf) -> Result<(), RangeGap> {
        if leaf.sequence != self.next {
            return Err(RangeGap {
                expected: self.next,
                found: leaf.sequence,
            });
        }
        self.hasher.update(leaf.sequence.to_be_bytes());
        self.hasher.update(leaf.subject);
        self.hasher.update(leaf.raw);
        self.next += 1;
        self.count += 1;
        Ok(())
    }

    pub fn first(&self) -> u64 {
        self.first
    }

    /// Last sequence added (`first - 1` when empty).
    pub fn last(&self) -> u64 {
        self.next - 1
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The digest of what was added.
    pub fn finish(self) -> [u8; 32] {
        self.hasher.finalize().into()
    }
}

/// The bytes a checkpoint's signature covers.
pub fn signed_message(first: u64, last: u64, count: u64, digest: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNED_DOMAIN.len() + 24 + digest.len());
    m.extend_from_slice(SIGNED_DOMAIN);
    m.extend_from_slice(&first.to_be_bytes());
    m.extend_from_slice(&last.to_be_bytes());
    m.extend_from_slice(&count.to_be_bytes());
    m.extend_from_slice(digest);
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;
    use prost::Message;

    fn stored(sequence: u64, subject: &str, id: &str) -> StoredEvent {
        let event = proto::Event {
            id: id.into(),
            ..Default::default()
        };
        StoredEvent {
            sequence,
            subject: subject.into(),
            stored_at: time::OffsetDateTime::UNIX_EPOCH,
            raw: event.encode_to_vec().into(),
            event,
        }
    }

    fn digest(events: &[StoredEvent]) -> [u8; 32] {
        let mut d = RangeDigest::new(events[0].sequence);
        for e in events {
            d.add(e).expect("contiguous");
        }
        d.finish()
    }

    #[test]
    fn any_change_in_the_range_changes_the_digest() {
        let base = vec![stored(5, "a", "E1"), stored(6, "b", "E2"), stored(7, "a", "E3")];
        let d = digest(&base);
        let mut other = base.clone();
        other[1] = stored(6, "b", "E2x");
        assert_ne!(digest(&other), d, "altered bytes");
        let mut moved = base.clone();
        moved[1] = stored(6, "c", "E2");
        assert_ne!(digest(&moved), d, "moved to another subject");
        let mut swapped = base.clone();
        swapped.swap(0, 2);
        swapped[0].sequence = 5;
        swapped[2].sequence = 7;
        assert_ne!(digest(&swapped), d, "reordered");
        assert_eq!(digest(&base), d, "deterministic");
    }

    #[test]
    fn a_missing_or_repeated_sequence_is_a_gap() {
        let mut d = RangeDigest::new(1);
        d.add(&stored(1, "a", "E1")).expect("first");
        assert_eq!(
            d.add(&stored(3, "a", "E3")),
            Err(RangeGap {
                expected: 2,
                found: 3
            })
        );
        assert!(d.add(&stored(1, "a", "E1")).is_err());
        assert_eq!((d.first(), d.last(), d.count()), (1, 1, 1));
    }

    #[test]
    fn the_signed_message_binds_the_range() {
        let digest = [7u8; 32];
        assert_ne!(
            signed_message(1, 10, 10, &digest),
            signed_message(2, 11, 10, &digest)
        );
        assert_ne!(
            signed_message(1, 10, 10, &digest),
            signed_message(1, 10, 9, &digest)
        );
    }
}
