//! What a loop's refuel keeps in the save globals: the locals live at the loop's header.
//!
//! The refuel is a call on the cold path out of a wrapped loop (see `function.rs`), and it comes
//! back in at the loop's header. A call clobbers every float register and most others, and a
//! value live across it, even on that cold path, makes Cranelift keep the value where the call
//! cannot clobber it, through the hot loop too (2.9x on a C++ matrix multiply's inner loop). So
//! the locals whose values the loop still needs go to save globals before the call and come back
//! after it: nothing of them is live across the call, and the hot loop keeps its registers.
//!
//! "Still needs" is liveness at the header: a local the loop (or the code after it) may read
//! before writing it. Keeping more is correct but not free: every kept local is live through the
//! whole loop up to the branch that leaves to refuel, so a dead one (a temporary that each
//! iteration writes before reading) would still take a register or a spill slot there. Against
//! keeping every local the loop nest touches, as the pass first did, measured one kernel at a
//! time: lu 2.38x -> 1.89x over plain wasm, cholesky 2.18x -> 1.82x, but 2mm 1.16x -> 1.62x
//! (Cranelift's register allocation decides differently with each set; BENCHMARKS.md,
//! 2026-12-03). Whatever the set, the rewrite stays correct: a local not kept is live across the
//! call, which costs speed only.

use std::collections::{BTreeSet, HashMap};

use wasmparser::{Operator, ValType};

/// The save globals' types, in [`save_kind`]'s order.
pub(crate) const SAVE_KINDS: usize = 5;

/// Work allowed for one function's liveness, counted in 64-bit words of local sets copied or
/// joined: far above what compiled code needs (a few words per set), low enough that a hostile
/// module (many locals, many branches) cannot stall admission. Over it, a loop keeps every local
/// its nest touches.
const WORK_BUDGET: u64 = 20_000_000;

/// Backward passes before the loops' header sets must have settled (each pass only grows them).
const MAX_PASSES: u32 = 50;

/// What one function keeps around its loops' refuels.
#[derive(Debug, Default)]
pub(crate) struct Kept {
    /// The locals each loop operator (by index) keeps: [`kept_across_refuel`].
    pub(crate) by_loop: HashMap<usize, Vec<u32>>,
    /// Each kept local's save slot: [`save_slots`].
    pub(crate) slots: HashMap<u32, u32>,
}

impl Kept {
    /// Finds what every loop of a body (its operators, its locals' types) keeps.
    pub(crate) fn of(ops: &[Operator<'_>], local_types: &[ValType]) -> Self {
        let by_loop = kept_across_refuel(ops, local_types);
        let slots = save_slots(&by_loop, local_types);
        Self { by_loop, slots }
    }
}

/// The locals each loop operator (by index) keeps around its refuel: those live at its header,
/// of a type a global can hold (see the module's doc). Over the work budget, those its whole
/// loop nest reads or writes.
pub(crate) fn kept_across_refuel(
    ops: &[Operator<'_>],
    local_types: &[ValType],
) -> HashMap<usize, Vec<u32>> {
    let savable = |l: &u32| {
        local_types
            .get(*l as usize)
            .is_some_and(|t| save_kind(*t).is_some())
    };
    let sets = live_at_headers(ops, local_types.len()).unwrap_or_else(|| touched_by_nest(ops));
    sets.into_iter()
        .map(|(at, locals)| (at, locals.into_iter().filter(savable).collect()))
        .collect()
}

/// Which of the save globals' types holds `ty` (`None` for references: not kept).
pub(crate) fn save_kind(ty: ValType) -> Option<usize> {
    match ty {
        ValType::I32 => Some(0),
        ValType::I64 => Some(1),
        ValType::F32 => Some(2),
        ValType::F64 => Some(3),
        ValType::V128 => Some(4),
        ValType::Ref(_) => None,
    }
}

/// Every kept local's slot among the save globals of its type: its rank among the function's
/// kept locals of that type.
pub(crate) fn save_slots(
    kept: &HashMap<usize, Vec<u32>>,
    local_types: &[ValType],
) -> HashMap<u32, u32> {
    let all: BTreeSet<u32> = kept.values().flatten().copied().collect();
    let mut next = [0u32; SAVE_KINDS];
    let mut slots = HashMap::new();
    for local in all {
        if let Some(kind) = local_types.get(local as usize).and_then(|t| save_kind(*t)) {
            slots.insert(local, next[kind]);
            next[kind] += 1;
        }
    }
    slots
}

/// A set of locals, one bit each.
#[derive(Clone, PartialEq, Eq)]
struct Locals(Vec<u64>);

impl Locals {
    fn empty(words: usize) -> Self {
        Self(vec![0; words])
    }

    fn insert(&mut self, local: u32) {
        if let Some(word) = self.0.get_mut(local as usize / 64) {
            *word |= 1 << (local % 64);
        }
    }

    fn remove(&mut self, local: u32) {
        if let Some(word) = self.0.get_mut(local as usize / 64) {
            *word &= !(1 << (local % 64));
        }
    }

    fn union(&mut self, other: &Self) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }

    fn members(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for (w, word) in self.0.iter().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                out.push(w as u32 * 64 + bits.trailing_zeros());
                bits &= bits - 1;
            }
        }
        out
    }
}

/// A control frame met while walking a body backwards (at its `end`).
struct Frame {
    /// Live where a branch to its label goes: after the `end` for a block or `if`, at the
    /// header for a loop.
    label: Locals,
    /// Live just after its `end`.
    after: Locals,
    /// For an `if` with an `else`: live at the start of the `else` arm.
    else_arm: Option<Locals>,
}

/// The locals live at every loop's header (by the loop operator's index): a backward liveness
/// analysis over the structured body, repeated until the headers settle. `None` if it goes over
/// the work budget or the body is malformed (the rewrite then reports the error).
fn live_at_headers(ops: &[Operator<'_>], locals: usize) -> Option<HashMap<usize, Vec<u32>>> {
    let words = locals.div_ceil(64);
    let cost = words.max(1) as u64;
    let openers = openers(ops)?;
    let mut headers: HashMap<usize, Locals> = ops
        .iter()
        .enumerate()
        .filter(|(_, op)| matches!(op, Operator::Loop { .. }))
        .map(|(i, _)| (i, Locals::empty(words)))
        .collect();
    let mut work = 0u64;
    for _ in 0..MAX_PASSES {
        let mut changed = false;
        let mut live = Locals::empty(words);
        let mut frames: Vec<Frame> = Vec::new();
        for (i, op) in ops.iter().enumerate().rev() {
            match op {
                Operator::End => {
                    // The body's own end: nothing is live after the function returns.
                    let label = match openers.get(&i) {
                        Some(&at) if matches!(ops.get(at), Some(Operator::Loop { .. })) => {
                            headers.get(&at)?.clone()
                        }
                        _ => live.clone(),
                    };
                    work += 2 * cost;
                    frames.push(Frame {
                        label,
                        after: live.clone(),
                        else_arm: None,
                    });
                }
                Operator::Else => {
                    let frame = frames.last_mut()?;
                    frame.else_arm = Some(std::mem::replace(&mut live, frame.after.clone()));
                    work += cost;
                }
                Operator::If { .. } => {
                    let frame = frames.pop()?;
                    live.union(frame.else_arm.as_ref().unwrap_or(&frame.after));
                    work += cost;
                }
                Operator::Block { .. } => {
                    frames.pop()?;
                }
                Operator::Loop { .. } => {
                    frames.pop()?;
                    let header = headers.get_mut(&i)?;
                    if *header != live {
                        *header = live.clone();
                        changed = true;
                    }
                    work += 2 * cost;
                }
                Operator::Br { relative_depth } => {
                    live = label(&frames, *relative_depth)?.clone();
                    work += cost;
                }
                Operator::BrIf { relative_depth } => {
                    live.union(label(&frames, *relative_depth)?);
                    work += cost;
                }
                Operator::BrTable { targets } => {
                    let mut joined = label(&frames, targets.default())?.clone();
                    for depth in targets.targets() {
                        joined.union(label(&frames, depth.ok()?)?);
                        work += cost;
                    }
                    live = joined;
                }
                Operator::Return | Operator::Unreachable => live = Locals::empty(words),
                Operator::LocalGet { local_index } => live.insert(*local_index),
                Operator::LocalSet { local_index } | Operator::LocalTee { local_index } => {
                    live.remove(*local_index)
                }
                _ => {}
            }
            if work > WORK_BUDGET {
                return None;
            }
        }
        if !changed {
            return Some(
                headers
                    .into_iter()
                    .map(|(at, l)| (at, l.members()))
                    .collect(),
            );
        }
    }
    None
}

/// The label a branch `depth` frames up goes to.
fn label(frames: &[Frame], depth: u32) -> Option<&Locals> {
    let at = frames.len().checked_sub(1 + depth as usize)?;
    frames.get(at).map(|frame| &frame.label)
}

/// The operator that opens the frame each `end` closes (by index; the body's own `end` has
/// none). `None` if the body is unbalanced.
fn openers(ops: &[Operator<'_>]) -> Option<HashMap<usize, usize>> {
    let mut open = Vec::new();
    let mut openers = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        match op {
            Operator::Block { .. } | Operator::If { .. } | Operator::Loop { .. } => open.push(i),
            Operator::End if i + 1 < ops.len() => {
                openers.insert(i, open.pop()?);
            }
            _ => {}
        }
    }
    open.is_empty().then_some(openers)
}

/// For every loop operator, the locals its whole loop nest (the outermost loop around it) reads
/// or writes: what a loop keeps when liveness is over budget.
fn touched_by_nest(ops: &[Operator<'_>]) -> HashMap<usize, Vec<u32>> {
    let mut by_loop = HashMap::new();
    // The loops of the current nest, and the open frames (whether each is a loop).
    let mut nest: Vec<usize> = Vec::new();
    let mut used = BTreeSet::new();
    let mut frames: Vec<bool> = Vec::new();
    let mut loops_open = 0usize;
    for (i, op) in ops.iter().enumerate() {
        match op {
            Operator::Loop { .. } => {
                frames.push(true);
                loops_open += 1;
                nest.push(i);
            }
            Operator::Block { .. } | Operator::If { .. } => frames.push(false),
            // Every `end` closes a frame (the pop happens whether or not the guard holds).
            Operator::End if frames.pop() == Some(true) => {
                loops_open -= 1;
                if loops_open == 0 {
                    let kept: Vec<u32> = std::mem::take(&mut used).into_iter().collect();
                    for at in nest.drain(..) {
                        by_loop.insert(at, kept.clone());
                    }
                }
            }
            Operator::LocalGet { local_index }
            | Operator::LocalSet { local_index }
            | Operator::LocalTee { local_index }
                if loops_open > 0 =>
            {
                used.insert(*local_index);
            }
            _ => {}
        }
    }
    by_loop
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first function body of a module in text, as operators and local types.
    fn body(text: &str, check: impl FnOnce(&[Operator<'_>], &[ValType])) {
        let wasm = wat::parse_str(text).expect("assembles");
        let mut params = Vec::new();
        for payload in wasmparser::Parser::new(0).parse_all(&wasm) {
            match payload.expect("parses") {
                wasmparser::Payload::TypeSection(reader) => {
                    let ty = reader.into_iter_err_on_gc_types().next();
                    params = ty.expect("a type").expect("type").params().to_vec();
                }
                wasmparser::Payload::CodeSectionEntry(body) => {
                    let mut types = params.clone();
                    for pair in body.get_locals_reader().expect("locals") {
                        let (count, ty) = pair.expect("local");
                        types.extend(std::iter::repeat_n(ty, count as usize));
                    }
                    let ops: Vec<Operator<'_>> = body
                        .get_operators_reader()
                        .expect("operators")
                        .into_iter()
                        .map(|op| op.expect("operator"))
                        .collect();
                    return check(&ops, &types);
                }
                _ => {}
            }
        }
        panic!("no body");
    }

    /// The kept locals of each loop, in the order the loops open.
    fn kept_by_loop(text: &str) -> Vec<Vec<u32>> {
        let mut out = Vec::new();
        body(text, |ops, types| {
            let kept = kept_across_refuel(ops, types);
            let mut loops: Vec<usize> = kept.keys().copied().collect();
            loops.sort();
            out = loops.into_iter().map(|at| kept[&at].clone()).collect();
        });
        out
    }

    #[test]
    fn a_temporary_written_before_it_is_read_in_every_iteration_is_not_kept() {
        // $i counts, $sum accumulates, $t is a temporary, $n is only read after the loop.
        let kept = kept_by_loop(
            r#"(module (func (param $n i32) (result f64)
                 (local $i i32) (local $sum f64) (local $t f64)
                 (loop $l
                   (local.set $t (f64.convert_i32_s (local.get $i)))
                   (local.set $sum (f64.add (local.get $sum) (local.get $t)))
                   (local.set $i (i32.add (local.get $i) (i32.const 1)))
                   (br_if $l (i32.lt_s (local.get $i) (i32.const 10))))
                 (f64.add (local.get $sum) (f64.convert_i32_s (local.get $n)))))"#,
        );
        // $n (0) is live at the header though the loop never reads it: the code after does.
        assert_eq!(kept, [vec![0, 1, 2]]);
    }

    #[test]
    fn an_inner_loop_keeps_what_its_outer_loop_and_the_code_after_still_read() {
        let kept = kept_by_loop(
            r#"(module (func (param $p i32)
                 (local $i i32) (local $j i32) (local $dead i64)
                 (loop $outer
                   (local.set $j (i32.const 0))
                   (loop $inner
                     (local.set $dead (i64.const 1))
                     (i32.store (local.get $p) (local.get $j))
                     (local.set $j (i32.add (local.get $j) (i32.const 1)))
                     (br_if $inner (i32.lt_s (local.get $j) (local.get $i))))
                   (local.set $i (i32.add (local.get $i) (i32.const 1)))
                   (br_if $outer (i32.lt_s (local.get $i) (i32.const 10))))))"#,
        );
        // Outer: $p, $i ($j is set before it is read). Inner: $p, $i, $j. Never $dead.
        assert_eq!(kept, [vec![0, 1], vec![0, 1, 2]]);
    }

    #[test]
    fn both_arms_of_an_if_and_every_br_table_target_count() {
        let kept = kept_by_loop(
            r#"(module (func (param $c i32) (result i32)
                 (local $a i32) (local $b i32) (local $x i32)
                 (block $out
                   (loop $l
                     (if (local.get $c)
                       (then (local.set $x (local.get $a)))
                       (else (local.set $x (local.get $b))))
                     (block $one
                       (br_table $l $one $out (local.get $x)))
                     (local.set $c (i32.const 0))
                     (br $l)))
                 (local.get $a)))"#,
        );
        // $c, $a, $b are read before written on some path from the header; $x is not.
        assert_eq!(kept, [vec![0, 1, 2]]);
    }

    #[test]
    fn over_the_work_budget_a_loop_keeps_every_local_its_nest_touches() {
        // 20,000 locals (313 words a set) and 70,000 branches: over 20 million words of work.
        // $t (local 1) is dead at the header, yet kept: the fallback keeps all a nest touches.
        let branches = "(br_if $l (i32.const 0))".repeat(70_000);
        let text = format!(
            r#"(module (func (param $p i32) (local $t i32) (local {many})
                 (loop $l
                   (local.set $t (local.get $p))
                   {branches}
                   (br_if $l (local.get $t)))))"#,
            many = "i32 ".repeat(20_000)
        );
        body(&text, |ops, types| {
            assert!(live_at_headers(ops, types.len()).is_none(), "over budget");
            let kept = kept_across_refuel(ops, types);
            assert_eq!(kept.values().next(), Some(&vec![0, 1]));
        });
        // Within budget, the same loop keeps only $p.
        body(
            r#"(module (func (param $p i32) (local $t i32)
                 (loop $l
                   (local.set $t (local.get $p))
                   (br_if $l (local.get $t)))))"#,
            |ops, types| {
                let kept = kept_across_refuel(ops, types);
                assert_eq!(kept.values().next(), Some(&vec![0]));
            },
        );
    }
}
