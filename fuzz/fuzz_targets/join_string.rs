//! libFuzzer's driver of the `join_string` target, whose body and invariants are
//! `herd_fuzz_targets::join_string` (shared with the corpus replay of the test suite).
//!
//! Run: `scripts/fuzz join_string 600` (RELIABILITY.md).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herd_fuzz_targets::join_string(data));
