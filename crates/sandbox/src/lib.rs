//! The sandbox: everything Herd does with wasmtime, behind Herd's own types.
//!
//! A work unit is a WASI preview 1 core module with `_start`. Its input arrives on stdin, its output
//! is what it writes to stdout (up to a cap), and nothing else of the host is visible: no files,
//! sockets, environment or arguments; clocks are fixed and `random_get` returns bytes derived from
//! the unit's seed. With NaN canonicalisation on and the Wasm features listed explicitly, a run is a
//! pure function of (module, input, seed, limits): the same [`Outcome`] and the same fuel on every
//! host, which is what lets replicas on strangers' machines agree bit for bit.
//!
//! Architecture Invariant: no wasmtime type appears in this crate's public API. Callers see
//! [`AdmittedModule`], [`Limits`], [`Execution`] and the protocol's [`Outcome`].
//!
//! Architecture Invariant: `herd run` and the worker run units through the same [`Sandbox::run`].

mod admission;
mod control;
mod disk_cache;
mod wasi;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herd_protocol::{AbortReason, ContentHash, Outcome, RunResult, Status, TrapKind};
use wasmtime::{
    Config, Engine, InstancePre, Linker, Module, Store, Trap, UpdateDeadline, WasmBacktrace,
    WasmFeatures,
};

pub use admission::{AdmissionError, MAX_MODULE_BYTES, module_bytes};
pub use control::{Controlled, RunControl};
use wasi::{Exit, HostState, MemoryLimitExceeded, OutputLimitExceeded};

/// Fuel between two points where a run yields to its caller: the pause latency is the time this
/// much fuel takes to burn (about 5 ms on the machines we measured).
pub const YIELD_FUEL: u64 = 5_000_000;

/// Units one sandbox can run at once: the pooling allocator keeps this many instance, memory and
/// stack slots ready, so starting a unit allocates nothing. A unit started beyond it waits for
/// nothing and fails with a host-failure abort, so callers run at most this many at a time.
pub const MAX_CONCURRENT_UNITS: u32 = 256;

/// The watchdog's clock: the engine's epoch advances this often.
pub const WATCHDOG_TICK: Duration = Duration::from_millis(10);

/// Fuel charged for every host (WASI) call, on top of one unit per byte it moves: a module that
/// calls the host in a tight loop spends its budget as surely as one that computes.
pub const HOST_CALL_FUEL: u64 = 100;

/// The largest memory limit a unit may ask for: 4 GiB, all a wasm32 memory can address.
pub const MAX_MEMORY_BYTES: u64 = 4 << 30;

/// The largest output limit a unit may ask for: 16 MiB (outputs travel in one frame).
pub const MAX_OUTPUT_BYTES: u64 = 16 << 20;

/// The wasm stack available to a unit. Recursion deeper than this fits ends in the
/// `stack_overflow` trap; the depth it allows depends on the frames' sizes, which the same
/// module compiled by the same engine makes the same on every x86-64 and aarch64 host.
pub const MAX_WASM_STACK_BYTES: usize = 512 * 1024;

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
    /// watchdog aborts it. An abort, never a countable outcome: fuel is the deterministic limit,
    /// the watchdog only catches what fuel cannot.
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

/// The wasmtime engine with Herd's deterministic configuration, its WASI linker, and an in-memory
/// cache of compiled modules keyed by content hash. Cheap to share across threads.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<HostState>,
    compiled: Mutex<HashMap<ContentHash, AdmittedModule>>,
    /// Compiled modules kept across restarts, if the caller gave a directory.
    disk: Option<disk_cache::DiskCache>,
    clock: Arc<control::WatchdogClock>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // The clock thread sleeps while no unit runs; wake it to notice the engine is gone.
        self.clock.wake();
    }
}

/// Advances the engine's epoch every [`WATCHDOG_TICK`] while some unit is executing, and sleeps
/// (no wake-ups at all) while none is, until the engine is dropped.
fn start_watchdog_clock(engine: &Engine, clock: &Arc<control::WatchdogClock>) {
    let weak = engine.weak();
    let clock = clock.clone();
    let spawned = std::thread::Builder::new()
        .name("herd-watchdog".into())
        .spawn(move || {
            clock.set_thread(std::thread::current());
            while let Some(engine) = weak.upgrade() {
                if clock.is_idle() {
                    drop(engine);
                    std::thread::park();
                    continue;
                }
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(WATCHDOG_TICK);
            }
        });
    // Without the clock the watchdog never fires; fuel still bounds every unit.
    if let Err(error) = spawned {
        eprintln!("herd-sandbox: cannot start the watchdog clock: {error}");
    }
}

impl Sandbox {
    /// Builds the engine, with a cache of compiled modules in memory only.
    pub fn new() -> Result<Self, EngineError> {
        Self::build(None)
    }

    /// Builds the engine, keeping compiled modules in `dir` too (created, mode 0700), so they are
    /// compiled once per host rather than once per start.
    pub fn with_disk_cache(dir: &std::path::Path) -> Result<Self, EngineError> {
        Self::build(Some(dir))
    }

    /// Every setting that could make two hosts disagree is set explicitly here, in one place.
    fn build(cache_dir: Option<&std::path::Path>) -> Result<Self, EngineError> {
        let mut config = Config::new();
        // Start from nothing and allow exactly the features listed in `allowed_features`:
        // wasmtime's defaults grow with each release, and a feature we have not vetted for
        // determinism must not slip in with an upgrade.
        config.wasm_features(WasmFeatures::all(), false);
        config.wasm_features(admission::allowed_features(), true);
        config.cranelift_nan_canonicalization(true);
        config.consume_fuel(true);
        config.epoch_interruption(true);
        config.max_wasm_stack(MAX_WASM_STACK_BYTES);
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
        let clock = Arc::new(control::WatchdogClock::default());
        start_watchdog_clock(&engine, &clock);
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
            clock,
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
        let cached = self
            .disk
            .as_ref()
            .and_then(|disk| disk.load(&self.engine, &hash));
        let module = match cached {
            Some(module) => module,
            None => {
                let module = Module::new(&self.engine, wasm)
                    .map_err(|e| AdmissionError::Invalid(format!("{e:#}")))?;
                if let Some(disk) = &self.disk {
                    disk.store(&hash, &module);
                }
                module
            }
        };
        admission::check_interface(&module)?;
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| AdmissionError::Invalid(format!("{e:#}")))?;
        let admitted = AdmittedModule {
            initial_memory_bytes: admission::initial_memory_bytes(&module),
            pre,
        };
        self.cache().insert(hash, admitted.clone());
        Ok(admitted)
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
        let state = HostState::new(input, seed, limits);
        let limits = *limits;
        Controlled {
            run: Box::pin(execute(engine, pre, state, limits)),
            control,
            clock: self.clock.clone(),
        }
    }
}

/// The watchdog fired.
#[derive(Debug, thiserror::Error)]
#[error("watchdog: the unit ran for more than {0:?}")]
struct WatchdogFired(Duration);

async fn execute(
    engine: Engine,
    pre: InstancePre<HostState>,
    state: HostState,
    limits: Limits,
) -> Execution {
    let mut store = Store::new(&engine, state);
    store.limiter(|state| &mut state.limiter);
    // Admission refuses start sections, so instantiation runs no wasm code; the fuel here
    // only satisfies the engine and is never reported (instantiation's fuel is not portable).
    let setup = async {
        store.set_fuel(u64::MAX / 2)?;
        store.fuel_async_yield_interval(Some(YIELD_FUEL))?;
        let instance = pre.instantiate_async(&mut store).await?;
        let memory = instance.get_memory(&mut store, "memory");
        store.data_mut().memory = memory;
        instance.get_typed_func::<(), ()>(&mut store, "_start")
    };
    let start = match setup.await {
        Ok(start) => start,
        Err(error) => return finish(store, classify(&error), 0),
    };
    if let Err(error) = store.set_fuel(limits.fuel) {
        return abort(AbortReason::HostFailure(format!("set fuel: {error:#}")));
    }
    // The deadline is checked only while wasm runs, so ticks counted here are running time.
    let allowed_ticks = limits.watchdog.as_millis() / WATCHDOG_TICK.as_millis().max(1);
    let mut ticks = 0u128;
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        ticks += 1;
        if ticks > allowed_ticks {
            Err(wasmtime::Error::new(WatchdogFired(limits.watchdog)))
        } else {
            Ok(UpdateDeadline::Continue(1))
        }
    });
    let result = start.call_async(&mut store, ()).await;
    let remaining = store.get_fuel().unwrap_or(0);
    let fuel = limits.fuel.saturating_sub(remaining);
    let ending = match result {
        Ok(()) => Ending::Status(Status::Success),
        Err(error) => classify(&error),
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
fn classify(error: &wasmtime::Error) -> Ending {
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
    if let Some(WatchdogFired(after)) = error.downcast_ref::<WatchdogFired>() {
        return Ending::Abort(AbortReason::Watchdog {
            after_ms: after.as_millis() as u64,
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
            function: trapping_function(error),
        });
    }
    Ending::Abort(AbortReason::HostFailure(format!("{error:#}")))
}

/// The innermost wasm function of a trap: its name, or `func[INDEX]` in a module without names.
fn trapping_function(error: &wasmtime::Error) -> String {
    error
        .downcast_ref::<WasmBacktrace>()
        .and_then(|trace| trace.frames().first())
        .map_or_else(
            || "unknown".to_string(),
            |frame| match frame.func_name() {
                Some(name) => name.to_string(),
                None => format!("func[{}]", frame.func_index()),
            },
        )
}

#[cfg(test)]
mod tests;
