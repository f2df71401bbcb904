//! The supervisor applies the governor's decisions to the units: it pauses and resumes the
//! running ones, lets new ones start only when they may (not held, fewer running than
//! `max_cores`, their memory within `memory_mb` together with the others', paused ones
//! included), and gives units up as aborts when a lowered memory limit no longer holds them
//! (paused units keep their memory; the worker never lets them push the machine into swap).
//!
//! Its decisions are synchronous and take the time and readings as arguments, so tests drive it
//! directly; the worker's shell calls [`Supervisor::apply`] every [`POLL`](crate::governor::POLL).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use herd_sandbox::RunControl;
use tokio::sync::watch;

use crate::governor::{Governor, Hold, Readings};
use crate::preferences::Preferences;

/// A running (or paused) unit.
struct Running {
    unit: UnitInfo,
    control: Arc<RunControl>,
    started: std::time::Instant,
}

/// What the supervisor knows of a unit it admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitInfo {
    pub replica_id: u64,
    pub unit_id: u64,
    pub batch_id: u64,
    pub fuel_limit: u64,
    pub memory_bytes: u64,
}

/// A running unit as the status view shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitSnapshot {
    pub unit: UnitInfo,
    pub fuel_so_far: u64,
    pub paused: bool,
    pub running_secs: u64,
}

struct State {
    governor: Governor,
    hold: Option<Hold>,
    running: Vec<Running>,
    /// Slots this worker has: the most units `max_cores` can allow.
    slots: u32,
}

/// See the module documentation.
pub struct Supervisor {
    state: Mutex<State>,
    /// Bumped whenever a waiting unit might now start.
    changed: watch::Sender<u64>,
}

/// Whether a unit may start.
pub enum Admission {
    /// It may: run it under this control, and call [`Supervisor::finished`] when it ends.
    Start(Arc<RunControl>),
    /// Its memory limit alone is more than the volunteer allows: give it up.
    TooBig { memory_mb: u64 },
}

impl Supervisor {
    pub fn new(governor: Governor, slots: u32) -> Self {
        let (changed, _) = watch::channel(0);
        Self {
            state: Mutex::new(State {
                governor,
                hold: None,
                running: Vec::new(),
                slots,
            }),
            changed,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is consistent after every statement; a panic elsewhere does not spoil it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that changes whenever units start or end, decisions change or preferences do.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Why units are held now, if they are.
    pub fn hold(&self) -> Option<Hold> {
        self.state().hold
    }

    pub fn preferences(&self) -> Preferences {
        self.state().governor.preferences().clone()
    }

    /// Units running or paused now.
    pub fn running(&self) -> usize {
        self.state().running.len()
    }

    /// The units running or paused now, for the status view.
    pub fn snapshot(&self) -> Vec<UnitSnapshot> {
        self.state()
            .running
            .iter()
            .map(|r| UnitSnapshot {
                unit: r.unit,
                fuel_so_far: r.control.fuel_so_far(),
                paused: r.control.is_paused(),
                running_secs: r.started.elapsed().as_secs(),
            })
            .collect()
    }

    /// New preferences: applied at once to the units' memory (units past the new limit are
    /// cancelled, newest first) and at the next [`apply`](Self::apply) to everything else.
    /// Returns the replicas given up.
    pub fn set_preferences(&self, preferences: Preferences) -> Vec<u64> {
        let given_up = {
            let mut state = self.state();
            state.governor.set_preferences(preferences);
            shed_memory(&mut state)
        };
        self.notify();
        given_up
    }

    /// Asks the governor about now, pauses or resumes the units if the answer changed, and
    /// returns the new hold if it changed.
    pub fn apply(&self, now_ms: u64, readings: &Readings) -> Option<Option<Hold>> {
        let mut state = self.state();
        let hold = state.governor.hold(now_ms, readings);
        if hold == state.hold {
            return None;
        }
        let was_held = state.hold.is_some();
        state.hold = hold;
        match (was_held, hold.is_some()) {
            (false, true) => state.running.iter().for_each(|r| r.control.pause()),
            (true, false) => state.running.iter().for_each(|r| r.control.resume()),
            _ => {}
        }
        drop(state);
        self.notify();
        Some(hold)
    }

    /// Whether a unit may start now (`Some`), or must wait (`None`).
    fn try_admit(&self, unit: UnitInfo) -> Option<Admission> {
        let memory_bytes = unit.memory_bytes;
        let mut state = self.state();
        let prefs = state.governor.preferences();
        let budget = prefs.memory_mb.saturating_mul(1 << 20);
        if memory_bytes > budget {
            return Some(Admission::TooBig {
                memory_mb: prefs.memory_mb,
            });
        }
        let cores = prefs.max_cores.unwrap_or(state.slots).min(state.slots) as usize;
        let reserved: u64 = state.running.iter().map(|r| r.unit.memory_bytes).sum();
        let allowed = state.hold.is_none_or(|hold| hold.allows_new_units());
        if !allowed || state.running.len() >= cores || reserved + memory_bytes > budget {
            return None;
        }
        let control = RunControl::new();
        if state.hold.is_some() {
            control.pause();
        }
        state.running.push(Running {
            unit,
            control: control.clone(),
            started: std::time::Instant::now(),
        });
        Some(Admission::Start(control))
    }

    /// Waits until a unit may start.
    pub async fn admit(&self, unit: UnitInfo) -> Admission {
        let mut changed = self.changed.subscribe();
        loop {
            if let Some(admission) = self.try_admit(unit) {
                if matches!(admission, Admission::Start(_)) {
                    // The governor polls fast only while units run, and the status shows them:
                    // both hear of the start now.
                    self.notify();
                }
                return admission;
            }
            // Woken by a decision, a finished unit or new preferences.
            if changed.changed().await.is_err() {
                return Admission::TooBig { memory_mb: 0 };
            }
        }
    }

    /// Whether a new unit could start now: not held (the CPU limit's pauses aside) and a core
    /// free. (Its memory is checked when it starts.)
    pub fn has_room(&self) -> bool {
        let state = self.state();
        let cores = state
            .governor
            .preferences()
            .max_cores
            .unwrap_or(state.slots)
            .min(state.slots) as usize;
        state.hold.is_none_or(|hold| hold.allows_new_units()) && state.running.len() < cores
    }

    /// Waits until [`has_room`](Self::has_room).
    pub async fn wait_for_room(&self) {
        let mut changed = self.changed.subscribe();
        while !self.has_room() {
            if changed.changed().await.is_err() {
                return;
            }
        }
    }

    /// A unit ended (or was given up): it no longer holds a core or memory.
    pub fn finished(&self, replica_id: u64) {
        self.state()
            .running
            .retain(|r| r.unit.replica_id != replica_id);
        self.notify();
    }
}

/// Cancels the newest units until the rest fit in the memory budget; returns their replicas.
fn shed_memory(state: &mut State) -> Vec<u64> {
    let budget = state
        .governor
        .preferences()
        .memory_mb
        .saturating_mul(1 << 20);
    let mut given_up = Vec::new();
    while state
        .running
        .iter()
        .map(|r| r.unit.memory_bytes)
        .sum::<u64>()
        > budget
    {
        let Some(newest) = state.running.pop() else {
            break;
        };
        newest.control.cancel();
        given_up.push(newest.unit.replica_id);
    }
    given_up
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::preferences::WeekTime;

    fn readings(idle_secs: u64) -> Readings {
        Readings {
            user_idle: Some(Duration::from_secs(idle_secs)),
            other_load_percent: Some(0.0),
            on_battery: Some(false),
            week_time: WeekTime { day: 0, minute: 0 },
        }
    }

    fn info(replica_id: u64, memory_bytes: u64) -> UnitInfo {
        UnitInfo {
            replica_id,
            unit_id: replica_id,
            batch_id: 1,
            fuel_limit: 1_000,
            memory_bytes,
        }
    }

    fn admitted(admission: Option<Admission>) -> Arc<RunControl> {
        match admission {
            Some(Admission::Start(control)) => control,
            _ => panic!("not admitted"),
        }
    }

    /// The governor polls fast only while units run and the status file shows them: a unit
    /// starting must wake both, or the first seconds of a unit would go unwatched.
    #[tokio::test]
    async fn a_unit_starting_or_ending_is_announced() {
        let supervisor = Supervisor::new(Governor::new(Preferences::default(), true), 2);
        let mut changes = supervisor.subscribe();
        let started = supervisor.admit(info(1, 1 << 20)).await;
        assert!(matches!(started, Admission::Start(_)));
        assert!(
            changes.has_changed().expect("open"),
            "the start is announced"
        );
        changes.borrow_and_update();
        supervisor.finished(1);
        assert!(changes.has_changed().expect("open"), "the end is announced");
    }

    #[test]
    fn the_user_returning_pauses_every_unit_and_leaving_resumes_them() {
        let supervisor = Supervisor::new(Governor::new(Preferences::default(), false), 4);
        assert_eq!(
            supervisor.apply(0, &readings(3_600)),
            None,
            "already running"
        );
        let a = admitted(supervisor.try_admit(info(1, 1 << 20)));
        let b = admitted(supervisor.try_admit(info(2, 1 << 20)));
        assert!(!a.is_paused());
        let changed = supervisor.apply(50, &readings(0)).expect("changed");
        assert!(matches!(changed, Some(Hold::UserActive { .. })));
        assert!(a.is_paused() && b.is_paused());
        assert!(
            supervisor.try_admit(info(3, 1 << 20)).is_none(),
            "no new unit while held"
        );
        assert_eq!(
            supervisor.apply(100, &readings(1)),
            Some(Some(Hold::UserActive {
                idle_secs: 1,
                needed_secs: 180
            }))
        );
        assert_eq!(supervisor.apply(200, &readings(180)), Some(None));
        assert!(!a.is_paused() && !b.is_paused());
        supervisor.finished(1);
        assert_eq!(supervisor.running(), 1);
    }

    #[test]
    fn cores_and_memory_limit_what_starts_and_a_lower_memory_limit_gives_units_up() {
        let prefs = Preferences {
            max_cores: Some(2),
            memory_mb: 100,
            ..Preferences::default()
        };
        let supervisor = Supervisor::new(Governor::new(prefs.clone(), true), 8);
        supervisor.apply(0, &readings(0));
        let first = admitted(supervisor.try_admit(info(1, 40 << 20)));
        assert!(
            supervisor.try_admit(info(2, 70 << 20)).is_none(),
            "70 + 40 MiB > 100 MiB"
        );
        let second = admitted(supervisor.try_admit(info(3, 40 << 20)));
        assert!(
            supervisor.try_admit(info(4, 1 << 20)).is_none(),
            "two cores"
        );
        assert!(matches!(
            supervisor.try_admit(info(5, 200 << 20)),
            Some(Admission::TooBig { memory_mb: 100 })
        ));
        // Paused units keep their memory; a lower limit gives the newest up rather than swap.
        let given_up = supervisor.set_preferences(Preferences {
            memory_mb: 64,
            ..prefs
        });
        assert_eq!(given_up, vec![3]);
        assert!(!first.is_paused());
        let _ = second;
        assert_eq!(supervisor.running(), 1);
    }

    #[test]
    fn a_unit_started_during_a_cpu_limit_pause_waits_for_its_slice() {
        let prefs = Preferences {
            cpu_percent: 50,
            ..Preferences::default()
        };
        let supervisor = Supervisor::new(Governor::new(prefs, true), 1);
        supervisor.apply(700, &readings(0));
        assert_eq!(supervisor.hold(), Some(Hold::Throttled));
        let control = admitted(supervisor.try_admit(info(1, 1)));
        assert!(control.is_paused());
        supervisor.apply(1_000, &readings(0));
        assert!(!control.is_paused());
    }
}
