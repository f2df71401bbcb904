//! The benchmark corpus: C and C++ kernels in the shapes real scientific code has (PolyBench/C's
//! linear algebra and stencils, the Benchmarks Game's algorithms, big functions, indirect and
//! virtual calls), each in `benches/corpus/`, each built with Zig's clang (`python3 -m ziglang`,
//! which the README's commands install) at `-O2` both natively and for `wasm32-wasi`, from one
//! source. Every kernel reads its problem size from stdin and prints a checksum, so one build
//! runs the benchmark's size and the test suite's tiny one, and the two builds' outputs are
//! compared byte for byte (`-ffp-contract=off`: no fused multiply-add natively either).
//!
//! `benches/corpus.rs` measures them (native, plain wasm, Herd, wasmtime's switches);
//! `tests/corpus.rs` checks every build agrees on the small inputs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// One kernel of the corpus.
pub struct Kernel {
    /// Its name: the source file's, without the extension.
    pub name: &'static str,
    /// The source file, relative to the corpus directory (or to the repository for a sample's).
    pub source: &'static str,
    /// The benchmark's input (a fraction of a second natively on the machines we measure).
    pub bench_input: &'static str,
    /// A small input for the tests.
    pub test_input: &'static str,
}

impl Kernel {
    fn is_cpp(&self) -> bool {
        self.source.ends_with(".cpp")
    }

    fn path(&self) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(self.source)
    }
}

/// Every kernel, in the order the table lists them.
pub const KERNELS: &[Kernel] = &[
    // PolyBench/C 4.2, written from its definitions.
    Kernel {
        name: "gemm",
        source: "corpus/gemm.c",
        bench_input: "1100 1100 1100",
        test_input: "23 19 17",
    },
    Kernel {
        name: "2mm",
        source: "corpus/2mm.c",
        bench_input: "550 600 650 700",
        test_input: "13 17 19 23",
    },
    Kernel {
        name: "lu",
        source: "corpus/lu.c",
        bench_input: "800",
        test_input: "31",
    },
    Kernel {
        name: "cholesky",
        source: "corpus/cholesky.c",
        bench_input: "800",
        test_input: "29",
    },
    Kernel {
        name: "jacobi-2d",
        source: "corpus/jacobi-2d.c",
        bench_input: "300 1200",
        test_input: "7 30",
    },
    Kernel {
        name: "fdtd-2d",
        source: "corpus/fdtd-2d.c",
        bench_input: "400 800 1000",
        test_input: "6 20 30",
    },
    Kernel {
        name: "floyd-warshall",
        source: "corpus/floyd-warshall.c",
        bench_input: "800",
        test_input: "40",
    },
    Kernel {
        name: "seidel-2d",
        source: "corpus/seidel-2d.c",
        bench_input: "60 800",
        test_input: "5 25",
    },
    // The Computer Language Benchmarks Game.
    Kernel {
        name: "nbody",
        source: "corpus/nbody.c",
        bench_input: "5000000",
        test_input: "1000",
    },
    Kernel {
        name: "spectral-norm",
        source: "../sample-jobs/c/spectral.c",
        bench_input: "1500 10",
        test_input: "40 3",
    },
    Kernel {
        name: "fannkuch-redux",
        source: "corpus/fannkuch-redux.c",
        bench_input: "10",
        test_input: "7",
    },
    Kernel {
        name: "binary-trees",
        source: "corpus/binary-trees.c",
        bench_input: "17",
        test_input: "6",
    },
    Kernel {
        name: "fasta",
        source: "corpus/fasta.c",
        bench_input: "2000000",
        test_input: "1000",
    },
    Kernel {
        name: "k-nucleotide",
        source: "corpus/k-nucleotide.c",
        bench_input: "500000",
        test_input: "2000",
    },
    // Code shaped like what newcomers and quick research programs write.
    Kernel {
        name: "matmul-cpp",
        source: "corpus/matmul.cpp",
        bench_input: "900",
        test_input: "21",
    },
    Kernel {
        name: "shapes-cpp",
        source: "corpus/shapes.cpp",
        bench_input: "100000 400",
        test_input: "50 7",
    },
    Kernel {
        name: "interp",
        source: "corpus/interp.c",
        bench_input: "30000",
        test_input: "300",
    },
    Kernel {
        name: "bigmain",
        source: "corpus/bigmain.c",
        bench_input: "900",
        test_input: "30",
    },
];

/// A kernel built both ways.
pub struct Built {
    /// The `wasm32-wasi` module.
    pub wasm: Vec<u8>,
    /// The native executable.
    pub native: PathBuf,
}

/// The flags both builds get: `-O2` (what a user would pick), no fused multiply-add (so the
/// native build rounds as WebAssembly does), and for C++ no exceptions (WASI has none).
fn flags(kernel: &Kernel) -> Vec<&'static str> {
    let mut flags = vec!["-O2", "-ffp-contract=off"];
    if kernel.is_cpp() {
        flags.push("-fno-exceptions");
    }
    flags
}

/// Builds `kernel` natively and for `wasm32-wasi` into `dir`.
pub fn build(kernel: &Kernel, dir: &Path) -> anyhow::Result<Built> {
    let source = kernel.path();
    let driver = if kernel.is_cpp() { "c++" } else { "cc" };
    let wasm = dir.join(format!("{}.wasm", kernel.name));
    let native = dir.join(kernel.name);
    let args = |target: &[&str], out: &Path| -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = target.iter().map(Into::into).collect();
        args.extend(flags(kernel).into_iter().map(Into::into));
        args.extend([
            source.clone().into_os_string(),
            "-o".into(),
            out.into(),
            "-lm".into(),
        ]);
        args
    };
    let wasm_args = args(&["-target", "wasm32-wasi", "-s"], &wasm);
    let native_args = args(&[], &native);
    herd_samples::zig(driver, &wasm_args)
        .with_context(|| format!("build {} for wasm32-wasi", kernel.name))?;
    herd_samples::zig(driver, &native_args)
        .with_context(|| format!("build {} natively", kernel.name))?;
    Ok(Built {
        wasm: std::fs::read(&wasm).with_context(|| format!("read {}", wasm.display()))?,
        native,
    })
}

/// Runs the native build on `input`: its stdout, or why it failed.
pub fn run_native(native: &Path, input: &str) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    let mut child = Command::new(native)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", native.display()))?;
    child
        .stdin
        .take()
        .context("the child's stdin")?
        .write_all(input.as_bytes())
        .context("write the input")?;
    let output = child.wait_with_output().context("wait for the kernel")?;
    if !output.status.success() {
        bail!(
            "{} exited with {}: {}",
            native.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output.stdout)
}
