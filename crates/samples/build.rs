//! Builds the sample jobs in `sample-jobs/` for wasm32-wasip1 and leaves the modules in OUT_DIR,
//! so `herd demo`, the tests and the benchmarks need no set-up step. Adds the target with rustup
//! first if the toolchain lacks it.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip1";
const JOBS: &[&str] = &["mandelbrot", "primes", "montecarlo", "nbody", "flame"];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let jobs_dir = manifest_dir.join("../../sample-jobs");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    println!(
        "cargo:rerun-if-changed={}",
        jobs_dir.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        jobs_dir.join("Cargo.lock").display()
    );
    for job in JOBS {
        println!("cargo:rerun-if-changed={}", jobs_dir.join(job).display());
    }
    ensure_target();
    // A separate target directory: the outer build holds the lock on the workspace's own.
    let target_dir = out_dir.join("sample-jobs-target");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--target", TARGET, "--manifest-path"])
        .arg(jobs_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        // Flags meant for the host build must not leak into the guest build.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status()
        .expect("run cargo to build the sample jobs");
    assert!(
        status.success(),
        "building the sample jobs for {TARGET} failed"
    );
    for job in JOBS {
        let built = target_dir
            .join(TARGET)
            .join("release")
            .join(format!("{job}.wasm"));
        copy(&built, &out_dir.join(format!("{job}.wasm")));
    }
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
}

/// Adds the wasm32-wasip1 target to the active toolchain if it is missing.
fn ensure_target() {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let installed = sysroot.is_some_and(|root| root.join("lib/rustlib").join(TARGET).is_dir());
    if installed {
        return;
    }
    let mut rustup = Command::new("rustup");
    rustup.args(["target", "add", TARGET]);
    if let Some(toolchain) = std::env::var_os("RUSTUP_TOOLCHAIN") {
        rustup.arg("--toolchain").arg(toolchain);
    }
    let status = rustup
        .status()
        .expect("run rustup to add the wasm32-wasip1 target");
    assert!(status.success(), "rustup target add {TARGET} failed");
}
