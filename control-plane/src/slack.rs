//! Slack links: which Slack user's button votes are cast as which person.
//!
//! A link joins two proofs made in two places. The person proves who they
//! are in the browser: signed in to the reviewer with their own Entra token,
//! they ask this control plane for a link ticket (`OfferSlackLink`), which
//! names them and is signed with this replica's key (any replica checks it
//! against `signing.trust`). The Slack user proves who they are in Slack:
//! they type `/airlock link <ticket>`, Slack signs that request for the
//! reviewer service, and the reviewer service, a relay
//! (`control.slack.relays`), passes the ticket on with the Slack user Slack
//! named (`LinkSlack`). A ticket is good for [`TICKET_TTL`] and links once.
//!
//! Nothing here can be talked out of a person at a distance: a ticket
//! someone sends a reviewer links the sender's person, not the reviewer's;
//! a reviewer's ticket is theirs to type, and the page that shows it says
//! never to hand it to anyone.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use airlock_eventlog::proto;
use airlock_eventlog::signing::{Role, Signer, Trust};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::config::SlackSection;

/// How long a link ticket is good for.
pub const TICKET_TTL: Duration = Duration::from_secs(600);
/// What a ticket's signature is over (after this, its body).
const DOMAIN: &[u8] = b"airlock slack link ticket v1\n";
/// How a ticket starts (so a mistyped one is told apart from another code).
const PREFIX: &str = "airlock-link-";
/// The longest ticket read.
const MAX_TICKET: usize = 8 * 1024;

/// `control.slack` and the groups a link keeps.
#[derive(Debug, Clone)]
pub struct SlackLinks {
    pub section: SlackSection,
    /// The groups that give rights here (`approvals.reviewers` and those
    /// the policies name, by name and object id): a link records only
    /// these of the person's.
    pub groups: Vec<String>,
}

/// A checked ticket.
#[derive(Debug, Clone, PartialEq)]
pub struct Ticket {
    pub id: String,
    pub expires_at: SystemTime,
    /// The person who asked for it, narrowed to the groups that matter.
    pub identity: proto::Identity,
}

#[derive(Serialize, Deserialize)]
struct Body {
    id: String,
    exp: u64,
    /// The identity, protobuf, base64url.
    who: String,
}

impl SlackLinks {
    /// `identity` as a link keeps it: the groups that give rights here,
    /// no step-up (that is for the moment of a vote), no token expiry.
    pub fn narrowed(&self, identity: &proto::Identity) -> proto::Identity {
        let mut out = identity.clone();
        out.groups.retain(|g| {
            self.groups
                .iter()
                .any(|k| *k == g.id || (!g.name.is_empty() && *k == g.name))
        });
        out.acrs.clear();
        out.token_expires_at = None;
        out
    }

    /// A ticket for `identity`, signed by `signer`, good until `now +`
    /// [`TICKET_TTL`].
    pub fn issue(&self, signer: &Signer, identity: &proto::Identity, now: SystemTime) -> (String, Ticket) {
        let ticket = Ticket {
            id: ulid::Ulid::new().to_string(),
            expires_at: now + TICKET_TTL,
            identity: self.narrowed(identity),
        };
        let body = Body {
            id: ticket.id.clone(),
            exp: unix(ticket.expires_at),
            who: URL_SAFE_NO_PAD.encode(ticket.identity.encode_to_vec()),
        };
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&body).expect("a ticket body encodes"));
        let signature = signer.sign(&[DOMAIN, body.as_bytes()].concat());
        let text = format!(
            "{PREFIX}{body}.{}.{}",
            signer.key_id(),
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        );
        (text, ticket)
    }
}

/// The ticket `text` names, if a trusted control key signed it and it has
/// not expired at `now`. The reason otherwise, for the person who typed it.
pub fn open(trust: &Trust, text: &str, now: SystemTime) -> Result<Ticket, String> {
    let text = text.trim();
    if text.len() > MAX_TICKET {
        return Err("that is not a link ticket (too long)".into());
    }
    let rest = text
        .strip_prefix(PREFIX)
        .ok_or("that is not a link ticket: copy the whole command from the reviewer's Slack page")?;
    let mut parts = rest.split('.');
    let (Some(body), Some(key_id), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("that link ticket is cut short: copy the whole command again".into());
    };
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| "that link ticket is damaged: copy the whole command again")?;
    trust
        .check_detached(
            Role::Control,
            key_id,
            &[DOMAIN, body.as_bytes()].concat(),
            &signature,
        )
        .map_err(|_| "that link ticket was not made by this Airlock: ask for a new one on the reviewer's Slack page")?;
    let body: Body = URL_SAFE_NO_PAD
        .decode(body)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("that link ticket is damaged")?;
    let expires_at = UNIX_EPOCH + Duration::from_secs(body.exp);
    if now > expires_at {
        return Err("that link ticket has expired: ask for a new one on the reviewer's Slack page".into());
    }
    let identity = URL_SAFE_NO_PAD
        .decode(&body.who)
        .ok()
        .and_then(|b| proto::Identity::decode(b.as_slice()).ok())
        .ok_or("that link ticket is damaged")?;
    Ok(Ticket {
        id: body.id,
        expires_at,
        identity,
    })
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Whether two identities are the same person (subject within a tenant).
pub fn same_person(a: &proto::Identity, b: &proto::Identity) -> bool {
    a.subject == b.subject && a.tenant_id == b.tenant_id
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_eventlog::signing::TrustedKey;

    fn links() -> SlackLinks {
        SlackLinks {
            section: SlackSection {
                relays: vec!["relay".into()],
                ticket_clients: vec!["ui".into()],
                link_ttl: Duration::from_secs(3600),
            },
            groups: vec!["reviewers".into(), "gid-leads".into()],
        }
    }

    fn person() -> proto::Identity {
        let group = |id: &str, name: &str| proto::Group {
            id: id.into(),
            name: name.into(),
        };
        proto::Identity {
            subject: "oid-alice".into(),
            tenant_id: "tid".into(),
            kind: proto::identity::Kind::User as i32,
            groups: vec![
                group("gid-rev", "reviewers"),
                group("gid-leads", ""),
                group("gid-other", "marketing"),
            ],
            acrs: vec!["c1".into()],
            ..Default::default()
        }
    }

    #[test]
    fn a_ticket_opens_where_its_key_is_trusted_until_it_expires() {
        let signer = Signer::generate();
        let trust = Trust::new(vec![TrustedKey::new(Role::Control, signer.verifying_key())]);
        let now = SystemTime::now();
        let (text, ticket) = links().issue(&signer, &person(), now);
        let opened = open(&trust, &format!("  {text}\n"), now + Duration::from_secs(599)).unwrap();
        assert_eq!(opened.id, ticket.id);
        assert_eq!(opened.identity.subject, "oid-alice");
        // Only the groups that give rights here; no step-up.
        let groups: Vec<_> = opened.identity.groups.iter().map(|g| g.id.as_str()).collect();
        assert_eq!(groups, ["gid-rev", "gid-leads"]);
        assert!(opened.identity.acrs.is_empty());
        assert!(open(&trust, &text, now + Duration::from_secs(601)).is_err());
        // Another key, a proxy's role, a changed body, a cut one: refused.
        let other = Signer::generate();
        let elsewhere = Trust::new(vec![TrustedKey::new(Role::Control, other.verifying_key())]);
        assert!(open(&elsewhere, &text, now).is_err());
        let as_proxy = Trust::new(vec![TrustedKey::new(Role::Proxy, signer.verifying_key())]);
        assert!(open(&as_proxy, &text, now).is_err());
        let (forged, _) = links().issue(&other, &proto::Identity::default(), now);
        let body = forged.split('.').next().unwrap();
        let tail = text.split_once('.').unwrap().1;
        assert!(open(&trust, &format!("{body}.{tail}"), now).is_err());
        assert!(open(&trust, &text[..text.len() - 3], now).is_err());
        assert!(open(&trust, "123456", now).is_err());
        assert!(open(&trust, &"x".repeat(MAX_TICKET + 1), now).is_err());
    }

    #[test]
    fn an_event_signature_is_no_ticket() {
        // The same key signs events and tickets: the domain keeps them apart.
        let signer = Signer::generate();
        let trust = Trust::new(vec![TrustedKey::new(Role::Control, signer.verifying_key())]);
        let body = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&Body {
                id: "x".into(),
                exp: u64::MAX / 2,
                who: String::new(),
            })
            .unwrap(),
        );
        let bare = signer.sign(body.as_bytes());
        let text = format!(
            "{PREFIX}{body}.{}.{}",
            signer.key_id(),
            URL_SAFE_NO_PAD.encode(bare.to_bytes())
        );
        assert!(open(&trust, &text, SystemTime::now()).is_err());
    }

    fn linked(
        sequence: u64,
        user: &str,
        ticket: &str,
        expires: i64,
        stored: i64,
    ) -> airlock_eventlog::StoredEvent {
        let slack = proto::SlackUser {
            team_id: "T1".into(),
            user_id: user.into(),
            name: String::new(),
        };
        let event = airlock_eventlog::new_event(
            &proto::Source::default(),
            proto::event::Body::SlackLinked(proto::SlackLinked {
                slack: Some(slack),
                identity: Some(person()),
                ticket_id: ticket.into(),
                ticket_expires_at: Some(prost_types::Timestamp {
                    seconds: expires,
                    nanos: 0,
                }),
                relayed_by: None,
            }),
        );
        airlock_eventlog::StoredEvent {
            sequence,
            subject: airlock_eventlog::subjects::slack_link("T1", user),
            stored_at: time::OffsetDateTime::from_unix_timestamp(stored).unwrap(),
            raw: prost::Message::encode_to_vec(&event).into(),
            event,
        }
    }

    #[test]
    fn a_ticket_links_once_and_only_while_good_in_log_order() {
        let mut p = crate::projection::Projection::new();
        let t0 = 1_800_000_000;
        p.apply(&linked(1, "U1", "K1", t0 + 600, t0));
        // The same ticket again (a race lost, or the event copied back).
        p.apply(&linked(2, "U2", "K1", t0 + 600, t0 + 1));
        p.apply(&linked(3, "U1", "K1", t0 + 600, t0 + 2));
        // A ticket stored well after it expired; one without a ticket.
        p.apply(&linked(4, "U3", "K2", t0 + 600, t0 + 700));
        p.apply(&linked(5, "U4", "", t0 + 600, t0));
        let links: Vec<_> = p
            .slack_links
            .iter()
            .map(|((_, u), v)| (u.as_str(), v.sequence))
            .collect();
        assert_eq!(links, [("U1", 1)]);
        assert_eq!(p.anomalies, 4);
        // Used tickets are forgotten once expired.
        p.apply(&linked(6, "U5", "K3", t0 + 4000, t0 + 3000));
        assert!(!p.slack_tickets.contains_key("K1") && p.slack_tickets.contains_key("K3"));
        // What a snapshot keeps folds the same.
        let back = crate::snapshot::decode(&crate::snapshot::encode(&p)).unwrap();
        assert_eq!(back.slack_tickets, p.slack_tickets);
        assert_eq!(back.slack_links, p.slack_links);
    }
}
