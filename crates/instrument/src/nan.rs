//! Where NaN canonicalisation is needed: a forward dataflow analysis over one function.
//!
//! The oracle (wasmtime's switch) canonicalises the result of every arithmetic float operation:
//! `add sub mul div min max sqrt ceil floor trunc nearest`, `f32.demote_f64`, `f64.promote_f32`.
//! Such a result's bits matter only if they can reach a *visible point* (a store, a
//! reinterpretation as an integer, copysign's sign operand, a call argument, a return, a global
//! write) without first passing through another arithmetic operation (which makes a fresh NaN,
//! canonicalised in its turn) or a comparison or conversion to an integer (NaN-blind). `abs`,
//! `neg`, copysign's magnitude operand, `select`, locals and block parameters carry bits along.
//!
//! Each value on the operand stack and in each local is abstracted as the set of arithmetic
//! operations whose result it may be, untouched (*pure*) or after `abs`/`neg`/`copysign`
//! (*modified*), and whether it may be anything else (*clean*: loaded, constant, a parameter, a
//! global, an integer). At a visible point:
//!
//! - if the value can only be a pure arithmetic result and is on top of the stack, it is
//!   canonicalised right there, once (the canonical NaN is what the oracle would have produced at
//!   the operation, and canonicalising twice changes nothing);
//! - otherwise every operation it may come from is canonicalised where it is computed, as the
//!   oracle does: canonicalising at the visible point would wrongly touch a clean NaN from memory,
//!   or lose the sign `neg` put on a canonical NaN.
//!
//! Loops are analysed to a fixpoint: the state at a loop header is the join of the state on entry
//! and at every branch back to it. A function whose analysis exceeds its work budget (hostile
//! modules can make the sets large) is handled conservatively: every arithmetic result in it is
//! canonicalised where it is computed, which is always correct.

use wasmparser::{BlockType, FrameKind, FuncType, Operator, SubType, ValType};

use crate::{FuncSig, InstrumentError, ModuleInfo};

/// A float type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Float {
    F32,
    F64,
}

impl Float {
    fn of(ty: ValType) -> Option<Self> {
        match ty {
            ValType::F32 => Some(Self::F32),
            ValType::F64 => Some(Self::F64),
            _ => None,
        }
    }
}

/// Where the pass canonicalises, for one function.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Per operator: canonicalise the float this operator computes, right after it.
    pub(crate) after: Vec<Option<Float>>,
    /// Per operator: canonicalise the float on top of the stack, right before it.
    pub(crate) before: Vec<Option<Float>>,
    /// Canonicalise the function's single float result as it leaves.
    pub(crate) at_exit: Option<Float>,
    /// The deepest the operand stack gets.
    pub(crate) max_height: u32,
    /// The analysis went over budget and every arithmetic result is canonicalised.
    pub(crate) conservative: bool,
}

/// Work allowed per function, counted in abstract values copied or joined: far above what
/// compiled code needs, low enough that a hostile module cannot stall admission.
const WORK_BUDGET: u64 = 20_000_000;

/// Passes over a function before its loops must have reached their fixpoint (each pass only
/// grows the loop headers' states, so this is reached in a few passes in practice).
const MAX_PASSES: u32 = 50;

/// The abstraction of one value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Val {
    /// It may be something other than an arithmetic result.
    clean: bool,
    /// Arithmetic operations (operator indices) whose untouched result it may be.
    pure: Vec<u32>,
    /// Arithmetic operations whose result it may be after abs, neg or copysign.
    modified: Vec<u32>,
}

impl Val {
    fn clean() -> Self {
        Self {
            clean: true,
            ..Self::default()
        }
    }

    fn arithmetic(at: u32) -> Self {
        Self {
            clean: false,
            pure: vec![at],
            modified: Vec::new(),
        }
    }

    fn has_origins(&self) -> bool {
        !self.pure.is_empty() || !self.modified.is_empty()
    }

    /// The value after abs, neg or copysign's magnitude.
    fn modify(self) -> Self {
        Self {
            clean: self.clean,
            modified: union(&self.pure, &self.modified),
            pure: Vec::new(),
        }
    }

    /// Joins `other` in; whether anything was added.
    fn join(&mut self, other: &Val) -> bool {
        let mut grew = false;
        if other.clean && !self.clean {
            self.clean = true;
            grew = true;
        }
        for (mine, theirs) in [
            (&mut self.pure, &other.pure),
            (&mut self.modified, &other.modified),
        ] {
            if !theirs.iter().all(|o| mine.binary_search(o).is_ok()) {
                *mine = union(mine, theirs);
                grew = true;
            }
        }
        grew
    }

    fn size(&self) -> u64 {
        1 + self.pure.len() as u64 + self.modified.len() as u64
    }
}

fn union(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// The locals and the values a branch carries to its label.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Edge {
    locals: Vec<Val>,
    values: Vec<Val>,
}

impl Edge {
    fn join(&mut self, other: &Edge) -> bool {
        let mut grew = false;
        for (mine, theirs) in self
            .locals
            .iter_mut()
            .zip(&other.locals)
            .chain(self.values.iter_mut().zip(&other.values))
        {
            grew |= mine.join(theirs);
        }
        grew
    }

    fn size(&self) -> u64 {
        self.locals.iter().chain(&self.values).map(Val::size).sum()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Function,
    Block,
    Loop,
    If,
    Else,
}

struct Frame {
    kind: Kind,
    params: usize,
    results: usize,
    /// Stack height below the block's parameters.
    height: usize,
    /// Entered while the code was unreachable: nothing in it is analysed.
    dead: bool,
    /// Which loop this is (loops numbered in order of appearance).
    loop_id: usize,
    /// The join of every branch to this label and the fallthrough (block, if, function).
    exit: Option<Edge>,
    /// For `if`: the state on entry, for the `else` arm (or the missing one).
    entry: Option<Edge>,
}

/// Enough of the module for `operator_arity`.
struct Arity<'a> {
    info: &'a ModuleInfo,
}

impl wasmparser::ModuleArity for Arity<'_> {
    fn sub_type_at(&self, type_idx: u32) -> Option<&SubType> {
        self.info.sub_types.get(type_idx as usize)
    }
    fn tag_type_arity(&self, _at: u32) -> Option<(u32, u32)> {
        None
    }
    fn type_index_of_function(&self, function_idx: u32) -> Option<u32> {
        self.info.function_types.get(function_idx as usize).copied()
    }
    fn func_type_of_cont_type(&self, _c: &wasmparser::ContType) -> Option<&FuncType> {
        None
    }
    fn sub_type_of_ref_type(&self, _rt: &wasmparser::RefType) -> Option<&SubType> {
        None
    }
    fn control_stack_height(&self) -> u32 {
        0
    }
    fn label_block(&self, _depth: u32) -> Option<(BlockType, FrameKind)> {
        None
    }
}

/// What kind of float operator `op` is, for the analysis.
enum FloatOp {
    /// Computes a fresh result (canonicalised by the oracle): operands consumed, the type made.
    Arithmetic { operands: usize, ty: Float },
    /// abs or neg: carries the operand's bits with a changed sign.
    SignOnly,
    /// copysign: the magnitude is carried, the sign operand becomes visible.
    Copysign(Float),
    /// A float store: the value (on top) becomes visible.
    Store(Float),
    /// A reinterpretation as an integer: the value becomes visible.
    Reinterpret(Float),
}

fn float_op(op: &Operator<'_>) -> Option<FloatOp> {
    use Float::{F32, F64};
    use Operator as O;
    let arithmetic = |operands, ty| Some(FloatOp::Arithmetic { operands, ty });
    match op {
        O::F32Add | O::F32Sub | O::F32Mul | O::F32Div | O::F32Min | O::F32Max => arithmetic(2, F32),
        O::F64Add | O::F64Sub | O::F64Mul | O::F64Div | O::F64Min | O::F64Max => arithmetic(2, F64),
        O::F32Sqrt | O::F32Ceil | O::F32Floor | O::F32Trunc | O::F32Nearest | O::F32DemoteF64 => {
            arithmetic(1, F32)
        }
        O::F64Sqrt | O::F64Ceil | O::F64Floor | O::F64Trunc | O::F64Nearest | O::F64PromoteF32 => {
            arithmetic(1, F64)
        }
        O::F32Abs | O::F32Neg | O::F64Abs | O::F64Neg => Some(FloatOp::SignOnly),
        O::F32Copysign => Some(FloatOp::Copysign(F32)),
        O::F64Copysign => Some(FloatOp::Copysign(F64)),
        O::F32Store { .. } => Some(FloatOp::Store(F32)),
        O::F64Store { .. } => Some(FloatOp::Store(F64)),
        O::I32ReinterpretF32 => Some(FloatOp::Reinterpret(F32)),
        O::I64ReinterpretF64 => Some(FloatOp::Reinterpret(F64)),
        _ => None,
    }
}

/// The float type an arithmetic operator computes, if it is one (for counting and the
/// conservative plan).
pub(crate) fn arithmetic_type(op: &Operator<'_>) -> Option<Float> {
    match float_op(op) {
        Some(FloatOp::Arithmetic { ty, .. }) => Some(ty),
        _ => None,
    }
}

struct Analysis<'a> {
    info: &'a ModuleInfo,
    sig: &'a FuncSig,
    ops: &'a [Operator<'a>],
    /// State at each loop header contributed by branches back to it, over all passes so far.
    back_edges: Vec<Option<Edge>>,
    work: u64,
    plan: Plan,
}

/// Plans the canonicalisations of one function. `local_types` lists every local, parameters
/// first.
pub(crate) fn plan(
    info: &ModuleInfo,
    sig: &FuncSig,
    local_types: &[ValType],
    ops: &[Operator<'_>],
) -> Result<Plan, InstrumentError> {
    let mut analysis = Analysis {
        info,
        sig,
        ops,
        back_edges: Vec::new(),
        work: 0,
        plan: Plan {
            after: vec![None; ops.len()],
            before: vec![None; ops.len()],
            at_exit: None,
            max_height: 0,
            conservative: false,
        },
    };
    let locals = local_types.len();
    let mut passes = 0;
    loop {
        passes += 1;
        let changed = match analysis.pass(locals, false) {
            Ok(changed) => changed,
            Err(Budget) => return Ok(conservative(ops, analysis.plan.max_height)),
        };
        if !changed {
            break;
        }
        if passes >= MAX_PASSES {
            return Ok(conservative(ops, analysis.plan.max_height));
        }
    }
    match analysis.pass(locals, true) {
        Ok(_) => Ok(analysis.plan),
        Err(Budget) => Ok(conservative(ops, analysis.plan.max_height)),
    }
}

/// The plan that canonicalises every arithmetic result where it is computed.
fn conservative(ops: &[Operator<'_>], max_height: u32) -> Plan {
    Plan {
        after: ops.iter().map(arithmetic_type).collect(),
        before: vec![None; ops.len()],
        at_exit: None,
        max_height,
        conservative: true,
    }
}

/// The analysis went over its work budget, or met an operator it cannot model: the function
/// gets the conservative plan.
struct Budget;

/// The abstract state while walking the function.
struct State {
    locals: Vec<Val>,
    stack: Vec<Val>,
    reachable: bool,
    frames: Vec<Frame>,
    loops_seen: usize,
}

impl State {
    fn pop(&mut self) -> Val {
        // Validated code never pops an empty stack; a clean value is the safe answer anyway.
        self.stack.pop().unwrap_or_else(Val::clean)
    }

    fn top(&self, n: usize) -> Vec<Val> {
        let start = self.stack.len().saturating_sub(n);
        self.stack[start..].to_vec()
    }

    fn edge(&self, values: usize) -> Edge {
        Edge {
            locals: self.locals.clone(),
            values: self.top(values),
        }
    }
}

impl Analysis<'_> {
    fn charge(&mut self, amount: u64) -> Result<(), Budget> {
        self.work += amount;
        if self.work > WORK_BUDGET {
            Err(Budget)
        } else {
            Ok(())
        }
    }

    fn block_arity(&self, ty: BlockType) -> (usize, usize) {
        match ty {
            BlockType::Empty => (0, 0),
            BlockType::Type(_) => (0, 1),
            BlockType::FuncType(index) => self
                .info
                .signature(index)
                .map_or((0, 0), |sig| (sig.params.len(), sig.results.len())),
        }
    }

    /// One walk over the function. With `record`, visible points write the plan. Returns whether
    /// any loop header's state grew.
    fn pass(&mut self, locals: usize, record: bool) -> Result<bool, Budget> {
        let mut changed = false;
        let mut local_vals = vec![Val::clean(); locals];
        // Parameters and zero-initialised locals are clean already.
        local_vals.truncate(locals);
        let mut state = State {
            locals: local_vals,
            stack: Vec::new(),
            reachable: true,
            frames: vec![Frame {
                kind: Kind::Function,
                params: 0,
                results: self.sig.results.len(),
                height: 0,
                dead: false,
                loop_id: 0,
                exit: None,
                entry: None,
            }],
            loops_seen: 0,
        };
        let ops = self.ops;
        for (index, op) in ops.iter().enumerate() {
            let at = index as u32;
            self.charge(1)?;
            changed |= self.step(&mut state, at, op, record)?;
            self.plan.max_height = self.plan.max_height.max(state.stack.len() as u32);
            if state.frames.is_empty() {
                break;
            }
        }
        Ok(changed)
    }

    /// Joins the current state into the label `depth` frames up.
    fn branch(&mut self, state: &State, depth: u32) -> Result<bool, Budget> {
        let Some(position) = state.frames.len().checked_sub(1 + depth as usize) else {
            return Ok(false);
        };
        let frame = &state.frames[position];
        let carried = if frame.kind == Kind::Loop {
            frame.params
        } else {
            frame.results
        };
        let edge = state.edge(carried);
        self.charge(edge.size())?;
        if frame.kind == Kind::Loop {
            let id = frame.loop_id;
            if self.back_edges.len() <= id {
                self.back_edges.resize(id + 1, None);
            }
            return Ok(match &mut self.back_edges[id] {
                Some(existing) => existing.join(&edge),
                slot @ None => {
                    *slot = Some(edge);
                    true
                }
            });
        }
        Ok(false)
    }

    /// Joins into a block's exit (forward branches, which the same pass reaches later).
    fn branch_forward(state: &mut State, depth: u32) {
        let Some(position) = state.frames.len().checked_sub(1 + depth as usize) else {
            return;
        };
        let frame = &state.frames[position];
        if frame.kind == Kind::Loop {
            return;
        }
        let edge = state.edge(frame.results);
        let frame = &mut state.frames[position];
        match &mut frame.exit {
            Some(existing) => {
                existing.join(&edge);
            }
            slot @ None => *slot = Some(edge),
        }
    }

    fn branch_to(&mut self, state: &mut State, depth: u32) -> Result<bool, Budget> {
        let changed = self.branch(state, depth)?;
        Self::branch_forward(state, depth);
        Ok(changed)
    }

    /// A value becomes visible at operator `at` (or at the function's exit when `at` is None).
    /// `on_top`: it is on top of the stack there, so it can be canonicalised in place.
    fn visible(&mut self, value: &Val, ty: Option<Float>, at: Option<u32>, on_top: bool) {
        let Some(ty) = ty else {
            return;
        };
        if !value.has_origins() {
            return;
        }
        if on_top && !value.clean && value.modified.is_empty() {
            match at {
                Some(at) => self.plan.before[at as usize] = Some(ty),
                None => self.plan.at_exit = Some(ty),
            }
            return;
        }
        for origin in value.pure.iter().chain(&value.modified) {
            let origin_ty = self.ops.get(*origin as usize).and_then(arithmetic_type);
            self.plan.after[*origin as usize] = origin_ty;
        }
    }

    /// Values leaving the function (at `return` or its end).
    fn leave(&mut self, values: &[Val], at: Option<u32>) {
        let results = self.sig.results.clone();
        let count = results.len();
        for (position, (value, ty)) in values.iter().zip(&results).enumerate() {
            let on_top = position + 1 == count && (at.is_some() || count == 1);
            self.visible(value, Float::of(*ty), at, on_top);
        }
    }

    fn step(
        &mut self,
        state: &mut State,
        at: u32,
        op: &Operator<'_>,
        record: bool,
    ) -> Result<bool, Budget> {
        use Operator as O;
        // Structure is followed even through unreachable code, so frames stay matched.
        match op {
            O::Block { blockty } | O::Loop { blockty } | O::If { blockty } => {
                let (params, results) = self.block_arity(*blockty);
                let kind = match op {
                    O::Block { .. } => Kind::Block,
                    O::Loop { .. } => Kind::Loop,
                    _ => Kind::If,
                };
                let loop_id = if kind == Kind::Loop {
                    state.loops_seen += 1;
                    state.loops_seen - 1
                } else {
                    0
                };
                if !state.reachable {
                    state.frames.push(Frame {
                        kind,
                        params,
                        results,
                        height: state.stack.len(),
                        dead: true,
                        loop_id,
                        exit: None,
                        entry: None,
                    });
                    return Ok(false);
                }
                if kind == Kind::If {
                    state.pop();
                }
                let height = state.stack.len().saturating_sub(params);
                let mut entry = None;
                if kind == Kind::Loop {
                    if let Some(Some(back)) = self.back_edges.get(loop_id) {
                        let back = back.clone();
                        self.charge(back.size())?;
                        for (mine, theirs) in state.locals.iter_mut().zip(&back.locals) {
                            mine.join(theirs);
                        }
                        for (mine, theirs) in state.stack[height..].iter_mut().zip(&back.values) {
                            mine.join(theirs);
                        }
                    }
                } else if kind == Kind::If {
                    let edge = state.edge(params);
                    self.charge(edge.size())?;
                    entry = Some(edge);
                }
                state.frames.push(Frame {
                    kind,
                    params,
                    results,
                    height,
                    dead: false,
                    loop_id,
                    exit: None,
                    entry,
                });
                Ok(false)
            }
            O::Else => {
                let reachable = state.reachable;
                let results = state.frames.last().map_or(0, |f| f.results);
                let fallthrough = reachable.then(|| state.edge(results));
                let Some(frame) = state.frames.last_mut() else {
                    return Ok(false);
                };
                if frame.dead {
                    return Ok(false);
                }
                if let Some(edge) = fallthrough {
                    match &mut frame.exit {
                        Some(existing) => {
                            existing.join(&edge);
                        }
                        slot @ None => *slot = Some(edge),
                    }
                }
                frame.kind = Kind::Else;
                let entry = frame.entry.take();
                let height = frame.height;
                state.stack.truncate(height);
                if let Some(entry) = entry {
                    state.locals = entry.locals;
                    state.stack.extend(entry.values);
                    state.reachable = true;
                } else {
                    state.reachable = false;
                }
                Ok(false)
            }
            O::End => {
                let Some(frame) = state.frames.pop() else {
                    return Ok(false);
                };
                if frame.dead {
                    return Ok(false);
                }
                let fallthrough = state.reachable.then(|| state.edge(frame.results));
                let mut exit = match frame.kind {
                    Kind::Loop => fallthrough,
                    _ => match (frame.exit, fallthrough) {
                        (Some(mut a), Some(b)) => {
                            a.join(&b);
                            Some(a)
                        }
                        (a, b) => a.or(b),
                    },
                };
                // An `if` without `else`: its missing arm passes the parameters through.
                if frame.kind == Kind::If
                    && let Some(entry) = frame.entry
                {
                    match &mut exit {
                        Some(existing) => {
                            existing.join(&entry);
                        }
                        slot @ None => *slot = Some(entry),
                    }
                }
                if let Some(edge) = &exit {
                    self.charge(edge.size())?;
                }
                state.stack.truncate(frame.height);
                match exit {
                    Some(edge) => {
                        if frame.kind == Kind::Function {
                            if record {
                                self.leave(&edge.values, None);
                            }
                        } else {
                            state.locals = edge.locals;
                            state.stack.extend(edge.values);
                        }
                        state.reachable = true;
                    }
                    None => state.reachable = false,
                }
                Ok(false)
            }
            _ if !state.reachable => Ok(false),
            O::Br { relative_depth } => {
                let changed = self.branch_to(state, *relative_depth)?;
                state.reachable = false;
                Ok(changed)
            }
            O::BrIf { relative_depth } => {
                state.pop();
                self.branch_to(state, *relative_depth)
            }
            O::BrTable { targets } => {
                state.pop();
                let mut changed = false;
                for target in targets
                    .targets()
                    .chain(std::iter::once(Ok(targets.default())))
                {
                    let Ok(depth) = target else {
                        continue;
                    };
                    changed |= self.branch_to(state, depth)?;
                }
                state.reachable = false;
                Ok(changed)
            }
            O::Return => {
                if record {
                    let values = state.top(self.sig.results.len());
                    self.leave(&values, Some(at));
                }
                state.reachable = false;
                Ok(false)
            }
            O::Unreachable => {
                state.reachable = false;
                Ok(false)
            }
            O::LocalGet { local_index } => {
                let value = state
                    .locals
                    .get(*local_index as usize)
                    .cloned()
                    .unwrap_or_else(Val::clean);
                self.charge(value.size())?;
                state.stack.push(value);
                Ok(false)
            }
            O::LocalSet { local_index } => {
                let value = state.pop();
                if let Some(slot) = state.locals.get_mut(*local_index as usize) {
                    *slot = value;
                }
                Ok(false)
            }
            O::LocalTee { local_index } => {
                let value = state.stack.last().cloned().unwrap_or_else(Val::clean);
                self.charge(value.size())?;
                if let Some(slot) = state.locals.get_mut(*local_index as usize) {
                    *slot = value;
                }
                Ok(false)
            }
            O::GlobalSet { global_index } => {
                let value = state.pop();
                if record {
                    let ty = self
                        .info
                        .global_types
                        .get(*global_index as usize)
                        .and_then(|ty| Float::of(*ty));
                    self.visible(&value, ty, Some(at), true);
                }
                Ok(false)
            }
            O::Select | O::TypedSelect { .. } => {
                state.pop();
                let b = state.pop();
                let mut a = state.pop();
                self.charge(a.size() + b.size())?;
                a.join(&b);
                state.stack.push(a);
                Ok(false)
            }
            O::Call { function_index } => {
                let sig = self.info.signature_of_function(*function_index).cloned();
                self.call(state, at, sig, false, record);
                Ok(false)
            }
            O::CallIndirect { type_index, .. } => {
                state.pop();
                let sig = self.info.signature(*type_index).cloned();
                self.call(state, at, sig, true, record);
                Ok(false)
            }
            _ => match float_op(op) {
                Some(FloatOp::Arithmetic { operands, .. }) => {
                    for _ in 0..operands {
                        state.pop();
                    }
                    state.stack.push(Val::arithmetic(at));
                    Ok(false)
                }
                Some(FloatOp::SignOnly) => {
                    let value = state.pop().modify();
                    state.stack.push(value);
                    Ok(false)
                }
                Some(FloatOp::Copysign(ty)) => {
                    let sign = state.pop();
                    if record {
                        self.visible(&sign, Some(ty), Some(at), true);
                    }
                    let magnitude = state.pop().modify();
                    state.stack.push(magnitude);
                    Ok(false)
                }
                Some(FloatOp::Store(ty)) => {
                    let value = state.pop();
                    if record {
                        self.visible(&value, Some(ty), Some(at), true);
                    }
                    state.pop();
                    Ok(false)
                }
                Some(FloatOp::Reinterpret(ty)) => {
                    let value = state.pop();
                    if record {
                        self.visible(&value, Some(ty), Some(at), true);
                    }
                    state.stack.push(Val::clean());
                    Ok(false)
                }
                None => {
                    // Every other operator: its operands are consumed NaN-blindly (comparisons,
                    // conversions to integers) or are integers, and its results are clean.
                    // An operator whose effect on the stack cannot be told makes the whole
                    // function's analysis untrustworthy: it falls back to the conservative plan.
                    let (pops, pushes) = op
                        .operator_arity(&Arity { info: self.info })
                        .ok_or(Budget)?;
                    for _ in 0..pops {
                        state.pop();
                    }
                    for _ in 0..pushes {
                        state.stack.push(Val::clean());
                    }
                    Ok(false)
                }
            },
        }
    }

    fn call(
        &mut self,
        state: &mut State,
        at: u32,
        sig: Option<FuncSig>,
        indirect: bool,
        record: bool,
    ) {
        let Some(sig) = sig else {
            return;
        };
        let args = state.top(sig.params.len());
        let count = args.len();
        if record {
            for (position, (value, ty)) in args.iter().zip(&sig.params).enumerate() {
                // The last argument of a direct call is on top of the stack at the call.
                let on_top = !indirect && position + 1 == count;
                self.visible(value, Float::of(*ty), Some(at), on_top);
            }
        }
        for _ in 0..count {
            state.pop();
        }
        for _ in 0..sig.results.len() {
            state.stack.push(Val::clean());
        }
    }
}
