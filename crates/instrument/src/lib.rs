//! Herd's deterministic instrumentation: a pass that rewrites a work unit's module so that any
//! spec-compliant WebAssembly engine runs it with the same output, the same fuel and the same
//! traps as every other, without the engine's own (slow) switches.
//!
//! Three things are added, all by rewriting the module and none needing the engine's help:
//!
//! - **NaN canonicalisation by dataflow** (`nan.rs`). An arithmetic float result's NaN bits
//!   differ between CPUs; they matter only where they become visible (a store, a reinterpretation
//!   as an integer, copysign's sign operand, a call argument, a return, a global). A forward
//!   dataflow pass over each function finds which arithmetic results can reach such a point
//!   unchanged, and canonicalises them there, exactly as wasmtime's per-operation switch (the
//!   oracle) would have: once at the visible point when every value that can arrive there is an
//!   untouched arithmetic result, otherwise at each arithmetic operation that feeds it. A loop
//!   that only computes gets nothing added.
//! - **Fuel** (`function.rs`). Each basic block subtracts its cost from a local (which the
//!   compiler keeps in a register), flushed to the exported global [`FUEL_GLOBAL`] around calls
//!   and returns. Every branch back to a loop and every function entry check it (a loop that a
//!   `br_table` branches back to, at its header); when it is below zero the module
//!   calls the host's [`REFUEL`], which grants the next slice of the budget (and is where the
//!   host may pause the run) or traps when the budget is spent. The fuel of a unit is therefore
//!   defined by this pass, the same in every engine.
//! - **Call depth** (`function.rs`). Each function entry takes its frame's weight from a global
//!   budget of [`STACK_BUDGET_SLOTS`] and gives it back on exit; a call that would overdraw it
//!   calls the host's [`STACK_EXHAUSTED`], which traps. Exhaustion is the same trap at the same
//!   call on every host, whatever its native stack.
//!
//! The pass is pure (bytes in, bytes out, no IO, no clock) and versioned by [`VERSION`]: replicas
//! of a unit must run the same pass, so the version is part of Herd's protocol and of the
//! compiled-module cache key.

mod function;
mod kept;
mod nan;

use std::convert::Infallible;

use wasm_encoder::reencode::{self, Reencode};
use wasm_encoder::{
    ConstExpr, EntityType, ExportKind, ExportSection, GlobalSection, GlobalType, ImportSection,
    SectionId, TypeSection, ValType,
};
use wasmparser::{Parser, Payload, SubType, TypeRef, WasmFeatures};

/// The pass's version. Bump it with any change to what the rewritten module computes or how its
/// fuel is counted: replicas compare fuel, so two versions must never meet in one unit.
pub const VERSION: u32 = 1;

/// The import module of the host functions the pass calls.
pub const HOST_MODULE: &str = "herd";
/// `herd.refuel: [] -> []`, called when the fuel in [`FUEL_GLOBAL`] is below zero at a check.
/// The host adds the next slice from the unit's budget, or traps when the budget is spent.
pub const REFUEL: &str = "refuel";
/// `herd.stack_exhausted: [] -> []`, called when a call would exceed the call-depth budget. The
/// host traps (Herd reports the `stack_overflow` trap).
pub const STACK_EXHAUSTED: &str = "stack_exhausted";
/// The exported `mut i64` global holding the fuel left in the current slice (flushed at calls,
/// returns and refuels; it may be below zero by the cost of one basic block).
pub const FUEL_GLOBAL: &str = "__herd_fuel";
/// Prefix of every name the pass adds; a module may not use it itself.
pub const RESERVED_PREFIX: &str = "__herd";

/// The call-depth budget, in 16-byte slots. A function's frame weighs
/// [`FRAME_OVERHEAD_SLOTS`] plus one slot per parameter, local and operand-stack entry it can
/// hold, so the native stack a budget's worth of frames needs stays far below what the host
/// gives a unit (see the sandbox's stack size).
pub const STACK_BUDGET_SLOTS: i32 = 1 << 17;
/// The fixed part of a frame's weight: return address, saved registers, alignment.
pub const FRAME_OVERHEAD_SLOTS: u32 = 12;

/// The bulk operations (`memory.fill`, `memory.copy`, `memory.init` and their `table.`
/// counterparts) cost one fuel plus one per this many bytes or elements they move.
pub const BULK_BYTES_PER_FUEL: u32 = 64;

/// The canonical NaNs, as wasmtime's canonicalisation writes them.
pub const CANONICAL_NAN_F32: u32 = 0x7fc0_0000;
pub const CANONICAL_NAN_F64: u64 = 0x7ff8_0000_0000_0000;

/// The features a module may use: what the pass understands. Float SIMD is out (its lanes' NaNs
/// are not handled), as are threads, memory64, multi-memory, tail calls, GC and exceptions.
pub fn supported_features() -> WasmFeatures {
    WasmFeatures::MUTABLE_GLOBAL
        | WasmFeatures::SATURATING_FLOAT_TO_INT
        | WasmFeatures::SIGN_EXTENSION
        | WasmFeatures::MULTI_VALUE
        | WasmFeatures::BULK_MEMORY
        | WasmFeatures::REFERENCE_TYPES
        | WasmFeatures::FLOATS
}

/// Why a module cannot be instrumented. Each names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstrumentError {
    #[error("module is not valid WebAssembly or uses a feature that is not allowed: {0}")]
    Invalid(String),
    #[error("module uses the name `{0}`, which Herd reserves for its instrumentation")]
    Reserved(String),
    #[error(
        "function {function} declares {locals} locals; with the {added} Herd adds that is over \
         the limit of {limit}"
    )]
    TooManyLocals {
        function: u32,
        locals: u32,
        added: u32,
        limit: u32,
    },
    #[error("cannot rewrite the module: {0}")]
    Rewrite(String),
}

/// What the pass did to one module: the counts a reader (or a test) can check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Arithmetic float operations in the module.
    pub float_arith: u32,
    /// Of those, the ones canonicalised where they are computed.
    pub canonicalised_at_operation: u32,
    /// Canonicalisations placed where a value becomes visible instead.
    pub canonicalised_at_use: u32,
    /// Functions whose dataflow analysis went over its work budget, so every arithmetic result
    /// in them is canonicalised (always correct, only slower).
    pub conservative_functions: u32,
}

/// The rewritten module and what the pass did.
#[derive(Debug, Clone)]
pub struct Instrumented {
    pub wasm: Vec<u8>,
    /// Functions the module imported itself; its own function `i` is `i + ADDED_IMPORTS` in the
    /// rewritten module when `i >= original_imports`.
    pub original_imports: u32,
    pub report: Report,
}

impl Instrumented {
    /// The original module's index of a function of the rewritten one (for naming the function
    /// a trap happened in), or `None` for the functions the pass added.
    pub fn original_function_index(&self, rewritten: u32) -> Option<u32> {
        original_function_index(self.original_imports, rewritten)
    }
}

/// The same, for a module that imported `original_imports` functions itself (what a host keeps
/// when it compiled the rewrite earlier and kept only the compiled code).
pub fn original_function_index(original_imports: u32, rewritten: u32) -> Option<u32> {
    if rewritten < original_imports {
        Some(rewritten)
    } else {
        rewritten
            .checked_sub(ADDED_IMPORTS)
            .filter(|index| *index >= original_imports)
    }
}

/// Host functions the pass imports (refuel and stack_exhausted), after the module's own imports.
pub const ADDED_IMPORTS: u32 = 2;

/// Rewrites `wasm` (validated first against [`supported_features`]).
pub fn instrument(wasm: &[u8]) -> Result<Instrumented, InstrumentError> {
    wasmparser::Validator::new_with_features(supported_features())
        .validate_all(wasm)
        .map_err(|e| InstrumentError::Invalid(e.to_string()))?;
    let info = ModuleInfo::read(wasm)?;
    let mut report = Report::default();
    let (bodies, hints) = rewrite_bodies(&info, wasm, &mut report)?;
    let mut rewriter = Rewriter {
        info,
        report,
        emitted: Vec::new(),
        bodies: bodies.into_iter(),
        hints: Some(hints),
    };
    let mut module = wasm_encoder::Module::new();
    rewriter
        .parse_core_module(&mut module, Parser::new(0), wasm)
        .map_err(|e| InstrumentError::Rewrite(e.to_string()))?;
    if let Some(error) = rewriter.info.failure.take() {
        return Err(error);
    }
    Ok(Instrumented {
        wasm: module.finish(),
        original_imports: rewriter.info.imported_functions,
        report: rewriter.report,
    })
}

/// Rewrites every function body, in order, and gathers the branch hints for them all: the
/// hints section must come before the code section, so the bodies are rewritten first.
fn rewrite_bodies(
    info: &ModuleInfo,
    wasm: &[u8],
    report: &mut Report,
) -> Result<(Vec<wasm_encoder::Function>, wasm_encoder::BranchHints), InstrumentError> {
    let mut bodies = Vec::new();
    let mut hints = wasm_encoder::BranchHints::new();
    for payload in Parser::new(0).parse_all(wasm) {
        if let Payload::CodeSectionEntry(body) =
            payload.map_err(|e| InstrumentError::Invalid(e.to_string()))?
        {
            let index = info.imported_functions + bodies.len() as u32;
            let rewritten = function::rewrite(info, index, &body, report)?;
            if !rewritten.hints.is_empty() {
                hints.function_hints(info.shifted_function(index), rewritten.hints);
            }
            bodies.push(rewritten.body);
        }
    }
    Ok((bodies, hints))
}

/// A function type, in the parser's terms.
#[derive(Debug, Clone)]
pub(crate) struct FuncSig {
    pub(crate) params: Vec<wasmparser::ValType>,
    pub(crate) results: Vec<wasmparser::ValType>,
}

/// What the rewrite needs to know about the module before it emits anything.
pub(crate) struct ModuleInfo {
    /// Every type, as the parser gives it (for `operator_arity`).
    pub(crate) sub_types: Vec<SubType>,
    /// Function signatures by type index (`None` for non-function types).
    pub(crate) signatures: Vec<Option<FuncSig>>,
    /// The type index of every function, imported ones first.
    pub(crate) function_types: Vec<u32>,
    pub(crate) imported_functions: u32,
    /// The value type of every global, imported ones first.
    pub(crate) global_types: Vec<wasmparser::ValType>,
    /// Type index of `[] -> []`, appended.
    pub(crate) unit_type: u32,
    /// Appended `[] -> results` types for functions with several results, by results.
    pub(crate) result_types: Vec<(Vec<wasmparser::ValType>, u32)>,
    /// The first error met inside an encoder callback (which can only return the encoder's own
    /// error type).
    pub(crate) failure: Option<InstrumentError>,
    /// Save globals of each of [`kept::save_kind`]'s types: as many as the function that
    /// keeps the most locals of that type around its loops' refuels.
    pub(crate) save_globals: [u32; kept::SAVE_KINDS],
    /// For each function body, in order: the locals each of its loops keeps around its refuel
    /// and their save slots, found once here and used by the rewrite.
    pub(crate) kept: Vec<kept::Kept>,
}

impl ModuleInfo {
    fn read(wasm: &[u8]) -> Result<Self, InstrumentError> {
        let invalid = |e: wasmparser::BinaryReaderError| InstrumentError::Invalid(e.to_string());
        let mut info = ModuleInfo {
            sub_types: Vec::new(),
            signatures: Vec::new(),
            function_types: Vec::new(),
            imported_functions: 0,
            global_types: Vec::new(),
            unit_type: 0,
            result_types: Vec::new(),
            failure: None,
            save_globals: [0; kept::SAVE_KINDS],
            kept: Vec::new(),
        };
        for payload in Parser::new(0).parse_all(wasm) {
            match payload.map_err(invalid)? {
                Payload::TypeSection(reader) => {
                    for group in reader {
                        for sub in group.map_err(invalid)?.into_types() {
                            let sig = match &sub.composite_type.inner {
                                wasmparser::CompositeInnerType::Func(f) => Some(FuncSig {
                                    params: f.params().to_vec(),
                                    results: f.results().to_vec(),
                                }),
                                _ => None,
                            };
                            info.signatures.push(sig);
                            info.sub_types.push(sub);
                        }
                    }
                }
                Payload::ImportSection(reader) => {
                    for import in reader.into_imports() {
                        let import = import.map_err(invalid)?;
                        if import.module == HOST_MODULE {
                            return Err(InstrumentError::Reserved(format!(
                                "{}.{}",
                                import.module, import.name
                            )));
                        }
                        match import.ty {
                            TypeRef::Func(ty) => {
                                info.function_types.push(ty);
                                info.imported_functions += 1;
                            }
                            TypeRef::Global(global) => info.global_types.push(global.content_type),
                            _ => {}
                        }
                    }
                }
                Payload::FunctionSection(reader) => {
                    for ty in reader {
                        info.function_types.push(ty.map_err(invalid)?);
                    }
                }
                Payload::GlobalSection(reader) => {
                    for global in reader {
                        info.global_types
                            .push(global.map_err(invalid)?.ty.content_type);
                    }
                }
                Payload::CodeSectionEntry(body) => info.count_saves(&body).map_err(invalid)?,
                Payload::ExportSection(reader) => {
                    for export in reader {
                        let export = export.map_err(invalid)?;
                        if export.name.starts_with(RESERVED_PREFIX) {
                            return Err(InstrumentError::Reserved(export.name.to_string()));
                        }
                    }
                }
                _ => {}
            }
        }
        let type_count = info.signatures.len() as u32;
        info.unit_type = type_count;
        let mut next = type_count + 1;
        for ty in &info.function_types {
            if let Some(Some(sig)) = info.signatures.get(*ty as usize)
                && sig.results.len() > 1
                && !info.result_types.iter().any(|(r, _)| *r == sig.results)
            {
                info.result_types.push((sig.results.clone(), next));
                next += 1;
            }
        }
        Ok(info)
    }

    /// Counts the save globals one function body needs (see [`kept::Kept::of`]).
    fn count_saves(
        &mut self,
        body: &wasmparser::FunctionBody<'_>,
    ) -> Result<(), wasmparser::BinaryReaderError> {
        let index = self.imported_functions + self.kept.len() as u32;
        let mut local_types = self
            .signature_of_function(index)
            .map(|sig| sig.params.clone())
            .unwrap_or_default();
        for pair in body.get_locals_reader()? {
            let (count, ty) = pair?;
            // An oversized function is refused by the rewrite, which says so; it keeps its
            // place in `kept`, so the bodies after it find theirs.
            if local_types.len() as u64 + u64::from(count) > 1 << 20 {
                self.kept.push(kept::Kept::default());
                return Ok(());
            }
            local_types.extend(std::iter::repeat_n(ty, count as usize));
        }
        let mut ops = Vec::new();
        let mut reader = body.get_operators_reader()?;
        while !reader.eof() {
            ops.push(reader.read()?);
        }
        let found = kept::Kept::of(&ops, &local_types);
        let mut needed = [0u32; kept::SAVE_KINDS];
        for local in found.slots.keys() {
            if let Some(kind) = local_types
                .get(*local as usize)
                .and_then(|t| kept::save_kind(*t))
            {
                needed[kind] += 1;
            }
        }
        for (have, need) in self.save_globals.iter_mut().zip(needed) {
            *have = (*have).max(need);
        }
        self.kept.push(found);
        Ok(())
    }

    /// The save global holding `local` (of a function whose local types and save slots are
    /// given) around a loop's refuel.
    pub(crate) fn save_global(
        &self,
        local_types: &[wasmparser::ValType],
        slots: &std::collections::HashMap<u32, u32>,
        local: u32,
    ) -> u32 {
        let kind = local_types
            .get(local as usize)
            .and_then(|t| kept::save_kind(*t))
            .unwrap_or(0);
        let before: u32 = self.save_globals[..kind].iter().sum();
        self.depth_global() + 1 + before + slots.get(&local).copied().unwrap_or(0)
    }

    pub(crate) fn signature_of_function(&self, function: u32) -> Option<&FuncSig> {
        let ty = *self.function_types.get(function as usize)?;
        self.signature(ty)
    }

    pub(crate) fn signature(&self, ty: u32) -> Option<&FuncSig> {
        self.signatures.get(ty as usize)?.as_ref()
    }

    /// Index of the fuel global in the rewritten module.
    pub(crate) fn fuel_global(&self) -> u32 {
        self.global_types.len() as u32
    }

    /// Index of the call-depth global in the rewritten module.
    pub(crate) fn depth_global(&self) -> u32 {
        self.global_types.len() as u32 + 1
    }

    /// Index of `herd.refuel` in the rewritten module.
    pub(crate) fn refuel_function(&self) -> u32 {
        self.imported_functions
    }

    /// Index of `herd.stack_exhausted` in the rewritten module.
    pub(crate) fn stack_exhausted_function(&self) -> u32 {
        self.imported_functions + 1
    }

    /// The rewritten module's index for the original module's function `function`.
    pub(crate) fn shifted_function(&self, function: u32) -> u32 {
        if function >= self.imported_functions {
            function + ADDED_IMPORTS
        } else {
            function
        }
    }
}

pub(crate) fn encoder_val_type(ty: wasmparser::ValType) -> Result<ValType, InstrumentError> {
    Ok(match ty {
        wasmparser::ValType::I32 => ValType::I32,
        wasmparser::ValType::I64 => ValType::I64,
        wasmparser::ValType::F32 => ValType::F32,
        wasmparser::ValType::F64 => ValType::F64,
        wasmparser::ValType::V128 => ValType::V128,
        wasmparser::ValType::Ref(r) => {
            let mut plain = reencode::RoundtripReencoder;
            ValType::Ref(
                plain
                    .ref_type(r)
                    .map_err(|e| InstrumentError::Rewrite(e.to_string()))?,
            )
        }
    })
}

/// The encoder callbacks that copy the module, append the pass's types, imports, globals and
/// export, shift function indices past the new imports, and rewrite every function body.
struct Rewriter {
    info: ModuleInfo,
    report: Report,
    /// Sections this rewriter must add if the module has none of them, once emitted.
    emitted: Vec<SectionId>,
    /// The rewritten bodies not yet emitted, in order.
    bodies: std::vec::IntoIter<wasm_encoder::Function>,
    /// The branch hints, until they are emitted (just before the code section).
    hints: Option<wasm_encoder::BranchHints>,
}

/// The order sections appear in a module (the binary format fixes it; ids are not in order).
fn section_rank(id: SectionId) -> u8 {
    match id {
        SectionId::Custom => 0,
        SectionId::Type => 1,
        SectionId::Import => 2,
        SectionId::Function => 3,
        SectionId::Table => 4,
        SectionId::Memory => 5,
        SectionId::Tag => 6,
        SectionId::Global => 7,
        SectionId::Export => 8,
        SectionId::Start => 9,
        SectionId::Element => 10,
        SectionId::DataCount => 11,
        SectionId::Code => 12,
        SectionId::Data => 13,
    }
}

impl Rewriter {
    fn fail(&mut self, error: InstrumentError) {
        if self.info.failure.is_none() {
            self.info.failure = Some(error);
        }
    }

    fn append_types(&mut self, types: &mut TypeSection) {
        types.ty().function([], []);
        for (results, _) in self.info.result_types.clone() {
            let mut encoded = Vec::with_capacity(results.len());
            for ty in results {
                match encoder_val_type(ty) {
                    Ok(ty) => encoded.push(ty),
                    Err(error) => self.fail(error),
                }
            }
            types.ty().function([], encoded);
        }
    }

    fn append_imports(&self, imports: &mut ImportSection) {
        let ty = EntityType::Function(self.info.unit_type);
        imports.import(HOST_MODULE, REFUEL, ty);
        imports.import(HOST_MODULE, STACK_EXHAUSTED, ty);
    }

    fn append_globals(&self, globals: &mut GlobalSection) {
        let mutable = |val_type| GlobalType {
            val_type,
            mutable: true,
            shared: false,
        };
        globals.global(mutable(ValType::I64), &ConstExpr::i64_const(0));
        globals.global(
            mutable(ValType::I32),
            &ConstExpr::i32_const(STACK_BUDGET_SLOTS),
        );
        // The save globals, by type in `kept::save_kind`'s order.
        let zeros = [
            (ValType::I32, ConstExpr::i32_const(0)),
            (ValType::I64, ConstExpr::i64_const(0)),
            (ValType::F32, ConstExpr::f32_const(0.0.into())),
            (ValType::F64, ConstExpr::f64_const(0.0.into())),
            (ValType::V128, ConstExpr::v128_const(0)),
        ];
        for ((ty, zero), count) in zeros.iter().zip(self.info.save_globals) {
            for _ in 0..count {
                globals.global(mutable(*ty), zero);
            }
        }
    }

    fn append_exports(&self, exports: &mut ExportSection) {
        exports.export(FUEL_GLOBAL, ExportKind::Global, self.info.fuel_global());
    }
}

impl Reencode for Rewriter {
    type Error = Infallible;

    fn function_index(&mut self, func: u32) -> Result<u32, reencode::Error<Infallible>> {
        Ok(self.info.shifted_function(func))
    }

    fn parse_type_section(
        &mut self,
        types: &mut TypeSection,
        section: wasmparser::TypeSectionReader<'_>,
    ) -> Result<(), reencode::Error<Infallible>> {
        reencode::utils::parse_type_section(self, types, section)?;
        self.append_types(types);
        self.emitted.push(SectionId::Type);
        Ok(())
    }

    fn parse_import_section(
        &mut self,
        imports: &mut ImportSection,
        section: wasmparser::ImportSectionReader<'_>,
    ) -> Result<(), reencode::Error<Infallible>> {
        reencode::utils::parse_import_section(self, imports, section)?;
        self.append_imports(imports);
        self.emitted.push(SectionId::Import);
        Ok(())
    }

    fn parse_global_section(
        &mut self,
        globals: &mut GlobalSection,
        section: wasmparser::GlobalSectionReader<'_>,
    ) -> Result<(), reencode::Error<Infallible>> {
        reencode::utils::parse_global_section(self, globals, section)?;
        self.append_globals(globals);
        self.emitted.push(SectionId::Global);
        Ok(())
    }

    fn parse_export_section(
        &mut self,
        exports: &mut ExportSection,
        section: wasmparser::ExportSectionReader<'_>,
    ) -> Result<(), reencode::Error<Infallible>> {
        reencode::utils::parse_export_section(self, exports, section)?;
        self.append_exports(exports);
        self.emitted.push(SectionId::Export);
        Ok(())
    }

    fn intersperse_section_hook(
        &mut self,
        module: &mut wasm_encoder::Module,
        _after: Option<SectionId>,
        before: Option<SectionId>,
    ) -> Result<(), reencode::Error<Infallible>> {
        // The branch hints section, a custom one, goes just before the code section.
        if before == Some(SectionId::Code)
            && let Some(hints) = self.hints.take()
            && !hints.is_empty()
        {
            module.section(&hints);
        }
        // A module without one of the sections the pass appends to gets one with only the pass's
        // entries, in its place in the order.
        for id in [
            SectionId::Type,
            SectionId::Import,
            SectionId::Global,
            SectionId::Export,
        ] {
            let due = before.is_none_or(|next| section_rank(next) > section_rank(id));
            if !due || self.emitted.contains(&id) || before == Some(id) {
                continue;
            }
            match id {
                SectionId::Type => {
                    let mut types = TypeSection::new();
                    self.append_types(&mut types);
                    module.section(&types);
                }
                SectionId::Import => {
                    let mut imports = ImportSection::new();
                    self.append_imports(&mut imports);
                    module.section(&imports);
                }
                SectionId::Global => {
                    let mut globals = GlobalSection::new();
                    self.append_globals(&mut globals);
                    module.section(&globals);
                }
                _ => {
                    let mut exports = ExportSection::new();
                    self.append_exports(&mut exports);
                    module.section(&exports);
                }
            }
            self.emitted.push(id);
        }
        Ok(())
    }

    fn parse_custom_section(
        &mut self,
        module: &mut wasm_encoder::Module,
        section: wasmparser::CustomSectionReader<'_>,
    ) -> Result<(), reencode::Error<Infallible>> {
        // A module's own branch hints name offsets in its original bodies, which the rewrite
        // moves: kept, they would point at other instructions and stand beside the pass's own.
        if matches!(section.as_known(), wasmparser::KnownCustom::BranchHints(_)) {
            return Ok(());
        }
        reencode::utils::parse_custom_section(self, module, section)
    }

    fn parse_function_body(
        &mut self,
        code: &mut wasm_encoder::CodeSection,
        _func: wasmparser::FunctionBody<'_>,
    ) -> Result<(), reencode::Error<Infallible>> {
        match self.bodies.next() {
            Some(body) => {
                code.function(&body);
            }
            None => {
                self.fail(InstrumentError::Rewrite(
                    "more function bodies than were rewritten".into(),
                ));
                // Keep the section well formed; the module is refused anyway.
                let mut empty = wasm_encoder::Function::new([]);
                empty.instructions().unreachable().end();
                code.function(&empty);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
