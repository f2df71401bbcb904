//! libFuzzer's driver of the `client_message` target, whose body and invariants are
//! `herd_fuzz_targets::client_message` (shared with the corpus replay of the test suite).
//!
//! Run: `scripts/fuzz client_message 600` (RELIABILITY.md).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herd_fuzz_targets::client_message(data));
