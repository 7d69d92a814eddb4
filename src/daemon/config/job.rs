//! The `[[job]]` sections: sweeps, soaks and capacity searches, their
//! schedules, rates, SLOs and search bounds.

use super::Problems;
use super::*;
use std::collections::HashSet;

/// Every job, validated; `names` are the targets' names.
pub(super) fn jobs(raw: &RawConfig, names: &HashSet<String>, pr: &mut Problems) -> Vec<Job> {
    let file = pr.file.clone();
    let mut jobs = Vec::new();
    let mut job_names = HashSet::new();
    for (i, j) in raw.job.iter().enumerate() {
        let key = |k: &str| format!("job[{i}].{k}");
        if !valid_name(&j.name) {
            pr.err(
                &key("name"),
                format!("'{}' must be 1-64 letters, digits, '-' or '_'", j.name),
            );
        }
        if !job_names.insert(j.name.clone()) {
            pr.err(&key("name"), format!("duplicate job name '{}'", j.name));
        }
        if !names.contains(&j.target) {
            let known: Vec<&str> = raw.target.iter().map(|t| t.name.as_str()).collect();
            pr.err(
                &key("target"),
                format!(
                    "no target named '{}' (targets: {})",
                    j.target,
                    known.join(", ")
                ),
            );
        }
        let kind = match j.kind.as_str() {
            "sweep" => JobKind::Sweep,
            "soak" => JobKind::Soak,
            "capacity" => JobKind::Capacity,
            other => {
                pr.err(
                    &key("kind"),
                    format!("'{other}' must be \"sweep\", \"soak\" or \"capacity\""),
                );
                JobKind::Sweep
            }
        };
        let qps = match (&j.qps, kind) {
            (Some(QpsValue::One(q)), _) => vec![*q],
            (Some(QpsValue::Many(v)), _) => v.clone(),
            (None, JobKind::Capacity) => Vec::new(),
            (None, _) => {
                pr.err(&key("qps"), "missing: the rate(s) to send".into());
                Vec::new()
            }
        };
        if kind == JobKind::Capacity && j.qps.is_some() {
            pr.err(
                &key("qps"),
                "a capacity job searches its rates: use min_qps and max_qps".into(),
            );
        }
        if kind != JobKind::Capacity && qps.is_empty() && j.qps.is_some() {
            pr.err(&key("qps"), "give at least one rate".into());
        }
        for q in &qps {
            if !(q.is_finite() && *q > 0.0) {
                pr.err(&key("qps"), format!("{q} must be a rate above 0"));
            }
        }
        if kind == JobKind::Soak && qps.len() > 1 {
            pr.err(
                &key("qps"),
                "a soak runs one rate: give a single number".into(),
            );
        }
        let duration = match (&j.duration, kind) {
            (None, JobKind::Capacity) => None,
            (None, _) => {
                pr.err(&key("duration"), "missing: how long to send".into());
                None
            }
            (Some(_), JobKind::Capacity) => {
                pr.err(
                    &key("duration"),
                    "a capacity job's probes use probe_duration and confirm_duration".into(),
                );
                None
            }
            (Some(d), _) => match duration_of(d) {
                Ok(None) if kind == JobKind::Sweep => {
                    pr.err(
                        &key("duration"),
                        "'forever' is only allowed for kind = \"soak\"".into(),
                    );
                    None
                }
                Ok(Some(d)) if d.is_zero() => {
                    pr.err(&key("duration"), "must be longer than zero".into());
                    None
                }
                Ok(d) => d,
                Err(e) => {
                    pr.err(&key("duration"), e);
                    None
                }
            },
        };
        let attainment = match j.slo_attainment {
            None => crate::analysis::slo::DEFAULT_ATTAINMENT,
            Some(a) => {
                crate::analysis::slo::SloTarget::validate_attainment(a).unwrap_or_else(|e| {
                    pr.err(&key("slo_attainment"), e);
                    crate::analysis::slo::DEFAULT_ATTAINMENT
                })
            }
        };
        let slo = match &j.slo {
            None => None,
            Some(specs) => match crate::analysis::slo::Slo::parse(specs) {
                Ok(slo) => Some(std::sync::Arc::new(crate::analysis::slo::SloTarget {
                    slo,
                    attainment,
                })),
                Err(e) => {
                    pr.err(&key("slo"), e);
                    None
                }
            },
        };
        if kind == JobKind::Capacity && j.slo.is_none() {
            pr.err(
                &key("slo"),
                "a capacity job needs an SLO, e.g. slo = [\"ttft<=2s\"]".into(),
            );
        }
        if kind == JobKind::Soak && j.slo.is_some() {
            pr.warn(format!(
                "{file}: {}: soaks are judged by the alert rules, not a job SLO; ignored",
                key("slo")
            ));
        }
        let capacity_only = [
            ("min_qps", j.min_qps.is_some()),
            ("max_qps", j.max_qps.is_some()),
            ("precision", j.precision.is_some()),
            ("probe_duration", j.probe_duration.is_some()),
            ("confirm_duration", j.confirm_duration.is_some()),
        ];
        if kind != JobKind::Capacity {
            for (k, set) in capacity_only {
                if set {
                    pr.err(&key(k), "only capacity jobs take it".into());
                }
            }
        }
        let capacity = (kind == JobKind::Capacity).then(|| {
            let rate = |k: &str, v: Option<f64>, default: f64, pr: &mut Problems| match v {
                None => default,
                Some(r) if r.is_finite() && r > 0.0 => r,
                Some(r) => {
                    pr.err(&key(k), format!("{r} must be a rate above 0"));
                    default
                }
            };
            let min_qps = rate("min_qps", j.min_qps, 0.5, pr);
            let max_qps = rate("max_qps", j.max_qps, 1000.0, pr);
            if min_qps >= max_qps {
                pr.err(
                    &key("min_qps"),
                    format!("{min_qps} must be below max_qps {max_qps}"),
                );
            }
            let precision = match j.precision {
                None => 0.05,
                Some(p) if p > 0.0 && p < 1.0 => p,
                Some(p) => {
                    pr.err(&key("precision"), format!("{p} must be between 0 and 1"));
                    0.05
                }
            };
            let mut probe_len = |k: &str, v: &Option<DurationValue>, default: u64| match v {
                None => Duration::from_secs(default),
                Some(v) => finite_duration(v).unwrap_or_else(|e| {
                    pr.err(&key(k), e);
                    Duration::from_secs(default)
                }),
            };
            CapacityJob {
                search: crate::analysis::search::SearchConfig {
                    min_qps,
                    max_qps,
                    precision,
                    integer: false,
                },
                probe_duration: probe_len("probe_duration", &j.probe_duration, 30),
                confirm_duration: probe_len("confirm_duration", &j.confirm_duration, 60),
            }
        });
        let schedule = match FireSchedule::parse(&j.schedule, j.timezone.as_deref()) {
            Ok(s) => s,
            Err(e) => {
                pr.err(&key("schedule"), e);
                FireSchedule::AtStart
            }
        };
        let arrival = match j.arrival.as_deref().map(str::parse::<Arrival>) {
            // Capacity searches probe with Poisson arrivals, as MLPerf does.
            None if kind == JobKind::Capacity => Arrival::Poisson,
            None => Arrival::Constant,
            Some(Ok(a)) => a,
            Some(Err(e)) => {
                pr.err(&key("arrival"), e);
                Arrival::Constant
            }
        };
        let snapshot_every = match &j.snapshot_every {
            None => Duration::from_secs(600),
            Some(v) => finite_duration(v).unwrap_or_else(|e| {
                pr.err(&key("snapshot_every"), e);
                Duration::from_secs(600)
            }),
        };
        if kind == JobKind::Sweep && j.snapshot_every.is_some() {
            pr.warn(format!(
                "{file}: {}: only soaks take snapshots; ignored for a sweep",
                key("snapshot_every")
            ));
        }
        jobs.push(Job {
            name: j.name.clone(),
            target: j.target.clone(),
            kind,
            qps,
            duration,
            schedule,
            arrival,
            seed: j.seed.unwrap_or(0),
            snapshot_every,
            plot: j.plot.unwrap_or(true),
            record_requests: j.record_requests.unwrap_or(false),
            slo,
            capacity,
        });
    }
    jobs
}
