//! The pass's own tests: the rewritten module is valid, the canonicalisations land where the
//! dataflow says (and nowhere else), and reserved names are refused. Running rewritten modules
//! against the oracle is the sandbox's differential test (`crates/sandbox/tests/differential.rs`).

use super::*;

fn rewrite(text: &str) -> Instrumented {
    let wasm = wat::parse_str(text).expect("assembles");
    let out = instrument(&wasm).expect("instruments");
    wasmparser::Validator::new_with_features(supported_features())
        .validate_all(&out.wasm)
        .expect("the rewritten module is valid");
    out
}

const MANDELBROT_ROW: &str = r#"
(module
  (memory (export "memory") 1)
  ;; Iterates z = z^2 + c for one point: only arithmetic and comparisons, nothing visible.
  (func $escape (param $cr f64) (param $ci f64) (result i32)
    (local $zr f64) (local $zi f64) (local $t f64) (local $n i32)
    (loop $next
      (local.set $t (f64.add (f64.sub (f64.mul (local.get $zr) (local.get $zr))
                                      (f64.mul (local.get $zi) (local.get $zi)))
                             (local.get $cr)))
      (local.set $zi (f64.add (f64.mul (f64.const 2) (f64.mul (local.get $zr) (local.get $zi)))
                              (local.get $ci)))
      (local.set $zr (local.get $t))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br_if $next (i32.and
        (f64.le (f64.add (f64.mul (local.get $zr) (local.get $zr))
                         (f64.mul (local.get $zi) (local.get $zi))) (f64.const 4))
        (i32.lt_u (local.get $n) (i32.const 1000)))))
    (local.get $n))
  ;; Sums a row and stores the sum once.
  (func $row (param $y f64)
    (local $x i32) (local $sum f64)
    (loop $cols
      (local.set $sum (f64.add (local.get $sum)
        (f64.convert_i32_u (call $escape (f64.convert_i32_u (local.get $x)) (local.get $y)))))
      (local.set $x (i32.add (local.get $x) (i32.const 1)))
      (br_if $cols (i32.lt_u (local.get $x) (i32.const 100))))
    (f64.store (i32.const 0) (local.get $sum)))
  (func (export "_start") (call $row (f64.const 0.5))))
"#;

#[test]
fn a_loop_that_only_computes_gets_nothing_and_a_stored_sum_one_canonicalisation() {
    let out = rewrite(MANDELBROT_ROW);
    assert_eq!(out.report.float_arith, 11);
    assert_eq!(out.report.canonicalised_at_operation, 0, "{:?}", out.report);
    assert_eq!(out.report.canonicalised_at_use, 1, "the store of the sum");
    assert_eq!(out.report.conservative_functions, 0);
}

#[test]
fn neg_before_a_store_canonicalises_at_the_operation() {
    // The oracle stores neg(canonical NaN): the sign must survive, so canonicalising at the
    // store (which would drop it) is wrong; the add is canonicalised instead.
    let out = rewrite(
        r#"(module (memory (export "memory") 1)
             (func (export "_start") (param) (local $a f64)
               (f64.store (i32.const 0) (f64.neg (f64.add (local.get $a) (f64.load (i32.const 8)))))))"#,
    );
    assert_eq!(out.report.canonicalised_at_operation, 1);
    assert_eq!(out.report.canonicalised_at_use, 0);
}

#[test]
fn a_value_that_may_come_from_memory_is_not_canonicalised_at_use() {
    // select(load, sqrt): a NaN loaded from memory must keep its bits, so the sqrt is
    // canonicalised where it is computed.
    let out = rewrite(
        r#"(module (memory (export "memory") 1)
             (func (export "_start")
               (f32.store (i32.const 0)
                 (select (f32.load (i32.const 4)) (f32.sqrt (f32.load (i32.const 8)))
                         (i32.load (i32.const 12))))))"#,
    );
    assert_eq!(out.report.canonicalised_at_operation, 1);
    assert_eq!(out.report.canonicalised_at_use, 0);
}

#[test]
fn visible_points_are_all_found() {
    // Each arithmetic result here reaches exactly one kind of visible point.
    let out = rewrite(
        r#"(module (memory (export "memory") 1)
             (global $g (mut f64) (f64.const 0))
             (func $take (param f32 f64))
             (func $give (result f64) (f64.add (f64.const 1) (f64.const 2)))
             (func (export "_start") (local $x f64)
               (global.set $g (f64.mul (local.get $x) (local.get $x)))
               (drop (i64.reinterpret_f64 (f64.sqrt (local.get $x))))
               (drop (f64.copysign (local.get $x) (f64.div (local.get $x) (local.get $x))))
               (call $take (f32.demote_f64 (local.get $x)) (f64.floor (local.get $x)))
               (drop (f64.lt (f64.add (local.get $x) (local.get $x)) (f64.const 0)))
               (drop (i32.trunc_sat_f64_s (f64.sub (local.get $x) (local.get $x))))))"#,
    );
    // global.set, reinterpret, copysign's sign, the call's last argument and the return are
    // canonicalised in place; the call's first argument at its operation; the comparison and
    // the conversion to an integer are NaN-blind and get nothing.
    assert_eq!(out.report.float_arith, 8);
    assert_eq!(out.report.canonicalised_at_use, 5, "{:?}", out.report);
    assert_eq!(out.report.canonicalised_at_operation, 1, "{:?}", out.report);
}

#[test]
fn values_through_blocks_and_loops_are_followed() {
    // The sum leaves a block as its result and is stored after a loop: one canonicalisation
    // at the store; the product returned through a branch out of a loop is canonicalised at the
    // function's exit.
    let out = rewrite(
        r#"(module (memory (export "memory") 1)
             (func $f (param $x f64) (result f64)
               (loop $l (result f64)
                 (br_if 1 (f64.mul (local.get $x) (local.get $x)) (i32.const 1))
                 (drop)
                 (br $l)))
             (func (export "_start") (local $s f64)
               (local.set $s (block (result f64) (f64.add (local.get $s) (f64.const 1))))
               (f64.store (i32.const 0) (local.get $s))
               (drop (call $f (f64.const 3)))))"#,
    );
    assert_eq!(out.report.canonicalised_at_operation, 0, "{:?}", out.report);
    // The store, the exit of $f, and the call's argument (a constant: nothing to do).
    assert_eq!(out.report.canonicalised_at_use, 2, "{:?}", out.report);
}

#[test]
fn reserved_names_are_refused() {
    let import = wat::parse_str(
        r#"(module (import "herd" "refuel" (func)) (memory (export "memory") 1)
             (func (export "_start")))"#,
    )
    .expect("assembles");
    assert!(matches!(
        instrument(&import),
        Err(InstrumentError::Reserved(name)) if name == "herd.refuel"
    ));
    let export = wat::parse_str(
        r#"(module (memory (export "memory") 1) (global (export "__herd_fuel") i32 (i32.const 0))
             (func (export "_start")))"#,
    )
    .expect("assembles");
    assert!(matches!(
        instrument(&export),
        Err(InstrumentError::Reserved(_))
    ));
}

#[test]
fn features_the_pass_does_not_handle_are_refused() {
    let simd = wat::parse_str(
        r#"(module (memory (export "memory") 1)
             (func (export "_start") (drop (f32x4.add (v128.const i64x2 0 0) (v128.const i64x2 0 0)))))"#,
    )
    .expect("assembles");
    assert!(matches!(
        instrument(&simd),
        Err(InstrumentError::Invalid(_))
    ));
    assert!(matches!(
        instrument(b"not wasm"),
        Err(InstrumentError::Invalid(_))
    ));
}

#[test]
fn modules_without_imports_globals_or_other_sections_get_them() {
    // No import, global or type-using function besides _start: the pass adds its sections in
    // their places.
    let out = rewrite(r#"(module (memory (export "memory") 1) (func (export "_start")))"#);
    assert_eq!(out.original_imports, 0);
    assert_eq!(out.original_function_index(2), Some(0));
    assert_eq!(out.original_function_index(1), None);
    // With imports, names and a table of function references, indices shift consistently (the
    // validator would refuse a call or element pointing at the wrong type).
    rewrite(
        r#"(module
             (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
             (memory (export "memory") 1)
             (table 2 funcref)
             (elem (i32.const 0) $a $b)
             (type $t (func (result i32 i64)))
             (func $a (result i32 i64) (i32.const 1) (i64.const 2))
             (func $b (result i32 i64) (call_indirect (type $t) (i32.const 0)))
             (func (export "_start") (drop (drop (call $b))) (call $exit (i32.const 0))))"#,
    );
}

#[test]
fn every_sample_job_is_rewritten_to_a_valid_module() {
    for (name, wasm, _) in herd_samples::ALL {
        let out = instrument(wasm).unwrap_or_else(|e| panic!("{name}: {e}"));
        wasmparser::Validator::new_with_features(supported_features())
            .validate_all(&out.wasm)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(out.report.conservative_functions, 0, "{name}");
    }
}

/// A function whose analysis would cost more than its budget: 2,000 float locals, each holding an
/// arithmetic result, carried through 12,000 branches.
fn over_budget_module() -> String {
    let mut body = String::new();
    for i in 0..2000 {
        body.push_str(&format!(
            "(local.set {i} (f64.div (f64.load (i32.const 0)) (f64.const 0)))\n"
        ));
    }
    body.push_str("(block\n");
    for _ in 0..12000 {
        body.push_str("(br_if 0 (i32.load (i32.const 8)))\n");
    }
    body.push_str(")\n(f64.store (i32.const 16) (f64.neg (local.get 1999)))\n");
    format!(
        r#"(module (memory (export "memory") 1)
             (func (export "_start") (local {} ) {body}))"#,
        "f64 ".repeat(2000)
    )
}

#[test]
fn a_function_over_the_analysis_budget_is_canonicalised_conservatively() {
    let out = rewrite(&over_budget_module());
    assert_eq!(out.report.conservative_functions, 1);
    assert_eq!(out.report.float_arith, 2000);
    assert_eq!(
        out.report.canonicalised_at_operation, 2000,
        "every arithmetic result, where it is computed"
    );
}

#[test]
fn a_loops_refuel_keeps_the_locals_live_at_its_header_in_save_globals_and_no_dead_one() {
    let out = rewrite(MANDELBROT_ROW);
    let mut globals = Vec::new();
    let mut bodies = Vec::new();
    for payload in Parser::new(0).parse_all(&out.wasm) {
        match payload.expect("parses") {
            Payload::GlobalSection(reader) => {
                for global in reader {
                    globals.push(global.expect("global").ty.content_type);
                }
            }
            Payload::CodeSectionEntry(body) => {
                let ops: Vec<String> = body
                    .get_operators_reader()
                    .expect("operators")
                    .into_iter()
                    .map(|op| format!("{:?}", op.expect("operator")))
                    .collect();
                bodies.push(ops);
            }
            _ => {}
        }
    }
    use wasmparser::ValType as V;
    // The fuel and depth globals, then the save globals: one i32 ($escape's $n, or $row's $x)
    // and four f64 ($escape's $cr $ci $zr $zi, live at its loop's header; $t is written before
    // it is read in every iteration, so it is dead there and not kept).
    assert_eq!(
        globals,
        [V::I64, V::I32, V::I32, V::F64, V::F64, V::F64, V::F64]
    );
    // $escape's loop refuel: each of the 5 live locals stored before `call 0` (refuel) and
    // loaded after it, and never $t (local 4).
    let escape = &bodies[0];
    let call = escape
        .iter()
        .rposition(|op| op == "Call { function_index: 0 }")
        .expect("the loop's refuel");
    let stored = escape[..call]
        .iter()
        .rev()
        .take(16)
        .filter(|op| op.starts_with("GlobalSet { global_index: ") && !op.ends_with(" 0 }"))
        .count();
    let loaded = escape[call..]
        .iter()
        .take(16)
        .filter(|op| op.starts_with("GlobalGet { global_index: ") && !op.ends_with(" 0 }"))
        .count();
    assert_eq!((stored, loaded), (5, 5), "{escape:#?}");
    let around: Vec<&String> = escape[call - 12..call + 12].iter().collect();
    assert!(
        !around
            .iter()
            .any(|op| *op == "LocalGet { local_index: 4 }" || *op == "LocalSet { local_index: 4 }"),
        "{around:#?}"
    );
}

#[test]
fn every_branch_hint_points_at_one_of_the_passs_branches_and_comes_before_the_code() {
    let out = rewrite(MANDELBROT_ROW);
    let mut hints: Vec<(u32, Vec<(u32, bool)>)> = Vec::new();
    let mut hints_before_code = false;
    let mut bodies = Vec::new();
    for payload in Parser::new(0).parse_all(&out.wasm) {
        match payload.expect("parses") {
            Payload::CustomSection(section) => {
                if let wasmparser::KnownCustom::BranchHints(reader) = section.as_known() {
                    hints_before_code = bodies.is_empty();
                    for function in reader {
                        let function = function.expect("hinted function");
                        let each = function
                            .hints
                            .into_iter()
                            .map(|hint| hint.expect("hint"))
                            .map(|hint| (hint.func_offset, hint.taken))
                            .collect();
                        hints.push((function.func, each));
                    }
                }
            }
            Payload::CodeSectionEntry(body) => {
                let start = body.get_binary_reader().original_position();
                let ops: Vec<(usize, String)> = body
                    .get_operators_reader()
                    .expect("operators")
                    .into_iter_with_offsets()
                    .map(|op| {
                        let (op, at) = op.expect("operator");
                        (at - start, format!("{op:?}"))
                    })
                    .collect();
                bodies.push(ops);
            }
            _ => {}
        }
    }
    assert!(
        hints_before_code,
        "the hints section must precede the code section"
    );
    // Every function has its call-depth check; $escape and $row have loops too.
    assert_eq!(hints.len(), 3);
    let (mut likely, mut unlikely) = (0, 0);
    for (function, each) in &hints {
        // Function indices count the two imports the pass adds (and the module has none).
        let ops = &bodies[*function as usize - 2];
        for (offset, taken) in each {
            let op = ops
                .iter()
                .find(|(at, _)| *at == *offset as usize)
                .map(|(_, op)| op.as_str())
                .unwrap_or("no operator at this offset");
            assert!(
                op.starts_with("If") || op.starts_with("BrIf"),
                "a hint at {offset} of function {function} points at {op}"
            );
            if *taken {
                likely += 1;
            } else {
                unlikely += 1;
            }
        }
    }
    // Likely: the loops' back edges (and canonicalisations); unlikely: the refuels and the
    // call-depth checks.
    assert!(
        likely >= 2 && unlikely >= 4,
        "{likely} likely, {unlikely} unlikely"
    );
}

#[test]
fn a_modules_own_branch_hints_are_dropped_and_only_the_passs_remain() {
    // The module hints its own `if`; the rewrite moves it, so that hint would point elsewhere.
    let out = rewrite(
        r#"(module (memory (export "memory") 1)
             (func (export "_start")
               (i32.const 1)
               (@metadata.code.branch_hint "\01")
               (if (then (i32.store (i32.const 0) (i32.const 7))))))"#,
    );
    let sections = Parser::new(0)
        .parse_all(&out.wasm)
        .filter_map(|payload| match payload.expect("parses") {
            Payload::CustomSection(section) => Some(section.name().to_string()),
            _ => None,
        })
        .filter(|name| name == "metadata.code.branch_hint")
        .count();
    assert_eq!(sections, 1, "one hints section, the pass's");
}
