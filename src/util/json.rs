//! Canonical JSON: one text per value, whatever order its objects' keys were built in, so that
//! its hash can key a cache (the teacher's record/replay cache) or fingerprint a stage's settings
//! (the pipeline, the generator's journal).

use serde_json::Value;

/// Canonical JSON: object keys sorted, no insignificant whitespace (independent of serde_json's
/// `preserve_order` feature).
pub fn canonical_json(v: &Value) -> String {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(k).expect("string"));
                    out.push(':');
                    write(&m[*k], out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&serde_json::to_string(other).expect("scalar")),
        }
    }
    let mut s = String::new();
    write(v, &mut s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_at_every_depth_and_arrays_keep_their_order() {
        let a = json!({"b": 1, "a": {"y": [3, 1], "x": "é\"q"}, "c": null});
        let mut m = serde_json::Map::new();
        m.insert("c".into(), Value::Null);
        m.insert("a".into(), json!({"x": "é\"q", "y": [3, 1]}));
        m.insert("b".into(), json!(1));
        let text = r#"{"a":{"x":"é\"q","y":[3,1]},"b":1,"c":null}"#;
        assert_eq!(canonical_json(&a), text);
        assert_eq!(canonical_json(&Value::Object(m)), text);
        assert_eq!(canonical_json(&json!(1.5)), "1.5");
    }
}
