//! The `[[job]]` sections: sweeps, soaks and capacity searches, their
//! schedules, rates, SLOs and search bounds.

use super::Problems;
use super::*;
use std::collections::HashSet;

/// Every job, validated; `names` are the targets' names.
pub(super) fn jobs(
    raw: &RawConfig,
    names: &HashSet<String>,
    base: &std::path::Path,
    pr: &mut Problems,
) -> Vec<Job> {
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
        // What the job sends: rates, users, a trace or (soaks) a shape;
        // exactly one.
        let loads: Vec<&str> = [
            ("qps", j.qps.is_some()),
            ("concurrency", j.concurrency.is_some()),
            ("trace", j.trace.is_some()),
            ("shape", j.shape.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(k, _)| *k)
        .collect();
        if loads.len() > 1 {
            pr.err(
                &key(loads[1]),
                format!(
                    "give one of qps, concurrency, trace or shape, not {}",
                    loads.join(" and ")
                ),
            );
        }
        let qps = match (&j.qps, kind) {
            (Some(QpsValue::One(q)), _) => vec![*q],
            (Some(QpsValue::Many(v)), _) => v.clone(),
            (None, JobKind::Capacity) => Vec::new(),
            (None, _) if !loads.is_empty() => Vec::new(),
            (None, _) => {
                pr.err(
                    &key("qps"),
                    "missing: the rate(s) to send (or concurrency, trace, or a soak's shape)"
                        .into(),
                );
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
        let texts: Vec<String> = qps.iter().map(|q| q.to_string()).collect();
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        if let Err(e) = crate::plan::load::reject_duplicates(&qps, &texts) {
            pr.err(&key("qps"), e);
        } else if let Some(note) = crate::plan::load::order_note("qps", &qps) {
            pr.warn(format!(
                "{file}: {}: {}",
                key("qps"),
                note.trim_start_matches("note: ")
            ));
        }
        if kind == JobKind::Soak && qps.len() > 1 {
            pr.err(
                &key("qps"),
                "a soak runs one rate: give a single number".into(),
            );
        }
        let duration = match (&j.duration, kind) {
            (None, JobKind::Capacity) => None,
            // A replay lasts its slice (unless it loops).
            (None, JobKind::Sweep) if j.trace.is_some() && j.trace_loop != Some(true) => None,
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
        let traffic = traffic(j, kind, base, &key, pr);
        jobs.push(Job {
            concurrency: traffic.concurrency,
            max_concurrency: j.max_concurrency,
            warmup: traffic.warmup,
            trace: traffic.trace,
            shape: traffic.shape,
            series_step: traffic.series_step,
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
            definition: format!("{j:?}"),
        });
    }
    jobs
}

/// The traffic keys of one job, checked.
struct Traffic {
    concurrency: Vec<u32>,
    warmup: Option<crate::engine::runner::Warmup>,
    trace: Option<TraceJob>,
    shape: Option<Shape>,
    series_step: Duration,
}

fn traffic(
    j: &RawJob,
    kind: JobKind,
    base: &std::path::Path,
    key: &dyn Fn(&str) -> String,
    pr: &mut Problems,
) -> Traffic {
    let capacity = kind == JobKind::Capacity;
    for (k, set) in [
        ("concurrency", j.concurrency.is_some()),
        ("trace", j.trace.is_some()),
        ("shape", j.shape.is_some()),
        ("max_concurrency", j.max_concurrency.is_some()),
    ] {
        if capacity && set {
            pr.err(
                &key(k),
                "a capacity job searches rates: it takes none".into(),
            );
        }
    }
    let concurrency = match &j.concurrency {
        None => Vec::new(),
        Some(ConcurrencyValue::One(n)) => vec![*n],
        Some(ConcurrencyValue::Many(v)) => v.clone(),
    };
    if j.concurrency.is_some() && (concurrency.is_empty() || concurrency.contains(&0)) {
        pr.err(
            &key("concurrency"),
            "give whole numbers of users, at least 1 each".into(),
        );
    }
    let texts: Vec<String> = concurrency.iter().map(|c| c.to_string()).collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    if let Err(e) = crate::plan::load::reject_duplicates(&concurrency, &texts) {
        pr.err(&key("concurrency"), e);
    } else if let Some(note) = crate::plan::load::order_note(
        "concurrency",
        &concurrency
            .iter()
            .map(|c| f64::from(*c))
            .collect::<Vec<_>>(),
    ) {
        pr.warn(format!(
            "{}: {}: {}",
            pr.file,
            key("concurrency"),
            note.trim_start_matches("note: ")
        ));
    }
    if kind == JobKind::Soak && concurrency.len() > 1 {
        pr.err(
            &key("concurrency"),
            "a soak runs one concurrency: give a single number".into(),
        );
    }
    if j.max_concurrency == Some(0) {
        pr.err(&key("max_concurrency"), "must be at least 1".into());
    }
    if j.max_concurrency.is_some() && j.concurrency.is_some() {
        pr.err(
            &key("max_concurrency"),
            "caps open-loop rates; a concurrency job already holds its users".into(),
        );
    }
    let warmup = match &j.warmup {
        None => None,
        Some(WarmupValue::Requests(n)) => {
            match crate::engine::runner::Warmup::parse(&n.to_string()) {
                Ok(w) => Some(w),
                Err(e) => {
                    pr.err(&key("warmup"), e);
                    None
                }
            }
        }
        Some(WarmupValue::Text(t)) => match crate::engine::runner::Warmup::parse(t) {
            Ok(w) => Some(w),
            Err(e) => {
                pr.err(&key("warmup"), e);
                None
            }
        },
    };
    if kind != JobKind::Sweep && warmup.is_some() {
        pr.err(
            &key("warmup"),
            "only sweeps take one (a soak is one long level: its start is its warm-up)".into(),
        );
    }
    let series_step = match &j.series_interval {
        None => crate::analysis::series::DEFAULT_STEP,
        Some(v) => match finite_duration(v) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                pr.err(&key("series_interval"), "must be longer than zero".into());
                crate::analysis::series::DEFAULT_STEP
            }
            Err(e) => {
                pr.err(&key("series_interval"), e);
                crate::analysis::series::DEFAULT_STEP
            }
        },
    };
    let trace_keys = [
        ("trace_format", j.trace_format.is_some()),
        ("trace_speed", j.trace_speed.is_some()),
        ("trace_start", j.trace_start.is_some()),
        ("trace_duration", j.trace_duration.is_some()),
        ("trace_loop", j.trace_loop.is_some()),
    ];
    if j.trace.is_none() {
        for (k, set) in trace_keys {
            if set {
                pr.err(&key(k), "only with trace = \"FILE\"".into());
            }
        }
    }
    let trace = j.trace.as_ref().and_then(|t| {
        let path = rel(base, t);
        let format = match j.trace_format.as_deref().map(str::parse) {
            None => None,
            Some(Ok(f)) => Some(f),
            Some(Err(e)) => {
                pr.err(&key("trace_format"), e);
                None
            }
        };
        let dur = |k: &str, v: &Option<DurationValue>, pr: &mut Problems| match v {
            None => None,
            Some(v) => finite_duration(v).map(Some).unwrap_or_else(|e| {
                pr.err(&key(k), e);
                None
            }),
        };
        let speed = j.trace_speed.unwrap_or(1.0);
        let speed_ok = speed.is_finite() && (1e-3..=1e6).contains(&speed);
        if !speed_ok {
            pr.err(
                &key("trace_speed"),
                format!("{speed} must be between 0.001 and 1000000"),
            );
        }
        let options = crate::plan::replay::ReplayOptions {
            speed: if speed_ok { speed } else { 1.0 },
            start: dur("trace_start", &j.trace_start, pr).unwrap_or_default(),
            duration: dur("trace_duration", &j.trace_duration, pr),
            // A soak replays its trace for as long as it runs.
            looping: j.trace_loop.unwrap_or(kind == JobKind::Soak),
        };
        match crate::workload::files::load_trace(&path, format) {
            Ok(trace) => Some(TraceJob {
                path,
                trace: std::sync::Arc::new(trace),
                options,
            }),
            Err(e) => {
                pr.err(&key("trace"), e);
                None
            }
        }
    });
    let shape = j.shape.as_ref().and_then(|s| {
        if kind != JobKind::Soak {
            pr.err(&key("shape"), "only soaks take a shape".into());
            return None;
        }
        let shape_key = |k: &str| {
            if k.is_empty() {
                key("shape")
            } else {
                key(&format!("shape.{k}"))
            }
        };
        shape_of(s, j.timezone.as_deref(), &shape_key, pr)
    });
    Traffic {
        concurrency,
        warmup,
        trace,
        shape,
        series_step,
    }
}

/// A soak's `shape`, checked by building its curve once.
fn shape_of(
    s: &RawShape,
    tz: Option<&str>,
    key: &dyn Fn(&str) -> String,
    pr: &mut Problems,
) -> Option<Shape> {
    let need = |v: Option<f64>, k: &str, pr: &mut Problems| {
        if v.is_none() {
            pr.err(&key(k), format!("missing: a {} shape needs it", s.kind));
        }
        v
    };
    let shape = match s.kind.as_str() {
        "ramp" => {
            let (from, to) = (need(s.from, "from", pr)?, need(s.to, "to", pr)?);
            let over = match &s.over {
                None => {
                    pr.err(&key("over"), "missing: how long the ramp takes".into());
                    return None;
                }
                Some(v) => match finite_duration(v) {
                    Ok(d) => d,
                    Err(e) => {
                        pr.err(&key("over"), e);
                        return None;
                    }
                },
            };
            Shape::Stages(vec![(over, from, to)])
        }
        "stages" => {
            let Some(stages) = &s.stages else {
                pr.err(
                    &key("stages"),
                    "missing: [{ duration = \"5m\", qps = 5 }, ...]".into(),
                );
                return None;
            };
            let mut out = Vec::new();
            for (i, st) in stages.iter().enumerate() {
                let d = match finite_duration(&st.duration) {
                    Ok(d) => d,
                    Err(e) => {
                        pr.err(&key(&format!("stages[{i}].duration")), e);
                        return None;
                    }
                };
                let (from, to) = match (st.qps, st.from, st.to) {
                    (Some(q), None, None) => (q, q),
                    (None, Some(a), Some(b)) => (a, b),
                    _ => {
                        pr.err(
                            &key(&format!("stages[{i}]")),
                            "give qps, or from and to (a ramp)".into(),
                        );
                        return None;
                    }
                };
                out.push((d, from, to));
            }
            Shape::Stages(out)
        }
        "daily" => {
            let (min, max) = (
                need(s.min_qps, "min_qps", pr)?,
                need(s.max_qps, "max_qps", pr)?,
            );
            let peak = s.peak.as_deref().unwrap_or("14:00");
            let Ok(t) = chrono::NaiveTime::parse_from_str(peak, "%H:%M") else {
                pr.err(
                    &key("peak"),
                    format!("'{peak}' is not a time of day (HH:MM)"),
                );
                return None;
            };
            let tz = match tz.map(str::parse::<chrono_tz::Tz>) {
                None => chrono_tz::UTC,
                Some(Ok(z)) => z,
                // The schedule reports a bad timezone already.
                Some(Err(_)) => chrono_tz::UTC,
            };
            use chrono::Timelike;
            Shape::Daily {
                min,
                max,
                peak: t.num_seconds_from_midnight() as f64,
                tz,
            }
        }
        other => {
            pr.err(
                &key("kind"),
                format!("'{other}' must be \"ramp\", \"stages\" or \"daily\""),
            );
            return None;
        }
    };
    // Build it once: the curve's own checks (rates >= 0, not all zero).
    let check = match &shape {
        Shape::Stages(s) => crate::plan::profile::Profile::stages(s).map(|_| ()),
        Shape::Daily { min, max, peak, .. } => {
            crate::plan::profile::Profile::daily(*min, *max, *peak, 0.0).map(|_| ())
        }
    };
    match check {
        Ok(()) => Some(shape),
        Err(e) => {
            pr.err(&key(""), e);
            None
        }
    }
}
