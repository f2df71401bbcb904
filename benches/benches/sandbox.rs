//! Sandbox speed, each against a baseline measured in the same run:
//! - `mandelbrot/native` vs `mandelbrot/herd`: one 200x200 tile (1,000 iterations) rendered by the
//!   sample job's own code compiled natively, and by its wasm32-wasip1 build in Herd's sandbox
//!   (fuel metering and NaN canonicalisation on, as every unit runs);
//! - `unit_overhead/empty`: the per-unit cost of a cached module (instantiate, WASI set-up, run an
//!   empty `_start`, tear down).

use criterion::{Criterion, criterion_group, criterion_main};
use herd_sandbox::{Limits, Sandbox, module_bytes};

#[path = "../../sample-jobs/mandelbrot/src/kernel.rs"]
#[allow(dead_code, unreachable_pub)]
mod tile;

fn mandelbrot(c: &mut Criterion) {
    let input = herd_samples::mandelbrot_input((-2.0, -1.25), (0.5, 1.25), (200, 200), 1000);
    let parsed = tile::parse_tile(&input).expect("valid tile");
    let sandbox = Sandbox::new().expect("engine");
    let module = sandbox
        .admit(herd_samples::MANDELBROT_WASM)
        .expect("admitted");
    let limits = Limits::default();
    // Same bytes either way, or the comparison means nothing.
    let execution = sandbox.run(&module, input.as_bytes(), 0, &limits);
    assert_eq!(execution.output, tile::render(&parsed));

    let mut group = c.benchmark_group("mandelbrot");
    group.sample_size(20);
    group.bench_function("native", |b| {
        b.iter(|| tile::render(std::hint::black_box(&parsed)))
    });
    group.bench_function("herd", |b| {
        b.iter(|| sandbox.run(&module, std::hint::black_box(input.as_bytes()), 0, &limits))
    });
    group.finish();
}

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

criterion_group!(benches, mandelbrot, unit_overhead);
criterion_main!(benches);
