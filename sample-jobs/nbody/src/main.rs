//! The n-body work unit: a setup line on stdin, the final state's raw f64 bytes on stdout.

use std::io::{Read, Write};

fn main() {
    let mut text = String::new();
    let _ = std::io::stdin().take(1024).read_to_string(&mut text);
    let setup = nbody::parse(&text).unwrap_or_else(|message| {
        eprintln!("bad input: {message}");
        std::process::exit(2)
    });
    let mut bodies = nbody::initial(&setup);
    nbody::simulate(&mut bodies, &setup);
    if std::io::stdout().write_all(&nbody::encode(&bodies)).is_err() {
        std::process::exit(3);
    }
}
