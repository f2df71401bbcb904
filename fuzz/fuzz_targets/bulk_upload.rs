//! libFuzzer's driver of the `bulk_upload` target, whose body and invariants are
//! `herd_fuzz_targets::bulk_upload` (shared with the corpus replay of the test suite).
//!
//! Run: `scripts/fuzz bulk_upload 600` (RELIABILITY.md).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herd_fuzz_targets::bulk_upload(data));
