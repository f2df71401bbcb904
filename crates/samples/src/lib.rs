//! The sample jobs as WebAssembly modules, built from `sample-jobs/` by this crate's build
//! script. `herd demo`, the end-to-end tests and the benchmarks take their modules from here,
//! and the demo its picture ([`demo`]).

pub mod demo;

/// The Mandelbrot tile renderer (`sample-jobs/mandelbrot`): f64, loop-heavy.
pub const MANDELBROT_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/mandelbrot.wasm"));

/// Primes over a range by trial division (`sample-jobs/primes`): integer-only.
pub const PRIMES_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/primes.wasm"));

/// A Monte Carlo estimate of pi from `random_get` (`sample-jobs/montecarlo`): the seed matters.
pub const MONTECARLO_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/montecarlo.wasm"));

/// An n-body simulation writing raw f64 bits (`sample-jobs/nbody`): NaN bits are visible.
pub const NBODY_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/nbody.wasm"));

/// A fractal-flame renderer writing a PPM image (`sample-jobs/flame`): f64 with sin/cos.
pub const FLAME_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/flame.wasm"));

/// Every sample job: (name, module, a small input that runs in well under a second).
pub const ALL: &[(&str, &[u8], &str)] = &[
    (
        "mandelbrot",
        MANDELBROT_WASM,
        "-2.0 -1.0 1.0 1.0 64 48 200\n",
    ),
    ("primes", PRIMES_WASM, "2 200000\n"),
    ("montecarlo", MONTECARLO_WASM, "200000\n"),
    ("nbody", NBODY_WASM, "32 50 0.001 0.01 42\n"),
    ("flame", FLAME_WASM, "96 64 200000 7\n"),
];

/// Writes a tile description in the Mandelbrot job's input format.
pub fn mandelbrot_input(
    (x_min, y_min): (f64, f64),
    (x_max, y_max): (f64, f64),
    (width, height): (u32, u32),
    max_iter: u32,
) -> String {
    format!("{x_min:?} {y_min:?} {x_max:?} {y_max:?} {width} {height} {max_iter}\n")
}

/// Why Zig's compiler did not build what it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum ZigError {
    #[error(
        "cannot run `python3 -m ziglang` (`pip install ziglang`; the README's commands install it): {0}"
    )]
    Missing(std::io::Error),
    #[error("zig {driver} failed: {stderr}")]
    Failed { driver: String, stderr: String },
}

/// Runs Zig's C or C++ compiler, `python3 -m ziglang cc|c++ ARGS` (`driver` is `cc` or `c++`;
/// the `ziglang` package from PyPI, which the README's commands install): how the tests and the
/// benchmarks build C and C++ programs, for `wasm32-wasi` and natively, from one source.
pub fn zig<A: AsRef<std::ffi::OsStr>>(driver: &str, args: &[A]) -> Result<(), ZigError> {
    let output = std::process::Command::new("python3")
        .args(["-m", "ziglang", driver])
        .args(args)
        .output()
        .map_err(ZigError::Missing)?;
    if !output.status.success() {
        return Err(ZigError::Failed {
            driver: driver.to_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(())
}
