//! The layering of `src/`, checked: a pure core, shells around it, the
//! two faces (`daemon`, `selftest`) and the CLI above them, `commands`
//! on top. Every `crate::…` (and `super::…`) path in a file is an arrow
//! from that file to another; arrows may only point down or sideways
//! within the shell layer, and no two files may point at each other.
//!
//! A new top-level module must be given a layer here, or this test fails.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layer of each top-level module: 0 pure core (no sockets, no clocks
/// of its own), 1 shells (I/O around the core), 2 faces, 3 commands.
const LAYERS: &[(&str, u8)] = &[
    ("chunk", 0),
    ("clock", 0),
    ("compare", 0),
    ("dataset", 0),
    ("duration", 0),
    ("error", 0),
    ("keepalive", 0),
    ("merge", 0),
    ("record", 0),
    ("request", 0),
    ("saturation", 0),
    ("schedule", 0),
    ("search", 0),
    ("secret", 0),
    ("server_metrics", 0),
    ("server_view", 0),
    ("slo", 0),
    ("stability", 0),
    ("sse", 0),
    ("stats", 0),
    ("summary", 0),
    ("synthetic", 0),
    ("table", 0),
    ("workload", 0),
    ("alerts", 1),
    ("capacity", 1),
    ("client", 1),
    ("console", 1),
    ("limits", 1),
    ("logging", 1),
    ("metrics", 1),
    ("mock", 1),
    ("plot", 1),
    ("progress", 1),
    ("prompts", 1),
    ("requests_jsonl", 1),
    ("results", 1),
    ("runner", 1),
    ("scrape", 1),
    ("serve", 1),
    ("signals", 1),
    ("sweep", 1),
    ("target", 1),
    ("telemetry", 1),
    ("tokenizer", 1),
    ("writer", 1),
    ("cli", 2),
    ("daemon", 2),
    ("selftest", 2),
    ("commands", 3),
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

/// `src/client/pool.rs` → `["client", "pool"]`; `mod.rs` names its dir.
fn module_path(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).unwrap();
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
fn file_of(path: &[String]) -> Option<PathBuf> {
    for n in (1..=path.len()).rev() {
        let base = path[..n].iter().fold(src(), |p, c| p.join(c));
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

/// Module paths a file refers to, outside its tests.
fn references(file: &Path) -> BTreeSet<Vec<String>> {
    let text = std::fs::read_to_string(file).unwrap();
    let own = module_path(file);
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        // `super` of `client/pool.rs` is `client`; of `client/mod.rs`,
        // the crate root: one level up from the module either way.
        let parent = own[..own.len().saturating_sub(1)].to_vec();
        for (prefix, base) in [("crate::", Vec::new()), ("super::", parent)] {
            let mut rest = line;
            while let Some(i) = rest.find(prefix) {
                let before = &rest[..i];
                rest = &rest[i + prefix.len()..];
                if before.ends_with('$') || before.ends_with("::") {
                    continue; // `$crate::` in macros, `a::super::`
                }
                let mut path = base.clone();
                for seg in rest.split("::") {
                    let name: String = seg
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                        .collect();
                    if name.is_empty() {
                        break;
                    }
                    path.push(name.clone());
                    if name.len() != seg.len() {
                        break;
                    }
                }
                if !path.is_empty() {
                    out.insert(path);
                }
            }
        }
    }
    out
}

#[test]
fn arrows_point_down_and_no_two_files_import_each_other() {
    let layer: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    let mut problems = Vec::new();
    for f in &files {
        let own = module_path(f);
        if own.is_empty() || own == ["lib"] || own == ["main"] {
            continue;
        }
        let Some(&from) = layer.get(own[0].as_str()) else {
            problems.push(format!("{}: module '{}' has no layer", f.display(), own[0]));
            continue;
        };
        for r in references(f) {
            let Some(target) = file_of(&r) else { continue };
            if &target == f {
                continue;
            }
            let Some(&to) = layer.get(r[0].as_str()) else {
                continue;
            };
            if to > from {
                problems.push(format!(
                    "{} (layer {from}) uses {} (layer {to})",
                    f.strip_prefix(src()).unwrap().display(),
                    r.join("::")
                ));
            }
            if from == 2 && to == 2 && r[0] != own[0] {
                problems.push(format!(
                    "{}: face '{}' uses face '{}'",
                    f.strip_prefix(src()).unwrap().display(),
                    own[0],
                    r[0]
                ));
            }
            edges.entry(f.clone()).or_default().insert(target);
        }
    }
    for (a, outs) in &edges {
        for b in outs {
            if a < b && edges.get(b).is_some_and(|o| o.contains(a)) {
                problems.push(format!(
                    "{} and {} import each other",
                    a.strip_prefix(src()).unwrap().display(),
                    b.strip_prefix(src()).unwrap().display()
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "layering:\n  {}",
        problems.join("\n  ")
    );
    assert!(
        edges.len() > 40,
        "the scan found too few files: {}",
        edges.len()
    );
}
