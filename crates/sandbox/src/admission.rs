//! Admission: the checks a module passes when it is submitted and again before it runs.
//!
//! Allowed Wasm features are listed here, explicitly; imports must come from the WASI preview 1
//! functions the sandbox implements; `_start` and a memory named `memory` must be exported; start
//! sections are refused (code would run during instantiation, outside the fuel budget); the
//! module's size is capped.

use wasmparser::{Parser, Payload};
use wasmtime::{ExternType, Module, WasmFeatures};

use crate::wasi;

/// The largest module accepted: 16 MiB of binary WebAssembly.
pub const MAX_MODULE_BYTES: usize = 16 << 20;

/// Why a module was refused. Each names the offending import, feature, export or limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    #[error("module is {size} bytes, over the limit of {MAX_MODULE_BYTES}")]
    TooLarge { size: usize },
    /// Neither binary WebAssembly (which begins with the `\0asm` magic) nor text.
    #[error("not a WebAssembly module (no `\\0asm` header, and not WebAssembly text)")]
    NotAModule,
    #[error("module is not valid WebAssembly text: {0}")]
    BadText(String),
    #[error("module is not valid or uses a feature that is not allowed: {0}")]
    Invalid(String),
    #[error(
        "module import `{module}.{name}` is not allowed (only the WASI preview 1 functions Herd provides){}",
        import_hint(.module, .name)
    )]
    ImportNotAllowed { module: String, name: String },
    #[error("module must export a function `_start` taking and returning nothing")]
    NoStart,
    #[error("module must export its linear memory as `memory`")]
    NoMemory,
    #[error("module has a start section; put the entry point in `_start` instead")]
    StartSection,
    #[error(
        "module declares {declared} bytes of initial memory, over the memory limit of {limit} bytes"
    )]
    InitialMemoryOverLimit { declared: u64, limit: u64 },
    #[error("module cannot be instrumented: {0}")]
    Instrumentation(String),
}

impl From<herd_instrument::InstrumentError> for AdmissionError {
    fn from(error: herd_instrument::InstrumentError) -> Self {
        match error {
            herd_instrument::InstrumentError::Invalid(reason) => Self::Invalid(reason),
            other => Self::Instrumentation(other.to_string()),
        }
    }
}

/// What a researcher should change when a module imports `module.name`, for the imports that
/// common toolchains emit (wasi-libc's file functions, sockets, undefined C functions).
fn import_hint(module: &str, name: &str) -> &'static str {
    const FILE_CALLS: &[&str] = &[
        "fd_advise",
        "fd_allocate",
        "fd_datasync",
        "fd_fdstat_set_flags",
        "fd_fdstat_set_rights",
        "fd_filestat_get",
        "fd_filestat_set_size",
        "fd_filestat_set_times",
        "fd_pread",
        "fd_pwrite",
        "fd_readdir",
        "fd_renumber",
        "fd_sync",
        "fd_tell",
    ];
    if module == wasi::MODULE {
        if name.starts_with("path_") || FILE_CALLS.contains(&name) {
            return ": a unit has no files or directories; its input is stdin and its output \
                    stdout (in C, fopen, open, stat and opendir need files: read stdin with \
                    fread or scanf instead; in Rust, use std::io::stdin, not std::fs)";
        }
        if name.starts_with("sock_") {
            return ": a unit has no network; everything it needs comes in on stdin";
        }
        if name == "proc_raise" {
            return ": a unit cannot raise signals; end it with exit(code) instead of raise or abort";
        }
        return "";
    }
    if module == "env" {
        return ": an `env` import is a function the program declares but does not define: link \
                its definition in, or build for wasm32-wasi (C, with zig cc or clang and \
                wasi-libc) or wasm32-wasip1 (Rust)";
    }
    ": WASI preview 1 imports come from `wasi_snapshot_preview1`; build for wasm32-wasi \
     (C and C++) or wasm32-wasip1 (Rust)"
}

/// The Wasm features a unit may use: WebAssembly 1.0 plus the finished proposals that today's
/// compilers emit by default for wasm32-wasip1: exactly the set the instrumentation understands
/// (`herd_instrument::supported_features`). Threads, SIMD (whose float NaNs the pass does not
/// handle), relaxed SIMD, memory64, multi-memory, GC and exceptions stay out.
pub(crate) fn allowed_features() -> WasmFeatures {
    // One list, the pass's: a feature it does not understand must not reach a unit.
    WasmFeatures::from_bits_truncate(herd_instrument::supported_features().bits())
}

/// The first bytes of every binary WebAssembly module.
const MAGIC: &[u8] = b"\0asm";

/// Turns a module file's bytes into binary WebAssembly, deciding by the bytes (never the file's
/// name): a binary module (the `\0asm` magic) passes through, UTF-8 text is assembled as
/// WebAssembly text, anything else is [`AdmissionError::NotAModule`]. The content hash of a
/// module is always the hash of its binary form.
pub fn module_bytes(source: &[u8]) -> Result<Vec<u8>, AdmissionError> {
    if source.len() > MAX_MODULE_BYTES * 4 {
        return Err(AdmissionError::TooLarge { size: source.len() });
    }
    if !source.starts_with(MAGIC) && std::str::from_utf8(source).is_err() {
        return Err(AdmissionError::NotAModule);
    }
    let wasm = wat::parse_bytes(source)
        .map_err(|e| AdmissionError::BadText(e.to_string()))?
        .into_owned();
    if wasm.len() > MAX_MODULE_BYTES {
        return Err(AdmissionError::TooLarge { size: wasm.len() });
    }
    Ok(wasm)
}

/// Checks done on the raw bytes before compiling.
pub(crate) fn check_structure(wasm: &[u8]) -> Result<(), AdmissionError> {
    if wasm.len() > MAX_MODULE_BYTES {
        return Err(AdmissionError::TooLarge { size: wasm.len() });
    }
    // Binary only here (what the coordinator stores and workers run); the same words as
    // `module_bytes` for bytes that are no module at all.
    if !wasm.starts_with(MAGIC) {
        return Err(AdmissionError::NotAModule);
    }
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(|e| AdmissionError::Invalid(e.to_string()))? {
            Payload::StartSection { .. } => return Err(AdmissionError::StartSection),
            Payload::End(_) => break,
            _ => {}
        }
    }
    Ok(())
}

/// Checks done on the compiled module's imports and exports.
/// `instrumented`: the module is the instrumentation's rewrite, whose own host imports are
/// allowed (the pass refuses a submitted module that imports them itself).
pub(crate) fn check_interface(module: &Module, instrumented: bool) -> Result<(), AdmissionError> {
    for import in module.imports() {
        let wasi = import.module() == wasi::MODULE && wasi::FUNCTIONS.contains(&import.name());
        let herd = instrumented
            && import.module() == herd_instrument::HOST_MODULE
            && [herd_instrument::REFUEL, herd_instrument::STACK_EXHAUSTED].contains(&import.name());
        let allowed = (wasi || herd) && matches!(import.ty(), ExternType::Func(_));
        if !allowed {
            return Err(AdmissionError::ImportNotAllowed {
                module: import.module().to_string(),
                name: import.name().to_string(),
            });
        }
    }
    match module.get_export("_start") {
        Some(ExternType::Func(ty)) if ty.params().len() == 0 && ty.results().len() == 0 => {}
        _ => return Err(AdmissionError::NoStart),
    }
    match module.get_export("memory") {
        Some(ExternType::Memory(_)) => Ok(()),
        _ => Err(AdmissionError::NoMemory),
    }
}

/// Bytes of linear memory the module declares it starts with.
pub(crate) fn initial_memory_bytes(module: &Module) -> u64 {
    module
        .exports()
        .filter_map(|export| match export.ty() {
            ExternType::Memory(memory) => Some(memory.minimum().saturating_mul(memory.page_size())),
            _ => None,
        })
        .sum()
}
