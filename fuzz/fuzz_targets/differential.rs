//! The long run of the instrumentation's differential test: libFuzzer drives wasm-smith, and
//! every module it makes is compared between wasmtime's own NaN canonicalisation (the oracle) and
//! the instrumentation's rewrite with the switch off (the harness in
//! `crates/sandbox/tests/support/differential.rs`, shared with the bounded run in the test suite).
//! A difference is a crash, with the input that made it.
//!
//! Run: `cd fuzz && cargo +nightly fuzz run differential -- -max_total_time=3600`.

#![no_main]

use std::sync::OnceLock;

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;

#[path = "../../crates/sandbox/tests/support/differential.rs"]
mod harness;

fuzz_target!(|data: &[u8]| {
    static ENGINES: OnceLock<harness::Engines> = OnceLock::new();
    let engines = ENGINES.get_or_init(harness::Engines::new);
    let mut u = Unstructured::new(data);
    let Ok(mut module) = wasm_smith::Module::new(harness::smith_config(), &mut u) else {
        return;
    };
    // Bounds every loop and call, so neither side's fuel decides a run.
    if module.ensure_termination(2_000).is_err() {
        return;
    }
    if let Err(difference) = harness::compare(engines, &module.to_bytes()) {
        panic!("the instrumentation differs from the oracle: {difference}");
    }
});
