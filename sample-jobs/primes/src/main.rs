//! The primes work unit: `start end` on stdin, a summary line on stdout (see `kernel.rs`).

use std::io::{Read, Write};

fn main() {
    let mut text = String::new();
    let _ = std::io::stdin().take(1024).read_to_string(&mut text);
    let (start, end) = primes::parse(&text).unwrap_or_else(|message| {
        eprintln!("bad input: {message}");
        std::process::exit(2)
    });
    let line = primes::format(&primes::search(start, end));
    if std::io::stdout().write_all(line.as_bytes()).is_err() {
        std::process::exit(3);
    }
}
