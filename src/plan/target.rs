//! A target: where requests go and how they are shaped. `llmload run`'s
//! flags and a daemon `[[target]]` both produce a [`Target`], and one
//! validator checks it, so a new setting is added in one place (plus its
//! flag and its config key).
//!
//! Problems come back as [`Problem`]s naming the [`Setting`]; each face
//! words them its own way (`--max-tokens must be at least 1`,
//! `llmload.toml: target[0].max_tokens: must be at least 1`).

use crate::base::secret::ApiKey;
use crate::client::{ClientBuildError, ClientConfig, LlmClient};
use crate::workload::request::BodyParams;
use std::path::{Path, PathBuf};

/// `endpoint = "mock"` / `--endpoint mock`: the built-in mock.
pub const MOCK_ENDPOINT: &str = "mock";

/// Where the API key comes from. The key itself is read only when the
/// client is built, and never stored anywhere else.
#[derive(Debug, Clone, PartialEq)]
pub enum KeySource {
    /// No key (some endpoints need none).
    None,
    /// Given on the command line (visible in `ps`; warned about).
    Value(ApiKey),
    /// This environment variable.
    Env(String),
    /// The first non-empty line of this file.
    File(PathBuf),
    /// `LLMLOAD_API_KEY`, else `OPENAI_API_KEY`, else none.
    StandardEnv,
}

impl KeySource {
    pub fn resolve(&self) -> Result<Option<ApiKey>, String> {
        let from_env = |var: &str| {
            std::env::var(var)
                .ok()
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .map(ApiKey::new)
        };
        match self {
            Self::None => Ok(None),
            Self::Value(k) => Ok(Some(k.clone())),
            Self::Env(var) => Ok(from_env(var)),
            Self::File(path) => read_key_file(path).map(Some),
            Self::StandardEnv => {
                Ok(from_env("LLMLOAD_API_KEY").or_else(|| from_env("OPENAI_API_KEY")))
            }
        }
    }
}

/// First non-empty line of a key file.
pub fn read_key_file(path: &Path) -> Result<ApiKey, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read API key file: {e}", path.display()))?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| ApiKey::new(l.to_string()))
        .ok_or_else(|| format!("{}: API key file is empty", path.display()))
}

/// One endpoint, its connection settings and the shape of its requests.
#[derive(Debug, Clone)]
pub struct Target {
    /// Endpoint, headers, TLS, timeouts, pool: everything the client needs
    /// except the key, which comes from `key` when the client is built.
    pub client: ClientConfig,
    pub key: KeySource,
    pub model: String,
    pub max_tokens: u32,
    pub temperature: f64,
    /// Send `stream_options.include_usage`.
    pub stream_usage: bool,
    /// Open requests allowed at once; sends beyond are dropped.
    pub max_in_flight: usize,
    /// The server's own Prometheus metrics (`auto`: the endpoint's origin
    /// + `/metrics`), scraped while levels run.
    pub server_metrics: Option<String>,
    pub server_metrics_interval: std::time::Duration,
    /// Chat or completions.
    pub api: crate::workload::Api,
    /// Send `ignore_eos` and `min_tokens`: exact output lengths.
    pub ignore_eos: bool,
    /// Merged into every request body.
    pub extra_body: serde_json::Map<String, serde_json::Value>,
    /// Let `extra_body` change keys llmload sets itself.
    pub force_extra_body: bool,
}

/// A setting a user names, for messages in each face's own words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    Endpoint,
    Model,
    MaxTokens,
    Temperature,
    MaxInFlight,
    Header,
    CaCert,
    ApiKey,
    ServerMetrics,
    Api,
    ExtraBody,
}

impl Setting {
    /// The `llmload run` flag.
    pub fn flag(self) -> &'static str {
        match self {
            Self::Endpoint => "--endpoint",
            Self::Model => "--model",
            Self::MaxTokens => "--max-tokens",
            Self::Temperature => "--temperature",
            Self::MaxInFlight => "--max-in-flight",
            Self::Header => "--header",
            Self::CaCert => "--ca-cert",
            Self::ApiKey => "--api-key-file",
            Self::ServerMetrics => "--server-metrics",
            Self::Api => "--api",
            Self::ExtraBody => "--extra-body",
        }
    }

    /// The daemon's `[[target]]` key.
    pub fn key(self) -> &'static str {
        match self {
            Self::Endpoint => "endpoint",
            Self::Model => "model",
            Self::MaxTokens => "max_tokens",
            Self::Temperature => "temperature",
            Self::MaxInFlight => "max_in_flight",
            Self::Header => "headers",
            Self::CaCert => "ca_cert",
            Self::ApiKey => "api_key_file",
            Self::ServerMetrics => "server_metrics",
            Self::Api => "api",
            Self::ExtraBody => "extra_body",
        }
    }
}

/// What is wrong with one setting.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub setting: Setting,
    pub message: String,
}

impl Problem {
    fn new(setting: Setting, message: impl Into<String>) -> Self {
        Self {
            setting,
            message: message.into(),
        }
    }
}

impl Target {
    /// The seed's defaults: 512 max tokens, temperature 0.7, usage on.
    pub fn new(endpoint: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            client: ClientConfig::new(endpoint),
            key: KeySource::None,
            model: model.into(),
            max_tokens: 512,
            temperature: 0.7,
            stream_usage: true,
            max_in_flight: 20_000,
            server_metrics: None,
            server_metrics_interval: crate::server::scrape::DEFAULT_INTERVAL,
            api: crate::workload::Api::Chat,
            ignore_eos: false,
            extra_body: serde_json::Map::new(),
            force_extra_body: false,
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.client.endpoint
    }

    pub fn is_mock(&self) -> bool {
        self.client.endpoint == MOCK_ENDPOINT
    }

    /// Every problem at once (an empty list is a valid target).
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if !self.is_mock() {
            match self.client.endpoint.parse::<http::Uri>() {
                Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
                _ => out.push(Problem::new(
                    Setting::Endpoint,
                    format!(
                        "'{}' is not an http:// or https:// URL (or \"mock\" for the built-in mock)",
                        self.client.endpoint
                    ),
                )),
            }
        }
        if self.model.trim().is_empty() {
            out.push(Problem::new(Setting::Model, "must not be empty"));
        }
        if self.max_tokens == 0 {
            out.push(Problem::new(Setting::MaxTokens, "must be at least 1"));
        }
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            out.push(Problem::new(
                Setting::Temperature,
                format!("{} must be a number >= 0", self.temperature),
            ));
        }
        if let Err(e) = crate::workload::check_extra_body(&self.extra_body, self.force_extra_body) {
            out.push(Problem::new(Setting::ExtraBody, e));
        }
        if self.api == crate::workload::Api::Completions
            && self
                .client
                .endpoint
                .trim_end_matches('/')
                .ends_with("/chat/completions")
        {
            out.push(Problem::new(
                Setting::Api,
                format!(
                    "completions, but the endpoint '{}' is the chat API: give its /v1/completions URL",
                    self.client.endpoint
                ),
            ));
        }
        if self.max_in_flight == 0 {
            out.push(Problem::new(Setting::MaxInFlight, "must be at least 1"));
        }
        for (k, v) in &self.client.headers {
            if http::HeaderName::from_bytes(k.trim().as_bytes()).is_err()
                || http::HeaderValue::from_str(v.trim()).is_err()
            {
                out.push(Problem::new(
                    Setting::Header,
                    format!("'{k}' is not a valid header name and value"),
                ));
            }
        }
        if let Some(path) = &self.client.ca_cert
            && let Err(e) = crate::client::tls::read_pem(path)
        {
            out.push(Problem::new(Setting::CaCert, e.to_string()));
        }
        if let Some(url) = &self.server_metrics
            && url != "auto"
            && !matches!(
                url.parse::<http::Uri>()
                    .ok()
                    .as_ref()
                    .and_then(|u| u.scheme_str()),
                Some("http" | "https")
            )
        {
            out.push(Problem::new(
                Setting::ServerMetrics,
                format!("'{url}' is not an http:// or https:// URL (or \"auto\")"),
            ));
        }
        if let KeySource::File(path) = &self.key
            && let Err(e) = read_key_file(path)
        {
            out.push(Problem::new(Setting::ApiKey, e));
        }
        out
    }

    pub fn body_params(&self) -> BodyParams {
        BodyParams {
            model: self.model.clone(),
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            stream_usage: self.stream_usage,
            api: self.api,
            ignore_eos: self.ignore_eos,
            extra_body: self.extra_body.clone(),
        }
    }

    /// The client for this target: the key resolved, the runaway-stream
    /// cap set from `max_tokens`. `keep_ids` keeps response ids (traces).
    pub fn build_client(&self, keep_ids: bool) -> Result<LlmClient, TargetError> {
        let mut cfg = self.client.clone().with_max_tokens(self.max_tokens);
        cfg.api_key = self.key.resolve().map_err(TargetError::Key)?;
        cfg.keep_response_ids = keep_ids;
        LlmClient::new(cfg).map_err(TargetError::Client)
    }
}

impl Target {
    /// The scraper of the server's own metrics, if the target names them.
    /// Call it once the endpoint is final (`auto` follows it).
    pub fn server_scraper(&self) -> Result<Option<crate::server::scrape::ServerScraper>, String> {
        let Some(given) = &self.server_metrics else {
            return Ok(None);
        };
        let url = crate::server::scrape::resolve_url(given, self.endpoint())?;
        crate::server::scrape::ServerScraper::new(
            &url,
            Some(self.model.clone()),
            self.server_metrics_interval,
            &self.client.proxies,
        )
        .map(Some)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{0}")]
    Key(String),
    #[error(transparent)]
    Client(#[from] ClientBuildError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_validator_names_every_problem() {
        let mut t = Target::new("ftp://x", " ");
        t.max_tokens = 0;
        t.temperature = -1.0;
        t.max_in_flight = 0;
        t.client.headers = vec![("bad name".into(), "v".into())];
        t.client.ca_cert = Some("/nonexistent/ca.pem".into());
        t.key = KeySource::File("/nonexistent/key".into());
        let p: Vec<Setting> = t.validate().iter().map(|p| p.setting).collect();
        assert_eq!(
            p,
            [
                Setting::Endpoint,
                Setting::Model,
                Setting::MaxTokens,
                Setting::Temperature,
                Setting::MaxInFlight,
                Setting::Header,
                Setting::CaCert,
                Setting::ApiKey
            ]
        );
        assert!(Target::new("mock", "m").validate().is_empty());
        assert!(
            Target::new("https://h:8443/v1/chat/completions", "m")
                .validate()
                .is_empty()
        );
    }

    #[test]
    fn keys_come_from_where_they_are_said_to() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        std::fs::write(&f, "\n  sk-file  \n").unwrap();
        assert_eq!(
            KeySource::File(f).resolve().unwrap().unwrap().expose(),
            "sk-file"
        );
        assert_eq!(KeySource::None.resolve().unwrap(), None);
        assert_eq!(
            KeySource::Env("LLMLOAD_TEST_SURELY_UNSET_VAR".into())
                .resolve()
                .unwrap(),
            None
        );
        let empty = dir.path().join("e");
        std::fs::write(&empty, "\n\n").unwrap();
        assert!(
            KeySource::File(empty)
                .resolve()
                .unwrap_err()
                .contains("empty")
        );
    }
}
