//! Sandbox speed, each against a baseline measured in the same run:
//! - `kernels/<job>/native` vs `kernels/<job>/herd` vs `kernels/<job>/wasmtime_switches`: each
//!   sample job's kernel compiled natively; its wasm32-wasip1 build run in Herd's sandbox as every
//!   unit runs (rewritten by the deterministic instrumentation: NaN canonicalisation where bits
//!   become visible, fuel per basic block, call depth); and the same build under wasmtime's own
//!   NaN canonicalisation and fuel (the oracle, and the baseline the instrumentation beats);
//! - `unit_overhead/empty`: the per-unit cost of a cached module (instantiate, WASI set-up, run an
//!   empty `_start`, tear down);
//! - `compile/<job>`: admission and compilation of a module by a fresh engine;
//! - `cache_hit/<job>`: admission of a module found in the on-disk compiled cache;
//! - `tiny_units/echo_64b`: units per second on one core through the full sandbox path, each reading
//!   64 bytes and writing them back.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use herd_sandbox::{Limits, Sandbox, module_bytes};

#[path = "../../sample-jobs/flame/src/kernel.rs"]
#[allow(dead_code, unreachable_pub, clippy::all)]
mod flame;
#[path = "../../sample-jobs/mandelbrot/src/kernel.rs"]
#[allow(dead_code, unreachable_pub, clippy::all)]
mod mandelbrot;
#[path = "../../sample-jobs/montecarlo/src/kernel.rs"]
#[allow(dead_code, unreachable_pub, clippy::all)]
mod montecarlo;
#[path = "../../sample-jobs/nbody/src/kernel.rs"]
#[allow(dead_code, unreachable_pub, clippy::all)]
mod nbody;
#[path = "../../sample-jobs/primes/src/kernel.rs"]
#[allow(dead_code, unreachable_pub, clippy::all)]
mod primes;

/// A kernel compiled natively: input text to output bytes.
type NativeKernel = Box<dyn Fn(&str) -> Vec<u8>>;

/// One kernel: its module, its benchmark input, and the native computation of the same output.
struct Kernel {
    name: &'static str,
    wasm: &'static [u8],
    input: String,
    native: NativeKernel,
    /// Whether native and wasm outputs must match byte for byte (not for kernels whose libm
    /// calls or random source differ between the builds).
    same_output: bool,
}

fn kernels() -> Vec<Kernel> {
    vec![
        Kernel {
            name: "mandelbrot",
            wasm: herd_samples::MANDELBROT_WASM,
            input: herd_samples::mandelbrot_input((-2.0, -1.25), (0.5, 1.25), (200, 200), 1000),
            native: Box::new(|input| {
                mandelbrot::render_ppm(&mandelbrot::parse_tile(input).expect("tile"))
            }),
            same_output: true,
        },
        Kernel {
            name: "primes",
            wasm: herd_samples::PRIMES_WASM,
            input: "2 400000".into(),
            native: Box::new(|input| {
                let (start, end) = primes::parse(input).expect("range");
                primes::format(&primes::search(start, end)).into_bytes()
            }),
            same_output: true,
        },
        Kernel {
            name: "montecarlo",
            wasm: herd_samples::MONTECARLO_WASM,
            input: "2000000".into(),
            native: Box::new(|input| {
                let samples = montecarlo::parse(input).expect("samples");
                let (hits, pi) = montecarlo::estimate(samples, montecarlo::splitmix(0));
                montecarlo::format(samples, hits, pi).into_bytes()
            }),
            same_output: false,
        },
        Kernel {
            name: "nbody",
            wasm: herd_samples::NBODY_WASM,
            input: "400 20 0.001 0.01 42".into(),
            native: Box::new(|input| {
                let setup = nbody::parse(input).expect("setup");
                let mut bodies = nbody::initial(&setup);
                nbody::simulate(&mut bodies, &setup);
                nbody::encode(&bodies)
            }),
            same_output: true,
        },
        Kernel {
            name: "flame",
            wasm: herd_samples::FLAME_WASM,
            input: "256 256 1000000 7".into(),
            native: Box::new(|input| flame::render(&flame::parse(input).expect("setup"))),
            same_output: false,
        },
    ]
}

fn kernel_ratios(c: &mut Criterion) {
    let sandbox = Sandbox::new().expect("engine");
    let oracle = Sandbox::oracle().expect("oracle engine");
    let limits = Limits::default();
    for kernel in kernels() {
        let module = sandbox.admit(kernel.wasm).expect("admitted");
        let oracle_module = oracle.admit(kernel.wasm).expect("admitted by the oracle");
        let execution = sandbox.run(&module, kernel.input.as_bytes(), 0, &limits);
        let expected = oracle.run(&oracle_module, kernel.input.as_bytes(), 0, &limits);
        assert_eq!(execution.output, expected.output, "{}", kernel.name);
        if kernel.same_output {
            assert_eq!(
                execution.output,
                (kernel.native)(&kernel.input),
                "{}",
                kernel.name
            );
        }
        let mut group = c.benchmark_group(format!("kernels/{}", kernel.name));
        group.sample_size(10);
        group.bench_function("native", |b| {
            b.iter(|| (kernel.native)(std::hint::black_box(&kernel.input)))
        });
        group.bench_function("herd", |b| {
            b.iter(|| {
                sandbox.run(
                    &module,
                    std::hint::black_box(kernel.input.as_bytes()),
                    0,
                    &limits,
                )
            })
        });
        group.bench_function("wasmtime_switches", |b| {
            b.iter(|| {
                oracle.run(
                    &oracle_module,
                    std::hint::black_box(kernel.input.as_bytes()),
                    0,
                    &limits,
                )
            })
        });
        group.finish();
    }
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

criterion_group!(
    benches,
    kernel_ratios,
    unit_overhead,
    compile_and_cache,
    tiny_units
);
criterion_main!(benches);
