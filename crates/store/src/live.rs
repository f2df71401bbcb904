//! The live work, held in memory: batches with open units, their open units and replicas, every
//! replica in progress with its deadline, and the hosts holding them. Assignment and settling a
//! report are decided here, without a query; the database records the decisions (group
//! committed) and stays the truth. This module does no IO: the SQLite backend loads a `Live` from
//! the database at start and rebuilds it whenever a write it mirrored was rolled back.
//!
//! Architecture Invariant: `Live` mirrors the committed database. Every open unit and all its
//! replicas are here, every replica in progress is here (even of a unit that closed), and every
//! host holding one; a unit is in its batch's `wanting` set exactly when the lifecycle says it
//! wants more replicas.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use herd_lifecycle::{HostTrust, Policy, Replica, ReplicaState, Verdict, evaluate};
use herd_protocol::{ContentHash, PublicKey};

use crate::shards::{Shards, shard_of};

/// A batch that still has open units.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LiveBatch {
    pub(crate) module: ContentHash,
    pub(crate) policy: Policy,
    pub(crate) fuel_limit: u64,
    pub(crate) memory_limit_bytes: u64,
    pub(crate) output_limit_bytes: u64,
    pub(crate) priority: i32,
    /// The account that pays for it (its researcher's), and what it bids.
    pub(crate) owner: u64,
    pub(crate) pricing: crate::Pricing,
    /// Replicas of this batch in progress (for fair sharing).
    pub(crate) in_flight: u32,
    /// Open units of this batch held here; the batch leaves when none is left.
    pub(crate) open_units: u64,
    /// Open units that want another replica now, in id order (oldest first).
    pub(crate) wanting: BTreeSet<u64>,
    /// Credit grants of this batch so far (in the ledger, revoked or not).
    pub(crate) grants: u64,
    /// Their fuel, each divided by [`FUEL_SUM_UNIT`] before summing, so no batch can overflow.
    pub(crate) granted_fuel: u64,
}

/// The unit in which [`LiveBatch::granted_fuel`] sums fuel (a grant's fuel is rounded down to it).
pub(crate) const FUEL_SUM_UNIT: u64 = 1024;

impl LiveBatch {
    /// The fuel a unit of this batch typically burns: the mean of its granted results, or
    /// `None` before the first.
    pub(crate) fn typical_fuel(&self) -> Option<u64> {
        (self.grants > 0).then(|| self.granted_fuel / self.grants * FUEL_SUM_UNIT)
    }

    /// Whether a host computing `fuel_per_second` finishes a typical unit before the replica
    /// deadline. Unknown speeds and batches with no result yet are given the benefit of the
    /// doubt (as BOINC's first estimate is).
    pub(crate) fn fits(&self, fuel_per_second: Option<u64>) -> bool {
        match (self.typical_fuel(), fuel_per_second) {
            (Some(fuel), Some(speed)) => {
                let needed_ms = u128::from(fuel) * 1000 / u128::from(speed.max(1));
                needed_ms <= u128::from(self.policy.replica_deadline_ms)
            }
            _ => true,
        }
    }
}

/// An open unit and every replica it has had.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LiveUnit {
    pub(crate) batch_id: u64,
    pub(crate) input: ContentHash,
    pub(crate) seed: u64,
    /// One trusted host's result may validate it alone (adaptive replication).
    pub(crate) alone: bool,
    pub(crate) replicas: Vec<LiveReplica>,
    /// Replicas of it already credited, with the fuel granted: only a unit validated alone and
    /// reopened has any (its lone replica), which agreeing again must not credit twice and
    /// disagreeing revokes.
    pub(crate) credited: BTreeMap<u64, u64>,
}

/// One replica of an open unit, as the lifecycle sees it, plus its host.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LiveReplica {
    pub(crate) replica: Replica,
    pub(crate) host_id: u64,
}

/// Where to find a replica held here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ReplicaRef {
    pub(crate) unit_id: u64,
    pub(crate) batch_id: u64,
    pub(crate) host_id: u64,
    pub(crate) volunteer_id: u64,
    /// `Some` while the replica is in progress.
    pub(crate) deadline_ms: Option<u64>,
}

/// A host known to be connected or holding work.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LiveHost {
    pub(crate) volunteer_id: u64,
    pub(crate) cores: u32,
    pub(crate) key: PublicKey,
    pub(crate) last_seen_ms: u64,
    pub(crate) trust: HostTrust,
    /// Its valid results so far (grants less revocations), for the seasoned rule and its limit
    /// of work in progress.
    pub(crate) valid_results: u64,
    /// Its replicas timed out or lost in a row since its last valid result.
    pub(crate) timeouts_in_a_row: u32,
    /// Its replicas in progress.
    pub(crate) in_flight: BTreeSet<u64>,
}

/// The live work. See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Live {
    pub(crate) hosts: HashMap<u64, LiveHost>,
    pub(crate) batches: BTreeMap<u64, LiveBatch>,
    pub(crate) units: HashMap<u64, LiveUnit>,
    /// Every replica of an open unit, and every replica in progress.
    pub(crate) replicas: HashMap<u64, ReplicaRef>,
    /// Replicas in progress by deadline: `(deadline_ms, replica_id)`.
    pub(crate) deadlines: BTreeSet<(u64, u64)>,
    /// The shards whose units are here (every shard, for a lone coordinator).
    pub(crate) shards: Shards,
    /// Owners of paying batches whose balance is spent, as last read
    /// ([`crate::ledger::refresh_funding`]): their batches are served as free, or paused.
    pub(crate) unfunded: std::collections::HashSet<u64>,
}

/// Units wanting a replica counted at most per shard by [`Live::wanting_by_shard`].
pub(crate) const WANTING_COUNTED: u64 = 64;

/// A unit chosen for a new replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pick {
    pub(crate) unit_id: u64,
    pub(crate) batch_id: u64,
}

impl Live {
    /// Adds an open unit with the replicas it has (used by loading and by batch creation).
    pub(crate) fn insert_unit(&mut self, unit_id: u64, unit: LiveUnit) {
        let batch_id = unit.batch_id;
        for live in &unit.replicas {
            let deadline_ms = match live.replica.state {
                ReplicaState::InProgress { deadline_ms } => Some(deadline_ms),
                _ => None,
            };
            self.replicas.insert(
                live.replica.id,
                ReplicaRef {
                    unit_id,
                    batch_id,
                    host_id: live.host_id,
                    volunteer_id: live.replica.volunteer_id,
                    deadline_ms,
                },
            );
        }
        self.units.insert(unit_id, unit);
        if let Some(batch) = self.batches.get_mut(&batch_id) {
            batch.open_units += 1;
        }
        self.refresh_wanting(unit_id);
    }

    /// Records a replica in progress whose unit is no longer open (loading only).
    pub(crate) fn insert_orphan_in_progress(&mut self, replica_id: u64, reference: ReplicaRef) {
        self.replicas.insert(replica_id, reference);
    }

    /// Recounts the in-flight bookkeeping (hosts, batches, deadlines) from `replicas`; loading
    /// calls it once everything is inserted.
    pub(crate) fn recount_in_flight(&mut self) {
        self.deadlines.clear();
        for host in self.hosts.values_mut() {
            host.in_flight.clear();
        }
        for batch in self.batches.values_mut() {
            batch.in_flight = 0;
        }
        for (id, reference) in &self.replicas {
            if let Some(deadline_ms) = reference.deadline_ms {
                self.deadlines.insert((deadline_ms, *id));
                if let Some(host) = self.hosts.get_mut(&reference.host_id) {
                    host.in_flight.insert(*id);
                }
                if let Some(batch) = self.batches.get_mut(&reference.batch_id) {
                    batch.in_flight += 1;
                }
            }
        }
    }

    /// The lifecycle's verdict for an open unit.
    pub(crate) fn verdict(&self, unit_id: u64) -> Option<Verdict> {
        let unit = self.units.get(&unit_id)?;
        let batch = self.batches.get(&unit.batch_id)?;
        let replicas: Vec<Replica> = unit.replicas.iter().map(|r| r.replica.clone()).collect();
        let policy = if unit.alone {
            batch.policy.alone()
        } else {
            batch.policy
        };
        Some(evaluate(&policy, &replicas))
    }

    /// Puts an open unit in or out of its batch's `wanting` set, as its verdict says.
    pub(crate) fn refresh_wanting(&mut self, unit_id: u64) {
        let wants = matches!(self.verdict(unit_id), Some(Verdict::Open { wanted }) if wanted > 0);
        let Some(batch_id) = self.units.get(&unit_id).map(|u| u.batch_id) else {
            return;
        };
        if let Some(batch) = self.batches.get_mut(&batch_id) {
            if wants {
                batch.wanting.insert(unit_id);
            } else {
                batch.wanting.remove(&unit_id);
            }
        }
    }

    /// Picks a unit for the host `(host_id, volunteer_id, network)` (computing
    /// `fuel_per_second` if known): among the batches whose typical unit it can finish before
    /// the deadline, by bid (of owners who can pay: see [`Live::standing`]), then priority, then
    /// the one with the fewest replicas in flight (fair share),
    /// then the oldest; within a batch, the oldest unit that wants a replica and that neither
    /// this volunteer nor this host holds or has reported, nor, when the batch asks for
    /// distinct networks, a host on this network. At most `scan_limit` units are examined.
    pub(crate) fn pick(
        &self,
        (host_id, volunteer_id, network): (u64, u64, u64),
        fuel_per_second: Option<u64>,
        scan_limit: usize,
    ) -> Option<Pick> {
        let mut order: Vec<(&u64, &LiveBatch, (u32, i32))> = self
            .batches
            .iter()
            .filter(|(_, batch)| !batch.wanting.is_empty() && batch.fits(fuel_per_second))
            .filter_map(|(id, batch)| Some((id, batch, self.standing(batch)?)))
            .collect();
        // By bid, then priority, then fair share, then age.
        order.sort_by(|(a_id, a, a_standing), (b_id, b, b_standing)| {
            b_standing
                .cmp(a_standing)
                .then(a.in_flight.cmp(&b.in_flight))
                .then(a_id.cmp(b_id))
        });
        let mut budget = scan_limit;
        for (batch_id, batch, _) in order {
            let seasoned = self.seasoned(host_id, &batch.policy);
            for unit_id in &batch.wanting {
                if budget == 0 {
                    return None;
                }
                budget -= 1;
                let Some(unit) = self.units.get(unit_id) else {
                    continue;
                };
                let taken = !herd_lifecycle::may_assign_to(
                    unit.replicas.iter().map(|r| &r.replica),
                    volunteer_id,
                ) || unit.replicas.iter().any(|r| {
                    r.host_id == host_id
                        && matches!(
                            r.replica.state,
                            ReplicaState::InProgress { .. } | ReplicaState::Reported(_)
                        )
                });
                let network_free = herd_lifecycle::network_may_take(
                    &batch.policy,
                    unit.replicas.iter().map(|r| &r.replica),
                    network,
                );
                let seasoned_free = herd_lifecycle::seasoned_may_take(
                    &batch.policy,
                    unit.replicas.iter().map(|r| &r.replica),
                    seasoned,
                );
                if !taken && network_free && seasoned_free {
                    return Some(Pick {
                        unit_id: *unit_id,
                        batch_id: *batch_id,
                    });
                }
            }
        }
        None
    }

    /// Where a batch stands in the queue: its bid and priority while its owner can pay, the free
    /// tier's `(0, 0)` once it cannot, or `None` (not served) if the batch then pauses.
    fn standing(&self, batch: &LiveBatch) -> Option<(u32, i32)> {
        let bid = batch.pricing.bid_milli;
        if bid == 0 || !self.unfunded.contains(&batch.owner) {
            return Some((bid, batch.priority));
        }
        (!batch.pricing.pause_when_broke).then_some((0, 0))
    }

    /// Whether the host counts as seasoned under `policy` (a host not held here has no history
    /// that counts).
    pub(crate) fn seasoned(&self, host_id: u64, policy: &Policy) -> bool {
        let valid = self.hosts.get(&host_id).map_or(0, |h| h.valid_results);
        herd_lifecycle::is_seasoned(policy, valid)
    }

    /// Records a new replica in progress.
    pub(crate) fn add_replica(
        &mut self,
        pick: &Pick,
        replica: Replica,
        host_id: u64,
        deadline_ms: u64,
    ) {
        let replica_id = replica.id;
        self.replicas.insert(
            replica_id,
            ReplicaRef {
                unit_id: pick.unit_id,
                batch_id: pick.batch_id,
                host_id,
                volunteer_id: replica.volunteer_id,
                deadline_ms: Some(deadline_ms),
            },
        );
        self.deadlines.insert((deadline_ms, replica_id));
        if let Some(host) = self.hosts.get_mut(&host_id) {
            host.in_flight.insert(replica_id);
        }
        if let Some(batch) = self.batches.get_mut(&pick.batch_id) {
            batch.in_flight += 1;
        }
        if let Some(unit) = self.units.get_mut(&pick.unit_id) {
            unit.replicas.push(LiveReplica { replica, host_id });
        }
        self.refresh_wanting(pick.unit_id);
    }

    /// A replica is no longer in progress (reported, aborted or timed out): its host, batch and
    /// deadline stop counting it, and its unit's replica takes `state`. If its unit is closed,
    /// the replica leaves.
    pub(crate) fn end_in_progress(&mut self, replica_id: u64, state: ReplicaState) {
        let Some(reference) = self.replicas.get_mut(&replica_id) else {
            return;
        };
        if let Some(deadline_ms) = reference.deadline_ms.take() {
            self.deadlines.remove(&(deadline_ms, replica_id));
            if let Some(host) = self.hosts.get_mut(&reference.host_id) {
                host.in_flight.remove(&replica_id);
            }
            if let Some(batch) = self.batches.get_mut(&reference.batch_id) {
                batch.in_flight = batch.in_flight.saturating_sub(1);
            }
        }
        let unit_id = reference.unit_id;
        match self.units.get_mut(&unit_id) {
            Some(unit) => {
                if let Some(live) = unit
                    .replicas
                    .iter_mut()
                    .find(|r| r.replica.id == replica_id)
                {
                    live.replica.state = state;
                }
            }
            None => {
                self.replicas.remove(&replica_id);
            }
        }
    }

    /// A unit closed (validated or failed): it and its finished replicas leave; its replicas
    /// still in progress stay (they may report late) until they end.
    pub(crate) fn close_unit(&mut self, unit_id: u64) {
        let Some(unit) = self.units.remove(&unit_id) else {
            return;
        };
        for live in &unit.replicas {
            let in_progress = self
                .replicas
                .get(&live.replica.id)
                .is_some_and(|r| r.deadline_ms.is_some());
            if !in_progress {
                self.replicas.remove(&live.replica.id);
            }
        }
        let batch_id = unit.batch_id;
        let empty = match self.batches.get_mut(&batch_id) {
            Some(batch) => {
                batch.wanting.remove(&unit_id);
                batch.open_units = batch.open_units.saturating_sub(1);
                batch.open_units == 0
            }
            None => false,
        };
        if empty {
            // Its replicas still in progress keep counting against their hosts; the batch's
            // own in-flight count only matters for choosing among batches with open units.
            self.batches.remove(&batch_id);
        }
    }

    /// A batch was retired: everything of it leaves, replicas in progress included.
    pub(crate) fn remove_batch(&mut self, batch_id: u64) {
        self.batches.remove(&batch_id);
        self.units.retain(|_, unit| unit.batch_id != batch_id);
        let gone: Vec<(u64, ReplicaRef)> = self
            .replicas
            .iter()
            .filter(|(_, r)| r.batch_id == batch_id)
            .map(|(id, r)| (*id, *r))
            .collect();
        for (replica_id, reference) in gone {
            self.replicas.remove(&replica_id);
            if let Some(deadline_ms) = reference.deadline_ms {
                self.deadlines.remove(&(deadline_ms, replica_id));
                if let Some(host) = self.hosts.get_mut(&reference.host_id) {
                    host.in_flight.remove(&replica_id);
                }
            }
        }
    }

    /// Where `self` differs from `loaded` (a `Live` just loaded from the database), ignoring
    /// what is only a cache: hosts holding nothing and recent averages. `None` if they agree.
    #[cfg(test)]
    pub(crate) fn mirror_difference(&self, loaded: &Live) -> Option<String> {
        let busy = |live: &Live| -> BTreeMap<u64, LiveHost> {
            live.hosts
                .iter()
                .filter(|(_, h)| !h.in_flight.is_empty())
                .map(|(id, h)| {
                    (
                        *id,
                        LiveHost {
                            last_seen_ms: 0,
                            ..h.clone()
                        },
                    )
                })
                .collect()
        };
        if busy(self) != busy(loaded) {
            return Some(format!("hosts: {:?} vs {:?}", busy(self), busy(loaded)));
        }
        if self.batches != loaded.batches {
            return Some(format!(
                "batches: {:?} vs {:?}",
                self.batches, loaded.batches
            ));
        }
        if self.units != loaded.units {
            return Some(format!("units: {:?} vs {:?}", self.units, loaded.units));
        }
        if self.replicas != loaded.replicas {
            return Some(format!(
                "replicas: {:?} vs {:?}",
                self.replicas, loaded.replicas
            ));
        }
        if self.deadlines != loaded.deadlines {
            return Some(format!(
                "deadlines: {:?} vs {:?}",
                self.deadlines, loaded.deadlines
            ));
        }
        None
    }

    /// How many units of each shard held want a replica now (shards with none left out),
    /// counted up to [`WANTING_COUNTED`] each: enough to tell a shard with plenty of work from
    /// one with a little, at a cost bounded per group whatever the backlog.
    pub(crate) fn wanting_by_shard(&self) -> BTreeMap<u64, u64> {
        let mut wanting = BTreeMap::new();
        let mut full = 0;
        for batch in self.batches.values() {
            for unit_id in &batch.wanting {
                let count = wanting.entry(shard_of(*unit_id)).or_insert(0);
                if *count < WANTING_COUNTED {
                    *count += 1;
                    if *count == WANTING_COUNTED {
                        full += 1;
                        if full == self.shards.count() {
                            return wanting;
                        }
                    }
                }
            }
        }
        wanting
    }

    /// Replicas in progress whose deadline is before `now_ms`.
    pub(crate) fn expired(&self, now_ms: u64) -> Vec<u64> {
        self.deadlines
            .range(..(now_ms, 0))
            .map(|(_, id)| *id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(priority: i32) -> LiveBatch {
        LiveBatch {
            module: ContentHash::of(b"m"),
            policy: Policy::with_quorum(2),
            fuel_limit: 1,
            memory_limit_bytes: 1,
            output_limit_bytes: 1,
            priority,
            owner: 1,
            pricing: crate::Pricing::default(),
            in_flight: 0,
            open_units: 0,
            wanting: BTreeSet::new(),
            grants: 0,
            granted_fuel: 0,
        }
    }

    fn unit(batch_id: u64) -> LiveUnit {
        LiveUnit {
            batch_id,
            input: ContentHash::of(b"i"),
            seed: 0,
            alone: false,
            replicas: Vec::new(),
            credited: BTreeMap::new(),
        }
    }

    fn host(volunteer_id: u64) -> LiveHost {
        LiveHost {
            volunteer_id,
            cores: 4,
            key: PublicKey([0; 32]),
            last_seen_ms: 0,
            trust: HostTrust::default(),
            valid_results: 0,
            timeouts_in_a_row: 0,
            in_flight: BTreeSet::new(),
        }
    }

    fn replica(id: u64, volunteer_id: u64) -> Replica {
        Replica {
            id,
            volunteer_id,
            network: herd_lifecycle::UNKNOWN_NETWORK,
            seasoned: false,
            state: ReplicaState::InProgress { deadline_ms: 100 },
        }
    }

    #[test]
    fn a_unit_wants_replicas_until_its_quorum_is_in_flight_and_never_twice_per_volunteer() {
        let mut live = Live::default();
        live.batches.insert(1, batch(0));
        live.insert_unit(10, unit(1));
        live.hosts.insert(7, host(70));
        live.hosts.insert(8, host(80));
        let pick = live.pick((7, 70, 0), None, 100).expect("a unit");
        assert_eq!(
            pick,
            Pick {
                unit_id: 10,
                batch_id: 1
            }
        );
        live.add_replica(&pick, replica(1, 70), 7, 100);
        assert_eq!(
            live.pick((7, 70, 0), None, 100),
            None,
            "volunteer 70 already holds it"
        );
        let pick = live.pick((8, 80, 0), None, 100).expect("a second replica");
        live.add_replica(&pick, replica(2, 80), 8, 100);
        assert!(live.batches[&1].wanting.is_empty());
        assert_eq!(live.batches[&1].in_flight, 2);
        assert_eq!(live.expired(101), vec![1, 2]);
        live.end_in_progress(1, ReplicaState::TimedOut);
        live.refresh_wanting(10);
        assert_eq!(
            live.pick((7, 70, 0), None, 100).map(|p| p.unit_id),
            Some(10)
        );
        assert_eq!(live.hosts[&7].in_flight.len(), 0);
        live.close_unit(10);
        assert!(live.batches.is_empty());
        assert!(
            live.replicas.contains_key(&2),
            "still in progress, may report late"
        );
        assert!(!live.replicas.contains_key(&1));
        live.end_in_progress(2, ReplicaState::Aborted);
        assert!(live.replicas.is_empty() && live.deadlines.is_empty());
    }

    #[test]
    fn priority_first_then_the_batch_with_fewest_in_flight() {
        let mut live = Live::default();
        live.batches.insert(1, batch(0));
        live.batches.insert(2, batch(0));
        live.batches.insert(3, batch(5));
        for (unit_id, batch_id) in [(10, 1), (11, 1), (20, 2), (30, 3)] {
            live.insert_unit(unit_id, unit(batch_id));
        }
        live.hosts.insert(7, host(70));
        assert_eq!(
            live.pick((7, 70, 0), None, 100).map(|p| p.batch_id),
            Some(3)
        );
        live.batches.remove(&3);
        let first = live.pick((7, 70, 0), None, 100).expect("pick");
        assert_eq!(first.batch_id, 1);
        live.add_replica(&first, replica(1, 70), 7, 100);
        assert_eq!(
            live.pick((7, 70, 0), None, 100).map(|p| p.batch_id),
            Some(2)
        );
    }

    fn bidding(bid_milli: u32, owner: u64, pause_when_broke: bool) -> LiveBatch {
        LiveBatch {
            owner,
            pricing: crate::Pricing {
                bid_milli,
                pause_when_broke,
            },
            ..batch(0)
        }
    }

    #[test]
    fn the_higher_bid_first_and_an_owner_who_cannot_pay_falls_to_the_free_tier_or_pauses() {
        let mut live = Live::default();
        live.batches.insert(1, batch(3));
        live.batches.insert(2, bidding(1000, 20, false));
        live.batches.insert(3, bidding(2500, 30, true));
        for (unit_id, batch_id) in [(10, 1), (20, 2), (30, 3)] {
            live.insert_unit(unit_id, unit(batch_id));
        }
        live.hosts.insert(7, host(70));
        let first = |live: &Live| live.pick((7, 70, 0), None, 100).map(|p| p.batch_id);
        assert_eq!(first(&live), Some(3), "the highest bid, over any priority");
        live.unfunded.insert(30);
        assert_eq!(
            first(&live),
            Some(2),
            "batch 3 pauses: its owner cannot pay"
        );
        live.unfunded.insert(20);
        assert_eq!(
            first(&live),
            Some(1),
            "batch 2 is served as free, at priority 0, after the free batch of priority 3"
        );
        live.batches.remove(&1);
        assert_eq!(first(&live), Some(2), "still served, as free");
        live.batches.remove(&2);
        assert_eq!(first(&live), None, "a paused batch is not served");
        live.unfunded.clear();
        assert_eq!(first(&live), Some(3), "paid for again, it resumes");
    }
}
