//! What PostgreSQL (13 to 18) has built in, as far as classification needs
//! to know without asking the server: the relations of `pg_catalog`, its
//! type names and its ordering operators. Static lists: a name missing from
//! them is treated as the less safe possibility, never the other way round.

use sqlparser::ast::{ArrayElemTypeDef, DataType, ObjectNamePart};

use crate::facts::CatalogFacts;

/// Tables and views of `pg_catalog`, PostgreSQL 13 to 18 (sorted). Every
/// one begins with `pg_`.
const CATALOG_RELATIONS: &[&str] = &[
    "pg_aggregate",
    "pg_aios",
    "pg_am",
    "pg_amop",
    "pg_amproc",
    "pg_attrdef",
    "pg_attribute",
    "pg_auth_members",
    "pg_authid",
    "pg_available_extension_versions",
    "pg_available_extensions",
    "pg_backend_memory_contexts",
    "pg_cast",
    "pg_class",
    "pg_collation",
    "pg_config",
    "pg_constraint",
    "pg_conversion",
    "pg_cursors",
    "pg_database",
    "pg_db_role_setting",
    "pg_default_acl",
    "pg_depend",
    "pg_description",
    "pg_enum",
    "pg_event_trigger",
    "pg_extension",
    "pg_file_settings",
    "pg_foreign_data_wrapper",
    "pg_foreign_server",
    "pg_foreign_table",
    "pg_group",
    "pg_hba_file_rules",
    "pg_ident_file_mappings",
    "pg_index",
    "pg_indexes",
    "pg_inherits",
    "pg_init_privs",
    "pg_language",
    "pg_largeobject",
    "pg_largeobject_metadata",
    "pg_locks",
    "pg_matviews",
    "pg_namespace",
    "pg_opclass",
    "pg_operator",
    "pg_opfamily",
    "pg_parameter_acl",
    "pg_partitioned_table",
    "pg_policies",
    "pg_policy",
    "pg_prepared_statements",
    "pg_prepared_xacts",
    "pg_proc",
    "pg_publication",
    "pg_publication_namespace",
    "pg_publication_rel",
    "pg_publication_tables",
    "pg_range",
    "pg_replication_origin",
    "pg_replication_origin_status",
    "pg_replication_slots",
    "pg_rewrite",
    "pg_roles",
    "pg_rules",
    "pg_seclabel",
    "pg_seclabels",
    "pg_sequence",
    "pg_sequences",
    "pg_settings",
    "pg_shadow",
    "pg_shdepend",
    "pg_shdescription",
    "pg_shmem_allocations",
    "pg_shmem_allocations_numa",
    "pg_shseclabel",
    "pg_stat_activity",
    "pg_stat_all_indexes",
    "pg_stat_all_tables",
    "pg_stat_archiver",
    "pg_stat_bgwriter",
    "pg_stat_checkpointer",
    "pg_stat_database",
    "pg_stat_database_conflicts",
    "pg_stat_gssapi",
    "pg_stat_io",
    "pg_stat_progress_analyze",
    "pg_stat_progress_basebackup",
    "pg_stat_progress_cluster",
    "pg_stat_progress_copy",
    "pg_stat_progress_create_index",
    "pg_stat_progress_vacuum",
    "pg_stat_recovery_prefetch",
    "pg_stat_replication",
    "pg_stat_replication_slots",
    "pg_stat_slru",
    "pg_stat_ssl",
    "pg_stat_subscription",
    "pg_stat_subscription_stats",
    "pg_stat_sys_indexes",
    "pg_stat_sys_tables",
    "pg_stat_user_functions",
    "pg_stat_user_indexes",
    "pg_stat_user_tables",
    "pg_stat_wal",
    "pg_stat_wal_receiver",
    "pg_stat_xact_all_tables",
    "pg_stat_xact_sys_tables",
    "pg_stat_xact_user_functions",
    "pg_stat_xact_user_tables",
    "pg_statio_all_indexes",
    "pg_statio_all_sequences",
    "pg_statio_all_tables",
    "pg_statio_sys_indexes",
    "pg_statio_sys_sequences",
    "pg_statio_sys_tables",
    "pg_statio_user_indexes",
    "pg_statio_user_sequences",
    "pg_statio_user_tables",
    "pg_statistic",
    "pg_statistic_ext",
    "pg_statistic_ext_data",
    "pg_stats",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
    "pg_subscription",
    "pg_subscription_rel",
    "pg_tables",
    "pg_tablespace",
    "pg_timezone_abbrevs",
    "pg_timezone_names",
    "pg_transform",
    "pg_trigger",
    "pg_ts_config",
    "pg_ts_config_map",
    "pg_ts_dict",
    "pg_ts_parser",
    "pg_ts_template",
    "pg_type",
    "pg_user",
    "pg_user_mapping",
    "pg_user_mappings",
    "pg_views",
    "pg_wait_events",
];

/// Where an unqualified relation name may resolve, as `schema.name`s.
///
/// PostgreSQL searches `pg_catalog` before the search path unless the path
/// names it later (and the temporary schema before both, which holds only
/// what the session itself made). So `pg_stats` is `pg_catalog.pg_stats`,
/// not `public.pg_stats`: attributing it to the default schema would let a
/// `tables: [public.*]` allow pass reads of other tables' sampled values
/// (`pg_stats`) and of other sessions' queries (`pg_stat_activity`).
///
/// Fail-closed choices: a known catalog relation resolves to `pg_catalog`
/// alone; any other `pg_*` name could be a catalog relation of a version
/// this list does not know, or a table in the default schema, so it is
/// attributed to both (an allow must then cover both, and a deny or hold
/// on either catches it). Every catalog relation begins with `pg_`, so
/// other names resolve to the default schema. `information_schema` is not
/// searched implicitly and gets no special case.
pub(super) fn resolve_unqualified(name: &str, default_schema: &str) -> Vec<String> {
    if CATALOG_RELATIONS.binary_search(&name).is_ok() {
        vec![format!("pg_catalog.{name}")]
    } else if name.starts_with("pg_") {
        vec![format!("pg_catalog.{name}"), format!("{default_schema}.{name}")]
    } else {
        vec![format!("{default_schema}.{name}")]
    }
}

/// An unqualified relation name resolved as PostgreSQL resolves it, through
/// the role's effective search path as the catalog reports it: the first
/// schema holding a relation of that name (`pg_catalog` first unless the
/// path places it, by the static list of its relations). A name found
/// nowhere (a relation still to be created, or made since the facts were
/// read) is attributed to every schema on the path, so an allow must cover
/// all of them and a deny or hold on any catches it.
pub(super) fn resolve_through(name: &str, facts: &CatalogFacts, default_schema: &str) -> Vec<String> {
    let mut out = Vec::new();
    for schema in facts.relation_path() {
        if schema == "pg_catalog" {
            if CATALOG_RELATIONS.binary_search(&name).is_ok() {
                return vec![format!("pg_catalog.{name}")];
            }
            if name.starts_with("pg_") {
                out.push(format!("pg_catalog.{name}"));
            }
            continue;
        }
        let qualified = format!("{schema}.{name}");
        if facts.relation(&qualified).is_some() {
            out.retain(|q| q.starts_with("pg_catalog."));
            out.push(qualified);
            return out;
        }
        out.push(qualified);
    }
    if out.iter().all(|q| q.starts_with("pg_catalog.")) {
        // No schema on the path exists: PostgreSQL finds nothing there.
        out.push(format!("{default_schema}.{name}"));
    }
    out
}

/// Base, range, multirange and pseudo types of `pg_catalog` (array types
/// are their element type with `[]`), by the name a quoted or qualified
/// reference uses; sqlparser reads the SQL spellings (`integer`, `double
/// precision`, ...) into types of their own, see [`is_builtin_type`].
const CATALOG_TYPES: &[&str] = &[
    "aclitem",
    "any",
    "anyarray",
    "anycompatible",
    "anycompatiblearray",
    "anycompatiblemultirange",
    "anycompatiblenonarray",
    "anycompatiblerange",
    "anyelement",
    "anyenum",
    "anymultirange",
    "anynonarray",
    "anyrange",
    "bit",
    "bool",
    "box",
    "bpchar",
    "bytea",
    "char",
    "cid",
    "cidr",
    "circle",
    "cstring",
    "date",
    "datemultirange",
    "daterange",
    "event_trigger",
    "fdw_handler",
    "float4",
    "float8",
    "gtsvector",
    "index_am_handler",
    "inet",
    "int2",
    "int2vector",
    "int4",
    "int4multirange",
    "int4range",
    "int8",
    "int8multirange",
    "int8range",
    "internal",
    "interval",
    "json",
    "jsonb",
    "jsonpath",
    "language_handler",
    "line",
    "lseg",
    "macaddr",
    "macaddr8",
    "money",
    "name",
    "numeric",
    "nummultirange",
    "numrange",
    "oid",
    "oidvector",
    "path",
    "pg_brin_bloom_summary",
    "pg_brin_minmax_multi_summary",
    "pg_ddl_command",
    "pg_dependencies",
    "pg_lsn",
    "pg_mcv_list",
    "pg_ndistinct",
    "pg_node_tree",
    "pg_snapshot",
    "point",
    "polygon",
    "record",
    "refcursor",
    "regclass",
    "regcollation",
    "regconfig",
    "regdictionary",
    "regnamespace",
    "regoper",
    "regoperator",
    "regproc",
    "regprocedure",
    "regrole",
    "regtype",
    "table_am_handler",
    "text",
    "tid",
    "time",
    "timestamp",
    "timestamptz",
    "timetz",
    "trigger",
    "tsm_handler",
    "tsmultirange",
    "tsquery",
    "tsrange",
    "tstzmultirange",
    "tstzrange",
    "tsvector",
    "txid_snapshot",
    "unknown",
    "uuid",
    "varbit",
    "varchar",
    "void",
    "xid",
    "xid8",
    "xml",
];

/// Whether a cast to `data_type` can only run PostgreSQL's own code.
///
/// A cast to a domain runs the domain's CHECK constraints, which may call
/// any function, and a user-defined type's input function is user code; so
/// a cast to anything not known to be built in is judged as a call. sqlparser
/// reads some names that are not PostgreSQL types into types of their own
/// (`string`, `tinyint`, `datetime`, ...): to PostgreSQL those are names
/// like any other, which a domain can take, so only the spellings PostgreSQL
/// itself knows count as built in.
pub(super) fn is_builtin_type(data_type: &DataType) -> bool {
    use DataType as T;
    match data_type {
        T::Custom(name, _) => {
            let parts: Vec<String> = name
                .0
                .iter()
                .map(|p| match p {
                    ObjectNamePart::Identifier(i) => crate::ident::fold(&i.value, i.quote_style.is_some()),
                    other => other.to_string(),
                })
                .collect();
            match parts.as_slice() {
                [bare] => CATALOG_TYPES.binary_search(&bare.as_str()).is_ok(),
                [schema, bare] if schema == "pg_catalog" => {
                    CATALOG_TYPES.binary_search(&bare.as_str()).is_ok()
                }
                _ => false,
            }
        }
        T::Array(element) => match element {
            // `t[]`, `t ARRAY`: PostgreSQL's spellings.
            ArrayElemTypeDef::SquareBracket(inner, _) | ArrayElemTypeDef::Qualified(inner, _) => {
                is_builtin_type(inner)
            }
            ArrayElemTypeDef::None
            | ArrayElemTypeDef::AngleBracket(_)
            | ArrayElemTypeDef::Parenthesis(_)
            | ArrayElemTypeDef::ParenthesisNotNull(_) => false,
        },
        T::Boolean
        | T::Bool
        | T::Float(_)
        | T::Real
        | T::Float4
        | T::Float8
        | T::DoublePrecision
        | T::Int2(_)
        | T::SmallInt(_)
        | T::Int(_)
        | T::Int4(_)
        | T::Int8(_)
        | T::Integer(_)
        | T::BigInt(_)
        | T::Varchar(_)
        | T::Character(_)
        | T::CharacterVarying(_)
        | T::Char(_)
        | T::CharVarying(_)
        | T::Bit(_)
        | T::BitVarying(_)
        | T::VarBit(_)
        | T::Uuid
        | T::Date
        | T::Timestamp(..)
        | T::Time(..)
        | T::Interval { .. }
        | T::JSON
        | T::JSONB
        | T::Regclass
        | T::Text
        | T::Bytea
        | T::Numeric(_)
        | T::Decimal(_)
        | T::Dec(_)
        | T::TsVector
        | T::TsQuery => true,
        _ => false,
    }
}

/// Whether `ORDER BY ... USING op` names a built-in ordering operator:
/// `<` or `>` (and the text pattern ones), unqualified or in `pg_catalog`.
/// Any other operator is user code, as a custom operator in an expression is.
pub(super) fn is_builtin_ordering_operator(parts: &[String]) -> bool {
    const ORDERING: &[&str] = &["<", ">", "~<~", "~>~"];
    match parts {
        [op] => ORDERING.contains(&op.as_str()),
        [schema, op] => schema == "pg_catalog" && ORDERING.contains(&op.as_str()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_sorted_for_binary_search() {
        assert!(CATALOG_RELATIONS.windows(2).all(|w| w[0] < w[1]));
        assert!(CATALOG_TYPES.windows(2).all(|w| w[0] < w[1]));
        assert!(CATALOG_RELATIONS.iter().all(|r| r.starts_with("pg_")));
    }

    #[test]
    fn catalog_names_resolve_to_pg_catalog_and_unknown_pg_names_to_both() {
        assert_eq!(
            resolve_unqualified("pg_stats", "public"),
            vec!["pg_catalog.pg_stats"]
        );
        assert_eq!(
            resolve_unqualified("pg_future_view", "sales"),
            vec!["pg_catalog.pg_future_view", "sales.pg_future_view"]
        );
        assert_eq!(resolve_unqualified("orders", "public"), vec!["public.orders"]);
        // A quoted upper-case name is not the catalog's.
        assert_eq!(resolve_unqualified("PG_STATS", "public"), vec!["public.PG_STATS"]);
    }
}
