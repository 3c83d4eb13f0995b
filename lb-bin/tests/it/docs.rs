//! The documentation resolves: every relative Markdown link in README.md
//! and docs/*.md points at a file of the repository (and, with `#anchor`,
//! at one of its headings), every repository path and `*.md` file the text
//! names exists, and the systemd unit's `Documentation=` names a man page
//! `ringlb generate` writes and a file the package installs. A moved or
//! deleted page fails here instead of leaving readers a dead reference.
//!
//! Also what `ringlb generate` writes for packagers: the man pages and the
//! shell completions, from the binary's own command-line definition.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::harness::{run_to_exit, TempDir};

/// The repository's root (lb-bin's parent).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("lb-bin has a parent directory")
        .to_path_buf()
}

/// README.md and every docs/*.md, as paths relative to the repository.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![PathBuf::from("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("read docs/")
        .map(|e| e.expect("read docs/").path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .map(|p| Path::new("docs").join(p.file_name().expect("a file name")))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// A heading's anchor as GitHub makes it: lower case, spaces to `-`,
/// everything but letters, digits, `-` and `_` dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown page's headings (outside code blocks).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            out.insert(anchor(line.trim_start_matches('#')));
        }
    }
    out
}

/// The targets of the inline links `[text](target)` of a page, with their
/// line numbers, outside code blocks.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_code = false;
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            out.push((n + 1, after[..end].to_owned()));
            rest = &after[end..];
        }
    }
    out
}

/// Words of a page that name a file of the repository: a path under one of
/// its top directories (`docs/deploy.md`, `scripts/ringlb.service`), or a
/// bare upper-case `NAME.md` (DESIGN.md, README.md: the project's own
/// pages; a lower-case `summary.md` is some output's file name). The
/// surrounding punctuation is dropped.
fn named_paths(text: &str) -> Vec<(usize, String)> {
    const TOPS: [&str; 7] = [
        "docs/",
        "scripts/",
        "contrib/",
        "packaging/",
        "lb-bin/",
        "lb-core/",
        "bench/",
    ];
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        for word in line.split(|c: char| {
            c.is_whitespace()
                || matches!(
                    c,
                    '`' | '(' | ')' | '[' | ']' | '"' | '\'' | ',' | ';' | '*' | '<' | '>'
                )
        }) {
            let word = word.trim_end_matches([':', '.', '!', '?']);
            // An absolute path or a URL (…/docs/…) is not the repository's.
            if word.contains("://") || word.starts_with('/') {
                continue;
            }
            let rooted = TOPS.iter().any(|top| word.starts_with(top));
            let page = word.strip_suffix(".md").is_some_and(|stem| {
                !stem.is_empty()
                    && stem
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c == '_' || c == '-')
            });
            // Globs and placeholders (`docs/*.md`, `target/…`) name no file;
            // bench/results/ holds runs' outputs, not kept in the repository.
            let output = word.starts_with("bench/results/");
            if (rooted || page) && !output && !word.contains(['*', '…', '$', '{']) {
                out.push((n + 1, word.to_owned()));
            }
        }
    }
    out
}

#[test]
fn every_link_and_named_file_in_the_docs_resolves() {
    let root = repo();
    let mut broken = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(root.join(&page)).expect("read a page");
        let dir = page.parent().unwrap_or(Path::new(""));
        for (line, target) in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, fragment) = match target.split_once('#') {
                Some((file, fragment)) => (file, Some(fragment)),
                None => (target.as_str(), None),
            };
            let linked = if file.is_empty() {
                page.clone()
            } else {
                dir.join(file)
            };
            let at = format!("{}:{line}: ({target})", page.display());
            if !root.join(&linked).exists() {
                broken.push(format!("{at}: {} does not exist", linked.display()));
                continue;
            }
            if let Some(fragment) = fragment {
                let linked_text = std::fs::read_to_string(root.join(&linked)).unwrap_or_default();
                if !anchors(&linked_text).contains(fragment) {
                    broken.push(format!(
                        "{at}: {} has no heading #{fragment}",
                        linked.display()
                    ));
                }
            }
        }
        for (line, named) in named_paths(&text) {
            // Named from the root (docs/x.md, as the pages write paths), or
            // beside the page (a page naming another page of docs/).
            let found = root.join(&named).exists()
                || root.join(dir).join(&named).exists()
                || root.join("docs").join(&named).exists();
            if !found {
                broken.push(format!(
                    "{}:{line}: names {named}, which is not in the repository",
                    page.display()
                ));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "dead references in the docs:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_checker_finds_a_dead_link_a_missing_heading_and_a_named_missing_page() {
    let text = "See [deploy](docs/deploy.md#1-install-the-binary) and [x](docs/gone.md).\n\
                ```\n[not a link](in/code.md)\n```\n\
                A minimal config (DESIGN.md lists the keys), scripts/ringlb.service.\n\
                ## 1. Install the binary\n";
    assert_eq!(
        links(text),
        [
            (1, "docs/deploy.md#1-install-the-binary".to_owned()),
            (1, "docs/gone.md".to_owned())
        ]
    );
    assert!(anchors(text).contains("1-install-the-binary"));
    let named: Vec<String> = named_paths(text).into_iter().map(|(_, p)| p).collect();
    assert!(named.contains(&"DESIGN.md".to_owned()), "{named:?}");
    assert!(
        named.contains(&"scripts/ringlb.service".to_owned()),
        "{named:?}"
    );
    assert!(!repo().join("DESIGN.md").exists() && !repo().join("docs/DESIGN.md").exists());
}

#[test]
fn the_unit_documentation_is_the_generated_man_page_and_an_installed_doc() {
    let unit =
        std::fs::read_to_string(repo().join("scripts/ringlb.service")).expect("read the unit");
    let docs: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("Documentation="))
        .flat_map(str::split_whitespace)
        .collect();
    assert!(!docs.is_empty(), "the unit has no Documentation=");
    let man = TempDir::new("docs-man");
    let run = run_to_exit(&[
        "generate".as_ref(),
        "--man".as_ref(),
        man.path().as_os_str(),
    ]);
    assert!(run.status.success(), "ringlb generate: {run:?}");
    for doc in docs {
        if let Some(page) = doc.strip_prefix("man:") {
            // man:ringlb(1) → ringlb.1
            let (name, section) = page
                .trim_end_matches(')')
                .split_once('(')
                .expect("man:NAME(N)");
            assert!(
                man.path().join(format!("{name}.{section}")).exists(),
                "Documentation={doc}: `ringlb generate` writes no {name}.{section}"
            );
        } else if let Some(installed) = doc.strip_prefix("file:///usr/local/share/doc/ringlb/") {
            // docs/deploy.md installs the repository's docs there (and the
            // package, at /usr/share/doc/ringlb/).
            assert!(
                repo().join(installed).exists(),
                "Documentation={doc}: no {installed} in the repository"
            );
        } else {
            panic!("Documentation={doc} points outside what ringlb installs");
        }
    }
}

#[test]
fn generate_writes_man_pages_and_completions_for_every_subcommand() {
    let man = TempDir::new("generate-man");
    let completions = TempDir::new("generate-completions");
    let run = run_to_exit(&[
        "generate".as_ref(),
        "--man".as_ref(),
        man.path().as_os_str(),
        "--completions".as_ref(),
        completions.path().as_os_str(),
    ]);
    assert!(run.status.success(), "ringlb generate: {run:?}");
    let page = std::fs::read_to_string(man.path().join("ringlb.1")).expect("ringlb.1");
    assert!(page.contains(".TH ringlb 1"), "not a man page: {page}");
    for section in [".SH SIGNALS", ".SH FILES", ".SH SEE ALSO"] {
        assert!(page.contains(section), "ringlb.1 has no {section}");
    }
    for sub in ["check", "demo"] {
        assert!(page.contains(sub), "ringlb.1 does not list {sub}");
        assert!(
            man.path().join(format!("ringlb-{sub}.1")).exists(),
            "no ringlb-{sub}.1"
        );
    }
    // Hidden: a packager's tool, not in the pages (clap_complete lists
    // hidden subcommands all the same).
    assert!(!man.path().join("ringlb-generate.1").exists());
    assert!(
        !page.contains("generate"),
        "ringlb.1 lists the hidden generate"
    );
    for file in ["ringlb", "_ringlb", "ringlb.fish"] {
        let script = std::fs::read_to_string(completions.path().join(file))
            .unwrap_or_else(|e| panic!("completion {file}: {e}"));
        assert!(
            script.contains("check") && script.contains("config"),
            "{file}: {script}"
        );
    }
    let run = run_to_exit(&["generate".as_ref()]);
    assert!(
        !run.status.success(),
        "generate with nothing to write succeeded"
    );
    assert!(run.stderr.contains("--man DIR"), "{}", run.stderr);
}
