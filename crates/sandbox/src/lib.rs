//! The sandbox: everything Herd does with wasmtime, behind Herd's own types.
//!
//! A work unit is a WASI preview 1 core module with `_start`. Its input arrives on stdin, its output
//! is what it writes to stdout (up to a cap), and nothing else of the host is visible: no files,
//! sockets, environment or arguments; clocks are fixed and `random_get` returns bytes derived from
//! the unit's seed. Every module is rewritten by Herd's deterministic instrumentation
//! (`herd-instrument`: NaN canonicalisation where NaN bits can become visible, fuel per basic
//! block, a call-depth budget) before it is compiled, and the Wasm features are listed
//! explicitly, so a run is a pure function of (module, input, seed, limits): the same [`Outcome`]
//! and the same fuel on every host, which is what lets replicas on strangers' machines agree bit
//! for bit.
//!
//! [`Sandbox::oracle`] runs modules unrewritten under wasmtime's own switches instead (NaN
//! canonicalisation of every float operation, wasmtime's fuel): five times slower on float code,
//! and kept only as the oracle the instrumentation is tested against. [`Sandbox::plain`] runs
//! them unrewritten with neither: not deterministic, so never for units, only the floor that
//! benchmarks measure the instrumentation's cost against.
//!
//! Architecture Invariant: no wasmtime type appears in this crate's public API. Callers see
//! [`AdmittedModule`], [`Limits`], [`Execution`] and the protocol's [`Outcome`].
//!
//! Architecture Invariant: `herd run` and the worker run units through the same [`Sandbox::run`].

mod admission;
mod control;
mod disk_cache;
mod meter;
mod wasi;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herd_protocol::{AbortReason, ContentHash, Outcome, RunResult, Status, TrapKind};
use wasmtime::{Config, Engine, InstancePre, Linker, Module, Store, Trap, WasmBacktrace};

pub use admission::{AdmissionError, MAX_MODULE_BYTES, module_bytes};
pub use control::{Controlled, RunControl};
use wasi::{Exit, FuelKeeper, HostState, MemoryLimitExceeded, OutputLimitExceeded};

/// The version of the instrumentation this sandbox applies; replicas of a unit must agree on it.
pub const INSTRUMENTATION_VERSION: u32 = herd_instrument::VERSION;

/// Fuel between two points where a run yields to its caller: the pause latency is the time this
/// much fuel takes to burn (a few milliseconds on the machines we measured). The watchdog is
/// checked at the same points.
pub const YIELD_FUEL: u64 = 5_000_000;

/// Units one sandbox can run at once: the pooling allocator keeps this many instance, memory and
/// stack slots ready, so starting a unit allocates nothing. A unit started beyond it waits for
/// nothing and fails with a host-failure abort, so callers run at most this many at a time.
pub const MAX_CONCURRENT_UNITS: u32 = 256;

/// Fuel charged for every host (WASI) call, on top of one unit per byte it moves: a module that
/// calls the host in a tight loop spends its budget as surely as one that computes.
pub const HOST_CALL_FUEL: u64 = 100;

/// The largest memory limit a unit may ask for: 4 GiB, all a wasm32 memory can address.
pub const MAX_MEMORY_BYTES: u64 = 4 << 30;

/// The largest output limit a unit may ask for: 16 MiB (outputs travel in one frame).
pub const MAX_OUTPUT_BYTES: u64 = 16 << 20;

/// The native stack a unit's wasm may use. The instrumentation's call-depth budget
/// ([`herd_instrument::STACK_BUDGET_SLOTS`] slots of 16 bytes, 2 MiB) is what ends deep
/// recursion, the same way on every host; this is eight times that, so the native stack is never
/// what runs out (a frame would have to take eight times the space its locals and operands need).
pub const MAX_WASM_STACK_BYTES: usize = 16 << 20;

/// The native stack of the oracle ([`Sandbox::oracle`]) and of [`Sandbox::plain`], which have
/// no call-depth budget: deep recursion ends where this runs out.
pub const ORACLE_WASM_STACK_BYTES: usize = 512 * 1024;

/// The limits a unit runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Fuel for the entry call: about one unit per WebAssembly operation.
    pub fuel: u64,
    /// Maximum linear memory in bytes.
    pub memory_bytes: u64,
    /// Maximum bytes written to stdout.
    pub output_bytes: u64,
    /// Wall-clock time the unit may spend running (paused time is not counted) before the
    /// watchdog aborts it, checked every [`YIELD_FUEL`] fuel. An abort, never a countable
    /// outcome: fuel is the deterministic limit, the watchdog only catches a host too slow to
    /// burn it in time.
    pub watchdog: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: 10_000_000_000,
            memory_bytes: 256 << 20,
            output_bytes: 8 << 20,
            watchdog: Duration::from_secs(600),
        }
    }
}

impl Limits {
    /// Checks every limit is within what the sandbox allows, naming the first that is not. A
    /// worker refuses an assignment that fails this rather than run it under other limits than
    /// its replicas elsewhere.
    pub fn check(&self) -> Result<(), String> {
        if self.fuel == 0 {
            return Err("fuel limit 0: a unit needs some fuel".into());
        }
        if self.memory_bytes > MAX_MEMORY_BYTES {
            return Err(format!(
                "memory limit {} bytes is over the maximum of {MAX_MEMORY_BYTES}",
                self.memory_bytes
            ));
        }
        if self.output_bytes > MAX_OUTPUT_BYTES {
            return Err(format!(
                "output limit {} bytes is over the maximum of {MAX_OUTPUT_BYTES}",
                self.output_bytes
            ));
        }
        Ok(())
    }
}

/// A module that passed admission and is compiled and pre-linked, ready to instantiate.
#[derive(Clone)]
pub struct AdmittedModule {
    pre: InstancePre<HostState>,
    initial_memory_bytes: u64,
    /// For a module the instrumentation rewrote: functions the original imported (to name a
    /// trapping function by its original index). `None` under the oracle.
    original_imports: Option<u32>,
}

impl AdmittedModule {
    /// The linear memory the module declares it starts with.
    pub fn initial_memory_bytes(&self) -> u64 {
        self.initial_memory_bytes
    }

    /// Refuses the module for a batch whose memory limit it could never run under: it would end
    /// every unit with `memory_limit` before running a single instruction.
    pub fn check_memory_limit(&self, limit_bytes: u64) -> Result<(), AdmissionError> {
        if self.initial_memory_bytes > limit_bytes {
            return Err(AdmissionError::InitialMemoryOverLimit {
                declared: self.initial_memory_bytes,
                limit: limit_bytes,
            });
        }
        Ok(())
    }
}

/// What one run produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Execution {
    pub outcome: Outcome,
    /// The bytes written to stdout (empty for an abort).
    pub output: Vec<u8>,
}

/// Failure to set up the engine itself (never the fault of a module).
#[derive(Debug, thiserror::Error)]
#[error("cannot configure the WebAssembly engine: {0}")]
pub struct EngineError(String);

/// How a sandbox makes runs deterministic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Determinism {
    /// Herd's instrumentation rewrites every module; the engine's switches are off.
    Instrumentation,
    /// wasmtime's switches on the module as submitted: the test oracle.
    EngineSwitches,
    /// Nothing: the module as submitted, no canonicalisation, no fuel. The benchmarks' floor.
    Plain,
}

/// The wasmtime engine with Herd's deterministic configuration, its WASI linker, and an in-memory
/// cache of compiled modules keyed by content hash. Cheap to share across threads.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<HostState>,
    compiled: Mutex<HashMap<ContentHash, AdmittedModule>>,
    /// Compiled modules kept across restarts, if the caller gave a directory.
    disk: Option<disk_cache::DiskCache>,
    determinism: Determinism,
}

impl Sandbox {
    /// Builds the engine, with a cache of compiled modules in memory only.
    pub fn new() -> Result<Self, EngineError> {
        Self::build(None, Determinism::Instrumentation)
    }

    /// Builds the engine, keeping compiled modules in `dir` too (created, mode 0700), so they are
    /// compiled once per host rather than once per start.
    pub fn with_disk_cache(dir: &std::path::Path) -> Result<Self, EngineError> {
        Self::build(Some(dir), Determinism::Instrumentation)
    }

    /// The oracle: modules run as submitted, under wasmtime's NaN canonicalisation of every
    /// float operation and wasmtime's fuel. Its outputs are what the instrumentation must
    /// reproduce; its fuel counts differently (and costs more), so it never runs real units.
    pub fn oracle() -> Result<Self, EngineError> {
        Self::build(None, Determinism::EngineSwitches)
    }

    /// The floor: modules run as submitted, with no NaN canonicalisation and no fuel, as a plain
    /// wasmtime runs them. Runs are not deterministic (NaN bits follow the CPU), report no fuel
    /// (0) and are never cut short by fuel or the watchdog (nothing yields), so this never runs
    /// units: benchmarks measure what the instrumentation costs against it.
    pub fn plain() -> Result<Self, EngineError> {
        Self::build(None, Determinism::Plain)
    }

    /// Every setting that could make two hosts disagree is set explicitly here, in one place.
    fn build(
        cache_dir: Option<&std::path::Path>,
        determinism: Determinism,
    ) -> Result<Self, EngineError> {
        let mut config = Config::new();
        // Start from nothing and allow exactly the features listed in `allowed_features`:
        // wasmtime's defaults grow with each release, and a feature we have not vetted for
        // determinism must not slip in with an upgrade.
        config.wasm_features(wasmtime::WasmFeatures::all(), false);
        config.wasm_features(admission::allowed_features(), true);
        let oracle = determinism == Determinism::EngineSwitches;
        config.cranelift_nan_canonicalization(oracle);
        config.consume_fuel(oracle);
        // Without the instrumentation's call-depth budget, deep recursion ends where the
        // native stack does.
        let stack = if determinism == Determinism::Instrumentation {
            MAX_WASM_STACK_BYTES
        } else {
            ORACLE_WASM_STACK_BYTES
        };
        config.max_wasm_stack(stack);
        // The pass hints its own branches (refuel, canonical NaN, the call-depth budget) as
        // unlikely, so Cranelift lays those paths out after the hot code. Hints are advisory:
        // they change where code goes, never what it computes.
        config.wasm_branch_hinting(true);
        // Host calls run on the same stack above the deepest wasm frame.
        config.async_stack_size(stack + (1 << 20));
        // Pre-allocated slots for instances, memories, tables and async stacks: the per-unit cost
        // of a cached module stays in microseconds. Memory slots are address space, reserved for
        // the largest memory a unit may ask for, and committed only as a unit touches them.
        let mut pool = wasmtime::PoolingAllocationConfig::new();
        pool.total_core_instances(MAX_CONCURRENT_UNITS)
            .total_memories(MAX_CONCURRENT_UNITS)
            .total_tables(MAX_CONCURRENT_UNITS)
            .total_stacks(MAX_CONCURRENT_UNITS)
            .max_memory_size(MAX_MEMORY_BYTES as usize)
            .table_elements(wasi::MAX_TABLE_ELEMENTS);
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| EngineError(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasi::add_to_linker(&mut linker).map_err(|e| EngineError(format!("{e:#}")))?;
        let disk = match cache_dir {
            Some(dir) => Some(disk_cache::DiskCache::open(dir, &engine).map_err(|e| {
                EngineError(format!("compiled-module cache at {}: {e}", dir.display()))
            })?),
            None => None,
        };
        Ok(Self {
            engine,
            linker,
            compiled: Mutex::new(HashMap::new()),
            disk,
            determinism,
        })
    }

    /// Checks a module (binary bytes) against Herd's admission rules and compiles it, or returns
    /// the compiled module from the cache. The refusal names what was wrong.
    pub fn admit(&self, wasm: &[u8]) -> Result<AdmittedModule, AdmissionError> {
        let hash = ContentHash::of(wasm);
        if let Some(module) = self.cache().get(&hash) {
            return Ok(module.clone());
        }
        admission::check_structure(wasm)?;
        let instrumented = self.determinism == Determinism::Instrumentation;
        let cached = self
            .disk
            .as_ref()
            .and_then(|disk| disk.load(&self.engine, &hash));
        let module = match cached {
            // Only this sandbox's own rewrites, under the same pass version, are in the cache.
            Some(module) => module,
            None => {
                let rewritten = if instrumented {
                    Some(herd_instrument::instrument(wasm).map_err(AdmissionError::from)?)
                } else {
                    None
                };
                let code = rewritten.as_ref().map_or(wasm, |r| &r.wasm[..]);
                let module = Module::new(&self.engine, code)
                    .map_err(|e| AdmissionError::Invalid(format!("{e:#}")))?;
                if let Some(disk) = &self.disk {
                    disk.store(&hash, &module);
                }
                module
            }
        };
        admission::check_interface(&module, instrumented)?;
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| AdmissionError::Invalid(format!("{e:#}")))?;
        let admitted = AdmittedModule {
            initial_memory_bytes: admission::initial_memory_bytes(&module),
            pre,
            // The rewrite appends its own imports after the module's.
            original_imports: instrumented.then(|| {
                let imported = module
                    .imports()
                    .filter(|import| matches!(import.ty(), wasmtime::ExternType::Func(_)))
                    .count() as u32;
                imported.saturating_sub(herd_instrument::ADDED_IMPORTS)
            }),
        };
        self.cache().insert(hash, admitted.clone());
        Ok(admitted)
    }

    /// The bytes of this sandbox's on-disk cache entry for `module`, if it has one (for the fuzz
    /// target of cache entries, which starts from a sound entry).
    #[doc(hidden)]
    pub fn disk_cache_entry(&self, module: &ContentHash) -> Option<Vec<u8>> {
        std::fs::read(self.disk.as_ref()?.path(module)).ok()
    }

    /// Puts `file` in place of the on-disk cache entry for `module` and loads it as `admit` would,
    /// past the in-memory cache (for the fuzz target of cache entries): whether it was accepted.
    #[doc(hidden)]
    pub fn load_disk_cache_entry(&self, module: &ContentHash, file: &[u8]) -> bool {
        let Some(disk) = &self.disk else {
            return false;
        };
        if std::fs::write(disk.path(module), file).is_err() {
            return false;
        }
        disk.load(&self.engine, module).is_some()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<ContentHash, AdmittedModule>> {
        // A panic while holding the lock cannot leave the map inconsistent (inserts are atomic).
        self.compiled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `module` on `input` with `seed` under `limits` on this thread, straight through.
    /// Never panics on anything the module does; every way a run can end is an [`Outcome`].
    pub fn run(
        &self,
        module: &AdmittedModule,
        input: &[u8],
        seed: u64,
        limits: &Limits,
    ) -> Execution {
        self.run_controlled(module, input, seed, limits, RunControl::new())
    }

    /// The same run on this thread under `control`: while it is paused the thread sleeps (the
    /// unit keeps its memory and burns no CPU) until it is resumed or cancelled.
    pub fn run_controlled(
        &self,
        module: &AdmittedModule,
        input: &[u8],
        seed: u64,
        limits: &Limits,
        control: Arc<RunControl>,
    ) -> Execution {
        control::block_on(self.start(module, input, seed, limits, control))
    }

    /// The same run as a future that `control` can pause, resume and cancel. It yields every
    /// [`YIELD_FUEL`] fuel; whoever polls it decides where it runs.
    pub fn start(
        &self,
        module: &AdmittedModule,
        input: &[u8],
        seed: u64,
        limits: &Limits,
        control: Arc<RunControl>,
    ) -> Controlled<impl Future<Output = Execution> + Send + 'static> {
        let engine = self.engine.clone();
        let pre = module.pre.clone();
        // The instrumentation's fuel is set up once the instance (and its fuel global) exists.
        let engine_fuel = self.determinism == Determinism::EngineSwitches;
        let keeper = if self.determinism == Determinism::Plain {
            FuelKeeper::Uncounted
        } else {
            FuelKeeper::Engine
        };
        let state = HostState::new(input, seed, limits, keeper);
        let limits = *limits;
        Controlled {
            run: Box::pin(execute(
                engine,
                pre,
                state,
                limits,
                module.original_imports,
                engine_fuel,
            )),
            control,
            watchdog: limits.watchdog,
            ran: Duration::ZERO,
        }
    }
}

async fn execute(
    engine: Engine,
    pre: InstancePre<HostState>,
    state: HostState,
    limits: Limits,
    original_imports: Option<u32>,
    engine_fuel: bool,
) -> Execution {
    let mut store = Store::new(&engine, state);
    store.limiter(|state| &mut state.limiter);
    // Admission refuses start sections, so instantiation runs no wasm code; the engine's fuel
    // here (oracle only) is never reported (instantiation's fuel is not portable).
    let setup = async {
        if engine_fuel {
            store.set_fuel(u64::MAX / 2)?;
            store.fuel_async_yield_interval(Some(YIELD_FUEL))?;
        }
        let instance = pre.instantiate_async(&mut store).await?;
        let memory = instance.get_memory(&mut store, "memory");
        store.data_mut().memory = memory;
        if original_imports.is_some() {
            let global = instance
                .get_global(&mut store, herd_instrument::FUEL_GLOBAL)
                .ok_or_else(|| wasmtime::Error::msg("the rewritten module has no fuel global"))?;
            let (meter, slice) = meter::Meter::start(limits.fuel);
            global.set(&mut store, wasmtime::Val::I64(slice))?;
            store.data_mut().fuel = FuelKeeper::Pass { global, meter };
        }
        instance.get_typed_func::<(), ()>(&mut store, "_start")
    };
    let start = match setup.await {
        Ok(start) => start,
        Err(error) => return finish(store, classify(&error, original_imports), 0),
    };
    if engine_fuel && let Err(error) = store.set_fuel(limits.fuel) {
        return abort(AbortReason::HostFailure(format!("set fuel: {error:#}")));
    }
    let result = start.call_async(&mut store, ()).await;
    let mut ending = match result {
        Ok(()) => Ending::Status(Status::Success),
        Err(error) => classify(&error, original_imports),
    };
    let fuel = match &store.data().fuel {
        FuelKeeper::Engine => limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0)),
        FuelKeeper::Uncounted => 0,
        FuelKeeper::Pass { global, meter } => {
            let (global, meter) = (*global, *meter);
            let Ok(left) = FuelKeeper::read(global, &mut store) else {
                return abort(AbortReason::HostFailure(
                    "cannot read the unit's fuel".into(),
                ));
            };
            let burned = meter.burned(left);
            // A unit that ends past its budget without meeting another check (the rest of a
            // basic block, a return) has run out all the same.
            if burned > u128::from(limits.fuel) {
                if let Ending::Status(_) = ending {
                    ending = Ending::Status(Status::OutOfFuel);
                }
                limits.fuel
            } else {
                burned as u64
            }
        }
    };
    let fuel = match ending {
        Ending::Status(Status::OutOfFuel) => limits.fuel,
        _ => fuel,
    };
    finish(store, ending, fuel)
}

/// How a run ended, before the output is attached.
enum Ending {
    Status(Status),
    Abort(AbortReason),
}

fn abort(reason: AbortReason) -> Execution {
    Execution {
        outcome: Outcome::Aborted(reason),
        output: Vec::new(),
    }
}

fn finish(store: Store<HostState>, ending: Ending, fuel: u64) -> Execution {
    match ending {
        Ending::Abort(reason) => abort(reason),
        Ending::Status(status) => {
            let output = store.into_data().output;
            Execution {
                outcome: Outcome::Countable(RunResult {
                    status,
                    fuel,
                    output_len: output.len() as u64,
                    output_hash: ContentHash::of(&output),
                }),
                output,
            }
        }
    }
}

/// Maps an error from instantiation or the entry call to how the run ended.
fn classify(error: &wasmtime::Error, original_imports: Option<u32>) -> Ending {
    if let Some(Exit(code)) = error.downcast_ref::<Exit>() {
        return Ending::Status(if *code == 0 {
            Status::Success
        } else {
            Status::ExitCode(*code)
        });
    }
    if let Some(OutputLimitExceeded(limit_bytes)) = error.downcast_ref::<OutputLimitExceeded>() {
        return Ending::Status(Status::OutputLimit {
            limit_bytes: *limit_bytes,
        });
    }
    if let Some(exceeded) = error.downcast_ref::<MemoryLimitExceeded>() {
        return Ending::Status(Status::MemoryLimit {
            limit_bytes: exceeded.limit,
            requested_bytes: exceeded.desired,
        });
    }
    if let Some(trap) = error.downcast_ref::<Trap>() {
        let kind = match trap {
            Trap::OutOfFuel => return Ending::Status(Status::OutOfFuel),
            Trap::UnreachableCodeReached => TrapKind::Unreachable,
            Trap::MemoryOutOfBounds => TrapKind::MemoryOutOfBounds,
            Trap::IntegerDivisionByZero => TrapKind::IntegerDivisionByZero,
            Trap::IntegerOverflow => TrapKind::IntegerOverflow,
            Trap::BadConversionToInteger => TrapKind::BadConversionToInteger,
            Trap::StackOverflow => TrapKind::StackOverflow,
            Trap::IndirectCallToNull => TrapKind::IndirectCallToNull,
            Trap::BadSignature => TrapKind::IndirectCallTypeMismatch,
            Trap::TableOutOfBounds => TrapKind::TableOutOfBounds,
            other => TrapKind::Other(format!("{other:?}")),
        };
        return Ending::Status(Status::Trap {
            kind,
            function: trapping_function(error, original_imports),
        });
    }
    Ending::Abort(AbortReason::HostFailure(format!("{error:#}")))
}

/// The innermost wasm function of a trap: its name, or `func[INDEX]` (its index in the module
/// as submitted) in a module without names.
fn trapping_function(error: &wasmtime::Error, original_imports: Option<u32>) -> String {
    error
        .downcast_ref::<WasmBacktrace>()
        .and_then(|trace| trace.frames().first())
        .map_or_else(
            || "unknown".to_string(),
            |frame| match frame.func_name() {
                Some(name) => name.to_string(),
                None => {
                    let index = frame.func_index();
                    let original = original_imports
                        .and_then(|imports| {
                            herd_instrument::original_function_index(imports, index)
                        })
                        .unwrap_or(index);
                    format!("func[{original}]")
                }
            },
        )
}

#[cfg(test)]
mod tests;
