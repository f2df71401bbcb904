//! What the worker is doing, for the volunteer: the running worker writes it to
//! `DATA_DIR/status.json` every second (and the latest image a unit made to
//! `DATA_DIR/latest.ppm`); `herd-worker status` prints it once and `herd-worker screen` shows it
//! full-screen. A file, not a socket: the view needs no port and no permission beyond reading
//! the volunteer's own directory.

use std::path::Path;
use std::time::Duration;

use herd_protocol::Standing;
use serde::{Deserialize, Serialize};

use crate::supervisor::UnitSnapshot;

/// The status file in the data directory.
pub const STATUS_FILE: &str = "status.json";

/// The latest image output, in the data directory.
pub const LATEST_IMAGE: &str = "latest.ppm";

/// How often the running worker rewrites the status file.
pub const WRITE_EVERY: Duration = Duration::from_secs(1);

/// An unchanged status is rewritten this often, to show the worker is alive (readers also see
/// at once when its process is gone).
pub const HEARTBEAT_MS: u64 = 10_000;

/// A status older than this means the worker is not running, or is stuck.
pub const STALE_AFTER_MS: u64 = 30_000;

/// The worker's state at one moment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub volunteer: String,
    pub team: Option<String>,
    pub connected: bool,
    /// Why units are paused, if they are.
    pub hold: Option<String>,
    pub units: Vec<UnitLine>,
    pub standing: Option<Standing>,
    pub finished_units: u64,
    /// When the worker wrote this (Unix milliseconds).
    pub written_ms: u64,
    /// The worker's process id (0 in files from before it was recorded).
    #[serde(default)]
    pub pid: u32,
}

/// One running or paused unit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitLine {
    pub replica_id: u64,
    pub unit_id: u64,
    pub batch_id: u64,
    pub fuel_so_far: u64,
    pub fuel_limit: u64,
    pub paused: bool,
    pub running_secs: u64,
}

impl From<UnitSnapshot> for UnitLine {
    fn from(snapshot: UnitSnapshot) -> Self {
        Self {
            replica_id: snapshot.unit.replica_id,
            unit_id: snapshot.unit.unit_id,
            batch_id: snapshot.unit.batch_id,
            fuel_so_far: snapshot.fuel_so_far,
            fuel_limit: snapshot.unit.fuel_limit,
            paused: snapshot.paused,
            running_secs: snapshot.running_secs,
        }
    }
}

/// The status file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
}

fn file_error(path: &Path, error: impl std::fmt::Display) -> StatusError {
    StatusError::File {
        path: path.display().to_string(),
        message: error.to_string(),
    }
}

impl StatusReport {
    /// Replaces the file whole (written aside, then renamed), without syncing it: it is
    /// rewritten every second and losing one to a crash loses nothing.
    pub fn write(&self, path: &Path) -> Result<(), StatusError> {
        let text = serde_json::to_vec_pretty(self).map_err(|e| file_error(path, e))?;
        let aside = path.with_extension("json.new");
        std::fs::write(&aside, &text).map_err(|e| file_error(&aside, e))?;
        std::fs::rename(&aside, path).map_err(|e| file_error(path, e))
    }

    pub fn read(path: &Path) -> Result<Self, StatusError> {
        let text = std::fs::read(path).map_err(|e| {
            file_error(
                path,
                format!("{e} (is the worker running with this --data-dir?)"),
            )
        })?;
        serde_json::from_slice(&text).map_err(|e| file_error(path, e))
    }

    /// Why the worker that wrote this is not running, or `None` if it is: its process is
    /// gone, or it has not written for [`STALE_AFTER_MS`].
    pub fn not_running(&self, now_ms: u64) -> Option<String> {
        let proc_entry = Path::new("/proc").join(self.pid.to_string());
        if self.pid != 0 && Path::new("/proc/self").exists() && !proc_entry.exists() {
            return Some(format!("not running (process {} is gone)", self.pid));
        }
        (now_ms.saturating_sub(self.written_ms) > STALE_AFTER_MS).then(|| {
            format!(
                "not running (its status is more than {} s old)",
                STALE_AFTER_MS / 1000
            )
        })
    }

    /// In a word or a sentence: computing, paused and why, waiting, or not running.
    pub fn activity(&self, now_ms: u64) -> String {
        if let Some(gone) = self.not_running(now_ms) {
            return gone;
        }
        match (&self.hold, self.units.is_empty(), self.connected) {
            (Some(hold), _, _) => format!("paused: {hold}"),
            (None, false, _) => format!(
                "computing {} unit{}",
                self.units.len(),
                if self.units.len() == 1 { "" } else { "s" }
            ),
            (None, true, true) => "waiting for work".into(),
            (None, true, false) => "connecting to the coordinator".into(),
        }
    }

    /// The facts as lines of text, for `herd-worker status`.
    pub fn lines(&self, now_ms: u64) -> Vec<String> {
        let mut lines = vec![format!(
            "{}{}: {}",
            self.volunteer,
            self.team
                .as_ref()
                .map(|t| format!(" (team {t})"))
                .unwrap_or_default(),
            self.activity(now_ms)
        )];
        match &self.standing {
            Some(standing) => {
                let mut line = format!(
                    "credit {:.2}, rank {} of {}, recent average {:.2} a day",
                    standing.credit,
                    standing.rank,
                    standing.volunteers,
                    standing.recent_average_credit
                );
                if let Some(team) = &standing.team {
                    line.push_str(&format!(
                        "; team {} rank {} of {} with {:.2}",
                        team.name, team.rank, team.teams, team.credit
                    ));
                }
                lines.push(line);
            }
            None => lines.push("credit: not known yet".into()),
        }
        lines.push(format!(
            "{} units finished since the worker started",
            self.finished_units
        ));
        for unit in &self.units {
            lines.push(unit.describe());
        }
        lines
    }
}

impl UnitLine {
    /// Progress as a share of the unit's fuel budget (most units end well before it).
    pub fn budget_share(&self) -> f64 {
        if self.fuel_limit == 0 {
            return 0.0;
        }
        (self.fuel_so_far as f64 / self.fuel_limit as f64).clamp(0.0, 1.0)
    }

    pub fn describe(&self) -> String {
        format!(
            "  replica {} (unit {}, batch {}): {} fuel of at most {}, {} s{}",
            self.replica_id,
            self.unit_id,
            self.batch_id,
            human(self.fuel_so_far),
            human(self.fuel_limit),
            self.running_secs,
            if self.paused { ", paused" } else { "" }
        )
    }
}

/// 1234567890 as "1.23 G".
pub fn human(value: u64) -> String {
    let units = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")];
    for (scale, suffix) in units {
        if value as f64 >= scale {
            return format!("{:.2} {suffix}", value as f64 / scale);
        }
    }
    value.to_string()
}

/// Whether bytes look like an image the view can show (a binary PPM).
pub fn is_image(bytes: &[u8]) -> bool {
    ppm_header(bytes).is_some()
}

/// A binary PPM's width, height and where its pixels start, if the bytes are one (`P6`,
/// maxval 255, exactly `width * height * 3` bytes of pixels).
fn ppm_header(bytes: &[u8]) -> Option<(usize, usize, usize)> {
    let rest = bytes.strip_prefix(b"P6")?;
    // Three numbers (width, height, maxval) separated by whitespace, then one whitespace byte.
    let mut numbers = [0usize; 3];
    let mut at = 0;
    for number in &mut numbers {
        while rest.get(at)?.is_ascii_whitespace() {
            at += 1;
        }
        let start = at;
        while rest.get(at)?.is_ascii_digit() {
            at += 1;
        }
        *number = std::str::from_utf8(&rest[start..at]).ok()?.parse().ok()?;
    }
    let [width, height, maxval] = numbers;
    if maxval != 255 || width == 0 || height == 0 || !rest.get(at)?.is_ascii_whitespace() {
        return None;
    }
    let start = 2 + at + 1;
    let pixels = bytes.len().checked_sub(start)?;
    (pixels == width.checked_mul(height)?.checked_mul(3)?).then_some((width, height, start))
}

/// An RGB image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    /// `width * height` pixels, 3 bytes each, row by row.
    pub rgb: Vec<u8>,
}

impl Image {
    /// A binary PPM (`P6`, maxval 255), as the Mandelbrot and flame samples write; `None` for
    /// anything else.
    pub fn parse_ppm(bytes: &[u8]) -> Option<Self> {
        let (width, height, start) = ppm_header(bytes)?;
        Some(Self {
            width,
            height,
            rgb: bytes[start..].to_vec(),
        })
    }

    /// The pixel at (x, y).
    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppm_images_parse_and_anything_else_does_not() {
        let mut ppm = b"P6\n2 1\n255\n".to_vec();
        ppm.extend_from_slice(&[255, 0, 0, 0, 0, 255]);
        let image = Image::parse_ppm(&ppm).expect("image");
        assert_eq!((image.width, image.height), (2, 1));
        assert_eq!(image.pixel(1, 0), [0, 0, 255]);
        assert!(is_image(&ppm));
        assert!(!is_image(b"P6\n2 1\n255\n\x01"), "too few pixels");
        assert!(!is_image(b"P5\n1 1\n255\n\x00"));
        assert!(!is_image(b"hello"));
        assert!(!is_image(b"P6\n99999999999 99999999999\n255\n"));
    }

    #[test]
    fn the_status_round_trips_and_reads_as_sentences() {
        let dir = tempfile::tempdir().expect("tempdir");
        let report = StatusReport {
            volunteer: "ada".into(),
            team: Some("engines".into()),
            connected: true,
            hold: Some("the computer is in use".into()),
            units: vec![UnitLine {
                replica_id: 7,
                unit_id: 3,
                batch_id: 1,
                fuel_so_far: 2_500_000_000,
                fuel_limit: 10_000_000_000,
                paused: true,
                running_secs: 12,
            }],
            standing: None,
            finished_units: 4,
            written_ms: 1_000,
            pid: std::process::id(),
        };
        let path = dir.path().join(STATUS_FILE);
        report.write(&path).expect("write");
        assert_eq!(StatusReport::read(&path).expect("read"), report);
        let lines = report.lines(1_500);
        assert_eq!(
            lines[0],
            "ada (team engines): paused: the computer is in use"
        );
        assert!(lines[3].contains("2.50 G fuel of at most 10.00 G, 12 s, paused"));
        assert_eq!(
            report.activity(100_000),
            "not running (its status is more than 30 s old)"
        );
        // A process that has ended is not running, however fresh its status.
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        child.wait().expect("wait");
        let ended = StatusReport {
            pid: child.id(),
            ..report.clone()
        };
        assert_eq!(
            ended.activity(1_500),
            format!("not running (process {} is gone)", child.id())
        );
        assert_eq!(report.units[0].budget_share(), 0.25);
        assert!(StatusReport::read(&dir.path().join("missing")).is_err());
    }
}
