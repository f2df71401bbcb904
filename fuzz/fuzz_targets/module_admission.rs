//! libFuzzer's driver of the `module_admission` target, whose body and invariants are
//! `herd_fuzz_targets::module_admission` (shared with the corpus replay of the test suite).
//!
//! Run: `scripts/fuzz module_admission 600` (RELIABILITY.md).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herd_fuzz_targets::module_admission(data));
