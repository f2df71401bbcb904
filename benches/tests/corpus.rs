//! The benchmark corpus on its small inputs: every kernel's native build, its WebAssembly build
//! in Herd's sandbox (the instrumentation's rewrite), as submitted under wasmtime's own
//! switches (the oracle), and as submitted with nothing (the benchmarks' floor) all print the
//! same bytes. So the table in BENCHMARKS.md compares runs that computed the same thing, and the
//! instrumentation is checked on compilers' output that no one here shaped.

use herd_benches::corpus::{KERNELS, build, run_native};
use herd_protocol::{Outcome, Status};
use herd_sandbox::{Limits, Sandbox};

#[test]
fn every_kernel_prints_the_same_bytes_natively_in_herd_plain_and_under_the_oracle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let herd = Sandbox::new().expect("engine");
    let plain = Sandbox::plain().expect("plain engine");
    let oracle = Sandbox::oracle().expect("oracle engine");
    let limits = Limits::default();
    for kernel in KERNELS {
        let built = build(kernel, dir.path()).expect("builds");
        let native = run_native(&built.native, kernel.test_input).expect("runs natively");
        assert!(
            !native.is_empty(),
            "{}: the native build printed nothing",
            kernel.name
        );
        let mut fuel = None;
        for (engine, sandbox) in [("herd", &herd), ("plain", &plain), ("oracle", &oracle)] {
            let module = sandbox.admit(&built.wasm).expect("admitted");
            let run = sandbox.run(&module, kernel.test_input.as_bytes(), 0, &limits);
            match &run.outcome {
                Outcome::Countable(result) => {
                    assert_eq!(result.status, Status::Success, "{} {engine}", kernel.name);
                    if engine == "herd" {
                        fuel = Some(result.fuel);
                    }
                }
                Outcome::Aborted(reason) => panic!("{} {engine}: {reason:?}", kernel.name),
            }
            assert!(
                run.output == native,
                "{} {engine}: {:?}, natively {:?}",
                kernel.name,
                String::from_utf8_lossy(&run.output),
                String::from_utf8_lossy(&native)
            );
        }
        // Herd's fuel is the module's and the input's alone: a fresh engine counts the same.
        let again = Sandbox::new().expect("engine");
        let module = again.admit(&built.wasm).expect("admitted");
        let run = again.run(&module, kernel.test_input.as_bytes(), 0, &limits);
        match run.outcome {
            Outcome::Countable(result) => assert_eq!(Some(result.fuel), fuel, "{}", kernel.name),
            Outcome::Aborted(reason) => panic!("{}: {reason:?}", kernel.name),
        }
    }
}
