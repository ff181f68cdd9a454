//! Structured output over the API: a request that wants JSON (`json_fields` or `json_schema` in
//! [`SamplingParams`]) carries its JSON Schema as the chat request's `response_format`, so the
//! server constrains decoding to it (as the local teacher forces its keys).
//!
//! Servers disagree on the shape, so an endpoint walks a ladder, best first, and keeps the first
//! step that worked ([`ResponseFormat::LADDER`]):
//!
//! 1. `{"type": "json_schema", "json_schema": {"name", "schema", "strict": true}}` — OpenAI, vLLM,
//!    llama.cpp's C++ server, Ollama, LM Studio;
//! 2. `{"type": "json_object", "schema": {…}}` — llama-cpp-python's server (0.3.36 refuses the
//!    first shape), llama.cpp's C++ server;
//! 3. `{"type": "json_object"}` — JSON without a schema (older OpenAI-compatible servers);
//! 4. nothing: the prompt alone asks for JSON.
//!
//! A refusal is an HTTP 400, 415, 422 or 501 to a request that carried a `response_format`, or a
//! 5xx whose body names `response_format` or `json_schema` (llama-cpp-python 0.3 answers its
//! request-validation error about `json_schema` as a 500); it is not retried as a lost request:
//! the same request is sent with the next shape at once (a refused request was not decoded, so
//! nothing is paid twice). The endpoint remembers a step only when a request succeeds with it, so
//! a 400 for another reason (a prompt over the context) does not push the endpoint down the
//! ladder.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::SamplingParams;

/// One shape of `response_format`, in the order an endpoint tries them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseFormat {
    /// `{"type": "json_schema", "json_schema": {"name": …, "schema": …, "strict": true}}`.
    JsonSchema,
    /// `{"type": "json_object", "schema": …}` (llama-cpp-python, llama.cpp).
    JsonObjectSchema,
    /// `{"type": "json_object"}`.
    JsonObject,
    /// No `response_format`: the prompt alone asks for JSON.
    None,
}

impl ResponseFormat {
    /// Every step, best first.
    pub const LADDER: [ResponseFormat; 4] = [
        ResponseFormat::JsonSchema,
        ResponseFormat::JsonObjectSchema,
        ResponseFormat::JsonObject,
        ResponseFormat::None,
    ];

    /// Position in [`Self::LADDER`].
    pub fn index(self) -> usize {
        Self::LADDER.iter().position(|f| *f == self).expect("on the ladder")
    }

    pub fn from_index(i: usize) -> ResponseFormat {
        Self::LADDER[i.min(Self::LADDER.len() - 1)]
    }

    /// The step after this one (`None` stays `None`).
    pub fn next(self) -> ResponseFormat {
        Self::from_index(self.index() + 1)
    }

    /// Short name for logs and reports.
    pub fn name(self) -> &'static str {
        match self {
            ResponseFormat::JsonSchema => "json_schema",
            ResponseFormat::JsonObjectSchema => "json_object+schema",
            ResponseFormat::JsonObject => "json_object",
            ResponseFormat::None => "prompt only",
        }
    }

    /// Parse a command-line value (`json_schema`, `json_object_schema`, `json_object`, `none`).
    pub fn parse(s: &str) -> Option<ResponseFormat> {
        match s.trim().to_ascii_lowercase().replace(['-', '+'], "_").as_str() {
            "json_schema" | "auto" => Some(ResponseFormat::JsonSchema),
            "json_object_schema" => Some(ResponseFormat::JsonObjectSchema),
            "json_object" => Some(ResponseFormat::JsonObject),
            "none" | "off" | "prompt" | "prompt_only" => Some(ResponseFormat::None),
            _ => None,
        }
    }

    /// The `response_format` value of this shape for `schema` (`None` for [`ResponseFormat::None`]).
    pub fn payload(self, schema: &Value) -> Option<Value> {
        match self {
            ResponseFormat::JsonSchema => Some(json!({
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": schema, "strict": true},
            })),
            ResponseFormat::JsonObjectSchema => {
                Some(json!({"type": "json_object", "schema": schema}))
            }
            ResponseFormat::JsonObject => Some(json!({"type": "json_object"})),
            ResponseFormat::None => None,
        }
    }
}

/// An HTTP answer with which a server refuses a request's `response_format` (when it carried
/// one): see the module docs.
pub fn is_refusal(status: u16, body: &str) -> bool {
    let names_it = || {
        let b = body.to_ascii_lowercase();
        b.contains("response_format") || b.contains("json_schema")
    };
    matches!(status, 400 | 415 | 422 | 501) || (status >= 500 && names_it())
}

/// The schema of a flat object whose fields are all required strings, nothing else allowed (what
/// the generator's `{"input", "output"}` answers are).
pub fn object_of_strings<S: AsRef<str>>(fields: &[S]) -> Value {
    let props: serde_json::Map<String, Value> =
        fields.iter().map(|f| (f.as_ref().to_string(), json!({"type": "string"}))).collect();
    json!({
        "type": "object",
        "properties": props,
        "required": fields.iter().map(|f| f.as_ref()).collect::<Vec<_>>(),
        "additionalProperties": false,
    })
}

/// The schema a request asks for: `json_fields` as [`object_of_strings`], else `json_schema`.
pub fn schema_for(params: &SamplingParams) -> Option<Value> {
    match (&params.json_fields, &params.json_schema) {
        (Some(fields), _) if !fields.is_empty() => Some(object_of_strings(fields)),
        (_, Some(schema)) => Some(schema.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ladder_and_payloads() {
        assert_eq!(ResponseFormat::JsonSchema.next(), ResponseFormat::JsonObjectSchema);
        assert_eq!(ResponseFormat::None.next(), ResponseFormat::None);
        let s = object_of_strings(&["input", "output"]);
        assert_eq!(s["required"], json!(["input", "output"]));
        assert_eq!(s["additionalProperties"], json!(false));
        let p = ResponseFormat::JsonSchema.payload(&s).unwrap();
        assert_eq!(p["type"], "json_schema");
        assert_eq!(p["json_schema"]["schema"], s);
        let p = ResponseFormat::JsonObjectSchema.payload(&s).unwrap();
        assert_eq!((p["type"].as_str(), &p["schema"]), (Some("json_object"), &s));
        assert!(ResponseFormat::None.payload(&s).is_none());
        assert!(is_refusal(400, "") && is_refusal(422, "") && !is_refusal(503, "overloaded"));
        let llama_cpp_python = r#"{"error":{"message":"1 validation error: ('body', 'response_format', 'type') Input should be 'text' or 'json_object'","type":"internal_server_error"}}"#;
        assert!(is_refusal(500, llama_cpp_python));
        assert_eq!(
            ResponseFormat::parse("json-object+schema"),
            Some(ResponseFormat::JsonObjectSchema)
        );
        assert_eq!(ResponseFormat::parse("off"), Some(ResponseFormat::None));
        let params = SamplingParams {
            json_fields: Some(vec!["a".into()]),
            json_schema: Some(json!({"type": "string"})),
            ..Default::default()
        };
        assert_eq!(schema_for(&params), Some(object_of_strings(&["a"])), "json_fields win");
        assert_eq!(schema_for(&SamplingParams::default()), None);
    }
}
