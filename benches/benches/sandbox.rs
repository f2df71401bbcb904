//! Sandbox speed, each against a baseline measured in the same run (the kernels' speed against
//! native and plain wasm is `benches/corpus.rs`):
//! - `unit_overhead/empty`: the per-unit cost of a cached module (instantiate, WASI set-up, run an
//!   empty `_start`, tear down);
//! - `compile/<job>`: admission and compilation of a module by a fresh engine;
//! - `cache_hit/<job>`: admission of a module found in the on-disk compiled cache;
//! - `tiny_units/echo_64b`: units per second on one core through the full sandbox path, each reading
//!   64 bytes and writing them back.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use herd_sandbox::{Limits, Sandbox, module_bytes};

fn unit_overhead(c: &mut Criterion) {
    let sandbox = Sandbox::new().expect("engine");
    let wasm = module_bytes(b"(module (memory (export \"memory\") 1) (func (export \"_start\")))")
        .expect("assembles");
    let module = sandbox.admit(&wasm).expect("admitted");
    let limits = Limits::default();
    c.bench_function("unit_overhead/empty", |b| {
        b.iter(|| sandbox.run(&module, b"", 0, &limits))
    });
}

fn compile_and_cache(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    for (name, wasm) in [
        ("mandelbrot", herd_samples::MANDELBROT_WASM),
        ("flame", herd_samples::FLAME_WASM),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || Sandbox::new().expect("engine"),
                |sandbox| sandbox.admit(wasm).map(|_| ()),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
    let mut group = c.benchmark_group("cache_hit");
    for (name, wasm) in [
        ("mandelbrot", herd_samples::MANDELBROT_WASM),
        ("flame", herd_samples::FLAME_WASM),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        Sandbox::with_disk_cache(dir.path())
            .expect("engine")
            .admit(wasm)
            .expect("admitted");
        group.bench_function(name, |b| {
            b.iter_batched(
                || Sandbox::with_disk_cache(dir.path()).expect("engine"),
                |sandbox| sandbox.admit(wasm).map(|_| ()),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

fn tiny_units(c: &mut Criterion) {
    let sandbox = Sandbox::new().expect("engine");
    let echo = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crates/sandbox/fixtures/echo.wat"
    ))
    .expect("fixture");
    let module = sandbox
        .admit(&module_bytes(&echo).expect("assembles"))
        .expect("admitted");
    let limits = Limits::default();
    let input = [b'h'; 64];
    let mut group = c.benchmark_group("tiny_units");
    group.throughput(Throughput::Elements(1));
    group.bench_function("echo_64b", |b| {
        b.iter(|| sandbox.run(&module, &input, 0, &limits))
    });
    group.finish();
}

criterion_group!(benches, unit_overhead, compile_and_cache, tiny_units);
criterion_main!(benches);
