//! Who a verified token says the caller is: [`Identity`] and its id types.
//!
//! Plain data, serialisable (it goes into events and into the JSON of
//! `airlock-control identity check`). Built only by the verifier, from claims
//! whose signature has been checked.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The stable id of the caller: Entra's `oid` (object id), else `sub`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SubjectId(pub String);

/// The Entra tenant (`tid`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(pub String);

/// The client application that obtained the token (`azp`, or v1 `appid`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientAppId(pub String);

/// A group object id as it appears in the groups claim.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GroupId(pub String);

/// Whether a person or a workload is calling.
///
/// The rule: `idtyp` = `app` means an app; otherwise a token with no `scp`
/// (delegated scopes) is app-only, i.e. an app; otherwise a user. Entra sets
/// `idtyp` only when the app registration asks for it (optional claim), so
/// the `scp` test is the fallback that always works: app-only tokens from the
/// client-credentials flow never carry `scp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrincipalKind {
    User,
    App,
}

/// One group of the caller: its object id, and its name when `group_names`
/// has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMembership {
    pub id: GroupId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Where an identity's groups came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupsSource {
    /// The token's groups claim.
    #[default]
    Token,
    /// Microsoft Graph, because the token had group overage; only the
    /// groups Airlock's configuration names were asked about.
    Graph,
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub subject: SubjectId,
    pub kind: PrincipalKind,
    pub tenant: Option<TenantId>,
    /// `name`, else `preferred_username`, else `upn`, else `app_displayname`.
    pub display_name: Option<String>,
    /// `azp`, else `appid`; always present in an accepted token (kept an
    /// `Option` so the serialised form can grow other issuers).
    pub client_app: Option<ClientAppId>,
    /// From the configured groups claim, in token order.
    pub groups: Vec<GroupMembership>,
    /// Whether `groups` came from the token or, for a token with group
    /// overage, from Microsoft Graph.
    #[serde(default)]
    pub groups_source: GroupsSource,
    /// App roles (`roles`).
    pub roles: Vec<String>,
    /// Authentication contexts the sign-in met (`acrs`, Conditional Access).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acrs: Vec<String>,
    /// Delegated scopes (`scp`, space-separated in the token).
    pub scopes: Vec<String>,
    /// `iss`, as verified.
    pub issuer: String,
    /// `exp`: the session must not outlive this.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

impl Identity {
    /// True when the caller is in the group named `name_or_id`: either a
    /// `group_names` name, or an object id (compared case-insensitively).
    pub fn in_group(&self, name_or_id: &str) -> bool {
        self.groups.iter().any(|group| {
            group.name.as_deref() == Some(name_or_id) || group.id.0.eq_ignore_ascii_case(name_or_id)
        })
    }

    /// True when the token carries the app role `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}
