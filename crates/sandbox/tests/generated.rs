//! Differential testing of the instrumentation on a generated corpus: wasm-smith modules (any
//! instruction of the allowed features, random constants so NaNs with every payload and sign,
//! every function, global and memory exported) are run as submitted under wasmtime's NaN
//! canonicalisation (the oracle) and rewritten by `herd-instrument` with the switch off. Every
//! exported function is called in turn with zero arguments; the results' bits, the traps, the
//! final memory and the exported globals must be identical.
//!
//! wasm-smith's `ensure_termination` bounds loops and calls (a deterministic `unreachable` when
//! its own budget runs out), so no run depends on either side's fuel. Native stack exhaustion in
//! the oracle and the pass's call-depth budget are each side's own resource limit: when either
//! ends a call with `stack_overflow`, the comparison stops at that call.
//!
//! The bounded run here is part of the test suite (`HERD_GENERATED_CASES`, 400 by default). The
//! long run is the same test with more cases, on a release build:
//! `HERD_GENERATED_CASES=100000 HERD_GENERATED_SEED=7 cargo test --release -p herd-sandbox --test generated`.

use arbitrary::Unstructured;
use wasmtime::{Config, Engine, Instance, Linker, Module, Store, Trap, Val, ValType};

/// What one module did.
#[derive(Debug, PartialEq)]
struct Observed {
    /// Per exported function called: its results' bits, or the trap it ended with.
    calls: Vec<(String, Result<Vec<u128>, String>)>,
    /// The exported memory's bytes after the calls.
    memory: Vec<u8>,
    /// The exported globals' bits after the calls.
    globals: Vec<(String, u128)>,
}

const STACK_OVERFLOW: &str = "StackOverflow";

fn engine(oracle: bool) -> Engine {
    let mut config = Config::new();
    config.wasm_features(wasmtime::WasmFeatures::all(), false);
    config.wasm_features(
        wasmtime::WasmFeatures::from_bits_truncate(herd_instrument::supported_features().bits()),
        true,
    );
    config.cranelift_nan_canonicalization(oracle);
    config.async_stack_size(herd_sandbox::MAX_WASM_STACK_BYTES + (1 << 20));
    config.max_wasm_stack(if oracle {
        herd_sandbox::ORACLE_WASM_STACK_BYTES
    } else {
        herd_sandbox::MAX_WASM_STACK_BYTES
    });
    Engine::new(&config).expect("engine")
}

fn bits(value: &Val) -> u128 {
    match value {
        Val::I32(v) => *v as u32 as u128,
        Val::I64(v) => *v as u64 as u128,
        Val::F32(v) => *v as u128,
        Val::F64(v) => *v as u128,
        Val::V128(v) => v.as_u128(),
        Val::FuncRef(f) => u128::from(f.is_some()),
        Val::ExternRef(e) => u128::from(e.is_some()),
        _ => u128::MAX,
    }
}

fn zero(ty: &ValType) -> Val {
    Val::default_for_ty(ty).unwrap_or(Val::I32(0))
}

fn is_nan(value: &Val) -> bool {
    match value {
        Val::F32(v) => f32::from_bits(*v).is_nan(),
        Val::F64(v) => f64::from_bits(*v).is_nan(),
        _ => false,
    }
}

/// Instantiates `wasm` and calls every exported function. `Err` if instantiation failed.
fn observe(engine: &Engine, wasm: &[u8], nans: &mut u32) -> Result<Observed, String> {
    let module = Module::new(engine, wasm).map_err(|e| format!("compile: {e:#}"))?;
    let mut linker = Linker::<()>::new(engine);
    linker
        .func_wrap(
            herd_instrument::HOST_MODULE,
            herd_instrument::REFUEL,
            |mut caller: wasmtime::Caller<'_, ()>| -> wasmtime::Result<()> {
                // Fuel is not under test here: every refuel grants plenty.
                let global = caller
                    .get_export(herd_instrument::FUEL_GLOBAL)
                    .and_then(|e| e.into_global())
                    .ok_or_else(|| wasmtime::Error::msg("no fuel global"))?;
                global.set(&mut caller, Val::I64(1 << 40))
            },
        )
        .expect("refuel");
    linker
        .func_wrap(
            herd_instrument::HOST_MODULE,
            herd_instrument::STACK_EXHAUSTED,
            || -> wasmtime::Result<()> { Err(wasmtime::Error::new(Trap::StackOverflow)) },
        )
        .expect("stack_exhausted");
    let mut store = Store::new(engine, ());
    let instance: Instance = linker
        .instantiate(&mut store, &module)
        .map_err(|e| format!("instantiate: {}", trap_name(&e)))?;
    let exports: Vec<(String, wasmtime::ExternType)> = module
        .exports()
        .filter(|e| !e.name().starts_with(herd_instrument::RESERVED_PREFIX))
        .map(|e| (e.name().to_string(), e.ty()))
        .collect();
    let mut calls = Vec::new();
    for (name, ty) in &exports {
        let wasmtime::ExternType::Func(ty) = ty else {
            continue;
        };
        let Some(func) = instance.get_func(&mut store, name) else {
            continue;
        };
        let args: Vec<Val> = ty.params().map(|t| zero(&t)).collect();
        let mut results: Vec<Val> = ty.results().map(|t| zero(&t)).collect();
        match func.call(&mut store, &args, &mut results) {
            Ok(()) => {
                *nans += results.iter().filter(|v| is_nan(v)).count() as u32;
                calls.push((name.clone(), Ok(results.iter().map(bits).collect())));
            }
            Err(error) => {
                // After a trap the instance's own bookkeeping (the pass's depth global) is not
                // unwound: stop calling here, as a unit would have ended.
                calls.push((name.clone(), Err(trap_name(&error))));
                break;
            }
        }
    }
    let mut memory = Vec::new();
    let mut globals = Vec::new();
    for (name, _) in &exports {
        match instance.get_export(&mut store, name) {
            Some(wasmtime::Extern::Memory(m)) => memory.extend_from_slice(m.data(&store)),
            Some(wasmtime::Extern::Global(g)) => {
                let value = g.get(&mut store);
                *nans += u32::from(is_nan(&value));
                globals.push((name.clone(), bits(&value)));
            }
            _ => {}
        }
    }
    Ok(Observed {
        calls,
        memory,
        globals,
    })
}

fn trap_name(error: &wasmtime::Error) -> String {
    match error.downcast_ref::<Trap>() {
        Some(trap) => format!("{trap:?}"),
        None => format!("{error:#}"),
    }
}

/// SplitMix64, NaN-heavy: the corpus is a function of the seed alone.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let mut word = z ^ (z >> 31);
        // One word in four carries NaN bit patterns (an f64 NaN, whose low half is an f32 NaN,
        // payloads and signs random), so constants are often NaNs: random bits almost never are.
        if word.is_multiple_of(4) {
            word |= 0x7ff0_0000_7f80_0001;
        }
        out.extend_from_slice(&word.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn smith_config() -> wasm_smith::Config {
    wasm_smith::Config {
        max_imports: 0,
        min_funcs: 3,
        max_funcs: 12,
        max_instructions: 200,
        // Generated data and element segments mostly miss the memory and fail instantiation.
        max_data_segments: 2,
        max_element_segments: 0,
        min_memories: 1,
        max_memories: 1,
        max_memory32_bytes: 1 << 20,
        memory_max_size_required: true,
        max_tables: 2,
        max_table_elements: 64,
        max_globals: 8,
        export_everything: true,
        canonicalize_nans: false,
        allow_floats: true,
        // Exactly the features Herd allows (`herd_instrument::supported_features`).
        bulk_memory_enabled: true,
        multi_value_enabled: true,
        // Reference-typed parameters need the GC types Herd does not allow; with them on,
        // most generated modules would be refused by both sides and prove nothing.
        reference_types_enabled: false,
        saturating_float_to_int_enabled: true,
        sign_extension_ops_enabled: true,
        exceptions_enabled: false,
        gc_enabled: false,
        memory64_enabled: false,
        relaxed_simd_enabled: false,
        simd_enabled: false,
        tail_call_enabled: false,
        threads_enabled: false,
        extended_const_enabled: false,
        wide_arithmetic_enabled: false,
        custom_page_sizes_enabled: false,
        shared_everything_threads_enabled: false,
        custom_descriptors_enabled: false,
        ..wasm_smith::Config::default()
    }
}

#[test]
fn generated_modules_match_the_oracle() {
    let cases: u64 = std::env::var("HERD_GENERATED_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let seed: u64 = std::env::var("HERD_GENERATED_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // A big native stack for the thread, so the pass's depth budget is what limits recursion.
    let summary = std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || run_corpus(seed, cases))
        .expect("thread")
        .join()
        .expect("the corpus ran");
    let (compared, calls, nans, canonicalised, stack_limited) = summary;
    eprintln!(
        "generated corpus: {compared} modules compared, {calls} calls, {nans} NaN results, \
         {canonicalised} canonicalisations placed, {stack_limited} stopped at a stack limit"
    );
    assert!(
        compared >= cases * 3 / 4,
        "most modules are usable: {compared}/{cases}"
    );
    assert!(nans > 0, "the corpus produces NaNs (results and globals)");
    assert!(canonicalised > 0, "the corpus needs canonicalisation");
}

fn run_corpus(seed: u64, cases: u64) -> (u64, u64, u32, u32, u64) {
    let oracle = engine(true);
    let pass = engine(false);
    let (mut compared, mut calls, mut nans, mut canonicalised, mut stack_limited) =
        (0u64, 0u64, 0u32, 0u32, 0u64);
    for case in 0..cases {
        let case_seed = seed.wrapping_mul(1_000_003).wrapping_add(case);
        let data = bytes(case_seed, 4096 + (case_seed % 8) as usize * 1024);
        let mut u = Unstructured::new(&data);
        let Ok(mut module) = wasm_smith::Module::new(smith_config(), &mut u) else {
            continue;
        };
        if module.ensure_termination(2_000).is_err() {
            continue;
        }
        let wasm = module.to_bytes();
        // A module Herd's features do not allow (a reference-typed parameter needs the GC
        // types) is refused by both.
        let allowed = Module::validate(&oracle, &wasm).is_ok();
        let rewritten = match (allowed, herd_instrument::instrument(&wasm)) {
            (true, Ok(rewritten)) => rewritten,
            (false, Err(_)) => continue,
            (true, Err(e)) => panic!("case {case_seed}: the pass refused a valid module: {e}"),
            (false, Ok(_)) => panic!("case {case_seed}: the pass took a module the oracle refuses"),
        };
        canonicalised +=
            rewritten.report.canonicalised_at_operation + rewritten.report.canonicalised_at_use;
        let mut ignored = 0;
        let expected = observe(&oracle, &wasm, &mut nans);
        let actual = observe(&pass, &rewritten.wasm, &mut ignored);
        match (expected, actual) {
            (Err(a), Err(b)) => assert_eq!(a, b, "case {case_seed}: instantiation"),
            (Ok(mut a), Ok(mut b)) => {
                let limit = |o: &Observed| {
                    o.calls
                        .iter()
                        .position(|(_, r)| matches!(r, Err(t) if t == STACK_OVERFLOW))
                };
                if let Some(at) = limit(&a).into_iter().chain(limit(&b)).min() {
                    // Each side's own stack limit: compare the calls before it.
                    stack_limited += 1;
                    a.calls.truncate(at);
                    b.calls.truncate(at);
                    assert_eq!(a.calls, b.calls, "case {case_seed}: calls before the limit");
                } else {
                    assert_eq!(a, b, "case {case_seed}");
                }
                calls += a.calls.len() as u64;
            }
            (a, b) => panic!("case {case_seed}: oracle {a:?}, pass {b:?}"),
        }
        compared += 1;
    }
    (compared, calls, nans, canonicalised, stack_limited)
}
