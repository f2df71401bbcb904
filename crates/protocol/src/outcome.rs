//! The outcome of running a work unit, as the sandbox reports it and the coordinator validates it.
//!
//! An [`Outcome`] is either **countable** (a [`RunResult`]: a pure function of module, input, seed
//! and limits, so replicas on different hosts must agree on it bit for bit) or an **abort** (an
//! [`AbortReason`]: something about the host, not the unit, which never counts toward a quorum).

use serde::{Deserialize, Serialize};

use crate::ContentHash;

/// How a run ended, for countable outcomes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// `_start` returned, or the module called `proc_exit(0)`.
    Success,
    /// The module called `proc_exit` with this non-zero code.
    ExitCode(u32),
    /// The module trapped, in `function` (its name from the module's name section, or
    /// `func[INDEX]` without one).
    Trap { kind: TrapKind, function: String },
    /// The fuel budget was spent (by instructions or by host calls charged for their bytes).
    OutOfFuel,
    /// The module wrote more than `limit_bytes`; the output is cut at the limit.
    OutputLimit { limit_bytes: u64 },
    /// The module asked for `requested_bytes` of linear memory, over `limit_bytes`.
    MemoryLimit {
        limit_bytes: u64,
        requested_bytes: u64,
    },
}

/// The kind of a WebAssembly trap. Every kind is deterministic for a given unit.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrapKind {
    Unreachable,
    MemoryOutOfBounds,
    IntegerDivisionByZero,
    IntegerOverflow,
    BadConversionToInteger,
    StackOverflow,
    IndirectCallToNull,
    IndirectCallTypeMismatch,
    TableOutOfBounds,
    /// Another trap code, by wasmtime's name for it.
    Other(String),
}

impl Status {
    /// The short machine-readable name used in JSON (`success`, `exit_code`, `trap`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Status::Success => "success",
            Status::ExitCode(_) => "exit_code",
            Status::Trap { .. } => "trap",
            Status::OutOfFuel => "out_of_fuel",
            Status::OutputLimit { .. } => "output_limit",
            Status::MemoryLimit { .. } => "memory_limit",
        }
    }
}

impl TrapKind {
    /// The short machine-readable name used in JSON.
    pub fn name(&self) -> String {
        match self {
            TrapKind::Unreachable => "unreachable".into(),
            TrapKind::MemoryOutOfBounds => "memory_out_of_bounds".into(),
            TrapKind::IntegerDivisionByZero => "integer_division_by_zero".into(),
            TrapKind::IntegerOverflow => "integer_overflow".into(),
            TrapKind::BadConversionToInteger => "bad_conversion_to_integer".into(),
            TrapKind::StackOverflow => "stack_overflow".into(),
            TrapKind::IndirectCallToNull => "indirect_call_to_null".into(),
            TrapKind::IndirectCallTypeMismatch => "indirect_call_type_mismatch".into(),
            TrapKind::TableOutOfBounds => "table_out_of_bounds".into(),
            TrapKind::Other(name) => name.clone(),
        }
    }
}

/// A countable outcome: what replicas must agree on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RunResult {
    pub status: Status,
    /// Fuel burned by the entry call, host calls included.
    pub fuel: u64,
    /// Bytes the module wrote to stdout (at most the output limit).
    pub output_len: u64,
    /// BLAKE3 of those bytes.
    pub output_hash: ContentHash,
}

/// Why a run was abandoned without a countable outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbortReason {
    /// The wall-clock watchdog fired after this many milliseconds of running (time paused is
    /// not counted): something fuel could not catch.
    Watchdog { after_ms: u64 },
    /// The worker cancelled the run (its user or a preference took the machine back).
    Cancelled,
    /// The module was refused by the worker's admission check.
    ModuleRejected(String),
    /// The host failed (could not fetch a blob, out of resources, ...).
    HostFailure(String),
}

/// The outcome of one run of a work unit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Deterministic: goes to validation.
    Countable(RunResult),
    /// Not deterministic: never counts toward a quorum.
    Aborted(AbortReason),
}
