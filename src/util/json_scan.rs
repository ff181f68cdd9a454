//! Finding JSON in a language model's answer: code fences, prose around the JSON, raw newlines
//! inside strings, trailing commas and cut-off output are all common, so the scan looks for
//! balanced `{…}` spans (strings and escapes respected) and parses each leniently. After a span that
//! does not parse, or one that never closes, scanning continues inside it.

use serde_json::Value;

/// What one `{` of the text led to.
pub enum Scanned {
    Value(Value),
    /// A balanced span that is not JSON even leniently.
    Invalid,
    /// A `{` that never closes (cut-off output).
    Unbalanced,
}

/// Every `{` of `text` in order, each with what it led to (see the module docs).
pub fn scan_objects(text: &str) -> Vec<Scanned> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'{' {
            i += 1;
            continue;
        }
        match balanced_end(b, i) {
            Some(end) => match parse_lenient(&text[i..=end]) {
                Some(v) => {
                    out.push(Scanned::Value(v));
                    i = end + 1;
                }
                None => {
                    out.push(Scanned::Invalid);
                    i += 1;
                }
            },
            None => {
                out.push(Scanned::Unbalanced);
                i += 1;
            }
        }
    }
    out
}

/// Every complete JSON object found in `text`.
pub fn json_values(text: &str) -> Vec<Value> {
    scan_objects(text)
        .into_iter()
        .filter_map(|s| match s {
            Scanned::Value(v) => Some(v),
            _ => None,
        })
        .collect()
}

/// The first complete JSON object in `text`.
pub fn first_json_object(text: &str) -> Option<Value> {
    scan_objects(text).into_iter().find_map(|s| match s {
        Scanned::Value(v) => Some(v),
        _ => None,
    })
}

/// The index of the `}` that closes the `{` at `start`, if it closes.
fn balanced_end(b: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_str = false;
    let mut esc = false;
    for (j, &c) in b.iter().enumerate().skip(start) {
        if in_str {
            if esc {
                esc = false;
            } else if c == b'\\' {
                esc = true;
            } else if c == b'"' {
                in_str = false;
            }
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(j);
                }
            }
            _ => {}
        }
    }
    None
}

/// JSON, or JSON once raw control characters inside strings are escaped and trailing commas
/// before a closing bracket dropped (what models most often get wrong).
pub fn parse_lenient(s: &str) -> Option<Value> {
    if let Ok(v) = serde_json::from_str::<Value>(s) {
        return Some(v);
    }
    let mut fixed = String::with_capacity(s.len() + 16);
    let mut in_str = false;
    let mut esc = false;
    for c in s.chars() {
        if in_str {
            if esc {
                esc = false;
                fixed.push(c);
                continue;
            }
            match c {
                '\\' => {
                    esc = true;
                    fixed.push(c);
                }
                '"' => {
                    in_str = false;
                    fixed.push(c);
                }
                '\n' => fixed.push_str("\\n"),
                '\r' => fixed.push_str("\\r"),
                '\t' => fixed.push_str("\\t"),
                c if (c as u32) < 0x20 => fixed.push_str(&format!("\\u{:04x}", c as u32)),
                c => fixed.push(c),
            }
        } else {
            if c == '"' {
                in_str = true;
            }
            if c == '}' || c == ']' {
                let trimmed = fixed.trim_end().len();
                if fixed[..trimmed].ends_with(',') {
                    fixed.truncate(trimmed - 1);
                }
            }
            fixed.push(c);
        }
    }
    serde_json::from_str::<Value>(&fixed).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_found_around_prose_fences_and_cut_off_output() {
        let text = "Sure:\n```json\n{\"a\": \"x\ny\", \"b\": [1,],}\n```\n{\"c\": {\"d\": \"}\"}} and {\"e\": ";
        let values = json_values(text);
        assert_eq!(values.len(), 2);
        assert_eq!(values[0]["a"], "x\ny");
        assert_eq!(values[1]["c"]["d"], "}");
        assert_eq!(first_json_object("no json { here").map(|v| v.to_string()), None);
        assert_eq!(first_json_object("x {oops} {\"k\": 1}").unwrap()["k"], 1);
    }
}
