//! The Monte Carlo work unit: `samples` on stdin, the estimate on stdout (see `kernel.rs`).
//! Random bytes come from WASI `random_get` under wasm32-wasip1 (seeded by Herd), and from a
//! fixed SplitMix64 stream in the native build (the speed baseline).

use std::io::{Read, Write};

#[cfg(target_os = "wasi")]
mod host {
    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    unsafe extern "C" {
        fn random_get(buf: *mut u8, len: usize) -> u16;
    }

    /// Fills `buffer` from the host; a failure ends the unit with exit code 4.
    pub(crate) fn fill(buffer: &mut [u8]) {
        // SAFETY: the pointer and length describe `buffer`, which the host writes in full.
        let errno = unsafe { random_get(buffer.as_mut_ptr(), buffer.len()) };
        if errno != 0 {
            std::process::exit(4);
        }
    }
}

fn main() {
    let mut text = String::new();
    let _ = std::io::stdin().take(1024).read_to_string(&mut text);
    let samples = montecarlo::parse(&text).unwrap_or_else(|message| {
        eprintln!("bad input: {message}");
        std::process::exit(2)
    });
    #[cfg(target_os = "wasi")]
    let (hits, pi) = montecarlo::estimate(samples, host::fill);
    #[cfg(not(target_os = "wasi"))]
    let (hits, pi) = montecarlo::estimate(samples, montecarlo::splitmix(0));
    let line = montecarlo::format(samples, hits, pi);
    if std::io::stdout().write_all(line.as_bytes()).is_err() {
        std::process::exit(3);
    }
}
