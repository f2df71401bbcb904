//! The differential harness shared by the generated-corpus test (`tests/generated.rs`) and the
//! fuzz target (`fuzz/fuzz_targets/differential.rs`): a module is run as submitted under
//! wasmtime's NaN canonicalisation (the oracle) and rewritten by `herd-instrument` with the
//! switch off; every exported function is called in turn with zero arguments, and the results'
//! bits, the traps, the final memory and the exported globals must be identical.
//!
//! Native stack exhaustion in the oracle and the pass's call-depth budget are each side's own
//! resource limit: when either ends a call with `stack_overflow`, the comparison stops at that
//! call.

use wasmtime::{Config, Engine, Instance, Linker, Module, Store, Trap, Val, ValType};

/// What one module did.
#[derive(Debug, PartialEq)]
pub(crate) struct Observed {
    /// Per exported function called: its results' bits, or the trap it ended with.
    calls: Vec<(String, Result<Vec<u128>, String>)>,
    /// The exported memory's bytes after the calls.
    memory: Vec<u8>,
    /// The exported globals' bits after the calls.
    globals: Vec<(String, u128)>,
}

const STACK_OVERFLOW: &str = "StackOverflow";

/// The oracle's engine and the instrumentation's.
pub(crate) struct Engines {
    oracle: Engine,
    pass: Engine,
}

impl Engines {
    pub(crate) fn new() -> Self {
        Self {
            oracle: engine(true),
            pass: engine(false),
        }
    }
}

/// What comparing one module found, when both sides agreed.
#[derive(Debug, Default)]
pub(crate) struct Agreement {
    pub(crate) calls: u64,
    /// NaNs among the oracle's results and exported globals.
    pub(crate) nans: u32,
    #[allow(dead_code)] // counted by the bounded test; the fuzz target only looks for differences
    pub(crate) canonicalisations: u32,
    /// One side's stack limit ended a call, so the comparison stopped there.
    pub(crate) stack_limited: bool,
}

/// Compares the oracle and the instrumentation on `wasm`: `Ok(None)` when Herd's features do
/// not allow the module (both refuse it), `Err` describing the first difference.
pub(crate) fn compare(engines: &Engines, wasm: &[u8]) -> Result<Option<Agreement>, String> {
    // A module Herd's features do not allow (a reference-typed parameter needs the GC types) is
    // refused by both.
    let allowed = Module::validate(&engines.oracle, wasm).is_ok();
    let rewritten = match (allowed, herd_instrument::instrument(wasm)) {
        (true, Ok(rewritten)) => rewritten,
        (false, Err(_)) => return Ok(None),
        (true, Err(e)) => return Err(format!("the pass refused a valid module: {e}")),
        (false, Ok(_)) => return Err("the pass took a module the oracle refuses".into()),
    };
    let mut agreement = Agreement {
        canonicalisations: rewritten.report.canonicalised_at_operation
            + rewritten.report.canonicalised_at_use,
        ..Agreement::default()
    };
    let mut ignored = 0;
    let expected = observe(&engines.oracle, wasm, &mut agreement.nans);
    let actual = observe(&engines.pass, &rewritten.wasm, &mut ignored);
    match (expected, actual) {
        (Err(a), Err(b)) if a == b => {}
        (Ok(mut a), Ok(mut b)) => {
            let limit = |o: &Observed| {
                o.calls
                    .iter()
                    .position(|(_, r)| matches!(r, Err(t) if t == STACK_OVERFLOW))
            };
            if let Some(at) = limit(&a).into_iter().chain(limit(&b)).min() {
                // Each side's own stack limit: compare the calls before it.
                agreement.stack_limited = true;
                a.calls.truncate(at);
                b.calls.truncate(at);
                if a.calls != b.calls {
                    return Err(format!(
                        "calls before the stack limit: oracle {:?}, pass {:?}",
                        a.calls, b.calls
                    ));
                }
            } else if a != b {
                return Err(format!("oracle {a:?}\npass {b:?}"));
            }
            agreement.calls = a.calls.len() as u64;
        }
        (a, b) => return Err(format!("oracle {a:?}, pass {b:?}")),
    }
    Ok(Some(agreement))
}

/// wasm-smith's configuration: exactly the features Herd allows.
pub(crate) fn smith_config() -> wasm_smith::Config {
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
