//! The fractal-flame work unit: a setup line on stdin, a PPM image on stdout.

use std::io::{Read, Write};

fn main() {
    let mut text = String::new();
    let _ = std::io::stdin().take(1024).read_to_string(&mut text);
    let setup = flame::parse(&text).unwrap_or_else(|message| {
        eprintln!("bad input: {message}");
        std::process::exit(2)
    });
    if std::io::stdout().write_all(&flame::render(&setup)).is_err() {
        std::process::exit(3);
    }
}
