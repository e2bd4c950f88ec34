//! The architecture in `docs/architecture.md`, held against the sources: this
//! test reads every file under `src/`, collects the modules each one's
//! non-test code names (`use crate::…`, `use super::…`, and inline
//! `crate::…` paths), and checks the rules the doc states.
//!
//! A concern is a top-level module of the crate (`scheduler`, `track`, …),
//! except that `model/` is four concerns and a shared config (`model/network`,
//! `model/adapt`, `model/checkpoint`, `model/preprocess`, `model/config`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Most lines a source file may have before its `#[cfg(test)]` part.
const MAX_LINES: usize = 800;

/// One source file: its module path and the modules its code names.
struct Source {
    file: PathBuf,
    module: Vec<String>,
    text: String,
}

fn sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let relative = file.strip_prefix(&root).unwrap().with_extension("");
            let mut module: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                module.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                module.pop();
            }
            let text = std::fs::read_to_string(&file).unwrap();
            Source { file, module, text }
        })
        .collect()
}

/// The code before the file's test module, without comments.
fn code(text: &str) -> String {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    code.lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Expands a `use` tree (`a::{b, c::{d, e}}`) into its paths.
fn expand_use(tree: &str) -> Vec<Vec<String>> {
    fn parse(prefix: &[String], chars: &[char], mut i: usize) -> (Vec<Vec<String>>, usize) {
        let mut out = Vec::new();
        let mut current = String::new();
        let flush = |current: &mut String, out: &mut Vec<Vec<String>>| {
            let item = current.split(" as ").next().unwrap_or_default().trim();
            if !item.is_empty() {
                let mut path = prefix.to_vec();
                path.extend(item.split("::").map(|s| s.trim().to_owned()));
                out.push(path);
            }
            current.clear();
        };
        while i < chars.len() {
            match chars[i] {
                '{' => {
                    let mut base = prefix.to_vec();
                    base.extend(
                        current
                            .trim()
                            .trim_end_matches("::")
                            .split("::")
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned),
                    );
                    let (inner, next) = parse(&base, chars, i + 1);
                    out.extend(inner);
                    current.clear();
                    i = next;
                    continue;
                }
                '}' => {
                    flush(&mut current, &mut out);
                    return (out, i + 1);
                }
                ',' => flush(&mut current, &mut out),
                c => current.push(c),
            }
            i += 1;
        }
        flush(&mut current, &mut out);
        (out, i)
    }
    let chars: Vec<char> = tree
        .chars()
        .filter(|c| !c.is_whitespace() || *c == ' ')
        .collect();
    parse(&[], &chars, 0).0
}

/// The module a path names, resolved against `from` (`crate::`, `super::`,
/// `self::`); `None` for paths outside the crate.
fn resolve(
    from: &[String],
    path: &[String],
    modules: &BTreeSet<Vec<String>>,
) -> Option<Vec<String>> {
    let mut segments: Vec<String> = match path.first().map(String::as_str) {
        Some("crate") => path[1..].to_vec(),
        Some("super") => {
            let mut base = from[..from.len().saturating_sub(1)].to_vec();
            let mut rest = &path[1..];
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
            base.extend(rest.iter().cloned());
            base
        }
        Some("self") => from.iter().chain(&path[1..]).cloned().collect(),
        _ => return None,
    };
    while !segments.is_empty() {
        if modules.contains(&segments) {
            return Some(segments);
        }
        segments.pop();
    }
    None
}

/// Which modules each module's code names.
fn imports(sources: &[Source]) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let modules: BTreeSet<Vec<String>> = sources.iter().map(|s| s.module.clone()).collect();
    let mut graph = BTreeMap::new();
    for source in sources {
        let code = code(&source.text);
        let mut paths = Vec::new();
        for statement in code.split(';') {
            let statement = statement.trim();
            let tree = statement
                .strip_prefix("pub(crate) use ")
                .or_else(|| statement.strip_prefix("pub use "))
                .or_else(|| statement.rsplit_once("use ").map(|(_, t)| t));
            if let Some(tree) = tree
                && (tree.starts_with("crate")
                    || tree.starts_with("super")
                    || tree.starts_with("self"))
            {
                paths.extend(expand_use(tree));
            }
        }
        // Inline paths: `crate::a::b::f(…)`.
        for (i, _) in code.match_indices("crate::") {
            let path: String = code[i..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            paths.push(path.split("::").map(str::to_owned).collect());
        }
        let targets = graph
            .entry(source.module.clone())
            .or_insert_with(BTreeSet::new);
        for path in paths {
            if let Some(target) = resolve(&source.module, &path, &modules)
                && target != source.module
            {
                targets.insert(target);
            }
        }
    }
    graph
}

/// The concern a module belongs to.
fn concern(module: &[String]) -> String {
    match module {
        [] => "lib".to_owned(),
        [model, part, ..] if model == "model" => format!("model/{part}"),
        [first, ..] => first.clone(),
    }
}

fn concern_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, targets) in imports(&sources()) {
        for target in targets {
            let (a, b) = (concern(&from), concern(&target));
            if a != b && a != "lib" {
                graph.entry(a).or_default().insert(b);
            }
        }
    }
    graph
}

/// The files of `from` that name a module of `to`.
fn offenders(from: &str, to: &str) -> Vec<String> {
    let sources = sources();
    let graph = imports(&sources);
    sources
        .iter()
        .filter(|s| concern(&s.module) == from || s.module.join("/") == from)
        .filter(|s| {
            graph[&s.module]
                .iter()
                .any(|t| concern(t) == to || t.join("/") == to)
        })
        .map(|s| s.file.display().to_string())
        .collect()
}

#[test]
fn the_import_parser_sees_grouped_and_relative_uses() {
    let modules: BTreeSet<Vec<String>> = [vec!["a"], vec!["a", "b"], vec!["a", "c"], vec!["d"]]
        .into_iter()
        .map(|m| m.into_iter().map(str::to_owned).collect())
        .collect();
    let from: Vec<String> = vec!["a".into(), "b".into()];
    let paths = expand_use("crate::{a::c::{X, Y as Z}, d}");
    assert_eq!(paths.len(), 3);
    let resolved: BTreeSet<_> = paths
        .iter()
        .filter_map(|p| resolve(&from, p, &modules))
        .collect();
    assert!(resolved.contains(&vec!["a".to_owned(), "c".to_owned()]));
    assert!(resolved.contains(&vec!["d".to_owned()]));
    let sup = resolve(&from, &["super".into(), "c".into(), "X".into()], &modules);
    assert_eq!(sup, Some(vec!["a".to_owned(), "c".to_owned()]));
    assert_eq!(resolve(&from, &["std".into(), "fs".into()], &modules), None);
}

#[test]
fn the_graph_sees_known_arrows() {
    // Arrows the architecture has on purpose: if the parser lost them, the
    // rules below would pass for the wrong reason.
    let graph = concern_graph();
    for (from, to) in [
        ("scheduler", "events"),
        ("track", "events"),
        ("train", "model/network"),
        ("model/network", "model/checkpoint"),
        ("commands", "scheduler"),
    ] {
        assert!(
            graph.get(from).is_some_and(|t| t.contains(to)),
            "{from} → {to} not seen: {graph:#?}"
        );
    }
}

#[test]
fn track_does_not_import_the_scheduler() {
    let files = offenders("track", "scheduler");
    assert!(files.is_empty(), "track/ imports scheduler/: {files:?}");
}

#[test]
fn the_model_does_not_import_the_spec() {
    for part in [
        "model/network",
        "model/adapt",
        "model/checkpoint",
        "model/preprocess",
        "model/config",
    ] {
        let files = offenders(part, "spec");
        assert!(files.is_empty(), "{part} imports spec/: {files:?}");
    }
}

#[test]
fn error_does_not_import_commands() {
    let files = offenders("error", "commands");
    assert!(files.is_empty(), "error.rs imports commands/: {files:?}");
}

#[test]
fn no_circle_of_imports_between_concerns() {
    // Depth-first search for a back edge; report the circle it closes.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut circle = path[start..].to_vec();
            circle.push(node.to_owned());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, graph, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let graph = concern_graph();
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(circle) = visit(node, &graph, &mut Vec::new(), &mut done) {
            panic!(
                "a circle of imports between concerns: {}",
                circle.join(" → ")
            );
        }
    }
}

#[test]
fn no_source_file_is_over_800_lines_without_its_tests() {
    let long: Vec<String> = sources()
        .iter()
        // A `tests.rs` is a test module of its folder: all of it is tests.
        .filter(|s| s.module.last().is_none_or(|m| m != "tests"))
        .filter_map(|s| {
            let lines = s
                .text
                .split("#[cfg(test)]")
                .next()
                .unwrap_or_default()
                .lines()
                .count();
            (lines > MAX_LINES).then(|| format!("{} ({lines} lines)", s.file.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "over {MAX_LINES} lines before the tests: {long:?}"
    );
}
