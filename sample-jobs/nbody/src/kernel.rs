//! An n-body simulation: direct-summation gravity, leapfrog (kick-drift-kick) integration.
//! Floating-point heavy, and its output is raw f64 bits, so any NaN it makes is visible and must be
//! the canonical pattern for replicas on different CPUs to agree.
//!
//! Input (ASCII): `bodies steps dt softening seed`; 1 <= bodies <= 4096, 0 <= steps <= 10^6,
//! bodies^2 * steps <= 10^11. Initial positions and velocities come from `seed` (seed 0 puts every
//! body at the origin at rest: with softening 0 the first force is 0/0, a NaN).
//! Output: for each body, x y z vx vy vz as little-endian f64 (48 bytes per body).

/// One body's state.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Body {
    pub position: [f64; 3],
    pub velocity: [f64; 3],
}

/// A simulation to run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Setup {
    pub bodies: usize,
    pub steps: u64,
    pub dt: f64,
    pub softening: f64,
    pub seed: u64,
}

/// Parses the input line, saying which field is wrong.
pub fn parse(text: &str) -> Result<Setup, String> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [bodies, steps, dt, softening, seed] = fields[..] else {
        return Err(format!(
            "expected 5 fields (bodies steps dt softening seed), got {}",
            fields.len()
        ));
    };
    let int = |name: &str, s: &str| -> Result<u64, String> {
        s.parse()
            .map_err(|_| format!("{name} `{s}` is not a whole number"))
    };
    let float = |name: &str, s: &str| -> Result<f64, String> {
        s.parse()
            .map_err(|_| format!("{name} `{s}` is not a number"))
    };
    let setup = Setup {
        bodies: int("bodies", bodies)? as usize,
        steps: int("steps", steps)?,
        dt: float("dt", dt)?,
        softening: float("softening", softening)?,
        seed: int("seed", seed)?,
    };
    if !(1..=4096).contains(&setup.bodies) || setup.steps > 1_000_000 {
        return Err("need 1 <= bodies <= 4096 and steps <= 10^6".into());
    }
    if (setup.bodies as u64).pow(2).saturating_mul(setup.steps) > 100_000_000_000 {
        return Err("bodies^2 * steps is over 10^11".into());
    }
    Ok(setup)
}

/// SplitMix64: the seed's stream of integers.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A value in [-1, 1) from the stream.
fn symmetric(state: &mut u64) -> f64 {
    (next(state) >> 11) as f64 * (2.0 / (1u64 << 53) as f64) - 1.0
}

/// The initial state for a setup.
pub fn initial(setup: &Setup) -> Vec<Body> {
    let mut state = setup.seed;
    (0..setup.bodies)
        .map(|_| {
            if setup.seed == 0 {
                return Body {
                    position: [0.0; 3],
                    velocity: [0.0; 3],
                };
            }
            let position = [
                symmetric(&mut state),
                symmetric(&mut state),
                symmetric(&mut state),
            ];
            let velocity = [
                0.1 * symmetric(&mut state),
                0.1 * symmetric(&mut state),
                0.1 * symmetric(&mut state),
            ];
            Body { position, velocity }
        })
        .collect()
}

/// Accelerations of every body (unit masses, G = 1).
fn accelerations(bodies: &[Body], softening2: f64, out: &mut [[f64; 3]]) {
    for a in out.iter_mut() {
        *a = [0.0; 3];
    }
    for i in 0..bodies.len() {
        for j in i + 1..bodies.len() {
            let d = [
                bodies[j].position[0] - bodies[i].position[0],
                bodies[j].position[1] - bodies[i].position[1],
                bodies[j].position[2] - bodies[i].position[2],
            ];
            let r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2] + softening2;
            let inv = 1.0 / (r2 * r2.sqrt());
            for k in 0..3 {
                out[i][k] += d[k] * inv;
                out[j][k] -= d[k] * inv;
            }
        }
    }
}

/// Runs the simulation in place.
pub fn simulate(bodies: &mut [Body], setup: &Setup) {
    let softening2 = setup.softening * setup.softening;
    let half = 0.5 * setup.dt;
    let mut acc = vec![[0.0; 3]; bodies.len()];
    accelerations(bodies, softening2, &mut acc);
    for _ in 0..setup.steps {
        for (body, a) in bodies.iter_mut().zip(&acc) {
            for k in 0..3 {
                body.velocity[k] += half * a[k];
                body.position[k] += setup.dt * body.velocity[k];
            }
        }
        accelerations(bodies, softening2, &mut acc);
        for (body, a) in bodies.iter_mut().zip(&acc) {
            for k in 0..3 {
                body.velocity[k] += half * a[k];
            }
        }
    }
}

/// The output bytes.
pub fn encode(bodies: &[Body]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(bodies.len() * 48);
    for body in bodies {
        for value in body.position.iter().chain(&body.velocity) {
            bytes.extend_from_slice(&value.to_le_bytes());
        }
    }
    bytes
}
