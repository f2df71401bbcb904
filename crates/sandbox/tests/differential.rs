//! Differential tests of the instrumentation: every module run by the default sandbox (rewritten,
//! engine switches off) must write byte-identical output and end in the same status as the same
//! module run by the oracle (as submitted, wasmtime's NaN canonicalisation and fuel on). The
//! corpus: every sample job, every fixture (the hostile ones and the hand-written NaN programs).
//! A generated corpus (wasm-smith) is compared in `crates/instrument/tests/differential.rs`.
//!
//! Fuel is the one thing allowed to differ: the pass defines its own. Where the oracle's own
//! resource accounting decides the ending (it runs out of fuel, or out of its native stack), the
//! instrumented run must end the same way, and its output must be what the oracle wrote.

use herd_protocol::{Outcome, RunResult, Status, TrapKind};
use herd_sandbox::{Execution, Limits, Sandbox, module_bytes};

fn fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("fixtures")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "wat"))
        .map(|path| {
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let wasm = module_bytes(&std::fs::read(&path).expect("read")).expect("assembles");
            (name, wasm)
        })
        .collect();
    out.sort();
    out
}

fn result(execution: &Execution) -> &RunResult {
    match &execution.outcome {
        Outcome::Countable(result) => result,
        other => panic!("aborted: {other:?}"),
    }
}

/// Whether the oracle's own resource accounting (its fuel, its native stack) ended the run.
fn resource_ending(status: &Status) -> bool {
    matches!(
        status,
        Status::OutOfFuel
            | Status::Trap {
                kind: TrapKind::StackOverflow,
                ..
            }
    )
}

/// Runs `wasm` on `input` in both sandboxes and checks they agree.
fn agree(name: &str, oracle: &Sandbox, pass: &Sandbox, wasm: &[u8], input: &[u8], limits: Limits) {
    let (expected, actual) = match (oracle.admit(wasm), pass.admit(wasm)) {
        (Ok(a), Ok(b)) => (
            oracle.run(&a, input, 5, &limits),
            pass.run(&b, input, 5, &limits),
        ),
        (Err(a), Err(b)) => {
            assert_eq!(
                std::mem::discriminant(&a),
                std::mem::discriminant(&b),
                "{name}: both refuse, for the same reason: {a} / {b}"
            );
            return;
        }
        (a, b) => panic!(
            "{name}: admitted by one only: oracle {:?}, pass {:?}",
            a.err(),
            b.err()
        ),
    };
    let (expected_result, actual_result) = (result(&expected), result(&actual));
    if resource_ending(&expected_result.status) {
        assert_eq!(
            expected_result.status.name(),
            actual_result.status.name(),
            "{name}: the same resource ran out"
        );
    } else {
        assert_eq!(expected_result.status, actual_result.status, "{name}");
    }
    assert_eq!(expected.output, actual.output, "{name}: output");
    assert_eq!(
        expected_result.output_hash, actual_result.output_hash,
        "{name}"
    );
}

#[test]
fn every_sample_job_and_fixture_matches_the_oracle() {
    let oracle = Sandbox::oracle().expect("oracle");
    let pass = Sandbox::new().expect("sandbox");
    let limits = Limits {
        fuel: 300_000_000,
        memory_bytes: 64 << 20,
        output_bytes: 1 << 20,
        ..Limits::default()
    };
    for (name, wasm, input) in herd_samples::ALL {
        agree(name, &oracle, &pass, wasm, input.as_bytes(), limits);
    }
    let fixtures = fixtures();
    assert!(fixtures.len() >= 16, "the fixtures are found");
    for (name, wasm) in &fixtures {
        agree(name, &oracle, &pass, wasm, b"some input\n", limits);
    }
}

#[test]
fn the_nan_program_keeps_loaded_payloads_and_canonicalises_computed_ones() {
    // The differential test above passes only if these bits match the oracle; this checks the
    // program really exercises both kinds, so the comparison is not vacuous.
    let (_, wasm) = fixtures()
        .into_iter()
        .find(|(name, _)| name == "nan_flows")
        .expect("nan_flows");
    let pass = Sandbox::new().expect("sandbox");
    let module = pass.admit(&wasm).expect("admitted");
    let execution = pass.run(&module, b"", 0, &Limits::default());
    assert_eq!(result(&execution).status, Status::Success);
    let out = &execution.output;
    let f64_at = |offset: usize| {
        u64::from_le_bytes(out[offset - 256..offset - 248].try_into().expect("8 bytes"))
    };
    assert_eq!(f64_at(256), 0x7ff8_0000_0000_0000, "arithmetic: canonical");
    assert_eq!(
        f64_at(264),
        0xfff8_0000_0000_0000,
        "neg of the canonical NaN"
    );
    assert_eq!(f64_at(272), 0x7ff8_0000_0000_0000, "select picked the sqrt");
    assert_eq!(
        f64_at(280),
        0x7ff0_0000_0000_0bad,
        "select picked the load: kept"
    );
    assert_eq!(
        f64_at(288),
        0x7ff0_0000_0000_0bad,
        "loaded, through a local: kept"
    );
    assert_eq!(f64_at(336), 0x7ff8_0000_0000_0000, "computed by the callee");
    assert_eq!(f64_at(352), 0x7ff0_0000_0000_0bad, "the loading arm");
    assert_eq!(
        f64_at(376),
        0x7ff0_0000_0000_0bad,
        "the loaded half of the pair"
    );
    assert_eq!(
        f64_at(472),
        0x7ff8_0000_0000_0000,
        "stored canonical, reloaded as it is"
    );
}

#[test]
fn fuel_runs_out_at_the_same_point_every_time() {
    let (_, wasm, input) = herd_samples::ALL
        .iter()
        .find(|(name, _, _)| *name == "primes")
        .expect("primes");
    let pass = Sandbox::new().expect("sandbox");
    let module = pass.admit(wasm).expect("admitted");
    let full = pass.run(&module, input.as_bytes(), 0, &Limits::default());
    let fuel = result(&full).fuel;
    assert!(fuel > 1_000, "{fuel}");
    // Exactly the fuel it needs is enough; the budget is a hard line.
    let exact = Limits {
        fuel,
        ..Limits::default()
    };
    assert_eq!(pass.run(&module, input.as_bytes(), 0, &exact), full);
    let short = Limits {
        fuel: fuel - 1,
        ..Limits::default()
    };
    let ran_out = pass.run(&module, input.as_bytes(), 0, &short);
    assert_eq!(result(&ran_out).status, Status::OutOfFuel);
    // Half the budget, on fresh engines and other threads: the same ending, the same output up
    // to the same point.
    let half = Limits {
        fuel: fuel / 2,
        ..Limits::default()
    };
    let first = pass.run(&module, input.as_bytes(), 0, &half);
    assert_eq!(result(&first).status, Status::OutOfFuel);
    let others: Vec<Execution> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                scope.spawn(|| {
                    let fresh = Sandbox::new().expect("sandbox");
                    let module = fresh.admit(wasm).expect("admitted");
                    fresh.run(&module, input.as_bytes(), 0, &half)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("thread"))
            .collect()
    });
    for other in others {
        assert_eq!(other, first);
    }
}

#[test]
fn every_way_back_into_a_loop_is_metered() {
    // Endless loops closed by br, br_if, br_table and a loop with parameters: fuel is checked on
    // each way back (or at the header), so each ends out of fuel with all of its budget burned,
    // the same every time, as under the oracle.
    let oracle = Sandbox::oracle().expect("oracle");
    let pass = Sandbox::new().expect("sandbox");
    let loops = [
        (
            "br",
            "(loop $l (local.set 0 (i32.add (local.get 0) (i32.const 1))) (br $l))",
        ),
        (
            "br_if",
            "(loop $l (local.set 0 (i32.add (local.get 0) (i32.const 1))) (br_if $l (i32.const 1)))",
        ),
        (
            "br_table",
            "(block $out (loop $l (local.set 0 (i32.add (local.get 0) (i32.const 1))) (br_table $l $out (i32.const 0))))",
        ),
        (
            "params",
            "(i32.const 0) (loop $l (param i32) (i32.add (i32.const 1)) (local.tee 0) (br $l)) ",
        ),
    ];
    let limits = Limits {
        fuel: 3 * herd_sandbox::YIELD_FUEL + 17,
        ..Limits::default()
    };
    for (name, body) in loops {
        let wat = format!(
            r#"(module (memory (export "memory") 1)
                 (func (export "_start") (local i32) {body}))"#
        );
        let wasm = module_bytes(wat.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let module = pass.admit(&wasm).expect("admitted");
        let first = pass.run(&module, b"", 0, &limits);
        assert_eq!(result(&first).status, Status::OutOfFuel, "{name}");
        assert_eq!(result(&first).fuel, limits.fuel, "{name}");
        assert_eq!(pass.run(&module, b"", 0, &limits), first, "{name}: again");
        let expected = oracle.run(
            &oracle.admit(&wasm).expect("oracle admits"),
            b"",
            0,
            &limits,
        );
        assert_eq!(
            result(&expected).status,
            Status::OutOfFuel,
            "{name}: oracle"
        );
    }
}

#[test]
fn a_trap_names_its_function_by_the_submitted_module_s_index() {
    // No name section and an import before it: the rewrite's own imports shift every function,
    // and the trap must still name the function as the submitted module numbers it, as the
    // oracle does, also when the compiled rewrite comes back from the disk cache.
    let wasm = module_bytes(
        br#"(module
             (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
             (memory (export "memory") 1)
             (func (export "_start") (call 2))
             (func unreachable))"#,
    )
    .expect("assembles");
    let oracle = Sandbox::oracle().expect("oracle");
    let expected = oracle.run(
        &oracle.admit(&wasm).expect("admitted"),
        b"",
        0,
        &Limits::default(),
    );
    let trap = Status::Trap {
        kind: TrapKind::Unreachable,
        function: "func[2]".into(),
    };
    assert_eq!(result(&expected).status, trap);
    let dir = tempfile::tempdir().expect("tempdir");
    for _ in 0..2 {
        let pass = Sandbox::with_disk_cache(dir.path()).expect("sandbox");
        let actual = pass.run(
            &pass.admit(&wasm).expect("admitted"),
            b"",
            0,
            &Limits::default(),
        );
        assert_eq!(result(&actual).status, trap);
    }
}
