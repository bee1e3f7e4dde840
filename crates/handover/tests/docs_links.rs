//! The documentation's links lead somewhere: every relative link in the README and in `docs/`
//! names a file of the repository, and every `#anchor` a heading of the page it points to (with
//! GitHub's rules for heading anchors). External links are not fetched (tests stay off the network).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The Markdown pages checked: the README, every page under `docs/`, the repository's other
/// top-level pages.
fn pages(root: &Path) -> Vec<PathBuf> {
    let mut pages = vec![root.join("README.md")];
    for dir in [root.join("docs"), root.join("bench/results")] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "md") {
                pages.push(path);
            }
        }
    }
    pages.sort();
    pages
}

/// The page's text outside fenced code blocks and inline code spans, line by line.
fn prose_lines(text: &str) -> Vec<(usize, String)> {
    let mut fenced = false;
    let mut lines = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut prose = String::new();
        for (i, piece) in line.split('`').enumerate() {
            if i % 2 == 0 {
                prose.push_str(piece);
            }
        }
        lines.push((number + 1, prose));
    }
    lines
}

/// GitHub's anchor of a heading: lower case, punctuation but `-` and `_` removed, spaces to `-`;
/// a repeated anchor gets `-1`, `-2`, ...
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut anchors = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let heading = line.trim_start_matches('#').trim();
        let slug: String = heading
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let count = seen.entry(slug.clone()).or_insert(0);
        anchors.insert(if *count == 0 {
            slug.clone()
        } else {
            format!("{slug}-{count}")
        });
        *count += 1;
    }
    anchors
}

/// The targets of `[label](target)` links on a line.
fn link_targets(line: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        let target = after[..end].split_whitespace().next().unwrap_or("").to_string();
        targets.push(target);
        rest = &after[end..];
    }
    targets
}

#[test]
fn every_relative_link_in_the_docs_names_a_file_and_heading_that_exist() {
    let root = repository();
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages(&root) {
        let text = std::fs::read_to_string(&page).unwrap();
        let own_anchors = anchors(&text);
        for (number, line) in prose_lines(&text) {
            for target in link_targets(&line) {
                if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let (file, anchor) = match target.split_once('#') {
                    Some((file, anchor)) => (file, Some(anchor)),
                    None => (target.as_str(), None),
                };
                let where_ = format!(
                    "{}:{number}: {target}",
                    page.strip_prefix(&root).unwrap().display()
                );
                let linked = if file.is_empty() {
                    page.clone()
                } else {
                    page.parent().unwrap().join(file)
                };
                if !linked.exists() {
                    broken.push(format!("{where_}: no such file"));
                    continue;
                }
                if let Some(anchor) = anchor {
                    let known = if file.is_empty() {
                        own_anchors.clone()
                    } else if linked.extension().is_some_and(|e| e == "md") {
                        anchors(&std::fs::read_to_string(&linked).unwrap())
                    } else {
                        continue; // an anchor into a source file (a line, say) is not checked
                    };
                    if !known.contains(anchor) {
                        broken.push(format!("{where_}: no heading with that anchor"));
                    }
                }
            }
        }
    }
    assert!(
        checked > 30,
        "only {checked} links found: is the link reader broken?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_readme_links_every_page_of_the_docs() {
    let root = repository();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut missing = Vec::new();
    for page in pages(&root) {
        let Ok(relative) = page.strip_prefix(root.join("docs")) else {
            continue;
        };
        let link = format!("(docs/{}", relative.display());
        if !readme.contains(&link) {
            missing.push(relative.display().to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "pages of docs/ the README does not link: {missing:?}"
    );
}

#[test]
fn the_anchor_rules_match_githubs() {
    let text =
        "# Performance: handover, HAProxy and nginx side by side\n## A\n## A\n### `handover migrate`\n";
    let anchors = anchors(text);
    for expected in [
        "performance-handover-haproxy-and-nginx-side-by-side",
        "a",
        "a-1",
        "handover-migrate",
    ] {
        assert!(anchors.contains(expected), "{expected} not in {anchors:?}");
    }
    assert_eq!(link_targets("see [x](a.md#b) and [y](c)"), vec!["a.md#b", "c"]);
}
