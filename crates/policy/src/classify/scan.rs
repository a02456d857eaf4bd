//! A walk over every node of a parsed statement, collecting what hides
//! anywhere inside it: function calls, relations read, custom operators and
//! nested statements.
//!
//! Relations are scoped as PostgreSQL scopes common table expressions: a
//! one-part name that a `WITH` in scope defines is that CTE, not a table.
//! Without `RECURSIVE`, a CTE is in scope in its `WITH`'s main query and in
//! the CTEs after it (so in `WITH x AS (SELECT * FROM orders), orders AS
//! (...)`, `x` reads the table `orders`); with `RECURSIVE`, in every CTE of
//! the `WITH`, itself included. A subquery's `WITH` ends with the subquery.
//!
//! sqlparser's AST has hundreds of node types; a hand-written walker that
//! forgets one variant is a bypass. Instead the AST is fed through its
//! `Serialize` impl into a serializer that writes nothing and only watches
//! type, variant and field names. Every node is visited by construction, and
//! nothing is allocated except the names we keep.

use std::fmt;

use serde::ser::{self, Serialize};

/// What [`scan`] found in one statement.
#[derive(Debug, Default)]
pub(crate) struct Found {
    /// Function calls, normalised (`pg_catalog.pg_sleep`, `lower`).
    pub functions: Vec<String>,
    /// Relations read in FROM, JOIN, USING, `TABLE x` (not yet schema-resolved:
    /// unqualified names have one part), less CTEs in scope.
    pub relations: Vec<Vec<String>>,
    /// Variant names of statements nested inside the scanned one.
    pub nested: Vec<&'static str>,
    /// Variant name of the outermost statement, when a statement was scanned.
    pub top: Option<&'static str>,
    /// A `CASCADE` drop behaviour appears somewhere (`DROP ... CASCADE`,
    /// `ALTER TABLE ... DROP COLUMN x CASCADE`, `TRUNCATE ... CASCADE`):
    /// relations the statement does not name are affected too.
    pub cascades: bool,
}

/// Scans `node` (a `Statement` or any part of one).
pub(crate) fn scan<T: Serialize + ?Sized>(node: &T) -> Found {
    let mut s = Scanner::default();
    // The serializer never fails: every method returns Ok.
    let _ = node.serialize(&mut s);
    s.found
}

#[derive(Default)]
struct Scanner {
    found: Found,
    /// How many `Statement` nodes enclose the current position.
    statement_depth: usize,
    /// Name parts collected while an object name is being serialized.
    capture: Option<Vec<String>>,
    /// Set while an `Ident.value` string is expected.
    want_str: bool,
    last_str: Option<String>,
    /// Whether the first value serialized since the probe was reset was `None`.
    probe: Option<bool>,
    /// The last boolean serialized (for `With.recursive`).
    last_bool: Option<bool>,
    /// CTE names in scope: one frame per enclosing `Query`.
    ctes: Vec<Vec<String>>,
    /// Set while only the CTE names of a `RECURSIVE` list are being
    /// collected: nested lists need no collecting of their own then.
    collecting_ctes: bool,
}

impl Scanner {
    fn touch(&mut self, none: bool) {
        if self.probe.is_none() {
            self.probe = Some(none);
        }
    }

    /// Serializes `value` while collecting identifier parts; returns them.
    fn capture_name<T: Serialize + ?Sized>(&mut self, value: &T) -> Vec<String> {
        let outer = self.capture.replace(Vec::new());
        let _ = value.serialize(&mut *self);
        let parts = self.capture.take().unwrap_or_default();
        self.capture = outer;
        parts
    }

    /// Serializes `value` and reports whether it was `None`.
    fn is_none<T: Serialize + ?Sized>(&mut self, value: &T) -> bool {
        let outer = self.probe.take();
        let _ = value.serialize(&mut *self);
        let none = self.probe.unwrap_or(true);
        self.probe = outer.or(Some(none));
        none
    }

    /// Whether a one-part relation name is a CTE in scope.
    fn is_cte(&self, name: &str) -> bool {
        self.ctes.iter().any(|frame| frame.iter().any(|n| n == name))
    }

    /// The names a list of CTEs (`With.cte_tables`) defines, before it is
    /// walked: in a `RECURSIVE` list every CTE sees them all.
    fn cte_names<T: Serialize + ?Sized>(&self, value: &T) -> Vec<String> {
        if self.collecting_ctes {
            return Vec::new();
        }
        let mut s = Scanner {
            collecting_ctes: true,
            ctes: vec![Vec::new()],
            ..Scanner::default()
        };
        let _ = value.serialize(&mut s);
        s.ctes.pop().unwrap_or_default()
    }

    fn enter_variant(&mut self, enum_name: &'static str, variant: &'static str) -> bool {
        match enum_name {
            "Statement" => {
                if self.statement_depth > 0 {
                    self.found.nested.push(variant);
                } else if self.found.top.is_none() {
                    self.found.top = Some(variant);
                }
                self.statement_depth += 1;
                true
            }
            "BinaryOperator" | "UnaryOperator"
                if variant == "PGCustomBinaryOperator" || variant == "Custom" =>
            {
                self.found.functions.push("operator".to_owned());
                false
            }
            // Calls sqlparser reads into expressions of their own, which
            // PostgreSQL resolves as ordinary unqualified calls through the
            // search path (a user's `floor(int)` runs). The node does not
            // say which spelling was written: every one it stands for.
            // `FROM unnest(...)`: a call resolved through the search path
            // (a user's `unnest(int[])` beats the built-in's `anyarray`).
            "TableFactor" if variant == "UNNEST" => {
                self.found.functions.push("unnest".to_owned());
                false
            }
            "Expr" => {
                let names: &[&str] = match variant {
                    "Floor" => &["floor"],
                    "Ceil" => &["ceil", "ceiling"],
                    "Convert" => &["convert"],
                    "Substring" => &["substring", "substr"],
                    _ => &[],
                };
                self.found.functions.extend(names.iter().map(|n| (*n).to_owned()));
                false
            }
            _ => false,
        }
    }

    fn leave_variant(&mut self, was_statement: bool) {
        if was_statement {
            self.statement_depth -= 1;
        }
    }
}

/// Joins identifier parts (already folded as PostgreSQL folds them, see
/// [`crate::ident`]) into a dotted name.
pub(crate) fn join_parts(parts: &[String]) -> String {
    parts.join(".")
}

#[derive(Debug)]
pub(crate) struct Never;

impl fmt::Display for Never {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("scan cannot fail")
    }
}

impl std::error::Error for Never {}

impl ser::Error for Never {
    fn custom<T: fmt::Display>(_msg: T) -> Self {
        Never
    }
}

/// State of one struct, struct variant, sequence, tuple or map being serialized.
struct Compound<'a> {
    s: &'a mut Scanner,
    name: &'static str,
    variant: &'static str,
    statement: bool,
    /// For `Ident`: its value and whether it was quoted.
    ident: Option<String>,
    quoted: bool,
    /// For `TableFactor::Table` and `Table`: the name seen, and whether it has call arguments.
    table: Option<Vec<String>>,
    schema: Option<Vec<String>>,
    table_args: bool,
    /// For `With`: whether it is `WITH RECURSIVE`.
    recursive: bool,
    /// For `Cte`: the name it defines.
    alias: Option<String>,
}

impl<'a> Compound<'a> {
    fn new(s: &'a mut Scanner, name: &'static str, variant: &'static str, statement: bool) -> Self {
        if name == "Query" {
            // A query's WITH is in scope only within the query.
            s.ctes.push(Vec::new());
        }
        Compound {
            s,
            name,
            variant,
            statement,
            ident: None,
            quoted: false,
            table: None,
            schema: None,
            table_args: false,
            recursive: false,
            alias: None,
        }
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) {
        match (self.name, self.variant, key) {
            ("Ident", _, "value") if self.s.capture.is_some() => {
                self.s.want_str = true;
                let _ = value.serialize(&mut *self.s);
                self.s.want_str = false;
                self.ident = self.s.last_str.take();
            }
            ("Ident", _, "quote_style") if self.s.capture.is_some() => {
                self.quoted = !self.s.is_none(value);
            }
            ("Function", _, "name")
            | ("TableFactor", "Function", "name")
            | ("ObjectNamePartFunction", _, "name") => {
                let parts = self.s.capture_name(value);
                self.s.found.functions.push(join_parts(&parts));
            }
            ("TableFactor", "Table", "name") => self.table = Some(self.s.capture_name(value)),
            ("TableFactor", "Table", "args") => self.table_args = !self.s.is_none(value),
            ("Table", "", "table_name") => self.table = Some(self.s.capture_name(value)),
            ("Table", "", "schema_name") => self.schema = Some(self.s.capture_name(value)),
            ("With", _, "recursive") => {
                self.s.last_bool = None;
                let _ = value.serialize(&mut *self.s);
                self.recursive = self.s.last_bool == Some(true);
            }
            ("With", _, "cte_tables") => {
                if self.recursive {
                    let names = self.s.cte_names(value);
                    if let Some(frame) = self.s.ctes.last_mut() {
                        frame.extend(names);
                    }
                }
                let _ = value.serialize(&mut *self.s);
            }
            // The alias's name is its first identifier (column names follow).
            ("Cte", _, "alias") => self.alias = self.s.capture_name(value).into_iter().next(),
            _ => {
                let _ = value.serialize(&mut *self.s);
            }
        }
    }

    fn finish(self) {
        if self.name == "Query" {
            self.s.ctes.pop();
        } else if self.name == "Cte" {
            // In scope from the next CTE of its WITH on (and in the main query).
            if let (Some(alias), Some(frame)) = (self.alias, self.s.ctes.last_mut()) {
                frame.push(alias);
            }
        }
        if self.name == "Ident" {
            if let (Some(capture), Some(value)) = (self.s.capture.as_mut(), self.ident) {
                capture.push(crate::ident::fold(&value, self.quoted));
            }
        } else if let Some(mut table) = self.table {
            if self.table_args {
                // `FROM dblink(...)`, `FROM pg_read_file(...)`: a call, not a relation.
                self.s.found.functions.push(join_parts(&table));
            } else if !table.is_empty() {
                if let Some(mut schema) = self.schema {
                    schema.append(&mut table);
                    table = schema;
                }
                let cte = matches!(table.as_slice(), [one] if self.s.is_cte(one));
                if !cte {
                    self.s.found.relations.push(table);
                }
            }
        }
        self.s.leave_variant(self.statement);
    }
}

type Res = Result<(), Never>;

impl<'a> ser::Serializer for &'a mut Scanner {
    type Ok = ();
    type Error = Never;
    type SerializeSeq = Compound<'a>;
    type SerializeTuple = Compound<'a>;
    type SerializeTupleStruct = Compound<'a>;
    type SerializeTupleVariant = Compound<'a>;
    type SerializeMap = Compound<'a>;
    type SerializeStruct = Compound<'a>;
    type SerializeStructVariant = Compound<'a>;

    fn serialize_bool(self, v: bool) -> Res {
        self.touch(false);
        self.last_bool = Some(v);
        Ok(())
    }
    fn serialize_i8(self, _v: i8) -> Res {
        self.touch(false);
        Ok(())
    }
    fn serialize_i16(self, _v: i16) -> Res {
        self.touch(false);
        Ok(())
    }
    fn serialize_i32(self, _v: i32) -> Res {
        self.touch(false);
        Ok(())
    }
    fn serialize_i64(self, _v: i64) -> Res {
        self.touch(false);
        Ok(())
    }
    fn serialize_u8(self, _v: u8) -> Res {
        self.touch(false);
        Ok(())
    }
    fn serialize_u16(self, _v: u16) -> Res {
        self.touch(false);
        Ok(())
    }
    fn serialize_u32(self, _v: u32) -> Res {
        self.touch(false);
        Ok(())
    }
    fn serialize_u64(self, _v: u64) -> Res {
        self.touch(false);
        Ok(())
    }
    fn serialize_f32(self, _v: f32) -> Res {
        self.touch(false);
        Ok(())
    }
    fn serialize_f64(self, _v: f64) -> Res {
        self.touch(false);
        Ok(())
    }
    fn serialize_char(self, _v: char) -> Res {
        self.touch(false);
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Res {
        self.touch(false);
        if self.want_str {
            self.last_str = Some(v.to_owned());
        }
        Ok(())
    }
    fn serialize_bytes(self, _v: &[u8]) -> Res {
        self.touch(false);
        Ok(())
    }
    fn serialize_none(self) -> Res {
        self.touch(true);
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Res {
        self.touch(false);
        value.serialize(self)
    }
    fn serialize_unit(self) -> Res {
        self.touch(false);
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Res {
        self.touch(false);
        Ok(())
    }
    fn serialize_unit_variant(self, name: &'static str, _i: u32, variant: &'static str) -> Res {
        self.touch(false);
        if matches!(name, "DropBehavior" | "CascadeOption") && variant == "Cascade" {
            self.found.cascades = true;
        }
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _name: &'static str, value: &T) -> Res {
        self.touch(false);
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        _i: u32,
        variant: &'static str,
        value: &T,
    ) -> Res {
        self.touch(false);
        if name == "OrderBySort" && variant == "Using" {
            // `ORDER BY x USING OPERATOR(myschema.<<<)` calls the operator's
            // function, as a custom operator in an expression does.
            let parts = self.capture_name(value);
            if !super::catalog::is_builtin_ordering_operator(&parts) {
                self.found.functions.push("operator".to_owned());
            }
            return Ok(());
        }
        let statement = self.enter_variant(name, variant);
        let r = value.serialize(&mut *self);
        self.leave_variant(statement);
        r
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Compound<'a>, Never> {
        self.touch(false);
        Ok(Compound::new(self, "", "", false))
    }
    fn serialize_tuple(self, _len: usize) -> Result<Compound<'a>, Never> {
        self.touch(false);
        Ok(Compound::new(self, "", "", false))
    }
    fn serialize_tuple_struct(self, name: &'static str, _len: usize) -> Result<Compound<'a>, Never> {
        self.touch(false);
        Ok(Compound::new(self, name, "", false))
    }
    fn serialize_tuple_variant(
        self,
        name: &'static str,
        _i: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, Never> {
        self.touch(false);
        let statement = self.enter_variant(name, variant);
        Ok(Compound::new(self, name, variant, statement))
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Compound<'a>, Never> {
        self.touch(false);
        Ok(Compound::new(self, "", "", false))
    }
    fn serialize_struct(self, name: &'static str, _len: usize) -> Result<Compound<'a>, Never> {
        self.touch(false);
        Ok(Compound::new(self, name, "", false))
    }
    fn serialize_struct_variant(
        self,
        name: &'static str,
        _i: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, Never> {
        self.touch(false);
        let statement = self.enter_variant(name, variant);
        Ok(Compound::new(self, name, variant, statement))
    }
}

impl ser::SerializeSeq for Compound<'_> {
    type Ok = ();
    type Error = Never;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Res {
        value.serialize(&mut *self.s)
    }
    fn end(self) -> Res {
        self.finish();
        Ok(())
    }
}

impl ser::SerializeTuple for Compound<'_> {
    type Ok = ();
    type Error = Never;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Res {
        value.serialize(&mut *self.s)
    }
    fn end(self) -> Res {
        self.finish();
        Ok(())
    }
}

impl ser::SerializeTupleStruct for Compound<'_> {
    type Ok = ();
    type Error = Never;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Res {
        value.serialize(&mut *self.s)
    }
    fn end(self) -> Res {
        self.finish();
        Ok(())
    }
}

impl ser::SerializeTupleVariant for Compound<'_> {
    type Ok = ();
    type Error = Never;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Res {
        value.serialize(&mut *self.s)
    }
    fn end(self) -> Res {
        self.finish();
        Ok(())
    }
}

impl ser::SerializeMap for Compound<'_> {
    type Ok = ();
    type Error = Never;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Res {
        key.serialize(&mut *self.s)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Res {
        value.serialize(&mut *self.s)
    }
    fn end(self) -> Res {
        self.finish();
        Ok(())
    }
}

impl ser::SerializeStruct for Compound<'_> {
    type Ok = ();
    type Error = Never;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Res {
        self.field(key, value);
        Ok(())
    }
    fn end(self) -> Res {
        self.finish();
        Ok(())
    }
}

impl ser::SerializeStructVariant for Compound<'_> {
    type Ok = ();
    type Error = Never;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Res {
        self.field(key, value);
        Ok(())
    }
    fn end(self) -> Res {
        self.finish();
        Ok(())
    }
}
