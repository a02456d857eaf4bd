//! One top-level section read straight from the text, skipping the others,
//! so that serde_norway's errors keep their line and column (a value taken
//! out of an already parsed mapping has lost them).

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

/// Section `name` of `text` as a `T`, or `None` when absent.
pub(crate) fn section<T: DeserializeOwned>(text: &str, name: &str) -> Result<Option<T>, serde_norway::Error> {
    Section {
        name,
        found: PhantomData,
    }
    .deserialize(serde_norway::Deserializer::from_str(text))
}

/// An error carrying the position of top-level key `name`, or `None` when
/// the parser cannot place it. The only way serde_norway tells where a key
/// stands is the position it puts on an error raised there.
pub(crate) fn locate_key(text: &str, name: &str) -> Option<serde_norway::Error> {
    let doc = serde_norway::Deserializer::from_str(text);
    de::Deserializer::deserialize_map(doc, Locate { name })
        .err()
        .filter(|e| e.location().is_some())
}

struct Section<'a, T> {
    name: &'a str,
    found: PhantomData<T>,
}

impl<'de, T: DeserializeOwned> DeserializeSeed<'de> for Section<'_, T> {
    type Value = Option<T>;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Option<T>, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, T: DeserializeOwned> Visitor<'de> for Section<'_, T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping of sections")
    }

    /// An empty file has no sections.
    fn visit_unit<E: de::Error>(self) -> Result<Option<T>, E> {
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<T>, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == self.name {
                found = Some(map.next_value::<T>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// Walks the top-level keys; fails on the one named `name`, so that the
/// error is raised while that key is read and carries its position.
struct Locate<'a> {
    name: &'a str,
}

impl<'de> Visitor<'de> for Locate<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping of sections")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(Locate { name: self.name })?.is_some() {
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<(), E> {
        if key == self.name {
            Err(E::custom("found"))
        } else {
            Ok(())
        }
    }
}

impl<'de> DeserializeSeed<'de> for Locate<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, key: D) -> Result<(), D::Error> {
        key.deserialize_str(self)
    }
}

/// The 1-based line of a dotted key in block-style YAML: each part is
/// looked for among the lines indented under the previous one; a part
/// written inside a flow mapping (`tls: { cert: a, key: b }`) is placed on
/// its parent's line. The deepest part found gives the line.
pub(crate) fn line_of(text: &str, key: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let meaningful = |l: &str| !l.trim().is_empty() && !l.trim_start().starts_with('#');
    let (mut start, mut end, mut parent_indent) = (0usize, lines.len(), None::<usize>);
    let mut found = None;
    for part in key.split('.') {
        let label = format!("{part}:");
        let hit = (start..end).find(|&i| {
            let l = lines[i];
            let body = l.trim_start().trim_start_matches("- ");
            let placed = match parent_indent {
                Some(p) => indent(l) > p,
                None => indent(l) == 0,
            };
            meaningful(l) && placed && body.starts_with(&label)
        });
        match hit {
            Some(i) => {
                found = Some(i);
                let own = indent(lines[i]);
                start = i + 1;
                end = (start..lines.len())
                    .find(|&j| meaningful(lines[j]) && indent(lines[j]) <= own)
                    .unwrap_or(lines.len());
                parent_indent = Some(own);
            }
            None => {
                // Written in a flow mapping on the parent's line, or absent.
                if let Some(i) = found.filter(|&i| {
                    lines[i].contains(&format!(" {label}")) || lines[i].contains(&format!("{{{label}"))
                }) {
                    return Some(i + 1);
                }
                break;
            }
        }
    }
    found.map(|i| i + 1)
}
