//! The short run of the fuzz targets in the normal suite: every target on its seeds, on every
//! input of its minimized corpus (`fuzz/corpus/<target>/`, kept from the long runs recorded in
//! RELIABILITY.md) and on every crash a run ever found (`fuzz/regressions/<target>/`). An input
//! that fails here names its file.

use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

fn replay(name: &str, target: fn(&[u8])) -> usize {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    for seed in herd_fuzz_targets::seeds(name) {
        target(&seed);
    }
    let files: Vec<PathBuf> = ["corpus", "regressions"]
        .iter()
        .flat_map(|kind| inputs(&fuzz.join(kind).join(name)))
        .collect();
    for file in &files {
        let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let outcome = std::panic::catch_unwind(|| target(&bytes));
        assert!(
            outcome.is_ok(),
            "fuzz target {name} fails on {}",
            file.display()
        );
    }
    files.len()
}

#[test]
fn every_target_has_seeds_and_a_corpus_and_passes_on_them() {
    for (name, target) in herd_fuzz_targets::TARGETS {
        assert!(
            !herd_fuzz_targets::seeds(name).is_empty(),
            "fuzz target {name} has no seeds"
        );
        let replayed = replay(name, *target);
        assert!(
            replayed > 0,
            "fuzz target {name} has no corpus in fuzz/corpus/{name}/: run it (RELIABILITY.md)"
        );
    }
}

#[test]
fn every_corpus_directory_is_a_target() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(kind)) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // `differential`'s corpus is not kept: its bounded run is the sandbox's
            // `--test generated`.
            assert!(
                name == "differential"
                    || herd_fuzz_targets::TARGETS.iter().any(|(t, _)| *t == name),
                "fuzz/{kind}/{name} belongs to no target"
            );
        }
    }
}

/// The seeds are valid inputs, so a replay covers each decoder's accepting path and its
/// invariants, not only its refusals.
#[test]
fn the_seeds_are_accepted_by_their_decoders() {
    use herd_fuzz_targets::seeds;
    for seed in seeds("client_message").iter().chain(&seeds("hello")) {
        herd_protocol::decode_body::<herd_protocol::ClientMessage>(seed).expect("decodes");
    }
    for seed in seeds("server_message") {
        herd_protocol::decode_body::<herd_protocol::ServerMessage>(&seed).expect("decodes");
    }
    for seed in seeds("join_string") {
        let text = String::from_utf8(seed).expect("text");
        text.parse::<herd_net::JoinString>().expect("parses");
    }
    for seed in seeds("preferences") {
        let text = String::from_utf8(seed).expect("text");
        let (file, overrides) = text.split_once('\0').unwrap_or((&text, ""));
        let overrides: Vec<String> = overrides.lines().map(str::to_string).collect();
        herd_worker::preferences::Preferences::parse(file, &overrides).expect("parses");
    }
    let spool = seeds("spool");
    assert!(herd_worker::spool::decode_assigned(&spool[0][1..]).is_some());
    assert!(herd_worker::spool::decode_finished(&spool[1][1..]).is_some());
    for seed in seeds("batch_request") {
        herd_coordinator::fuzzing::batch_request(&seed).expect("a valid batch");
    }
    for seed in seeds("bulk_upload") {
        assert_eq!(
            herd_coordinator::fuzzing::bulk_upload(&seed)
                .expect("valid")
                .len(),
            3
        );
    }
    assert!(
        herd_coordinator::fuzzing::bulk_upload(b"").is_err(),
        "an empty upload"
    );
    for seed in seeds("sweep") {
        let text = String::from_utf8(seed).expect("text");
        let (template, sweeps) = text.split_once('\n').expect("two lines");
        let sweeps: Vec<String> = sweeps.lines().map(str::to_string).collect();
        herd::sweep::inputs(template, &sweeps).expect("a valid sweep");
    }
}
