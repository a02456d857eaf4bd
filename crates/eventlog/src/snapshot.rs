//! Snapshot storage: a derived state's bytes kept next to the log, in a
//! JetStream object store, so a reader can start from them and fold only
//! what came after. A snapshot is never the source of truth: it records the
//! stream sequence and event id it covers, and [`EventLog::load_snapshot`]
//! returns it only if the log still holds that very event there. Anything
//! else (another log, a rebuilt stream, a damaged object) means "no
//! snapshot", and the reader folds from the start.
//!
//! Owns: where snapshots live and their metadata. Does not own: what the
//! bytes mean (the control plane encodes its projection).

use std::collections::HashMap;

use async_nats::jetstream::object_store;
use tokio::io::AsyncReadExt;

use crate::error::Error;
use crate::log::EventLog;
use crate::subjects;

/// What a snapshot covers, stored as the object's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Last stream sequence folded into the snapshot.
    pub sequence: u64,
    /// Id of the event at `sequence`, checked against the log on load.
    pub event_id: String,
    /// The encoder's format tag; a reader ignores formats it does not know.
    pub format: String,
}

const META_SEQUENCE: &str = "airlock-sequence";
const META_EVENT_ID: &str = "airlock-event-id";
const META_FORMAT: &str = "airlock-format";
const META_KEY_ID: &str = "airlock-key-id";
const META_SIGNATURE: &str = "airlock-signature";
const SIGNED_DOMAIN: &[u8] = b"airlock.v1.snapshot.signed\n";

/// What a snapshot's signature covers: its name, what it claims to cover,
/// and the SHA-256 of its bytes, each length-prefixed.
fn signed_message(name: &str, meta: &SnapshotMeta, bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    let mut m = SIGNED_DOMAIN.to_vec();
    for part in [name.as_bytes(), meta.event_id.as_bytes(), meta.format.as_bytes()] {
        m.extend_from_slice(&(part.len() as u32).to_be_bytes());
        m.extend_from_slice(part);
    }
    m.extend_from_slice(&meta.sequence.to_be_bytes());
    m.extend_from_slice(&sha2::Sha256::digest(bytes));
    m
}

impl SnapshotMeta {
    fn to_metadata(&self) -> HashMap<String, String> {
        HashMap::from([
            (META_SEQUENCE.to_owned(), self.sequence.to_string()),
            (META_EVENT_ID.to_owned(), self.event_id.clone()),
            (META_FORMAT.to_owned(), self.format.clone()),
        ])
    }

    fn from_metadata(m: &HashMap<String, String>) -> Option<SnapshotMeta> {
        Some(SnapshotMeta {
            sequence: m.get(META_SEQUENCE)?.parse().ok()?,
            event_id: m.get(META_EVENT_ID)?.clone(),
            format: m.get(META_FORMAT)?.clone(),
        })
    }
}

/// Why a stored snapshot was not used (for the log: start-up then folds
/// from the beginning, which is slower but always right).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotRejected {
    #[error("no snapshot stored")]
    Missing,
    #[error("snapshot metadata unreadable")]
    BadMetadata,
    #[error("snapshot is format {found}, this reader knows {expected}")]
    Format { found: String, expected: String },
    #[error("snapshot covers sequence {sequence}, but the log ends at {last}: it belongs to another log")]
    AheadOfLog { sequence: u64, last: u64 },
    #[error(
        "snapshot names event {expected} at sequence {sequence}, the log holds {found}: it belongs to another log"
    )]
    OtherLog {
        sequence: u64,
        expected: String,
        found: String,
    },
    #[error("reading the snapshot: {0}")]
    Unreadable(String),
    /// Snapshots are state a replica starts from: one no trusted
    /// control-plane key signed could say anything.
    #[error("the snapshot is not from a trusted control-plane replica: {0}")]
    Untrusted(crate::signing::Untrusted),
}

fn store_error(bucket: &str, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Stream {
        stream: bucket.to_owned(),
        detail: format!("{what}: {e}"),
    }
}

impl EventLog {
    fn snapshot_bucket(&self) -> String {
        subjects::snapshot_bucket(&self.settings().stream)
    }

    async fn snapshot_store(&self, create: bool) -> Result<Option<object_store::ObjectStore>, Error> {
        let bucket = self.snapshot_bucket();
        match self.jetstream().get_object_store(&bucket).await {
            Ok(s) => Ok(Some(s)),
            Err(_) if !create => Ok(None),
            Err(_) => self
                .jetstream()
                .create_object_store(object_store::Config {
                    bucket: bucket.clone(),
                    description: Some("Airlock: snapshots of state derived from the event log".to_owned()),
                    storage: async_nats::jetstream::stream::StorageType::File,
                    num_replicas: self.settings().replicas,
                    ..Default::default()
                })
                .await
                .map(Some)
                .map_err(|e| store_error(&bucket, "creating the snapshot bucket", e)),
        }
    }

    /// Stores `bytes` as snapshot `name`, replacing the previous one.
    pub async fn save_snapshot(&self, name: &str, meta: &SnapshotMeta, bytes: &[u8]) -> Result<(), Error> {
        let bucket = self.snapshot_bucket();
        let Some(store) = self.snapshot_store(true).await? else {
            return Err(store_error(&bucket, "snapshot bucket", "missing after creation"));
        };
        let mut metadata = meta.to_metadata();
        if let Some(signer) = self.signer() {
            let signature = signer.sign(&signed_message(name, meta, bytes));
            metadata.insert(META_KEY_ID.to_owned(), signer.key_id().to_owned());
            metadata.insert(META_SIGNATURE.to_owned(), hex::encode(signature.to_bytes()));
        }
        let object = object_store::ObjectMetadata {
            name: name.to_owned(),
            description: Some(format!("state up to stream sequence {}", meta.sequence)),
            metadata,
            ..Default::default()
        };
        let mut reader = bytes;
        store
            .put(object, &mut reader)
            .await
            .map_err(|e| store_error(&bucket, "storing a snapshot", e))?;
        Ok(())
    }

    /// What the stored snapshot `name` covers, without reading it.
    pub async fn snapshot_meta(&self, name: &str) -> Result<Option<SnapshotMeta>, Error> {
        let Some(store) = self.snapshot_store(false).await? else {
            return Ok(None);
        };
        match store.info(name).await {
            Ok(info) if !info.deleted => Ok(SnapshotMeta::from_metadata(&info.metadata)),
            _ => Ok(None),
        }
    }

    /// The snapshot `name` in `format`, if one is stored and belongs to this
    /// log (the event it names is at its sequence). The object store checks
    /// the bytes against their stored SHA-256 digest as they are read.
    pub async fn load_snapshot(
        &self,
        name: &str,
        format: &str,
    ) -> Result<(SnapshotMeta, Vec<u8>), SnapshotRejected> {
        let unreadable = |e: &dyn std::fmt::Display| SnapshotRejected::Unreadable(e.to_string());
        let store = self
            .snapshot_store(false)
            .await
            .map_err(|e| unreadable(&e))?
            .ok_or(SnapshotRejected::Missing)?;
        let info = match store.info(name).await {
            Ok(info) if !info.deleted => info,
            _ => return Err(SnapshotRejected::Missing),
        };
        let meta = SnapshotMeta::from_metadata(&info.metadata).ok_or(SnapshotRejected::BadMetadata)?;
        if meta.format != format {
            return Err(SnapshotRejected::Format {
                found: meta.format,
                expected: format.to_owned(),
            });
        }
        let last = self.last_sequence().await.map_err(|e| unreadable(&e))?;
        if meta.sequence > last {
            return Err(SnapshotRejected::AheadOfLog {
                sequence: meta.sequence,
                last,
            });
        }
        if meta.sequence > 0 {
            let at = self.get(meta.sequence).await.map_err(|e| unreadable(&e))?;
            if at.event.id != meta.event_id {
                return Err(SnapshotRejected::OtherLog {
                    sequence: meta.sequence,
                    expected: meta.event_id,
                    found: at.event.id,
                });
            }
        }
        let mut object = store.get(name).await.map_err(|e| unreadable(&e))?;
        let mut bytes = Vec::with_capacity(info.size);
        object.read_to_end(&mut bytes).await.map_err(|e| unreadable(&e))?;
        // A replacement may have landed between info and get: the object
        // read is whole and checked, but its metadata must be the one read.
        let after = object.info.metadata.clone();
        if SnapshotMeta::from_metadata(&after).as_ref() != Some(&meta) {
            return Err(SnapshotRejected::Unreadable(
                "the snapshot was replaced while it was read".to_owned(),
            ));
        }
        if let Some(trust) = self.trust() {
            let key_id = after.get(META_KEY_ID).map(String::as_str).unwrap_or("");
            let signature = after
                .get(META_SIGNATURE)
                .and_then(|s| hex::decode(s).ok())
                .ok_or(SnapshotRejected::Untrusted(crate::signing::Untrusted::Unsigned))?;
            trust
                .check_detached(
                    crate::signing::Role::Control,
                    key_id,
                    &signed_message(name, &meta, &bytes),
                    &signature,
                )
                .map_err(SnapshotRejected::Untrusted)?;
        }
        Ok((meta, bytes))
    }
}
