//! The documents held against the code: the README's settings table names exactly the
//! settings the code reads and `authd --help` lists; every repository path the documents
//! name exists in the repository; `--version` is the package's version, and the changelog
//! has an entry for it.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Component, Path, PathBuf};

use authd::config::SETTINGS;

/// The repository's root (where Cargo.toml is).
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The documents a user reads, whose links and paths must hold.
const DOCUMENTS: &[&str] = &[
    "README.md",
    "SECURITY.md",
    "BENCHMARKS.md",
    "docs/ARCHITECTURE.md",
    "CHANGELOG.md",
];

/// A bare file name (no folder) with one of these extensions is taken to name a file of the
/// repository, which must then exist somewhere in it.
const FILE_EXTENSIONS: &[&str] = &[
    "md", "rs", "sh", "sql", "py", "toml", "yaml", "yml", "conf", "patch", "service", "example",
    "lock",
];

fn read(rel: &str) -> String {
    fs::read_to_string(Path::new(ROOT).join(rel))
        .unwrap_or_else(|e| panic!("cannot read {rel} in the repository: {e}"))
}

/// The words of a settings cell or a `SETTINGS` entry: `DB_NAME DB_USER` and
/// `` `DB_NAME` `DB_USER` `` are both two settings.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || c == ',' || c == '`')
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

fn is_setting_name(w: &str) -> bool {
    w.len() > 1
        && w.starts_with(|c: char| c.is_ascii_uppercase())
        && w.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// The setting names in the first column of the table under the README's `## Configuration`.
fn readme_settings(problems: &mut Vec<String>) -> Vec<String> {
    let readme = read("README.md");
    let section: Vec<&str> = readme
        .lines()
        .skip_while(|l| !l.starts_with("## Configuration"))
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
        .collect();
    assert!(
        !section.is_empty(),
        "README.md has no `## Configuration` section"
    );
    let table: Vec<&str> = section
        .iter()
        .copied()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .collect();
    assert!(
        table.len() > 2 && table[0].contains("Setting") && table[1].contains("---"),
        "README.md's `## Configuration` section has no table headed `| Setting | … |`"
    );
    let mut names = Vec::new();
    for row in &table[2..] {
        let cell = row.trim_start_matches('|').split('|').next().unwrap_or("");
        for w in words(cell) {
            if is_setting_name(&w) {
                names.push(w);
            } else {
                problems.push(format!(
                    "README.md's settings table: {w:?} in the row {row:?} is not a setting name"
                ));
            }
        }
    }
    names
}

/// `config::SETTINGS`, each entry's names split (`DB_NAME DB_USER …` is five settings).
fn listed_settings() -> Vec<String> {
    SETTINGS
        .iter()
        .flat_map(|(name, _, _)| words(name))
        .collect()
}

/// The settings `authd --help` prints: the lines after `Settings`, name column first.
fn help_settings() -> Vec<String> {
    let out = common::authd(&["--help"], &[]);
    assert!(out.status.success(), "authd --help failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("Settings"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    assert!(
        !lines.is_empty(),
        "authd --help lists no settings after a `Settings` line:\n{text}"
    );
    lines
        .iter()
        .flat_map(|l| {
            let l = l.trim_start();
            // The name column ends where two spaces do.
            words(l.split_once("  ").map_or(l, |(names, _)| names))
        })
        .collect()
}

/// The settings the code reads: every `"NAME"` literal in src/config.rs outside the
/// `SETTINGS` table and the unit tests (`get("BIND")`, `num(&get, "WORKERS", …)`,
/// `env.get("DB_PASSWORD")`, …), plus `RUST_LOG`, which env_logger reads.
fn settings_the_code_reads() -> BTreeSet<String> {
    let source = read("src/config.rs");
    let code = source.split("#[cfg(test)]").next().unwrap_or("");
    let start = code
        .find("pub const SETTINGS")
        .expect("src/config.rs has no `pub const SETTINGS`");
    let end = start
        + code[start..]
            .find("\n];")
            .expect("`SETTINGS` in src/config.rs does not end with `];`");
    let code = format!("{}{}", &code[..start], &code[end..]);
    let mut names = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find('"') {
        rest = &rest[i + 1..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if rest[name.len()..].starts_with('"') && is_setting_name(&name) {
            rest = &rest[name.len() + 1..];
            names.insert(name);
        }
    }
    assert!(
        read("src/main.rs").contains("env_logger::Env::default()"),
        "src/main.rs no longer starts env_logger from Env::default(), which reads RUST_LOG: \
         update this test and the settings"
    );
    names.insert("RUST_LOG".to_string());
    names
}

/// `problems` gets a line for each name in one list and not the other, and for repeats.
fn compare(
    problems: &mut Vec<String>,
    (a_name, a): (&str, &[String]),
    (b_name, b): (&str, &[String]),
) {
    let (sa, sb): (BTreeSet<&String>, BTreeSet<&String>) = (a.iter().collect(), b.iter().collect());
    for missing in sb.difference(&sa) {
        problems.push(format!("{a_name} lacks {missing}, which {b_name} has"));
    }
    for extra in sa.difference(&sb) {
        problems.push(format!("{a_name} has {extra}, which {b_name} lacks"));
    }
    for (name, list) in [(a_name, a), (b_name, b)] {
        let mut seen = BTreeSet::new();
        for n in list {
            if !seen.insert(n) {
                problems.push(format!("{name} lists {n} twice"));
            }
        }
    }
}

#[test]
fn the_readme_settings_table_is_exactly_what_the_code_reads_and_help_lists() {
    let mut problems = Vec::new();
    let readme = readme_settings(&mut problems);
    let listed = listed_settings();
    let help = help_settings();
    let read: Vec<String> = settings_the_code_reads().into_iter().collect();
    compare(
        &mut problems,
        ("config::SETTINGS (what --help prints)", &listed),
        ("src/config.rs (the settings it reads)", &read),
    );
    compare(
        &mut problems,
        ("README.md's settings table", &readme),
        ("config::SETTINGS", &listed),
    );
    compare(
        &mut problems,
        ("README.md's settings table", &readme),
        ("`authd --help`", &help),
    );
    assert!(
        problems.is_empty(),
        "the settings the documents list and the settings the code reads differ:\n  {}",
        problems.join("\n  ")
    );
}

/// The first path segments that are generated, never committed (.gitignore's entries).
fn generated_roots() -> BTreeSet<String> {
    read(".gitignore")
        .lines()
        .map(|l| l.trim().trim_matches('/').to_string())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// Every file of the repository, as paths relative to its root (generated folders left out).
fn repository_files(generated: &BTreeSet<String>) -> Vec<PathBuf> {
    fn walk(dir: &Path, root: &Path, generated: &BTreeSet<String>, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == ".git" || generated.contains(&name) {
                continue;
            }
            if path.is_dir() {
                walk(&path, root, generated, out);
            } else {
                out.push(path.strip_prefix(root).unwrap_or(&path).to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(Path::new(ROOT), Path::new(ROOT), generated, &mut out);
    out
}

/// `base/rel` without `.` and `..`, or None when it climbs out of the repository.
fn inside_repository(base: &Path, rel: &str) -> Option<PathBuf> {
    let joined = base.join(rel);
    let mut parts: Vec<Component> = Vec::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            other => parts.push(other),
        }
    }
    Some(parts.iter().collect())
}

/// Whether `rel` (relative to the root, possibly with one `*` in its last part) exists.
fn exists(rel: &Path) -> bool {
    let text = rel.to_string_lossy();
    let Some((dir, pattern)) = text.rsplit_once('/').filter(|(_, p)| p.contains('*')) else {
        return Path::new(ROOT).join(rel).exists();
    };
    let (head, tail) = pattern.split_once('*').unwrap_or((pattern, ""));
    fs::read_dir(Path::new(ROOT).join(dir))
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.len() >= head.len() + tail.len() && n.starts_with(head) && n.ends_with(tail)
        })
}

/// Markdown link targets in `text`: `[x](target)` and `[x]: target`.
fn link_targets(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(end) = rest.find(')') {
            out.push(rest[..end].trim().trim_matches(['<', '>']).to_string());
        }
    }
    for line in text.lines() {
        if let Some((label, target)) = line.trim_start().split_once("]: ")
            && label.starts_with('[')
        {
            out.push(target.trim().to_string());
        }
    }
    out
}

#[test]
fn every_repository_path_the_documents_name_exists() {
    let generated = generated_roots();
    let files = repository_files(&generated);
    let basenames: BTreeSet<String> = files
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let top_level: BTreeSet<String> = fs::read_dir(ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".git")
        .collect();
    let mut problems = Vec::new();
    for doc in DOCUMENTS {
        let text = read(doc);
        let doc_dir = Path::new(doc).parent().unwrap_or(Path::new(""));

        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") || target.starts_with('#') {
                continue;
            }
            let path = target.split('#').next().unwrap_or("");
            match inside_repository(doc_dir, path) {
                None => problems.push(format!(
                    "{doc}: the link ({target}) points outside the repository"
                )),
                Some(p) if !exists(&p) => problems.push(format!(
                    "{doc}: the link ({target}) names {}, which the repository does not have",
                    p.display()
                )),
                Some(_) => {}
            }
        }

        let mut fenced = false;
        for line in text.lines() {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
                continue;
            }
            for word in line.split_whitespace().filter(|w| !w.contains("://")) {
                let runs =
                    word.split(|c: char| !(c.is_ascii_alphanumeric() || "_.-/*".contains(c)));
                for run in runs {
                    let run = run.trim_end_matches('.');
                    if run.is_empty() {
                        continue;
                    }
                    if run.starts_with("../") || run.starts_with("./") {
                        match inside_repository(doc_dir, run) {
                            None => problems.push(format!(
                                "{doc}: {run} is outside the repository (line {line:?})"
                            )),
                            Some(p) if !exists(&p) => problems.push(format!(
                                "{doc}: {run} is not in the repository (line {line:?})"
                            )),
                            Some(_) => {}
                        }
                    } else if let Some((first, _)) = run.split_once('/') {
                        // Only paths that start at one of the root's entries are the
                        // repository's ("req/s", "/etc/authd", "10.0.0.0/8" are not).
                        if generated.contains(first) || !top_level.contains(first) {
                            continue;
                        }
                        if !exists(Path::new(run.trim_end_matches('/'))) {
                            problems.push(format!(
                                "{doc}: {run} is not in the repository (line {line:?})"
                            ));
                        }
                    } else if !fenced
                        && let Some((stem, ext)) = run.rsplit_once('.')
                        && !stem.is_empty()
                        && FILE_EXTENSIONS.contains(&ext)
                    {
                        // A document named alone is one beside this one or at the root;
                        // other files may live anywhere (`token.rs`, `nginx.conf`).
                        let found = if ext == "md" {
                            exists(&doc_dir.join(run)) || exists(Path::new(run))
                        } else {
                            basenames.contains(run)
                        };
                        if !found {
                            problems.push(format!(
                                "{doc}: no file of the repository is called {run} (line {line:?})"
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the documents name what the repository does not hold:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn version_prints_the_package_version_and_the_changelog_has_it() {
    let version = env!("CARGO_PKG_VERSION");
    let out = common::authd(&["--version"], &[]);
    assert!(out.status.success(), "authd --version failed: {out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("authd {version}\n")
    );
    let help = common::authd(&["--help"], &[]);
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("--version"),
        "authd --help does not mention --version"
    );
    let changelog = read("CHANGELOG.md");
    let headings: Vec<&str> = changelog.lines().filter(|l| l.starts_with("## ")).collect();
    assert_eq!(
        headings.first().copied(),
        Some("## [Unreleased]"),
        "CHANGELOG.md must open with an `## [Unreleased]` section (Keep a Changelog)"
    );
    assert!(
        headings
            .iter()
            .any(|h| h.starts_with(&format!("## [{version}] - "))),
        "CHANGELOG.md has no `## [{version}] - YYYY-MM-DD` entry for Cargo.toml's version"
    );
}
