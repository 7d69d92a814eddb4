//! The run history: `results_dir/index.jsonl`, one JSON line per change.
//!
//! Append-only while running (a crash loses at most the line being
//! written), folded by run id on read, so `GET /api/v1/runs` survives
//! restarts. Retention rewrites the file atomically without pruned runs.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const INDEX_FILE: &str = "index.jsonl";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunEntry {
    pub id: String,
    pub target: String,
    pub job: String,
    pub kind: String,
    /// Directory relative to the results directory.
    pub dir: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// running, complete, partial, failed.
    pub status: String,
    #[serde(default)]
    pub max_qps_without_errors: Option<f64>,
    #[serde(default)]
    pub saturation_qps: Option<f64>,
    #[serde(default)]
    pub recommended_qps: Option<f64>,
    #[serde(default)]
    pub error: Option<String>,
}

pub struct RunIndex {
    root: PathBuf,
    runs: Mutex<BTreeMap<String, RunEntry>>,
}

impl RunIndex {
    /// Load the index; runs left "running" by a previous process that died
    /// are marked partial (their directories hold what was measured).
    pub fn open(root: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(root)?;
        let mut runs = BTreeMap::new();
        if let Ok(text) = std::fs::read_to_string(root.join(INDEX_FILE)) {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                match serde_json::from_str::<RunEntry>(line) {
                    Ok(e) => {
                        runs.insert(e.id.clone(), e);
                    }
                    Err(e) => tracing::warn!("skipping a damaged line in {INDEX_FILE}: {e}"),
                }
            }
        }
        for e in runs.values_mut() {
            if e.status == "running" {
                e.status = "partial".into();
                e.error = Some("the daemon stopped while this run was in progress".into());
            }
        }
        Ok(Self {
            root: root.to_owned(),
            runs: Mutex::new(runs),
        })
    }

    /// Record a new or changed run.
    pub fn put(&self, entry: RunEntry) -> std::io::Result<()> {
        let line = serde_json::to_string(&entry).map_err(std::io::Error::other)?;
        self.runs
            .lock()
            .expect("index lock")
            .insert(entry.id.clone(), entry);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join(INDEX_FILE))?;
        f.write_all(format!("{line}\n").as_bytes())?;
        f.sync_data()
    }

    pub fn get(&self, id: &str) -> Option<RunEntry> {
        self.runs.lock().expect("index lock").get(id).cloned()
    }

    /// Newest first.
    pub fn list(&self) -> Vec<RunEntry> {
        let mut v: Vec<RunEntry> = self
            .runs
            .lock()
            .expect("index lock")
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| b.started_at.cmp(&a.started_at).then(b.id.cmp(&a.id)));
        v
    }

    pub fn dir_of(&self, e: &RunEntry) -> PathBuf {
        self.root.join(&e.dir)
    }

    /// Apply retention to one target's finished runs: keep the newest
    /// `keep_runs`, drop those older than `keep_days`. Returns the ids
    /// removed. Runs in progress are never touched.
    pub fn prune(
        &self,
        target: &str,
        keep_runs: Option<usize>,
        keep_days: Option<f64>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> std::io::Result<Vec<String>> {
        if keep_runs.is_none() && keep_days.is_none() {
            return Ok(Vec::new());
        }
        let mut doomed = Vec::new();
        {
            let runs = self.runs.lock().expect("index lock");
            let mut mine: Vec<&RunEntry> = runs
                .values()
                .filter(|e| e.target == target && e.status != "running")
                .collect();
            mine.sort_by(|a, b| b.started_at.cmp(&a.started_at));
            for (i, e) in mine.iter().enumerate() {
                let too_many = keep_runs.is_some_and(|k| i >= k);
                let too_old = keep_days.is_some_and(|d| {
                    chrono::DateTime::parse_from_rfc3339(&e.started_at)
                        .map(|t| {
                            (now - t.with_timezone(&chrono::Utc)).num_seconds() as f64
                                > d * 86_400.0
                        })
                        .unwrap_or(false)
                });
                if too_many || too_old {
                    doomed.push((e.id.clone(), e.dir.clone()));
                }
            }
        }
        if doomed.is_empty() {
            return Ok(Vec::new());
        }
        for (_, dir) in &doomed {
            let path = self.root.join(dir);
            if path.starts_with(&self.root)
                && path != self.root
                && let Err(e) = std::fs::remove_dir_all(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(e);
            }
        }
        let mut runs = self.runs.lock().expect("index lock");
        for (id, _) in &doomed {
            runs.remove(id);
        }
        let mut text = String::new();
        for e in runs.values() {
            text.push_str(&serde_json::to_string(e).map_err(std::io::Error::other)?);
            text.push('\n');
        }
        crate::results::write_atomic(&self.root.join(INDEX_FILE), text.as_bytes())?;
        Ok(doomed.into_iter().map(|(id, _)| id).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, target: &str, started: &str, status: &str) -> RunEntry {
        RunEntry {
            id: id.into(),
            target: target.into(),
            job: "j".into(),
            kind: "sweep".into(),
            dir: format!("{target}/{id}"),
            started_at: started.into(),
            finished_at: None,
            status: status.into(),
            max_qps_without_errors: None,
            saturation_qps: None,
            recommended_qps: None,
            error: None,
        }
    }

    #[test]
    fn survives_restart_and_marks_interrupted_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let idx = RunIndex::open(tmp.path()).unwrap();
        idx.put(entry("a", "t", "2026-01-01T00:00:00+00:00", "running"))
            .unwrap();
        idx.put(entry("b", "t", "2026-01-02T00:00:00+00:00", "running"))
            .unwrap();
        idx.put(entry("a", "t", "2026-01-01T00:00:00+00:00", "complete"))
            .unwrap();
        drop(idx);
        let idx = RunIndex::open(tmp.path()).unwrap();
        let list = idx.list();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].id, "b", "newest first");
        assert_eq!(list[0].status, "partial");
        assert_eq!(list[1].status, "complete");
    }

    #[test]
    fn retention_keeps_newest_and_young() {
        let tmp = tempfile::tempdir().unwrap();
        let idx = RunIndex::open(tmp.path()).unwrap();
        for (i, day) in ["01", "02", "03", "04"].iter().enumerate() {
            let id = format!("r{i}");
            std::fs::create_dir_all(tmp.path().join("t").join(&id)).unwrap();
            idx.put(entry(
                &id,
                "t",
                &format!("2026-01-{day}T00:00:00+00:00"),
                "complete",
            ))
            .unwrap();
        }
        idx.put(entry("other", "u", "2020-01-01T00:00:00+00:00", "complete"))
            .unwrap();
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-05T00:00:00+00:00")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let mut gone = idx.prune("t", Some(3), None, now).unwrap();
        gone.sort();
        assert_eq!(gone, vec!["r0"]);
        assert!(!tmp.path().join("t/r0").exists());
        assert!(tmp.path().join("t/r1").exists());
        let gone = idx.prune("t", None, Some(2.5), now).unwrap();
        assert_eq!(gone, vec!["r1"]);
        drop(idx);
        let idx = RunIndex::open(tmp.path()).unwrap();
        let ids: Vec<String> = idx.list().into_iter().map(|e| e.id).collect();
        assert_eq!(ids, vec!["r3", "r2", "other"]);
    }
}
