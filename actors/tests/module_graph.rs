//! The actors' modules import each other in one direction only.
//!
//! Reads `src/` and lists, for each module of the control plane's actors,
//! the other such modules it names (`crate::x` anywhere in its file or its
//! sub-directory). The graph must be acyclic: the gateway routes to actors,
//! actors never call back into the gateway (sagas go through
//! `dispatch::Dispatch`, the app actor finds volume actors through
//! `volume::Directory`). Run with `--nocapture` to see the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The modules whose imports must not form a cycle.
const ACTOR_MODULES: &[&str] = &[
    "app",
    "cluster",
    "dispatch",
    "gateway",
    "node",
    "placement",
    "registry",
    "repo_actor",
    "saga",
    "volume",
    "workflow",
];

/// Every `crate::<name>` a text's code names (comments, doc links
/// included, are not imports).
fn named_modules(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut out = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
        // `use crate::{a, b}`
        if rest.starts_with('{') {
            let group = &rest[1..rest.find('}').unwrap_or(rest.len())];
            for part in group.split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        }
    }
    out
}

fn module_text(src: &Path, module: &str) -> Option<String> {
    let mut text = std::fs::read_to_string(src.join(format!("{module}.rs"))).ok()?;
    let dir = src.join(module);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            if entry.path().extension().is_some_and(|e| e == "rs") {
                text.push_str(&std::fs::read_to_string(entry.path()).unwrap());
            }
        }
    }
    Some(text)
}

#[test]
fn actor_modules_have_no_import_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for module in ACTOR_MODULES {
        let Some(text) = module_text(&src, module) else {
            continue;
        };
        let edges = named_modules(&text)
            .into_iter()
            .filter(|m| m != module && ACTOR_MODULES.contains(&m.as_str()))
            .collect();
        graph.insert(module, edges);
    }
    for (module, edges) in &graph {
        println!("{module} -> {edges:?}");
    }
    // Depth-first search for a back edge.
    fn visit<'a>(
        node: &'a str,
        graph: &'a BTreeMap<&'a str, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if done.contains(node) {
            return;
        }
        if let Some(at) = path.iter().position(|n| *n == node) {
            panic!("import cycle: {} -> {node}", path[at..].join(" -> "));
        }
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, path, done);
        }
        path.pop();
        done.insert(node);
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        visit(module, &graph, &mut Vec::new(), &mut done);
    }
    assert!(graph.contains_key("gateway") && graph.contains_key("saga"));
}
