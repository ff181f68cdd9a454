//! What an OpenAI-compatible server is, and how many requests it decodes at once — asked of the
//! server itself before the first request, so that the backend is named after what answers (the
//! cache key and the logs) and no more requests are in flight than the server has slots for.
//!
//! A handful of GETs, each answered or not within a few seconds, in this order:
//!
//! - `{base}/models`: the served model names and `owned_by` (`llamacpp` — llama.cpp's C++
//!   server; `vllm`; `library` — Ollama; `me` — llama-cpp-python's server; `openai`/`system` —
//!   OpenAI); the `server` header is kept as evidence;
//! - `{root}/props` (llama.cpp's C++ server): `total_slots`, the parallel decoding slots;
//!   `{root}/slots` when `/props` does not say;
//! - `{root}/openapi.json` when the owner is unknown or `me`: llama-cpp-python's server is a
//!   FastAPI app titled "🦙 llama.cpp Python API", which decodes one request at a time (1 slot).
//!
//! `root` is the base URL without its trailing `/v1`. Nothing is sent to api.openai.com (it is
//! OpenAI; its concurrency is its rate limit). A server that answers none of these is
//! `openai-compatible` with the default slots.

use std::time::Duration;

use serde_json::Value;

use super::TeacherError;

/// The name of a server nobody could identify (and of every server when discovery is off).
pub const UNKNOWN_BACKEND: &str = "openai-compatible";

/// What discovery found out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerInfo {
    /// `llama.cpp`, `llama-cpp-python`, `vllm`, `ollama`, `openai`, or the `owned_by` a server
    /// reports; `None` when nothing said.
    pub kind: Option<String>,
    /// What named it (e.g. `/v1/models owned_by=llamacpp`).
    pub kind_source: String,
    /// Requests the server decodes in parallel, when it says.
    pub slots: Option<usize>,
    pub slots_source: String,
    /// Models listed by `/v1/models`.
    pub models: Vec<String>,
    /// The `server` response header of `/v1/models`.
    pub server_header: Option<String>,
}

/// The base URL without a trailing `/v1` (where llama.cpp serves `/props` and `/slots`).
pub fn server_root(base_url: &str) -> String {
    let b = base_url.trim_end_matches('/');
    b.strip_suffix("/v1").unwrap_or(b).to_string()
}

/// The backend name of a `/v1/models` `owned_by` value.
pub fn kind_of_owner(owner: &str) -> String {
    match owner.to_ascii_lowercase().as_str() {
        "llamacpp" | "llama.cpp" | "llama-cpp" => "llama.cpp".into(),
        "vllm" => "vllm".into(),
        "library" | "ollama" => "ollama".into(),
        "openai" | "system" | "openai-internal" | "openai-dev" => "openai".into(),
        "me" => "llama-cpp-python".into(),
        other => other.to_string(),
    }
}

async fn get_json(
    client: &reqwest::Client,
    url: &str,
    key: Option<&str>,
) -> Result<Option<(Value, Option<String>)>, TeacherError> {
    let mut rb = client.get(url).timeout(Duration::from_secs(5));
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    let resp = match rb.send().await {
        Ok(r) => r,
        Err(e) if e.is_connect() => {
            return Err(TeacherError::Connection(super::redact(
                &crate::util::http::error_chain(&e),
                key,
            )))
        }
        Err(_) => return Ok(None),
    };
    let server = resp
        .headers()
        .get(reqwest::header::SERVER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if !resp.status().is_success() {
        return Ok(None);
    }
    Ok(resp.bytes().await.ok().and_then(|b| serde_json::from_slice(&b).ok()).map(|v| (v, server)))
}

/// Ask the server at `base_url` what it is (see the module docs). Fails only when nothing
/// listens there ([`TeacherError::Connection`]).
pub async fn discover(base_url: &str, api_key: Option<&str>) -> Result<ServerInfo, TeacherError> {
    let mut info = ServerInfo::default();
    if base_url.contains("api.openai.com") {
        info.kind = Some("openai".into());
        info.kind_source = "the base URL".into();
        return Ok(info);
    }
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("prompt2model-rs/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| TeacherError::Config(format!("cannot build the HTTP client: {e}")))?;
    let base = base_url.trim_end_matches('/');
    let root = server_root(base);
    if let Some((v, server)) = get_json(&client, &format!("{base}/models"), api_key).await? {
        info.server_header = server;
        let data = v.get("data").and_then(Value::as_array).cloned().unwrap_or_default();
        info.models = data
            .iter()
            .filter_map(|m| m.get("id").and_then(Value::as_str))
            .map(str::to_string)
            .collect();
        if let Some(owner) = data.iter().find_map(|m| m.get("owned_by").and_then(Value::as_str)) {
            info.kind = Some(kind_of_owner(owner));
            info.kind_source = format!("/v1/models owned_by={owner}");
        }
    }
    let kind = info.kind.clone();
    if matches!(kind.as_deref(), None | Some("llama.cpp")) {
        if let Ok(Some((props, _))) = get_json(&client, &format!("{root}/props"), api_key).await {
            if let Some(n) = props.get("total_slots").and_then(Value::as_u64) {
                info.slots = Some(n.max(1) as usize);
                info.slots_source = "server /props total_slots".into();
                if info.kind.is_none() {
                    info.kind = Some("llama.cpp".into());
                    info.kind_source = "/props".into();
                }
            }
        }
        if info.slots.is_none() && info.kind.as_deref() == Some("llama.cpp") {
            if let Ok(Some((Value::Array(slots), _))) =
                get_json(&client, &format!("{root}/slots"), api_key).await
            {
                if !slots.is_empty() {
                    info.slots = Some(slots.len());
                    info.slots_source = "server /slots".into();
                }
            }
        }
    }
    if matches!(info.kind.as_deref(), None | Some("llama-cpp-python")) {
        if let Ok(Some((api, _))) =
            get_json(&client, &format!("{root}/openapi.json"), api_key).await
        {
            let title = api.pointer("/info/title").and_then(Value::as_str).unwrap_or_default();
            if title.contains("llama.cpp Python") {
                info.kind = Some("llama-cpp-python".into());
                info.kind_source = format!("/openapi.json title {title:?}");
                // One model behind one lock: requests are decoded one after another.
                info.slots = Some(1);
                info.slots_source = "llama-cpp-python decodes one request at a time".into();
            }
        }
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_and_owners() {
        assert_eq!(server_root("http://127.0.0.1:8080/v1/"), "http://127.0.0.1:8080");
        assert_eq!(server_root("http://h/api"), "http://h/api");
        assert_eq!(kind_of_owner("llamacpp"), "llama.cpp");
        assert_eq!(kind_of_owner("vllm"), "vllm");
        assert_eq!(kind_of_owner("library"), "ollama");
        assert_eq!(kind_of_owner("me"), "llama-cpp-python");
        assert_eq!(kind_of_owner("acme"), "acme");
    }
}
