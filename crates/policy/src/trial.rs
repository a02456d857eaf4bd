//! Whether a held statement may be tried before anyone approved it: planned
//! by PostgreSQL (`EXPLAIN` without `ANALYZE`, for an impact estimate) or
//! run inside a transaction that is rolled back (a dry run). Pure.
//!
//! Trying a statement must never run code a reviewer has not approved, nor
//! leave anything behind. Planning folds calls of immutable and stable
//! functions into constants (and estimates selectivity by calling them),
//! so a statement is planned only when every function it calls, in its
//! text or through the views and row-level security it reads, is one
//! known to only read. What writing a table runs (its triggers, defaults,
//! rules, checks) is the database owner's code, not the agent's: planning
//! does not run triggers, and a dry run runs exactly what the approved
//! statement would; but a dry run is refused when any of it is something a
//! rollback does not undo (a sequence advanced, a file written, a message
//! sent).

use std::collections::BTreeSet;

use crate::classify::Effect;
use crate::facts::Catalog;
use crate::functions::is_known_side_effect;
use crate::kind::Kind;

/// What the proxy would do with the held statement before approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trial {
    /// `EXPLAIN (FORMAT JSON)` in a read-only transaction.
    Plan,
    /// Run it in a transaction that is rolled back.
    DryRun,
}

/// `Ok` when `effects` (the held statement's, as judged, `parsed` by the
/// parser) may be tried; else why not, in words for the reviewer.
/// `text_calls`: the functions its own text calls that are not known to
/// only read (classified without the catalog): never tried, even when a
/// table it writes calls the same function.
pub fn may_try(
    effects: &[&Effect],
    text_calls: &[String],
    parsed: bool,
    catalog: Catalog<'_>,
    trial: Trial,
) -> Result<(), String> {
    if !parsed {
        return Err("the statement could not be parsed, so what it would run is not known".into());
    }
    let facts = match catalog {
        Catalog::Known(facts) => facts,
        Catalog::Assumed | Catalog::Unreadable | Catalog::Stale(_) | Catalog::Changing(_) => {
            return Err(
                "the connection's catalog facts are not current, so what the statement would run is not known"
                    .into(),
            );
        }
    };
    if effects.is_empty() {
        return Err("the statement does nothing to estimate".into());
    }
    if trial == Trial::DryRun
        && let Some(e) = effects
            .iter()
            .find(|e| matches!(e.kind, Kind::Insert | Kind::Merge))
    {
        return Err(format!(
            "a {} may advance a sequence (an identity or serial column), which a rollback does not undo",
            e.kind
        ));
    }
    let who = match trial {
        Trial::Plan => "planning it",
        Trial::DryRun => "a dry run",
    };
    if let Some(f) = text_calls.first() {
        return Err(format!(
            "it calls {f}, which is not known to only read: {who} could run it before anyone approved"
        ));
    }
    for e in effects {
        let tried = matches!(
            e.kind,
            Kind::Select | Kind::Insert | Kind::Update | Kind::Delete | Kind::Merge | Kind::Function
        );
        if !tried {
            return Err(match trial {
                Trial::Plan => format!("EXPLAIN cannot estimate a {} statement", e.kind),
                Trial::DryRun => format!(
                    "a {} statement is not dry-run: only SELECT, INSERT, UPDATE, DELETE and MERGE are, \
                     as a rollback undoes them",
                    e.kind
                ),
            });
        }
    }
    // What writing the statement's tables runs: their triggers, defaults,
    // rules, checks and index expressions.
    let mut on_write: BTreeSet<String> = BTreeSet::new();
    for e in effects {
        if matches!(e.kind, Kind::Insert | Kind::Update | Kind::Delete | Kind::Merge) {
            for t in &e.tables {
                let reach = facts.reach(t, true);
                on_write.extend(reach.write_calls.into_iter().map(|c| c.name));
            }
        }
    }
    let calls = effects
        .iter()
        .filter(|e| e.kind == Kind::Function)
        .flat_map(|e| e.functions.iter());
    for f in calls {
        if !on_write.contains(f) {
            return Err(format!(
                "it calls {f}, which is not known to only read: {who} could run it before anyone approved"
            ));
        }
    }
    if trial == Trial::DryRun
        && let Some(f) = on_write.iter().find(|f| undone_by_rollback(f).is_err())
    {
        return Err(format!(
            "writing its tables calls {f}, {}",
            undone_by_rollback(f).unwrap_err()
        ));
    }
    Ok(())
}

/// Whether a rollback undoes what calling `name` does.
fn undone_by_rollback(name: &str) -> Result<(), &'static str> {
    let bare = name.rsplit('.').next().unwrap_or(name);
    if matches!(bare, "nextval" | "setval") {
        return Err("which advances a sequence, and a rollback does not undo that");
    }
    if bare.starts_with("lo_") || bare.starts_with("dblink") || is_known_side_effect(name) {
        return Err("which reaches outside the transaction, and a rollback does not undo that");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::{Called, CatalogFacts, RelationKind, RelationsBuilder};

    fn facts() -> CatalogFacts {
        let mut b = RelationsBuilder::default();
        b.relation("public.orders".into(), RelationKind::Table);
        b.relation("public.audited".into(), RelationKind::Table);
        b.write_call(
            "public.audited",
            Called {
                name: "util.audit_row".into(),
                volatile: true,
            },
        );
        b.relation("public.serial".into(), RelationKind::Table);
        b.write_call(
            "public.serial",
            Called {
                name: "pg_catalog.nextval".into(),
                volatile: true,
            },
        );
        CatalogFacts::new(vec!["public".into()], ["util.audit_row".to_owned()], b.build())
    }

    fn effect(kind: Kind, tables: &[&str], functions: &[&str]) -> Effect {
        Effect {
            kind,
            tables: tables.iter().map(|t| (*t).to_owned()).collect(),
            functions: functions.iter().map(|f| (*f).to_owned()).collect(),
            has_where: None,
        }
    }

    fn check(effects: &[Effect], trial: Trial) -> Result<(), String> {
        let f = facts();
        let refs: Vec<&Effect> = effects.iter().collect();
        may_try(&refs, &[], true, Catalog::Known(&f), trial)
    }

    #[test]
    fn plain_writes_and_reads_may_be_planned_and_dry_run() {
        for trial in [Trial::Plan, Trial::DryRun] {
            assert_eq!(
                check(&[effect(Kind::Delete, &["public.orders"], &[])], trial),
                Ok(())
            );
            assert_eq!(
                check(&[effect(Kind::Select, &["public.orders"], &[])], trial),
                Ok(())
            );
        }
    }

    #[test]
    fn a_call_of_code_not_known_to_only_read_is_never_tried() {
        let calls = [
            effect(Kind::Delete, &["public.orders"], &[]),
            effect(Kind::Function, &[], &["util.stable_writer"]),
        ];
        for trial in [Trial::Plan, Trial::DryRun] {
            let why = check(&calls, trial).expect_err("refused");
            assert!(why.contains("util.stable_writer"), "{why}");
        }
        // Code a relation runs that facts do not know counts as a call.
        let unknown = [effect(Kind::Function, &[], &["code of public.ghost"])];
        assert!(check(&unknown, Trial::Plan).is_err());
    }

    #[test]
    fn triggers_of_the_written_table_are_the_owners_code_but_sequences_are_not_undone() {
        let audited = [
            effect(Kind::Delete, &["public.audited"], &[]),
            effect(Kind::Function, &[], &["util.audit_row"]),
        ];
        assert_eq!(check(&audited, Trial::Plan), Ok(()));
        assert_eq!(check(&audited, Trial::DryRun), Ok(()));
        // The same function called by the text of a statement on another
        // table is a call like any other.
        let called = [
            effect(Kind::Delete, &["public.orders"], &[]),
            effect(Kind::Function, &[], &["util.audit_row"]),
        ];
        assert!(check(&called, Trial::Plan).is_err());
        let serial = [
            effect(Kind::Insert, &["public.serial"], &[]),
            effect(Kind::Function, &[], &["pg_catalog.nextval"]),
        ];
        assert_eq!(check(&serial, Trial::Plan), Ok(()), "planning runs no default");
        let why = check(&serial, Trial::DryRun).expect_err("a sequence moves");
        assert!(why.contains("sequence"), "{why}");
        // An UPDATE whose table's trigger calls nextval.
        let update = [
            effect(Kind::Update, &["public.serial"], &[]),
            effect(Kind::Function, &[], &["pg_catalog.nextval"]),
        ];
        assert!(
            check(&update, Trial::DryRun)
                .expect_err("sequence")
                .contains("sequence")
        );
        // Any INSERT may (identity columns are not in the facts).
        let insert = [effect(Kind::Insert, &["public.orders"], &[])];
        assert_eq!(check(&insert, Trial::Plan), Ok(()));
        assert!(check(&insert, Trial::DryRun).is_err());
        // Review finding: the default of a table the statement writes
        // (with a no-op DELETE in a CTE) called by the statement's own
        // text, with arguments of the agent's choosing, is never tried.
        let f = facts();
        let cte = [
            effect(Kind::Delete, &["public.audited"], &[]),
            effect(Kind::Update, &["public.orders"], &[]),
            effect(Kind::Function, &[], &["util.audit_row"]),
        ];
        let refs: Vec<&Effect> = cte.iter().collect();
        assert_eq!(may_try(&refs, &[], true, Catalog::Known(&f), Trial::Plan), Ok(()));
        let text = vec!["util.audit_row".to_owned()];
        for trial in [Trial::Plan, Trial::DryRun] {
            assert!(may_try(&refs, &text, true, Catalog::Known(&f), trial).is_err());
        }
    }

    #[test]
    fn what_a_rollback_cannot_undo_or_explain_cannot_take_is_refused_with_the_kind() {
        for kind in [
            Kind::Vacuum,
            Kind::Create,
            Kind::Copy,
            Kind::Do,
            Kind::Truncate,
            Kind::Transaction,
        ] {
            for trial in [Trial::Plan, Trial::DryRun] {
                let why = check(&[effect(kind, &["public.orders"], &[])], trial).expect_err("refused");
                assert!(why.contains(kind.name()), "{why}");
            }
        }
    }

    #[test]
    fn without_current_facts_or_a_parse_nothing_is_tried() {
        let f = facts();
        let delete = effect(Kind::Delete, &["public.orders"], &[]);
        for catalog in [
            Catalog::Stale(&f),
            Catalog::Changing(&f),
            Catalog::Unreadable,
            Catalog::Assumed,
        ] {
            assert!(may_try(&[&delete], &[], true, catalog, Trial::Plan).is_err());
        }
        assert!(may_try(&[&delete], &[], false, Catalog::Known(&f), Trial::Plan).is_err());
    }
}
