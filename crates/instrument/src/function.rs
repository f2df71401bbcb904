//! Rewriting one function body: fuel per basic block, call-depth accounting, and the NaN
//! canonicalisations `nan.rs` planned.
//!
//! The shape of a rewritten function:
//!
//! ```text
//! depth -= weight; if depth < 0 { herd.stack_exhausted() }      ;; call-depth budget
//! fuel = FUEL - cost(entry block); if fuel < 0 { refuel }        ;; local `fuel` from the global
//! block (result ...)                                              ;; the original body; branches
//!   ... each basic block starts with `fuel -= cost(block)`        ;; to its outermost label land
//!   ... each branch back to a loop first checks `fuel < 0`        ;; at this block's end
//!   ... calls: FUEL = fuel; call; fuel = FUEL
//!   ... return: FUEL = fuel; depth += weight; return
//! end
//! FUEL = fuel; depth += weight                                    ;; leaving normally
//! ```
//!
//! where `refuel` is `FUEL = fuel; herd.refuel(); fuel = FUEL`. A loop is wrapped so that its
//! refuel happens outside it: `block $done (results) loop $outer block $exhausted loop L`. A
//! branch back to `L` (`br`, or `br_if` made `if (fuel < 0) { br_if $exhausted c } br_if L c`,
//! the `if` hinted unlikely) first leaves to `$exhausted` when
//! fuel is below zero; `$exhausted` refuels and goes round `$outer` back into `L`'s header, which
//! is where the branch was going; falling out of `L` leaves `$done` with its results. Checking on
//! the way back rather than at the header, and refuelling outside the loop, keeps the loop free
//! of anything that makes Cranelift keep its float values in memory: on a Mandelbrot kernel,
//! a refuel call inside the loop cost 2.1x, a check at the header 1.8x, this 1.0x. The refuel
//! is still a call reached from inside the loop nest, and every value live across it would be
//! kept in memory through the hot loop as well (2.9x on a C++ matrix multiply), so the locals
//! live at the loop's header go to save globals before the call and come back after it
//! ([`crate::kept`]): nothing the loop needs is live across the call. A loop that a
//! `br_table` branches back to is checked at its header instead (a check before a `br_table`
//! cannot tell where it goes); a loop with parameters refuels in place at its header. Every
//! iteration of any loop therefore passes a check, as does every call (at the function's entry).
//! Each of the pass's own branches carries a branch hint (see [`Rewritten::hints`]): the refuel
//! and call-depth paths unlikely, the back edge likely, so Cranelift lays the cold paths out
//! after the hot code instead of between a loop's instructions.
//! A basic block ends at every control instruction (`loop`, `if`, `else`, `end`, `br`, `br_if`,
//! `br_table`, `return`, `unreachable`); its cost is charged at its start, one fuel per
//! instruction except the structural ones, plus, for the bulk memory and table operations, one
//! per [`BULK_BYTES_PER_FUEL`](crate::BULK_BYTES_PER_FUEL) bytes or elements they move.

use wasm_encoder::reencode::Reencode;
use wasm_encoder::{BlockType, BranchHint, Function, Ieee32, Ieee64, Instruction, ValType};
use wasmparser::{FunctionBody, Operator};

use crate::nan::{self, Float};
use crate::{
    BULK_BYTES_PER_FUEL, CANONICAL_NAN_F32, CANONICAL_NAN_F64, FRAME_OVERHEAD_SLOTS,
    InstrumentError, ModuleInfo, Report, encoder_val_type,
};

/// wasmparser's limit on a function's locals.
const MAX_LOCALS: u32 = 50_000;

/// Locals the pass adds to every function: fuel (i64), a bulk length (i32), and one scratch per
/// float type for canonicalising.
const ADDED_LOCALS: u32 = 4;

/// Fuel one instruction costs before any dynamic part: the structural ones are free (they
/// compile to nothing), as in wasmtime's own metering.
fn cost(op: &Operator<'_>) -> u64 {
    use Operator as O;
    match op {
        O::Nop | O::Drop | O::Block { .. } | O::Loop { .. } | O::End | O::Else => 0,
        O::Unreachable | O::Return => 0,
        _ => 1,
    }
}

/// Whether the instruction ends a basic block.
fn ends_block(op: &Operator<'_>) -> bool {
    use Operator as O;
    matches!(
        op,
        O::Loop { .. }
            | O::If { .. }
            | O::Else
            | O::End
            | O::Br { .. }
            | O::BrIf { .. }
            | O::BrTable { .. }
            | O::Return
            | O::Unreachable
    )
}

/// Whether the instruction moves a number of bytes or elements given by its last operand.
fn is_bulk(op: &Operator<'_>) -> bool {
    use Operator as O;
    matches!(
        op,
        O::MemoryFill { .. }
            | O::MemoryCopy { .. }
            | O::MemoryInit { .. }
            | O::TableFill { .. }
            | O::TableCopy { .. }
            | O::TableInit { .. }
    )
}

/// The indices of the locals the pass adds.
struct Added {
    fuel: u32,
    length: u32,
    scratch_f32: u32,
    scratch_f64: u32,
}

/// Reencodes the original instructions with function indices shifted past the new imports.
struct Shift<'a>(&'a ModuleInfo);

impl Reencode for Shift<'_> {
    type Error = std::convert::Infallible;

    fn function_index(
        &mut self,
        func: u32,
    ) -> Result<u32, wasm_encoder::reencode::Error<Self::Error>> {
        Ok(self.0.shifted_function(func))
    }
}

/// Rewrites the body of function `index`.
pub(crate) fn rewrite(
    info: &ModuleInfo,
    index: u32,
    body: &FunctionBody<'_>,
    report: &mut Report,
) -> Result<Rewritten, InstrumentError> {
    let invalid = |e: wasmparser::BinaryReaderError| InstrumentError::Invalid(e.to_string());
    let sig = info
        .signature_of_function(index)
        .ok_or_else(|| InstrumentError::Invalid(format!("function {index} has no type")))?;
    let mut local_types = sig.params.clone();
    let mut declared = Vec::new();
    for pair in body.get_locals_reader().map_err(invalid)? {
        let (count, ty) = pair.map_err(invalid)?;
        let total = local_types.len() as u64 + u64::from(count);
        if total > u64::from(MAX_LOCALS) {
            return Err(too_many(index, total));
        }
        local_types.extend(std::iter::repeat_n(ty, count as usize));
        declared.push((count, encoder_val_type(ty)?));
    }
    let original_locals = local_types.len() as u32;
    if original_locals + ADDED_LOCALS > MAX_LOCALS {
        return Err(too_many(index, u64::from(original_locals)));
    }
    let added = Added {
        fuel: original_locals,
        length: original_locals + 1,
        scratch_f32: original_locals + 2,
        scratch_f64: original_locals + 3,
    };
    declared.extend([
        (1, ValType::I64),
        (1, ValType::I32),
        (1, ValType::F32),
        (1, ValType::F64),
    ]);

    let mut ops = Vec::new();
    let mut reader = body.get_operators_reader().map_err(invalid)?;
    while !reader.eof() {
        ops.push(reader.read().map_err(invalid)?);
    }
    let plan = nan::plan(info, sig, &local_types, &ops)?;
    for op in &ops {
        if nan::arithmetic_type(op).is_some() {
            report.float_arith += 1;
        }
    }
    report.canonicalised_at_operation += plan.after.iter().filter(|c| c.is_some()).count() as u32;
    report.canonicalised_at_use += plan.before.iter().filter(|c| c.is_some()).count() as u32
        + u32::from(plan.at_exit.is_some());
    report.conservative_functions += u32::from(plan.conservative);

    // Cost of the basic block starting after each operator (and at entry).
    let mut block_cost = vec![0u64; ops.len()];
    let mut entry_cost = 0u64;
    let mut anchor: Option<usize> = None;
    let mut running = 0u64;
    for (i, op) in ops.iter().enumerate() {
        running += cost(op);
        if ends_block(op) {
            match anchor {
                None => entry_cost = running,
                Some(a) => block_cost[a] = running,
            }
            anchor = Some(i);
            running = 0;
        }
    }

    let weight = i32::try_from(
        u64::from(FRAME_OVERHEAD_SLOTS)
            + u64::from(original_locals + ADDED_LOCALS)
            + u64::from(plan.max_height),
    )
    .map_err(|_| InstrumentError::Rewrite(format!("function {index}'s frame is too large")))?;

    let mut out = Emitter {
        f: Function::new(declared),
        info,
        added,
        weight,
        hints: Vec::new(),
    };
    out.prologue(entry_cost);
    let results = wrapper_type(info, &sig.results)?;
    out.ins(&Instruction::Block(results));

    let mut shift = Shift(info);
    // The original's control frames, each with the absolute depth of its label in the output
    // (the output adds labels: the body's wrapper, and three around every wrapped loop), so
    // branches can be renumbered. Output labels open: the function's own and the wrapper.
    let mut frames = vec![OutFrame {
        label: 1,
        wrapped_loop: false,
        checked_at_branches: false,
        kept: Vec::new(),
    }];
    let header_checked = loops_targeted_by_tables(&ops);
    // Found by `ModuleInfo::read`'s pass over the bodies; a body it stopped at keeps nothing.
    let no_kept = crate::kept::Kept::default();
    let found = info
        .kept
        .get(index.saturating_sub(info.imported_functions) as usize)
        .unwrap_or(&no_kept);
    let (kept, kept_slots) = (&found.by_loop, &found.slots);
    let mut open = 2u32;
    let last = ops.len().saturating_sub(1);
    for (i, op) in ops.iter().enumerate() {
        if i == last {
            // The body's own `end` closes the wrapper block; then the function leaves.
            out.ins(&Instruction::End);
            if let Some(ty) = plan.at_exit {
                out.canonicalise(ty);
            }
            out.leave();
            out.ins(&Instruction::End);
            break;
        }
        if let Some(ty) = plan.before[i] {
            out.canonicalise(ty);
        }
        let call = matches!(op, Operator::Call { .. } | Operator::CallIndirect { .. });
        if call {
            out.flush();
        }
        if matches!(op, Operator::Return) {
            out.leave();
        }
        if is_bulk(op) {
            out.charge_bulk();
        }
        let relabel =
            |depth: u32, frames: &[OutFrame], open: u32| -> Result<u32, InstrumentError> {
                let target = frames
                    .len()
                    .checked_sub(1 + depth as usize)
                    .and_then(|t| frames.get(t))
                    .ok_or_else(|| InstrumentError::Invalid(format!("branch depth {depth}")))?;
                Ok(open - 1 - target.label)
            };
        match op {
            Operator::Loop { blockty } if loop_params(info, *blockty) == 0 => {
                // loop L  =>  block $done (results) / loop $outer / block $exhausted / loop L:
                // the header checks fuel and leaves to $exhausted to refuel, outside the loop,
                // then comes back to the header. Nothing in the hot loop is a call, so the
                // compiler keeps its values in registers across iterations.
                let Instruction::Loop(results) = reencode(&mut shift, op)? else {
                    return Err(InstrumentError::Rewrite(
                        "loop reencoded as another op".into(),
                    ));
                };
                out.ins(&Instruction::Block(results));
                out.ins(&Instruction::Loop(BlockType::Empty));
                out.ins(&Instruction::Block(BlockType::Empty));
                out.ins(&Instruction::Loop(results));
                open += 4;
                let at_header = header_checked.contains(&i);
                frames.push(OutFrame {
                    label: open - 1,
                    wrapped_loop: true,
                    checked_at_branches: !at_header,
                    kept: kept.get(&i).cloned().unwrap_or_default(),
                });
                if at_header {
                    out.exit_if_out_of_fuel(1);
                }
                if block_cost[i] > 0 {
                    out.charge(block_cost[i]);
                }
            }
            Operator::Block { .. } | Operator::If { .. } | Operator::Loop { .. } => {
                out.ins(&reencode(&mut shift, op)?);
                open += 1;
                frames.push(OutFrame {
                    label: open - 1,
                    wrapped_loop: false,
                    checked_at_branches: false,
                    kept: Vec::new(),
                });
                if matches!(op, Operator::Loop { .. }) {
                    // A loop with parameters refuels in place (its parameters cannot be
                    // carried out and back without more types); compilers rarely emit them.
                    out.charge_and_check(block_cost[i]);
                } else if block_cost[i] > 0 {
                    out.charge(block_cost[i]);
                }
            }
            Operator::End => {
                let frame = frames
                    .pop()
                    .ok_or_else(|| InstrumentError::Invalid("unbalanced end".into()))?;
                out.ins(&Instruction::End);
                if frame.wrapped_loop {
                    // Falling out of the loop leaves with its results; the way back from a
                    // refuel re-enters its header.
                    out.ins(&Instruction::Br(2));
                    out.ins(&Instruction::End);
                    // The loop nest's locals go to globals and back around the call, so none
                    // of its values is live across it (see `crate::kept`).
                    for &local in &frame.kept {
                        out.ins(&Instruction::LocalGet(local));
                        out.ins(&Instruction::GlobalSet(info.save_global(
                            &local_types,
                            kept_slots,
                            local,
                        )));
                    }
                    out.flush();
                    out.ins(&Instruction::Call(info.refuel_function()));
                    out.reload();
                    for &local in &frame.kept {
                        out.ins(&Instruction::GlobalGet(info.save_global(
                            &local_types,
                            kept_slots,
                            local,
                        )));
                        out.ins(&Instruction::LocalSet(local));
                    }
                    out.ins(&Instruction::Br(0));
                    out.ins(&Instruction::End);
                    out.ins(&Instruction::Unreachable);
                    out.ins(&Instruction::End);
                    open -= 4;
                } else {
                    open -= 1;
                }
                if block_cost[i] > 0 {
                    out.charge(block_cost[i]);
                }
            }
            Operator::Br { relative_depth } => {
                let depth = relabel(*relative_depth, &frames, open)?;
                if branches_back(&frames, *relative_depth) {
                    // Out to the loop's `$exhausted` (one label out from the loop's own) when
                    // fuel is below zero; the refuel comes back in at the header.
                    out.exit_if_out_of_fuel(depth + 1);
                }
                out.ins(&Instruction::Br(depth));
            }
            Operator::BrIf { relative_depth } if branches_back(&frames, *relative_depth) => {
                // br_if L  =>  if (fuel < 0) { br_if $exhausted cond } br_if L cond: the `if`
                // hinted unlikely, so the hot path is a test of fuel and the original branch,
                // both predictable, and the condition is not turned into a 0-or-1 value to be
                // combined with the fuel test (which `br_if L (cond != 0 & fuel >= 0)` did:
                // interp 1.60x -> 1.36x over plain wasm, fdtd-2d 1.77x -> 1.48x). With fuel
                // below zero and the condition false the loop is left as the original leaves
                // it, and the next check refuels. The condition waits in the bulk-length
                // scratch local, free between instructions.
                let depth = relabel(*relative_depth, &frames, open)?;
                let (fuel, scratch) = (out.added.fuel, out.added.length);
                out.ins(&Instruction::LocalSet(scratch));
                out.ins(&Instruction::LocalGet(fuel));
                out.ins(&Instruction::I64Const(0));
                out.ins(&Instruction::I64LtS);
                out.hinted(false, &Instruction::If(BlockType::Empty));
                out.ins(&Instruction::LocalGet(scratch));
                // Inside the `if`, `$exhausted` (one label out from the loop's) is two out.
                out.ins(&Instruction::BrIf(depth + 2));
                out.ins(&Instruction::End);
                out.ins(&Instruction::LocalGet(scratch));
                out.hinted(true, &Instruction::BrIf(depth));
                if block_cost[i] > 0 {
                    out.charge(block_cost[i]);
                }
            }
            Operator::BrIf { relative_depth } => {
                out.ins(&Instruction::BrIf(relabel(*relative_depth, &frames, open)?));
                if block_cost[i] > 0 {
                    out.charge(block_cost[i]);
                }
            }
            Operator::BrTable { targets } => {
                let mut mapped = Vec::new();
                for target in targets.targets() {
                    let depth = target.map_err(|e| InstrumentError::Invalid(e.to_string()))?;
                    mapped.push(relabel(depth, &frames, open)?);
                }
                let default = relabel(targets.default(), &frames, open)?;
                out.ins(&Instruction::BrTable(mapped.into(), default));
            }
            _ => {
                out.ins(&reencode(&mut shift, op)?);
                if let Some(ty) = plan.after[i] {
                    out.canonicalise(ty);
                }
                if call {
                    out.reload();
                }
                if ends_block(op) && block_cost[i] > 0 {
                    out.charge(block_cost[i]);
                }
            }
        }
    }
    Ok(Rewritten {
        body: out.f,
        hints: out.hints,
    })
}

/// One rewritten function body and the branch hints for the pass's own branches in it.
pub(crate) struct Rewritten {
    pub(crate) body: Function,
    /// For the `metadata.code.branch_hint` section, in the order of their offsets.
    pub(crate) hints: Vec<BranchHint>,
}

fn reencode<'a>(
    shift: &mut Shift<'_>,
    op: &Operator<'a>,
) -> Result<Instruction<'a>, InstrumentError> {
    shift
        .instruction(op.clone())
        .map_err(|e| InstrumentError::Rewrite(e.to_string()))
}

/// An original control frame in the output.
struct OutFrame {
    /// Absolute depth of its label among the output's open labels.
    label: u32,
    /// A loop wrapped for refuelling outside it (three more labels around it).
    wrapped_loop: bool,
    /// A wrapped loop whose fuel is checked on every branch back to it rather than at its
    /// header.
    checked_at_branches: bool,
    /// For a wrapped loop, the locals its refuel keeps in the save globals (see
    /// [`kept_across_refuel`]).
    kept: Vec<u32>,
}

/// Whether a branch `depth` frames up goes back to a loop checked on its branches back.
fn branches_back(frames: &[OutFrame], depth: u32) -> bool {
    frames
        .len()
        .checked_sub(1 + depth as usize)
        .and_then(|t| frames.get(t))
        .is_some_and(|frame| frame.checked_at_branches)
}

/// The loops (by operator index) that some `br_table` branches back to: their fuel is checked at
/// the header, since a check before a `br_table` could not tell where it will go.
fn loops_targeted_by_tables(ops: &[Operator<'_>]) -> std::collections::HashSet<usize> {
    let mut open: Vec<Option<usize>> = Vec::new();
    let mut targeted = std::collections::HashSet::new();
    for (i, op) in ops.iter().enumerate() {
        match op {
            Operator::Block { .. } | Operator::If { .. } => open.push(None),
            Operator::Loop { .. } => open.push(Some(i)),
            Operator::End => {
                open.pop();
            }
            Operator::BrTable { targets } => {
                let depths = targets
                    .targets()
                    .filter_map(Result::ok)
                    .chain(std::iter::once(targets.default()));
                for depth in depths {
                    if let Some(Some(header)) = open
                        .len()
                        .checked_sub(1 + depth as usize)
                        .and_then(|t| open.get(t))
                    {
                        targeted.insert(*header);
                    }
                }
            }
            _ => {}
        }
    }
    targeted
}

/// Parameters a loop's block type takes.
fn loop_params(info: &ModuleInfo, ty: wasmparser::BlockType) -> usize {
    match ty {
        wasmparser::BlockType::FuncType(index) => {
            info.signature(index).map_or(0, |sig| sig.params.len())
        }
        _ => 0,
    }
}

fn too_many(index: u32, locals: u64) -> InstrumentError {
    InstrumentError::TooManyLocals {
        function: index,
        locals: u32::try_from(locals).unwrap_or(u32::MAX),
        added: ADDED_LOCALS,
        limit: MAX_LOCALS,
    }
}

/// The block type of the wrapper around a body with these results.
fn wrapper_type(
    info: &ModuleInfo,
    results: &[wasmparser::ValType],
) -> Result<BlockType, InstrumentError> {
    Ok(match results {
        [] => BlockType::Empty,
        [one] => BlockType::Result(encoder_val_type(*one)?),
        many => {
            let index = info
                .result_types
                .iter()
                .find(|(r, _)| r == many)
                .map(|(_, index)| *index)
                .ok_or_else(|| {
                    InstrumentError::Rewrite("no block type for a multi-value result".into())
                })?;
            BlockType::FunctionType(index)
        }
    })
}

struct Emitter<'a> {
    f: Function,
    info: &'a ModuleInfo,
    added: Added,
    weight: i32,
    /// Hints for the branches emitted so far.
    hints: Vec<BranchHint>,
}

impl Emitter<'_> {
    fn ins(&mut self, instruction: &Instruction<'_>) {
        self.f.instruction(instruction);
    }

    /// Emits a branch (`if` or `br_if`) with a hint that it is `likely` taken or not: the
    /// compiler then lays the unlikely side out of the way, after the hot code.
    fn hinted(&mut self, likely: bool, instruction: &Instruction<'_>) {
        self.hints.push(BranchHint {
            branch_func_offset: u32::try_from(self.f.byte_len()).unwrap_or(u32::MAX),
            branch_hint_value: u32::from(likely),
        });
        self.ins(instruction);
    }

    /// Takes the frame's weight from the call-depth budget, loads fuel and charges the entry
    /// block.
    fn prologue(&mut self, entry_cost: u64) {
        let depth = self.info.depth_global();
        self.ins(&Instruction::GlobalGet(depth));
        self.ins(&Instruction::I32Const(self.weight));
        self.ins(&Instruction::I32Sub);
        self.ins(&Instruction::GlobalSet(depth));
        self.ins(&Instruction::GlobalGet(depth));
        self.ins(&Instruction::I32Const(0));
        self.ins(&Instruction::I32LtS);
        self.hinted(false, &Instruction::If(BlockType::Empty));
        self.ins(&Instruction::Call(self.info.stack_exhausted_function()));
        self.ins(&Instruction::End);
        self.reload();
        self.charge_and_check(entry_cost);
    }

    /// `fuel -= cost`.
    fn charge(&mut self, cost: u64) {
        let fuel = self.added.fuel;
        self.ins(&Instruction::LocalGet(fuel));
        self.ins(&Instruction::I64Const(cost as i64));
        self.ins(&Instruction::I64Sub);
        self.ins(&Instruction::LocalSet(fuel));
    }

    /// `fuel -= cost; if fuel < 0 { refuel }`.
    fn charge_and_check(&mut self, cost: u64) {
        let fuel = self.added.fuel;
        self.ins(&Instruction::LocalGet(fuel));
        if cost > 0 {
            self.ins(&Instruction::I64Const(cost as i64));
            self.ins(&Instruction::I64Sub);
            self.ins(&Instruction::LocalTee(fuel));
        }
        self.ins(&Instruction::I64Const(0));
        self.ins(&Instruction::I64LtS);
        self.hinted(false, &Instruction::If(BlockType::Empty));
        self.flush();
        self.ins(&Instruction::Call(self.info.refuel_function()));
        self.reload();
        self.ins(&Instruction::End);
    }

    /// Leaves to a wrapped loop's `$exhausted` block, `depth` labels out, when fuel is below
    /// zero: at the loop's header, or before a branch back to it. Either way the refuel comes
    /// back in at the header and charges its block once, whatever the slices.
    fn exit_if_out_of_fuel(&mut self, depth: u32) {
        self.ins(&Instruction::LocalGet(self.added.fuel));
        self.ins(&Instruction::I64Const(0));
        self.ins(&Instruction::I64LtS);
        self.hinted(false, &Instruction::BrIf(depth));
    }

    /// Charges a bulk operation whose count (an i32) is on top of the stack, leaving it there.
    fn charge_bulk(&mut self) {
        let fuel = self.added.fuel;
        let length = self.added.length;
        self.ins(&Instruction::LocalTee(length));
        self.ins(&Instruction::LocalGet(fuel));
        self.ins(&Instruction::LocalGet(length));
        self.ins(&Instruction::I64ExtendI32U);
        self.ins(&Instruction::I64Const(i64::from(
            BULK_BYTES_PER_FUEL.trailing_zeros(),
        )));
        self.ins(&Instruction::I64ShrU);
        self.ins(&Instruction::I64Sub);
        self.ins(&Instruction::LocalSet(fuel));
    }

    /// `FUEL = fuel`.
    fn flush(&mut self) {
        self.ins(&Instruction::LocalGet(self.added.fuel));
        self.ins(&Instruction::GlobalSet(self.info.fuel_global()));
    }

    /// `fuel = FUEL`.
    fn reload(&mut self) {
        self.ins(&Instruction::GlobalGet(self.info.fuel_global()));
        self.ins(&Instruction::LocalSet(self.added.fuel));
    }

    /// Flushes fuel and gives the frame's weight back.
    fn leave(&mut self) {
        self.flush();
        let depth = self.info.depth_global();
        self.ins(&Instruction::GlobalGet(depth));
        self.ins(&Instruction::I32Const(self.weight));
        self.ins(&Instruction::I32Add);
        self.ins(&Instruction::GlobalSet(depth));
    }

    /// Replaces the float on top of the stack by the canonical NaN if it is a NaN:
    /// `if (x >= -inf) {} else { x = NaN }`, the `else` hinted unlikely. `x >= -inf` holds for
    /// every number and fails only for NaN, and unlike `x == x` it is one flag on x86-64
    /// (`ucomisd` sets the carry flag for unordered): the hot path is a compare and a branch
    /// not taken, where a `select` on `x == x` compiled to two branches, both taken for every
    /// number (this and the branch hints together: jacobi-2d 1.64x -> 1.55x over plain wasm,
    /// cholesky 2.20x -> 1.81x).
    fn canonicalise(&mut self, ty: Float) {
        let scratch = match ty {
            Float::F32 => self.added.scratch_f32,
            Float::F64 => self.added.scratch_f64,
        };
        self.ins(&Instruction::LocalTee(scratch));
        match ty {
            Float::F32 => {
                self.ins(&Instruction::F32Const(Ieee32::new(
                    f32::NEG_INFINITY.to_bits(),
                )));
                self.ins(&Instruction::F32Ge);
            }
            Float::F64 => {
                self.ins(&Instruction::F64Const(Ieee64::new(
                    f64::NEG_INFINITY.to_bits(),
                )));
                self.ins(&Instruction::F64Ge);
            }
        }
        self.hinted(true, &Instruction::If(BlockType::Empty));
        self.ins(&Instruction::Else);
        match ty {
            Float::F32 => self.ins(&Instruction::F32Const(Ieee32::new(CANONICAL_NAN_F32))),
            Float::F64 => self.ins(&Instruction::F64Const(Ieee64::new(CANONICAL_NAN_F64))),
        }
        self.ins(&Instruction::LocalSet(scratch));
        self.ins(&Instruction::End);
        self.ins(&Instruction::LocalGet(scratch));
    }
}
