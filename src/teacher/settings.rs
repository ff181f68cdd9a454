//! Which teacher answers, as plain data: what every command's teacher flags and a run's config file
//! say, built into a [`Teacher`] in one place so every command gets the same defaults.
//!
//! An OpenAI-compatible teacher is one endpoint (`base_url`) or a fleet (`base_url` plus
//! `endpoints`, see [`super::fleet`]). Before the first request each server is asked what it is
//! and how many requests it decodes at once ([`super::discover`]), unless the settings say
//! (`backend_name`, `slots`) or `discover` is off. An endpoint may carry its own settings after a
//! `#` in its URL, which is never sent to the server:
//! `http://127.0.0.1:8080/v1#slots=1&rpm=0&backend=llama.cpp&model=smollm2`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::discover::{self, ServerInfo, UNKNOWN_BACKEND};
use super::fleet::{FleetTeacher, DEFAULT_REMOVE_AFTER_LOST};
use super::local::LocalTeacher;
use super::openai::{read_api_key, OpenAiConfig, OpenAiTeacher, Provenance};
use super::structured::ResponseFormat;
use super::{Accounting, Pricing, Teacher, TeacherError};

/// The reference's request rate (`max_api_calls_per_minute`-style pacing of 80 requests a minute):
/// the default of every command, for every server, unless the user sets another.
pub const DEFAULT_REQUESTS_PER_MINUTE: f64 = 80.0;

/// In-flight requests per endpoint when neither the settings nor the server say.
pub const DEFAULT_SLOTS: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TeacherKind {
    /// The in-process model (offline default: SmolLM2-135M-Instruct).
    Local,
    /// Any OpenAI-compatible chat-completions server (OpenAI, vLLM, llama.cpp, Ollama).
    Openai,
}

/// One more endpoint of a fleet; unset fields take the teacher's settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EndpointSettings {
    /// Base URL up to and including `/v1`.
    pub base_url: String,
    /// Backend name of this server (default: what it reports).
    pub backend_name: Option<String>,
    /// Its slots (default: what it reports, else [`DEFAULT_SLOTS`]).
    pub slots: Option<usize>,
    /// Its requests-per-minute limit (0 = none; default: the teacher's).
    pub requests_per_minute: Option<f64>,
    /// The model's name at this server (default: the teacher's `model`).
    pub model: Option<String>,
}

impl EndpointSettings {
    /// Parse `URL[#key=value&…]` (keys: `slots`, `rpm`, `backend`, `model`).
    pub fn parse(spec: &str) -> Result<EndpointSettings, TeacherError> {
        let spec = spec.trim();
        let (url, opts) = spec.split_once('#').unwrap_or((spec, ""));
        let mut e = EndpointSettings { base_url: url.trim().to_string(), ..Default::default() };
        for kv in opts.split('&').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(|| {
                TeacherError::Config(format!("`{kv}` in `{spec}`: expected key=value"))
            })?;
            let bad =
                || TeacherError::Config(format!("`{kv}` in `{spec}`: not a valid value for `{k}`"));
            match k.trim() {
                "slots" => {
                    e.slots = Some(v.parse().ok().filter(|&n: &usize| n > 0).ok_or_else(bad)?)
                }
                "rpm" => {
                    e.requests_per_minute =
                        Some(v.parse().ok().filter(|r: &f64| *r >= 0.0).ok_or_else(bad)?)
                }
                "backend" | "name" => e.backend_name = Some(v.trim().to_string()),
                "model" => e.model = Some(v.trim().to_string()),
                other => {
                    return Err(TeacherError::Config(format!(
                    "unknown endpoint setting `{other}` in `{spec}` (slots, rpm, backend, model)"
                )))
                }
            }
        }
        Ok(e)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TeacherSettings {
    pub kind: TeacherKind,
    /// Base URL of the OpenAI-compatible server, up to and including `/v1` (the first endpoint
    /// of a fleet; may carry `#slots=…&rpm=…&backend=…&model=…`).
    pub base_url: String,
    /// Further endpoints: with `base_url`, a fleet.
    pub endpoints: Vec<EndpointSettings>,
    /// Model name at the server.
    pub model: String,
    /// Environment variable holding the API key (the key itself is never configured or logged).
    pub api_key_env: String,
    /// Requests-per-minute limit per endpoint; `None` = unthrottled.
    pub requests_per_minute: Option<f64>,
    /// Stop after this many billed calls (everything obtained so far is kept).
    pub max_api_calls: Option<u64>,
    /// Seconds after which a sent request counts as slow (it is kept waiting, never sent twice).
    pub request_timeout_secs: f64,
    /// Backend name in the cache key and the logs; `None`: what the server reports.
    pub backend_name: Option<String>,
    /// In-flight requests per endpoint; `None`: what the server reports, else [`DEFAULT_SLOTS`].
    pub slots: Option<usize>,
    /// The first `response_format` shape structured requests try.
    pub response_format: ResponseFormat,
    /// Ask each server what it is and how many slots it has before the first request.
    pub discover: bool,
    /// The local teacher's weights: f32, or bf16 (about 1.5× the tokens/s in batched rounds on CPUs
    /// with AVX-512 BF16; different answers, so a different cache key). Left out of the file when
    /// f32, so earlier settings and their fingerprints are unchanged.
    #[serde(skip_serializing_if = "crate::models::precision::Precision::is_f32")]
    pub local_precision: crate::models::precision::Precision,
    /// The local teacher's decoding engine: libtorch, or llama.cpp in process (the GGUF's
    /// quantised weights; different answers, so a different cache key). Left out of the file when
    /// libtorch, so earlier settings and their fingerprints are unchanged.
    #[serde(default, skip_serializing_if = "crate::models::chat::DecodingEngine::is_libtorch")]
    pub local_engine: crate::models::chat::DecodingEngine,
}

impl Default for TeacherSettings {
    fn default() -> Self {
        TeacherSettings {
            kind: TeacherKind::Local,
            base_url: "https://api.openai.com/v1".into(),
            endpoints: Vec::new(),
            model: "gpt-3.5-turbo".into(),
            api_key_env: "OPENAI_API_KEY".into(),
            requests_per_minute: Some(DEFAULT_REQUESTS_PER_MINUTE),
            max_api_calls: None,
            request_timeout_secs: 120.0,
            backend_name: None,
            slots: None,
            response_format: ResponseFormat::JsonSchema,
            discover: true,
            local_precision: Default::default(),
            local_engine: Default::default(),
        }
    }
}

impl TeacherSettings {
    /// Every endpoint: `base_url` (split at commas) and then `endpoints`.
    pub fn endpoint_list(&self) -> Result<Vec<EndpointSettings>, TeacherError> {
        let mut all = Vec::new();
        for spec in self.base_url.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            all.push(EndpointSettings::parse(spec)?);
        }
        for e in &self.endpoints {
            // An endpoint's URL may carry `#…` settings too; explicit fields win.
            let p = EndpointSettings::parse(&e.base_url)?;
            all.push(EndpointSettings {
                base_url: p.base_url,
                backend_name: e.backend_name.clone().or(p.backend_name),
                slots: e.slots.or(p.slots),
                requests_per_minute: e.requests_per_minute.or(p.requests_per_minute),
                model: e.model.clone().or(p.model),
            });
        }
        if all.is_empty() {
            return Err(TeacherError::Config("no base URL".into()));
        }
        Ok(all)
    }

    /// The OpenAI-compatible backend's configuration for the first endpoint, before discovery.
    pub fn openai_config(&self) -> OpenAiConfig {
        let first =
            self.endpoint_list().ok().and_then(|l| l.into_iter().next()).unwrap_or_else(|| {
                EndpointSettings { base_url: self.base_url.clone(), ..Default::default() }
            });
        self.endpoint_config(&first)
    }

    fn endpoint_config(&self, e: &EndpointSettings) -> OpenAiConfig {
        let model = e.model.clone().unwrap_or_else(|| self.model.clone());
        let mut cfg = OpenAiConfig::for_base_url(&e.base_url, &model);
        cfg.api_key_env = self.api_key_env.clone();
        cfg.requests_per_minute = match e.requests_per_minute {
            Some(r) => (r > 0.0).then_some(r),
            None => self.requests_per_minute,
        };
        cfg.max_api_calls = self.max_api_calls;
        cfg.request_timeout_secs = self.request_timeout_secs;
        cfg.response_format = self.response_format;
        if let Some(name) = e.backend_name.clone().or_else(|| self.backend_name.clone()) {
            cfg.backend_name = name;
        }
        let slots = e.slots.or(self.slots).unwrap_or(DEFAULT_SLOTS);
        cfg.max_concurrency = slots;
        cfg.initial_concurrency = slots;
        cfg
    }

    /// The teacher these settings name (the local model is loaded, an OpenAI-compatible client
    /// checked: base URL, key present where required; servers asked what they are).
    pub fn build(&self) -> anyhow::Result<Box<dyn Teacher>> {
        Ok(match self.kind {
            TeacherKind::Local => Box::new(LocalTeacher::offline_default(
                self.max_api_calls,
                self.local_precision,
                self.local_engine,
            )?),
            TeacherKind::Openai => self.build_openai()?,
        })
    }

    /// The OpenAI-compatible teacher: one [`OpenAiTeacher`], or a [`FleetTeacher`] of several.
    pub fn build_openai(&self) -> Result<Box<dyn Teacher>, TeacherError> {
        let list = self.endpoint_list()?;
        let accounting =
            Arc::new(Accounting::new(Pricing::for_model(&self.model), self.max_api_calls));
        let mut teachers = Vec::with_capacity(list.len());
        // The fleet's name: what the endpoints that could be named agree on.
        let mut names: Vec<String> = Vec::new();
        for e in &list {
            let mut cfg = self.endpoint_config(e);
            let info = if self.discover {
                discover_blocking(&cfg.base_url, &cfg.api_key_env)
            } else {
                None
            };
            let info_ref = info.as_ref();
            let user_name = e.backend_name.clone().or_else(|| self.backend_name.clone());
            let (name, name_source) = match (&user_name, info_ref.and_then(|i| i.kind.clone())) {
                (Some(n), _) => (Some(n.clone()), "setting".to_string()),
                (None, Some(k)) => {
                    (Some(k), info_ref.map(|i| i.kind_source.clone()).unwrap_or_default())
                }
                (None, None) if cfg.base_url.contains("api.openai.com") => {
                    (Some("openai".to_string()), "the base URL".into())
                }
                (None, None) => (None, "nothing reported it; default".into()),
            };
            cfg.backend_name = name.clone().unwrap_or_else(|| cfg.backend_name.clone());
            if let Some(n) = name {
                names.push(n);
            }
            let (slots, slots_source) =
                match (e.slots.or(self.slots), info_ref.and_then(|i| i.slots)) {
                    (Some(s), _) => (s, "setting".to_string()),
                    (None, Some(s)) => {
                        (s, info_ref.map(|i| i.slots_source.clone()).unwrap_or_default())
                    }
                    (None, None) => (DEFAULT_SLOTS, "default".into()),
                };
            cfg.max_concurrency = slots;
            cfg.initial_concurrency = slots;
            if let Some(i) = info_ref {
                if !i.models.is_empty() && !i.models.iter().any(|m| m == &cfg.model) {
                    tracing::warn!(endpoint = %cfg.base_url, model = %cfg.model, served = ?i.models, "the server does not list this model name");
                }
            }
            tracing::info!(endpoint = %cfg.base_url, backend = %cfg.backend_name, backend_source = %name_source, slots, slots_source = %slots_source, "teacher endpoint");
            let mut t = OpenAiTeacher::with_accounting(cfg, accounting.clone())?;
            t.set_provenance(Provenance { backend_source: name_source, slots_source });
            teachers.push(t);
        }
        if teachers.len() == 1 {
            return Ok(Box::new(teachers.pop().expect("one")));
        }
        names.sort();
        names.dedup();
        let fleet_name = match names.len() {
            0 => UNKNOWN_BACKEND.to_string(),
            _ => names.join("+"),
        };
        tracing::info!(endpoints = teachers.len(), backend = %fleet_name, "teacher fleet");
        Ok(Box::new(FleetTeacher::new(
            teachers,
            fleet_name,
            self.model.clone(),
            DEFAULT_REMOVE_AFTER_LOST,
        )?))
    }
}

/// [`discover::discover`] from synchronous code; `None` (with a warning) when nothing answers.
fn discover_blocking(base_url: &str, api_key_env: &str) -> Option<ServerInfo> {
    let key = read_api_key(api_key_env);
    let url = base_url.to_string();
    match crate::util::runtime::block_on(
        async move { discover::discover(&url, key.as_deref()).await },
    ) {
        Ok(Ok(info)) => Some(info),
        Ok(Err(e)) => {
            tracing::warn!(endpoint = %base_url, error = %e, "the server did not answer discovery; default name and slots");
            None
        }
        Err(e) => {
            tracing::warn!(endpoint = %base_url, error = %e, "discovery could not run");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_server_gets_the_reference_rate_by_default() {
        let local_server = TeacherSettings {
            kind: TeacherKind::Openai,
            base_url: "http://127.0.0.1:8000/v1".into(),
            ..Default::default()
        };
        assert_eq!(
            local_server.openai_config().requests_per_minute,
            Some(DEFAULT_REQUESTS_PER_MINUTE)
        );
        assert_eq!(TeacherSettings::default().openai_config().requests_per_minute, Some(80.0));
        let unthrottled = TeacherSettings { requests_per_minute: None, ..local_server };
        assert_eq!(unthrottled.openai_config().requests_per_minute, None);
    }

    #[test]
    fn the_local_engine_is_in_the_settings_file_only_when_it_is_not_libtorch() {
        let default = serde_json::to_value(TeacherSettings::default()).unwrap();
        assert!(default.get("local_engine").is_none(), "{default}");
        let s = TeacherSettings {
            local_engine: crate::models::chat::DecodingEngine::LlamaCpp,
            ..Default::default()
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["local_engine"], "llama-cpp");
        let back: TeacherSettings = serde_json::from_value(v).unwrap();
        assert_eq!(back.local_engine, crate::models::chat::DecodingEngine::LlamaCpp);
    }

    #[test]
    fn endpoint_specs() {
        let e = EndpointSettings::parse("http://h:8080/v1#slots=2&rpm=0&backend=llama.cpp&model=m")
            .unwrap();
        assert_eq!(e.base_url, "http://h:8080/v1");
        assert_eq!(
            (e.slots, e.requests_per_minute, e.backend_name.as_deref(), e.model.as_deref()),
            (Some(2), Some(0.0), Some("llama.cpp"), Some("m"))
        );
        assert!(EndpointSettings::parse("http://h/v1#slots=0").is_err());
        assert!(EndpointSettings::parse("http://h/v1#colour=red").is_err());
        let s = TeacherSettings {
            base_url: "http://a/v1#slots=1, http://b/v1".into(),
            endpoints: vec![EndpointSettings {
                base_url: "http://c/v1#rpm=5".into(),
                ..Default::default()
            }],
            slots: Some(3),
            ..Default::default()
        };
        let l = s.endpoint_list().unwrap();
        assert_eq!(
            l.iter().map(|e| e.base_url.as_str()).collect::<Vec<_>>(),
            ["http://a/v1", "http://b/v1", "http://c/v1"]
        );
        let a = s.endpoint_config(&l[0]);
        assert_eq!((a.max_concurrency, a.backend_name.as_str()), (1, UNKNOWN_BACKEND));
        assert_eq!(s.endpoint_config(&l[1]).max_concurrency, 3);
        assert_eq!(l[2].requests_per_minute, Some(5.0));
        let unthrottled = EndpointSettings { requests_per_minute: Some(0.0), ..l[2].clone() };
        assert_eq!(s.endpoint_config(&unthrottled).requests_per_minute, None);
    }
}
