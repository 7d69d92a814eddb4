//! The one writer of a run directory. Sweeps (`run` and daemon), soak
//! snapshots and capacity searches all write through it, so every results
//! directory has the same files, written the same way:
//!
//! * `metadata.json` first, `"status": "running", "partial": true`;
//! * at each checkpoint (a level done, a soak snapshot, a probe): the
//!   seed's results array, `summary.json`, `metadata.json` and the PNG;
//! * at the end, the same with the final status.
//!
//! Every file is written atomically. A write that fails is logged and
//! kept in [`RunWriter::errors`], never thrown: a full disk must not throw
//! away the measurement in memory.

use crate::analysis::level::LevelResult;
use crate::results::plot;
use crate::results::{METADATA_FILE, Metadata, RunDir, SUMMARY_FILE, Summary};

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Complete,
    /// Stopped before it was done.
    Partial,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::Partial => "partial",
        }
    }
}

/// Where and what to write.
#[derive(Debug, Clone)]
pub struct Outputs {
    pub dir: RunDir,
    pub results_file: String,
    /// Draw the PNG under this name, if set.
    pub plot_file: Option<String>,
    pub plot_title: String,
}

pub struct RunWriter {
    out: Outputs,
    meta: Metadata,
    errors: Vec<String>,
}

impl RunWriter {
    /// Start a run: `metadata.json` says it is running.
    pub fn start(out: Outputs, mut meta: Metadata) -> Self {
        meta.status = "running".into();
        meta.partial = true;
        meta.results_file = out.results_file.clone();
        meta.plot_file = out.plot_file.clone();
        let mut w = Self {
            out,
            meta,
            errors: Vec::new(),
        };
        w.write_meta();
        w
    }

    pub fn dir(&self) -> &RunDir {
        &self.out.dir
    }

    pub fn meta(&self) -> &Metadata {
        &self.meta
    }

    /// For facts learnt during the run (connection reuse, notices).
    pub fn meta_mut(&mut self) -> &mut Metadata {
        &mut self.meta
    }

    /// Files that could not be written so far.
    pub fn errors(&self) -> &[String] {
        &self.errors
    }

    /// Record a failure that belongs with the run's write errors (e.g. a
    /// sink of its own, such as `requests.jsonl`).
    pub fn add_error(&mut self, msg: String) {
        tracing::error!("{msg}");
        if !self.errors.contains(&msg) {
            self.errors.push(msg);
        }
    }

    /// Everything measured so far, the run still going.
    pub fn checkpoint(&mut self, levels: &[LevelResult], summary: &Summary) {
        self.meta.levels_completed = levels.len();
        self.write_all(levels, summary, &self.out.plot_title.clone());
    }

    /// The final write: the status, the finish time, any write errors.
    pub fn finish(&mut self, levels: &[LevelResult], summary: &Summary, status: RunStatus) {
        self.meta.status = status.as_str().into();
        self.meta.partial = status == RunStatus::Partial;
        self.meta.levels_completed = levels.len();
        // Kept when already known (a merge carries its shards' end).
        if self.meta.finished_at.is_none() {
            self.meta.finished_at = Some(chrono::Local::now().to_rfc3339());
        }
        let title = match status {
            RunStatus::Complete => self.out.plot_title.clone(),
            RunStatus::Partial => format!("{} (partial)", self.out.plot_title),
        };
        // The results, summary and PNG first, so that metadata (written
        // last) can carry any error in writing them.
        self.write_json(&self.out.results_file.clone(), &levels);
        self.write_json(SUMMARY_FILE, summary);
        self.draw(levels, summary, &title);
        if !self.errors.is_empty() {
            self.meta.error = Some(self.errors.join("; "));
        }
        self.write_meta();
    }

    fn write_all(&mut self, levels: &[LevelResult], summary: &Summary, title: &str) {
        self.write_json(&self.out.results_file.clone(), &levels);
        self.write_json(SUMMARY_FILE, summary);
        self.draw(levels, summary, title);
        self.write_meta();
    }

    fn draw(&mut self, levels: &[LevelResult], summary: &Summary, title: &str) {
        let Some(png) = &self.out.plot_file else {
            return;
        };
        let path = self.out.dir.file(png);
        if let Err(e) = plot::render(&path, levels, summary, title) {
            self.add_error(e.to_string());
        }
        // Levels whose rate changed are read over time, beside the grid.
        if crate::results::timeline::has_series(levels) {
            let path = self
                .out
                .dir
                .file(crate::results::timeline::DEFAULT_TIMELINE_FILE);
            if let Err(e) = crate::results::timeline::render(&path, levels, title) {
                self.add_error(e.to_string());
            }
        }
        // Sessions are read by turn, beside the grid.
        if crate::results::sessions_plot::has_sessions(levels) {
            let path = self
                .out
                .dir
                .file(crate::results::sessions_plot::DEFAULT_SESSIONS_FILE);
            if let Err(e) = crate::results::sessions_plot::render(&path, levels, title) {
                self.add_error(e.to_string());
            }
        }
    }

    fn write_meta(&mut self) {
        let meta = self.meta.clone();
        self.write_json(METADATA_FILE, &meta);
    }

    fn write_json<T: serde::Serialize + ?Sized>(&mut self, name: &str, v: &T) {
        if let Err(e) = self.out.dir.write_json(name, &v) {
            let msg = format!("cannot write {}: {e}", self.out.dir.file(name).display());
            self.add_error(msg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Metadata {
        let t = crate::plan::target::Target::new("http://h/v1/chat/completions", "m");
        Metadata::new(&crate::results::RunInfo {
            target: &t,
            dataset: "d.json",
            qps: &[1.0],
            duration: Some(std::time::Duration::from_secs(1)),
            arrival: crate::plan::schedule::Arrival::Constant,
            seed: 0,
            run_id: "r".into(),
            percentiles: &[50.0],
            now: chrono::Local::now(),
            job: None,
            kind: "sweep",
        })
    }

    fn files(dir: &RunDir) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&dir.path)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_checkpoint_has_the_shape_of_a_finished_run() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RunDir::create(tmp.path(), "x").unwrap();
        let out = Outputs {
            dir: dir.clone(),
            results_file: "benchmark_qps_results.json".into(),
            plot_file: Some("benchmark_qps.png".into()),
            plot_title: "t".into(),
        };
        let mut w = RunWriter::start(out, meta());
        let m: Metadata = dir.read_json(METADATA_FILE).unwrap();
        assert_eq!((m.status.as_str(), m.partial), ("running", true));
        let summary = crate::results::summarize(&[], "running");
        w.checkpoint(&[], &summary);
        let at_checkpoint = files(&dir);
        w.finish(&[], &summary, RunStatus::Complete);
        assert_eq!(files(&dir), at_checkpoint);
        assert_eq!(
            at_checkpoint,
            [
                "benchmark_qps.png",
                "benchmark_qps_results.json",
                "metadata.json",
                "summary.json"
            ]
        );
        let m: Metadata = dir.read_json(METADATA_FILE).unwrap();
        assert_eq!((m.status.as_str(), m.partial), ("complete", false));
        assert!(m.finished_at.is_some());
        assert!(w.errors().is_empty());
    }

    #[test]
    fn write_failures_are_kept_not_thrown() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RunDir::create(tmp.path(), "x").unwrap();
        let out = Outputs {
            dir: dir.clone(),
            results_file: "r.json".into(),
            plot_file: None,
            plot_title: "t".into(),
        };
        let mut w = RunWriter::start(out, meta());
        // The directory goes away under the run.
        std::fs::remove_dir_all(&dir.path).unwrap();
        std::fs::write(&dir.path, "now a file").unwrap();
        w.finish(
            &[],
            &crate::results::summarize(&[], "partial"),
            RunStatus::Partial,
        );
        assert!(
            w.errors().iter().any(|e| e.contains("r.json")),
            "{:?}",
            w.errors()
        );
    }
}
