//! `herd run`: one module, run locally in exactly the sandbox the workers use.

use std::path::{Path, PathBuf};

use anyhow::Context;
use herd_protocol::{AbortReason, Outcome, RunResult, Status};
use herd_sandbox::{Limits, Sandbox, module_bytes};
use serde_json::{Value, json};

/// A run's outcome as the flat JSON object `herd run` prints.
pub(crate) fn result_json(result: &RunResult) -> Value {
    let mut value = json!({
        "status": result.status.name(),
        "fuel": result.fuel,
        "output_len": result.output_len,
        "output_hash": result.output_hash.to_hex(),
    });
    match &result.status {
        Status::ExitCode(code) => value["exit_code"] = json!(code),
        Status::Trap { kind, function } => {
            value["trap"] = json!(kind.name());
            value["function"] = json!(function);
        }
        Status::OutputLimit { limit_bytes } => value["limit_bytes"] = json!(limit_bytes),
        Status::MemoryLimit {
            limit_bytes,
            requested_bytes,
        } => {
            value["limit_bytes"] = json!(limit_bytes);
            value["requested_bytes"] = json!(requested_bytes);
        }
        Status::Success | Status::OutOfFuel => {}
    }
    value
}

/// An abort as JSON: `status` is `aborted`, `reason` names why, with its details.
pub(crate) fn abort_json(reason: &AbortReason) -> Value {
    match reason {
        AbortReason::Watchdog { after_ms } => {
            json!({ "status": "aborted", "reason": "watchdog", "after_ms": after_ms })
        }
        AbortReason::Cancelled => json!({ "status": "aborted", "reason": "cancelled" }),
        AbortReason::ModuleRejected(message) => {
            json!({ "status": "aborted", "reason": "module_rejected", "error": message })
        }
        AbortReason::HostFailure(message) => {
            json!({ "status": "aborted", "reason": "host_failure", "error": message })
        }
    }
}

/// Reads a `.wasm` or `.wat` file as binary WebAssembly.
pub(crate) fn read_module(path: &Path) -> anyhow::Result<Vec<u8>> {
    let source =
        std::fs::read(path).with_context(|| format!("cannot read module {}", path.display()))?;
    module_bytes(&source).with_context(|| format!("module {} is rejected", path.display()))
}

/// Where the local commands (`herd run`, `herd submit`'s admission) keep compiled modules:
/// `$XDG_CACHE_HOME/herd/compiled`, else `~/.cache/herd/compiled`; `None` when neither variable
/// is set.
pub(crate) fn compiled_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|dir| !dir.is_empty())
                .map(|home| PathBuf::from(home).join(".cache"))
        })?;
    Some(base.join("herd").join("compiled"))
}

/// The sandbox the local commands run in: the workers' own, with the compiled-module disk cache
/// the worker uses (so a repeated `herd run` of a module loads it instead of instrumenting and
/// compiling it again) unless `use_cache` is false or there is nowhere to keep it.
pub(crate) fn local_sandbox(use_cache: bool) -> anyhow::Result<Sandbox> {
    if let Some(dir) = compiled_cache_dir().filter(|_| use_cache) {
        match Sandbox::with_disk_cache(&dir) {
            Ok(sandbox) => return Ok(sandbox),
            // A cache is only a speed-up: say why there is none and compile in memory.
            Err(error) => eprintln!("herd: {error}; compiling in memory"),
        }
    }
    Ok(Sandbox::new()?)
}

/// What `herd run` ended with, for its exit code.
pub(crate) enum RunEnd {
    Ran,
    Rejected,
}

pub(crate) fn run(
    module: &Path,
    input: Option<&Path>,
    seed: u64,
    limits: Limits,
    output: Option<&Path>,
    use_cache: bool,
) -> anyhow::Result<RunEnd> {
    let rejected = |message: String| {
        println!(
            "{}",
            json!({ "status": "module_rejected", "error": message })
        );
        eprintln!("herd run: {message}");
        Ok(RunEnd::Rejected)
    };
    let wasm = match read_module(module) {
        Ok(wasm) => wasm,
        Err(error) => return rejected(format!("{error:#}")),
    };
    let input = match input {
        Some(path) => {
            std::fs::read(path).with_context(|| format!("cannot read input {}", path.display()))?
        }
        None => Vec::new(),
    };
    let sandbox = local_sandbox(use_cache)?;
    let admitted = match sandbox.admit(&wasm) {
        Ok(admitted) => admitted,
        Err(refusal) => {
            return rejected(format!(
                "module {} is rejected: {refusal}",
                module.display()
            ));
        }
    };
    let execution = sandbox.run(&admitted, &input, seed, &limits);
    match &execution.outcome {
        Outcome::Countable(result) => println!("{}", result_json(result)),
        Outcome::Aborted(reason) => println!("{}", abort_json(reason)),
    }
    if let Some(path) = output {
        std::fs::write(path, &execution.output)
            .with_context(|| format!("cannot write output {}", path.display()))?;
    }
    Ok(RunEnd::Ran)
}
