//! libFuzzer's driver of the `compiled_cache` target, whose body and invariants are
//! `herd_fuzz_targets::compiled_cache` (shared with the corpus replay of the test suite).
//!
//! Run: `scripts/fuzz compiled_cache 600` (RELIABILITY.md).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herd_fuzz_targets::compiled_cache(data));
