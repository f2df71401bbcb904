//! What the machine reports to the [governor](crate::governor): user idle time, other processes'
//! CPU load, and whether it runs on battery. Each kind of source is a trait, so tests script them;
//! the Linux implementations read the kernel's files under a root directory that tests point at
//! fixture trees.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the user has been away.
pub trait IdleSource: Send {
    /// What this source is, for the log.
    fn name(&self) -> String;
    /// Time since the last user input, or `None` if this source cannot tell now.
    fn user_idle(&mut self) -> Option<Duration>;
}

/// How busy the rest of the machine is.
pub trait LoadSource: Send {
    fn name(&self) -> String;
    /// Share of all CPUs (0 to 100) used by other processes than this one since the last call,
    /// or `None` if unknown (the first call only starts the measurement).
    fn other_load_percent(&mut self) -> Option<f64>;
}

/// Mains or battery.
pub trait PowerSource: Send {
    fn name(&self) -> String;
    /// Whether the machine runs on battery now; `None` if it has no battery.
    fn on_battery(&mut self) -> Option<bool>;
}

/// The power supplies the kernel lists under `ROOT/sys/class/power_supply`.
pub struct PowerSupplies {
    dir: PathBuf,
}

impl PowerSupplies {
    /// Reads `root/sys/class/power_supply` (`root` is `/` on a real machine). `None` if the
    /// machine lists no power supply (a desktop or a server: never on battery).
    pub fn find(root: &Path) -> Option<Self> {
        let dir = root.join("sys/class/power_supply");
        let any = std::fs::read_dir(&dir).ok()?.next().is_some();
        any.then_some(Self { dir })
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|text| text.trim().to_string())
}

impl PowerSource for PowerSupplies {
    fn name(&self) -> String {
        format!("power supplies in {}", self.dir.display())
    }

    /// On battery when no mains supply is online and a battery is discharging; a machine with
    /// mains online is never on battery, whatever its batteries say.
    fn on_battery(&mut self) -> Option<bool> {
        let entries = std::fs::read_dir(&self.dir).ok()?;
        let mut battery_seen = false;
        let mut discharging = false;
        for entry in entries.flatten() {
            let path = entry.path();
            match read_trimmed(&path.join("type")).as_deref() {
                Some("Mains") | Some("USB")
                    if read_trimmed(&path.join("online")).as_deref() == Some("1") =>
                {
                    return Some(false);
                }
                Some("Battery") => {
                    battery_seen = true;
                    if read_trimmed(&path.join("status")).as_deref() == Some("Discharging") {
                        discharging = true;
                    }
                }
                _ => {}
            }
        }
        battery_seen.then_some(discharging)
    }
}

/// CPU time from `ROOT/proc/stat` (all processes) and `ROOT/proc/self/stat` (this one): the
/// other processes' share is the machine's busy time less ours, over the time between calls.
pub struct ProcStat {
    root: PathBuf,
    last: Option<(CpuTimes, u64)>,
}

/// Clock ticks of all CPUs together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CpuTimes {
    busy: u64,
    total: u64,
}

impl ProcStat {
    /// `None` if `root/proc/stat` cannot be read.
    pub fn find(root: &Path) -> Option<Self> {
        let source = Self {
            root: root.to_path_buf(),
            last: None,
        };
        source.sample()?;
        Some(source)
    }

    fn sample(&self) -> Option<(CpuTimes, u64)> {
        let stat = std::fs::read_to_string(self.root.join("proc/stat")).ok()?;
        let times = parse_cpu_line(stat.lines().next()?)?;
        let own = std::fs::read_to_string(self.root.join("proc/self/stat"))
            .ok()
            .and_then(|text| parse_own_ticks(&text))
            .unwrap_or(0);
        Some((times, own))
    }
}

/// The aggregate `cpu` line: user nice system idle iowait irq softirq steal ... in ticks.
fn parse_cpu_line(line: &str) -> Option<CpuTimes> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let (idle, iowait) = (*values.get(3)?, *values.get(4)?);
    let total: u64 = values.iter().sum();
    Some(CpuTimes {
        busy: total - idle - iowait,
        total,
    })
}

/// utime + stime (fields 14 and 15) of `/proc/PID/stat`, after the command name's last `)`.
fn parse_own_ticks(text: &str) -> Option<u64> {
    let rest = text.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

impl LoadSource for ProcStat {
    fn name(&self) -> String {
        format!("CPU times in {}", self.root.join("proc/stat").display())
    }

    fn other_load_percent(&mut self) -> Option<f64> {
        let now = self.sample()?;
        let last = self.last.replace(now)?;
        let total = now.0.total.checked_sub(last.0.total)?;
        if total == 0 {
            return None;
        }
        let busy = now.0.busy.saturating_sub(last.0.busy);
        let own = now.1.saturating_sub(last.1);
        Some(busy.saturating_sub(own) as f64 * 100.0 / total as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, path: &str, text: &str) {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    #[test]
    fn a_laptop_is_on_battery_only_while_unplugged_and_discharging() {
        let root = tempfile::tempdir().expect("tempdir");
        assert!(
            PowerSupplies::find(root.path()).is_none(),
            "no supplies: a desktop"
        );
        write(root.path(), "sys/class/power_supply/AC/type", "Mains\n");
        write(root.path(), "sys/class/power_supply/AC/online", "1\n");
        write(root.path(), "sys/class/power_supply/BAT0/type", "Battery\n");
        write(
            root.path(),
            "sys/class/power_supply/BAT0/status",
            "Charging\n",
        );
        let mut power = PowerSupplies::find(root.path()).expect("supplies");
        assert_eq!(power.on_battery(), Some(false));
        write(root.path(), "sys/class/power_supply/AC/online", "0\n");
        write(
            root.path(),
            "sys/class/power_supply/BAT0/status",
            "Discharging\n",
        );
        assert_eq!(power.on_battery(), Some(true));
        write(root.path(), "sys/class/power_supply/AC/online", "1\n");
        assert_eq!(power.on_battery(), Some(false), "plugged in again");
    }

    #[test]
    fn other_processes_load_is_the_busy_time_less_ours() {
        let root = tempfile::tempdir().expect("tempdir");
        let stat = |busy_user: u64, idle: u64| {
            format!("cpu  {busy_user} 0 0 {idle} 0 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n")
        };
        let own = |ticks: u64| {
            format!("4242 (herd worker) S 1 2 3 4 5 6 7 8 9 10 {ticks} 0 0 0 20 0 1 0")
        };
        write(root.path(), "proc/stat", &stat(1_000, 9_000));
        write(root.path(), "proc/self/stat", &own(100));
        let mut load = ProcStat::find(root.path()).expect("proc");
        assert_eq!(
            load.other_load_percent(),
            None,
            "the first call starts measuring"
        );
        // 200 ticks pass: 120 busy, of which 20 are ours: others used 100 of 200.
        write(root.path(), "proc/stat", &stat(1_120, 9_080));
        write(root.path(), "proc/self/stat", &own(120));
        assert_eq!(load.other_load_percent(), Some(50.0));
        assert!(ProcStat::find(&root.path().join("nowhere")).is_none());
    }

    #[test]
    fn this_machines_own_proc_files_parse() {
        let mut load = ProcStat::find(Path::new("/")).expect("Linux has /proc/stat");
        let _first = load.other_load_percent();
        std::thread::sleep(Duration::from_millis(30));
        let share = load.other_load_percent();
        assert!(
            share.is_none_or(|s| (0.0..=100.0).contains(&s)),
            "{share:?}"
        );
        assert!(
            parse_own_ticks(&std::fs::read_to_string("/proc/self/stat").expect("stat")).is_some()
        );
    }
}
