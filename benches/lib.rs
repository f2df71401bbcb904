//! Criterion benchmarks live in `benches/`; this library is empty. Figures: BENCHMARKS.md.
