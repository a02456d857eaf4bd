//! Globs on schema-qualified names (`public.orders`, `billing.*`, `*`) and
//! function names. `*` matches any run of characters within one name part
//! (not across `.`), `?` one character; a pattern that is just `*` matches
//! every name.

/// Whether `name` matches `pattern`.
pub(crate) fn matches(pattern: &str, name: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    matches_from(pattern.as_bytes(), name.as_bytes())
}

fn matches_from(p: &[u8], n: &[u8]) -> bool {
    match p.split_first() {
        None => n.is_empty(),
        Some((b'*', rest)) => {
            // Try every split point that does not cross a '.'.
            let mut i = 0;
            loop {
                if matches_from(rest, &n[i..]) {
                    return true;
                }
                if i == n.len() || n[i] == b'.' {
                    return false;
                }
                i += 1;
            }
        }
        Some((b'?', rest)) => !n.is_empty() && n[0] != b'.' && matches_from(rest, &n[1..]),
        Some((c, rest)) => n.first() == Some(c) && matches_from(rest, &n[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn globs() {
        assert!(matches("public.orders", "public.orders"));
        assert!(!matches("public.orders", "public.orders2"));
        assert!(matches("billing.*", "billing.invoices"));
        assert!(!matches("billing.*", "public.invoices"));
        assert!(matches("*.orders", "shop.orders"));
        assert!(!matches("pub*", "public.orders"));
        assert!(matches("*", "anything.at_all"));
        assert!(matches("pg_advisory_*", "pg_advisory_lock"));
        assert!(matches("public.t?", "public.t1"));
    }
}
