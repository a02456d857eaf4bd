//! Who may see which request. The REST handlers (`api`), the event stream
//! (`events`) and the pages (`ui`) all filter with [`may_review`], so a
//! reviewer sees the same requests whichever way they look.
//!
//! This only narrows what is shown: the control plane judges every read and
//! every vote again with the caller's token.

use airlock_proto::v1 as proto;

/// True when `caller` is in one of the groups that may review `view`:
/// reviewers see only what their groups may review. Ids compare
/// case-insensitively (Entra object ids are GUIDs), names exactly.
pub fn may_review(caller: &proto::Identity, view: &proto::RequestView) -> bool {
    let groups = view
        .request
        .as_ref()
        .map(|r| r.reviewer_groups.as_slice())
        .unwrap_or_default();
    groups.iter().any(|g| {
        caller.groups.iter().any(|c| {
            (!g.id.is_empty() && c.id.eq_ignore_ascii_case(&g.id))
                || (!g.name.is_empty() && (c.name == g.name || c.id.eq_ignore_ascii_case(&g.name)))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(groups: &[(&str, &str)]) -> proto::Identity {
        proto::Identity {
            groups: groups
                .iter()
                .map(|(id, name)| proto::Group {
                    id: (*id).into(),
                    name: (*name).into(),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn view(groups: &[(&str, &str)]) -> proto::RequestView {
        proto::RequestView {
            request: Some(proto::ApprovalRequested {
                reviewer_groups: caller(groups).groups,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn reviewers_see_only_their_groups() {
        let v = view(&[("0B7E", "db-reviewers")]);
        assert!(may_review(&caller(&[("0b7e", "")]), &v), "id, any case");
        assert!(may_review(&caller(&[("other", "db-reviewers")]), &v), "by name");
        assert!(!may_review(&caller(&[("x", "y")]), &v));
        assert!(!may_review(&caller(&[]), &v));
        // A policy naming a group by id only, seen by a caller with names.
        let by_name = view(&[("", "db-reviewers")]);
        assert!(may_review(&caller(&[("g", "db-reviewers")]), &by_name));
        assert!(
            !may_review(&caller(&[("", "")]), &view(&[("", "")])),
            "empty never matches"
        );
    }
}
