//! Differential testing of the instrumentation on a generated corpus: wasm-smith modules (any
//! instruction of the allowed features, NaN-heavy constants so NaNs with every payload and sign,
//! every function, global and memory exported), compared between the oracle and the
//! instrumentation by the shared harness (`support/differential.rs`: results' bits, traps, final
//! memory and exported globals).
//!
//! wasm-smith's `ensure_termination` bounds loops and calls (a deterministic `unreachable` when
//! its own budget runs out), so no run depends on either side's fuel.
//!
//! The bounded run here is part of the test suite (`HERD_GENERATED_CASES`, 400 by default, from
//! `HERD_GENERATED_SEED`); more cases on a release build:
//! `HERD_GENERATED_CASES=100000 HERD_GENERATED_SEED=7 cargo test --release -p herd-sandbox --test generated`.
//! The coverage-guided long run is the fuzz target `fuzz/fuzz_targets/differential.rs`.

use arbitrary::Unstructured;

#[path = "support/differential.rs"]
mod harness;

/// SplitMix64, NaN-heavy: the corpus is a function of the seed alone.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let mut word = z ^ (z >> 31);
        // One word in four carries NaN bit patterns (an f64 NaN, whose low half is an f32 NaN,
        // payloads and signs random), so constants are often NaNs: random bits almost never are.
        if word.is_multiple_of(4) {
            word |= 0x7ff0_0000_7f80_0001;
        }
        out.extend_from_slice(&word.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[test]
fn generated_modules_match_the_oracle() {
    let cases: u64 = std::env::var("HERD_GENERATED_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let seed: u64 = std::env::var("HERD_GENERATED_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // A big native stack for the thread, so the pass's depth budget is what limits recursion.
    let summary = std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || run_corpus(seed, cases))
        .expect("thread")
        .join()
        .expect("the corpus ran");
    let (compared, calls, nans, canonicalised, stack_limited) = summary;
    eprintln!(
        "generated corpus: {compared} modules compared, {calls} calls, {nans} NaN results, \
         {canonicalised} canonicalisations placed, {stack_limited} stopped at a stack limit"
    );
    assert!(
        compared >= cases * 3 / 4,
        "most modules are usable: {compared}/{cases}"
    );
    assert!(nans > 0, "the corpus produces NaNs (results and globals)");
    assert!(canonicalised > 0, "the corpus needs canonicalisation");
}

fn run_corpus(seed: u64, cases: u64) -> (u64, u64, u32, u32, u64) {
    let engines = harness::Engines::new();
    let (mut compared, mut calls, mut nans, mut canonicalised, mut stack_limited) =
        (0u64, 0u64, 0u32, 0u32, 0u64);
    for case in 0..cases {
        let case_seed = seed.wrapping_mul(1_000_003).wrapping_add(case);
        let data = bytes(case_seed, 4096 + (case_seed % 8) as usize * 1024);
        let mut u = Unstructured::new(&data);
        let Ok(mut module) = wasm_smith::Module::new(harness::smith_config(), &mut u) else {
            continue;
        };
        if module.ensure_termination(2_000).is_err() {
            continue;
        }
        match harness::compare(&engines, &module.to_bytes()) {
            Ok(Some(agreed)) => {
                compared += 1;
                calls += agreed.calls;
                nans += agreed.nans;
                canonicalised += agreed.canonicalisations;
                stack_limited += u64::from(agreed.stack_limited);
            }
            Ok(None) => {}
            Err(difference) => panic!("case {case_seed}: {difference}"),
        }
    }
    (compared, calls, nans, canonicalised, stack_limited)
}
