//! A token bucket: the one rate limit of the project, pure (time is passed in), so its rate is
//! tested on virtual time. The worker paces a volunteer's transfers with it (bytes), and the
//! coordinator each connection's requests (one token a request).

use std::time::Duration;

/// A rate limit: tokens may go at `rate` per second on average, with bursts of at most `burst`.
/// Taking more than the tokens there are runs into debt, and the caller waits it off, so the
/// long-run rate is exact whatever the sizes taken.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenBucket {
    /// Tokens per second; 0 means no limit.
    rate: f64,
    burst: f64,
    tokens: f64,
    last_ms: u64,
}

impl TokenBucket {
    /// A bucket for a transfer rate of `bytes_per_s` (0: unlimited), full at `now_ms`: bursts of
    /// a tenth of a second's worth (at least one [`crate::PACE_CHUNK`]), a steady rate.
    pub fn new(bytes_per_s: u64, now_ms: u64) -> Self {
        let rate = bytes_per_s as f64;
        Self::with_burst(rate, (rate / 10.0).max(crate::PACE_CHUNK as f64), now_ms)
    }

    /// A bucket of `rate` tokens per second (0: unlimited) holding at most `burst`, full at
    /// `now_ms`.
    pub fn with_burst(rate: f64, burst: f64, now_ms: u64) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            last_ms: now_ms,
        }
    }

    /// Takes `tokens` at `now_ms`; returns how long to wait before they may be used.
    pub fn take(&mut self, now_ms: u64, tokens: u64) -> Duration {
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.last_ms = self.last_ms.max(now_ms);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= tokens as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_holds_its_rate_on_virtual_time_and_zero_means_no_limit() {
        // 100 KiB/s, a 4 MiB transfer in 16 KiB chunks, each sent when the bucket allows.
        let rate = 100 * 1024;
        let mut bucket = TokenBucket::new(rate, 0);
        let mut now_ms = 0u64;
        let total: u64 = 4 << 20;
        let mut sent = 0;
        while sent < total {
            let wait = bucket.take(now_ms, 16 * 1024);
            now_ms += wait.as_millis() as u64;
            sent += 16 * 1024;
        }
        let expected_ms = total * 1000 / rate;
        let error = (now_ms as f64 - expected_ms as f64).abs() / expected_ms as f64;
        assert!(error < 0.05, "{now_ms} ms for {expected_ms} ms expected");
        let mut unlimited = TokenBucket::new(0, 0);
        assert_eq!(unlimited.take(0, u64::MAX / 2), Duration::ZERO);
    }

    #[test]
    fn a_burst_is_free_and_then_each_token_waits_its_share_of_a_second() {
        let mut bucket = TokenBucket::with_burst(50.0, 100.0, 0);
        for _ in 0..100 {
            assert_eq!(bucket.take(0, 1), Duration::ZERO);
        }
        assert_eq!(bucket.take(0, 1), Duration::from_millis(20));
        // A second later the debt is paid and 49 more are free, not 50: the debt came first.
        assert_eq!(bucket.take(1_000, 49), Duration::ZERO);
        assert!(bucket.take(1_000, 1) > Duration::ZERO);
    }
}
