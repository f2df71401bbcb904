//! The work-unit lifecycle as a pure state machine: which replicas a unit still needs, when a
//! quorum agrees, when a unit has failed, which replicas are past their deadline, and how much
//! credit agreed fuel is worth. BOINC splits these jobs between its transitioner and validator;
//! here they are plain functions of the unit's replicas and the time passed in.
//!
//! Architecture Invariant: this crate does no IO and reads no clock. The coordinator loads a
//! unit's replicas from storage, asks [`evaluate`], and commits what it says.

use herd_protocol::RunResult;
use serde::{Deserialize, Serialize};

/// Fuel per unit of credit: one credit is 10^9 fuel, about a billion WebAssembly operations.
/// Credit derives only from fuel that a quorum of replicas agreed on, so it cannot be inflated.
pub const FUEL_PER_CREDIT: u64 = 1_000_000_000;

/// Converts agreed fuel to credit.
pub fn credit_for_fuel(fuel: u64) -> f64 {
    fuel as f64 / FUEL_PER_CREDIT as f64
}

/// The half-life of recent average credit: 7 days, as BOINC's dashboards expect.
pub const RAC_HALF_LIFE_MS: u64 = 7 * 86_400_000;

/// Recent average credit (RAC): credit per day, averaged with exponentially decaying weight so
/// that credit earned one half-life ago counts half. Kept as a value and the time it was last
/// brought up to date; both pure, so the coordinator stores them and passes time in.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RecentAverage {
    /// Credit per day as of `as_of_ms`.
    pub per_day: f64,
    pub as_of_ms: u64,
}

impl RecentAverage {
    /// The average as of `now_ms`: decayed by 2^(-elapsed / half-life). Time never runs backwards
    /// here: an earlier `now_ms` leaves the value as it is.
    pub fn at(self, now_ms: u64) -> Self {
        let elapsed = now_ms.saturating_sub(self.as_of_ms) as f64;
        Self {
            per_day: self.per_day
                * (-elapsed * std::f64::consts::LN_2 / RAC_HALF_LIFE_MS as f64).exp(),
            as_of_ms: self.as_of_ms.max(now_ms),
        }
    }

    /// The average after `credit` is granted at `now_ms`. A grant adds credit x ln 2 / half-life
    /// (in days), so a steady rate of `r` credits per day converges to an average of `r`.
    pub fn granted(self, credit: f64, now_ms: u64) -> Self {
        let decayed = self.at(now_ms);
        let half_life_days = RAC_HALF_LIFE_MS as f64 / 86_400_000.0;
        Self {
            per_day: decayed.per_day + credit * std::f64::consts::LN_2 / half_life_days,
            as_of_ms: decayed.as_of_ms,
        }
    }
}

/// The largest quorum a batch may ask for.
pub const MAX_QUORUM: u32 = 16;

/// The most replicas of one unit any limit may allow.
pub const MAX_REPLICAS: u32 = 256;

/// A batch's replication policy; every unit of the batch follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Agreeing successful replicas needed to validate a unit (BOINC's `min_quorum`).
    pub quorum: u32,
    /// Replicas sent at first (BOINC's `target_nresults`); more than the quorum finishes units
    /// sooner when some hosts are slow, at the cost of extra work.
    pub initial_replicas: u32,
    /// Replicas a unit may ever have (including errors and timeouts) before it fails.
    pub max_total_replicas: u32,
    /// Aborted or timed-out replicas after which a unit fails.
    pub max_error_replicas: u32,
    /// Successful replicas without a quorum agreeing after which a unit fails: its job looks
    /// nondeterministic (BOINC's `max_success_results`).
    pub max_success_replicas: u32,
    /// How long a host has to report a replica, in milliseconds.
    pub replica_deadline_ms: u64,
    /// Adaptive replication, off (`None`) unless the batch asks for it.
    #[serde(default)]
    pub adaptive: Option<Adaptive>,
    /// No two replicas of a unit on one network ([`network_of`]: an IPv4 /24, an IPv6 /48, as
    /// the coordinator sees the host), so a quorum's agreeing replicas come from as many
    /// networks: one person's machines and accounts behind one router can hold one replica of
    /// each unit at most. Off unless the batch or the project asks for it.
    #[serde(default)]
    pub distinct_networks: bool,
    /// A quorum needs at least one agreeing replica from a **seasoned** host, one with this many
    /// valid results behind it (in any batch) when it was given the replica ([`is_seasoned`]):
    /// a ring of fresh accounts and machines cannot validate anything among themselves, however
    /// many it has. Off (`None`) unless the batch or the project asks for it; a project needs
    /// seasoned hosts before it turns it on, or its units wait for one.
    #[serde(default)]
    pub seasoned_after: Option<u32>,
}

/// Adaptive replication (BOINC's name): a host that has returned enough consecutive valid
/// results is trusted, and a unit whose first replica goes to a trusted host may be validated by
/// that one result alone, except for random spot checks, which replicate it in full. Any invalid
/// result of a host resets its trust and reopens every unit it validated alone since its last
/// passed check (see [`HostTrust`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adaptive {
    /// Consecutive valid results (each checked against other hosts) after which a host is trusted.
    pub trust_after: u32,
    /// Chance, in parts per million, that a trusted host's unit is replicated in full anyway.
    pub spot_check_ppm: u32,
}

/// The most consecutive valid results adaptive replication may ask for before trusting a host.
pub const MAX_TRUST_AFTER: u32 = 100_000;

/// One in a million: the unit of [`Adaptive::spot_check_ppm`].
pub const PPM: u32 = 1_000_000;

impl Adaptive {
    /// BOINC's usual figures: trusted after 10 consecutive valid results, 10% spot checks.
    pub const DEFAULT: Adaptive = Adaptive {
        trust_after: 10,
        spot_check_ppm: 100_000,
    };
}

/// What the coordinator keeps of a host for adaptive replication. Every valid result that was
/// checked against other hosts adds one to `consecutive_valid` and confirms the units the host
/// validated alone with replicas assigned before the checked one (a check vouches for the host
/// up to when it was given that work, not after); an invalid result sets it back to zero and
/// reopens the unconfirmed ones. A result validated alone changes nothing: nobody checked it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostTrust {
    pub consecutive_valid: u32,
}

/// What a host's judged result does to its trust.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrustChange {
    /// Checked and valid: count it, and confirm the units it validated alone with replicas
    /// assigned before this one.
    ValidChecked,
    /// Invalid: trust is gone; reopen the units it validated alone since its last confirmation.
    Invalid,
}

impl HostTrust {
    /// Trust after a judged result.
    pub fn after(self, change: TrustChange) -> Self {
        match change {
            TrustChange::ValidChecked => Self {
                consecutive_valid: self.consecutive_valid.saturating_add(1),
            },
            TrustChange::Invalid => Self {
                consecutive_valid: 0,
            },
        }
    }

    /// Whether a unit whose first replica goes to this host may be validated by its result alone:
    /// the batch uses adaptive replication, the host is trusted, and `draw` (uniform in
    /// `0..PPM`, drawn by the caller from a secure source) is not a spot check.
    pub fn may_go_alone(self, policy: &Policy, draw: u32) -> bool {
        match policy.adaptive {
            Some(adaptive) => {
                policy.quorum > 1
                    && self.consecutive_valid >= adaptive.trust_after
                    && draw >= adaptive.spot_check_ppm
            }
            None => false,
        }
    }
}

/// A policy value outside its allowed range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError(pub String);

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PolicyError {}

impl Policy {
    /// The defaults for a quorum, in BOINC's sample ratios: as many initial replicas as the
    /// quorum, at most 4x the quorum in errors, 4x in successes without agreement and 8x in
    /// replicas overall, and a one-day deadline per replica.
    pub fn with_quorum(quorum: u32) -> Self {
        Self {
            quorum,
            initial_replicas: quorum,
            max_total_replicas: quorum.saturating_mul(8),
            max_error_replicas: quorum.saturating_mul(4),
            max_success_replicas: quorum.saturating_mul(4),
            replica_deadline_ms: 86_400_000,
            adaptive: None,
            distinct_networks: false,
            seasoned_after: None,
        }
    }

    /// The policy of a unit that one trusted host's result may validate alone: quorum 1, one
    /// replica at first, the batch's other limits. If that replica fails, the unit goes back to
    /// the batch's own policy.
    pub fn alone(&self) -> Self {
        Self {
            quorum: 1,
            initial_replicas: 1,
            max_success_replicas: self.max_success_replicas.max(1),
            ..*self
        }
    }

    /// Checks every value is in range, naming the first that is not.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if !(1..=MAX_QUORUM).contains(&self.quorum) {
            return Err(PolicyError(format!(
                "quorum {} is outside 1..={MAX_QUORUM}",
                self.quorum
            )));
        }
        if !(self.quorum..=self.max_total_replicas).contains(&self.initial_replicas) {
            return Err(PolicyError(format!(
                "initial_replicas {} is outside quorum ..= max_total_replicas ({} ..= {})",
                self.initial_replicas, self.quorum, self.max_total_replicas
            )));
        }
        if !(self.quorum..=MAX_REPLICAS).contains(&self.max_total_replicas) {
            return Err(PolicyError(format!(
                "max_total_replicas {} is outside the quorum {} ..= {MAX_REPLICAS}",
                self.max_total_replicas, self.quorum
            )));
        }
        if !(1..=MAX_REPLICAS).contains(&self.max_error_replicas) {
            return Err(PolicyError(format!(
                "max_error_replicas {} is outside 1..={MAX_REPLICAS}",
                self.max_error_replicas
            )));
        }
        if !(self.quorum..=MAX_REPLICAS).contains(&self.max_success_replicas) {
            return Err(PolicyError(format!(
                "max_success_replicas {} is outside the quorum {} ..= {MAX_REPLICAS}",
                self.max_success_replicas, self.quorum
            )));
        }
        if let Some(adaptive) = self.adaptive {
            if !(1..=MAX_TRUST_AFTER).contains(&adaptive.trust_after) {
                return Err(PolicyError(format!(
                    "adaptive trust_after {} is outside 1..={MAX_TRUST_AFTER}",
                    adaptive.trust_after
                )));
            }
            if adaptive.spot_check_ppm > PPM {
                return Err(PolicyError(format!(
                    "adaptive spot_check_ppm {} is outside 0..={PPM}",
                    adaptive.spot_check_ppm
                )));
            }
        }
        if let Some(after) = self.seasoned_after
            && !(1..=MAX_TRUST_AFTER).contains(&after)
        {
            return Err(PolicyError(format!(
                "seasoned_after {after} is outside 1..={MAX_TRUST_AFTER}"
            )));
        }
        if !(1_000..=30 * 86_400_000).contains(&self.replica_deadline_ms) {
            return Err(PolicyError(format!(
                "replica deadline {} ms is outside 1 second ..= 30 days",
                self.replica_deadline_ms
            )));
        }
        Ok(())
    }
}

/// Where one replica stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaState {
    /// Sent to a host, not reported yet.
    InProgress { deadline_ms: u64 },
    /// Reported with a countable outcome.
    Reported(RunResult),
    /// Reported as aborted (never counts toward a quorum).
    Aborted,
    /// Not reported by its deadline.
    TimedOut,
}

/// What the lifecycle needs to know of one replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    pub id: u64,
    pub volunteer_id: u64,
    /// The network of the host it was assigned to, as it was then ([`network_of`];
    /// [`UNKNOWN_NETWORK`] for replicas from before networks were recorded).
    pub network: u64,
    /// Whether its host was seasoned when it was given the replica (see
    /// [`Policy::seasoned_after`]); recorded with the replica, as its network is.
    pub seasoned: bool,
    pub state: ReplicaState,
}

/// Replicas a host may hold in progress at once: its cores, once it has earned them. A new host
/// may hold two, and one more for each valid result it has returned (so a machine that claims
/// 256 cores and never reports holds two units hostage, not 256); each replica in a row it let
/// time out (or lost) since its last valid result halves that, down to one, and a valid result
/// restores it (BOINC's reliability-limited work fetch, in one rule).
pub fn host_in_flight_cap(cores: u32, valid_results: u64, timeouts_in_a_row: u32) -> u32 {
    let earned = u64::from(cores).min(2 + valid_results) as u32;
    (earned >> timeouts_in_a_row.min(31)).max(1)
}

/// Whether a host with `valid_results` valid results behind it counts as seasoned under
/// `policy` (always, when the policy has no such rule).
pub fn is_seasoned(policy: &Policy, valid_results: u64) -> bool {
    policy
        .seasoned_after
        .is_none_or(|after| valid_results >= u64::from(after))
}

/// The network of a replica whose host's address was not recorded: it matches no other.
pub const UNKNOWN_NETWORK: u64 = 0;

/// The network a host's address belongs to, as one number: an IPv4 address's /24, an IPv6
/// address's /48 (an IPv4-mapped IPv6 address counts as its IPv4 address). Machines behind one
/// home router, or one small hosting block, share it; different homes almost never do. Never
/// [`UNKNOWN_NETWORK`].
pub fn network_of(address: std::net::IpAddr) -> u64 {
    use std::net::IpAddr;
    let v4 = |v4: std::net::Ipv4Addr| (4u64 << 56) | u64::from(u32::from(v4) >> 8);
    match address {
        IpAddr::V4(address) => v4(address),
        IpAddr::V6(address) => match address.to_ipv4_mapped() {
            Some(address) => v4(address),
            None => (6u64 << 56) | (u128::from(address) >> 80) as u64,
        },
    }
}

/// What should happen to a unit now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A quorum agrees: `canonical` is the unit's result. `agreeing` replicas are valid and earn
    /// credit; `disagreeing` ones (reported, different result) are invalid.
    Validated {
        canonical: RunResult,
        agreeing: Vec<u64>,
        disagreeing: Vec<u64>,
    },
    /// The unit cannot reach agreement within its limits.
    Failed { reason: String },
    /// Still open; it wants this many new replicas sent now.
    Open { wanted: u32 },
}

/// Decides a unit's fate from its replicas.
///
/// A unit wants enough replicas in flight that, if they all agree with its largest group of
/// agreeing results, a quorum is reached; and at first, `initial_replicas` of them. For quorum 2
/// that is two at first and one more after a disagreement. It fails when errors reach their limit,
/// when successes without agreement reach theirs, or when nothing is in flight and the total
/// limit forbids more.
pub fn evaluate(policy: &Policy, replicas: &[Replica]) -> Verdict {
    // Group reported results; each group keeps its replicas in id order.
    let mut groups: Vec<(&RunResult, Vec<u64>)> = Vec::new();
    let mut ids: Vec<&Replica> = replicas.iter().collect();
    ids.sort_by_key(|r| r.id);
    for replica in &ids {
        if let ReplicaState::Reported(result) = &replica.state {
            match groups.iter_mut().find(|(r, _)| *r == result) {
                Some((_, members)) => members.push(replica.id),
                None => groups.push((result, vec![replica.id])),
            }
        }
    }
    // Under the seasoned rule a group with no seasoned member counts at most one short of the
    // quorum: it can never validate alone, and the unit wants one more (seasoned) replica.
    let counted = |members: &[u64]| -> u32 {
        let size = members.len() as u32;
        let seasoned = members
            .iter()
            .any(|id| ids.iter().any(|r| r.id == *id && r.seasoned));
        if policy.seasoned_after.is_some() && !seasoned {
            size.min(policy.quorum - 1)
        } else {
            size
        }
    };
    // The largest group wins; between equal sizes, the one whose first replica came first.
    let best = groups
        .iter()
        .max_by(|a, b| counted(&a.1).cmp(&counted(&b.1)).then(b.1[0].cmp(&a.1[0])));
    let largest = best.map_or(0, |(_, members)| counted(members));
    if let Some((canonical, agreeing)) = best
        && largest >= policy.quorum
    {
        let disagreeing = groups
            .iter()
            .filter(|(r, _)| r != canonical)
            .flat_map(|(_, members)| members.iter().copied())
            .collect();
        return Verdict::Validated {
            canonical: (*canonical).clone(),
            agreeing: agreeing.clone(),
            disagreeing,
        };
    }
    let errors = replicas
        .iter()
        .filter(|r| matches!(r.state, ReplicaState::Aborted | ReplicaState::TimedOut))
        .count() as u32;
    if errors >= policy.max_error_replicas {
        return Verdict::Failed {
            reason: format!(
                "{errors} replicas aborted or timed out (limit {})",
                policy.max_error_replicas
            ),
        };
    }
    let successes = replicas
        .iter()
        .filter(|r| matches!(r.state, ReplicaState::Reported(_)))
        .count() as u32;
    if successes >= policy.max_success_replicas {
        return Verdict::Failed {
            reason: format!(
                "no agreement among {successes} successful replicas (limit {}): {} different results, the job looks nondeterministic",
                policy.max_success_replicas,
                groups.len()
            ),
        };
    }
    let in_flight = replicas
        .iter()
        .filter(|r| matches!(r.state, ReplicaState::InProgress { .. }))
        .count() as u32;
    let total = replicas.len() as u32;
    let live = successes + in_flight;
    let target = policy
        .initial_replicas
        .max(successes + (policy.quorum - largest));
    let room = policy.max_total_replicas.saturating_sub(total);
    let wanted = target.saturating_sub(live).min(room);
    if wanted == 0 && in_flight == 0 {
        return Verdict::Failed {
            reason: format!(
                "no agreement after {total} replicas (limit {}): {} different results",
                policy.max_total_replicas,
                groups.len()
            ),
        };
    }
    Verdict::Open { wanted }
}

/// The aborted or timed-out replicas of one unit a volunteer may have before it is given that
/// unit no more: one host's trouble (a full disk, a crash at start) cannot spend the unit's whole
/// error limit and fail it for the researcher.
pub const MAX_ERRORS_PER_VOLUNTEER: usize = 2;

/// Whether a replica of this unit may go to `volunteer_id`: never while the volunteer holds or has
/// reported one (BOINC's one_result_per_user_per_wu), so one person cannot form a quorum alone.
///
/// A replica of theirs that aborted or timed out does not count as held: it can never join a
/// quorum, and counting it would leave a unit on a small grid with no volunteer left to finish
/// it. But after [`MAX_ERRORS_PER_VOLUNTEER`] of them the unit waits for someone else.
pub fn may_assign_to<'a>(
    replicas: impl IntoIterator<Item = &'a Replica>,
    volunteer_id: u64,
) -> bool {
    let mut errors = 0;
    for replica in replicas {
        if replica.volunteer_id != volunteer_id {
            continue;
        }
        match replica.state {
            ReplicaState::Aborted | ReplicaState::TimedOut => errors += 1,
            ReplicaState::InProgress { .. } | ReplicaState::Reported(_) => return false,
        }
    }
    errors < MAX_ERRORS_PER_VOLUNTEER
}

/// Whether a host on `network` may take another replica of a unit with these replicas, under
/// `policy`: always, unless the policy asks for distinct networks and a replica in progress or
/// reported is on that network (one that aborted or timed out never joins a quorum, so it does
/// not count, as in [`may_assign_to`]).
pub fn network_may_take<'a>(
    policy: &Policy,
    replicas: impl IntoIterator<Item = &'a Replica>,
    network: u64,
) -> bool {
    !policy.distinct_networks
        || network == UNKNOWN_NETWORK
        || replicas.into_iter().all(|r| {
            r.network != network
                || matches!(r.state, ReplicaState::Aborted | ReplicaState::TimedOut)
        })
}

/// Whether a host (`seasoned` or not) may take another replica of a unit with these replicas,
/// under `policy`: always, unless the policy asks for a seasoned host in every quorum and this
/// one is not seasoned; then only while the replicas in progress or reported that are not
/// seasoned are fewer than the quorum less one, or a seasoned one is among them, so the
/// quorum's last place is kept for a seasoned host rather than spent on a replica that could
/// never complete it.
pub fn seasoned_may_take<'a>(
    policy: &Policy,
    replicas: impl IntoIterator<Item = &'a Replica>,
    seasoned: bool,
) -> bool {
    if policy.seasoned_after.is_none() || seasoned {
        return true;
    }
    let mut unseasoned = 0;
    for replica in replicas {
        if matches!(
            replica.state,
            ReplicaState::InProgress { .. } | ReplicaState::Reported(_)
        ) {
            if replica.seasoned {
                return true;
            }
            unseasoned += 1;
        }
    }
    unseasoned + 1 < policy.quorum
}

/// The replicas whose deadline has passed at `now_ms`.
pub fn expired(replicas: &[Replica], now_ms: u64) -> Vec<u64> {
    replicas
        .iter()
        .filter(
            |r| matches!(r.state, ReplicaState::InProgress { deadline_ms } if deadline_ms < now_ms),
        )
        .map(|r| r.id)
        .collect()
}

#[cfg(test)]
mod tests;
