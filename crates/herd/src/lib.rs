//! The `herd` command's parts that parse what a researcher types, as a library: the sweep
//! specifications, so their parser is fuzzed (`fuzz/`) and its corpus replayed in the suite.

pub mod sweep;
