//! SQL highlighting for the web UI: a statement as markup, with spans for
//! keywords, strings, quoted identifiers, numbers and comments, and a
//! visible marker for each character a reviewer could not otherwise see.
//!
//! The statement is an agent's: hostile input. The lexer here only cuts the
//! text into pieces and names each; every piece reaches the page through
//! maud's escaping, like any other value, so no text of a statement can
//! become markup whatever the lexer makes of it. It is a reading aid, not a
//! parser: it never drops or reorders a character, and what it cannot
//! classify is shown plain.

use maud::{Markup, html};

/// What a piece of a statement is, for its colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Keyword,
    /// A string: `'...'` or dollar-quoted `$tag$...$tag$`.
    String,
    /// A quoted identifier, `"..."`.
    Identifier,
    Number,
    Comment,
    Plain,
}

impl Kind {
    /// The CSS class of `pre.sql` spans (`static/app.css`).
    fn class(self) -> Option<&'static str> {
        match self {
            Kind::Keyword => Some("k"),
            Kind::String => Some("s"),
            Kind::Identifier => Some("i"),
            Kind::Number => Some("n"),
            Kind::Comment => Some("c"),
            Kind::Plain => None,
        }
    }
}

const KEYWORDS: &[&str] = &[
    "ALL",
    "ALTER",
    "ANALYZE",
    "AND",
    "AS",
    "BEGIN",
    "BETWEEN",
    "BY",
    "CALL",
    "CASCADE",
    "CASE",
    "COMMIT",
    "COPY",
    "CREATE",
    "DELETE",
    "DISTINCT",
    "DO",
    "DROP",
    "ELSE",
    "END",
    "EXISTS",
    "EXPLAIN",
    "FALSE",
    "FROM",
    "GRANT",
    "GROUP",
    "HAVING",
    "IN",
    "INNER",
    "INSERT",
    "INTO",
    "IS",
    "JOIN",
    "LEFT",
    "LIKE",
    "LIMIT",
    "MERGE",
    "NOT",
    "NULL",
    "ON",
    "OR",
    "ORDER",
    "OUTER",
    "RETURNING",
    "REVOKE",
    "RIGHT",
    "ROLLBACK",
    "SELECT",
    "SET",
    "TABLE",
    "THEN",
    "TRUE",
    "TRUNCATE",
    "UNION",
    "UPDATE",
    "USING",
    "VALUES",
    "WHEN",
    "WHERE",
    "WITH",
];

/// Characters a reviewer could not see but the database would: controls
/// other than newline, tab and carriage return, bidirectional overrides,
/// zero-width and other invisible format characters.
pub(crate) fn hidden(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t' && c != '\r')
        || matches!(c, '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
            | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}'
            | '\u{FFF9}'..='\u{FFFB}' | '\u{E0000}'..='\u{E007F}' | '\u{E0100}'..='\u{E01EF}')
}

/// True when the statement holds characters [`highlight`] marks.
pub fn has_hidden(text: &str) -> bool {
    text.chars().any(hidden)
}

/// Where the block comment opening at `start` ends: PostgreSQL nests them
/// (`/* a /* b */ c */` is one comment). Unterminated: the end of the text.
fn block_comment_end(sql: &str, start: usize) -> usize {
    let bytes = sql.as_bytes();
    let (mut depth, mut j) = (0usize, start);
    while j + 1 < bytes.len() {
        match (bytes[j], bytes[j + 1]) {
            (b'/', b'*') => {
                depth += 1;
                j += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                j += 2;
                if depth == 0 {
                    return j;
                }
            }
            _ => j += 1,
        }
    }
    sql.len()
}

/// Where the escape string (`E'...'`) whose quote is at `quote` ends: a
/// backslash escapes the next character, a doubled quote stays inside.
fn escape_string_end(sql: &str, quote: usize) -> usize {
    let bytes = sql.as_bytes();
    let mut j = quote + 1;
    while j < bytes.len() {
        match bytes[j] {
            b'\\' => j += 2,
            b'\'' if bytes.get(j + 1) == Some(&b'\'') => j += 2,
            b'\'' => return j + 1,
            _ => j += 1,
        }
    }
    sql.len()
}

/// Where a `$tag$` opening at `start` ends, if it is one.
fn dollar_tag(s: &str, start: usize) -> Option<usize> {
    let rest = &s[start + 1..];
    let end = rest.find('$')?;
    let tag = &rest[..end];
    let valid = tag.chars().all(|c| c.is_alphanumeric() || c == '_')
        && !tag.starts_with(|c: char| c.is_ascii_digit());
    valid.then_some(start + 1 + end + 1)
}

/// Where the quoted string or identifier opening at `start` ends; a doubled
/// quote stays inside. Unterminated: the end of the text.
fn quoted_end(sql: &str, start: usize, quote: char) -> usize {
    let mut j = start + 1;
    loop {
        match sql[j..].find(quote) {
            None => return sql.len(),
            Some(n) => {
                j += n + 1;
                if sql[j..].starts_with(quote) {
                    j += 1;
                } else {
                    return j;
                }
            }
        }
    }
}

/// Cuts `sql` into named pieces that, put back together, are `sql`.
fn tokens(sql: &str) -> Vec<(Kind, &str)> {
    let mut out: Vec<(Kind, &str)> = Vec::new();
    let mut i = 0;
    while i < sql.len() {
        let rest = &sql[i..];
        let Some(c) = rest.chars().next() else { break };
        let (kind, end) = if rest.starts_with("--") {
            // PostgreSQL ends a line comment at a carriage return too.
            (
                Kind::Comment,
                rest.find(['\n', '\r']).map_or(sql.len(), |n| i + n),
            )
        } else if rest.starts_with("/*") {
            (Kind::Comment, block_comment_end(sql, i))
        } else if matches!(c, 'E' | 'e')
            && rest[1..].starts_with('\'')
            && !sql[..i].ends_with(|p: char| p.is_alphanumeric() || p == '_' || p == '$')
        {
            (Kind::String, escape_string_end(sql, i + 1))
        } else if c == '\'' {
            (Kind::String, quoted_end(sql, i, c))
        } else if c == '"' {
            (Kind::Identifier, quoted_end(sql, i, c))
        } else if let Some(open) = (c == '$').then(|| dollar_tag(sql, i)).flatten() {
            let tag = &sql[i..open];
            (
                Kind::String,
                sql[open..].find(tag).map_or(sql.len(), |n| open + n + tag.len()),
            )
        } else if c.is_ascii_digit() {
            let end = rest
                .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '.' || ch == '_'))
                .map_or(sql.len(), |n| i + n);
            (Kind::Number, end)
        } else if c.is_alphabetic() || c == '_' {
            let end = rest
                .find(|ch: char| !(ch.is_alphanumeric() || ch == '_' || ch == '$'))
                .map_or(sql.len(), |n| i + n);
            let word = &sql[i..end];
            let keyword = KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(word));
            (if keyword { Kind::Keyword } else { Kind::Plain }, end)
        } else {
            (Kind::Plain, i + c.len_utf8())
        };
        // Every branch moves on by at least one character.
        let end = end.max(i + c.len_utf8());
        match out.last_mut() {
            // Runs of plain text become one piece.
            Some((Kind::Plain, text)) if kind == Kind::Plain => {
                *text = &sql[i - text.len()..end];
            }
            _ => out.push((kind, &sql[i..end])),
        }
        i = end;
    }
    out
}

/// `text` with each hidden character replaced by a visible `U+XXXX` marker.
fn visible(text: &str) -> Markup {
    let mut runs: Vec<Result<&str, char>> = Vec::new();
    let mut start = 0;
    for (at, c) in text.char_indices() {
        if hidden(c) {
            if start < at {
                runs.push(Ok(&text[start..at]));
            }
            runs.push(Err(c));
            start = at + c.len_utf8();
        }
    }
    if start < text.len() {
        runs.push(Ok(&text[start..]));
    }
    html! {
        @for run in runs {
            @match run {
                Ok(shown) => (shown),
                Err(c) => span.hidden title="invisible character" { (format!("U+{:04X}", u32::from(c))) },
            }
        }
    }
}

/// The statement as markup for `pre.sql`. Every character of `sql` is in
/// the output, in order, escaped; hidden ones as markers.
pub fn highlight(sql: &str) -> Markup {
    html! {
        @for (kind, text) in tokens(sql) {
            @if let Some(class) = kind.class() {
                span.(class) { (visible(text)) }
            } @else {
                (visible(text))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn block_comments_nest_and_escape_strings_escape_as_postgresql_has_them() {
        let t = tokens("DELETE FROM o WHERE id > 0 /* keep: /* */ AND tenant = 7 -- x */ ;");
        assert!(
            t.contains(&(Kind::Comment, "/* keep: /* */ AND tenant = 7 -- x */")),
            "{t:?}"
        );
        let t = tokens("SELECT 1 WHERE n <> E'\\'' --' AND tenant = 7\nOR 1");
        assert!(t.contains(&(Kind::String, "E'\\''")), "{t:?}");
        assert!(t.contains(&(Kind::Comment, "--' AND tenant = 7")), "{t:?}");
        // A name ending in e is no escape string.
        let t = tokens("SELECT note'x'");
        assert!(t.contains(&(Kind::String, "'x'")), "{t:?}");
    }

    #[test]
    fn a_line_comment_ends_at_a_carriage_return() {
        let t = tokens("SELECT 1 -- note\rDELETE FROM t");
        assert!(t.contains(&(Kind::Comment, "-- note")), "{t:?}");
        assert!(t.iter().any(|&(k, w)| k == Kind::Keyword && w == "DELETE"));
    }

    /// The only markup the highlighter may write.
    const OUR_TAGS: &[&str] = &[
        "<span class=\"k\">",
        "<span class=\"s\">",
        "<span class=\"i\">",
        "<span class=\"n\">",
        "<span class=\"c\">",
        "<span class=\"hidden\" title=\"invisible character\">",
        "</span>",
    ];
    const ENTITIES: &[(&str, char)] = &[("&amp;", '&'), ("&lt;", '<'), ("&gt;", '>'), ("&quot;", '"')];

    /// Reads `markup` as a browser would, allowing only [`OUR_TAGS`] and
    /// [`ENTITIES`]: returns the text shown, or what is not ours.
    fn shown_text(markup: &str) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = markup;
        let mut open = 0usize;
        while let Some(c) = rest.chars().next() {
            if c == '<' {
                let tag = OUR_TAGS
                    .iter()
                    .find(|t| rest.starts_with(**t))
                    .ok_or_else(|| format!("markup that is not ours: {rest:?}"))?;
                if tag.starts_with("</") {
                    open = open.checked_sub(1).ok_or("a </span> never opened")?;
                } else {
                    open += 1;
                }
                rest = &rest[tag.len()..];
            } else if c == '&' {
                let (entity, ch) = ENTITIES
                    .iter()
                    .find(|(e, _)| rest.starts_with(e))
                    .ok_or_else(|| format!("a bare & (an entity not ours): {rest:?}"))?;
                out.push(*ch);
                rest = &rest[entity.len()..];
            } else if c == '>' || c == '"' {
                return Err(format!("an unescaped {c:?}: {rest:?}"));
            } else {
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        if open != 0 {
            return Err(format!("{open} span(s) left open"));
        }
        Ok(out)
    }

    /// The statement as a reader should see it: hidden characters as markers.
    fn as_shown(sql: &str) -> String {
        sql.chars()
            .map(|c| {
                if hidden(c) {
                    format!("U+{:04X}", u32::from(c))
                } else {
                    c.to_string()
                }
            })
            .collect()
    }

    fn check(sql: &str) {
        let markup = highlight(sql).into_string();
        match shown_text(&markup) {
            Ok(text) => assert_eq!(text, as_shown(sql), "{markup}"),
            Err(e) => panic!("{e}\nstatement: {sql:?}\nmarkup: {markup}"),
        }
    }

    #[test]
    fn hostile_statements_stay_text() {
        let cases = [
            // Closing the page's own <pre> and opening a script, everywhere a
            // lexer might treat text differently.
            "DELETE FROM orders WHERE id = 6 -- </pre><script>alert(1)</script>",
            "DELETE FROM t WHERE a = '</pre><script>alert(1)</script>'",
            "DELETE FROM \"</pre><script>alert(1)</script>\" WHERE true",
            "DELETE FROM t /* </code></pre><script>alert(1)</script> */ WHERE x",
            "SELECT $q$</pre><script>alert(1)</script>$q$",
            "SELECT 1</pre><script>alert(1)</script>",
            "SELECT 1e</pre><img src=x onerror=alert(1)>",
            // Breaking out of an attribute value with either quote.
            "UPDATE t SET \"a\"\" onmouseover=\"alert(1)\" = 1",
            "UPDATE t SET a = 'x'' onfocus=''alert(1)' WHERE \" autofocus x=\"",
            "SELECT \" class=\"k\" title=\"",
            // Entities written by the agent must stay text.
            "SELECT '&lt;script&gt;' AS \"&amp;\", 1 && 2, '&#60;', &quot;",
            // Unterminated strings, identifiers, comments and dollar quotes.
            "SELECT '<b>unterminated",
            "SELECT \"<b>unterminated",
            "/* <b>unterminated",
            "SELECT $body$ <img src=x onerror=alert(1)>",
            "SELECT $1, $$<i>$$, $2$ <u> $",
            // Invisible characters inside each kind of piece.
            "SELECT '\u{202E}<b>' -- \u{200B}</pre>\nDELETE\u{2066}\"x\u{0007}\"",
            "\u{FEFF}",
            "",
        ];
        for sql in cases {
            check(sql);
        }
    }

    #[test]
    fn pieces_are_coloured() {
        assert_eq!(
            highlight("DELETE x").into_string(),
            "<span class=\"k\">DELETE</span> x"
        );
        assert_eq!(
            highlight("select 'it''s', \"Odd\"\"Name\", 1.5 -- why\nfrom").into_string(),
            "<span class=\"k\">select</span> <span class=\"s\">'it''s'</span>, \
             <span class=\"i\">&quot;Odd&quot;&quot;Name&quot;</span>, <span class=\"n\">1.5</span> \
             <span class=\"c\">-- why</span>\n<span class=\"k\">from</span>"
        );
        assert_eq!(
            highlight("$a$ x $a$ y").into_string(),
            "<span class=\"s\">$a$ x $a$</span> y"
        );
    }

    #[test]
    fn invisible_characters_are_shown() {
        let sql = "SELECT 1 -- \u{202E}gnp.exe\nDELETE\u{200B}";
        assert!(has_hidden(sql));
        let markup = highlight(sql).into_string();
        assert!(markup.contains("U+202E") && markup.contains("U+200B"), "{markup}");
        assert!(!has_hidden("SELECT 1\n\tFROM t\r\n"));
        check(sql);
    }

    proptest! {
        /// Whatever the agent sends, only our spans come out, and the
        /// reader sees every character.
        #[test]
        fn any_statement_stays_text(sql in "[-a-zA-Z0-9_ \n$'\"/*<>&;=().\u{202E}\u{200B}\u{0}é]{0,64}") {
            check(&sql);
        }

        #[test]
        fn any_unicode_stays_text(sql in any::<String>()) {
            check(&sql);
        }
    }
}
