//! The kernel corpus's speed: for every kernel, its native build, its WebAssembly build as a
//! plain wasmtime runs it (no instrumentation, no NaN canonicalisation, no fuel: the floor the
//! instrumentation cannot beat), in Herd's sandbox as every unit runs (the instrumentation's
//! rewrite: NaN canonicalisation where bits become visible, fuel per basic block, call depth),
//! and under wasmtime's own switches (NaN canonicalisation of every float operation, wasmtime's
//! fuel), measured in one run. Each wasm variant is timed from instantiation to the end of
//! `_start`, the module compiled beforehand (steady state: compilation is `benches/sandbox.rs`'s
//! `compile/*`); a C kernel's native time is its whole process, a Rust sample's a call of its
//! kernel compiled into this benchmark.
//!
//! The kernels: `herd_benches::corpus` (C and C++, built here with Zig's clang at `-O2`) and the
//! Rust sample jobs. Every variant's output is checked against the native one before anything is
//! timed. At the end a table is printed (markdown, for BENCHMARKS.md): each variant's median
//! and the ratios, with their geometric means and worst cases.
//!
//! `cargo bench -p herd-benches --locked --bench corpus` (about 15 minutes); a name after `--`
//! measures only the kernels it matches.

use std::cell::Cell;
use std::path::{Path, PathBuf};

use criterion::{Criterion, SamplingMode};
use herd_benches::corpus::{KERNELS, build, run_native};
use herd_sandbox::{Limits, Sandbox};

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

/// One kernel to measure.
struct Case {
    name: &'static str,
    language: &'static str,
    wasm: Vec<u8>,
    input: String,
    native: NativeKernel,
    /// Whether native and wasm outputs must match byte for byte (not for the Rust samples whose
    /// libm calls or random source differ between the builds).
    same_output: bool,
}

/// The corpus's C and C++ kernels, built into `dir`.
fn c_kernels(dir: &Path) -> Vec<Case> {
    KERNELS
        .iter()
        .map(|kernel| {
            let built = build(kernel, dir).expect("the kernel builds");
            let native = built.native;
            Case {
                name: kernel.name,
                language: if kernel.source.ends_with(".cpp") {
                    "C++"
                } else {
                    "C"
                },
                wasm: built.wasm,
                input: kernel.bench_input.to_string(),
                native: Box::new(move |input| run_native(&native, input).expect("runs natively")),
                same_output: true,
            }
        })
        .collect()
}

/// The Rust sample jobs, each with its kernel compiled into this benchmark natively (named
/// `-rs`, apart from the corpus's kernels of the same algorithm).
fn rust_samples() -> Vec<Case> {
    vec![
        Case {
            name: "mandelbrot-rs",
            language: "Rust",
            wasm: herd_samples::MANDELBROT_WASM.to_vec(),
            input: herd_samples::mandelbrot_input((-2.0, -1.25), (0.5, 1.25), (200, 200), 1000),
            native: Box::new(|input| {
                mandelbrot::render_ppm(&mandelbrot::parse_tile(input).expect("tile"))
            }),
            same_output: true,
        },
        Case {
            name: "primes-rs",
            language: "Rust",
            wasm: herd_samples::PRIMES_WASM.to_vec(),
            input: "2 400000".into(),
            native: Box::new(|input| {
                let (start, end) = primes::parse(input).expect("range");
                primes::format(&primes::search(start, end)).into_bytes()
            }),
            same_output: true,
        },
        Case {
            name: "montecarlo-rs",
            language: "Rust",
            wasm: herd_samples::MONTECARLO_WASM.to_vec(),
            input: "2000000".into(),
            native: Box::new(|input| {
                let samples = montecarlo::parse(input).expect("samples");
                let (hits, pi) = montecarlo::estimate(samples, montecarlo::splitmix(0));
                montecarlo::format(samples, hits, pi).into_bytes()
            }),
            same_output: false,
        },
        Case {
            name: "nbody-rs",
            language: "Rust",
            wasm: herd_samples::NBODY_WASM.to_vec(),
            input: "400 20 0.001 0.01 42".into(),
            native: Box::new(|input| {
                let setup = nbody::parse(input).expect("setup");
                let mut bodies = nbody::initial(&setup);
                nbody::simulate(&mut bodies, &setup);
                nbody::encode(&bodies)
            }),
            same_output: true,
        },
        Case {
            name: "flame-rs",
            language: "Rust",
            wasm: herd_samples::FLAME_WASM.to_vec(),
            input: "256 256 1000000 7".into(),
            native: Box::new(|input| flame::render(&flame::parse(input).expect("setup"))),
            same_output: false,
        },
    ]
}

/// The four ways each kernel runs, in the table's order.
const VARIANTS: [&str; 4] = ["native", "plain", "herd", "wasmtime_switches"];

/// Measures every case; returns those measured in this run (a filter may leave some out).
fn measure(criterion: &mut Criterion, cases: &[Case]) -> Vec<usize> {
    let herd = Sandbox::new().expect("engine");
    let plain = Sandbox::plain().expect("plain engine");
    let oracle = Sandbox::oracle().expect("oracle engine");
    let limits = Limits {
        fuel: u64::MAX / 4,
        memory_bytes: 1 << 30,
        watchdog: std::time::Duration::from_secs(3600),
        ..Limits::default()
    };
    let mut measured = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        let sandboxes = [&plain, &herd, &oracle];
        let modules: Vec<_> = sandboxes
            .iter()
            .map(|sandbox| sandbox.admit(&case.wasm).expect("admitted"))
            .collect();
        let ran = Cell::new(false);
        let mut group = criterion.benchmark_group(format!("corpus-{}", case.name));
        group
            .sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(std::time::Duration::from_millis(300))
            .measurement_time(std::time::Duration::from_secs(2));
        let mut expected: Option<Vec<u8>> = None;
        group.bench_function("native", |b| {
            ran.set(true);
            let native = (case.native)(&case.input);
            expected = Some(native);
            b.iter(|| (case.native)(std::hint::black_box(&case.input)))
        });
        for ((variant, sandbox), module) in VARIANTS[1..].iter().zip(sandboxes).zip(&modules) {
            group.bench_function(*variant, |b| {
                ran.set(true);
                let once = sandbox.run(module, case.input.as_bytes(), 0, &limits);
                if let Some(native) = expected.as_ref().filter(|_| case.same_output) {
                    assert!(
                        &once.output == native,
                        "{} {variant}: the output differs from the native build's",
                        case.name
                    );
                }
                b.iter(|| {
                    sandbox.run(
                        module,
                        std::hint::black_box(case.input.as_bytes()),
                        0,
                        &limits,
                    )
                })
            });
        }
        group.finish();
        if ran.get() {
            measured.push(index);
        }
    }
    measured
}

/// A variant's median time in this run, in seconds, from criterion's estimates.
fn median_seconds(dir: &Path, case: &str, variant: &str) -> Option<f64> {
    let path = dir
        .join(format!("corpus-{case}"))
        .join(variant)
        .join("new")
        .join("estimates.json");
    let estimates: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    Some(estimates["median"]["point_estimate"].as_f64()? / 1e9)
}

fn geometric_mean(values: &[f64]) -> f64 {
    (values.iter().map(|v| v.ln()).sum::<f64>() / values.len() as f64).exp()
}

/// The table of this run: times and ratios per kernel, geometric means and worst cases.
fn print_table(dir: &Path, cases: &[Case], measured: &[usize]) {
    let mut rows = Vec::new();
    for &index in measured {
        let case = &cases[index];
        let times: Option<Vec<f64>> = VARIANTS
            .iter()
            .map(|variant| median_seconds(dir, case.name, variant))
            .collect();
        if let Some(times) = times {
            rows.push((case, times));
        }
    }
    if rows.is_empty() {
        return;
    }
    println!();
    println!(
        "| kernel | language | native | plain wasm | Herd | wasmtime switches | Herd / plain | Herd / native | plain / native |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let (mut over_plain, mut over_native, mut plain_native) = (Vec::new(), Vec::new(), Vec::new());
    for (case, t) in &rows {
        let ratios = (t[2] / t[1], t[2] / t[0], t[1] / t[0]);
        over_plain.push((ratios.0, case.name));
        over_native.push((ratios.1, case.name));
        plain_native.push((ratios.2, case.name));
        println!(
            "| {} | {} | {:.3} s | {:.3} s | {:.3} s | {:.3} s | {:.2}x | {:.2}x | {:.2}x |",
            case.name, case.language, t[0], t[1], t[2], t[3], ratios.0, ratios.1, ratios.2
        );
    }
    let summary = |ratios: &[(f64, &'static str)]| {
        let values: Vec<f64> = ratios.iter().map(|(r, _)| *r).collect();
        let worst = ratios
            .iter()
            .copied()
            .fold((f64::MIN, ""), |a, b| if b.0 > a.0 { b } else { a });
        (geometric_mean(&values), worst)
    };
    let (plain_mean, plain_worst) = summary(&over_plain);
    let (native_mean, native_worst) = summary(&over_native);
    let (floor_mean, floor_worst) = summary(&plain_native);
    println!(
        "| **geometric mean** | | | | | | **{plain_mean:.2}x** | **{native_mean:.2}x** | **{floor_mean:.2}x** |"
    );
    println!(
        "| **worst** | | | | | | {:.2}x ({}) | {:.2}x ({}) | {:.2}x ({}) |",
        plain_worst.0, plain_worst.1, native_worst.0, native_worst.1, floor_worst.0, floor_worst.1
    );
}

fn main() {
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/criterion");
    let builds = tempfile::tempdir().expect("tempdir");
    let mut cases = c_kernels(builds.path());
    cases.extend(rust_samples());
    let mut criterion = Criterion::default()
        .output_directory(&dir)
        .configure_from_args();
    let measured = measure(&mut criterion, &cases);
    criterion.final_summary();
    print_table(&dir, &cases, &measured);
}
