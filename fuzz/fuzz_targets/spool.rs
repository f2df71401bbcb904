//! libFuzzer's driver of the `spool` target, whose body and invariants are
//! `herd_fuzz_targets::spool` (shared with the corpus replay of the test suite).
//!
//! Run: `scripts/fuzz spool 600` (RELIABILITY.md).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herd_fuzz_targets::spool(data));
