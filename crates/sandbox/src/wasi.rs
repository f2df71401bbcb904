//! Herd's own WASI preview 1: the handful of functions a unit may import, each deterministic.
//!
//! stdin is the unit's input, stdout its output (capped), stderr is counted and discarded. There
//! are no files, no preopened directories, no arguments and no environment; clocks read a fixed
//! instant; `random_get` is a BLAKE3 stream keyed by the seed. Every call is charged
//! [`HOST_CALL_FUEL`](crate::HOST_CALL_FUEL) plus one fuel per byte it moves, so the host is never
//! a way around the fuel budget.
//!
//! Guest pointers are hostile: every access is bounds-checked and a bad pointer returns `EFAULT`
//! to the module, never a panic in the host.

use wasmtime::{Caller, Global, Linker, Memory, ResourceLimiter, Trap, Val};

use crate::meter::{Meter, Spent};
use crate::{HOST_CALL_FUEL, Limits};

/// The import module name of WASI preview 1.
pub(crate) const MODULE: &str = "wasi_snapshot_preview1";

/// The functions provided; any other import is refused at admission.
pub(crate) const FUNCTIONS: &[&str] = &[
    "args_get",
    "args_sizes_get",
    "environ_get",
    "environ_sizes_get",
    "clock_res_get",
    "clock_time_get",
    "fd_close",
    "fd_fdstat_get",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "fd_read",
    "fd_seek",
    "fd_write",
    "poll_oneoff",
    "proc_exit",
    "random_get",
    "sched_yield",
];

/// The instant every clock reads: 2025-01-01T00:00:00Z in nanoseconds.
pub(crate) const FIXED_TIME_NS: u64 = 1_735_689_600_000_000_000;

/// Table elements a unit may have.
pub(crate) const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// Scatter/gather vectors one call may pass (POSIX's IOV_MAX).
const MAX_IOVS: u32 = 1024;

const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;
const ERRNO_NOTSUP: i32 = 58;
const ERRNO_SPIPE: i32 = 70;

const STDIN: i32 = 0;
const STDOUT: i32 = 1;
const STDERR: i32 = 2;

/// The module called `proc_exit`.
#[derive(Debug, thiserror::Error)]
#[error("module exited with code {0}")]
pub(crate) struct Exit(pub(crate) u32);

/// The module wrote past its output limit.
#[derive(Debug, thiserror::Error)]
#[error("output limit of {0} bytes exceeded")]
pub(crate) struct OutputLimitExceeded(pub(crate) u64);

/// The module asked for more memory than its limit.
#[derive(Debug, thiserror::Error)]
#[error("memory limit of {limit} bytes exceeded (asked for {desired})")]
pub(crate) struct MemoryLimitExceeded {
    pub(crate) limit: u64,
    pub(crate) desired: u64,
}

/// Decides memory growth from the unit's limit alone, so the answer is the same on every host.
pub(crate) struct UnitLimiter {
    memory_bytes: u64,
}

impl ResourceLimiter for UnitLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.memory_bytes {
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                limit: self.memory_bytes,
                desired: desired as u64,
            }));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Per-run host state.
pub(crate) struct HostState {
    input: Vec<u8>,
    input_pos: usize,
    pub(crate) output: Vec<u8>,
    output_limit: u64,
    random: blake3::OutputReader,
    pub(crate) limiter: UnitLimiter,
    /// The unit's exported memory, looked up once after instantiation.
    pub(crate) memory: Option<Memory>,
    /// Where the unit's fuel is kept.
    pub(crate) fuel: FuelKeeper,
}

/// Who counts a unit's fuel.
pub(crate) enum FuelKeeper {
    /// wasmtime's own metering (the oracle).
    Engine,
    /// No one ([`Sandbox::plain`](crate::Sandbox::plain), the benchmarks' floor).
    Uncounted,
    /// The instrumentation: the current slice in the module's fuel global (looked up once,
    /// after instantiation), the rest in the meter.
    Pass { global: Global, meter: Meter },
}

impl FuelKeeper {
    /// The slice in the module's fuel global.
    pub(crate) fn read(
        global: Global,
        store: impl wasmtime::AsContextMut,
    ) -> wasmtime::Result<i64> {
        let mut store = store;
        match global.get(&mut store) {
            Val::I64(fuel) => Ok(fuel),
            _ => Err(wasmtime::Error::msg("the fuel global is not an i64")),
        }
    }
}

impl HostState {
    pub(crate) fn new(input: &[u8], seed: u64, limits: &Limits, fuel: FuelKeeper) -> Self {
        let mut random = blake3::Hasher::new_derive_key("herd random_get v1");
        random.update(&seed.to_le_bytes());
        Self {
            input: input.to_vec(),
            input_pos: 0,
            output: Vec::new(),
            output_limit: limits.output_bytes,
            random: random.finalize_xof(),
            limiter: UnitLimiter {
                memory_bytes: limits.memory_bytes,
            },
            memory: None,
            fuel,
        }
    }
}

type Ctx<'a> = Caller<'a, HostState>;

/// Charges a host call: the base cost plus one fuel per byte moved.
fn charge(caller: &mut Ctx<'_>, bytes: u64) -> wasmtime::Result<()> {
    let cost = HOST_CALL_FUEL.saturating_add(bytes);
    if let FuelKeeper::Pass { global, meter } = &caller.data().fuel {
        let (global, meter) = (*global, *meter);
        let fuel = FuelKeeper::read(global, &mut *caller)?;
        return match meter.charge(fuel, cost) {
            Ok(after) => global.set(&mut *caller, Val::I64(after)),
            Err(Spent) => Err(wasmtime::Error::new(Trap::OutOfFuel)),
        };
    }
    if let FuelKeeper::Uncounted = &caller.data().fuel {
        return Ok(());
    }
    let remaining = caller.get_fuel()?;
    if remaining < cost {
        caller.set_fuel(0)?;
        return Err(wasmtime::Error::new(Trap::OutOfFuel));
    }
    caller.set_fuel(remaining - cost)
}

fn memory(caller: &Ctx<'_>) -> wasmtime::Result<Memory> {
    caller
        .data()
        .memory
        .ok_or_else(|| wasmtime::Error::msg("module has no exported memory"))
}

/// The guest slice `[ptr, ptr + len)`, or `None` if any of it is outside memory.
fn slice(data: &[u8], ptr: i32, len: u32) -> Option<std::ops::Range<usize>> {
    let start = ptr as u32 as usize;
    let end = start.checked_add(len as usize)?;
    (end <= data.len()).then_some(start..end)
}

fn write_u32(data: &mut [u8], ptr: i32, value: u32) -> Result<(), i32> {
    let range = slice(data, ptr, 4).ok_or(ERRNO_FAULT)?;
    data[range].copy_from_slice(&value.to_le_bytes());
    Ok(())
}

fn write_u64(data: &mut [u8], ptr: i32, value: u64) -> Result<(), i32> {
    let range = slice(data, ptr, 8).ok_or(ERRNO_FAULT)?;
    data[range].copy_from_slice(&value.to_le_bytes());
    Ok(())
}

fn read_u32(data: &[u8], ptr: u32) -> Option<u32> {
    let range = slice(data, ptr as i32, 4)?;
    Some(u32::from_le_bytes(data[range].try_into().ok()?))
}

/// Reads an iovec array into (pointer, length) pairs, checking each buffer lies in memory.
fn iovecs(data: &[u8], iovs: i32, count: i32) -> Result<Vec<std::ops::Range<usize>>, i32> {
    let count = u32::try_from(count).map_err(|_| ERRNO_INVAL)?;
    if count > MAX_IOVS {
        return Err(ERRNO_INVAL);
    }
    let mut ranges = Vec::with_capacity(count as usize);
    for i in 0..count {
        let entry = (iovs as u32).checked_add(i * 8).ok_or(ERRNO_FAULT)?;
        let ptr = read_u32(data, entry).ok_or(ERRNO_FAULT)?;
        let len = read_u32(data, entry.checked_add(4).ok_or(ERRNO_FAULT)?).ok_or(ERRNO_FAULT)?;
        ranges.push(slice(data, ptr as i32, len).ok_or(ERRNO_FAULT)?);
    }
    Ok(ranges)
}

fn errno(result: Result<(), i32>) -> i32 {
    result.err().unwrap_or(ERRNO_SUCCESS)
}

fn fd_write(
    mut caller: Ctx<'_>,
    fd: i32,
    iovs: i32,
    count: i32,
    written: i32,
) -> wasmtime::Result<i32> {
    let memory = memory(&caller)?;
    let ranges = match iovecs(memory.data(&caller), iovs, count) {
        Ok(ranges) => ranges,
        Err(code) => return Ok(code),
    };
    let total: u64 = ranges.iter().map(|r| r.len() as u64).sum();
    charge(&mut caller, total)?;
    if fd != STDOUT && fd != STDERR {
        return Ok(ERRNO_BADF);
    }
    let (data, state) = memory.data_and_store_mut(&mut caller);
    if fd == STDOUT {
        let limit = usize::try_from(state.output_limit).unwrap_or(usize::MAX);
        for range in &ranges {
            let room = limit.saturating_sub(state.output.len());
            let take = range.len().min(room);
            state
                .output
                .extend_from_slice(&data[range.start..range.start + take]);
            if take < range.len() {
                return Err(wasmtime::Error::new(OutputLimitExceeded(
                    state.output_limit,
                )));
            }
        }
    }
    // stderr is charged above and otherwise discarded.
    let written_bytes = u32::try_from(total).unwrap_or(u32::MAX);
    Ok(errno(write_u32(data, written, written_bytes)))
}

fn fd_read(
    mut caller: Ctx<'_>,
    fd: i32,
    iovs: i32,
    count: i32,
    read: i32,
) -> wasmtime::Result<i32> {
    let memory = memory(&caller)?;
    if fd != STDIN {
        charge(&mut caller, 0)?;
        return Ok(ERRNO_BADF);
    }
    let ranges = match iovecs(memory.data(&caller), iovs, count) {
        Ok(ranges) => ranges,
        Err(code) => return Ok(code),
    };
    let wanted: usize = ranges.iter().map(|r| r.len()).sum();
    let available = caller.data().input.len() - caller.data().input_pos;
    charge(&mut caller, wanted.min(available) as u64)?;
    let (data, state) = memory.data_and_store_mut(&mut caller);
    let mut moved = 0usize;
    for range in ranges {
        let rest = &state.input[state.input_pos..];
        let n = range.len().min(rest.len());
        data[range.start..range.start + n].copy_from_slice(&rest[..n]);
        state.input_pos += n;
        moved += n;
        if n < range.len() {
            break;
        }
    }
    Ok(errno(write_u32(data, read, moved as u32)))
}

fn random_get(mut caller: Ctx<'_>, buf: i32, len: i32) -> wasmtime::Result<i32> {
    let memory = memory(&caller)?;
    charge(&mut caller, len as u32 as u64)?;
    let (data, state) = memory.data_and_store_mut(&mut caller);
    match slice(data, buf, len as u32) {
        Some(range) => {
            state.random.fill(&mut data[range]);
            Ok(ERRNO_SUCCESS)
        }
        None => Ok(ERRNO_FAULT),
    }
}

/// Writes fixed values to guest memory for calls whose answers are constants.
fn answer(mut caller: Ctx<'_>, writes: &[(i32, u64, bool)]) -> wasmtime::Result<i32> {
    charge(&mut caller, 0)?;
    let memory = memory(&caller)?;
    let data = memory.data_mut(&mut caller);
    for &(ptr, value, wide) in writes {
        let result = if wide {
            write_u64(data, ptr, value)
        } else {
            write_u32(data, ptr, value as u32)
        };
        if let Err(code) = result {
            return Ok(code);
        }
    }
    Ok(ERRNO_SUCCESS)
}

/// A call that only costs fuel and returns a fixed errno.
fn constant(mut caller: Ctx<'_>, code: i32) -> wasmtime::Result<i32> {
    charge(&mut caller, 0)?;
    Ok(code)
}

fn is_std_fd(fd: i32) -> bool {
    (STDIN..=STDERR).contains(&fd)
}

fn fd_fdstat_get(mut caller: Ctx<'_>, fd: i32, ptr: i32) -> wasmtime::Result<i32> {
    charge(&mut caller, 0)?;
    if !is_std_fd(fd) {
        return Ok(ERRNO_BADF);
    }
    const FILETYPE_CHARACTER_DEVICE: u8 = 2;
    const RIGHT_FD_READ: u64 = 1 << 1;
    const RIGHT_FD_WRITE: u64 = 1 << 6;
    let rights = if fd == STDIN {
        RIGHT_FD_READ
    } else {
        RIGHT_FD_WRITE
    };
    let memory = memory(&caller)?;
    let data = memory.data_mut(&mut caller);
    let Some(range) = slice(data, ptr, 24) else {
        return Ok(ERRNO_FAULT);
    };
    let stat = &mut data[range];
    stat.fill(0);
    stat[0] = FILETYPE_CHARACTER_DEVICE;
    stat[8..16].copy_from_slice(&rights.to_le_bytes());
    Ok(ERRNO_SUCCESS)
}

/// Registers every function in [`FUNCTIONS`].
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(MODULE, "fd_write", fd_write)?;
    linker.func_wrap(MODULE, "fd_read", fd_read)?;
    linker.func_wrap(MODULE, "random_get", random_get)?;
    linker.func_wrap(MODULE, "fd_fdstat_get", fd_fdstat_get)?;
    linker.func_wrap(
        MODULE,
        "proc_exit",
        |_: Ctx<'_>, code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::new(Exit(code as u32)))
        },
    )?;
    linker.func_wrap(
        MODULE,
        "args_sizes_get",
        |caller: Ctx<'_>, argc: i32, size: i32| {
            answer(caller, &[(argc, 0, false), (size, 0, false)])
        },
    )?;
    linker.func_wrap(
        MODULE,
        "environ_sizes_get",
        |caller: Ctx<'_>, count: i32, size: i32| {
            answer(caller, &[(count, 0, false), (size, 0, false)])
        },
    )?;
    linker.func_wrap(MODULE, "args_get", |caller: Ctx<'_>, _: i32, _: i32| {
        constant(caller, ERRNO_SUCCESS)
    })?;
    linker.func_wrap(MODULE, "environ_get", |caller: Ctx<'_>, _: i32, _: i32| {
        constant(caller, ERRNO_SUCCESS)
    })?;
    linker.func_wrap(
        MODULE,
        "clock_time_get",
        |caller: Ctx<'_>, _clock: i32, _precision: i64, time: i32| {
            answer(caller, &[(time, FIXED_TIME_NS, true)])
        },
    )?;
    linker.func_wrap(
        MODULE,
        "clock_res_get",
        |caller: Ctx<'_>, _clock: i32, res: i32| answer(caller, &[(res, 1, true)]),
    )?;
    linker.func_wrap(MODULE, "fd_close", |caller: Ctx<'_>, fd: i32| {
        constant(
            caller,
            if is_std_fd(fd) {
                ERRNO_SUCCESS
            } else {
                ERRNO_BADF
            },
        )
    })?;
    linker.func_wrap(
        MODULE,
        "fd_seek",
        |caller: Ctx<'_>, fd: i32, _offset: i64, _whence: i32, _out: i32| {
            constant(
                caller,
                if is_std_fd(fd) {
                    ERRNO_SPIPE
                } else {
                    ERRNO_BADF
                },
            )
        },
    )?;
    // No preopened directories: the answer WASI libcs expect when there are none.
    linker.func_wrap(
        MODULE,
        "fd_prestat_get",
        |caller: Ctx<'_>, _fd: i32, _ptr: i32| constant(caller, ERRNO_BADF),
    )?;
    linker.func_wrap(
        MODULE,
        "fd_prestat_dir_name",
        |caller: Ctx<'_>, _fd: i32, _ptr: i32, _len: i32| constant(caller, ERRNO_BADF),
    )?;
    // Sleeping would make time visible; units cannot wait for anything.
    linker.func_wrap(
        MODULE,
        "poll_oneoff",
        |caller: Ctx<'_>, _in: i32, _out: i32, _n: i32, _events: i32| {
            constant(caller, ERRNO_NOTSUP)
        },
    )?;
    linker.func_wrap(MODULE, "sched_yield", |caller: Ctx<'_>| {
        constant(caller, ERRNO_SUCCESS)
    })?;
    add_instrumentation_to_linker(linker)
}

/// The host functions the instrumentation's rewritten modules import (`herd-instrument`).
fn add_instrumentation_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    use herd_instrument::{HOST_MODULE, REFUEL, STACK_EXHAUSTED};
    linker.func_wrap_async(HOST_MODULE, REFUEL, |mut caller: Ctx<'_>, (): ()| {
        Box::new(async move {
            refuel(&mut caller)?;
            // Every slice, the run yields to whoever polls it: where pauses, cancellation and
            // the watchdog take effect.
            YieldOnce(false).await;
            Ok(())
        })
    })?;
    linker.func_wrap(
        HOST_MODULE,
        STACK_EXHAUSTED,
        |_: Ctx<'_>| -> wasmtime::Result<()> { Err(wasmtime::Error::new(Trap::StackOverflow)) },
    )?;
    Ok(())
}

/// Grants the module its next slice of fuel, or ends the run out of fuel.
fn refuel(caller: &mut Ctx<'_>) -> wasmtime::Result<()> {
    let FuelKeeper::Pass { global, meter } = &caller.data().fuel else {
        return Err(wasmtime::Error::msg(
            "refuel called without the instrumentation's fuel",
        ));
    };
    let (global, mut meter) = (*global, *meter);
    let fuel = FuelKeeper::read(global, &mut *caller)?;
    let next = meter
        .refuel(fuel)
        .map_err(|Spent| wasmtime::Error::new(Trap::OutOfFuel))?;
    global.set(&mut *caller, Val::I64(next))?;
    if let FuelKeeper::Pass { meter: kept, .. } = &mut caller.data_mut().fuel {
        *kept = meter;
    }
    Ok(())
}

/// A future that is pending once (waking its task at once) and then ready.
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}
