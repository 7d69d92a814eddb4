//! The daemon's HTTP face.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/metrics` | Prometheus text exposition |
//! | GET | `/healthz` | 200 while the process runs |
//! | GET | `/readyz` | 200 once the scheduler runs, 503 while starting or stopping |
//! | GET | `/api/v1/status` | runs in progress, jobs and their next fire |
//! | GET | `/api/v1/runs` | history, newest first (`?target=`, `?job=`, `?limit=`) |
//! | GET | `/api/v1/runs/{id}` | a run's metadata, summary and results |
//! | GET | `/api/v1/runs/{id}/plot.png` | its PNG |
//! | POST | `/api/v1/jobs/{name}/trigger` | fire a job now |
//! | POST | `/api/v1/runs/current/stop` | stop the runs in progress (`?job=` to pick one) |
//! | POST | `/-/reload` | re-read the config file (as SIGHUP); 200 applied, 500 refused |
//!
//! POSTs need `Authorization: Bearer <token>` when a token is configured;
//! errors are `{"error": "..."}` with a fitting status code.
//!
//! How to add an endpoint: 1) a handler here; 2) a route in [`router`];
//! 3) a row in the table above and in `docs/src/daemon.md`; 4) a test in
//! `tests/daemon.rs`.

use super::jobs::{self, FireRefusal};
use super::state::State;
use crate::results::{METADATA_FILE, RunDir, SUMMARY_FILE};
use axum::Router;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/status", get(status))
        .route("/api/v1/runs", get(runs))
        .route("/api/v1/runs/{id}", get(run))
        .route("/api/v1/runs/{id}/plot.png", get(plot))
        .route("/api/v1/runs/{id}/compare", get(compare))
        .route("/api/v1/jobs/{name}/trigger", post(trigger))
        .route("/api/v1/runs/current/stop", post(stop))
        .route("/-/reload", post(reload))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(state)
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": msg.into()}))).into_response()
}

/// Compare without an early exit on the first differing byte, so response
/// timing does not reveal how much of a guessed token was right. (The
/// length is not secret.)
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// `Some(401 response)` when a token is configured and not presented.
fn unauthorized(state: &State, headers: &HeaderMap) -> Option<Response> {
    let config = state.config();
    let token = config.api_token.as_ref()?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), token.as_bytes()) {
        None
    } else {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "this endpoint needs 'Authorization: Bearer <token>'",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        Some(r)
    }
}

async fn metrics(AxState(state): AxState<Arc<State>>) -> Response {
    state.metrics.response()
}

async fn readyz(AxState(state): AxState<Arc<State>>) -> Response {
    if state.ready.load(Ordering::Acquire) && !state.shutting_down.is_cancelled() {
        "ready".into_response()
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn status(AxState(state): AxState<Arc<State>>) -> Response {
    let running: Vec<_> = state.active().iter().map(|a| a.status()).collect();
    let next = state.next_fires.lock().expect("fires lock").clone();
    let busy = state.busy_jobs.lock().expect("busy lock").clone();
    let capacity = state.capacity.lock().expect("capacity lock").clone();
    let config = state.config();
    let jobs: Vec<_> = config
        .jobs
        .iter()
        .map(|j| {
            let last = state
                .index
                .list()
                .into_iter()
                .find(|e| e.job == j.name && e.status != "running");
            json!({
                "name": j.name,
                "target": j.target,
                "kind": j.kind.as_str(),
                "schedule": j.schedule.describe(),
                "qps": j.qps,
                "concurrency": j.concurrency,
                "trace": j.trace.as_ref().map(|t| t.path.display().to_string()),
                "shape": j.shape.is_some(),
                "busy": busy.contains(&j.name),
                "next_fire": next.get(&j.name),
                "last_run": last,
                "capacity": capacity.get(&j.name),
            })
        })
        .collect();
    axum::Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "ready": state.ready.load(Ordering::Acquire),
        "shutting_down": state.shutting_down.is_cancelled(),
        "running": running,
        "jobs": jobs,
        "results_write_errors": state.write_errors.load(Ordering::Relaxed),
        "last_write_error": state.last_write_error.lock().expect("error lock").clone(),
        "config": {
            "path": config.path.display().to_string(),
            "last_reload": state.last_reload.lock().expect("reload lock").clone(),
        },
    }))
    .into_response()
}

#[derive(Deserialize)]
struct RunsQuery {
    target: Option<String>,
    job: Option<String>,
    limit: Option<usize>,
}

async fn runs(AxState(state): AxState<Arc<State>>, Query(q): Query<RunsQuery>) -> Response {
    let list: Vec<_> = state
        .index
        .list()
        .into_iter()
        .filter(|e| q.target.as_ref().is_none_or(|t| &e.target == t))
        .filter(|e| q.job.as_ref().is_none_or(|j| &e.job == j))
        .take(q.limit.unwrap_or(usize::MAX))
        .collect();
    axum::Json(json!({"runs": list})).into_response()
}

async fn run(AxState(state): AxState<Arc<State>>, Path(id): Path<String>) -> Response {
    let Some(entry) = state.index.get(&id) else {
        return error(StatusCode::NOT_FOUND, format!("no run '{id}'"));
    };
    let dir = RunDir::open(&state.index.dir_of(&entry));
    // A file not written yet is null; one that exists but cannot be read
    // or parsed is a server error that names it (never a silent null).
    let read = |name: &str| -> Result<Option<serde_json::Value>, String> {
        let path = dir.file(name);
        match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("{} is not valid JSON: {e}", path.display())),
        }
    };
    let fail = |msg: String| error(StatusCode::INTERNAL_SERVER_ERROR, msg);
    let metadata = match read(METADATA_FILE) {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let results_file = metadata
        .as_ref()
        .and_then(|m| m["results_file"].as_str().map(str::to_owned))
        .unwrap_or_else(|| crate::results::DEFAULT_RESULTS_FILE.into());
    let (results, summary) = match (read(&results_file), read(SUMMARY_FILE)) {
        (Ok(r), Ok(s)) => (r, s),
        (Err(e), _) | (_, Err(e)) => return fail(e),
    };
    axum::Json(json!({
        "run": entry,
        "metadata": metadata,
        "summary": summary,
        "results": results,
    }))
    .into_response()
}

#[derive(Deserialize)]
struct CompareQuery {
    with: Option<String>,
    /// `10%` or `0.1`.
    max_regression: Option<String>,
    metric: Option<String>,
}

/// `GET /api/v1/runs/{id}/compare?with={base}`: the same verdict as
/// `llmload compare BASE ID --json`, `id` being the new run.
async fn compare(
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
    Query(q): Query<CompareQuery>,
) -> Response {
    let Some(base_id) = q.with else {
        return error(StatusCode::BAD_REQUEST, "give the base run: ?with=<run id>");
    };
    let load = |which: &str| -> Result<crate::analysis::compare::Run, (StatusCode, String)> {
        let Some(entry) = state.index.get(which) else {
            return Err((StatusCode::NOT_FOUND, format!("no run '{which}'")));
        };
        crate::results::load_run(&state.index.dir_of(&entry), which)
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e))
    };
    let (base, new) = match (load(&base_id), load(&id)) {
        (Ok(b), Ok(n)) => (b, n),
        (Err((code, e)), _) | (_, Err((code, e))) => return error(code, e),
    };
    let max_regression = match q
        .max_regression
        .as_deref()
        .map(crate::analysis::compare::parse_share)
    {
        None => 0.10,
        Some(Ok(v)) => v,
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, e),
    };
    let metrics = match crate::analysis::compare::MetricSpec::parse_list(
        q.metric
            .as_deref()
            .unwrap_or(crate::analysis::compare::DEFAULT_METRICS),
    ) {
        Ok(m) => m,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match crate::analysis::compare::compare(
        &base,
        &new,
        &crate::analysis::compare::Options {
            max_regression,
            metrics,
        },
    ) {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    }
}

async fn plot(AxState(state): AxState<Arc<State>>, Path(id): Path<String>) -> Response {
    let Some(entry) = state.index.get(&id) else {
        return error(StatusCode::NOT_FOUND, format!("no run '{id}'"));
    };
    let path = state
        .index
        .dir_of(&entry)
        .join(crate::results::DEFAULT_PLOT_FILE);
    match tokio::fs::read(&path).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, "image/png")], bytes).into_response(),
        Err(_) => error(
            StatusCode::NOT_FOUND,
            format!("run '{id}' has no plot (yet)"),
        ),
    }
}

async fn trigger(
    AxState(state): AxState<Arc<State>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = unauthorized(&state, &headers) {
        return r;
    }
    let Some(job) = state.job(&name) else {
        return error(StatusCode::NOT_FOUND, format!("no job '{name}'"));
    };
    match jobs::fire(&state, &job) {
        Ok(()) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({"job": name, "status": "started"})),
        )
            .into_response(),
        Err(FireRefusal::AlreadyRunning) => error(
            StatusCode::CONFLICT,
            format!("job '{name}' is already running"),
        ),
        Err(FireRefusal::ShuttingDown) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon is shutting down",
        ),
    }
}

/// `POST /-/reload`, Prometheus's path: the same as SIGHUP. 200 with what
/// changed; 500 with every problem when the file is refused (the daemon
/// runs on the previous configuration).
async fn reload(AxState(state): AxState<Arc<State>>, headers: HeaderMap) -> Response {
    if let Some(r) = unauthorized(&state, &headers) {
        return r;
    }
    if state.shutting_down.is_cancelled() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon is shutting down",
        );
    }
    let status = super::reload::reload(&state, "api").await;
    let code = if status.result == "success" {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    (code, axum::Json(status)).into_response()
}

#[derive(Deserialize)]
struct StopQuery {
    job: Option<String>,
}

/// In-flight requests get this long to finish after a stop request.
const STOP_GRACE: Duration = Duration::from_secs(2);

async fn stop(
    AxState(state): AxState<Arc<State>>,
    Query(q): Query<StopQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = unauthorized(&state, &headers) {
        return r;
    }
    let targets: Vec<_> = state
        .active()
        .into_iter()
        .filter(|a| q.job.as_ref().is_none_or(|j| &a.job == j))
        .collect();
    if targets.is_empty() {
        return error(StatusCode::NOT_FOUND, "no run in progress");
    }
    let ids: Vec<String> = targets.iter().map(|a| a.run_id.clone()).collect();
    for a in targets {
        a.stop.cancel();
        let cancel = a.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(STOP_GRACE).await;
            cancel.cancel();
        });
    }
    axum::Json(json!({"stopped": ids})).into_response()
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_compare() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
