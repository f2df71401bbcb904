//! The picture `herd demo` computes: the Mandelbrot set at 960 x 640, cut into 4 x 4 tiles, one
//! work unit each. Described here, apart from the demo's processes, so the end-to-end test
//! renders the same tiles natively and compares the demo's image with them pixel for pixel.

use crate::mandelbrot_input;

/// The image's size in pixels.
pub const WIDTH: u32 = 960;
pub const HEIGHT: u32 = 640;
/// Tiles across and down.
pub const TILES_X: u32 = 4;
pub const TILES_Y: u32 = 4;
/// Iterations before a point counts as inside the set.
pub const MAX_ITER: u32 = 600;

/// One tile: its unit's name, where it goes, and its input.
#[derive(Clone, Debug, PartialEq)]
pub struct Tile {
    /// `tile-ROW-COLUMN`.
    pub name: String,
    pub row: u32,
    pub column: u32,
    /// The Mandelbrot job's input for this tile.
    pub input: String,
}

/// A tile's size in pixels.
pub const fn tile_size() -> (u32, u32) {
    (WIDTH / TILES_X, HEIGHT / TILES_Y)
}

/// Every tile, in row-major order.
pub fn tiles() -> Vec<Tile> {
    let (x_min, x_max) = (-2.2f64, 1.0f64);
    let half_height = (x_max - x_min) * f64::from(HEIGHT) / f64::from(WIDTH) / 2.0;
    let (y_min, y_max) = (-half_height, half_height);
    let (tile_w, tile_h) = tile_size();
    let step_x = (x_max - x_min) / f64::from(TILES_X);
    let step_y = (y_max - y_min) / f64::from(TILES_Y);
    let mut tiles = Vec::new();
    for row in 0..TILES_Y {
        for column in 0..TILES_X {
            let left = x_min + step_x * f64::from(column);
            let top = y_max - step_y * f64::from(row);
            tiles.push(Tile {
                name: format!("tile-{row}-{column}"),
                row,
                column,
                input: mandelbrot_input(
                    (left, top - step_y),
                    (left + step_x, top),
                    (tile_w, tile_h),
                    MAX_ITER,
                ),
            });
        }
    }
    tiles
}
