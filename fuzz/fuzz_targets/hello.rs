//! libFuzzer's driver of the `hello` target, whose body and invariants are
//! `herd_fuzz_targets::hello` (shared with the corpus replay of the test suite).
//!
//! Run: `scripts/fuzz hello 600` (RELIABILITY.md).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herd_fuzz_targets::hello(data));
