//! The README and the book in `docs/` hold together: every relative link
//! and `#anchor` resolves, every page is reachable from `SUMMARY.md`, the
//! README stays short, and the reference names every `llmload run` flag
//! (read from the binary's own `--help`) and every daemon config key (read
//! from the structs serde fills).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The markdown pages: the README and every page of the book.
fn pages() -> Vec<PathBuf> {
    let mut out = vec![root().join("README.md")];
    let mut book: Vec<PathBuf> = std::fs::read_dir(root().join("docs/src"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    book.sort();
    out.extend(book);
    out
}

/// Text outside fenced code blocks and inline code spans, where links live.
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            out.push('\n');
            continue;
        }
        if !fenced {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// GitHub's anchor for a heading: lower case, spaces to `-`, and every
/// character but letters, digits, `-` and `_` dropped.
fn slug(heading: &str) -> String {
    // A link in a heading keeps only its text.
    let mut text = String::new();
    let mut rest = heading;
    while let Some(i) = rest.find("](") {
        let Some(j) = rest[i..].find(')') else { break };
        text.push_str(&rest[..i]);
        rest = &rest[i + j + 1..];
    }
    text.push_str(rest);
    text.trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a markdown file, duplicates numbered as GitHub does.
fn anchors(file: &Path) -> BTreeSet<String> {
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    let mut out = BTreeSet::new();
    for line in prose(&read(file)).lines() {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if hashes == 0 || hashes > 6 || !line[hashes..].starts_with(' ') {
            continue;
        }
        let s = slug(line[hashes..].trim().trim_end_matches('#'));
        let n = seen.entry(s.clone()).or_insert(0);
        out.insert(if *n == 0 {
            s.clone()
        } else {
            format!("{s}-{n}")
        });
        *n += 1;
    }
    out
}

/// `[text](target)` links, inline, with their targets.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        let after = &rest[i + 2..];
        let end = after.find([')', ' ', '\n']).unwrap_or(after.len());
        out.push(after[..end].to_string());
        rest = &after[end..];
    }
    out
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for page in pages() {
        for target in links(&prose(&read(&page))) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let file = if path.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(path)
            };
            let Ok(file) = file.canonicalize() else {
                problems.push(format!("{}: {target}: no such file", page.display()));
                continue;
            };
            if !file.starts_with(root().canonicalize().unwrap()) {
                problems.push(format!(
                    "{}: {target}: outside the repository",
                    page.display()
                ));
            }
            if !anchor.is_empty() && !anchors(&file).contains(anchor) {
                problems.push(format!(
                    "{}: {target}: no heading #{anchor} in {}",
                    page.display(),
                    file.display()
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "broken links:\n  {}",
        problems.join("\n  ")
    );
    assert!(checked > 50, "only {checked} links found");
}

#[test]
fn every_page_of_the_book_is_in_the_summary() {
    let dir = root().join("docs/src");
    let summary = read(&dir.join("SUMMARY.md"));
    let linked: BTreeSet<String> = links(&summary)
        .into_iter()
        .map(|t| t.split('#').next().unwrap().to_string())
        .collect();
    for page in pages().into_iter().skip(1) {
        let name = page.file_name().unwrap().to_string_lossy().into_owned();
        if name != "SUMMARY.md" {
            assert!(linked.contains(&name), "{name} is not in SUMMARY.md");
        }
    }
    for name in &linked {
        assert!(
            dir.join(name).is_file(),
            "SUMMARY.md links {name}, which does not exist"
        );
    }
    assert!(read(&root().join("docs/book.toml")).contains("src = \"src\""));
}

#[test]
fn the_readme_is_short_and_shows_the_two_commands() {
    let readme = read(&root().join("README.md"));
    let lines = readme.lines().count();
    assert!(lines <= 260, "README.md has {lines} lines");
    assert!(readme.contains("--endpoint mock"), "the main job");
    assert!(readme.contains("./scripts/test.sh"), "the test command");
    let ci = read(&root().join(".ci/run"));
    assert!(
        ci.contains("./scripts/test.sh"),
        ".ci/run calls the README's test command"
    );
}

/// Every long flag `llmload run --help` prints.
fn run_flags() -> BTreeSet<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_llmload"))
        .args(["run", "--help"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let mut flags = BTreeSet::new();
    for line in help.lines() {
        let t = line.trim_start();
        // Option lines start with `-x, --long` or `--long`.
        let t = if t.starts_with('-') && !t.starts_with("--") {
            t.split_once(", ").map(|(_, r)| r).unwrap_or("")
        } else {
            t
        };
        if let Some(rest) = t.strip_prefix("--") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if !name.is_empty() && name != "help" {
                flags.insert(format!("--{name}"));
            }
        }
    }
    flags
}

#[test]
fn the_reference_names_every_run_flag() {
    let flags = run_flags();
    assert!(
        flags.len() > 30,
        "found only {} flags: {flags:?}",
        flags.len()
    );
    let reference = read(&root().join("docs/src/run.md"));
    let missing: Vec<&String> = flags
        .iter()
        .filter(|f| !reference.contains(&format!("`{f}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/src/run.md does not name {missing:?}"
    );
}

/// The `pub field:` names of a struct in a source file.
fn fields(file: &str, structure: &str) -> Vec<String> {
    let text = read(&root().join(file));
    let start = text
        .find(&format!("pub struct {structure} {{"))
        .unwrap_or_else(|| panic!("{file}: no struct {structure}"));
    let body = &text[start..start + text[start..].find("\n}").unwrap()];
    body.lines()
        .filter_map(|l| l.trim().strip_prefix("pub "))
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim().to_string()))
        .filter(|n| !n.contains(' '))
        .collect()
}

#[test]
fn the_reference_names_every_daemon_key() {
    let mut keys = BTreeSet::new();
    for s in ["RawServer", "RawTarget", "RawJob"] {
        keys.extend(fields("src/daemon/config/raw.rs", s));
    }
    keys.extend(fields("src/observe/telemetry.rs", "FileConfig"));
    assert!(keys.len() > 40, "found only {} keys", keys.len());
    let reference = read(&root().join("docs/src/daemon.md"));
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !reference.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/src/daemon.md does not name {missing:?}"
    );
}

#[test]
fn the_link_checker_catches_a_broken_anchor() {
    // The slugs the checks rely on, as GitHub makes them.
    assert_eq!(
        slug("`llmload capacity`: the rate a server holds"),
        "llmload-capacity-the-rate-a-server-holds"
    );
    assert_eq!(slug("Errors and exit codes"), "errors-and-exit-codes");
    let tmp = tempfile::tempdir().unwrap();
    let page = tmp.path().join("p.md");
    std::fs::write(&page, "# One\n## One\n```\n# not a heading\n```\n").unwrap();
    let a = anchors(&page);
    assert_eq!(a, ["one", "one-1"].iter().map(|s| s.to_string()).collect());
    assert_eq!(
        links("see [a](x.md#one) and [b](#two)"),
        ["x.md#one", "#two"]
    );
}
