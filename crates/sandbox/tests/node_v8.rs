//! A second engine: every sample job, rewritten by the instrumentation, run in Node.js's V8 with
//! Node's WASI for stdin and stdout (`tests/node/run_unit.mjs`) must write the same output bytes
//! and report the same fuel as Herd's wasmtime sandbox, with a full budget and with one that runs
//! out part-way. This is the step toward volunteers computing in a browser tab: the fuel of a unit
//! is defined by the rewritten module, not by the engine.
//!
//! Needs `node` (version 20 or later) on the PATH; `scripts/test` installs Debian's `nodejs` if it
//! is missing. Without it this test fails, naming what is missing.

use std::path::Path;
use std::process::Command;

use herd_protocol::{Outcome, Status};
use herd_sandbox::{Limits, Sandbox};

/// The unit's random stream, as the sandbox's `random_get` produces it for `seed`.
fn random_stream(seed: u64, len: usize) -> Vec<u8> {
    let mut hasher = blake3::Hasher::new_derive_key("herd random_get v1");
    hasher.update(&seed.to_le_bytes());
    let mut out = vec![0; len];
    hasher.finalize_xof().fill(&mut out);
    out
}

/// Runs the rewritten module in Node: (output, result JSON).
fn run_in_node(dir: &Path, wasm: &[u8], input: &[u8], seed: u64, fuel: u64) -> (Vec<u8>, String) {
    let module = dir.join("unit.wasm");
    let input_path = dir.join("input");
    let output = dir.join("output");
    let random = dir.join("random");
    let result = dir.join("result.json");
    std::fs::write(&module, wasm).expect("module");
    std::fs::write(&input_path, input).expect("input");
    std::fs::write(&random, random_stream(seed, 8 << 20)).expect("random");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node/run_unit.mjs");
    let ran = Command::new("node")
        .arg(script)
        .args([&module, &input_path, &output, &random])
        .arg(fuel.to_string())
        .arg(&result)
        .output()
        .expect("`node` runs (scripts/test installs Debian's nodejs when it is missing)");
    assert!(
        ran.status.success(),
        "node failed: {}",
        String::from_utf8_lossy(&ran.stderr)
    );
    (
        std::fs::read(&output).expect("output"),
        std::fs::read_to_string(&result).expect("result"),
    )
}

#[test]
fn every_sample_job_runs_in_v8_with_the_same_output_and_fuel() {
    let sandbox = Sandbox::new().expect("sandbox");
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, wasm, input) in herd_samples::ALL {
        let rewritten = herd_instrument::instrument(wasm).expect("instrumented");
        let module = sandbox.admit(wasm).expect("admitted");
        let seed = 11;
        let expected = sandbox.run(&module, input.as_bytes(), seed, &Limits::default());
        let Outcome::Countable(result) = &expected.outcome else {
            panic!("{name}: {:?}", expected.outcome);
        };
        assert_eq!(result.status, Status::Success, "{name}");
        let (output, report) = run_in_node(
            dir.path(),
            &rewritten.wasm,
            input.as_bytes(),
            seed,
            Limits::default().fuel,
        );
        assert_eq!(output, expected.output, "{name}: output bytes");
        assert_eq!(
            report,
            format!(r#"{{"status":"success","fuel":"{}"}}"#, result.fuel),
            "{name}: status and fuel"
        );
        // Half the fuel: both run out, having written the same bytes up to that point.
        let half = Limits {
            fuel: result.fuel / 2,
            ..Limits::default()
        };
        let short = sandbox.run(&module, input.as_bytes(), seed, &half);
        let Outcome::Countable(short_result) = &short.outcome else {
            panic!("{name}: {:?}", short.outcome);
        };
        assert_eq!(short_result.status, Status::OutOfFuel, "{name}");
        let (output, report) = run_in_node(
            dir.path(),
            &rewritten.wasm,
            input.as_bytes(),
            seed,
            half.fuel,
        );
        assert_eq!(output, short.output, "{name}: output before running out");
        assert_eq!(
            report,
            format!(r#"{{"status":"out_of_fuel","fuel":"{}"}}"#, half.fuel),
            "{name}: out of fuel"
        );
    }
}
