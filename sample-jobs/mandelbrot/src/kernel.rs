//! Mandelbrot tiles: parse a tile description, render its pixels.
//!
//! Input (ASCII, whitespace-separated): `x_min y_min x_max y_max width height max_iter`, the
//! region of the complex plane and the tile's size in pixels. Output: a binary PPM image (`P6`,
//! 8-bit RGB; see [`render_ppm`]), rows top (y_max) to bottom, so any viewer (and the worker's
//! screensaver view) can show it. Pure f64 arithmetic with no fused
//! operations, so the native and the WebAssembly builds produce the same bytes.

/// The largest tile rendered: 4 megapixels.
pub const MAX_PIXELS: u64 = 4 << 20;

/// One tile to render.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tile {
    pub x_min: f64,
    pub y_min: f64,
    pub x_max: f64,
    pub y_max: f64,
    pub width: u32,
    pub height: u32,
    pub max_iter: u32,
}

/// Parses a tile description, saying which field is wrong.
pub fn parse_tile(text: &str) -> Result<Tile, String> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    if fields.len() != 7 {
        return Err(format!(
            "expected 7 fields (x_min y_min x_max y_max width height max_iter), got {}",
            fields.len()
        ));
    }
    let float = |i: usize, name: &str| -> Result<f64, String> {
        let value: f64 = fields[i]
            .parse()
            .map_err(|_| format!("{name} `{}` is not a number", fields[i]))?;
        if value.is_finite() {
            Ok(value)
        } else {
            Err(format!("{name} must be finite"))
        }
    };
    let int = |i: usize, name: &str| -> Result<u32, String> {
        fields[i]
            .parse()
            .map_err(|_| format!("{name} `{}` is not a whole number", fields[i]))
    };
    let tile = Tile {
        x_min: float(0, "x_min")?,
        y_min: float(1, "y_min")?,
        x_max: float(2, "x_max")?,
        y_max: float(3, "y_max")?,
        width: int(4, "width")?,
        height: int(5, "height")?,
        max_iter: int(6, "max_iter")?,
    };
    if tile.width == 0 || tile.height == 0 {
        return Err("width and height must be at least 1".into());
    }
    if u64::from(tile.width) * u64::from(tile.height) > MAX_PIXELS {
        return Err(format!("tile has more than {MAX_PIXELS} pixels"));
    }
    Ok(tile)
}

/// Iterations before the point escapes, or `max_iter` if it does not.
fn escape_time(cx: f64, cy: f64, max_iter: u32) -> u32 {
    let (mut x, mut y) = (0.0f64, 0.0f64);
    let mut i = 0;
    while i < max_iter {
        let x2 = x * x;
        let y2 = y * y;
        if x2 + y2 > 4.0 {
            break;
        }
        y = 2.0 * x * y + cy;
        x = x2 - y2 + cx;
        i += 1;
    }
    i
}

/// A colour for an escape time: black inside the set, a cycling palette outside.
fn colour(iterations: u32, max_iter: u32) -> [u8; 3] {
    if iterations >= max_iter {
        return [0, 0, 0];
    }
    let t = (iterations % 64) as u16;
    let ramp = |phase: u16| -> u8 {
        let v = (t * 4 + phase) % 512;
        (if v < 256 { v } else { 511 - v }) as u8
    };
    [ramp(0), ramp(170), ramp(340)]
}

/// Renders the tile's pixels.
/// The tile as a binary PPM: the `P6` header, then [`render`]'s pixels.
pub fn render_ppm(tile: &Tile) -> Vec<u8> {
    let mut image = format!("P6\n{} {}\n255\n", tile.width, tile.height).into_bytes();
    image.extend_from_slice(&render(tile));
    image
}

/// The tile's pixels, 3 bytes (RGB) each, row by row.
pub fn render(tile: &Tile) -> Vec<u8> {
    let mut pixels = Vec::with_capacity(tile.width as usize * tile.height as usize * 3);
    let dx = (tile.x_max - tile.x_min) / f64::from(tile.width);
    let dy = (tile.y_max - tile.y_min) / f64::from(tile.height);
    for row in 0..tile.height {
        let cy = tile.y_max - (f64::from(row) + 0.5) * dy;
        for column in 0..tile.width {
            let cx = tile.x_min + (f64::from(column) + 0.5) * dx;
            pixels.extend_from_slice(&colour(escape_time(cx, cy, tile.max_iter), tile.max_iter));
        }
    }
    pixels
}
