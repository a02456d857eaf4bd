//! Where strings, comments and statements begin and end, as PostgreSQL's
//! own scanner (`scan.l`) decides, checked against the SQL parser's view.
//!
//! The classifier judges what sqlparser parses. Where sqlparser's tokenizer
//! and PostgreSQL's scanner disagree on where a string literal, a quoted
//! identifier or a comment starts or ends, the proxy judges one statement
//! and PostgreSQL runs another: a dollar-quote tag with a non-ASCII
//! character (`$€$`), or an operator followed by `--` or `/*` (PostgreSQL
//! ends the operator there and the rest of the line is a comment; sqlparser
//! reads on into what it takes for a string) both hid a DELETE. So every
//! text is read twice: once by this scanner, which follows PostgreSQL's
//! rules for the tokens that hide text (strings of every prefix, dollar
//! quotes, quoted identifiers, nested comments, operators, identifiers with
//! `$`) under `standard_conforming_strings = on` and UTF-8, and once by
//! sqlparser's tokenizer. Both are reduced to the same "shape": the text
//! without whitespace, each string, quoted identifier or comment replaced by
//! one marker. Different shapes mean the two read different statements; the
//! text is then treated as unparsed, which a policy never allows. Pure.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer, TokenizerError, Whitespace};

/// Stands for one string literal, quoted identifier or comment.
const OPAQUE: char = '\u{1}';

/// sqlparser's reading of some text, checked against PostgreSQL's.
pub(super) enum Reading {
    /// Both read the text alike (or PostgreSQL would refuse it, an
    /// unterminated string or comment: nothing runs either way): the
    /// tokens, for the parser, so the text is tokenized once.
    Agreed(Vec<TokenWithSpan>),
    /// sqlparser's tokenizer refused the text.
    Refused(TokenizerError),
    /// They read it differently: why.
    Disagreed(String),
}

/// Tokenizes `sql` as the parser does and checks that PostgreSQL's scanner
/// reads it alike.
pub(super) fn read(sql: &str) -> Reading {
    let tokens = match Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize_with_location() {
        Ok(tokens) => tokens,
        Err(e) => return Reading::Refused(e),
    };
    let chars: Vec<char> = sql.chars().collect();
    let Some(postgres) = postgres_shape(&chars) else {
        return Reading::Agreed(tokens);
    };
    let why = match parser_shape(&chars, &tokens) {
        Ok(ours) if ours == postgres => return Reading::Agreed(tokens),
        Ok(_) => {
            "PostgreSQL would read this text differently from Airlock's parser (where a string, \
             identifier or comment begins or ends)"
        }
        // Never assume agreement that could not be checked.
        Err(Refusal::Spans) => "Airlock could not check how PostgreSQL reads this text",
        Err(Refusal::CopyData) => {
            "text after COPY ... FROM STDIN in the same query string is SQL to PostgreSQL, not COPY data"
        }
    };
    Reading::Disagreed(why.into())
}

/// `None` when both read the text alike; otherwise why not.
#[cfg(test)]
pub(super) fn disagreement(sql: &str) -> Option<String> {
    match read(sql) {
        Reading::Disagreed(why) => Some(why),
        Reading::Agreed(_) | Reading::Refused(_) => None,
    }
}

enum Refusal {
    Spans,
    CopyData,
}

fn parser_shape(chars: &[char], tokens: &[TokenWithSpan]) -> Result<String, Refusal> {
    // Each token's own source text (not its Display, which normalises
    // `!=` to `<>` and the like), by its span: lines from 1, columns from 1
    // in characters, the end just past the token.
    let mut line_starts = vec![0usize];
    line_starts.extend(
        chars
            .iter()
            .enumerate()
            .filter(|(_, c)| **c == '\n')
            .map(|(i, _)| i + 1),
    );
    let offset = |l: &sqlparser::tokenizer::Location| -> Option<usize> {
        let line = usize::try_from(l.line).ok()?.checked_sub(1)?;
        let column = usize::try_from(l.column).ok()?.checked_sub(1)?;
        Some(line_starts.get(line)? + column)
    };
    let mut shape = String::with_capacity(chars.len());
    for t in tokens {
        match &t.token {
            Token::Whitespace(Whitespace::SingleLineComment { .. } | Whitespace::MultiLineComment(_)) => {
                shape.push(OPAQUE)
            }
            Token::Whitespace(_) | Token::EOF => {}
            Token::CopyData { .. } => return Err(Refusal::CopyData),
            Token::Word(w) if w.quote_style.is_some() => shape.push(OPAQUE),
            Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::QuoteDelimitedStringLiteral(_)
            | Token::NationalQuoteDelimitedStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_) => shape.push(OPAQUE),
            _ => {
                let (Some(start), Some(end)) = (offset(&t.span.start), offset(&t.span.end)) else {
                    return Err(Refusal::Spans);
                };
                let text = chars.get(start..end).ok_or(Refusal::Spans)?;
                shape.extend(text.iter().filter(|c| !is_space(**c)));
            }
        }
    }
    Ok(shape)
}

/// PostgreSQL's whitespace (`space` in scan.l).
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\u{b}' | '\u{c}')
}

fn ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || !c.is_ascii()
}

fn ident_cont(c: char) -> bool {
    ident_start(c) || c.is_ascii_digit() || c == '$'
}

fn op_char(c: char) -> bool {
    "~!@#^&|`?+-*/%<>=".contains(c)
}

/// The shape of `sql` as PostgreSQL's scanner reads it; `None` if it would
/// refuse it (an unterminated string, quoted identifier or comment).
fn postgres_shape(s: &[char]) -> Option<String> {
    let at = |i: usize| s.get(i).copied();
    let mut shape = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if is_space(c) {
            i += 1;
        } else if c == '-' && at(i + 1) == Some('-') {
            while i < s.len() && s[i] != '\n' && s[i] != '\r' {
                i += 1;
            }
            shape.push(OPAQUE);
        } else if c == '/' && at(i + 1) == Some('*') {
            i = block_comment(s, i)?;
            shape.push(OPAQUE);
        } else if c == '\'' {
            i = string(s, i, false, &mut shape)?;
        } else if matches!(c, 'e' | 'E') && at(i + 1) == Some('\'') {
            i = string(s, i + 1, true, &mut shape)?;
        } else if matches!(c, 'b' | 'B' | 'x' | 'X' | 'n' | 'N') && at(i + 1) == Some('\'') {
            i = string(s, i + 1, false, &mut shape)?;
        } else if matches!(c, 'u' | 'U') && at(i + 1) == Some('&') && at(i + 2) == Some('\'') {
            i = string(s, i + 2, false, &mut shape)?;
        } else if matches!(c, 'u' | 'U') && at(i + 1) == Some('&') && at(i + 2) == Some('"') {
            i = quoted_identifier(s, i + 2)?;
            shape.push(OPAQUE);
        } else if c == '"' {
            i = quoted_identifier(s, i)?;
            shape.push(OPAQUE);
        } else if c == '$' {
            if let Some(end) = dollar_quote(s, i) {
                i = end?;
                shape.push(OPAQUE);
            } else {
                // A parameter ($1) or a lone dollar: code.
                shape.push('$');
                i += 1;
                while i < s.len() && s[i].is_ascii_digit() {
                    shape.push(s[i]);
                    i += 1;
                }
            }
        } else if ident_start(c) {
            while i < s.len() && ident_cont(s[i]) {
                shape.push(s[i]);
                i += 1;
            }
        } else if op_char(c) {
            // An operator ends where `--` or `/*` begins inside it.
            let start = i;
            while i < s.len() && op_char(s[i]) {
                if i > start
                    && ((s[i] == '-' && at(i + 1) == Some('-')) || (s[i] == '/' && at(i + 1) == Some('*')))
                {
                    break;
                }
                shape.push(s[i]);
                i += 1;
            }
        } else {
            // Digits, punctuation, anything else: code, one at a time.
            shape.push(c);
            i += 1;
        }
    }
    Some(shape)
}

/// A `/* */` comment, nested as PostgreSQL nests them; the index after it.
fn block_comment(s: &[char], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    while i < s.len() {
        if s[i] == '/' && s.get(i + 1) == Some(&'*') {
            depth += 1;
            i += 2;
        } else if s[i] == '*' && s.get(i + 1) == Some(&'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return Some(i);
            }
        } else {
            i += 1;
        }
    }
    None
}

/// A quoted string from its opening quote at `i` (`escapes`: an E string,
/// where a backslash escapes the next character), with PostgreSQL's
/// continuation: another quoted segment after [`continuation`] is the same
/// literal, read the same way. Each segment, and each comment between them,
/// is one marker (the parser gives each its own token). The index after the
/// last segment.
fn string(s: &[char], mut i: usize, escapes: bool, shape: &mut String) -> Option<usize> {
    loop {
        // s[i] is the opening quote.
        i += 1;
        loop {
            match s.get(i)? {
                '\\' if escapes => i += 2,
                '\'' if s.get(i + 1) == Some(&'\'') => i += 2,
                '\'' => {
                    i += 1;
                    break;
                }
                _ => i += 1,
            }
        }
        shape.push(OPAQUE);
        match continuation(s, i) {
            Some((quote, comments)) => {
                shape.extend(std::iter::repeat_n(OPAQUE, comments));
                i = quote;
            }
            None => return Some(i),
        }
    }
}

/// PostgreSQL's `quotecontinue` after a closing quote at `i - 1`: the index
/// of the next segment's opening quote and how many `--` comments lie
/// before it, or `None` if the literal ends here. In scan.l terms:
///
/// ```text
/// quotecontinue           {whitespace_with_newline}{quote}
/// whitespace_with_newline ({horiz_whitespace}*{newline}{special_whitespace}*)
/// horiz_whitespace        ({horiz_space}|{comment})
/// special_whitespace      ({space}+|{comment}{newline})
/// comment                 ("--"{non_newline}*)
/// ```
///
/// So `E'a' --c` newline `'\''` is one E string: the comment does not end
/// the literal.
fn continuation(s: &[char], mut i: usize) -> Option<(usize, usize)> {
    let newline = |c: char| c == '\n' || c == '\r';
    let horiz_space = |c: char| is_space(c) && !newline(c);
    let comment_at = |i: usize| s.get(i) == Some(&'-') && s.get(i + 1) == Some(&'-');
    // The end of a `--` comment starting at `i`: the next newline or the end.
    let comment_end = |mut i: usize| {
        while i < s.len() && !newline(s[i]) {
            i += 1;
        }
        i
    };
    let mut comments = 0;
    // {horiz_whitespace}*
    loop {
        match s.get(i) {
            Some(&c) if horiz_space(c) => i += 1,
            Some(_) if comment_at(i) => {
                i = comment_end(i);
                comments += 1;
            }
            _ => break,
        }
    }
    // {newline}
    if !s.get(i).is_some_and(|&c| newline(c)) {
        return None;
    }
    i += 1;
    // {special_whitespace}*
    loop {
        match s.get(i) {
            Some(&c) if is_space(c) => i += 1,
            Some(_) if comment_at(i) => {
                let end = comment_end(i);
                if end == s.len() {
                    // A comment must end with a newline here.
                    return None;
                }
                i = end + 1;
                comments += 1;
            }
            _ => break,
        }
    }
    (s.get(i) == Some(&'\'')).then_some((i, comments))
}

/// A `"..."` identifier (`""` is a quote inside); the index after it.
fn quoted_identifier(s: &[char], mut i: usize) -> Option<usize> {
    i += 1;
    loop {
        match s.get(i)? {
            '"' if s.get(i + 1) == Some(&'"') => i += 2,
            '"' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// A dollar-quoted string starting at `i`: `None` if no tag starts here,
/// `Some(None)` if it never ends, else the index after it. A tag is `$$` or
/// `$` + an identifier start + identifier characters (no `$`) + `$`; any
/// non-ASCII character is an identifier character, as in PostgreSQL.
fn dollar_quote(s: &[char], i: usize) -> Option<Option<usize>> {
    let mut j = i + 1;
    if let Some(&c) = s.get(j)
        && c != '$'
    {
        if !ident_start(c) {
            return None;
        }
        while j < s.len() && (ident_start(s[j]) || s[j].is_ascii_digit()) {
            j += 1;
        }
    }
    if s.get(j) != Some(&'$') {
        return None;
    }
    let tag = &s[i..=j];
    let mut k = j + 1;
    while k + tag.len() <= s.len() {
        if &s[k..k + tag.len()] == tag {
            return Some(Some(k + tag.len()));
        }
        k += 1;
    }
    Some(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_statements_read_alike() {
        for sql in [
            "SELECT 1",
            "SELECT a, b FROM public.orders WHERE id = $1 AND note = 'it''s' -- trailing\n",
            "SELECT E'a\\'b', $$x$$, $tag$ y $tag$, \"Quoted\"\"Id\", x'ff', n'abc'",
            "/* a /* nested */ comment */ SELECT 1; SELECT 2;",
            "SELECT '{\"a\":1}'::jsonb ? 'a', 1 >= 2, a->>'k', b #- '{x}'",
            "SELECT 'a'\n'b'",
            "UPDATE t SET a = a - -1 WHERE b <> 'x'",
            "SELECT $é$ body $é$",
            "COPY orders FROM STDIN",
            "SELECT 1 -- comment\r\n",
            "SELECT a != b, a <> b, a || b, a @> b, a <@ b, a ~~ b, a !~ b, a ~* b, a && b, a::int",
            "SELECT f(a => 1), a -> 'k', a #>> '{x}', |/ 4, @ -5, a @@ b, a <-> b, 5 % 2, 2 ^ 3",
            "SELECT a::text[], ARRAY[1,2][1:2], (a).b, a.b.c, 1.5e3, .5, 1., 10::numeric(5,2)",
            "SELECT * FROM t WHERE a ILIKE 'x%' AND b SIMILAR TO 'y' AND c IS NOT DISTINCT FROM d",
            "INSERT INTO t (a) VALUES ($1), ($2) ON CONFLICT (a) DO UPDATE SET a = EXCLUDED.a RETURNING *",
            "SELECT $1::int, $2, a$b, a_1, \"é\", ïd, 表",
            "SELECT e'x', E'\\n', B'0101', U&'d\\0061t\\+000061'",
        ] {
            assert_eq!(disagreement(sql), None, "{sql:?}");
        }
    }

    #[test]
    fn texts_postgresql_reads_differently_are_found() {
        for sql in [
            // A tag PostgreSQL accepts and sqlparser does not.
            "SELECT $€$ --$€$; DELETE FROM orders;",
            "SELECT $a€$ x $a€$; DELETE FROM orders",
            // No second statement: a call only PostgreSQL sees.
            "SELECT $€$ --$€$, evil_writer()",
            "SELECT 1 >--'\n , evil_writer() --'",
            // An operator ending where a comment begins.
            "SELECT '{\"a\":1}'::jsonb ?--'\n chr(97); DELETE FROM orders; --'",
            "SELECT '[1,2)'::int4range &>--'\n int4range(0,1); DELETE FROM orders; --'",
            "SELECT 1 >--'\n 1; DELETE FROM orders; --'",
            "SELECT 1 #/*'*/ 1; DELETE FROM orders; --'",
            "WITH a AS (SELECT '{}'::jsonb ?--'\n chr(97)), d AS (DELETE FROM orders RETURNING 1) SELECT 1 FROM a --') SELECT 1 FROM a",
            // Text after COPY FROM STDIN is SQL to PostgreSQL.
            "COPY scratch FROM STDIN;\nDELETE FROM orders;\n",
        ] {
            assert!(disagreement(sql).is_some(), "{sql:?}");
        }
    }

    #[test]
    fn a_string_continues_across_line_comments_as_in_postgresql() {
        // One E string to PostgreSQL (`a'` and then up to the last quote):
        // the DELETE is inside it. sqlparser reads two strings and a DELETE.
        for sql in [
            "SELECT E'a' --c\n'\\'' ; DELETE FROM orders; -- '",
            "SELECT E'a'\n-- c\n  -- d\r\n'\\'' ; DELETE FROM orders; -- '",
            "SELECT E'a'\t--c\r'\\'' , evil_writer() --'",
        ] {
            assert!(disagreement(sql).is_some(), "{sql:?}");
        }
        // Where the continuation changes nothing, both still agree; and
        // where PostgreSQL's rule does not apply, neither continues.
        for sql in [
            "SELECT 'a' --c\n'b'",
            "SELECT 'a'\n--c\n'b'",
            "SELECT E'a' /* c */\n'b'",
            "SELECT E'a' --c",
            "SELECT E'a'\n--c",
        ] {
            assert_eq!(disagreement(sql), None, "{sql:?}");
        }
    }
}
