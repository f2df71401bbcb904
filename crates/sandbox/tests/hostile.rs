//! The hostile corpus: every module here tries to harm, stall or exhaust the host. Each must end
//! with its expected outcome within 5 s of wall time, and the process must stay healthy after all
//! of them (the last check runs an ordinary module in the same process).

use std::time::{Duration, Instant};

use herd_protocol::{Outcome, Status, TrapKind};
use herd_sandbox::{AdmissionError, Limits, MAX_MODULE_BYTES, Sandbox, module_bytes};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/fixtures/{name}.wat", env!("CARGO_MANIFEST_DIR"));
    module_bytes(&std::fs::read(&path).expect("fixture exists")).expect("fixture assembles")
}

/// What a fixture must end with.
enum Expect {
    Status(Status),
    StatusNamed(&'static str),
    Refused(fn(&AdmissionError) -> bool),
}

/// Liveness bound from the issue: a hostile unit must not hold the host for long.
const BOUND: Duration = Duration::from_secs(5);

fn check(sandbox: &Sandbox, name: &str, wasm: &[u8], limits: Limits, expect: Expect) {
    let started = Instant::now();
    match (sandbox.admit(wasm), expect) {
        (Err(refusal), Expect::Refused(accept)) => {
            assert!(accept(&refusal), "{name}: unexpected refusal {refusal}");
        }
        (Ok(module), expect) => {
            let execution = sandbox.run(&module, b"", 0, &limits);
            let Outcome::Countable(result) = &execution.outcome else {
                panic!("{name}: aborted: {:?}", execution.outcome);
            };
            match expect {
                Expect::Status(status) => assert_eq!(result.status, status, "{name}"),
                Expect::StatusNamed(status) => assert_eq!(result.status.name(), status, "{name}"),
                Expect::Refused(_) => panic!("{name}: admitted, expected a refusal"),
            }
        }
        (Err(refusal), _) => panic!("{name}: refused: {refusal}"),
    }
    assert!(
        started.elapsed() < BOUND,
        "{name} took {:?}",
        started.elapsed()
    );
}

#[test]
fn every_hostile_module_ends_promptly_with_its_expected_outcome() {
    let sandbox = Sandbox::new().expect("engine");
    // Generous limits, as a real batch might set: the host must still be protected.
    let limits = Limits {
        fuel: 500_000_000,
        memory_bytes: 1 << 30,
        output_bytes: 16 << 20,
        ..Limits::default()
    };
    check(
        &sandbox,
        "spin",
        &fixture("spin"),
        limits,
        Expect::Status(Status::OutOfFuel),
    );
    check(
        &sandbox,
        "recurse",
        &fixture("recurse"),
        limits,
        Expect::Status(Status::Trap {
            kind: TrapKind::StackOverflow,
            function: "f".into(),
        }),
    );
    check(
        &sandbox,
        "grow_forever",
        &fixture("grow_forever"),
        limits,
        Expect::StatusNamed("memory_limit"),
    );
    check(
        &sandbox,
        "write_forever",
        &fixture("write_forever"),
        limits,
        Expect::StatusNamed("output_limit"),
    );
    check(
        &sandbox,
        "host_call_loop",
        &fixture("host_call_loop"),
        limits,
        Expect::Status(Status::OutOfFuel),
    );
    check(
        &sandbox,
        "forbidden_import",
        &fixture("forbidden_import"),
        limits,
        Expect::Refused(
            |e| matches!(e, AdmissionError::ImportNotAllowed { module, .. } if module == "env"),
        ),
    );
    check(
        &sandbox,
        "path_open",
        &fixture("path_open"),
        limits,
        Expect::Refused(
            |e| matches!(e, AdmissionError::ImportNotAllowed { name, .. } if name == "path_open"),
        ),
    );
    check(
        &sandbox,
        "no_start",
        &fixture("no_start"),
        limits,
        Expect::Refused(|e| *e == AdmissionError::NoStart),
    );
    check(
        &sandbox,
        "malformed",
        b"\0asm\x01\0\0\0\x05\xff\xff\xff\xff",
        limits,
        Expect::Refused(|e| matches!(e, AdmissionError::Invalid(_))),
    );
    let oversized = vec![0u8; MAX_MODULE_BYTES + 1];
    check(
        &sandbox,
        "oversized",
        &oversized,
        limits,
        Expect::Refused(|e| matches!(e, AdmissionError::TooLarge { .. })),
    );
    // The process is healthy: an ordinary module still runs.
    let echo = sandbox.admit(&fixture("echo")).expect("admitted");
    let execution = sandbox.run(&echo, b"still here", 0, &Limits::default());
    assert_eq!(execution.output, b"STILL HERE");
}

#[test]
fn arithmetic_nans_are_written_as_the_canonical_patterns() {
    let sandbox = Sandbox::new().expect("engine");
    let module = sandbox.admit(&fixture("nans")).expect("admitted");
    let execution = sandbox.run(&module, b"", 0, &Limits::default());
    let mut expected = Vec::new();
    for _ in 0..4 {
        expected.extend_from_slice(&0x7fc0_0000u32.to_le_bytes());
    }
    for _ in 0..4 {
        expected.extend_from_slice(&0x7ff8_0000_0000_0000u64.to_le_bytes());
    }
    // A NaN that is only stored keeps its own bits, exactly as wasmtime leaves it.
    expected.extend_from_slice(&0x7ff0_0000_0000_0004u64.to_le_bytes());
    assert_eq!(execution.output, expected);
}
