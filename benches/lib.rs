//! What the benchmarks share: the kernel corpus (`corpus/`), programs Herd's own samples did not
//! shape, built natively and for WASI from one source. The criterion benchmarks live in
//! `benches/`; figures in BENCHMARKS.md.

pub mod corpus;
