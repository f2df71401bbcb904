//! A fractal-flame renderer in the spirit of Electric Sheep: the chaos game over a few affine maps,
//! each bent by a non-linear variation, accumulated in a histogram and tone-mapped by log density.
//! Floating-point heavy (sin, cos, sqrt, division); the maps and the chaos game follow the seed.
//!
//! Input (ASCII): `width height iterations seed`; width, height in 1..=2048, iterations in
//! 1..=10^9. Output: a binary PPM image (`P6`, 8-bit RGB).

/// A render to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setup {
    pub width: u32,
    pub height: u32,
    pub iterations: u64,
    pub seed: u64,
}

/// Parses the input line.
pub fn parse(text: &str) -> Result<Setup, String> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [width, height, iterations, seed] = fields[..] else {
        return Err(format!(
            "expected 4 fields (width height iterations seed), got {}",
            fields.len()
        ));
    };
    let int = |name: &str, s: &str| -> Result<u64, String> {
        s.parse()
            .map_err(|_| format!("{name} `{s}` is not a whole number"))
    };
    let setup = Setup {
        width: int("width", width)? as u32,
        height: int("height", height)? as u32,
        iterations: int("iterations", iterations)?,
        seed: int("seed", seed)?,
    };
    if !(1..=2048).contains(&setup.width) || !(1..=2048).contains(&setup.height) {
        return Err("width and height must be in 1..=2048".into());
    }
    if !(1..=1_000_000_000).contains(&setup.iterations) {
        return Err("iterations must be in 1..=10^9".into());
    }
    Ok(setup)
}

/// xorshift64*: the chaos game's random stream.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn symmetric(&mut self) -> f64 {
        (self.next() >> 11) as f64 * (2.0 / (1u64 << 53) as f64) - 1.0
    }
}

/// One map: an affine transform, a variation and a colour.
struct Map {
    affine: [f64; 6],
    variation: u64,
    colour: [f64; 3],
}

const VARIATIONS: u64 = 5;

fn vary(variation: u64, x: f64, y: f64) -> (f64, f64) {
    let r2 = x * x + y * y + 1e-12;
    match variation {
        0 => (x.sin(), y.sin()),
        1 => (x / r2, y / r2),
        2 => {
            let (s, c) = (r2.sin(), r2.cos());
            (x * s - y * c, x * c + y * s)
        }
        3 => {
            let r = r2.sqrt();
            ((x - y) * (x + y) / r, 2.0 * x * y / r)
        }
        _ => (x, y),
    }
}

fn maps(random: &mut Random) -> Vec<Map> {
    (0..4)
        .map(|i| Map {
            affine: [
                random.symmetric(),
                random.symmetric(),
                random.symmetric() * 0.5,
                random.symmetric(),
                random.symmetric(),
                random.symmetric() * 0.5,
            ],
            variation: (random.next() % VARIATIONS + i) % VARIATIONS,
            colour: [
                0.3 + 0.7 * (random.next() % 1000) as f64 / 1000.0,
                0.3 + 0.7 * (random.next() % 1000) as f64 / 1000.0,
                0.3 + 0.7 * (random.next() % 1000) as f64 / 1000.0,
            ],
        })
        .collect()
}

/// Renders the image; returns the PPM bytes.
pub fn render(setup: &Setup) -> Vec<u8> {
    // SplitMix64 of the seed, so that nearby seeds give unrelated flames (xorshift needs a
    // non-zero state).
    let mut z = setup.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    let mut random = Random((z ^ (z >> 31)) | 1);
    let maps = maps(&mut random);
    let (w, h) = (setup.width as usize, setup.height as usize);
    let mut counts = vec![0u32; w * h];
    let mut colours = vec![[0f32; 3]; w * h];
    let (mut x, mut y) = (random.symmetric(), random.symmetric());
    let mut colour = [0.5f64; 3];
    let scale = w.min(h) as f64 / 4.0;
    // Iterations before a (re)started point is on the attractor and may be plotted.
    const SETTLE: u32 = 20;
    let mut settling = SETTLE;
    for _ in 0..setup.iterations {
        let map = &maps[(random.next() % maps.len() as u64) as usize];
        let [a, b, c, d, e, f] = map.affine;
        let (ax, ay) = (a * x + b * y + c, d * x + e * y + f);
        (x, y) = vary(map.variation, ax, ay);
        if !(x.is_finite() && y.is_finite()) || x.abs() > 1e6 || y.abs() > 1e6 {
            (x, y) = (random.symmetric(), random.symmetric());
            settling = SETTLE;
            continue;
        }
        for k in 0..3 {
            colour[k] = 0.5 * (colour[k] + map.colour[k]);
        }
        if settling > 0 {
            settling -= 1;
            continue;
        }
        let px = (x * scale + w as f64 / 2.0) as i64;
        let py = (y * scale + h as f64 / 2.0) as i64;
        if (0..w as i64).contains(&px) && (0..h as i64).contains(&py) {
            let index = py as usize * w + px as usize;
            counts[index] = counts[index].saturating_add(1);
            for k in 0..3 {
                colours[index][k] += colour[k] as f32;
            }
        }
    }
    let max = counts.iter().copied().max().unwrap_or(0).max(1) as f64;
    let log_max = (1.0 + max).ln();
    let mut image = format!("P6\n{w} {h}\n255\n").into_bytes();
    for (count, sum) in counts.iter().zip(&colours) {
        if *count == 0 {
            image.extend_from_slice(&[0, 0, 0]);
            continue;
        }
        let alpha = ((1.0 + *count as f64).ln() / log_max).powf(1.0 / 2.2);
        for channel in sum {
            let value = (*channel as f64 / *count as f64) * alpha * 255.0;
            image.push(value.clamp(0.0, 255.0) as u8);
        }
    }
    image
}
