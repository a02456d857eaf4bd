//! A verified identity in the form events carry (`airlock.v1.Identity`).

use airlock_proto::v1 as proto;

use crate::identity::{GroupsSource, Identity, PrincipalKind};

impl Identity {
    /// The identity as recorded in events and shown to reviewers.
    pub fn to_proto(&self) -> proto::Identity {
        let i = self;
        proto::Identity {
            subject: i.subject.0.clone(),
            tenant_id: i.tenant.as_ref().map(|t| t.0.clone()).unwrap_or_default(),
            display_name: i.display_name.clone().unwrap_or_default(),
            client_app_id: i.client_app.as_ref().map(|c| c.0.clone()).unwrap_or_default(),
            kind: match i.kind {
                PrincipalKind::User => proto::identity::Kind::User,
                PrincipalKind::App => proto::identity::Kind::App,
            } as i32,
            groups: i
                .groups
                .iter()
                .map(|g| proto::Group {
                    id: g.id.0.clone(),
                    name: g.name.clone().unwrap_or_default(),
                })
                .collect(),
            roles: i.roles.clone(),
            groups_source: match i.groups_source {
                GroupsSource::Token => String::new(),
                GroupsSource::Graph => "graph".into(),
            },
            acrs: i.acrs.clone(),
            issuer: i.issuer.clone(),
            token_expires_at: Some(prost_types::Timestamp {
                seconds: i.expires_at.unix_timestamp(),
                nanos: 0,
            }),
        }
    }
}
