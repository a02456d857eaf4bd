//! Who wrote an event, provably. Every writer (each proxy, each control-plane
//! replica) signs each event it appends with its own Ed25519 key; readers
//! that act on events (the control plane's fold, a proxy confirming a grant,
//! `verify`) accept an event only if a key they trust signed it and that
//! key's role may write that kind of event. Hash chains say the log was not
//! altered after the fact; signatures say who put each event there, so a
//! client that can merely publish on NATS cannot write a grant.
//!
//! Construction (version 1), so anyone can check it without this crate:
//!
//! ```text
//! unsigned = protobuf encoding of the Event without field 9 (`signature`)
//! message  = "airlock.v1.event.signed\n" || u32be(len(subject)) || subject || unsigned
//! stored   = unsigned || encoding of field 9 { algorithm, key_id, Ed25519(message) }
//! ```
//!
//! The signature field is always the last bytes stored, so a reader takes
//! the signed bytes as they are stored (no re-encoding, which would drop
//! fields a newer writer added).
//!
//! Which role writes what ([`writer_role`]): proxies write what happens in
//! a session (opened, statements, requests, cancellations, closed, the
//! policy they enforce); the control plane writes what reviewers and time
//! decide (votes, grants, denials, expiries, kill orders, checkpoints).
//! The control plane also ends what a proxy that is gone left open
//! ([`may_write`]): a request's cancellation and a session's close, with
//! the causes that say so and only those.

use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::StoredEvent;
use crate::proto::{self, event::Body};

/// Signature algorithm named in `EventSignature.algorithm`.
pub const ALGORITHM: &str = "ed25519";

const DOMAIN: &[u8] = b"airlock.v1.event.signed\n";

/// Who may write an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A data-plane proxy: the facts of a session.
    Proxy,
    /// A control-plane replica: decisions.
    Control,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Proxy => "proxy",
            Role::Control => "control",
        })
    }
}

/// The role that writes events with `body`.
pub fn writer_role(body: &Body) -> Role {
    match body {
        Body::SessionOpened(_)
        | Body::StatementExecuted(_)
        | Body::StatementsExecuted(_)
        | Body::StatementRefused(_)
        | Body::ApprovalRequested(_)
        | Body::ApprovalCancelled(_)
        | Body::SessionClosed(_)
        | Body::PolicyLoaded(_)
        | Body::GrantUsed(_) => Role::Proxy,
        Body::ApprovalVoted(_)
        | Body::ApprovalGranted(_)
        | Body::ApprovalDenied(_)
        | Body::ApprovalExpired(_)
        | Body::SessionKillRequested(_)
        | Body::Checkpoint(_)
        | Body::GrantIssued(_)
        | Body::GrantRevoked(_)
        | Body::GrantExpired(_)
        | Body::SlackLinked(_)
        | Body::SlackUnlinked(_) => Role::Control,
    }
}

/// Whether a key of `role` may write `body`. Each kind has one writer
/// ([`writer_role`]), with one exception: the control plane ends what a
/// proxy that is gone left open, a request (`ApprovalCancelled`, cause
/// `SESSION_ENDED` or `PROXY_LOST`) or a session (`SessionClosed`, cause
/// `PROXY_LOST`). A proxy never writes `PROXY_LOST`: it would be claiming
/// the control plane's judgement.
pub fn may_write(role: Role, body: &Body) -> bool {
    use proto::approval_cancelled::Cause as Cancel;
    use proto::session_closed::Cause as Close;
    let proxy_lost = match body {
        Body::ApprovalCancelled(c) => c.cause == Cancel::ProxyLost as i32,
        Body::SessionClosed(c) => c.cause == Close::ProxyLost as i32,
        _ => false,
    };
    match role {
        Role::Proxy => writer_role(body) == Role::Proxy && !proxy_lost,
        Role::Control => match body {
            Body::ApprovalCancelled(c) => proxy_lost || c.cause == Cancel::SessionEnded as i32,
            Body::SessionClosed(_) => proxy_lost,
            _ => writer_role(body) == Role::Control,
        },
    }
}

/// Short id of a public key: the first 8 bytes of SHA-256 over its 32 raw
/// bytes, in hex. Names the key in signatures (so keys can be rotated).
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// A key file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: not an Ed25519 {what} in PEM ({detail}); create a key pair with \
         `airlock-control signing-key --private F --public F.pub`"
    )]
    NotAKey {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    #[error("creating {path} (an existing key is never overwritten): {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding a new key: {0}")]
    Encode(String),
}

/// A writer's private key (PKCS#8 PEM, as `openssl genpkey -algorithm
/// ed25519` or `airlock-control signing-key` write).
#[derive(Clone)]
pub struct Signer {
    key: SigningKey,
    key_id: String,
}

impl std::fmt::Debug for Signer {
    // Never the key itself.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Signer {
    pub fn load(path: &Path) -> Result<Signer, KeyError> {
        let pem = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| KeyError::NotAKey {
            path: path.to_path_buf(),
            what: "private key (PKCS#8)",
            detail: e.to_string(),
        })?;
        Ok(Signer::from_key(key))
    }

    pub fn from_key(key: SigningKey) -> Signer {
        let key_id = key_id(&key.verifying_key());
        Signer { key, key_id }
    }

    /// A fresh random key (tests and key generation).
    pub fn generate() -> Signer {
        Signer::from_key(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Ed25519 over `message`.
    pub fn sign(&self, message: &[u8]) -> Signature {
        self.key.sign(message)
    }

    /// Writes this key pair: the private key (PKCS#8 PEM, mode 0600) and the
    /// public key (SPKI PEM) that readers list in `signing.trust`. Never
    /// overwrites an existing file.
    pub fn write(&self, private: &Path, public: &Path) -> Result<(), KeyError> {
        let private_pem = self
            .key
            .to_pkcs8_pem(Default::default())
            .map_err(|e| KeyError::Encode(e.to_string()))?;
        let public_pem = self
            .verifying_key()
            .to_public_key_pem(Default::default())
            .map_err(|e| KeyError::Encode(e.to_string()))?;
        write_new(private, private_pem.as_bytes(), 0o600)?;
        write_new(public, public_pem.as_bytes(), 0o644)
    }
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let err = |source| KeyError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = options.open(path).map_err(err)?;
    f.write_all(bytes).map_err(err)
}

/// Reads an Ed25519 public key (SPKI PEM).
pub fn load_public_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let pem = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    VerifyingKey::from_public_key_pem(&pem).map_err(|e| KeyError::NotAKey {
        path: path.to_path_buf(),
        what: "public key",
        detail: e.to_string(),
    })
}

fn message(subject: &str, unsigned: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + 4 + subject.len() + unsigned.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(&(subject.len() as u32).to_be_bytes());
    m.extend_from_slice(subject.as_bytes());
    m.extend_from_slice(unsigned);
    m
}

/// The bytes to store for `event` on `subject`, signed by `signer`: the
/// event's encoding (any signature it carried dropped) followed by the
/// signature field.
pub fn seal(subject: &str, event: &proto::Event, signer: &Signer) -> Vec<u8> {
    let mut unsigned = if event.signature.is_some() {
        proto::Event {
            signature: None,
            ..event.clone()
        }
        .encode_to_vec()
    } else {
        event.encode_to_vec()
    };
    let signature = signer.sign(&message(subject, &unsigned));
    let field = signature_field(proto::EventSignature {
        algorithm: ALGORITHM.to_owned(),
        key_id: signer.key_id().to_owned(),
        signature: signature.to_bytes().to_vec(),
    });
    unsigned.extend_from_slice(&field);
    unsigned
}

/// The encoding of field 9 alone: an event with only its signature set.
fn signature_field(signature: proto::EventSignature) -> Vec<u8> {
    proto::Event {
        signature: Some(signature),
        ..Default::default()
    }
    .encode_to_vec()
}

/// A public key a reader trusts, and what it may write.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub role: Role,
    pub key: VerifyingKey,
    pub key_id: String,
    /// When set, events signed with this key must name this writer in
    /// `source.id` (a proxy's key cannot write as another proxy).
    pub writer: Option<String>,
}

impl TrustedKey {
    pub fn new(role: Role, key: VerifyingKey) -> TrustedKey {
        TrustedKey {
            role,
            key_id: key_id(&key),
            key,
            writer: None,
        }
    }

    pub fn for_writer(mut self, writer: impl Into<String>) -> TrustedKey {
        self.writer = Some(writer.into());
        self
    }
}

/// The keys a reader trusts, and how it treats events written before the
/// log was signed.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    keys: Vec<TrustedKey>,
    /// Unsigned events at stream sequences below this are history from
    /// before signing was turned on, accepted and counted as unsigned. An
    /// unsigned event at or above it is refused. (The stream denies deletes
    /// and purges, so nothing can be slipped in below it later.)
    unsigned_before: u64,
}

/// How an accepted event was vouched for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vouched {
    /// Signed by a trusted key of `role`.
    Signed { role: Role, key_id: String },
    /// Unsigned history from before `signing.unsigned_before`.
    UnsignedHistory,
}

/// Why an event is not accepted as written by whom it claims.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Untrusted {
    #[error("it is not signed")]
    Unsigned,
    #[error("its signature is malformed: {0}")]
    Malformed(String),
    #[error("it is signed with key {0}, which is not trusted")]
    UnknownKey(String),
    #[error("its signature does not verify with key {0}: the event was altered or the signature forged")]
    BadSignature(String),
    #[error("it is an event of kind {kind}, which a {role} key may not write (key {key_id})")]
    WrongRole {
        kind: &'static str,
        role: Role,
        key_id: String,
    },
    #[error("it names writer {claimed:?}, but key {key_id} belongs to {writer:?}")]
    WrongWriter {
        claimed: String,
        writer: String,
        key_id: String,
    },
    #[error("it has no body")]
    NoBody,
}

impl Untrusted {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Untrusted::Unsigned => "unsigned",
            Untrusted::Malformed(_) => "malformed",
            Untrusted::UnknownKey(_) => "unknown_key",
            Untrusted::BadSignature(_) => "bad_signature",
            Untrusted::WrongRole { .. } => "wrong_role",
            Untrusted::WrongWriter { .. } => "wrong_writer",
            Untrusted::NoBody => "no_body",
        }
    }
}

impl Trust {
    pub fn new(keys: Vec<TrustedKey>) -> Trust {
        Trust {
            keys,
            unsigned_before: 0,
        }
    }

    /// Accepts unsigned events below stream sequence `sequence`.
    pub fn with_unsigned_before(mut self, sequence: u64) -> Trust {
        self.unsigned_before = sequence;
        self
    }

    pub fn keys(&self) -> &[TrustedKey] {
        &self.keys
    }

    pub fn unsigned_before(&self) -> u64 {
        self.unsigned_before
    }

    /// Whether any trusted key may write as `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.keys.iter().any(|k| k.role == role)
    }

    /// Checks that `stored` was written by a trusted key whose role may write
    /// its kind of event.
    pub fn check(&self, stored: &StoredEvent) -> Result<Vouched, Untrusted> {
        let body = stored.event.body.as_ref().ok_or(Untrusted::NoBody)?;
        let Some((signature, unsigned)) = signed_parts(stored)? else {
            return if stored.sequence < self.unsigned_before {
                Ok(Vouched::UnsignedHistory)
            } else {
                Err(Untrusted::Unsigned)
            };
        };
        let bytes: [u8; 64] = signature.signature.as_slice().try_into().map_err(|_| {
            Untrusted::Malformed(format!("{} signature bytes, not 64", signature.signature.len()))
        })?;
        let sig = Signature::from_bytes(&bytes);
        let candidates: Vec<&TrustedKey> = self
            .keys
            .iter()
            .filter(|k| k.key_id == signature.key_id)
            .collect();
        if candidates.is_empty() {
            return Err(Untrusted::UnknownKey(signature.key_id));
        }
        let m = message(&stored.subject, unsigned);
        // Each entry is checked with its own key: a key id is only a hint,
        // and two keys may share one (by accident or by grinding).
        let claimed = stored.event.source.as_ref().map(|s| s.id.as_str()).unwrap_or("");
        let mut refusal = None;
        for k in candidates {
            if k.key.verify_strict(&m, &sig).is_err() {
                refusal.get_or_insert(Untrusted::BadSignature(k.key_id.clone()));
                continue;
            }
            if !may_write(k.role, body) {
                refusal = Some(Untrusted::WrongRole {
                    kind: crate::body_kind(body),
                    role: k.role,
                    key_id: k.key_id.clone(),
                });
                continue;
            }
            if let Some(writer) = &k.writer
                && writer != claimed
            {
                refusal = Some(Untrusted::WrongWriter {
                    claimed: claimed.to_owned(),
                    writer: writer.clone(),
                    key_id: k.key_id.clone(),
                });
                continue;
            }
            return Ok(Vouched::Signed {
                role: k.role,
                key_id: k.key_id.clone(),
            });
        }
        Err(refusal.unwrap_or(Untrusted::Unsigned))
    }
}

impl Trust {
    /// Checks a signature over something other than an event (a snapshot):
    /// made by trusted key `key_id` of `role`.
    pub fn check_detached(
        &self,
        role: Role,
        key_id: &str,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), Untrusted> {
        let bytes: [u8; 64] = signature
            .try_into()
            .map_err(|_| Untrusted::Malformed(format!("{} signature bytes, not 64", signature.len())))?;
        let sig = Signature::from_bytes(&bytes);
        let mut known = false;
        for k in self.keys.iter().filter(|k| k.key_id == key_id) {
            known = true;
            if k.role == role && k.key.verify_strict(message, &sig).is_ok() {
                return Ok(());
            }
        }
        if known {
            Err(Untrusted::BadSignature(key_id.to_owned()))
        } else {
            Err(Untrusted::UnknownKey(key_id.to_owned()))
        }
    }
}

/// The signature of a stored event and the bytes it covers, or `None` for
/// an unsigned event. The signature must be the last bytes stored and
/// appear once.
fn signed_parts(stored: &StoredEvent) -> Result<Option<(proto::EventSignature, &[u8])>, Untrusted> {
    let Some(signature) = stored.event.signature.clone() else {
        return Ok(None);
    };
    let field = signature_field(signature.clone());
    let Some(unsigned) = stored.raw.strip_suffix(field.as_slice()) else {
        return Err(Untrusted::Malformed(
            "the signature is not the last field stored".to_owned(),
        ));
    };
    let prefix = proto::Event::decode(unsigned)
        .map_err(|e| Untrusted::Malformed(format!("the signed bytes do not decode: {e}")))?;
    if prefix.signature.is_some() {
        return Err(Untrusted::Malformed(
            "the signed bytes carry a signature of their own".to_owned(),
        ));
    }
    if signature.algorithm != ALGORITHM {
        return Err(Untrusted::Malformed(format!(
            "algorithm {:?}, not {ALGORITHM}",
            signature.algorithm
        )));
    }
    Ok(Some((signature, unsigned)))
}

/// The `signing:` section of airlock.yaml, read by every binary that writes
/// or acts on the log.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningSection {
    /// Public keys of the fleet's writers and the role of each.
    pub trust: Vec<TrustEntry>,
    /// Unsigned events stored below this stream sequence (a log written
    /// before signing) are accepted as history; 0 (default): none are.
    #[serde(default)]
    pub unsigned_before: u64,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustEntry {
    pub role: Role,
    /// SPKI PEM public key file.
    pub key: PathBuf,
    /// The writer (proxy id or replica id) this key belongs to, if only one.
    #[serde(default)]
    pub id: Option<String>,
}

impl SigningSection {
    /// Reads every listed key.
    pub fn load(&self) -> Result<Trust, KeyError> {
        let mut keys: Vec<TrustedKey> = Vec::with_capacity(self.trust.len());
        for entry in &self.trust {
            let key = load_public_key(&entry.key)?;
            let bad = |detail: &str| KeyError::NotAKey {
                path: entry.key.clone(),
                what: "public key",
                detail: detail.to_owned(),
            };
            if key.is_weak() {
                return Err(bad("a weak (small-order) key, which anyone can sign for"));
            }
            if entry.role == Role::Proxy && entry.id.as_deref().is_none_or(str::is_empty) {
                return Err(bad(
                    "a proxy key must name its proxy (`id: <proxy_id>`): a key trusted for every proxy \
                     could write into any other proxy's sessions",
                ));
            }
            let mut k = TrustedKey::new(entry.role, key);
            k.writer = entry.id.clone();
            if keys.iter().any(|o| o.key_id == k.key_id && o.key != k.key) {
                return Err(bad("another listed key has the same key id"));
            }
            keys.push(k);
        }
        Ok(Trust::new(keys).with_unsigned_before(self.unsigned_before))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBJECT: &str = "airlock.v1.request.R1";

    #[test]
    fn the_control_plane_ends_only_what_a_lost_proxy_left_open() {
        use proto::approval_cancelled::Cause as Cancel;
        use proto::session_closed::Cause as Close;
        let cancel = |cause: Cancel| {
            Body::ApprovalCancelled(proto::ApprovalCancelled {
                cause: cause as i32,
                ..Default::default()
            })
        };
        let close = |cause: Close| {
            Body::SessionClosed(proto::SessionClosed {
                cause: cause as i32,
                ..Default::default()
            })
        };
        assert!(may_write(Role::Control, &cancel(Cancel::ProxyLost)));
        assert!(may_write(Role::Control, &cancel(Cancel::SessionEnded)));
        assert!(!may_write(Role::Control, &cancel(Cancel::ClientCancelled)));
        assert!(may_write(Role::Control, &close(Close::ProxyLost)));
        assert!(!may_write(Role::Control, &close(Close::Killed)));
        assert!(!may_write(
            Role::Control,
            &Body::StatementExecuted(Default::default())
        ));
        // A proxy never claims the control plane's judgement.
        assert!(may_write(Role::Proxy, &cancel(Cancel::SessionEnded)));
        assert!(!may_write(Role::Proxy, &cancel(Cancel::ProxyLost)));
        assert!(!may_write(Role::Proxy, &close(Close::ProxyLost)));
        assert!(may_write(Role::Proxy, &close(Close::UpstreamClosed)));
        assert!(!may_write(
            Role::Proxy,
            &Body::ApprovalGranted(Default::default())
        ));
    }

    fn grant(source: &str) -> proto::Event {
        proto::Event {
            id: "E1".into(),
            request_id: "R1".into(),
            source: Some(proto::Source {
                id: source.into(),
                ..Default::default()
            }),
            body: Some(Body::ApprovalGranted(proto::ApprovalGranted {
                statement_sha256: vec![1; 32],
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn stored(sequence: u64, subject: &str, raw: Vec<u8>) -> StoredEvent {
        StoredEvent {
            sequence,
            subject: subject.into(),
            stored_at: time::OffsetDateTime::UNIX_EPOCH,
            event: proto::Event::decode(raw.as_slice()).expect("decodes"),
            raw: raw.into(),
        }
    }

    fn key(seed: u8) -> Signer {
        Signer::from_key(SigningKey::from_bytes(&[seed; 32]))
    }

    fn trust(role: Role, s: &Signer) -> Trust {
        Trust::new(vec![TrustedKey::new(role, s.verifying_key())])
    }

    #[test]
    fn a_sealed_event_decodes_as_itself_and_checks() {
        let control = key(1);
        let raw = seal(SUBJECT, &grant("control-1"), &control);
        let s = stored(7, SUBJECT, raw);
        assert_eq!(s.event.body, grant("control-1").body);
        assert_eq!(
            s.event.signature.as_ref().map(|x| x.key_id.as_str()),
            Some(control.key_id())
        );
        assert_eq!(
            trust(Role::Control, &control).check(&s),
            Ok(Vouched::Signed {
                role: Role::Control,
                key_id: control.key_id().to_owned()
            })
        );
    }

    #[test]
    fn a_grant_signed_by_a_proxy_or_an_unknown_key_is_refused() {
        let proxy = key(2);
        let s = stored(7, SUBJECT, seal(SUBJECT, &grant("proxy-1"), &proxy));
        assert!(matches!(
            trust(Role::Proxy, &proxy).check(&s),
            Err(Untrusted::WrongRole {
                role: Role::Proxy,
                ..
            })
        ));
        assert!(matches!(
            trust(Role::Control, &key(3)).check(&s),
            Err(Untrusted::UnknownKey(_))
        ));
    }

    #[test]
    fn unsigned_events_are_history_only_below_the_cut() {
        let raw = grant("x").encode_to_vec();
        let t = trust(Role::Control, &key(1)).with_unsigned_before(10);
        assert_eq!(
            t.check(&stored(9, SUBJECT, raw.clone())),
            Ok(Vouched::UnsignedHistory)
        );
        assert_eq!(t.check(&stored(10, SUBJECT, raw)), Err(Untrusted::Unsigned));
    }

    #[test]
    fn altering_moving_or_rewrapping_a_signed_event_breaks_it() {
        let control = key(1);
        let t = trust(Role::Control, &control);
        let raw = seal(SUBJECT, &grant("control-1"), &control);

        // Moved to another request's subject.
        let other = "airlock.v1.request.R2";
        assert!(matches!(
            t.check(&stored(7, other, raw.clone())),
            Err(Untrusted::BadSignature(_))
        ));

        // A field appended after the signature: it no longer ends the bytes.
        let mut extra = raw.clone();
        extra.extend_from_slice(
            &proto::Event {
                request_id: "R9".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        assert!(matches!(
            t.check(&stored(7, SUBJECT, extra)),
            Err(Untrusted::Malformed(_)) | Err(Untrusted::BadSignature(_))
        ));

        // Re-encoded with a different digest but the old signature.
        let mut e = stored(7, SUBJECT, raw.clone()).event;
        if let Some(Body::ApprovalGranted(g)) = &mut e.body {
            g.statement_sha256 = vec![2; 32];
        }
        let sig = e.signature.take().expect("signed");
        let mut forged = e.encode_to_vec();
        forged.extend_from_slice(&signature_field(sig));
        assert!(matches!(
            t.check(&stored(7, SUBJECT, forged)),
            Err(Untrusted::BadSignature(_))
        ));
    }

    #[test]
    fn a_key_bound_to_a_writer_cannot_write_as_another() {
        let proxy = key(2);
        let t = Trust::new(vec![
            TrustedKey::new(Role::Proxy, proxy.verifying_key()).for_writer("proxy-1"),
        ]);
        let opened = |who: &str| proto::Event {
            id: "E1".into(),
            session_id: "S1".into(),
            source: Some(proto::Source {
                id: who.into(),
                ..Default::default()
            }),
            body: Some(Body::SessionClosed(proto::SessionClosed::default())),
            ..Default::default()
        };
        let subject = "airlock.v1.session.S1";
        let ok = stored(1, subject, seal(subject, &opened("proxy-1"), &proxy));
        assert!(t.check(&ok).is_ok());
        let other = stored(1, subject, seal(subject, &opened("proxy-2"), &proxy));
        assert!(matches!(t.check(&other), Err(Untrusted::WrongWriter { .. })));
    }

    #[test]
    fn a_key_id_shared_with_the_control_key_does_not_lend_its_role() {
        // A proxy key whose id collides with the control key's (listed
        // first) must not make a proxy-signed grant pass as the control's.
        let (control, proxy) = (key(1), key(2));
        let same = control.key_id().to_owned();
        let mut as_proxy = TrustedKey::new(Role::Proxy, proxy.verifying_key());
        as_proxy.key_id = same.clone();
        let t = Trust::new(vec![
            as_proxy,
            TrustedKey::new(Role::Control, control.verifying_key()),
        ]);
        let forger = Signer {
            key: proxy.key.clone(),
            key_id: same,
        };
        let forged = stored(1, SUBJECT, seal(SUBJECT, &grant("c"), &forger));
        assert!(
            matches!(t.check(&forged), Err(Untrusted::WrongRole { .. })),
            "{:?}",
            t.check(&forged)
        );
        let genuine = stored(1, SUBJECT, seal(SUBJECT, &grant("c"), &control));
        assert!(matches!(
            t.check(&genuine),
            Ok(Vouched::Signed {
                role: Role::Control,
                ..
            })
        ));
    }

    #[test]
    fn the_trust_list_requires_proxy_ids_and_distinct_keys() {
        let dir = std::env::temp_dir().join(format!("airlock-trust-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let (private, public) = (dir.join("p.key"), dir.join("p.pub"));
        Signer::generate().write(&private, &public).expect("key");
        let entry = |role, id: Option<&str>| TrustEntry {
            role,
            key: public.clone(),
            id: id.map(str::to_owned),
        };
        let section = |trust| SigningSection {
            trust,
            unsigned_before: 0,
        };
        let err = section(vec![entry(Role::Proxy, None)]).load().expect_err("no id");
        assert!(err.to_string().contains("must name its proxy"), "{err}");
        assert!(section(vec![entry(Role::Proxy, Some("proxy-1"))]).load().is_ok());
        assert!(
            section(vec![entry(Role::Control, None), entry(Role::Proxy, Some("p"))])
                .load()
                .is_ok(),
            "one key in two roles is allowed (single-box development)"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn one_key_may_be_trusted_in_two_roles() {
        let k = key(4);
        let t = Trust::new(vec![
            TrustedKey::new(Role::Proxy, k.verifying_key()),
            TrustedKey::new(Role::Control, k.verifying_key()),
        ]);
        assert!(
            t.check(&stored(1, SUBJECT, seal(SUBJECT, &grant("c"), &k)))
                .is_ok()
        );
    }

    #[test]
    fn keys_round_trip_through_pem_files() {
        let dir = std::env::temp_dir().join(format!("airlock-signing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (private, public) = (dir.join("k.key"), dir.join("k.pub"));
        let _ = std::fs::remove_file(&private);
        let _ = std::fs::remove_file(&public);
        let s = Signer::generate();
        s.write(&private, &public).expect("written");
        assert!(s.write(&private, &public).is_err(), "never overwrites");
        assert_eq!(Signer::load(&private).expect("loads").key_id(), s.key_id());
        assert_eq!(key_id(&load_public_key(&public).expect("loads")), s.key_id());
        assert!(matches!(Signer::load(&public), Err(KeyError::NotAKey { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
