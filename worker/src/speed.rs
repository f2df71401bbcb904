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

/// Weight of the newest unit in the average: recent units count most, one odd unit little.
const NEWEST_WEIGHT: f64 = 0.25;

/// Units shorter than this say more about start-up costs than about speed, and are left out.
const SHORTEST_MEASURED: Duration = Duration::from_millis(50);

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
        self.fuel_per_second = Some(match self.fuel_per_second {
            None => pace,
            Some(average) => average + NEWEST_WEIGHT * (pace - average),
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
    fn the_average_follows_recent_units_and_ignores_tiny_ones() {
        let mut speed = Speed::default();
        assert_eq!(speed.fuel_per_second(), None);
        speed.observe(1_000_000, Duration::from_millis(10));
        assert_eq!(speed.fuel_per_second(), None, "too short to measure");
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
