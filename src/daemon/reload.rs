//! Re-reading the config while the daemon runs: `SIGHUP` (what
//! `systemctl reload` sends) and `POST /-/reload`, as Prometheus and
//! Alertmanager do.
//!
//! Nothing changes until the new file is known to work: it is validated
//! whole, and every new or changed target's resources (prompts, tokenizer,
//! client, embedded mock) are built first. A file that fails any of that
//! is refused: every problem is logged, the daemon runs on as before, and
//! `llmload_config_last_reload_successful` drops to 0.
//!
//! A file that passes is swapped in at once. What did not change is not
//! touched: an unchanged target keeps its slot (client, pool, prompts) and
//! an unchanged job its scheduler and its running run, so a soak goes on
//! without a gap in its counters. A changed or removed job that is running
//! is stopped as at shutdown (in-flight requests get `shutdown_grace`, the
//! results are written and marked partial); a changed job is then
//! scheduled afresh, and an added one at once. A job "changed" when its
//! section, or its target's, reads differently.
//!
//! `[server] listen`, `results_dir` and `[telemetry]` hold sockets, the
//! run index and the exporter: a change to them is reported as a warning
//! and takes effect at the next start.

use super::config::{self, Config};
use super::state::{JobChanges, ReloadStatus, State, TargetSlot};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// A new configuration, checked and with its targets' resources built.
struct Prepared {
    config: Config,
    slots: BTreeMap<String, Arc<TargetSlot>>,
    mocks: Vec<crate::mock::MockServer>,
    changed_targets: HashSet<String>,
    warnings: Vec<String>,
}

/// Re-read the config file and apply it (see the module's doc). Never
/// fails: a refused file is reported in the status, and the metrics.
pub async fn reload(state: &Arc<State>, trigger: &str) -> ReloadStatus {
    let _one = state.reload_lock.lock().await;
    if state.shutting_down.is_cancelled() {
        return ReloadStatus {
            at: chrono::Local::now().to_rfc3339(),
            result: "skipped",
            trigger: trigger.into(),
            errors: vec!["the daemon is shutting down".into()],
            warnings: Vec::new(),
            jobs: JobChanges::default(),
        };
    }
    let old = state.config();
    tracing::info!(trigger, path = %old.path.display(), "reloading the config");
    let status = match prepare(state, &old).await {
        Err(errors) => {
            for e in &errors {
                tracing::error!("reload refused: {e}");
            }
            tracing::error!(
                problems = errors.len(),
                "config reload failed: still running on the previous configuration"
            );
            state.metrics.config.reloaded(false);
            ReloadStatus {
                at: chrono::Local::now().to_rfc3339(),
                result: "failure",
                trigger: trigger.into(),
                errors,
                warnings: Vec::new(),
                jobs: JobChanges::default(),
            }
        }
        Ok(p) => {
            for w in &p.warnings {
                tracing::warn!("reload: {w}");
            }
            let warnings = p.warnings.clone();
            let jobs = commit(state, &old, p);
            tracing::info!(
                unchanged = ?jobs.unchanged, changed = ?jobs.changed, added = ?jobs.added,
                removed = ?jobs.removed, stopped = ?jobs.stopped, "config reloaded"
            );
            state.metrics.config.reloaded(true);
            ReloadStatus {
                at: chrono::Local::now().to_rfc3339(),
                result: "success",
                trigger: trigger.into(),
                errors: Vec::new(),
                warnings,
                jobs,
            }
        }
    };
    *state.last_reload.lock().expect("reload lock") = Some(status.clone());
    status
}

/// Validate the file and build what its new or changed targets need;
/// nothing in `state` changes.
async fn prepare(state: &State, old: &Config) -> Result<Prepared, Vec<String>> {
    // Reading traces, datasets and tokenizers blocks: off the runtime, so
    // the soaks that go on meanwhile keep their schedule.
    let path = old.path.clone();
    let mut new = tokio::task::spawn_blocking(move || config::load(&path))
        .await
        .map_err(|e| vec![format!("reload: {e}")])??;
    let file = old.path.display().to_string();
    let mut warnings = new.warnings.clone();
    if !old.listen_from_flag && new.listen != old.listen {
        warnings.push(format!(
            "{file}: server.listen: {} takes effect at the next start; still listening on {}",
            new.listen, old.listen
        ));
    }
    new.listen = old.listen;
    new.listen_from_flag = old.listen_from_flag;
    new.proxies = old.proxies.clone();
    if new.results_dir != old.results_dir {
        warnings.push(format!(
            "{file}: server.results_dir: {} takes effect at the next start; still writing to {}",
            new.results_dir.display(),
            old.results_dir.display()
        ));
        new.results_dir = old.results_dir.clone();
    }
    if format!("{:?}", new.telemetry) != format!("{:?}", old.telemetry) {
        warnings.push(format!(
            "{file}: telemetry: changes take effect at the next start"
        ));
        new.telemetry = old.telemetry.clone();
    }
    let mut slots = BTreeMap::new();
    let mut mocks = Vec::new();
    let mut errors = Vec::new();
    let mut changed_targets = HashSet::new();
    for t in new.targets.iter_mut() {
        if let Some(o) = old.target(&t.name)
            && o.definition == t.definition
            && let Some(slot) = state.slot(&t.name)
        {
            // The running target as it is (its embedded mock's address).
            *t = o.clone();
            slots.insert(t.name.clone(), slot);
            continue;
        }
        changed_targets.insert(t.name.clone());
        if !t.spec.is_mock() {
            t.spec.client.proxies = old.proxies.clone();
        }
        if t.spec.is_mock() {
            match super::state::embedded_mock(t).await {
                Ok(m) => mocks.push(m),
                Err(e) => {
                    errors.push(format!("target '{}': built-in mock: {e}", t.name));
                    continue;
                }
            }
        }
        let (target, traced) = (t.clone(), state.telemetry.is_some());
        match tokio::task::spawn_blocking(move || TargetSlot::new(&target, traced)).await {
            Ok(Ok(s)) => {
                slots.insert(t.name.clone(), Arc::new(s));
            }
            Ok(Err(e)) => errors.push(format!("{file}: {e}")),
            Err(e) => errors.push(format!("{file}: target '{}': {e}", t.name)),
        }
    }
    if !errors.is_empty() {
        for m in mocks {
            m.shutdown().await;
        }
        return Err(errors);
    }
    Ok(Prepared {
        config: new,
        slots,
        mocks,
        changed_targets,
        warnings,
    })
}

/// Swap the prepared configuration in and reschedule what changed.
fn commit(state: &Arc<State>, old: &Config, p: Prepared) -> JobChanges {
    let Prepared {
        config,
        slots,
        mocks,
        changed_targets,
        ..
    } = p;
    state.mocks.lock().expect("mocks lock").extend(mocks);
    let mut changes = JobChanges::default();
    let mut retire = Vec::new();
    let mut start = Vec::new();
    for j in &config.jobs {
        match old.jobs.iter().find(|o| o.name == j.name) {
            Some(o) if o.definition == j.definition && !changed_targets.contains(&j.target) => {
                changes.unchanged.push(j.name.clone());
            }
            Some(_) => {
                changes.changed.push(j.name.clone());
                retire.push(j.name.clone());
                start.push(j.clone());
            }
            None => {
                changes.added.push(j.name.clone());
                start.push(j.clone());
            }
        }
    }
    for o in &old.jobs {
        if !config.jobs.iter().any(|j| j.name == o.name) {
            changes.removed.push(o.name.clone());
            retire.push(o.name.clone());
        }
    }
    // Retired schedulers (and waiters of an earlier reload) fire no more,
    // and their pending fires drop, before the new config is visible.
    for name in &retire {
        let mut schedulers = state.schedulers.lock().expect("schedulers lock");
        state.retire(name);
        if let Some(task) = schedulers.remove(name) {
            task.abort();
        }
        drop(schedulers);
        state.next_fires.lock().expect("fires lock").remove(name);
    }
    let grace = config.shutdown_grace;
    for t in &config.targets {
        if changed_targets.contains(&t.name) {
            super::register_target(state, t);
        }
    }
    state.replace(config, slots);
    for name in &retire {
        if stop_runs_of(state, name, grace) {
            changes.stopped.push(name.clone());
        }
    }
    for job in start {
        super::register_job(state, &job);
        let name = job.name.clone();
        let generation = state.generation(&name);
        let state2 = state.clone();
        let waiter = tokio::spawn(async move {
            let state = state2;
            // The job's previous run (stopped above) ends first: one run
            // of a job at a time.
            while state
                .busy_jobs
                .lock()
                .expect("busy lock")
                .contains(&job.name)
            {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = state.shutting_down.cancelled() => return,
                }
            }
            super::start_scheduler(&state, job, &generation);
        });
        // Tracked as the job's scheduler: a later reload aborts it too. (If
        // it already started the scheduler, that one is in the map: keep it.)
        let mut schedulers = state.schedulers.lock().expect("schedulers lock");
        schedulers.entry(name).or_insert(waiter);
    }
    changes
}

/// Stop the running runs of job `name` as at shutdown: no new sends,
/// `grace` for in-flight requests, then abandon them; the run writes its
/// results marked partial. True if one was running.
fn stop_runs_of(state: &Arc<State>, name: &str, grace: Duration) -> bool {
    let runs: Vec<_> = state
        .active()
        .into_iter()
        .filter(|a| a.job == name)
        .collect();
    for a in &runs {
        tracing::info!(job = %name, run = %a.run_id, "reload: stopping the run of a changed or removed job");
        a.stop.cancel();
        let state = state.clone();
        let a = a.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + grace;
            while state.active().iter().any(|r| Arc::ptr_eq(r, &a))
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            a.cancel.cancel();
        });
    }
    !runs.is_empty()
}
