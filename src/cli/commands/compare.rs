//! `llmload compare BASE NEW`: a regression verdict CI can gate on.
//! Exit 0: no regression beyond the threshold and beyond noise; 1: a
//! regression (each listed); 2: the runs cannot be compared, or no
//! regression among the figures that can be judged and some that cannot
//! (a client-bound level: "not comparable").

use crate::analysis::compare::{self, MetricSpec, Options, Verdict};
use crate::base::error::{EXIT_FAILURE, EXIT_OK, EXIT_USAGE, UsageError};
use crate::cli::CompareArgs;
use std::path::{Path, PathBuf};

pub fn compare(args: CompareArgs) -> anyhow::Result<u8> {
    let metrics = MetricSpec::parse_list(&args.metric)
        .map_err(|e| UsageError::new(format!("--metric {e}")))?;
    let load = |which: &str| -> Result<compare::Run, UsageError> {
        let dir = resolve(which, args.results_dir.as_deref())?;
        crate::results::load_run(&dir, which).map_err(UsageError::new)
    };
    let (base, new) = (load(&args.base)?, load(&args.new)?);
    let verdict = compare::compare(
        &base,
        &new,
        &Options {
            max_regression: args.max_regression,
            metrics,
        },
    )
    .map_err(|e| UsageError::new(e.to_string()))?;
    if args.json {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&verdict).expect("a verdict serializes")
        );
    } else {
        crate::out!("{}", render(&verdict));
    }
    // Exit 2, as for runs that cannot be compared at all: a figure the
    // client distorted can neither pass nor fail a CI gate.
    Ok(match verdict.verdict.as_str() {
        "regression" => EXIT_FAILURE,
        "not comparable" => EXIT_USAGE,
        _ => EXIT_OK,
    })
}

/// A run directory, or a daemon run id (`target.stamp`) looked up in the
/// daemon's history under `results_dir`.
pub fn resolve(which: &str, results_dir: Option<&Path>) -> Result<PathBuf, UsageError> {
    let p = Path::new(which);
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    let Some(root) = results_dir else {
        return Err(UsageError::new(format!(
            "{which}: not a results directory (give a path, or a daemon run id with --results-dir)"
        )));
    };
    let index = crate::daemon::index::RunIndex::open(root)
        .map_err(|e| UsageError::new(format!("{}: {e}", root.display())))?;
    let entry = index.get(which).ok_or_else(|| {
        UsageError::new(format!(
            "{which}: no such run directory, and no run with that id in {}",
            root.join("index.jsonl").display()
        ))
    })?;
    Ok(index.dir_of(&entry))
}

/// The verdict as a table: each figure, its change, and whether the
/// change is beyond the runs' own noise.
pub fn render(v: &Verdict) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "base {}\nnew  {}\n", v.base, v.new);
    let _ = writeln!(
        o,
        "{:<8} {:<34} {:>12} {:>12} {:>9}  {:<6} verdict",
        "QPS", "metric", "base", "new", "change", "noise"
    );
    for l in &v.lines {
        let _ = writeln!(
            o,
            "{:<8} {:<34} {:>12} {:>12} {:>9}  {:<6} {}",
            l.qps
                .map(crate::analysis::saturation::fmt_qps)
                .unwrap_or_else(|| "run".into()),
            l.metric,
            num(l.base),
            num(l.new),
            l.change
                .map(|c| format!("{:+.1}%", c * 100.0))
                .unwrap_or_else(|| "-".into()),
            if l.beyond_noise { "beyond" } else { "within" },
            if l.regression {
                "REGRESSION"
            } else if !l.not_comparable.is_empty() {
                "not comparable"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(o);
    let mut why: Vec<&str> = v
        .lines
        .iter()
        .map(|l| l.not_comparable.as_str())
        .filter(|w| !w.is_empty())
        .collect();
    why.dedup();
    if v.regressions.is_empty() && !why.is_empty() {
        let _ = writeln!(o, "verdict: not comparable (no regression among the rest):");
        for w in why {
            let _ = writeln!(o, "  {w}");
        }
    } else if v.regressions.is_empty() {
        let _ = writeln!(
            o,
            "verdict: no regression beyond {:.0}% and beyond noise",
            v.max_regression * 100.0
        );
    } else {
        let _ = writeln!(
            o,
            "verdict: {} regression(s) beyond {:.0}% and beyond noise:",
            v.regressions.len(),
            v.max_regression * 100.0
        );
        for r in &v.regressions {
            let _ = writeln!(o, "  {r}");
        }
    }
    o
}

fn num(v: Option<f64>) -> String {
    v.map(|v| {
        if v.abs() >= 100.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.4}")
        }
    })
    .unwrap_or_else(|| "-".into())
}
