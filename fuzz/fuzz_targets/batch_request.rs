//! libFuzzer's driver of the `batch_request` target, whose body and invariants are
//! `herd_fuzz_targets::batch_request` (shared with the corpus replay of the test suite).
//!
//! Run: `scripts/fuzz batch_request 600` (RELIABILITY.md).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herd_fuzz_targets::batch_request(data));
