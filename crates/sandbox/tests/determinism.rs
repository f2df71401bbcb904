//! Determinism on every sample job: the same outcome, fuel and output across repeated runs, fresh
//! engines, other threads, and paused/resumed runs versus straight ones.

use std::future::Future;
use std::task::{Context, Poll, Waker};

use herd_protocol::{Outcome, Status};
use herd_sandbox::{Execution, Limits, RunControl, Sandbox};

fn straight(wasm: &[u8], input: &str, seed: u64) -> Execution {
    let sandbox = Sandbox::new().expect("engine");
    let module = sandbox.admit(wasm).expect("admitted");
    sandbox.run(&module, input.as_bytes(), seed, &Limits::default())
}

fn paused(wasm: &[u8], input: &str, seed: u64) -> Execution {
    let sandbox = Sandbox::new().expect("engine");
    let module = sandbox.admit(wasm).expect("admitted");
    let control = RunControl::new();
    let mut run = Box::pin(sandbox.start(
        &module,
        input.as_bytes(),
        seed,
        &Limits::default(),
        control.clone(),
    ));
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(execution) = run.as_mut().poll(&mut cx) {
            return execution;
        }
        control.pause();
        assert!(run.as_mut().poll(&mut cx).is_pending());
        std::thread::yield_now();
        control.resume();
    }
}

#[test]
fn every_sample_job_is_deterministic() {
    for (name, wasm, input) in herd_samples::ALL {
        let first = straight(wasm, input, 11);
        let Outcome::Countable(result) = &first.outcome else {
            panic!("{name} aborted: {:?}", first.outcome);
        };
        assert_eq!(result.status, Status::Success, "{name}");
        assert!(result.fuel > 0 && !first.output.is_empty(), "{name}");
        // The same engine again.
        let sandbox = Sandbox::new().expect("engine");
        let module = sandbox.admit(wasm).expect("admitted");
        for _ in 0..2 {
            assert_eq!(
                sandbox.run(&module, input.as_bytes(), 11, &Limits::default()),
                first,
                "{name}: repeated"
            );
        }
        // Fresh engines on other threads.
        let others: Vec<Execution> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..2)
                .map(|_| scope.spawn(|| straight(wasm, input, 11)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        for other in others {
            assert_eq!(other, first, "{name}: other thread");
        }
        // Paused and resumed at every yield.
        assert_eq!(paused(wasm, input, 11), first, "{name}: paused");
        // Compiled once into a disk cache, then loaded from it by a fresh engine.
        let dir = tempfile::tempdir().expect("tempdir");
        for _ in 0..2 {
            let sandbox = Sandbox::with_disk_cache(dir.path()).expect("engine");
            let module = sandbox.admit(wasm).expect("admitted");
            assert_eq!(
                sandbox.run(&module, input.as_bytes(), 11, &Limits::default()),
                first,
                "{name}: cached"
            );
        }
    }
}

#[test]
fn the_disk_cache_is_used_and_a_corrupt_entry_is_recompiled_not_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = herd_samples::PRIMES_WASM;
    let expected = straight(wasm, "2 1000", 0);
    let sandbox = Sandbox::with_disk_cache(dir.path()).expect("engine");
    sandbox.admit(wasm).expect("admitted");
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(entries.len(), 1, "one compiled module on disk");
    // Flip a byte in the compiled code: the checksum catches it and the module is recompiled.
    let mut bytes = std::fs::read(&entries[0]).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&entries[0], &bytes).expect("write");
    let fresh = Sandbox::with_disk_cache(dir.path()).expect("engine");
    let module = fresh.admit(wasm).expect("admitted");
    assert_eq!(
        fresh.run(&module, b"2 1000", 0, &Limits::default()),
        expected
    );
    let repaired = std::fs::read(&entries[0]).expect("rewritten");
    assert_ne!(repaired, bytes, "the corrupt entry was replaced");
}

#[test]
fn the_seed_decides_random_bytes_and_only_them() {
    let montecarlo = herd_samples::MONTECARLO_WASM;
    let a = straight(montecarlo, "100000", 1);
    let b = straight(montecarlo, "100000", 2);
    assert_ne!(a.output, b.output, "different seeds, different samples");
    assert_eq!(straight(montecarlo, "100000", 1), a);
    // A job that draws no randomness ignores the seed.
    let primes = herd_samples::PRIMES_WASM;
    assert_eq!(
        straight(primes, "2 50000", 1),
        straight(primes, "2 50000", 2)
    );
}

#[test]
fn nbody_nans_are_canonical() {
    // Seed 0 starts every body at the origin; with softening 0 the first force is 0/0.
    let execution = straight(herd_samples::NBODY_WASM, "4 3 0.01 0 0", 0);
    assert_eq!(execution.output.len(), 4 * 48);
    for value in execution.output.chunks_exact(8) {
        let bits = u64::from_le_bytes(value.try_into().expect("8 bytes"));
        assert_eq!(
            bits, 0x7ff8_0000_0000_0000,
            "a NaN that is not canonical: {bits:#x}"
        );
    }
}
