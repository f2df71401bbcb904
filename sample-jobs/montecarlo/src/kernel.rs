//! A Monte Carlo estimate of pi from random points in the unit square, drawn from the host's
//! random source (WASI `random_get`, which Herd seeds per unit): the seed matters, and replicas
//! given the same seed must agree.
//!
//! Input (ASCII): `samples` (1 ..= 10^10). Output (ASCII): `pi=P hits=H samples=N`.

/// Random bytes drawn per call to the source: amortises the host call.
pub const CHUNK: usize = 64 * 1024;

/// Parses the sample count.
pub fn parse(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let samples: u64 = text
        .parse()
        .map_err(|_| format!("samples `{text}` is not a whole number"))?;
    if !(1..=10_000_000_000).contains(&samples) {
        return Err(format!("samples {samples} is outside 1..=10^10"));
    }
    Ok(samples)
}

/// A uniform f64 in [0, 1) from 8 random bytes (53 bits of mantissa).
fn unit(bytes: &[u8]) -> f64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(bytes);
    (u64::from_le_bytes(word) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Counts the points inside the quarter circle; `fill` supplies random bytes.
pub fn estimate(samples: u64, mut fill: impl FnMut(&mut [u8])) -> (u64, f64) {
    let mut buffer = vec![0u8; CHUNK];
    let mut hits = 0u64;
    let mut left = samples;
    while left > 0 {
        let points = left.min((CHUNK / 16) as u64) as usize;
        fill(&mut buffer[..points * 16]);
        for point in buffer[..points * 16].chunks_exact(16) {
            let (x, y) = (unit(&point[..8]), unit(&point[8..]));
            if x * x + y * y <= 1.0 {
                hits += 1;
            }
        }
        left -= points as u64;
    }
    (hits, 4.0 * hits as f64 / samples as f64)
}

/// The output line.
pub fn format(samples: u64, hits: u64, pi: f64) -> String {
    format!("pi={pi:.9} hits={hits} samples={samples}\n")
}

/// A deterministic stand-in for the host's source (SplitMix64), for the native baseline and tests.
pub fn splitmix(seed: u64) -> impl FnMut(&mut [u8]) {
    let mut state = seed;
    move |buffer: &mut [u8]| {
        for chunk in buffer.chunks_mut(8) {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
    }
}
