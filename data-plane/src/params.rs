//! Bound parameters as a reviewer should see them. The exact bytes are kept
//! alongside; the display is only for reading: text-format values as text,
//! binary values decoded for common types, anything else as hex.

use airlock_eventlog::proto;

/// Longest rendering kept for display (the value itself is kept whole).
const MAX_DISPLAY: usize = 4096;

pub fn describe(type_oid: u32, format: i16, value: Option<&[u8]>) -> proto::Parameter {
    let Some(value) = value else {
        return proto::Parameter {
            type_oid,
            format: format_of(format) as i32,
            is_null: true,
            value: Vec::new(),
            display: "NULL".into(),
        };
    };
    let display = if format == 0 {
        String::from_utf8_lossy(value).into_owned()
    } else {
        binary(type_oid, value).unwrap_or_else(|| format!("\\x{}", hex::encode(value)))
    };
    proto::Parameter {
        type_oid,
        format: format_of(format) as i32,
        is_null: false,
        value: value.to_vec(),
        display: clip(display),
    }
}

fn format_of(f: i16) -> proto::parameter::Format {
    if f == 1 {
        proto::parameter::Format::Binary
    } else {
        proto::parameter::Format::Text
    }
}

fn clip(mut s: String) -> String {
    if s.len() > MAX_DISPLAY {
        let mut end = MAX_DISPLAY;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// Binary values of the common types (PostgreSQL's send formats).
fn binary(oid: u32, v: &[u8]) -> Option<String> {
    Some(match oid {
        // PostgreSQL's boolrecv reads any non-zero byte as true.
        16 => match v {
            [0] => "false".into(),
            [_] => "true".into(),
            _ => return None,
        },
        20 => i64::from_be_bytes(v.try_into().ok()?).to_string(),
        21 => i16::from_be_bytes(v.try_into().ok()?).to_string(),
        23 => i32::from_be_bytes(v.try_into().ok()?).to_string(),
        26 => u32::from_be_bytes(v.try_into().ok()?).to_string(),
        700 => float(
            f64::from(f32::from_be_bytes(v.try_into().ok()?)),
            f32::from_be_bytes(v.try_into().ok()?).to_string(),
        ),
        701 => float(
            f64::from_be_bytes(v.try_into().ok()?),
            f64::from_be_bytes(v.try_into().ok()?).to_string(),
        ),
        25 | 1042 | 1043 | 19 => std::str::from_utf8(v).ok()?.to_owned(),
        2950 => {
            let h = hex::encode(<[u8; 16]>::try_from(v).ok()?);
            format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            )
        }
        _ => return None,
    })
}

/// Infinities spelt as PostgreSQL spells them; finite values as Rust's
/// shortest exact decimal (`shown`).
fn float(v: f64, shown: String) -> String {
    if v == f64::INFINITY {
        "Infinity".into()
    } else if v == f64::NEG_INFINITY {
        "-Infinity".into()
    } else {
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_render_for_reviewers() {
        assert_eq!(describe(23, 0, Some(b"42")).display, "42");
        assert_eq!(describe(23, 1, Some(&42i32.to_be_bytes())).display, "42");
        assert_eq!(describe(20, 1, Some(&(-7i64).to_be_bytes())).display, "-7");
        assert_eq!(describe(16, 1, Some(&[1])).display, "true");
        assert_eq!(describe(25, 1, Some(b"orders")).display, "orders");
        assert_eq!(
            describe(2950, 1, Some(&[0x12; 16])).display,
            "12121212-1212-1212-1212-121212121212"
        );
        assert_eq!(describe(17, 1, Some(&[0xde, 0xad])).display, "\\xdead");
        // A binary int4 of the wrong size is shown as hex, not misread.
        assert_eq!(describe(23, 1, Some(&[1, 2])).display, "\\x0102");
        let null = describe(23, 0, None);
        assert!(null.is_null);
        assert_eq!(null.display, "NULL");
        assert!(
            describe(25, 0, Some("é".repeat(5000).as_bytes()))
                .display
                .ends_with('…')
        );
    }
}
