//! Architecture invariants checked as ordinary tests: the pure crates (protocol, lifecycle and the
//! instrumentation pass) keep IO out of their whole
//! dependency tree (read from Cargo.lock, so a transitive dependency cannot sneak it in).

use std::collections::{BTreeMap, BTreeSet};

/// Package name -> names of its dependencies, from the workspace's Cargo.lock.
fn lock_graph() -> BTreeMap<String, Vec<String>> {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"))
        .expect("read Cargo.lock");
    let mut graph = BTreeMap::new();
    for block in lock.split("[[package]]").skip(1) {
        let mut name = None;
        let mut deps = Vec::new();
        let mut in_deps = false;
        for line in block.lines().map(str::trim) {
            if let Some(value) = line.strip_prefix("name = ") {
                name = Some(value.trim_matches('"').to_string());
            } else if line.starts_with("dependencies = [") {
                in_deps = true;
            } else if in_deps && line == "]" {
                in_deps = false;
            } else if in_deps {
                // `"name"` or `"name version"`
                let dep = line
                    .trim_matches([',', '"'])
                    .split(' ')
                    .next()
                    .unwrap_or_default();
                deps.push(dep.to_string());
            }
        }
        if let Some(name) = name {
            graph.entry(name).or_insert_with(Vec::new).extend(deps);
        }
    }
    graph
}

fn closure(graph: &BTreeMap<String, Vec<String>>, root: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![root.to_string()];
    while let Some(name) = stack.pop() {
        if seen.insert(name.clone()) {
            stack.extend(graph.get(&name).into_iter().flatten().cloned());
        }
    }
    seen
}

#[test]
fn the_pure_crates_depend_on_no_runtime_network_database_or_engine() {
    let graph = lock_graph();
    for pure in ["herd-protocol", "herd-lifecycle", "herd-instrument"] {
        let deps = closure(&graph, pure);
        assert!(deps.len() > 1, "{pure} not found in Cargo.lock");
        for forbidden in [
            "tokio", "quinn", "rustls", "rusqlite", "wasmtime", "axum", "ureq",
        ] {
            assert!(
                !deps.contains(forbidden),
                "{pure} depends (perhaps transitively) on {forbidden}"
            );
        }
    }
}

#[test]
fn the_sandbox_is_the_only_crate_that_uses_wasmtime_directly() {
    let graph = lock_graph();
    let direct: Vec<&String> = graph
        .iter()
        .filter(|(name, deps)| name.starts_with("herd") && deps.iter().any(|d| d == "wasmtime"))
        .map(|(name, _)| name)
        .collect();
    assert_eq!(direct, vec!["herd-sandbox"]);
}
