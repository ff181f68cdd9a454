//! Which teacher answers, as plain data: what every command's teacher flags and a run's config file
//! say, built into a [`Teacher`] in one place so every command gets the same defaults.

use serde::{Deserialize, Serialize};

use super::local::LocalTeacher;
use super::openai::{OpenAiConfig, OpenAiTeacher};
use super::Teacher;

/// The reference's request rate (`max_api_calls_per_minute`-style pacing of 80 requests a minute):
/// the default of every command, for every server, unless the user sets another.
pub const DEFAULT_REQUESTS_PER_MINUTE: f64 = 80.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TeacherKind {
    /// The in-process model (offline default: SmolLM2-135M-Instruct).
    Local,
    /// Any OpenAI-compatible chat-completions server (OpenAI, vLLM, llama.cpp, Ollama).
    Openai,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TeacherSettings {
    pub kind: TeacherKind,
    /// Base URL of the OpenAI-compatible server, up to and including `/v1`.
    pub base_url: String,
    /// Model name at the server.
    pub model: String,
    /// Environment variable holding the API key (the key itself is never configured or logged).
    pub api_key_env: String,
    /// Requests-per-minute limit; `None` = unthrottled.
    pub requests_per_minute: Option<f64>,
    /// Stop after this many billed calls (everything obtained so far is kept).
    pub max_api_calls: Option<u64>,
    /// Seconds before an unanswered request is abandoned and retried.
    pub request_timeout_secs: f64,
}

impl Default for TeacherSettings {
    fn default() -> Self {
        TeacherSettings {
            kind: TeacherKind::Local,
            base_url: "https://api.openai.com/v1".into(),
            model: "gpt-3.5-turbo".into(),
            api_key_env: "OPENAI_API_KEY".into(),
            requests_per_minute: Some(DEFAULT_REQUESTS_PER_MINUTE),
            max_api_calls: None,
            request_timeout_secs: 120.0,
        }
    }
}

impl TeacherSettings {
    /// The OpenAI-compatible backend's configuration for these settings.
    pub fn openai_config(&self) -> OpenAiConfig {
        let mut cfg = OpenAiConfig::for_base_url(&self.base_url, &self.model);
        cfg.api_key_env = self.api_key_env.clone();
        cfg.requests_per_minute = self.requests_per_minute;
        cfg.max_api_calls = self.max_api_calls;
        cfg.request_timeout_secs = self.request_timeout_secs;
        cfg
    }

    /// The teacher these settings name (the local model is loaded, an OpenAI-compatible client
    /// checked: base URL, key present where required).
    pub fn build(&self) -> anyhow::Result<Box<dyn Teacher>> {
        Ok(match self.kind {
            TeacherKind::Local => Box::new(LocalTeacher::offline_default(self.max_api_calls)?),
            TeacherKind::Openai => Box::new(OpenAiTeacher::new(self.openai_config())?),
        })
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
}
