//! The sample jobs as WebAssembly modules, built from `sample-jobs/` by this crate's build
//! script. `herd demo`, the end-to-end tests and the benchmarks take their modules from here.

/// The Mandelbrot tile renderer (`sample-jobs/mandelbrot`).
pub const MANDELBROT_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/mandelbrot.wasm"));

/// Writes a tile description in the Mandelbrot job's input format.
pub fn mandelbrot_input(
    (x_min, y_min): (f64, f64),
    (x_max, y_max): (f64, f64),
    (width, height): (u32, u32),
    max_iter: u32,
) -> String {
    format!("{x_min:?} {y_min:?} {x_max:?} {y_max:?} {width} {height} {max_iter}\n")
}
