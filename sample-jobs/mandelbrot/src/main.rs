//! The Mandelbrot work unit: a tile description on stdin, the tile as a PPM image on stdout.
//! A malformed description exits with code 2 and says why on stderr.

use std::io::{Read, Write};

fn main() {
    let mut text = String::new();
    if let Err(error) = std::io::stdin().take(4096).read_to_string(&mut text) {
        eprintln!("cannot read the tile description: {error}");
        std::process::exit(2);
    }
    let tile = match mandelbrot::parse_tile(&text) {
        Ok(tile) => tile,
        Err(message) => {
            eprintln!("bad tile description: {message}");
            std::process::exit(2);
        }
    };
    let pixels = mandelbrot::render_ppm(&tile);
    if std::io::stdout().write_all(&pixels).is_err() {
        std::process::exit(3);
    }
}
