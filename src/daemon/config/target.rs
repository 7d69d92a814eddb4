//! The `[[target]]` sections: endpoints and their client settings, checked
//! by the one validator every face shares (`plan::target`).

use super::Problems;
use super::*;
use std::collections::HashSet;
use std::path::Path;

/// Every target, validated, and the set of their names (jobs name them).
pub(super) fn targets(
    raw: &RawConfig,
    base: &Path,
    pr: &mut Problems,
) -> (Vec<Target>, HashSet<String>) {
    let file = pr.file.clone();
    let mut targets = Vec::new();
    let mut names = HashSet::new();
    for (i, t) in raw.target.iter().enumerate() {
        let key = |k: &str| format!("target[{i}].{k}");
        if !valid_name(&t.name) {
            pr.err(
                &key("name"),
                format!(
                    "'{}' must be 1-64 letters, digits, '-' or '_' (it names directories and metric labels)",
                    t.name
                ),
            );
        }
        if !names.insert(t.name.clone()) {
            pr.err(&key("name"), format!("duplicate target name '{}'", t.name));
        }
        let dataset = if t.dataset.starts_with(crate::workload::SYNTHETIC) {
            PathBuf::from(&t.dataset)
        } else {
            rel(base, &t.dataset)
        };
        let dataset_format = match t.dataset_format.as_deref().map(str::parse) {
            None => None,
            Some(Ok(f)) => Some(f),
            Some(Err(e)) => {
                pr.err(&key("dataset_format"), e);
                None
            }
        };
        let tokenizer = t.tokenizer.as_deref().map(|p| rel(base, p));
        if t.api_key_env.is_some() && t.api_key_file.is_some() {
            pr.err(
                &key("api_key_env"),
                "set api_key_env or api_key_file, not both".into(),
            );
        }
        if let Some(var) = &t.api_key_env
            && std::env::var(var)
                .map(|v| v.trim().is_empty())
                .unwrap_or(true)
        {
            pr.warn(format!(
                "{file}: {}: environment variable {var} is not set: requests will carry no key",
                key("api_key_env")
            ));
        }
        let api_key_file = t.api_key_file.as_deref().map(|f| rel(base, f));
        let mut dur = |k: &str, v: &Option<DurationValue>, default: Option<Duration>| match v {
            None => default,
            Some(v) => match finite_duration(v) {
                Ok(d) => Some(d),
                Err(e) => {
                    pr.err(&key(k), e);
                    default
                }
            },
        };
        let request_timeout = dur(
            "request_timeout",
            &t.request_timeout,
            Some(Duration::from_secs(300)),
        )
        .expect("default set");
        let connect_timeout = dur(
            "connect_timeout",
            &t.connect_timeout,
            Some(Duration::from_secs(10)),
        )
        .expect("default set");
        let first_token_timeout = dur("first_token_timeout", &t.first_token_timeout, None);
        let server_metrics_interval =
            dur("server_metrics_interval", &t.server_metrics_interval, None);
        let idle_timeout = dur("idle_timeout", &t.idle_timeout, None);
        let pool_idle_timeout = dur(
            "pool_idle_timeout",
            &t.pool_idle_timeout,
            Some(crate::client::DEFAULT_POOL_IDLE_TIMEOUT),
        )
        .expect("default set");
        if let Some(d) = t.keep_days
            && !(d.is_finite() && d > 0.0)
        {
            pr.err(&key("keep_days"), format!("{d} must be > 0"));
        }
        if t.keep_runs == Some(0) {
            pr.err(
                &key("keep_runs"),
                "must be at least 1 (omit it to keep everything)".into(),
            );
        }
        if t.insecure {
            pr.warn(format!(
                "{file}: {}: TLS verification is OFF for target '{}'",
                key("insecure"),
                t.name
            ));
        }
        let mut spec = crate::plan::target::Target::new(t.endpoint.clone(), t.model.clone());
        spec.key = match (&t.api_key_env, api_key_file) {
            (Some(var), _) => crate::plan::target::KeySource::Env(var.clone()),
            (None, Some(f)) => crate::plan::target::KeySource::File(f),
            (None, None) => crate::plan::target::KeySource::None,
        };
        spec.client.headers = t
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        spec.client.request_timeout = request_timeout;
        spec.client.connect_timeout = connect_timeout;
        spec.client.first_token_timeout = first_token_timeout;
        spec.client.idle_timeout = idle_timeout;
        spec.client.pool_idle_timeout = pool_idle_timeout;
        spec.client.ca_cert = t.ca_cert.as_deref().map(|c| rel(base, c));
        spec.client.insecure = t.insecure;
        spec.server_metrics = t.server_metrics.clone();
        if let Some(v) = server_metrics_interval {
            spec.server_metrics_interval = v;
        }
        if let Some(m) = t.max_tokens {
            spec.max_tokens = m;
        }
        if let Some(v) = t.temperature {
            spec.temperature = v;
        }
        if let Some(v) = t.stream_usage {
            spec.stream_usage = v;
        }
        if let Some(v) = t.max_in_flight {
            spec.max_in_flight = v;
        }
        match t.api.as_deref().map(str::parse) {
            None => {}
            Some(Ok(a)) => spec.api = a,
            Some(Err(e)) => pr.err(&key("api"), e),
        }
        spec.ignore_eos = t.ignore_eos;
        spec.force_extra_body = t.force_extra_body;
        if let Some(table) = &t.extra_body {
            match serde_json::to_value(table) {
                Ok(serde_json::Value::Object(m)) => spec.extra_body = m,
                _ => pr.err(&key("extra_body"), "must be a table".into()),
            }
        }
        let think_time = match t
            .think_time
            .as_deref()
            .map(crate::plan::think::ThinkTime::parse)
        {
            None => crate::plan::think::ThinkTime::None,
            Some(Ok(t)) => t,
            Some(Err(e)) => {
                pr.err(&key("think_time"), e);
                crate::plan::think::ThinkTime::None
            }
        };
        match crate::plan::prompts::load_with(
            &dataset.to_string_lossy(),
            dataset_format,
            tokenizer.as_deref(),
            0,
            &spec,
            t.sessions,
        ) {
            Err(e) => pr.err(&key("dataset"), e.to_string()),
            Ok(p) if p.sessions.is_none() && think_time != crate::plan::think::ThinkTime::None => {
                pr.err(
                    &key("think_time"),
                    "is the pause between a session's turns, and this dataset has no sessions"
                        .into(),
                )
            }
            Ok(_) => {}
        }
        for p in spec.validate() {
            // A key file that is missing now may appear before the daemon
            // starts (a mounted secret): a warning, as before.
            if p.setting == crate::plan::target::Setting::ApiKey {
                pr.warn(format!("{file}: {}: {}", key(p.setting.key()), p.message));
            } else {
                pr.err(&key(p.setting.key()), p.message);
            }
        }
        targets.push(Target {
            name: t.name.clone(),
            spec,
            dataset,
            dataset_format,
            tokenizer,
            sessions: t.sessions,
            think_time,
            keep_runs: t.keep_runs,
            keep_days: t.keep_days,
            definition: format!("{t:?}"),
        });
    }
    if raw.target.is_empty() {
        pr.err("target", "define at least one [[target]]".into());
    }
    (targets, names)
}
