//! What a reviewer is shown of the session beside a held statement: the
//! agent's own reason, and what the session ran just before.
//!
//! An agent says why in one of two ways. `SET airlock.reason = '...'` is
//! judged like any SET and, when it runs, forwarded to PostgreSQL (a
//! custom setting it keeps harmlessly, so `SHOW airlock.reason` works) and
//! kept by the proxy for the rest of the session (`RESET airlock.reason`
//! forgets it). A statement that begins with `/* airlock-reason: ... */`
//! gives a reason for itself alone, which wins over the session's. Either
//! is the requester's word, unverified; at most [`MAX_REASON`] bytes are
//! kept.

use std::collections::VecDeque;
use std::time::SystemTime;

use airlock_eventlog::proto;

/// The most of an agent's reason kept, in bytes.
pub const MAX_REASON: usize = 2048;
/// How many earlier statements a request shows.
pub const RECENT: usize = 20;
/// The most of each earlier statement's text kept, in characters.
const RECENT_TEXT: usize = 500;

/// A session's reason and recent statements.
#[derive(Debug, Default)]
pub(super) struct SessionContext {
    reason: Option<String>,
    recent: VecDeque<proto::RecentStatement>,
}

impl SessionContext {
    /// Notes a statement as judged (before it is held, run or refused).
    /// The oldest entry's buffer is reused once the ring is full.
    pub fn note(&mut self, text: &str, verdict: &proto::Verdict) {
        let mut entry = if self.recent.len() > RECENT {
            self.recent.pop_front().unwrap_or_default()
        } else {
            proto::RecentStatement::default()
        };
        let (kept, cut) = cut_chars(text, RECENT_TEXT);
        entry.text.clear();
        entry.text.push_str(kept);
        entry.truncated = cut;
        entry.action = verdict.action;
        entry.rule.clear();
        entry.rule.push_str(&verdict.rule);
        entry.time = Some(SystemTime::now().into());
        self.recent.push_back(entry);
    }

    /// A statement that ran: a SET or RESET of `airlock.reason` changes the
    /// session's reason.
    pub fn ran(&mut self, text: &str) {
        if let Some(set) = set_reason(text) {
            self.reason = set;
        }
    }

    /// The statements noted before the last one (the held statement
    /// itself), oldest first.
    pub fn before_last(&self) -> Vec<proto::RecentStatement> {
        let n = self.recent.len().saturating_sub(1);
        self.recent.iter().take(n).cloned().collect()
    }

    /// The reason for `text`: its own leading comment, else the session's;
    /// cut to [`MAX_REASON`] bytes (`true` when cut).
    pub fn reason_for(&self, text: &str) -> (String, bool) {
        let reason = leading_reason(text).or(self.reason.as_deref()).unwrap_or("");
        let (kept, cut) = cut_bytes(reason.trim(), MAX_REASON);
        (kept.to_owned(), cut)
    }
}

/// The reason in a leading `/* airlock-reason: ... */` comment.
fn leading_reason(text: &str) -> Option<&str> {
    let rest = text.trim_start().strip_prefix("/*")?;
    let end = rest.find("*/")?;
    let inside = rest[..end].trim_start();
    let key = "airlock-reason:";
    if inside.len() < key.len() || !inside[..key.len()].eq_ignore_ascii_case(key) {
        return None;
    }
    Some(inside[key.len()..].trim())
}

/// `Some(Some(value))` for `SET [SESSION] airlock.reason {=|TO} '...'`,
/// `Some(None)` for `RESET airlock.reason`, `None` for anything else. Only
/// a plain single-quoted literal is read (`''` for a quote), as
/// PostgreSQL reads it with standard strings; `SET LOCAL` is not kept.
fn set_reason(text: &str) -> Option<Option<String>> {
    let t = text.trim().trim_end_matches(';').trim_end();
    let mut words = t.split_ascii_whitespace();
    let first = words.next()?;
    if first.eq_ignore_ascii_case("reset") {
        let name = words.next()?;
        return (name.eq_ignore_ascii_case("airlock.reason") && words.next().is_none()).then_some(None);
    }
    if !first.eq_ignore_ascii_case("set") {
        return None;
    }
    let mut rest = t[first.len()..].trim_start();
    if let Some(after) = strip_word(rest, "session") {
        rest = after;
    }
    rest = strip_word(rest, "airlock.reason")?;
    rest = rest
        .strip_prefix('=')
        .or_else(|| strip_word(rest, "to"))?
        .trim_start();
    let body = rest.strip_prefix('\'')?;
    let mut value = String::new();
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            if chars.peek() == Some(&'\'') {
                chars.next();
                value.push('\'');
                continue;
            }
            return chars.all(char::is_whitespace).then_some(Some(value));
        }
        value.push(c);
    }
    None
}

/// `s` without a leading case-insensitive `word` followed by whitespace,
/// `=`, or the end.
fn strip_word<'a>(s: &'a str, word: &str) -> Option<&'a str> {
    let head = s.get(..word.len())?;
    if !head.eq_ignore_ascii_case(word) {
        return None;
    }
    let rest = &s[word.len()..];
    match rest.chars().next() {
        None => Some(rest),
        Some(c) if c.is_whitespace() || c == '=' || c == '\'' => Some(rest.trim_start()),
        Some(_) => None,
    }
}

fn cut_chars(s: &str, max: usize) -> (&str, bool) {
    match s.char_indices().nth(max) {
        Some((at, _)) => (&s[..at], true),
        None => (s, false),
    }
}

fn cut_bytes(s: &str, max: usize) -> (&str, bool) {
    if s.len() <= max {
        return (s, false);
    }
    let mut at = max;
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    (&s[..at], true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leading_comment_gives_the_statements_reason() {
        assert_eq!(
            leading_reason("  /* airlock-reason: ticket 42, stale orders */ DELETE FROM orders"),
            Some("ticket 42, stale orders")
        );
        assert_eq!(leading_reason("/*AIRLOCK-REASON:x*/ SELECT 1"), Some("x"));
        assert_eq!(leading_reason("DELETE /* airlock-reason: late */ FROM t"), None);
        assert_eq!(leading_reason("/* just a comment */ DELETE FROM t"), None);
        assert_eq!(leading_reason("/* airlock-reason: never closed"), None);
    }

    #[test]
    fn set_and_reset_of_the_reason_are_read_as_postgresql_reads_them() {
        assert_eq!(
            set_reason("SET airlock.reason = 'cleanup'"),
            Some(Some("cleanup".into()))
        );
        assert_eq!(
            set_reason("set session airlock.reason to 'it''s fine';"),
            Some(Some("it's fine".into()))
        );
        assert_eq!(set_reason("SET airlock.reason='x'"), Some(Some("x".into())));
        assert_eq!(set_reason("RESET airlock.reason"), Some(None));
        assert_eq!(set_reason("SET LOCAL airlock.reason = 'x'"), None);
        assert_eq!(set_reason("SET airlock.reasons = 'x'"), None);
        assert_eq!(set_reason("SET airlock.reason = 'x' , 'y'"), None);
        assert_eq!(set_reason("SET airlock.reason = E'x'"), None);
        assert_eq!(set_reason("SET search_path = 'x'"), None);
        assert_eq!(set_reason("SELECT 1"), None);
    }

    #[test]
    fn the_statements_own_reason_wins_and_long_reasons_are_cut_and_marked() {
        let mut c = SessionContext::default();
        assert_eq!(c.reason_for("DELETE FROM t"), (String::new(), false));
        c.ran("SET airlock.reason = 'session reason'");
        assert_eq!(c.reason_for("DELETE FROM t").0, "session reason");
        assert_eq!(c.reason_for("/* airlock-reason: mine */ DELETE FROM t").0, "mine");
        let long = format!("SET airlock.reason = '{}'", "é".repeat(3000));
        c.ran(&long);
        let (r, cut) = c.reason_for("DELETE FROM t");
        assert!(
            cut && r.len() <= MAX_REASON && r.len() > MAX_REASON - 2,
            "{}",
            r.len()
        );
        c.ran("RESET airlock.reason");
        assert_eq!(c.reason_for("DELETE FROM t").0, "");
    }

    #[test]
    fn the_last_twenty_statements_are_kept_in_order_and_cut() {
        let mut c = SessionContext::default();
        let v = proto::Verdict {
            action: proto::verdict::Action::Allow as i32,
            rule: "match: SELECT, action: allow".into(),
            ..Default::default()
        };
        for i in 0..25 {
            c.note(&format!("SELECT {i}"), &v);
        }
        let r = c.before_last();
        assert_eq!(r.len(), RECENT);
        assert_eq!(r[0].text, "SELECT 4");
        assert_eq!(r[19].text, "SELECT 23", "the last one is the held statement");
        assert_eq!(r[19].rule, v.rule);
        c.note(&"x".repeat(600), &v);
        c.note("SELECT now", &v);
        let last = c.before_last().pop().expect("one");
        assert!(last.truncated && last.text.len() == RECENT_TEXT);
    }
}
