//! What `run` and `capacity` share before their first request: the target
//! checked, the dataset loaded, the built-in mock started if asked for,
//! traces, the client, the run directory and the observer chain.

use crate::base::error::UsageError;
use crate::cli::TargetArgs;
use crate::engine::sweep::{Engine, NoObserver, Observer};
use crate::mock::{MockConfig, MockServer};
use crate::plan::target::Target;
use crate::results::{self, RunDir};
use anyhow::Context;
use std::sync::Arc;

pub struct Session {
    pub target: Target,
    /// What the run sends, for `metadata.json` (none for a trace replay,
    /// whose prompts come from the trace).
    pub workload: Option<crate::workload::Workload>,
    pub engine: Engine,
    pub dir: RunDir,
    pub now: chrono::DateTime<chrono::Local>,
    pub telemetry: Option<crate::observe::telemetry::Telemetry>,
    pub sweep_span: Option<crate::observe::telemetry::SweepSpan>,
    /// The built-in mock, when `--endpoint mock`; shut down at the end.
    pub mock: Option<MockServer>,
}

impl Session {
    /// Everything up to the first request. `qps` names the levels for
    /// the trace's root span.
    /// `stamp` names the run directory (default: now).
    pub async fn start(a: &TargetArgs, qps: &[f64], stamp: Option<&str>) -> anyhow::Result<Self> {
        let mut target = a.target().map_err(UsageError::new)?;
        let problems: Vec<String> = target
            .validate()
            .into_iter()
            .map(|p| format!("{} {}", p.setting.flag(), p.message))
            .collect();
        if !problems.is_empty() {
            return Err(UsageError::new(problems.join("; ")).into());
        }
        warn_about_flags(a);
        let prompts = match &a.dataset {
            Some(d) => Some(crate::plan::prompts::load_with(
                &d.to_string_lossy(),
                a.dataset_format,
                a.tokenizer.as_deref(),
                a.seed,
                &target,
                a.sessions,
            )?),
            None => None,
        };
        let has_sessions = prompts.as_ref().is_some_and(|p| p.sessions.is_some());
        if !has_sessions && a.think_time != crate::plan::think::ThinkTime::None {
            return Err(UsageError::new(
                "--think-time is the pause between a session's turns: give a multi-turn dataset \
                 (synthetic:…,turns=T,turn_input=K; JSONL with session_id/turn; ShareGPT with --sessions)",
            )
            .into());
        }
        for n in prompts.iter().flat_map(|p| &p.notices) {
            crate::errln!("note: {n}");
        }

        let mock = if target.is_mock() {
            let cfg = MockConfig {
                seed: a.seed,
                ..MockConfig::default()
            };
            let m = MockServer::start(cfg, "127.0.0.1:0".parse().expect("valid address"))
                .await
                .context("starting the built-in mock")?;
            crate::errln!("using the built-in mock endpoint at {}", m.chat_url());
            target.client.endpoint = m.url_for(target.api);
            // Our own loopback mock is never behind the user's proxy.
            target.client.proxies = crate::client::proxy::ProxySettings::direct();
            Some(m)
        } else {
            None
        };

        let env = |k: &str| std::env::var(k).ok();
        let telemetry = match crate::observe::telemetry::Settings::resolve(
            a.otlp_endpoint.as_deref(),
            None,
            &env,
        )
        .map_err(UsageError::new)?
        {
            Some(mut s) => {
                s.propagate = !a.no_trace_propagation;
                s.proxies = a.proxies().map_err(UsageError::new)?;
                Some(crate::observe::telemetry::Telemetry::start(s).map_err(UsageError::new)?)
            }
            None => None,
        };
        let client = Arc::new(
            target
                .build_client(telemetry.is_some())
                .map_err(|e| UsageError::new(e.to_string()))?,
        );
        let (requests, workload, sessions) = match prompts {
            Some(p) => {
                let sessions = p.sessions.map(|s| {
                    Arc::new(crate::engine::session::SessionPlan {
                        sessions: s,
                        params: target.body_params(),
                        think: a.think_time,
                        seed: a.seed,
                    })
                });
                (Arc::new(p.requests), Some(p.workload), sessions)
            }
            None => (Arc::new(Vec::new()), None, None),
        };

        let now = chrono::Local::now();
        let stamp = stamp
            .map(str::to_owned)
            .unwrap_or_else(|| results::stamp(&now));
        let dir = RunDir::create(&a.results_dir, &stamp).with_context(|| {
            format!(
                "cannot create a run directory under {}",
                a.results_dir.display()
            )
        })?;
        let sweep_span = telemetry.as_ref().map(|t| {
            t.sweep_started(&crate::observe::telemetry::SweepAttrs {
                target: &results::redact_url(target.endpoint()),
                model: &target.model,
                qps,
                run_id: &dir.id,
                job: None,
            })
        });
        let observer: Arc<dyn Observer> = match (&telemetry, &sweep_span) {
            (Some(t), Some(s)) => Arc::new(t.request_observer(
                s,
                &target.model,
                client.uri(),
                target.max_tokens,
                target.temperature,
            )),
            _ => Arc::new(NoObserver),
        };
        let observer: Arc<dyn Observer> = if a.record_requests {
            Arc::new(
                crate::observe::requests_jsonl::RecordsObserver::create(&dir.path, Some(observer))
                    .with_context(|| {
                        format!(
                            "creating {}",
                            dir.file(crate::observe::requests_jsonl::RECORDS_FILE)
                                .display()
                        )
                    })?,
            )
        } else {
            observer
        };
        let server_metrics = target
            .server_scraper()
            .map_err(|e| UsageError::new(format!("--server-metrics {e}")))?
            .map(Arc::new);
        let engine = Engine {
            client,
            requests,
            max_in_flight: target.max_in_flight,
            server_metrics,
            shard: None,
            observer,
            sessions,
        };
        Ok(Self {
            target,
            workload,
            engine,
            dir,
            now,
            telemetry,
            sweep_span,
            mock,
        })
    }

    /// Close the root span, flush traces, stop the mock.
    pub async fn finish(self, summary: &results::Summary) {
        if let (Some(t), Some(s)) = (&self.telemetry, &self.sweep_span) {
            t.sweep_finished(s, summary);
            t.shutdown().await;
        }
        if let Some(m) = self.mock {
            m.shutdown().await;
        }
    }
}

fn warn_about_flags(a: &TargetArgs) {
    if a.api_key.is_some() {
        crate::errln!(
            "warning: --api-key on the command line is visible to other users (ps, shell history); \
             prefer LLMLOAD_API_KEY=... in the environment or --api-key-file PATH"
        );
    }
    if a.insecure {
        crate::errln!(
            "WARNING: --insecure: TLS certificates are NOT verified; anyone on the path can \
             read the API key and the traffic. Use --ca-cert for private CAs instead."
        );
    }
}
