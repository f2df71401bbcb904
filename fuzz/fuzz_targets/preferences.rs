//! libFuzzer's driver of the `preferences` target, whose body and invariants are
//! `herd_fuzz_targets::preferences` (shared with the corpus replay of the test suite).
//!
//! Run: `scripts/fuzz preferences 600` (RELIABILITY.md).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herd_fuzz_targets::preferences(data));
