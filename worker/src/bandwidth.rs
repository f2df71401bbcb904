//! The volunteer's network limits: upload and download rates (token buckets that pace every
//! transfer chunk by chunk), a daily transfer budget, and the weekly network windows. Outside
//! its windows or past its budget the worker neither fetches work nor sends reports (they wait
//! in the spool); units it holds keep computing.
//!
//! The buckets are `herd_net::TokenBucket`s (pure, tested on virtual time); [`Network`] is the
//! shell the worker's requests go through.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use herd_net::TokenBucket;

use crate::preferences::{Preferences, WeekTime, in_windows};

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
