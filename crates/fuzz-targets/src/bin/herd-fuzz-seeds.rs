//! Writes each fuzz target's seeds into `fuzz/corpus/<target>/`, named by their hash (so running
//! it again adds nothing twice): the start of a first fuzzing run.
//!
//! Run: `cargo run -p herd-fuzz-targets --bin herd-fuzz-seeds [CORPUS_DIR]`.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let root = std::env::args_os().nth(1).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus"),
        PathBuf::from,
    );
    for (name, _) in herd_fuzz_targets::TARGETS {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir)?;
        for seed in herd_fuzz_targets::seeds(name) {
            let file = dir.join(herd_protocol::ContentHash::of(&seed).to_hex());
            std::fs::write(file, seed)?;
        }
        println!("{}", dir.display());
    }
    Ok(())
}
