//! The layout of `src/`, checked. Each top-level folder is a stage of the
//! pipeline, in the order of [`FOLDERS`]; a file may use files of its own
//! folder and of folders earlier in that list, never later ones. No files
//! import each other in a circle, however long. Pure files ([`PURE`]) do no
//! I/O, read no clock and use only other pure files.
//!
//! Every `crate::…` and `super::…` path outside a file's tests is an arrow
//! from that file to the file the path lives in (`use` trees with braces
//! included). A parent `mod.rs` naming its children by their bare names
//! (`mod pool; use pool::Pool;`) is the module tree, not an arrow.
//!
//! A new top-level folder must be given its place in [`FOLDERS`], or this
//! test fails. The checks are proven by the tests at the end, which plant
//! an arrow up, a circle and an impure import in a copy of the tree.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The folders of `src/` in pipeline order: each may use only itself and
/// the folders before it.
const FOLDERS: &[&str] = &[
    "base", "workload", "client", "server", "analysis", "plan", "results", "engine", "observe",
    "mock", "daemon", "selftest", "cli",
];

/// Files with no I/O and no clock of their own (a prefix ending in `/`
/// names a whole folder).
const PURE: &[&str] = &[
    "base/duration.rs",
    "base/error.rs",
    "base/redact.rs",
    "base/secret.rs",
    "workload/mod.rs",
    "workload/dataset.rs",
    "workload/request.rs",
    "workload/synthetic.rs",
    "workload/trace.rs",
    "workload/session.rs",
    "client/chunk.rs",
    "client/chunk_memo.rs",
    "client/json_scan.rs",
    "client/keepalive.rs",
    "client/record.rs",
    "client/sse.rs",
    "server/metrics/",
    "server/view.rs",
    "analysis/",
    "plan/profile.rs",
    "plan/load.rs",
    "plan/replay.rs",
    "plan/schedule.rs",
    "plan/think.rs",
    "plan/sessions.rs",
    "results/table.rs",
    "observe/otlp_encode.rs",
    "observe/protobuf.rs",
    "observe/chunk_gaps.rs",
];

/// What a pure file may not name: sockets, files, the runtime, clocks.
const IMPURE: &[&str] = &[
    "tokio::",
    "hyper::",
    "std::fs",
    "std::net",
    "Instant::now",
    "SystemTime::now",
    "std::process",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `client/pool.rs` → `["client", "pool"]`; `mod.rs` names its folder.
fn module_path(root: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(root).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The file a module path lives in: the longest prefix that is a file.
fn file_of(root: &Path, path: &[String]) -> Option<PathBuf> {
    for n in (1..=path.len()).rev() {
        let base = path[..n].iter().fold(root.to_path_buf(), |p, c| p.join(c));
        let as_file = base.with_extension("rs");
        if as_file.is_file() {
            return Some(as_file);
        }
        let as_mod = base.join("mod.rs");
        if as_mod.is_file() {
            return Some(as_mod);
        }
    }
    None
}

/// The code of a file before its tests, with `//` comments removed.
fn code(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            break;
        }
        let line = match line.find("//") {
            // A `//` inside a string (a URL) is kept: only whole-line and
            // trailing comments after code are cut, and URLs in code sit
            // in strings that contain no `crate::`.
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Parses the path tree that starts at `s` (just after `crate::`),
/// appending each full path to `out`. Returns the bytes consumed.
fn parse_tree(s: &str, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
    let b = s.as_bytes();
    let mut i = 0;
    let mut path = prefix.to_vec();
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < b.len() && b[i] == b'{' {
            i += 1;
            loop {
                while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b',') {
                    i += 1;
                }
                if i >= b.len() || b[i] == b'}' {
                    return i + 1;
                }
                let used = parse_tree(&s[i..], &path, out);
                if used == 0 {
                    return i;
                }
                i += used;
            }
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_lowercase() || b[i].is_ascii_digit() || b[i] == b'_') {
            i += 1;
        }
        let name = &s[start..i];
        let ends_here = i < b.len() && (b[i].is_ascii_uppercase() || b[i] == b'*');
        if name.is_empty() || name == "self" || ends_here {
            // A type, a glob, `self` or anything else ends the module path.
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'*') {
                i += 1;
            }
            if !path.is_empty() {
                out.push(path);
            }
            return i;
        }
        path.push(name.to_string());
        if s[i..].starts_with("::") {
            i += 2;
            continue;
        }
        out.push(path);
        return i;
    }
}

/// Module paths a file refers to, outside its tests.
fn references(root: &Path, file: &Path) -> BTreeSet<Vec<String>> {
    let text = code(&std::fs::read_to_string(file).unwrap());
    let own = module_path(root, file);
    // `super` of `client/pool.rs` is `client`; of `client/mod.rs`, the
    // crate root: one level up from the module either way.
    let parent = own[..own.len().saturating_sub(1)].to_vec();
    let mut found = Vec::new();
    for (prefix, base) in [("crate::", Vec::new()), ("super::", parent)] {
        let mut at = 0;
        while let Some(i) = text[at..].find(prefix) {
            let i = at + i;
            at = i + prefix.len();
            let before = &text[..i];
            if before.ends_with('$') || before.ends_with("::") {
                continue; // `$crate::` in macros, `a::super::`
            }
            if before
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                continue; // `llmload::crate::`-like words
            }
            parse_tree(&text[at..], &base, &mut found);
        }
    }
    found.into_iter().collect()
}

fn is_pure(rel: &str) -> bool {
    PURE.iter().any(|p| {
        if p.ends_with('/') {
            rel.starts_with(p)
        } else {
            rel == *p
        }
    })
}

fn rel(root: &Path, f: &Path) -> String {
    f.strip_prefix(root).unwrap().display().to_string()
}

/// Every problem with the tree under `root`, each in one line.
fn check(root: &Path) -> Vec<String> {
    let rank: BTreeMap<&str, usize> = FOLDERS.iter().enumerate().map(|(i, f)| (*f, i)).collect();
    let mut files = Vec::new();
    rust_files(root, &mut files);
    files.sort();
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    let mut problems = Vec::new();
    for f in &files {
        let own = module_path(root, f);
        if own == ["lib"] || own == ["main"] {
            continue;
        }
        let name = rel(root, f);
        if own.len() < 2 && !f.ends_with("mod.rs") {
            problems.push(format!(
                "{name}: a file at the top of src/; put it in a stage folder"
            ));
            continue;
        }
        let Some(&from) = rank.get(own[0].as_str()) else {
            problems.push(format!(
                "{name}: folder '{}' has no place in FOLDERS",
                own[0]
            ));
            continue;
        };
        let pure = is_pure(&name);
        if pure {
            let text = code(&std::fs::read_to_string(f).unwrap());
            for bad in IMPURE {
                if text.contains(bad) {
                    problems.push(format!("{name} is pure but uses {bad}"));
                }
            }
        }
        for r in references(root, f) {
            let Some(target) = file_of(root, &r) else {
                continue;
            };
            if &target == f {
                continue;
            }
            let to_name = rel(root, &target);
            if let Some(&to) = rank.get(r[0].as_str())
                && to > from
            {
                problems.push(format!(
                    "{name} ({}) uses {} ({}), a later stage",
                    own[0],
                    r.join("::"),
                    r[0]
                ));
            }
            // A folder's mod.rs only declares and documents its children.
            if pure && !is_pure(&to_name) && !to_name.ends_with("mod.rs") {
                problems.push(format!("{name} is pure but uses {to_name}, which is not"));
            }
            edges.entry(f.clone()).or_default().insert(target);
        }
    }
    for circle in circles(&edges) {
        let names: Vec<String> = circle.iter().map(|f| rel(root, f)).collect();
        problems.push(format!(
            "circle of imports: {} → {}",
            names.join(" → "),
            names[0]
        ));
    }
    problems
}

/// The strongly connected components of more than one file (Tarjan),
/// each as a cycle through its files.
fn circles(edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<Vec<PathBuf>> {
    struct Tarjan<'a> {
        edges: &'a BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        index: BTreeMap<&'a PathBuf, usize>,
        low: BTreeMap<&'a PathBuf, usize>,
        stack: Vec<&'a PathBuf>,
        on_stack: BTreeSet<&'a PathBuf>,
        out: Vec<Vec<PathBuf>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a PathBuf) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            if let Some(outs) = self.edges.get(v) {
                for w in outs {
                    if !self.index.contains_key(w) {
                        self.visit(w);
                        let lw = self.low[w];
                        let lv = self.low.get_mut(v).unwrap();
                        *lv = (*lv).min(lw);
                    } else if self.on_stack.contains(w) {
                        let iw = self.index[w];
                        let lv = self.low.get_mut(v).unwrap();
                        *lv = (*lv).min(iw);
                    }
                }
            }
            if self.low[v] == self.index[v] {
                let mut comp = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    comp.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if comp.len() > 1 {
                    comp.reverse();
                    self.out.push(comp);
                }
            }
        }
    }
    let mut t = Tarjan {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.out
}

#[test]
fn src_is_one_folder_per_stage_in_pipeline_order_with_no_circle() {
    let problems = check(&src());
    assert!(problems.is_empty(), "layout:\n  {}", problems.join("\n  "));
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    assert!(
        files.len() > 80,
        "the scan found too few files: {}",
        files.len()
    );
    let refs: usize = files.iter().map(|f| references(&src(), f).len()).sum();
    assert!(refs > 300, "the scan found too few imports: {refs}");
}

#[test]
fn the_top_of_src_is_the_stage_folders_each_with_a_short_doc() {
    let mut entries: Vec<String> = std::fs::read_dir(src())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    let mut want: Vec<String> = FOLDERS.iter().map(|f| f.to_string()).collect();
    want.extend(["lib.rs".to_string(), "main.rs".to_string()]);
    want.sort();
    assert_eq!(entries, want);
    for f in FOLDERS {
        let text = std::fs::read_to_string(src().join(f).join("mod.rs")).unwrap();
        let doc = text.lines().take_while(|l| l.starts_with("//!")).count();
        assert!(doc >= 2, "{f}/mod.rs: module doc of {doc} lines");
    }
}

#[test]
fn no_file_is_much_over_800_lines() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    for f in files {
        let n = std::fs::read_to_string(&f).unwrap().lines().count();
        assert!(n <= 850, "{}: {n} lines", f.display());
    }
}

/// The parser reads `use` trees with braces, nesting and `self`.
#[test]
fn use_trees_expand_to_every_path() {
    let mut out = Vec::new();
    let s = "analysis::{stats::{self, Dist}, slo::SloTarget, level}, x";
    parse_tree(s, &[], &mut out);
    let got: BTreeSet<String> = out.iter().map(|p| p.join("::")).collect();
    let want: BTreeSet<String> = ["analysis::stats", "analysis::slo", "analysis::level"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(got, want);
}

/// A copy of `src/` to plant defects in.
fn copy_of_src() -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let p = e.unwrap().path();
            let dest = to.join(p.file_name().unwrap());
            if p.is_dir() {
                copy(&p, &dest);
            } else {
                std::fs::copy(&p, &dest).unwrap();
            }
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    copy(&src(), tmp.path());
    assert!(check(tmp.path()).is_empty(), "the copy starts clean");
    tmp
}

fn plant(root: &Path, file: &str, line: &str) {
    let p = root.join(file);
    let text = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, format!("{line}\n{text}")).unwrap();
}

#[test]
fn a_deliberate_circle_of_three_files_is_caught() {
    // stats already uses stability; close the loop through saturation.
    let tmp = copy_of_src();
    plant(
        tmp.path(),
        "analysis/stability.rs",
        "use crate::analysis::saturation::fmt_qps;",
    );
    plant(
        tmp.path(),
        "analysis/saturation.rs",
        "use crate::analysis::{stats::Dist};",
    );
    let problems = check(tmp.path());
    let circle: Vec<&String> = problems.iter().filter(|p| p.contains("circle")).collect();
    assert_eq!(circle.len(), 1, "{problems:#?}");
    for f in [
        "analysis/stats.rs",
        "analysis/stability.rs",
        "analysis/saturation.rs",
    ] {
        assert!(circle[0].contains(f), "{}", circle[0]);
    }
}

#[test]
fn a_deliberate_pair_through_super_is_caught() {
    let tmp = copy_of_src();
    plant(tmp.path(), "analysis/slo.rs", "use super::stats::Dist;");
    let problems = check(tmp.path());
    assert!(
        problems.iter().any(|p| p.contains("circle")
            && p.contains("analysis/slo.rs")
            && p.contains("analysis/stats.rs")),
        "{problems:#?}"
    );
}

#[test]
fn a_deliberate_arrow_up_is_caught() {
    let tmp = copy_of_src();
    plant(
        tmp.path(),
        "base/duration.rs",
        "use crate::engine::sweep::Engine;",
    );
    let problems = check(tmp.path());
    assert!(
        problems.iter().any(|p| p.contains("base/duration.rs")
            && p.contains("engine::sweep")
            && p.contains("later stage")),
        "{problems:#?}"
    );
}

#[test]
fn a_pure_file_doing_io_or_using_a_shell_is_caught() {
    let tmp = copy_of_src();
    plant(tmp.path(), "analysis/search.rs", "use std::fs::read;");
    plant(
        tmp.path(),
        "client/sse.rs",
        "use crate::client::pool::Pool;",
    );
    let problems = check(tmp.path());
    assert!(
        problems
            .iter()
            .any(|p| p.contains("analysis/search.rs is pure but uses std::fs")),
        "{problems:#?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("client/sse.rs is pure but uses client/pool.rs")),
        "{problems:#?}"
    );
}

#[test]
fn a_new_folder_without_a_place_is_caught() {
    let tmp = copy_of_src();
    std::fs::create_dir(tmp.path().join("extra")).unwrap();
    std::fs::write(tmp.path().join("extra/mod.rs"), "//! x\n").unwrap();
    std::fs::write(tmp.path().join("loose.rs"), "//! x\n").unwrap();
    let problems = check(tmp.path());
    assert!(
        problems.iter().any(|p| p.contains("'extra' has no place")),
        "{problems:#?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("loose.rs: a file at the top")),
        "{problems:#?}"
    );
}
