//! Identifiers as PostgreSQL reads them, so that a name the policy judges is
//! the name PostgreSQL resolves.
//!
//! PostgreSQL's scanner (`downcase_identifier` and `truncate_identifier` in
//! its `scansup.c`) folds an unquoted identifier to lower case in ASCII only:
//! `A`-`Z` become `a`-`z` and every other character is kept, whatever
//! Unicode says its lower case is (under a UTF-8 server encoding, the only
//! one Airlock accepts). Quoted identifiers keep their case. Both are then
//! cut to NAMEDATALEN - 1 = 63 bytes, at a character boundary. Folding with
//! Unicode rules instead lets two different names meet in the proxy and
//! not in PostgreSQL (`É` and `é`, the Kelvin sign and `k`): never do.

/// PostgreSQL's longest identifier, in bytes.
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// An identifier as PostgreSQL stores it: ASCII-folded unless quoted, then
/// cut to [`MAX_IDENTIFIER_BYTES`].
pub fn fold(value: &str, quoted: bool) -> String {
    let cut = truncate(value);
    if quoted {
        cut.to_owned()
    } else {
        cut.to_ascii_lowercase()
    }
}

/// The first 63 bytes of a name, cut at a character boundary.
pub fn truncate(name: &str) -> &str {
    if name.len() <= MAX_IDENTIFIER_BYTES {
        return name;
    }
    let mut end = MAX_IDENTIFIER_BYTES;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn only_ascii_letters_fold() {
        assert_eq!(fold("Orders", false), "orders");
        assert_eq!(fold("ÉX", false), "Éx");
        // The Kelvin sign's Unicode lower case is ASCII `k`; PostgreSQL keeps it.
        assert_eq!(fold("\u{212A}", false), "\u{212A}");
        assert_eq!(fold("İ", false), "İ");
        assert_eq!(fold("Orders", true), "Orders");
    }

    #[test]
    fn long_names_are_cut_at_a_character_boundary() {
        let long = format!("{}é", "a".repeat(62));
        assert_eq!(fold(&long, false), "a".repeat(62));
        assert_eq!(fold(&"B".repeat(80), false), "b".repeat(63));
        assert_eq!(fold(&"B".repeat(80), true), "B".repeat(63));
    }

    proptest! {
        #[test]
        fn folding_changes_only_ascii_capitals(s in "\\PC{0,80}") {
            let folded = fold(&s, false);
            prop_assert!(folded.len() <= MAX_IDENTIFIER_BYTES);
            for (a, b) in folded.chars().zip(s.chars()) {
                if b.is_ascii_uppercase() {
                    prop_assert_eq!(a, b.to_ascii_lowercase());
                } else {
                    prop_assert_eq!(a, b);
                }
            }
        }
    }
}
