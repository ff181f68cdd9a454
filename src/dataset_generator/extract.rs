//! Parsing the teacher's answers into examples, and self-consistency filtering.

use std::collections::HashMap;

use serde_json::Value;

use crate::data::examples::Example;
use crate::prompt_parser::extract_demonstrations;
use crate::util::json_scan::{scan_objects, Scanned};

/// What one choice yielded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Extraction {
    pub examples: Vec<Example>,
    /// Why the choice yielded nothing (`None` when it yielded examples).
    pub rejected: Option<&'static str>,
}

/// Parse one teacher answer into examples: every complete JSON object with `input` and `output`
/// (nested objects and arrays searched too), tolerant of code fences, prose, raw control
/// characters inside strings and cut-off output; `input="…" output="…"` as a fallback.
pub fn extract_examples(text: &str) -> Extraction {
    let mut examples = Vec::new();
    let mut saw_object = false;
    let mut saw_keys_empty = false;
    let mut saw_invalid = false;
    let mut saw_unbalanced = false;
    for item in scan_objects(text) {
        match item {
            Scanned::Value(v) => {
                saw_object = true;
                collect_examples(&v, &mut examples, &mut saw_keys_empty);
            }
            Scanned::Invalid => saw_invalid = true,
            Scanned::Unbalanced => saw_unbalanced = true,
        }
    }
    if examples.is_empty() && !saw_object {
        for e in extract_demonstrations(text).examples {
            if e.input.trim().is_empty() || e.output.trim().is_empty() {
                saw_keys_empty = true;
            } else {
                examples.push(Example::new(e.input.trim(), e.output.trim()));
            }
        }
    }
    let rejected = if !examples.is_empty() {
        None
    } else if saw_keys_empty {
        Some("empty_field")
    } else if saw_object {
        Some("missing_keys")
    } else if saw_unbalanced {
        Some("truncated_json")
    } else if saw_invalid {
        Some("invalid_json")
    } else {
        Some("no_json")
    };
    Extraction { examples, rejected }
}

fn field<'a>(m: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    m.get(name)
        .or_else(|| m.iter().find(|(k, _)| k.trim().eq_ignore_ascii_case(name)).map(|(_, v)| v))
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.trim().to_string(),
        Value::Null => String::new(),
        Value::Number(_) | Value::Bool(_) => v.to_string(),
        other => other.to_string(),
    }
}

fn collect_examples(v: &Value, out: &mut Vec<Example>, saw_empty: &mut bool) {
    match v {
        Value::Object(m) => {
            if let (Some(i), Some(o)) = (field(m, "input"), field(m, "output")) {
                let (i, o) = (value_text(i), value_text(o));
                if i.is_empty() || o.is_empty() {
                    *saw_empty = true;
                } else {
                    out.push(Example { input: i, output: o });
                }
                return;
            }
            for x in m.values() {
                collect_examples(x, out, saw_empty);
            }
        }
        Value::Array(a) => {
            for x in a {
                collect_examples(x, out, saw_empty);
            }
        }
        _ => {}
    }
}

/// Self-consistency filtering: one example per distinct input, in first-seen order, with the
/// input's most frequent output (tie → the shortest in characters, then the first seen).
/// Returns the examples and the number of inputs that had conflicting outputs.
pub fn self_consistency(candidates: &[Example]) -> (Vec<Example>, usize) {
    let mut order: Vec<&str> = Vec::new();
    let mut groups: HashMap<&str, Vec<(&str, usize)>> = HashMap::new();
    for c in candidates {
        let g = groups.entry(c.input.as_str()).or_insert_with(|| {
            order.push(c.input.as_str());
            Vec::new()
        });
        match g.iter_mut().find(|(o, _)| *o == c.output) {
            Some((_, n)) => *n += 1,
            None => g.push((c.output.as_str(), 1)),
        }
    }
    let mut conflicts = 0;
    let out = order
        .into_iter()
        .map(|input| {
            let g = &groups[input];
            if g.len() > 1 {
                conflicts += 1;
            }
            let best = g.iter().fold(None::<(&str, usize)>, |best, &(o, n)| match best {
                None => Some((o, n)),
                Some((bo, bn)) => {
                    if n > bn || (n == bn && o.chars().count() < bo.chars().count()) {
                        Some((o, n))
                    } else {
                        Some((bo, bn))
                    }
                }
            });
            Example {
                input: input.to_string(),
                output: best.expect("non-empty group").0.to_string(),
            }
        })
        .collect();
    (out, conflicts)
}
