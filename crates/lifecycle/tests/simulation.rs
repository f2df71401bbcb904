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
//!
//! With adaptive replication (a trusted host's result may stand alone, with spot checks), and
//! "sleepers" among the workers (honest until trusted, then lying):
//! - a wrong canonical result only ever stands on a unit validated alone by a sleeper, never on a
//!   quorum;
//! - a wrong result keeps its credit only while it stands alone unchecked; once its host is
//!   caught, the units it validated alone since its last check are reopened and judged again, and
//!   overturned credit is revoked;
//! - every unit ends, and totals equal grants minus revocations.

use std::collections::{BTreeMap, BTreeSet};

use herd_lifecycle::{
    Adaptive, HostTrust, PPM, Policy, Replica, ReplicaState, TrustChange, Verdict, evaluate,
    expired, is_seasoned, may_assign_to, network_may_take, seasoned_may_take,
};
use herd_protocol::{ContentHash, RunResult, Status};
use proptest::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    Honest,
    Liar,
    Flaky,
    Slow,
    Vanishing,
    /// Honest until it has been trusted, then lies (its own lie: no collusion).
    Sleeper,
    /// One of a Sybil ring: one adversary's many accounts and hosts, all reporting the same
    /// wrong result for a unit, so that together they may form a quorum.
    Colluder,
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
    /// One trusted host's result may validate it alone.
    alone: bool,
    /// The worker whose lone result validated it, until a check of a later replica of that
    /// worker confirms it.
    alone_by: Option<usize>,
    /// That lone replica.
    alone_replica: u64,
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
    /// Its host's network (`herd_lifecycle::network_of`).
    network: u64,
    behaviour: Behaviour,
    busy_until: u64,
    trust: HostTrust,
    /// Whether it has been trusted at some point (a sleeper lies from then on).
    was_trusted: bool,
    /// Its valid results so far (credited, less revoked), for the seasoned rule.
    valid: u64,
}

/// One grant of the ledger.
struct Grant {
    replica_id: u64,
    volunteer_id: u64,
    fuel: u64,
    /// Revoked when the result it paid for was overturned.
    revoked: bool,
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
                    alone: false,
                    alone_by: None,
                    alone_replica: 0,
                })
                .collect(),
            workers: behaviours
                .iter()
                .enumerate()
                .map(|(i, &behaviour)| Worker {
                    volunteer_id: i as u64 + 1,
                    // A network of its own unless `on_networks` says otherwise.
                    network: 1_000 + i as u64,
                    behaviour,
                    busy_until: 0,
                    trust: HostTrust::default(),
                    was_trusted: false,
                    valid: 0,
                })
                .collect(),
            pending: Vec::new(),
            ledger: Vec::new(),
            totals: BTreeMap::new(),
            next_replica: 1,
            random: seed | 1,
        }
    }

    /// Puts worker `i` on network `networks[i]`.
    fn on_networks(mut self, networks: &[u64]) -> Self {
        for (worker, &network) in self.workers.iter_mut().zip(networks) {
            worker.network = network;
        }
        self
    }

    /// Gives worker `i` a history of `valid[i]` valid results (from before the simulation).
    fn with_history(mut self, valid: &[u64]) -> Self {
        for (worker, &valid) in self.workers.iter_mut().zip(valid) {
            worker.valid = valid;
        }
        self
    }

    /// Units validated so far.
    fn validated(&self) -> usize {
        self.units
            .iter()
            .filter(|u| matches!(u.state, UnitState::Validated(_)))
            .count()
    }

    /// Units validated with a result other than their true one.
    fn wrong(&self) -> usize {
        self.units
            .iter()
            .filter(|u| matches!(&u.state, UnitState::Validated(r) if *r != u.truth))
            .count()
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
            revoked: false,
        });
        *self.totals.entry(volunteer_id).or_default() += fuel;
        self.workers[volunteer_id as usize - 1].valid += 1;
    }

    /// The worker that ran a replica (volunteer ids are worker index + 1).
    fn worker_of(&self, unit: usize, replica_id: u64) -> usize {
        self.units[unit]
            .replicas
            .iter()
            .find(|r| r.id == replica_id)
            .map(|r| r.volunteer_id as usize - 1)
            .expect("replica exists")
    }

    /// A replica's result was found invalid: revoke its credit if it had any, end its worker's
    /// trust and reopen the units that worker validated alone since its last check.
    fn invalid(&mut self, unit: usize, replica_id: u64) {
        if let Some(grant) = self
            .ledger
            .iter_mut()
            .find(|g| g.replica_id == replica_id && !g.revoked)
        {
            grant.revoked = true;
            *self.totals.entry(grant.volunteer_id).or_default() -= grant.fuel;
            let worker = grant.volunteer_id as usize - 1;
            self.workers[worker].valid = self.workers[worker].valid.saturating_sub(1);
        }
        let worker = self.worker_of(unit, replica_id);
        self.workers[worker].trust = self.workers[worker].trust.after(TrustChange::Invalid);
        for u in 0..self.units.len() {
            if self.units[u].alone_by == Some(worker)
                && matches!(self.units[u].state, UnitState::Validated(_))
            {
                let reopened = &mut self.units[u];
                reopened.state = UnitState::Open;
                reopened.alone = false;
                reopened.alone_by = None;
                self.settle(u);
            }
        }
    }

    /// A checked valid result: trust grows, and the worker's lone validations with replicas
    /// assigned before this one are confirmed.
    fn valid_checked(&mut self, worker: usize, replica_id: u64) {
        let trust = self.workers[worker].trust.after(TrustChange::ValidChecked);
        self.workers[worker].trust = trust;
        for unit in &mut self.units {
            if unit.alone_by == Some(worker) && unit.alone_replica < replica_id {
                unit.alone_by = None;
            }
        }
    }

    /// Applies the lifecycle's verdict for an open unit.
    fn settle(&mut self, unit: usize) {
        if self.units[unit].state != UnitState::Open {
            return;
        }
        // A unit whose lone replica failed goes back to full replication.
        if self.units[unit].alone
            && !self.units[unit].replicas.iter().any(|r| {
                matches!(
                    r.state,
                    ReplicaState::InProgress { .. } | ReplicaState::Reported(_)
                )
            })
        {
            self.units[unit].alone = false;
        }
        let policy = self.policy_of(unit);
        match evaluate(&policy, &self.units[unit].replicas) {
            Verdict::Validated {
                canonical,
                agreeing,
                disagreeing,
            } => {
                let alone = self.units[unit].alone;
                self.units[unit].state = UnitState::Validated(canonical.clone());
                if alone {
                    self.units[unit].alone_by = Some(self.worker_of(unit, agreeing[0]));
                    self.units[unit].alone_replica = agreeing[0];
                }
                for replica_id in agreeing {
                    self.credit(unit, replica_id, canonical.fuel);
                    if !alone && self.policy.adaptive.is_some() {
                        let worker = self.worker_of(unit, replica_id);
                        self.valid_checked(worker, replica_id);
                    }
                }
                for replica_id in disagreeing {
                    self.invalid(unit, replica_id);
                }
            }
            Verdict::Failed { .. } => self.units[unit].state = UnitState::Failed,
            Verdict::Open { .. } => {}
        }
    }

    fn policy_of(&self, unit: usize) -> Policy {
        if self.units[unit].alone {
            self.policy.alone()
        } else {
            self.policy
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
                (UnitState::Validated(_), Some(_)) => self.invalid(unit, report.replica_id),
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
            let network = self.workers[w].network;
            let seasoned = is_seasoned(&self.policy, self.workers[w].valid);
            let Some(unit) = (0..self.units.len()).find(|&u| {
                let unit = &self.units[u];
                unit.state == UnitState::Open
                    && matches!(
                        evaluate(&self.policy_of(u), &unit.replicas),
                        Verdict::Open { wanted } if wanted > 0
                    )
                    && may_assign_to(&unit.replicas, volunteer_id)
                    && network_may_take(&self.policy, &unit.replicas, network)
                    && seasoned_may_take(&self.policy, &unit.replicas, seasoned)
            }) else {
                continue;
            };
            if self.units[unit].replicas.is_empty() && self.policy.adaptive.is_some() {
                let draw = self.roll(u64::from(PPM)) as u32;
                self.units[unit].alone = self.workers[w].trust.may_go_alone(&self.policy, draw);
            }
            if let Some(adaptive) = self.policy.adaptive
                && self.workers[w].trust.consecutive_valid >= adaptive.trust_after
            {
                self.workers[w].was_trusted = true;
            }
            let replica_id = self.next_replica;
            self.next_replica += 1;
            let deadline = self.now + self.policy.replica_deadline_ms;
            self.units[unit].replicas.push(Replica {
                id: replica_id,
                volunteer_id,
                network,
                seasoned,
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
                Behaviour::Sleeper if self.workers[w].was_trusted => (
                    self.now + took,
                    Some(result(
                        format!("sleeper {unit} {volunteer_id}").as_bytes(),
                        1_000_000,
                    )),
                ),
                Behaviour::Sleeper => (self.now + took, Some(truth)),
                // The ring's one answer for this unit, whichever of its accounts gives it.
                Behaviour::Colluder => (
                    self.now + took,
                    Some(result(format!("ring {unit}").as_bytes(), 1_000_000)),
                ),
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

    #[test]
    fn adaptive_replication_holds_its_properties(
        quorum in 2u32..=3,
        units in 1usize..=40,
        trust_after in 1u32..=4,
        spot_check_ppm in prop_oneof![Just(0u32), 100_000u32..=PPM],
        others in prop::collection::vec(behaviour(), 0..6),
        sleepers in 0usize..=2,
        seed in any::<u64>(),
    ) {
        // At least a quorum of honest volunteers; liars and sleepers each fewer than the quorum
        // together, so no quorum can be made of wrong answers.
        let mut behaviours = vec![Behaviour::Honest; quorum as usize];
        let mut wrong = 0;
        for b in others.into_iter().chain(std::iter::repeat_n(Behaviour::Sleeper, sleepers)) {
            if matches!(b, Behaviour::Liar | Behaviour::Sleeper) {
                if wrong + 1 >= quorum {
                    continue;
                }
                wrong += 1;
            }
            behaviours.push(b);
        }
        let mut policy = Policy::with_quorum(quorum);
        policy.replica_deadline_ms = 20;
        policy.adaptive = Some(Adaptive { trust_after, spot_check_ppm });
        let mut sim = Simulation::new(policy, units, &behaviours, seed);
        sim.run(200_000);

        let live_grants: Vec<&Grant> = sim.ledger.iter().filter(|g| !g.revoked).collect();
        for (u, unit) in sim.units.iter().enumerate() {
            prop_assert!(unit.state != UnitState::Open, "unit {} never ended", u);
            if let UnitState::Validated(canonical) = &unit.state
                && canonical != &unit.truth
            {
                // A wrong result stands only alone, from a sleeper nobody has caught since.
                let by = unit.alone_by;
                prop_assert!(by.is_some(), "unit {} holds a wrong result from a quorum", u);
                let worker = by.unwrap_or_default();
                prop_assert_eq!(sim.workers[worker].behaviour, Behaviour::Sleeper);
            }
        }
        // Credit that stands for a wrong result belongs to a unit where that result stands alone.
        for grant in &live_grants {
            let (u, replica) = sim
                .units
                .iter()
                .enumerate()
                .find_map(|(u, unit)| unit.replicas.iter().find(|r| r.id == grant.replica_id).map(|r| (u, r)))
                .expect("granted replica exists");
            let unit = &sim.units[u];
            if let ReplicaState::Reported(result) = &replica.state
                && result != &unit.truth
            {
                prop_assert_eq!(&unit.state, &UnitState::Validated(result.clone()));
                prop_assert!(unit.alone_by.is_some());
            }
        }
        let mut from_ledger: BTreeMap<u64, u64> = BTreeMap::new();
        for grant in &live_grants {
            *from_ledger.entry(grant.volunteer_id).or_default() += grant.fuel;
        }
        let totals: BTreeMap<u64, u64> = sim.totals.iter().filter(|(_, f)| **f > 0).map(|(v, f)| (*v, *f)).collect();
        let from_ledger: BTreeMap<u64, u64> = from_ledger.into_iter().filter(|(_, f)| *f > 0).collect();
        prop_assert_eq!(from_ledger, totals);
    }
}

#[test]
fn a_sleeper_is_caught_by_spot_checks_and_its_lies_are_judged_again() {
    // Four honest workers and one sleeper; trusted after 3 checked results, 25% spot checks.
    let behaviours = [
        Behaviour::Honest,
        Behaviour::Honest,
        Behaviour::Honest,
        Behaviour::Honest,
        Behaviour::Sleeper,
    ];
    let mut policy = Policy::with_quorum(2);
    policy.replica_deadline_ms = 20;
    policy.adaptive = Some(Adaptive {
        trust_after: 3,
        spot_check_ppm: 250_000,
    });
    let mut sim = Simulation::new(policy, 400, &behaviours, 11);
    sim.run(1_000_000);
    let sleeper = 4;
    assert!(
        sim.workers[sleeper].was_trusted,
        "the sleeper was trusted at some point"
    );
    let lies_told = sim
        .units
        .iter()
        .flat_map(|u| u.replicas.iter().map(move |r| (u, r)))
        .filter(|(u, r)| {
            r.volunteer_id == sleeper as u64 + 1
                && matches!(&r.state, ReplicaState::Reported(result) if *result != u.truth)
        })
        .count();
    let lies_standing = sim
        .units
        .iter()
        .filter(|u| matches!(&u.state, UnitState::Validated(c) if *c != u.truth))
        .count();
    assert!(lies_told > 0, "the sleeper lied");
    assert!(
        lies_standing < lies_told,
        "spot checks caught it: {lies_standing} of {lies_told} lies stand"
    );
    // Honest trusted workers saved replicas: fewer than two per validated unit.
    let replicas: usize = sim.units.iter().map(|u| u.replicas.len()).sum();
    assert!(
        replicas < 2 * sim.units.len(),
        "{replicas} replicas for {} units",
        sim.units.len()
    );
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

/// The Sybil ring's tests: `ring` colluding accounts on `ring_networks` networks (account `i`
/// on network `i % ring_networks`), among `honest` honest volunteers each on a network of its
/// own, computing `units` units of quorum `quorum`.
fn sybil(
    quorum: u32,
    distinct_networks: bool,
    ring: usize,
    ring_networks: usize,
    honest: usize,
    units: usize,
    seed: u64,
) -> Simulation {
    let mut policy = Policy::with_quorum(quorum);
    policy.distinct_networks = distinct_networks;
    policy.replica_deadline_ms = 50;
    let mut behaviours = vec![Behaviour::Colluder; ring];
    behaviours.extend(std::iter::repeat_n(Behaviour::Honest, honest));
    let networks: Vec<u64> = (0..ring + honest)
        .map(|i| {
            if i < ring {
                (i % ring_networks) as u64 + 1
            } else {
                1_000 + i as u64
            }
        })
        .collect();
    let mut simulation = Simulation::new(policy, units, &behaviours, seed).on_networks(&networks);
    simulation.run(100_000);
    simulation
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// One adversary with many accounts and hosts on fewer networks than the quorum: with
    /// distinct networks required, the ring never validates its lie, however many accounts it
    /// has, and every unit still ends.
    #[test]
    fn a_sybil_ring_on_fewer_networks_than_the_quorum_never_validates_a_lie(
        quorum in 2u32..4,
        ring in 2usize..12,
        honest in 3usize..8,
        units in 1usize..30,
        seed in any::<u64>(),
    ) {
        let ring_networks = (quorum as usize - 1).min(ring);
        let simulation = sybil(quorum, true, ring, ring_networks, honest, units, seed);
        prop_assert_eq!(simulation.wrong(), 0);
        prop_assert!(
            simulation.units.iter().all(|u| u.state != UnitState::Open),
            "every unit ends"
        );
    }
}

#[test]
fn without_the_network_rule_a_ring_with_a_quorum_of_accounts_validates_its_lie() {
    // The same ring, behind one router: with the rule off its accounts agree with each other
    // and win units; with it on they win none.
    let off = sybil(2, false, 6, 1, 4, 40, 7);
    assert!(off.wrong() > 0, "the ring wins some units without the rule");
    let on = sybil(2, true, 6, 1, 4, 40, 7);
    assert_eq!(on.wrong(), 0);
    assert_eq!(on.validated(), 40);
}

/// What the rule costs an honest project: 40 honest volunteers, quorum 2, 2,000 units, the
/// ticks until every unit is validated with the rule off and on, for three ways of spreading
/// the volunteers over networks. Printed for the README (`cargo test -p herd-lifecycle --test
/// simulation cost -- --nocapture`); checked only that the rule never speeds anything up and
/// never stops a project: every unit is validated either way.
#[test]
fn the_network_rules_cost_in_throughput_is_measured() {
    let shapes: [(&str, Vec<u64>); 3] = [
        (
            "each on a network of its own",
            (0..40).map(|i| 100 + i).collect(),
        ),
        (
            "ten networks of three (labs, families) and ten alone",
            (0..40u64)
                .map(|i| if i < 30 { i / 3 + 1 } else { 100 + i })
                .collect(),
        ),
        (
            "thirty on one campus network and ten alone",
            (0..40u64)
                .map(|i| if i < 30 { 1 } else { 100 + i })
                .collect(),
        ),
    ];
    for (shape, networks) in shapes {
        let ticks = |distinct_networks: bool| {
            let mut policy = Policy::with_quorum(2);
            policy.distinct_networks = distinct_networks;
            let mut simulation =
                Simulation::new(policy, 2_000, &[Behaviour::Honest; 40], 11).on_networks(&networks);
            simulation.run(1_000_000);
            assert_eq!(simulation.validated(), 2_000, "{shape}");
            simulation.now
        };
        let (off, on) = (ticks(false), ticks(true));
        println!(
            "{shape}: {off} ticks without the rule, {on} with it ({:.2}x)",
            on as f64 / off as f64
        );
        assert!(on >= off, "{shape}: the rule only ever holds work back");
    }
}

/// A ring of `ring` fresh accounts (no history) among `honest` honest volunteers who have
/// `history` valid results each, under the seasoned rule (seasoned after 10), quorum `quorum`,
/// every account on a network of its own (the network rule off: it is the other defence).
fn fresh_ring(
    quorum: u32,
    ring: usize,
    honest: usize,
    history: u64,
    units: usize,
    seed: u64,
) -> Simulation {
    let mut policy = Policy::with_quorum(quorum);
    policy.seasoned_after = Some(10);
    policy.replica_deadline_ms = 50;
    let mut behaviours = vec![Behaviour::Colluder; ring];
    behaviours.extend(std::iter::repeat_n(Behaviour::Honest, honest));
    let valid: Vec<u64> = (0..ring + honest)
        .map(|i| if i < ring { 0 } else { history })
        .collect();
    let mut simulation = Simulation::new(policy, units, &behaviours, seed).with_history(&valid);
    simulation.run(100_000);
    simulation
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// A ring of fresh accounts, as many as it likes and each on a network of its own, never
    /// validates its lie when every quorum needs a seasoned host: its accounts have no history,
    /// and the honest seasoned hosts outvote or out-wait it. Every unit still ends.
    #[test]
    fn a_ring_of_fresh_accounts_never_validates_a_lie_when_a_quorum_needs_a_seasoned_host(
        quorum in 2u32..4,
        ring in 2usize..12,
        honest in 3usize..8,
        units in 1usize..30,
        seed in any::<u64>(),
    ) {
        let simulation = fresh_ring(quorum, ring, honest, 10, units, seed);
        prop_assert_eq!(simulation.wrong(), 0);
        prop_assert!(
            simulation.units.iter().all(|u| u.state != UnitState::Open),
            "every unit ends"
        );
    }
}

#[test]
fn without_the_seasoned_rule_a_ring_of_fresh_accounts_validates_its_lie() {
    let mut policy = Policy::with_quorum(2);
    policy.replica_deadline_ms = 50;
    let mut behaviours = vec![Behaviour::Colluder; 6];
    behaviours.extend([Behaviour::Honest; 4]);
    let mut off = Simulation::new(policy, 40, &behaviours, 7);
    off.run(100_000);
    assert!(off.wrong() > 0, "the ring wins some units without the rule");
    let on = fresh_ring(2, 6, 4, 10, 40, 7);
    assert_eq!(on.wrong(), 0);
    assert_eq!(on.validated(), 40);
}

/// What the seasoned rule costs an honest project: 40 honest volunteers, quorum 2, 2,000 units,
/// the ticks until every unit is validated with the rule off and on, as the share of volunteers
/// already seasoned varies (the others season as they go: ten valid results each). Printed for
/// the README (`cargo test -p herd-lifecycle --test simulation cost -- --nocapture`).
#[test]
fn the_seasoned_rules_cost_in_throughput_is_measured() {
    for seasoned in [40usize, 20, 4, 1] {
        let history: Vec<u64> = (0..40).map(|i| if i < seasoned { 10 } else { 0 }).collect();
        let ticks = |rule: bool| {
            let mut policy = Policy::with_quorum(2);
            policy.seasoned_after = rule.then_some(10);
            let mut simulation =
                Simulation::new(policy, 2_000, &[Behaviour::Honest; 40], 11).with_history(&history);
            simulation.run(1_000_000);
            assert_eq!(simulation.validated(), 2_000, "{seasoned} seasoned");
            simulation.now
        };
        let (off, on) = (ticks(false), ticks(true));
        println!(
            "{seasoned} of 40 seasoned at the start: {off} ticks without the rule, {on} with it ({:.2}x)",
            on as f64 / off as f64
        );
        assert!(on >= off, "the rule only ever holds work back");
    }
}
