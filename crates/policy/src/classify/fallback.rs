//! Statements PostgreSQL reads and sqlparser does not, recognised from the
//! tokens where PostgreSQL's grammar for them is narrow enough to be sure of
//! what they do.
//!
//! When the parser refuses a text as a whole, its statements are read one by
//! one (PostgreSQL ends a statement at every `;` outside a string, quoted
//! identifier or comment, which the scanner check in `lexing` has already
//! matched): a statement sqlparser reads is classified as usual, and one it
//! does not may still be one of these shapes:
//!
//! * `MOVE [direction] [count] [FROM | IN] cursor`: a CURSOR, as FETCH is;
//!   only words, numbers and signs may follow `MOVE`.
//! * `DO [LANGUAGE l] 'code'` (any string form): a DO block, opaque as DO
//!   always is (a policy must allow `DO` by name).
//! * `ALTER TYPE name ADD ATTRIBUTE ... | DROP ATTRIBUTE ...`, a list of
//!   them: an ALTER that names no table, like the ALTER TYPE forms the
//!   parser reads (so it meets table-scoped rules as unresolved). Only type
//!   names, words and numbers may follow; no `ALTER ATTRIBUTE` (a type
//!   change of typed tables' columns may run casts) and no `CASCADE` (which
//!   reaches typed tables, filling their rows with the new attribute's
//!   default, which a domain may compute with any function). Without
//!   `CASCADE` PostgreSQL refuses to alter a type that typed tables use.
//! * `CREATE DOMAIN name [AS] type [NOT NULL | NULL | COLLATE c]`: a CREATE;
//!   a domain with `DEFAULT` or `CHECK` stays unparsed (its expressions are
//!   not read here).
//! * `ALTER SEQUENCE [IF EXISTS] name options`: an ALTER of that sequence
//!   (not of the table whose ids it makes: a rule on the table does not
//!   cover its sequences, as with `setval`); only words, numbers and signs
//!   may follow (`OWNED BY t.c` included).
//! * `ALTER TABLE [IF EXISTS] [ONLY] name ALTER [COLUMN] column ADD
//!   GENERATED {ALWAYS | BY DEFAULT} AS IDENTITY [(sequence options)]`
//!   (how pg_dump writes an identity column): an ALTER of that table. It
//!   makes the column's sequence and runs no expression; only words,
//!   numbers and signs may stand in the options.
//! * `BEGIN [WORK | TRANSACTION] modes` and `START TRANSACTION modes`, where
//!   the parser does not read a mode (`DEFERRABLE`): transaction control,
//!   or a setting with `READ WRITE` (as the parser's own reading has it).
//!   Only transaction modes may follow.
//! * `SET CONSTRAINTS {ALL | name, ...} {DEFERRED | IMMEDIATE}`: a SET.
//!
//! Anything else keeps the text unparsed, with the policy's `unparsed`
//! action. A shape is matched on whole statements, never on a prefix.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, TokenWithSpan};

use super::{Classification, Classifier, ClassifyContext, Effect, RECURSION_LIMIT, ident_name};
use crate::kind::Kind;

/// Classifies the text of `tokens` statement by statement, or `None` when
/// some statement is neither read by the parser nor one of the shapes above.
pub(super) fn by_statement(tokens: Vec<TokenWithSpan>, ctx: &ClassifyContext<'_>) -> Option<Classification> {
    let mut out = Classification::default();
    let mut c = Classifier {
        ctx,
        out: &mut out,
        session: ctx.session,
        top_variant: "",
        cascades: false,
    };
    for statement in split(tokens) {
        let words: Vec<Token> = statement
            .iter()
            .map(|t| t.token.clone())
            .filter(|t| !matches!(t, Token::Whitespace(_)))
            .collect();
        if words.is_empty() {
            continue;
        }
        let parsed = Parser::new(&PostgreSqlDialect {})
            .with_recursion_limit(RECURSION_LIMIT)
            .with_tokens_with_locations(statement)
            .parse_statements();
        match parsed {
            Ok(statements) => {
                for s in &statements {
                    c.statement(s);
                }
            }
            Err(_) => {
                let effect = recognise(&words, &c)?;
                c.push(effect);
            }
        }
        c.settle();
    }
    Some(out)
}

/// The statements of a text: its tokens between top-level `;`s.
fn split(tokens: Vec<TokenWithSpan>) -> Vec<Vec<TokenWithSpan>> {
    let mut statements = vec![Vec::new()];
    for t in tokens {
        if t.token == Token::SemiColon {
            statements.push(Vec::new());
        } else if let Some(last) = statements.last_mut() {
            last.push(t);
        }
    }
    statements
}

/// An unquoted word, upper-cased (a quoted one is a name, never a keyword).
fn keyword(t: Option<&Token>) -> Option<String> {
    match t {
        Some(Token::Word(w)) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
        _ => None,
    }
}

fn is_word(t: &Token) -> bool {
    matches!(t, Token::Word(_))
}

fn is_string(t: &Token) -> bool {
    matches!(
        t,
        Token::SingleQuotedString(_) | Token::DollarQuotedString(_) | Token::EscapedStringLiteral(_)
    )
}

/// Words, numbers and signs: what MOVE and ALTER SEQUENCE take.
fn is_plain(t: &Token) -> bool {
    matches!(
        t,
        Token::Word(_) | Token::Number(..) | Token::Minus | Token::Plus | Token::Period
    )
}

/// What a type name or a column list may hold: words, numbers, `.`, `,`,
/// parentheses (`numeric(10, 2)`) and brackets (`text[]`).
fn is_type_token(t: &Token) -> bool {
    matches!(
        t,
        Token::Word(_)
            | Token::Number(..)
            | Token::Period
            | Token::Comma
            | Token::LParen
            | Token::RParen
            | Token::LBracket
            | Token::RBracket
    )
}

/// The effect of one statement the parser refused, if it has a shape above.
fn recognise(t: &[Token], c: &Classifier<'_, '_>) -> Option<Effect> {
    let first = keyword(t.first())?;
    let second = keyword(t.get(1));
    match (first.as_str(), second.as_deref()) {
        ("MOVE", _) => {
            let rest = &t[1..];
            (!rest.is_empty() && rest.iter().all(is_plain) && rest.last().is_some_and(is_word))
                .then(|| Effect::new(Kind::Cursor))
        }
        ("DO", _) => {
            let rest = &t[1..];
            let language = |i: usize| {
                keyword(rest.get(i)).as_deref() == Some("LANGUAGE")
                    && rest.get(i + 1).is_some_and(|l| is_word(l) || is_string(l))
            };
            let block = match rest.len() {
                1 => is_string(&rest[0]),
                3 => (language(0) && is_string(&rest[2])) || (is_string(&rest[0]) && language(1)),
                _ => false,
            };
            block.then(|| Effect::new(Kind::Do))
        }
        ("ALTER", Some("TYPE")) => alter_type_attributes(&t[2..]).then(|| Effect::new(Kind::Alter)),
        ("CREATE", Some("DOMAIN")) => {
            let rest = &t[2..];
            let plain = rest.iter().all(is_type_token)
                && !rest.iter().any(|w| {
                    matches!(
                        keyword(Some(w)).as_deref(),
                        Some("DEFAULT" | "CHECK" | "CONSTRAINT")
                    )
                });
            (rest.len() >= 2 && is_word(&rest[0]) && plain).then(|| Effect::new(Kind::Create))
        }
        ("BEGIN", _) => {
            let rest = match second.as_deref() {
                Some("WORK" | "TRANSACTION") => &t[2..],
                _ => &t[1..],
            };
            transaction_modes(rest).map(transaction_effect)
        }
        ("START", Some("TRANSACTION")) => transaction_modes(&t[2..]).map(transaction_effect),
        ("SET", Some("CONSTRAINTS")) => {
            let rest = &t[2..];
            let (names, when) = rest.split_at(rest.len().checked_sub(1)?);
            let names_ok = match names {
                [only] => keyword(Some(only)).as_deref() == Some("ALL") || is_word(only),
                _ => {
                    !names.is_empty()
                        && names
                            .iter()
                            .all(|t| matches!(t, Token::Word(_) | Token::Comma | Token::Period))
                }
            };
            (names_ok && matches!(keyword(when.first()).as_deref(), Some("DEFERRED" | "IMMEDIATE")))
                .then(|| Effect::new(Kind::Set))
        }
        ("ALTER", Some("TABLE")) => {
            let table = identity_column_table(&t[2..])?;
            Some(Effect::on(Kind::Alter, c.qualify(&table)))
        }
        ("ALTER", Some("SEQUENCE")) => {
            let mut rest = &t[2..];
            if keyword(rest.first()).as_deref() == Some("IF")
                && keyword(rest.get(1)).as_deref() == Some("EXISTS")
            {
                rest = &rest[2..];
            }
            if rest.len() < 2 || !rest.iter().all(is_plain) {
                return None;
            }
            let name = name_at(rest)?;
            Some(Effect::on(Kind::Alter, c.qualify(&name)))
        }
        _ => None,
    }
}

/// A list of transaction modes (`ISOLATION LEVEL l`, `READ ONLY`, `READ
/// WRITE`, `[NOT] DEFERRABLE`, separated by commas or not), the whole of
/// `t`: whether one is `READ WRITE`. `None` for anything else.
fn transaction_modes(t: &[Token]) -> Option<bool> {
    let words: Vec<String> = t
        .iter()
        .filter(|t| **t != Token::Comma)
        .map(|t| match t {
            Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let mut read_write = false;
    let mut rest = words.as_slice();
    while !rest.is_empty() {
        rest = match rest {
            ["ISOLATION", "LEVEL", "SERIALIZABLE", more @ ..]
            | ["ISOLATION", "LEVEL", "REPEATABLE", "READ", more @ ..]
            | [
                "ISOLATION",
                "LEVEL",
                "READ",
                "COMMITTED" | "UNCOMMITTED",
                more @ ..,
            ]
            | ["READ", "ONLY", more @ ..]
            | ["NOT", "DEFERRABLE", more @ ..]
            | ["DEFERRABLE", more @ ..] => more,
            ["READ", "WRITE", more @ ..] => {
                read_write = true;
                more
            }
            _ => return None,
        };
    }
    Some(read_write)
}

/// `BEGIN READ WRITE` undoes a default of `default_transaction_read_only`:
/// a setting, as the parser's reading has it; other modes are control.
fn transaction_effect(read_write: bool) -> Effect {
    Effect::new(if read_write { Kind::Set } else { Kind::Transaction })
}

/// `[IF EXISTS] [ONLY] table ALTER [COLUMN] column ADD GENERATED {ALWAYS |
/// BY DEFAULT} AS IDENTITY [(options)]`, the whole of it: the table's name.
fn identity_column_table(mut t: &[Token]) -> Option<Vec<String>> {
    let word = |t: &[Token], i: usize| keyword(t.get(i));
    if word(t, 0).as_deref() == Some("IF") && word(t, 1).as_deref() == Some("EXISTS") {
        t = &t[2..];
    }
    if word(t, 0).as_deref() == Some("ONLY") {
        t = &t[1..];
    }
    let table = name_at(t)?;
    t = &t[table.len() * 2 - 1..];
    if word(t, 0).as_deref() != Some("ALTER") {
        return None;
    }
    t = &t[1..];
    if word(t, 0).as_deref() == Some("COLUMN") {
        t = &t[1..];
    }
    if !t.first().is_some_and(is_word) {
        return None;
    }
    t = &t[1..];
    let words: Vec<Option<String>> = (0..6).map(|i| word(t, i)).collect();
    let rest = match words.iter().map(|w| w.as_deref()).collect::<Vec<_>>().as_slice() {
        [
            Some("ADD"),
            Some("GENERATED"),
            Some("ALWAYS"),
            Some("AS"),
            Some("IDENTITY"),
            _,
        ] => &t[5..],
        [
            Some("ADD"),
            Some("GENERATED"),
            Some("BY"),
            Some("DEFAULT"),
            Some("AS"),
            Some("IDENTITY"),
        ] => &t[6..],
        _ => return None,
    };
    let options_ok = match rest {
        [] => true,
        [Token::LParen, options @ .., Token::RParen] => options.iter().all(is_plain),
        _ => false,
    };
    options_ok.then_some(table)
}

/// `name ADD ATTRIBUTE ... [, DROP ATTRIBUTE ...]`: each action adds or
/// drops an attribute, and only type tokens follow.
fn alter_type_attributes(t: &[Token]) -> bool {
    let Some(name_len) = name_at(t).map(|parts| parts.len() * 2 - 1) else {
        return false;
    };
    let actions = &t[name_len..];
    if actions.is_empty() || !actions.iter().all(is_type_token) {
        return false;
    }
    let mut depth = 0usize;
    let mut start = true;
    for (i, token) in actions.iter().enumerate() {
        if start {
            let verb = keyword(Some(token));
            let what = keyword(actions.get(i + 1));
            if !matches!(verb.as_deref(), Some("ADD" | "DROP")) || what.as_deref() != Some("ATTRIBUTE") {
                return false;
            }
            start = false;
        }
        match token {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            Token::Comma if depth == 0 => start = true,
            _ => {}
        }
        // CASCADE reaches typed tables (their rows get the new column's
        // default, which a domain may compute with any function).
        if matches!(
            keyword(Some(token)).as_deref(),
            Some("ALTER" | "SET" | "USING" | "DEFAULT" | "CASCADE")
        ) {
            return false;
        }
    }
    !start
}

/// The dotted name at the start of `t` (`a`, `s.a`), its parts folded as
/// PostgreSQL folds them.
fn name_at(t: &[Token]) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut i = 0;
    loop {
        let Some(Token::Word(w)) = t.get(i) else {
            return None;
        };
        parts.push(ident_name(&sqlparser::ast::Ident {
            value: w.value.clone(),
            quote_style: w.quote_style,
            span: sqlparser::tokenizer::Span::empty(),
        }));
        if t.get(i + 1) != Some(&Token::Period) {
            return Some(parts);
        }
        i += 2;
    }
}
