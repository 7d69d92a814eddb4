//! `llmload merge DIR... [--output DIR]`: the run directories of N shards
//! become one run directory in the seed's format, as if one process had
//! run the whole schedule. Histograms merge exactly ([`crate::analysis::merge`]);
//! the analysis, SLO verdicts and PNG are recomputed from the merged
//! levels. Inputs that are not shards of one run are refused (exit 2)
//! with the reason: a merge of unlike runs would be a number nobody
//! measured.

use crate::analysis::level::LevelResult;
use crate::analysis::slo::{Slo, SloTarget};
use crate::base::error::{EXIT_FAILURE, EXIT_OK, UsageError};
use crate::cli::MergeArgs;
use crate::plan::schedule::Shard;
use crate::results::table;
use crate::results::writer::{Outputs, RunStatus, RunWriter};
use crate::results::{self, METADATA_FILE, Metadata, RunDir, SUMMARY_FILE, Summary};
use std::path::{Path, PathBuf};

/// One shard's run directory, read back.
struct Part {
    dir: PathBuf,
    meta: Metadata,
    levels: Vec<LevelResult>,
    summary: Option<Summary>,
}

impl Part {
    fn load(dir: &Path) -> Result<Self, UsageError> {
        if !dir.is_dir() {
            return Err(UsageError::new(format!(
                "{}: not a results directory",
                dir.display()
            )));
        }
        let rd = RunDir::open(dir);
        let meta: Metadata = rd.read_json(METADATA_FILE).map_err(UsageError::new)?;
        let levels: Vec<LevelResult> = rd.read_json(&meta.results_file).map_err(UsageError::new)?;
        let summary = rd.read_json::<Summary>(SUMMARY_FILE).ok();
        Ok(Self {
            dir: dir.to_path_buf(),
            meta,
            levels,
            summary,
        })
    }

    fn shard(&self) -> Shard {
        self.meta.shard.unwrap_or(Shard { index: 0, count: 1 })
    }

    fn name(&self) -> String {
        self.dir.display().to_string()
    }
}

pub fn merge(args: MergeArgs) -> anyhow::Result<u8> {
    let parts = args
        .dirs
        .iter()
        .map(|d| Part::load(d))
        .collect::<Result<Vec<_>, _>>()?;
    check(&parts).map_err(UsageError::new)?;
    let mut parts = parts;
    parts.sort_by_key(|p| p.shard().index);

    let first = &parts[0];
    let slo = first.summary.as_ref().and_then(|s| {
        Some(SloTarget {
            slo: Slo::parse(&[s.slo.as_deref()?]).ok()?,
            attainment: s.slo_attainment?,
        })
    });
    // A level is merged when every shard finished it; a shard that
    // stopped early makes the merged run partial at that point.
    let common = parts.iter().map(|p| p.levels.len()).min().unwrap_or(0);
    let mut levels = Vec::with_capacity(common);
    for i in 0..common {
        let of_level: Vec<&LevelResult> = parts.iter().map(|p| &p.levels[i]).collect();
        levels.push(
            crate::analysis::merge::merge_level(&of_level, slo.as_ref().map(|s| s.attainment))
                .map_err(|e| UsageError::new(format!("level {}: {e}", i + 1)))?,
        );
    }
    let complete =
        parts.iter().all(|p| p.meta.status == "complete") && common == first.meta.planned_levels();
    let status = if complete {
        RunStatus::Complete
    } else {
        RunStatus::Partial
    };
    let mut summary = results::summarize(&levels, status.as_str());
    if let Some(s) = &slo {
        summary.slo = Some(s.slo.to_string());
        summary.slo_attainment = Some(s.attainment);
    }

    let meta = merged_metadata(&parts, common);
    let dir = output_dir(&args, first)?;
    let percentiles: Vec<f64> = meta.percentiles.iter().filter_map(|v| v.as_f64()).collect();
    let outputs = Outputs {
        dir: dir.clone(),
        results_file: meta.results_file.clone(),
        plot_file: Some(
            meta.plot_file
                .clone()
                .unwrap_or_else(|| results::DEFAULT_PLOT_FILE.into()),
        ),
        plot_title: format!("{} ({} shard(s) merged)", meta.plot_title(), parts.len()),
    };
    let mut writer = RunWriter::start(outputs, meta);
    writer.finish(&levels, &summary, status);

    crate::out!("{}", table::render_table(&levels, &percentiles));
    let partial = status == RunStatus::Partial;
    match &summary.concurrency {
        Some(c) => crate::out!("{}", table::render_concurrency(&levels, c, partial)),
        None => crate::out!(
            "{}",
            table::render_analysis(&levels, &summary.analysis, partial)
        ),
    }
    if let Some(s) = &slo {
        crate::out!("{}", table::render_slo(&levels, s));
    }
    crate::outln!(
        "\nMerged {} shard(s) of run {} into {}/",
        parts.len(),
        first.meta.run_id,
        dir.path.display()
    );
    for e in writer.errors() {
        crate::errln!("error: {e}");
    }
    Ok(if writer.errors().is_empty() {
        EXIT_OK
    } else {
        EXIT_FAILURE
    })
}

/// Refuse anything that is not the N shards of one run, naming what
/// differs and where.
fn check(parts: &[Part]) -> Result<(), String> {
    let first = parts.first().ok_or("give at least one run directory")?;
    let same = |what: &str, get: &dyn Fn(&Part) -> String| -> Result<(), String> {
        let want = get(first);
        for p in &parts[1..] {
            let got = get(p);
            if got != want {
                return Err(format!(
                    "not shards of one run: {} has {what} {got}, but {} has {want}",
                    p.name(),
                    first.name()
                ));
            }
        }
        Ok(())
    };
    same("QPS levels", &|p| format!("{:?}", p.meta.qps_levels))?;
    same("duration", &|p| p.meta.duration.to_string())?;
    same("model", &|p| format!("'{}'", p.meta.model))?;
    same("endpoint", &|p| p.meta.endpoint.clone())?;
    same("arrival", &|p| p.meta.arrival.clone())?;
    same("seed", &|p| p.meta.seed.to_string())?;
    same("dataset", &|p| format!("'{}'", p.meta.dataset))?;
    same("shard count", &|p| p.shard().count.to_string())?;
    same("SLO", &|p| {
        p.summary
            .as_ref()
            .and_then(|s| {
                s.slo
                    .clone()
                    .map(|slo| format!("{slo} at {:?}", s.slo_attainment))
            })
            .unwrap_or_else(|| "none".into())
    })?;
    for p in parts {
        if p.meta.kind.as_deref() == Some("capacity") || p.meta.kind.as_deref() == Some("soak") {
            return Err(format!(
                "{}: a {} run cannot be merged (only sweeps: their levels are fixed in advance)",
                p.name(),
                p.meta.kind.as_deref().unwrap_or_default()
            ));
        }
    }
    let count = first.shard().count;
    let mut seen: Vec<Option<&Part>> = vec![None; count as usize];
    for p in parts {
        let i = p.shard().index as usize;
        if let Some(other) = seen[i] {
            return Err(format!(
                "shard {i}/{count} given twice: {} and {}",
                other.name(),
                p.name()
            ));
        }
        seen[i] = Some(p);
    }
    let missing: Vec<String> = seen
        .iter()
        .enumerate()
        .filter(|(_, p)| p.is_none())
        .map(|(i, _)| format!("{i}/{count}"))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "missing shard(s) {} of run {}: give all {count} shard directories",
            missing.join(", "),
            first.meta.run_id
        ));
    }
    Ok(())
}

/// The first shard's metadata, made the whole run's: no shard, the
/// shards' span of time, every host, every notice.
fn merged_metadata(parts: &[Part], levels: usize) -> Metadata {
    let mut meta = parts[0].meta.clone();
    meta.shard = None;
    meta.merged_from = parts.iter().map(|p| p.name()).collect();
    meta.levels_completed = levels;
    meta.max_in_flight = parts.iter().map(|p| p.meta.max_in_flight).sum();
    let mut hosts: Vec<&str> = parts.iter().map(|p| p.meta.host.as_str()).collect();
    hosts.dedup();
    meta.host = hosts.join(",");
    meta.connection_reuse = parts.iter().all(|p| p.meta.connection_reuse);
    meta.notices = Vec::new();
    for p in parts {
        for n in &p.meta.notices {
            if !meta.notices.contains(n) {
                meta.notices.push(n.clone());
            }
        }
    }
    meta.error = None;
    // How the shards divided the load, said once.
    let n = parts.len();
    match meta.load.as_str() {
        "concurrency" => meta.notices.push(format!(
            "{n} shards each ran their share of every level's users (level / {n}, the first \
             shards one more when it does not divide); the merged levels count them all"
        )),
        "trace" => meta.notices.push(format!(
            "{n} shards each replayed the trace lines whose index is theirs modulo {n}; the \
             merged level holds every line"
        )),
        _ => {}
    }
    // RFC 3339 strings with one offset compare as times.
    if let Some(s) = parts.iter().map(|p| &p.meta.started_at).min() {
        meta.started_at = s.clone();
    }
    meta.finished_at = parts
        .iter()
        .filter_map(|p| p.meta.finished_at.clone())
        .max();
    meta
}

/// `--output`, created (it must not exist, or be empty); otherwise the
/// run id's directory beside the first shard's, as `run` would name it.
fn output_dir(args: &MergeArgs, first: &Part) -> Result<RunDir, UsageError> {
    match &args.output {
        Some(out) => {
            if out.exists() {
                let empty = std::fs::read_dir(out)
                    .map(|mut d| d.next().is_none())
                    .unwrap_or(false);
                if !empty {
                    return Err(UsageError::new(format!(
                        "--output {}: exists and is not an empty directory",
                        out.display()
                    )));
                }
            } else {
                std::fs::create_dir_all(out)
                    .map_err(|e| UsageError::new(format!("--output {}: {e}", out.display())))?;
            }
            Ok(RunDir::open(out))
        }
        None => {
            let root = first.dir.parent().unwrap_or(Path::new("."));
            RunDir::create(root, &first.meta.run_id)
                .map_err(|e| UsageError::new(format!("{}: {e}", root.display())))
        }
    }
}
