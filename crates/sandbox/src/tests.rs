//! Sandbox tests: determinism, every limit, admission refusals. Fixtures are `.wat` files in
//! `fixtures/`.

use herd_protocol::AbortReason;

use super::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/fixtures/{name}.wat", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read(&path).expect("fixture exists");
    module_bytes(&text).expect("fixture assembles")
}

fn run(name: &str, input: &[u8], seed: u64, limits: Limits) -> Execution {
    let sandbox = Sandbox::new().expect("engine");
    let module = sandbox.admit(&fixture(name)).expect("admitted");
    sandbox.run(&module, input, seed, &limits)
}

fn result(execution: &Execution) -> &RunResult {
    match &execution.outcome {
        Outcome::Countable(result) => result,
        Outcome::Aborted(reason) => panic!("aborted: {reason:?}"),
    }
}

fn small_fuel() -> Limits {
    Limits {
        fuel: 1_000_000,
        ..Limits::default()
    }
}

#[test]
fn echo_reads_input_and_writes_output() {
    let execution = run("echo", b"hello, herd", 0, Limits::default());
    assert_eq!(result(&execution).status, Status::Success);
    assert_eq!(execution.output, b"HELLO, HERD");
    assert_eq!(
        result(&execution).output_hash,
        ContentHash::of(b"HELLO, HERD")
    );
    assert_eq!(result(&execution).output_len, 11);
}

#[test]
fn a_plain_run_computes_the_same_output_counting_no_fuel_and_ends_the_same_way() {
    let plain = Sandbox::plain().expect("engine");
    let module = plain.admit(&fixture("echo")).expect("admitted");
    let execution = plain.run(&module, b"hello, herd", 0, &Limits::default());
    assert_eq!(result(&execution).status, Status::Success);
    assert_eq!(execution.output, b"HELLO, HERD");
    assert_eq!(result(&execution).fuel, 0, "a plain run counts no fuel");
    // The module as submitted, not the rewrite: it ends the same way (here, exit code 21).
    let herd = run("bad_pointer", b"", 0, Limits::default());
    let module = plain.admit(&fixture("bad_pointer")).expect("admitted");
    let ended = plain.run(&module, b"", 0, &Limits::default());
    assert_eq!(result(&ended).status, result(&herd).status);
}

#[test]
fn repeated_runs_give_the_same_outcome_and_fuel() {
    let sandbox = Sandbox::new().expect("engine");
    let module = sandbox.admit(&fixture("echo")).expect("admitted");
    let input = vec![b'x'; 200_000];
    let first = sandbox.run(&module, &input, 1, &Limits::default());
    assert!(result(&first).fuel > 0);
    for _ in 0..3 {
        assert_eq!(sandbox.run(&module, &input, 1, &Limits::default()), first);
    }
    // A fresh engine compiles the module anew and must agree too.
    assert_eq!(run("echo", &input, 1, Limits::default()), first);
}

#[test]
fn an_endless_loop_runs_out_of_fuel_with_exactly_the_budget() {
    let execution = run("spin", b"", 0, small_fuel());
    assert_eq!(result(&execution).status, Status::OutOfFuel);
    assert_eq!(result(&execution).fuel, 1_000_000);
}

#[test]
fn calling_the_host_in_a_loop_runs_out_of_fuel() {
    let execution = run("host_call_loop", b"", 0, small_fuel());
    assert_eq!(result(&execution).status, Status::OutOfFuel);
}

#[test]
fn writing_forever_ends_at_the_output_limit() {
    let limits = Limits {
        output_bytes: 100_000,
        ..Limits::default()
    };
    let execution = run("write_forever", b"", 0, limits);
    assert_eq!(
        result(&execution).status,
        Status::OutputLimit {
            limit_bytes: 100_000
        }
    );
    assert_eq!(execution.output.len(), 100_000);
}

#[test]
fn growing_memory_without_end_hits_the_memory_limit() {
    let limits = Limits {
        memory_bytes: 8 << 20,
        ..Limits::default()
    };
    let execution = run("grow_forever", b"", 0, limits);
    // One page, then 1 MiB at a time: the ninth growth asks for 64 KiB + 8 MiB.
    assert_eq!(
        result(&execution).status,
        Status::MemoryLimit {
            limit_bytes: 8 << 20,
            requested_bytes: (64 << 10) + (8 << 20)
        }
    );
}

#[test]
fn initial_memory_over_the_limit_is_a_memory_limit_outcome() {
    let limits = Limits {
        memory_bytes: 1 << 20,
        ..Limits::default()
    };
    let execution = run("big_memory", b"", 0, limits);
    assert_eq!(
        result(&execution).status,
        Status::MemoryLimit {
            limit_bytes: 1 << 20,
            requested_bytes: 64 << 20
        }
    );
    assert_eq!(result(&execution).fuel, 0);
}

#[test]
fn endless_recursion_is_a_stack_overflow_trap_not_a_crash() {
    let first = run("recurse", b"", 0, Limits::default());
    assert_eq!(
        result(&first).status,
        Status::Trap {
            kind: TrapKind::StackOverflow,
            function: "f".into()
        }
    );
    assert_eq!(run("recurse", b"", 0, Limits::default()), first);
}

#[test]
fn exit_codes_are_reported() {
    let execution = run("exit_code", b"", 0, Limits::default());
    assert_eq!(result(&execution).status, Status::ExitCode(3));
}

#[test]
fn random_bytes_follow_the_seed_and_clocks_are_fixed() {
    let a = run("random", b"", 1, Limits::default());
    let b = run("random", b"", 1, Limits::default());
    let c = run("random", b"", 2, Limits::default());
    assert_eq!(a, b);
    assert_ne!(a.output[..32], c.output[..32]);
    assert_eq!(a.output[32..40], wasi::FIXED_TIME_NS.to_le_bytes());
}

#[test]
fn nan_bits_are_canonical() {
    let execution = run("nan", b"", 0, Limits::default());
    assert_eq!(execution.output, 0x7fc0_0000u32.to_le_bytes());
}

#[test]
fn a_bad_guest_pointer_gets_efault_not_a_host_crash() {
    let execution = run("bad_pointer", b"", 0, Limits::default());
    assert_eq!(result(&execution).status, Status::ExitCode(21));
}

#[test]
fn admission_refuses_with_a_message_that_names_the_problem() {
    let sandbox = Sandbox::new().expect("engine");
    let err = sandbox
        .admit(&fixture("forbidden_import"))
        .err()
        .expect("refused");
    assert_eq!(
        err,
        AdmissionError::ImportNotAllowed {
            module: "env".into(),
            name: "system".into()
        }
    );
    assert!(err.to_string().contains("`env.system`"));
    let err = sandbox.admit(&fixture("path_open")).err().expect("refused");
    assert!(err.to_string().contains("wasi_snapshot_preview1.path_open"));
    assert_eq!(
        sandbox.admit(&fixture("no_start")).err(),
        Some(AdmissionError::NoStart)
    );
    assert!(matches!(
        sandbox.admit(b"\0asm junk"),
        Err(AdmissionError::Invalid(_))
    ));
    assert!(matches!(
        module_bytes(b"(module (func"),
        Err(AdmissionError::BadText(_))
    ));
}

#[test]
fn a_refused_import_says_what_to_change() {
    let refusal = |module: &str, name: &str| {
        AdmissionError::ImportNotAllowed {
            module: module.into(),
            name: name.into(),
        }
        .to_string()
    };
    // What wasi-libc's fopen imports.
    let fopen = refusal("wasi_snapshot_preview1", "fd_fdstat_set_flags");
    assert!(
        fopen.starts_with(
            "module import `wasi_snapshot_preview1.fd_fdstat_set_flags` is not allowed"
        ) && fopen.contains("no files")
            && fopen.contains("stdin"),
        "{fopen}"
    );
    assert!(refusal("wasi_snapshot_preview1", "path_open").contains("no files"));
    assert!(refusal("wasi_snapshot_preview1", "sock_accept").contains("no network"));
    assert!(refusal("env", "system").contains("declares but does not define"));
    assert!(refusal("wasi_unstable", "fd_write").contains("`wasi_snapshot_preview1`"));
}

#[test]
fn bytes_that_are_no_module_are_named_so_by_their_bytes_not_their_name() {
    // Random bytes (not UTF-8, no magic): the same words from the file reader and admission.
    let junk: Vec<u8> = (0..64u32).map(|i| (i * 151 + 7) as u8 | 0x80).collect();
    let expected = "not a WebAssembly module (no `\\0asm` header, and not WebAssembly text)";
    let from_file = module_bytes(&junk).expect_err("junk");
    assert_eq!(from_file, AdmissionError::NotAModule);
    assert_eq!(from_file.to_string(), expected);
    let sandbox = Sandbox::new().expect("engine");
    let admitted = sandbox.admit(&junk).err().expect("junk is refused");
    assert_eq!(admitted.to_string(), expected);
    // Text is still assembled, and a binary module passes through unchanged.
    let wasm = module_bytes(b"(module)").expect("text");
    assert!(wasm.starts_with(b"\0asm"));
    assert_eq!(module_bytes(&wasm).expect("binary"), wasm);
}

#[test]
fn a_module_whose_initial_memory_exceeds_the_limit_is_refused_by_name() {
    let sandbox = Sandbox::new().expect("engine");
    let module = sandbox.admit(&fixture("big_memory")).expect("admitted");
    assert_eq!(module.initial_memory_bytes(), 64 << 20);
    assert!(module.check_memory_limit(64 << 20).is_ok());
    let refusal = module.check_memory_limit(1 << 20).expect_err("refused");
    assert_eq!(
        refusal.to_string(),
        "module declares 67108864 bytes of initial memory, over the memory limit of 1048576 bytes"
    );
}

#[test]
fn threads_and_simd_are_not_allowed() {
    let sandbox = Sandbox::new().expect("engine");
    let simd = module_bytes(
        b"(module (memory (export \"memory\") 1) (func (export \"_start\") (drop (v128.const i32x4 0 0 0 0))))",
    )
    .expect("assembles");
    assert!(matches!(
        sandbox.admit(&simd),
        Err(AdmissionError::Invalid(_))
    ));
    let shared = module_bytes(
        b"(module (memory (export \"memory\") 1 1 shared) (func (export \"_start\")))",
    )
    .expect("assembles");
    assert!(matches!(
        sandbox.admit(&shared),
        Err(AdmissionError::Invalid(_))
    ));
}

#[test]
fn a_trap_names_its_kind_and_function() {
    let sandbox = Sandbox::new().expect("engine");
    let wasm = module_bytes(
        b"(module (memory (export \"memory\") 1)
           (func $divide (param i32) (result i32) (i32.div_u (i32.const 1) (local.get 0)))
           (func (export \"_start\") (drop (call $divide (i32.const 0)))))",
    )
    .expect("assembles");
    let module = sandbox.admit(&wasm).expect("admitted");
    let execution = sandbox.run(&module, b"", 0, &Limits::default());
    assert_eq!(
        result(&execution).status,
        Status::Trap {
            kind: TrapKind::IntegerDivisionByZero,
            function: "divide".into()
        }
    );
}

#[test]
fn the_watchdog_aborts_what_fuel_does_not_catch() {
    let limits = Limits {
        fuel: u64::MAX / 4,
        watchdog: std::time::Duration::from_millis(200),
        ..Limits::default()
    };
    let started = std::time::Instant::now();
    let execution = run("spin", b"", 0, limits);
    assert_eq!(
        execution.outcome,
        Outcome::Aborted(AbortReason::Watchdog { after_ms: 200 })
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

/// Polls a controlled run by hand, pausing it `pauses` times, and returns its execution.
fn run_with_pauses(
    sandbox: &Sandbox,
    module: &AdmittedModule,
    input: &[u8],
    seed: u64,
    pauses: usize,
) -> Execution {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let control = RunControl::new();
    let mut future =
        Box::pin(sandbox.start(module, input, seed, &Limits::default(), control.clone()));
    let mut cx = Context::from_waker(Waker::noop());
    let mut paused = 0;
    loop {
        if let Poll::Ready(execution) = future.as_mut().poll(&mut cx) {
            return execution;
        }
        if paused < pauses {
            control.pause();
            // While paused, polling does not drive the unit.
            assert!(future.as_mut().poll(&mut cx).is_pending());
            control.resume();
            paused += 1;
        }
    }
}

#[test]
fn pausing_and_resuming_changes_nothing_and_cancelling_aborts() {
    let sandbox = Sandbox::new().expect("engine");
    let module = sandbox.admit(&fixture("echo")).expect("admitted");
    let input = vec![b'y'; 3_000_000];
    let straight = sandbox.run(&module, &input, 3, &Limits::default());
    assert!(
        result(&straight).fuel > 2 * YIELD_FUEL,
        "the run must yield a few times"
    );
    for pauses in [1, 5, 1000] {
        assert_eq!(
            run_with_pauses(&sandbox, &module, &input, 3, pauses),
            straight
        );
    }
    // Progress: the fuel the unit's code has burned so far, known to within one yield's worth.
    let spin = sandbox.admit(&fixture("spin")).expect("admitted");
    let limits = Limits {
        fuel: 10 * YIELD_FUEL + 123,
        ..Limits::default()
    };
    let watched = RunControl::new();
    let execution = sandbox.run_controlled(&spin, b"", 0, &limits, watched.clone());
    let fuel = result(&execution).fuel;
    let seen = watched.fuel_so_far();
    assert!(
        seen <= fuel && seen + YIELD_FUEL >= fuel,
        "{seen} vs {fuel}"
    );
    let control = RunControl::new();
    let future = sandbox.start(&module, &input, 3, &Limits::default(), control.clone());
    control.cancel();
    assert_eq!(
        control::block_on(future).outcome,
        Outcome::Aborted(AbortReason::Cancelled)
    );
}

#[test]
fn limits_beyond_the_maxima_are_refused_by_name() {
    assert_eq!(Limits::default().check(), Ok(()));
    let huge_output = Limits {
        output_bytes: MAX_OUTPUT_BYTES + 1,
        ..Limits::default()
    };
    assert!(huge_output.check().unwrap_err().contains("output limit"));
    let huge_memory = Limits {
        memory_bytes: u64::MAX,
        ..Limits::default()
    };
    assert!(huge_memory.check().unwrap_err().contains("memory limit"));
    let no_fuel = Limits {
        fuel: 0,
        ..Limits::default()
    };
    assert!(no_fuel.check().is_err());
}
