//! The governor decides, from the volunteer's preferences and what the machine reports (user
//! idle time, other processes' CPU load, battery, local time), whether units may run at this
//! moment, and if not, why. It is pure: time and readings come in, a decision comes out, so it is
//! tested on virtual time with scripted sources. The worker's shell polls the sources every
//! [`POLL`] and pauses or resumes its units when the decision changes.
//!
//! The CPU usage limit is time slicing: with `cpu_percent` below 100, units run for that share
//! of every [`SLICE_PERIOD_MS`] and are paused for the rest, as BOINC does.

use std::time::Duration;

use crate::preferences::{Preferences, WeekTime, in_windows};

/// How often the shell reads the sources and asks the governor. With a paused unit stopping at
/// its next fuel yield (a few milliseconds), the machine is given back within about
/// `POLL` + that of the user's return.
pub const POLL: Duration = Duration::from_millis(50);

/// The period of the CPU limit's time slicing.
pub const SLICE_PERIOD_MS: u64 = 1_000;

/// What the machine reports at one moment. `None` where no source could tell.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Readings {
    /// How long since the user last gave input.
    pub user_idle: Option<Duration>,
    /// Share of all CPUs used by other processes than this worker, 0 to 100.
    pub other_load_percent: Option<f64>,
    /// Whether the machine runs on battery now.
    pub on_battery: Option<bool>,
    /// Local day of the week and time of day.
    pub week_time: WeekTime,
}

/// Why units are not running now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// The user is at the machine (input `idle_secs` ago; computing starts after `needed_secs`).
    UserActive { idle_secs: u64, needed_secs: u64 },
    /// On battery, and the volunteer computes only on mains power.
    OnBattery,
    /// Outside the volunteer's computing hours.
    OutsideWindow,
    /// Other programs are busy (`percent` of the CPUs, above `limit`).
    OtherLoad { percent: u32, limit: u32 },
    /// The off part of the CPU limit's time slice.
    Throttled,
}

impl Hold {
    /// Whether new units may still start (only the CPU limit's pauses allow it: the unit will
    /// run in the next slice).
    pub fn allows_new_units(&self) -> bool {
        matches!(self, Hold::Throttled)
    }
}

impl std::fmt::Display for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hold::UserActive {
                idle_secs,
                needed_secs,
            } => write!(
                f,
                "the computer is in use (last input {idle_secs} s ago; computing starts after {needed_secs} s)"
            ),
            Hold::OnBattery => f.write_str("running on battery"),
            Hold::OutsideWindow => f.write_str("outside the computing hours"),
            Hold::OtherLoad { percent, limit } => {
                write!(
                    f,
                    "other programs use {percent}% of the CPUs (limit {limit}%)"
                )
            }
            Hold::Throttled => f.write_str("pausing between slices for the CPU limit"),
        }
    }
}

/// The decision-maker. See the module documentation.
#[derive(Clone, Debug)]
pub struct Governor {
    preferences: Preferences,
    /// A dedicated machine: compute always, within the CPU limit only.
    always: bool,
}

impl Governor {
    pub fn new(preferences: Preferences, always: bool) -> Self {
        Self {
            preferences,
            always,
        }
    }

    pub fn preferences(&self) -> &Preferences {
        &self.preferences
    }

    /// New preferences take effect at the next decision.
    pub fn set_preferences(&mut self, preferences: Preferences) {
        self.preferences = preferences;
    }

    /// Why units must not run at `now_ms` (any monotonic clock in milliseconds), or `None` if
    /// they may.
    pub fn hold(&self, now_ms: u64, readings: &Readings) -> Option<Hold> {
        let prefs = &self.preferences;
        if !self.always {
            if !in_windows(&prefs.compute_windows, readings.week_time) {
                return Some(Hold::OutsideWindow);
            }
            if readings.on_battery == Some(true) && !prefs.on_battery {
                return Some(Hold::OnBattery);
            }
            let needed = Duration::from_secs(u64::from(prefs.idle_minutes) * 60);
            if prefs.only_when_idle
                && let Some(idle) = readings.user_idle
                && idle < needed
            {
                return Some(Hold::UserActive {
                    idle_secs: idle.as_secs(),
                    needed_secs: needed.as_secs(),
                });
            }
            let limit = prefs.suspend_above_load_percent;
            if limit > 0
                && let Some(load) = readings.other_load_percent
                && load > f64::from(limit)
            {
                return Some(Hold::OtherLoad {
                    percent: load.round() as u32,
                    limit,
                });
            }
        }
        let on_ms = SLICE_PERIOD_MS * u64::from(prefs.cpu_percent.min(100)) / 100;
        if now_ms % SLICE_PERIOD_MS >= on_ms {
            return Some(Hold::Throttled);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readings() -> Readings {
        Readings {
            user_idle: Some(Duration::from_secs(3_600)),
            other_load_percent: Some(1.0),
            on_battery: Some(false),
            week_time: WeekTime {
                day: 2,
                minute: 12 * 60,
            },
        }
    }

    /// Drives the governor as the worker's shell does: a poll every [`POLL`] of virtual time,
    /// the sources read at each poll from `script(now_ms)`. Returns when (in virtual ms) the
    /// units were first held, and why.
    fn first_hold(
        governor: &Governor,
        from_ms: u64,
        until_ms: u64,
        script: impl Fn(u64) -> Readings,
    ) -> Option<(u64, Hold)> {
        let mut now = from_ms;
        while now <= until_ms {
            if let Some(hold) = governor.hold(now, &script(now)) {
                return Some((now, hold));
            }
            now += POLL.as_millis() as u64;
        }
        None
    }

    #[test]
    fn units_pause_within_100_ms_of_the_user_returning() {
        let governor = Governor::new(Preferences::default(), false);
        // The user has been away an hour; they touch the mouse at t = 10,037 ms.
        let touched = 10_037;
        let script = |now: u64| Readings {
            user_idle: Some(if now < touched {
                Duration::from_secs(3_600)
            } else {
                Duration::from_millis(now - touched)
            }),
            ..readings()
        };
        let (held_at, hold) = first_hold(&governor, 0, 20_000, script).expect("held");
        assert!(
            matches!(
                hold,
                Hold::UserActive {
                    needed_secs: 180,
                    ..
                }
            ),
            "{hold:?}"
        );
        assert!(
            held_at >= touched && held_at - touched <= 100,
            "held {} ms after the input",
            held_at - touched
        );
        // Computing resumes only after three idle minutes.
        let after = |idle_secs| {
            governor.hold(
                0,
                &Readings {
                    user_idle: Some(Duration::from_secs(idle_secs)),
                    ..readings()
                },
            )
        };
        assert!(after(179).is_some());
        assert_eq!(after(180), None);
    }

    #[test]
    fn battery_windows_and_load_hold_units_unless_the_machine_is_dedicated() {
        let mut prefs = Preferences {
            compute_windows: vec!["mon-fri 18:00-08:00".parse().expect("window")],
            ..Preferences::default()
        };
        let governor = Governor::new(prefs.clone(), false);
        // Wednesday noon: outside the evening window.
        assert_eq!(governor.hold(0, &readings()), Some(Hold::OutsideWindow));
        let evening = Readings {
            week_time: WeekTime {
                day: 2,
                minute: 20 * 60,
            },
            ..readings()
        };
        assert_eq!(governor.hold(0, &evening), None);
        let unplugged = Readings {
            on_battery: Some(true),
            ..evening
        };
        assert_eq!(governor.hold(0, &unplugged), Some(Hold::OnBattery));
        prefs.on_battery = true;
        assert_eq!(
            Governor::new(prefs.clone(), false).hold(0, &unplugged),
            None
        );
        let busy = Readings {
            other_load_percent: Some(40.4),
            ..evening
        };
        assert_eq!(
            governor.hold(0, &busy),
            Some(Hold::OtherLoad {
                percent: 40,
                limit: 25
            })
        );
        prefs.suspend_above_load_percent = 0;
        assert_eq!(Governor::new(prefs.clone(), false).hold(0, &busy), None);
        // A dedicated machine ignores all of it.
        let dedicated = Governor::new(Preferences::default(), true);
        let everything = Readings {
            user_idle: Some(Duration::ZERO),
            other_load_percent: Some(99.0),
            on_battery: Some(true),
            ..readings()
        };
        assert_eq!(dedicated.hold(0, &everything), None);
        // Sources that cannot tell hold nothing back.
        let unknown = Readings {
            user_idle: None,
            other_load_percent: None,
            on_battery: None,
            ..readings()
        };
        assert_eq!(
            Governor::new(Preferences::default(), false).hold(0, &unknown),
            None
        );
    }

    #[test]
    fn the_cpu_limit_runs_units_for_its_share_of_each_slice() {
        let prefs = Preferences {
            cpu_percent: 30,
            ..Preferences::default()
        };
        let governor = Governor::new(prefs, true);
        let polls = 10 * SLICE_PERIOD_MS / POLL.as_millis() as u64;
        let running = (0..polls)
            .filter(|i| {
                governor
                    .hold(i * POLL.as_millis() as u64, &readings())
                    .is_none()
            })
            .count() as u64;
        assert_eq!(running * 100 / polls, 30);
        assert!(Hold::Throttled.allows_new_units());
        assert!(!Hold::OnBattery.allows_new_units());
    }
}
