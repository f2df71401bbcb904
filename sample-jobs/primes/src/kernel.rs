//! Primes over a range by trial division: an integer-only kernel (division heavy).
//!
//! Input (ASCII): `start end`, with `2 <= start <= end <= 2^40` and `end - start <= 10^9`.
//! Output (ASCII): `count=C sum=S max_gap=G last=L`, where S is the sum of the primes modulo 2^64,
//! G the largest gap between consecutive primes in the range and L the largest prime (0 if none).

/// The largest `end` accepted.
pub const MAX_END: u64 = 1 << 40;

/// What the search found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    pub count: u64,
    pub sum: u64,
    pub max_gap: u64,
    pub last: u64,
}

/// Parses `start end`, saying what is wrong.
pub fn parse(text: &str) -> Result<(u64, u64), String> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [start, end] = fields[..] else {
        return Err(format!(
            "expected 2 fields (start end), got {}",
            fields.len()
        ));
    };
    let number = |name: &str, s: &str| -> Result<u64, String> {
        s.parse()
            .map_err(|_| format!("{name} `{s}` is not a whole number"))
    };
    let (start, end) = (number("start", start)?, number("end", end)?);
    if start < 2 || start > end || end > MAX_END || end - start > 1_000_000_000 {
        return Err(format!(
            "need 2 <= start <= end <= 2^40 and end - start <= 10^9, got {start} {end}"
        ));
    }
    Ok((start, end))
}

fn is_prime(n: u64) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n % 2 == 0 || n % 3 == 0 {
        return false;
    }
    let mut d = 5u64;
    while d * d <= n {
        if n % d == 0 || n % (d + 2) == 0 {
            return false;
        }
        d += 6;
    }
    true
}

/// Counts and sums the primes in `[start, end)`.
pub fn search(start: u64, end: u64) -> Summary {
    let mut summary = Summary {
        count: 0,
        sum: 0,
        max_gap: 0,
        last: 0,
    };
    for n in start..end {
        if is_prime(n) {
            if summary.last != 0 {
                summary.max_gap = summary.max_gap.max(n - summary.last);
            }
            summary.count += 1;
            summary.sum = summary.sum.wrapping_add(n);
            summary.last = n;
        }
    }
    summary
}

/// The output line.
pub fn format(summary: &Summary) -> String {
    format!(
        "count={} sum={} max_gap={} last={}\n",
        summary.count, summary.sum, summary.max_gap, summary.last
    )
}
