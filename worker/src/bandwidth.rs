//! The volunteer's network limits: upload and download rates (token buckets that pace every
//! transfer chunk by chunk), a daily transfer budget, and the weekly network windows. Outside
//! its windows or past its budget the worker neither fetches work nor sends reports (they wait
//! in the spool); units it holds keep computing.
//!
//! [`TokenBucket`] is pure (time passed in), so its rate is tested on virtual time; [`Network`]
//! is the shell the worker's requests go through.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::preferences::{Preferences, WeekTime, in_windows};

/// A rate limit: bytes may go at `rate` per second on average, with bursts of at most `burst`.
/// Taking more than the tokens there are runs into debt, and the caller waits it off, so the
/// long-run rate is exact whatever the chunk sizes.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenBucket {
    /// Bytes per second; 0 means no limit.
    rate: f64,
    burst: f64,
    tokens: f64,
    last_ms: u64,
}

impl TokenBucket {
    /// A bucket for `bytes_per_s` (0: unlimited), full at `now_ms`.
    pub fn new(bytes_per_s: u64, now_ms: u64) -> Self {
        let rate = bytes_per_s as f64;
        // A tenth of a second's worth: short bursts, a steady rate.
        let burst = (rate / 10.0).max(herd_net::PACE_CHUNK as f64);
        Self {
            rate,
            burst,
            tokens: burst,
            last_ms: now_ms,
        }
    }

    /// Takes `bytes` at `now_ms`; returns how long to wait before they may move.
    pub fn take(&mut self, now_ms: u64, bytes: u64) -> Duration {
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.last_ms = self.last_ms.max(now_ms);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// Why the network may not be used now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkHold {
    OutsideWindow,
    DailyLimit { limit_mb: u64 },
}

impl std::fmt::Display for NetworkHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetworkHold::OutsideWindow => f.write_str("outside the network hours"),
            NetworkHold::DailyLimit { limit_mb } => {
                write!(f, "today's {limit_mb} MiB of transfers are used up")
            }
        }
    }
}

struct State {
    upload: TokenBucket,
    download: TokenBucket,
    /// The local day the count is for, and bytes moved both ways that day.
    day: u8,
    moved: u64,
    preferences: Preferences,
}

/// The worker's network limits. See the module documentation.
pub struct Network {
    started: Instant,
    state: Mutex<State>,
}

impl Network {
    pub fn new(preferences: &Preferences) -> Self {
        Self {
            started: Instant::now(),
            state: Mutex::new(State {
                upload: TokenBucket::new(preferences.upload_kib_per_s * 1024, 0),
                download: TokenBucket::new(preferences.download_kib_per_s * 1024, 0),
                day: WeekTime::now().day,
                moved: 0,
                preferences: preferences.clone(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// New limits take effect at once.
    pub fn set_preferences(&self, preferences: &Preferences) {
        let now = self.now_ms();
        let mut state = self.state();
        state.upload = TokenBucket::new(preferences.upload_kib_per_s * 1024, now);
        state.download = TokenBucket::new(preferences.download_kib_per_s * 1024, now);
        state.preferences = preferences.clone();
    }

    /// Why the network may not be used at `at`, if it may not.
    pub fn hold(&self, at: WeekTime) -> Option<NetworkHold> {
        let mut state = self.state();
        if state.day != at.day {
            state.day = at.day;
            state.moved = 0;
        }
        if !in_windows(&state.preferences.network_windows, at) {
            return Some(NetworkHold::OutsideWindow);
        }
        let limit_mb = state.preferences.daily_transfer_mb;
        if limit_mb > 0 && state.moved >= limit_mb.saturating_mul(1 << 20) {
            return Some(NetworkHold::DailyLimit { limit_mb });
        }
        None
    }

    /// Waits until the network may be used, saying once in the log why it waits.
    pub async fn wait_until_allowed(&self) {
        let mut said = None;
        while let Some(hold) = self.hold(WeekTime::now()) {
            if said != Some(hold) {
                tracing::info!("network use paused: {hold}");
                said = Some(hold);
            }
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        if said.is_some() {
            tracing::info!("network use resumes");
        }
    }

    async fn pace(&self, bytes: usize, upload: bool) {
        let now = self.now_ms();
        let wait = {
            let mut state = self.state();
            state.moved = state.moved.saturating_add(bytes as u64);
            let bucket = if upload {
                &mut state.upload
            } else {
                &mut state.download
            };
            bucket.take(now, bytes as u64)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

impl herd_net::Pace for Network {
    fn upload(&self, bytes: usize) -> impl Future<Output = ()> + Send {
        self.pace(bytes, true)
    }

    fn download(&self, bytes: usize) -> impl Future<Output = ()> + Send {
        self.pace(bytes, false)
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
    fn network_hours_and_the_daily_budget_hold_the_network() {
        let preferences = Preferences {
            network_windows: vec!["daily 01:00-05:00".parse().expect("window")],
            daily_transfer_mb: 1,
            ..Preferences::default()
        };
        let network = Network::new(&preferences);
        let night = WeekTime {
            day: 2,
            minute: 2 * 60,
        };
        let noon = WeekTime {
            day: 2,
            minute: 12 * 60,
        };
        assert_eq!(network.hold(noon), Some(NetworkHold::OutsideWindow));
        assert_eq!(network.hold(night), None);
        network.state().moved = 1 << 20;
        assert_eq!(
            network.hold(night),
            Some(NetworkHold::DailyLimit { limit_mb: 1 })
        );
        // A new day, a new budget.
        let next_night = WeekTime { day: 3, ..night };
        assert_eq!(network.hold(next_night), None);
    }
}
