//! The volunteer's preferences: how much of this machine Herd may use, and when. Kept in
//! `DATA_DIR/preferences.toml` (every key optional; missing keys take their defaults),
//! overridable by `--pref KEY=VALUE` flags, and re-read when the file changes.
//!
//! Parsing is pure: [`Preferences::parse`] takes the file's text and the overrides and returns
//! the preferences or an error that names the key and its allowed range. A bad file never stops a
//! running worker: it keeps the preferences it had and says what is wrong.

use std::fmt;

use serde::Deserialize;

/// A preferences file or flag the worker cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("preferences: {0}")]
pub struct PreferenceError(pub String);

/// Everything the volunteer can set. Defaults are BOINC's where BOINC has one.
#[derive(Clone, Debug, PartialEq)]
pub struct Preferences {
    /// Units run at once; `None` means every CPU.
    pub max_cores: Option<u32>,
    /// Share of each core units may use, enforced by running and pausing them in turn.
    pub cpu_percent: u32,
    /// Memory all units together may hold, paused ones included, in MiB.
    pub memory_mb: u64,
    /// Disk space for the blob and compiled-module caches, in MiB.
    pub disk_mb: u64,
    /// Upload and download limits in KiB/s (0: no limit).
    pub upload_kib_per_s: u64,
    pub download_kib_per_s: u64,
    /// Data moved per day, both ways, in MiB (0: no limit).
    pub daily_transfer_mb: u64,
    /// When units may run, and when the network may be used (empty: always).
    pub compute_windows: Vec<Window>,
    pub network_windows: Vec<Window>,
    /// Compute only while the user is away, and after how long without input.
    pub only_when_idle: bool,
    pub idle_minutes: u32,
    /// Suspend while other processes use more than this share of the machine's CPUs (0: never).
    pub suspend_above_load_percent: u32,
    /// Compute while running on battery.
    pub on_battery: bool,
}

impl Default for Preferences {
    fn default() -> Self {
        Self {
            max_cores: None,
            cpu_percent: 100,
            memory_mb: 2048,
            disk_mb: 10_240,
            upload_kib_per_s: 0,
            download_kib_per_s: 0,
            daily_transfer_mb: 0,
            compute_windows: Vec::new(),
            network_windows: Vec::new(),
            only_when_idle: true,
            idle_minutes: 3,
            suspend_above_load_percent: 25,
            on_battery: false,
        }
    }
}

/// The file's form: every key optional, nothing else allowed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    max_cores: Option<u32>,
    cpu_percent: Option<u32>,
    memory_mb: Option<u64>,
    disk_mb: Option<u64>,
    upload_kib_per_s: Option<u64>,
    download_kib_per_s: Option<u64>,
    daily_transfer_mb: Option<u64>,
    compute_windows: Option<Vec<String>>,
    network_windows: Option<Vec<String>>,
    only_when_idle: Option<bool>,
    idle_minutes: Option<u32>,
    suspend_above_load_percent: Option<u32>,
    on_battery: Option<bool>,
}

/// The keys, their ranges and what they mean: the README's table and the error messages come
/// from here.
pub const KEYS: &[(&str, &str, &str)] = &[
    (
        "max_cores",
        "1..=256",
        "units run at once (default: every CPU)",
    ),
    (
        "cpu_percent",
        "1..=100",
        "share of each core units may use (default 100)",
    ),
    (
        "memory_mb",
        "64..=1048576",
        "memory for all units, paused ones included (default 2048)",
    ),
    (
        "disk_mb",
        "100..=10000000",
        "disk for the caches (default 10240)",
    ),
    (
        "upload_kib_per_s",
        "0..=10000000",
        "upload limit, 0 = none (default 0)",
    ),
    (
        "download_kib_per_s",
        "0..=10000000",
        "download limit, 0 = none (default 0)",
    ),
    (
        "daily_transfer_mb",
        "0..=10000000",
        "data per day both ways, 0 = none (default 0)",
    ),
    (
        "compute_windows",
        "list of \"DAYS HH:MM-HH:MM\"",
        "when units may run (default: always)",
    ),
    (
        "network_windows",
        "list of \"DAYS HH:MM-HH:MM\"",
        "when the network may be used (default: always)",
    ),
    (
        "only_when_idle",
        "true or false",
        "compute only while the user is away (default true)",
    ),
    (
        "idle_minutes",
        "0..=1440",
        "minutes without input before computing (default 3)",
    ),
    (
        "suspend_above_load_percent",
        "0..=100",
        "suspend while other processes use more CPU, 0 = never (default 25)",
    ),
    (
        "on_battery",
        "true or false",
        "compute on battery (default false)",
    ),
];

fn check<T: PartialOrd + fmt::Display + Copy>(
    key: &str,
    value: T,
    min: T,
    max: T,
) -> Result<T, PreferenceError> {
    if value < min || value > max {
        return Err(PreferenceError(format!(
            "`{key}` = {value} is outside {min}..={max}"
        )));
    }
    Ok(value)
}

impl Preferences {
    /// Preferences from a file's text (empty for no file) with `overrides` (`KEY=VALUE`, in TOML
    /// syntax for the value) applied on top.
    pub fn parse(text: &str, overrides: &[String]) -> Result<Self, PreferenceError> {
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| PreferenceError(e.to_string().trim().to_string()))?;
        for item in overrides {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| PreferenceError(format!("`--pref {item}`: expected KEY=VALUE")))?;
            let key = key.trim();
            let value = value.trim();
            // A bare word is a string (`--pref compute_windows=...` is a list; see below).
            let parsed: toml::Value = match format!("v = {value}").parse::<toml::Table>() {
                Ok(mut one) => one.remove("v").unwrap_or(toml::Value::String(value.into())),
                Err(_) => toml::Value::String(value.into()),
            };
            table.insert(key.to_string(), parsed);
        }
        let file: File = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| {
                PreferenceError(e.to_string().trim().replace('\n', " "))
            })?;
        let defaults = Self::default();
        Ok(Self {
            max_cores: file
                .max_cores
                .map(|v| check("max_cores", v, 1, 256))
                .transpose()?,
            cpu_percent: check("cpu_percent", file.cpu_percent.unwrap_or(100), 1, 100)?,
            memory_mb: check(
                "memory_mb",
                file.memory_mb.unwrap_or(defaults.memory_mb),
                64,
                1_048_576,
            )?,
            disk_mb: check(
                "disk_mb",
                file.disk_mb.unwrap_or(defaults.disk_mb),
                100,
                10_000_000,
            )?,
            upload_kib_per_s: check(
                "upload_kib_per_s",
                file.upload_kib_per_s.unwrap_or(0),
                0,
                10_000_000,
            )?,
            download_kib_per_s: check(
                "download_kib_per_s",
                file.download_kib_per_s.unwrap_or(0),
                0,
                10_000_000,
            )?,
            daily_transfer_mb: check(
                "daily_transfer_mb",
                file.daily_transfer_mb.unwrap_or(0),
                0,
                10_000_000,
            )?,
            compute_windows: parse_windows("compute_windows", file.compute_windows)?,
            network_windows: parse_windows("network_windows", file.network_windows)?,
            only_when_idle: file.only_when_idle.unwrap_or(defaults.only_when_idle),
            idle_minutes: check(
                "idle_minutes",
                file.idle_minutes.unwrap_or(defaults.idle_minutes),
                0,
                1_440,
            )?,
            suspend_above_load_percent: check(
                "suspend_above_load_percent",
                file.suspend_above_load_percent
                    .unwrap_or(defaults.suspend_above_load_percent),
                0,
                100,
            )?,
            on_battery: file.on_battery.unwrap_or(defaults.on_battery),
        })
    }
}

fn parse_windows(key: &str, windows: Option<Vec<String>>) -> Result<Vec<Window>, PreferenceError> {
    windows
        .unwrap_or_default()
        .iter()
        .map(|text| {
            text.parse()
                .map_err(|e: String| PreferenceError(format!("`{key}`: \"{text}\": {e}")))
        })
        .collect()
}

/// A weekly time window: some days of the week, and a time span in each (which may run past
/// midnight into the next day: `mon-fri 18:00-08:00`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Bit `d` set: the window starts on day `d` (0 = Monday).
    pub days: u8,
    /// Minutes after midnight.
    pub start: u16,
    pub end: u16,
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn parse_day(name: &str) -> Result<u8, String> {
    DAY_NAMES
        .iter()
        .position(|d| d.eq_ignore_ascii_case(name))
        .map(|d| d as u8)
        .ok_or_else(|| format!("`{name}` is not a day (mon, tue, wed, thu, fri, sat, sun)"))
}

fn parse_time(text: &str) -> Result<u16, String> {
    let (hours, minutes) = text
        .split_once(':')
        .ok_or_else(|| format!("`{text}` is not a time (HH:MM)"))?;
    let hours: u16 = hours
        .parse()
        .map_err(|_| format!("`{text}` is not a time (HH:MM)"))?;
    let minutes: u16 = minutes
        .parse()
        .map_err(|_| format!("`{text}` is not a time (HH:MM)"))?;
    if minutes >= 60 || hours > 24 || (hours == 24 && minutes != 0) {
        return Err(format!("`{text}` is outside 00:00..=24:00"));
    }
    Ok(hours * 60 + minutes)
}

impl std::str::FromStr for Window {
    type Err = String;

    /// `DAYS HH:MM-HH:MM`, where DAYS is `daily`, a day (`sat`), a range (`mon-fri`) or a
    /// comma-separated list of those (`mon,wed,fri-sun`).
    fn from_str(text: &str) -> Result<Self, String> {
        let (days_text, span) = text
            .trim()
            .split_once(' ')
            .ok_or("expected \"DAYS HH:MM-HH:MM\", e.g. \"mon-fri 18:00-08:00\"")?;
        let mut days = 0u8;
        if days_text.eq_ignore_ascii_case("daily") {
            days = 0x7f;
        } else {
            for part in days_text.split(',') {
                match part.split_once('-') {
                    Some((from, to)) => {
                        let (from, to) = (parse_day(from)?, parse_day(to)?);
                        let mut day = from;
                        loop {
                            days |= 1 << day;
                            if day == to {
                                break;
                            }
                            day = (day + 1) % 7;
                        }
                    }
                    None => days |= 1 << parse_day(part)?,
                }
            }
        }
        let (start, end) = span
            .trim()
            .split_once('-')
            .ok_or("expected a span HH:MM-HH:MM")?;
        let (start, end) = (parse_time(start)?, parse_time(end)?);
        // 24:00 ends a day; a span starting there would start on the next day, which `DAYS`
        // does not name (found by the `preferences` fuzz target).
        if start == 24 * 60 {
            return Err("a span cannot start at 24:00 (start at 00:00 of the next day)".into());
        }
        if start == end {
            return Err("the span is empty (start equals end)".into());
        }
        Ok(Self { days, start, end })
    }
}

/// Where in the week a moment falls, in local time: day 0 is Monday.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeekTime {
    pub day: u8,
    /// Minutes after midnight.
    pub minute: u16,
}

impl WeekTime {
    /// Now, in the machine's time zone (UTC if it has none).
    pub fn now() -> Self {
        let now = jiff::Zoned::now();
        Self {
            day: now.weekday().to_monday_zero_offset() as u8,
            minute: now.hour() as u16 * 60 + now.minute() as u16,
        }
    }
}

impl Window {
    /// Whether `at` falls inside this window (a span past midnight continues into the next day).
    pub fn contains(&self, at: WeekTime) -> bool {
        let starts_on = |day: u8| self.days & (1 << day) != 0;
        if self.start < self.end {
            starts_on(at.day) && (self.start..self.end).contains(&at.minute)
        } else {
            let yesterday = (at.day + 6) % 7;
            (starts_on(at.day) && at.minute >= self.start)
                || (starts_on(yesterday) && at.minute < self.end)
        }
    }
}

/// Whether `at` is inside any of `windows` (no windows: always).
pub fn in_windows(windows: &[Window], at: WeekTime) -> bool {
    windows.is_empty() || windows.iter().any(|w| w.contains(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_gives_the_defaults_and_every_key_is_read() {
        assert_eq!(Preferences::parse("", &[]), Ok(Preferences::default()));
        let text = r#"
            max_cores = 2
            cpu_percent = 50
            memory_mb = 1024
            disk_mb = 500
            upload_kib_per_s = 100
            download_kib_per_s = 200
            daily_transfer_mb = 300
            compute_windows = ["mon-fri 18:00-08:00", "sat,sun 00:00-24:00"]
            network_windows = ["daily 01:00-05:00"]
            only_when_idle = false
            idle_minutes = 10
            suspend_above_load_percent = 0
            on_battery = true
        "#;
        let prefs = Preferences::parse(text, &[]).expect("valid");
        assert_eq!(prefs.max_cores, Some(2));
        assert_eq!(prefs.cpu_percent, 50);
        assert_eq!(prefs.compute_windows.len(), 2);
        assert_eq!(prefs.network_windows[0].days, 0x7f);
        assert!(!prefs.only_when_idle && prefs.on_battery);
        assert_eq!(
            (
                prefs.upload_kib_per_s,
                prefs.download_kib_per_s,
                prefs.daily_transfer_mb
            ),
            (100, 200, 300)
        );
    }

    #[test]
    fn bad_values_name_the_key_and_the_range() {
        let error = Preferences::parse("cpu_percent = 150", &[]).unwrap_err();
        assert_eq!(error.0, "`cpu_percent` = 150 is outside 1..=100");
        let error = Preferences::parse("idle_minutes = -1", &[]).unwrap_err();
        assert!(error.0.contains("idle_minutes"), "{error}");
        let error = Preferences::parse("cpu_precent = 50", &[]).unwrap_err();
        assert!(error.0.contains("cpu_precent"), "{error}");
        let error =
            Preferences::parse("compute_windows = [\"mon-fry 09:00-17:00\"]", &[]).unwrap_err();
        assert!(
            error.0.contains("compute_windows") && error.0.contains("fry"),
            "{error}"
        );
        let error =
            Preferences::parse("compute_windows = [\"daily 09:00-25:00\"]", &[]).unwrap_err();
        assert!(error.0.contains("25:00"), "{error}");
        let error = Preferences::parse("", &["cpu_percent".into()]).unwrap_err();
        assert!(error.0.contains("KEY=VALUE"), "{error}");
    }

    #[test]
    fn flags_override_the_file() {
        let prefs = Preferences::parse(
            "cpu_percent = 50\nonly_when_idle = true",
            &["cpu_percent=75".into(), "only_when_idle=false".into()],
        )
        .expect("valid");
        assert_eq!((prefs.cpu_percent, prefs.only_when_idle), (75, false));
        let prefs = Preferences::parse("", &[r#"compute_windows=["sat-sun 10:00-12:00"]"#.into()])
            .expect("valid");
        assert_eq!(prefs.compute_windows.len(), 1);
    }

    #[test]
    fn windows_cover_their_days_and_run_past_midnight() {
        let night: Window = "mon-fri 18:00-08:00".parse().expect("window");
        let at = |day, hour: u16, minute: u16| WeekTime {
            day,
            minute: hour * 60 + minute,
        };
        assert!(night.contains(at(0, 18, 0)), "monday evening");
        assert!(
            night.contains(at(1, 7, 59)),
            "tuesday early morning, from monday"
        );
        assert!(!night.contains(at(1, 8, 0)));
        assert!(
            !night.contains(at(0, 7, 0)),
            "monday morning: sunday is not in the window"
        );
        assert!(
            night.contains(at(5, 3, 0)),
            "saturday early morning, from friday"
        );
        assert!(!night.contains(at(5, 20, 0)), "saturday evening");
        let weekend: Window = "sat,sun 00:00-24:00".parse().expect("window");
        assert!(weekend.contains(at(6, 23, 59)) && !weekend.contains(at(0, 0, 0)));
        let wrap: Window = "fri-mon 09:00-17:00".parse().expect("window");
        assert_eq!(wrap.days, 0b111_0001);
        assert!(in_windows(&[], at(3, 3, 3)));
        assert!(!in_windows(&[weekend], at(2, 12, 0)));
        let error = "mon 24:00-17:00".parse::<Window>().unwrap_err();
        assert!(error.contains("cannot start at 24:00"), "{error}");
    }
}
