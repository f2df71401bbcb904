//! Deterministic simulation of the lifecycle on virtual time: many units, and workers that are
//! honest, lying, flaky (abort at random), slow (report after their deadline) or vanishing (take a
//! replica and never report). The core is driven exactly as the coordinator drives it (assign with
//! `may_assign_to` and `evaluate`, time out with `expired`, validate with `evaluate`, check late
//! reports against the canonical result), and proptest explores the mixes.
//!
//! Properties, while liars are fewer than the quorum and do not collude:
//! - no unit is validated with a wrong canonical result;
//! - no replica whose result differs from the canonical one is credited, none twice;
//! - every validated unit has credited at least a quorum of replicas; a failed unit credits none;
//! - every unit ends (validated or failed), given at least a quorum of honest volunteers;
//! - credit totals per volunteer equal the sums of the ledger.

use std::collections::{BTreeMap, BTreeSet};

use herd_lifecycle::{Policy, Replica, ReplicaState, Verdict, evaluate, expired, may_assign_to};
use herd_protocol::{ContentHash, RunResult, Status};
use proptest::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    Honest,
    Liar,
    Flaky,
    Slow,
    Vanishing,
}

/// Where a unit stands.
#[derive(Clone, Debug, PartialEq)]
enum UnitState {
    Open,
    Validated(RunResult),
    Failed,
}

struct Unit {
    replicas: Vec<Replica>,
    state: UnitState,
    truth: RunResult,
}

/// A report on its way: `None` is an abort.
struct Pending {
    at: u64,
    unit: usize,
    replica_id: u64,
    result: Option<RunResult>,
}

struct Worker {
    volunteer_id: u64,
    behaviour: Behaviour,
    busy_until: u64,
}

/// One grant of the ledger.
struct Grant {
    replica_id: u64,
    volunteer_id: u64,
    fuel: u64,
}

struct Simulation {
    policy: Policy,
    now: u64,
    units: Vec<Unit>,
    workers: Vec<Worker>,
    pending: Vec<Pending>,
    ledger: Vec<Grant>,
    /// Running totals per volunteer, kept apart from the ledger to check one against the other.
    totals: BTreeMap<u64, u64>,
    next_replica: u64,
    random: u64,
}

fn result(output: &[u8], fuel: u64) -> RunResult {
    RunResult {
        status: Status::Success,
        fuel,
        output_len: output.len() as u64,
        output_hash: ContentHash::of(output),
    }
}

impl Simulation {
    fn new(policy: Policy, units: usize, behaviours: &[Behaviour], seed: u64) -> Self {
        Self {
            policy,
            now: 0,
            units: (0..units)
                .map(|i| Unit {
                    replicas: Vec::new(),
                    state: UnitState::Open,
                    truth: result(format!("unit {i}").as_bytes(), 1_000 + i as u64),
                })
                .collect(),
            workers: behaviours
                .iter()
                .enumerate()
                .map(|(i, &behaviour)| Worker {
                    volunteer_id: i as u64 + 1,
                    behaviour,
                    busy_until: 0,
                })
                .collect(),
            pending: Vec::new(),
            ledger: Vec::new(),
            totals: BTreeMap::new(),
            next_replica: 1,
            random: seed | 1,
        }
    }

    /// xorshift: the simulation's own randomness, from the proptest seed.
    fn roll(&mut self, bound: u64) -> u64 {
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        self.random % bound
    }

    fn credit(&mut self, unit: usize, replica_id: u64, fuel: u64) {
        if self.ledger.iter().any(|g| g.replica_id == replica_id) {
            return; // a replica is credited once
        }
        let volunteer_id = self.units[unit]
            .replicas
            .iter()
            .find(|r| r.id == replica_id)
            .map(|r| r.volunteer_id)
            .expect("credited replica exists");
        self.ledger.push(Grant {
            replica_id,
            volunteer_id,
            fuel,
        });
        *self.totals.entry(volunteer_id).or_default() += fuel;
    }

    /// Applies the lifecycle's verdict for an open unit.
    fn settle(&mut self, unit: usize) {
        if self.units[unit].state != UnitState::Open {
            return;
        }
        match evaluate(&self.policy, &self.units[unit].replicas) {
            Verdict::Validated {
                canonical,
                agreeing,
                ..
            } => {
                for replica_id in agreeing {
                    self.credit(unit, replica_id, canonical.fuel);
                }
                self.units[unit].state = UnitState::Validated(canonical);
            }
            Verdict::Failed { .. } => self.units[unit].state = UnitState::Failed,
            Verdict::Open { .. } => {}
        }
    }

    fn deliver_reports(&mut self) {
        let now = self.now;
        let (due, later): (Vec<Pending>, Vec<Pending>) =
            self.pending.drain(..).partition(|p| p.at <= now);
        self.pending = later;
        for report in due {
            let unit = report.unit;
            let Some(replica) = self.units[unit]
                .replicas
                .iter_mut()
                .find(|r| r.id == report.replica_id)
            else {
                continue;
            };
            // A report is accepted in progress or late (after a timeout), once.
            if !matches!(
                replica.state,
                ReplicaState::InProgress { .. } | ReplicaState::TimedOut
            ) {
                continue;
            }
            replica.state = match &report.result {
                Some(result) => ReplicaState::Reported(result.clone()),
                None => ReplicaState::Aborted,
            };
            match (&self.units[unit].state, report.result) {
                (UnitState::Open, _) => self.settle(unit),
                (UnitState::Validated(canonical), Some(result)) if *canonical == result => {
                    let fuel = canonical.fuel;
                    self.credit(unit, report.replica_id, fuel);
                }
                _ => {}
            }
        }
    }

    fn expire(&mut self) {
        for unit in 0..self.units.len() {
            if self.units[unit].state != UnitState::Open {
                continue;
            }
            let late = expired(&self.units[unit].replicas, self.now);
            for replica in &mut self.units[unit].replicas {
                if late.contains(&replica.id) {
                    replica.state = ReplicaState::TimedOut;
                }
            }
            if !late.is_empty() {
                self.settle(unit);
            }
        }
    }

    fn assign(&mut self) {
        for w in 0..self.workers.len() {
            if self.workers[w].busy_until > self.now {
                continue;
            }
            let volunteer_id = self.workers[w].volunteer_id;
            let Some(unit) = (0..self.units.len()).find(|&u| {
                let unit = &self.units[u];
                unit.state == UnitState::Open
                    && matches!(
                        evaluate(&self.policy, &unit.replicas),
                        Verdict::Open { wanted } if wanted > 0
                    )
                    && may_assign_to(&unit.replicas, volunteer_id)
            }) else {
                continue;
            };
            let replica_id = self.next_replica;
            self.next_replica += 1;
            let deadline = self.now + self.policy.replica_deadline_ms;
            self.units[unit].replicas.push(Replica {
                id: replica_id,
                volunteer_id,
                state: ReplicaState::InProgress {
                    deadline_ms: deadline,
                },
            });
            let took = 1 + self.roll(5);
            let coin = self.roll(2);
            let truth = self.units[unit].truth.clone();
            let behaviour = self.workers[w].behaviour;
            let (at, outcome) = match behaviour {
                Behaviour::Honest => (self.now + took, Some(truth)),
                // Each liar's answer is its own: liars do not collude.
                Behaviour::Liar => (
                    self.now + took,
                    Some(result(
                        format!("lie {unit} {volunteer_id}").as_bytes(),
                        1_000_000,
                    )),
                ),
                Behaviour::Flaky if coin == 0 => (self.now + took, None),
                Behaviour::Flaky => (self.now + took, Some(truth)),
                Behaviour::Slow => (deadline + 1 + took, Some(truth)),
                Behaviour::Vanishing => (u64::MAX, None),
            };
            self.workers[w].busy_until = at;
            if at != u64::MAX {
                self.pending.push(Pending {
                    at,
                    unit,
                    replica_id,
                    result: outcome,
                });
            }
        }
    }

    /// Runs until every unit has ended and every report has arrived, or `limit` ticks pass.
    fn run(&mut self, limit: u64) {
        while self.now < limit {
            self.deliver_reports();
            self.expire();
            self.assign();
            let open = self.units.iter().any(|u| u.state == UnitState::Open);
            if !open && self.pending.is_empty() {
                return;
            }
            self.now += 1;
        }
    }
}

fn behaviour() -> impl Strategy<Value = Behaviour> {
    prop_oneof![
        3 => Just(Behaviour::Honest),
        1 => Just(Behaviour::Liar),
        1 => Just(Behaviour::Flaky),
        1 => Just(Behaviour::Slow),
        1 => Just(Behaviour::Vanishing),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_lifecycle_holds_its_properties(
        quorum in 1u32..=3,
        extra_initial in 0u32..=1,
        units in 1usize..=25,
        others in prop::collection::vec(behaviour(), 0..8),
        seed in any::<u64>(),
    ) {
        // At least a quorum of honest volunteers, and fewer liars than the quorum.
        let mut behaviours = vec![Behaviour::Honest; quorum as usize];
        let mut liars = 0;
        for b in others {
            if b == Behaviour::Liar {
                if liars + 1 >= quorum {
                    continue;
                }
                liars += 1;
            }
            behaviours.push(b);
        }
        let mut policy = Policy::with_quorum(quorum);
        policy.initial_replicas = quorum + extra_initial;
        policy.replica_deadline_ms = 20; // ticks of virtual time
        let mut sim = Simulation::new(policy, units, &behaviours, seed);
        sim.run(100_000);

        let mut credited = BTreeSet::new();
        for grant in &sim.ledger {
            prop_assert!(credited.insert(grant.replica_id), "replica {} credited twice", grant.replica_id);
        }
        for (u, unit) in sim.units.iter().enumerate() {
            prop_assert!(unit.state != UnitState::Open, "unit {} never ended", u);
            if let UnitState::Validated(canonical) = &unit.state {
                prop_assert_eq!(canonical, &unit.truth, "unit {} validated a wrong result", u);
                let credited_here: Vec<&Replica> = unit
                    .replicas
                    .iter()
                    .filter(|r| credited.contains(&r.id))
                    .collect();
                prop_assert!(credited_here.len() >= quorum as usize);
                for replica in credited_here {
                    prop_assert_eq!(&replica.state, &ReplicaState::Reported(canonical.clone()));
                }
            }
            if unit.state == UnitState::Failed {
                prop_assert!(unit.replicas.iter().all(|r| !credited.contains(&r.id)));
            }
        }
        let mut from_ledger: BTreeMap<u64, u64> = BTreeMap::new();
        for grant in &sim.ledger {
            *from_ledger.entry(grant.volunteer_id).or_default() += grant.fuel;
        }
        prop_assert_eq!(from_ledger, sim.totals.clone());
    }
}

#[test]
fn honest_workers_validate_everything_and_liars_earn_nothing() {
    let behaviours = [
        Behaviour::Honest,
        Behaviour::Honest,
        Behaviour::Honest,
        Behaviour::Liar,
    ];
    let mut policy = Policy::with_quorum(2);
    policy.replica_deadline_ms = 20;
    let mut sim = Simulation::new(policy, 40, &behaviours, 7);
    sim.run(100_000);
    assert!(
        sim.units
            .iter()
            .all(|u| matches!(u.state, UnitState::Validated(_)))
    );
    let liar = 4;
    assert!(sim.ledger.iter().all(|g| g.volunteer_id != liar));
    assert!(sim.ledger.len() >= 80);
}
