//! How fast this machine gets a unit done: fuel per second from the start of a unit's run to its
//! end (not the one-time instrumenting and compiling of its module, which is cached), pauses
//! included (the user at the keyboard, the CPU limit, closed hours all slow it), as a
//! moving average over finished units. The worker sends it with each request for work, and the
//! coordinator does not assign units it could not finish before their deadline at this pace.
//! It is kept in `DATA_DIR/speed.json` across restarts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The file under the data directory.
pub const SPEED_FILE: &str = "speed.json";

/// Weight in the average of the newest unit of at least [`FULL_WEIGHT_AFTER`]: recent units
/// count most, one odd unit little.
const NEWEST_WEIGHT: f64 = 0.25;

/// A unit shorter than this moves the average in proportion to its length: a thousand units of
/// a millisecond weigh as one of a second, and the first measure is never lost for want of a
/// long unit (the machine would then be judged by a guess, or by nothing).
const FULL_WEIGHT_AFTER: Duration = Duration::from_secs(1);

/// Units shorter than this are all start-up (instantiating the module), and are left out.
const SHORTEST_MEASURED: Duration = Duration::from_millis(1);

/// The measured speed. See the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Speed {
    fuel_per_second: Option<f64>,
    /// Units measured so far.
    units: u64,
}

impl Speed {
    /// A unit burned `fuel` between its start and its end, `elapsed` apart.
    pub fn observe(&mut self, fuel: u64, elapsed: Duration) {
        if fuel == 0 || elapsed < SHORTEST_MEASURED {
            return;
        }
        let pace = fuel as f64 / elapsed.as_secs_f64();
        let weight =
            NEWEST_WEIGHT * (elapsed.as_secs_f64() / FULL_WEIGHT_AFTER.as_secs_f64()).min(1.0);
        self.fuel_per_second = Some(match self.fuel_per_second {
            None => pace,
            Some(average) => average + weight * (pace - average),
        });
        self.units += 1;
    }

    /// Fuel per second, once a unit has been measured.
    pub fn fuel_per_second(&self) -> Option<u64> {
        self.fuel_per_second
            .filter(|pace| pace.is_finite() && *pace >= 1.0)
            .map(|pace| pace as u64)
    }

    /// The speed kept in `data_dir`; unmeasured if there is none or it does not parse (it is
    /// only an estimate: measuring again is the remedy).
    pub fn load(data_dir: &Path) -> Self {
        std::fs::read(path(data_dir))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Keeps it in `data_dir`.
    pub fn save(&self, data_dir: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_vec(self)?;
        herd_net::write_file(&path(data_dir), &json, 0o644)?;
        Ok(())
    }
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(SPEED_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_average_follows_recent_units_and_weighs_short_ones_by_their_length() {
        let mut speed = Speed::default();
        assert_eq!(speed.fuel_per_second(), None);
        speed.observe(1_000, Duration::from_micros(500));
        assert_eq!(speed.fuel_per_second(), None, "too short to measure");
        // A first unit of 1/64 s is the first measure (times a binary fraction, for exact sums).
        let short = Duration::from_micros(15_625);
        speed.observe(15_625_000, short);
        assert_eq!(speed.fuel_per_second(), Some(1_000_000_000));
        // One more short unit at half the pace moves it by 1/64 of a long unit's weight.
        speed.observe(7_812_500, short);
        assert_eq!(speed.fuel_per_second(), Some(998_046_875));
        speed.observe(2_000_000_000, Duration::from_secs(2));
        assert_eq!(speed.fuel_per_second(), Some(998_535_156));
        let mut speed = Speed::default();
        speed.observe(2_000_000_000, Duration::from_secs(2));
        assert_eq!(speed.fuel_per_second(), Some(1_000_000_000));
        // The user came back: the next unit took four times as long.
        speed.observe(2_000_000_000, Duration::from_secs(8));
        assert_eq!(speed.fuel_per_second(), Some(812_500_000));
        speed.observe(0, Duration::from_secs(1));
        assert_eq!(
            speed.fuel_per_second(),
            Some(812_500_000),
            "no fuel, no measure"
        );
    }

    #[test]
    fn it_survives_a_restart_and_a_bad_file_means_unmeasured() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Speed::load(dir.path()), Speed::default());
        let mut speed = Speed::default();
        speed.observe(3_000_000_000, Duration::from_secs(3));
        speed.save(dir.path()).unwrap();
        assert_eq!(Speed::load(dir.path()), speed);
        std::fs::write(
            dir.path().join(SPEED_FILE),
            b"{\"fuel_per_second\": \"fast\"",
        )
        .unwrap();
        assert_eq!(Speed::load(dir.path()).fuel_per_second(), None);
    }
}
