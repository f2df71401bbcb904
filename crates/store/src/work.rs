//! The hot path, on any backend: loading the live work into memory, creating batches, assigning, recording reports, timing out replicas and granting credit. Each
//! operation decides from [`Live`] and writes its decision through [`Sql`], in the writer's
//! group transaction; the database stays the truth and `Live` is rebuilt from it after any
//! failure.
//!
//! Rule that keeps `Live` a true mirror: an operation refuses a request (unknown host or replica,
//! someone else's replica, a bad batch) before it changes anything; any other error marks `Live`
//! stale, and the writer rebuilds it once the group has been rolled back or committed.
//!
//! The hot path reads nothing: what it needs to decide is in `Live`, ids are reserved ahead, and
//! counters shared with other coordinators (recent average credit, trust, refusals) are updated
//! relative to what the row holds, so a backend may hold every write until the commit.

use herd_lifecycle::{
    Adaptive, HostTrust, PPM, Policy, RAC_HALF_LIFE_MS, Replica, ReplicaState, TrustChange,
    Verdict, credit_for_fuel,
};
use herd_protocol::{Assignment, ContentHash, Outcome, PublicKey};

use crate::live::{FUEL_SUM_UNIT, Live, LiveBatch, LiveHost, LiveReplica, LiveUnit, ReplicaRef};
use crate::shards::{Shards, shard_of};
use crate::sql::{Row, Sequence, SharedRow, Sql, WorkChange, args};
use crate::{NewBatch, ReportEffect, StoreError, Want, encode_result, parse_hash, parse_result};

/// Units examined per assignment request before answering "no work".
const ASSIGN_SCAN_LIMIT: usize = 512;

/// "Last seen" is kept to the minute: rewriting a host's row on every request would cost a write
/// per assignment.
const LAST_SEEN_RESOLUTION_MS: u64 = 60_000;

/// Columns of `batches` read by [`batch_from_row`], in its order.
pub(crate) const BATCH_COLUMNS: &str = "id, module_hash, quorum, max_total_replicas,
    max_error_replicas, replica_deadline_ms, fuel_limit, memory_limit_bytes, output_limit_bytes,
    initial_replicas, max_success_replicas, priority, trust_after, spot_check_ppm,
    distinct_networks, bid_milli, pause_when_broke,
    COALESCE((SELECT r.account_id FROM researchers r WHERE r.id = researcher_id), 0),
    seasoned_after";

fn batch_from_row(row: &Row) -> Result<(u64, LiveBatch), StoreError> {
    Ok((
        row.u64(0)?,
        LiveBatch {
            module: parse_hash(&row.text(1)?)?,
            policy: Policy {
                quorum: row.u32(2)?,
                max_total_replicas: row.u32(3)?,
                max_error_replicas: row.u32(4)?,
                replica_deadline_ms: row.u64(5)?,
                initial_replicas: row.u32(9)?,
                max_success_replicas: row.u32(10)?,
                adaptive: match (row.opt_u32(12)?, row.opt_u32(13)?) {
                    (Some(trust_after), Some(spot_check_ppm)) => Some(Adaptive {
                        trust_after,
                        spot_check_ppm,
                    }),
                    _ => None,
                },
                distinct_networks: row.bool(14)?,
                seasoned_after: row.opt_u32(18)?,
            },
            fuel_limit: row.u64(6)?,
            memory_limit_bytes: row.u64(7)?,
            output_limit_bytes: row.u64(8)?,
            priority: row.i32(11)?,
            owner: row.u64(17)?,
            pricing: crate::Pricing {
                bid_milli: row.u32(15)?,
                pause_when_broke: row.bool(16)?,
            },
            in_flight: 0,
            open_units: 0,
            wanting: Default::default(),
            grants: 0,
            granted_fuel: 0,
        },
    ))
}

/// Reads a batch's credit grants into its live record (for its typical fuel).
fn load_grants(tx: &mut dyn Sql, batch_id: u64, batch: &mut LiveBatch) -> Result<(), StoreError> {
    let row = tx.query_one(
        &format!(
            "SELECT COUNT(*), CAST(COALESCE(SUM(c.fuel / {FUEL_SUM_UNIT}), 0) AS BIGINT)
             FROM units u JOIN replicas r ON r.unit_id = u.id JOIN credit c ON c.replica_id = r.id
             WHERE u.batch_id = ?1"
        ),
        &args![batch_id],
    )?;
    batch.grants = row.u64(0)?;
    batch.granted_fuel = row.u64(1)?;
    Ok(())
}

/// Loads one batch (with its grants) into `live`, if it is not there yet.
fn load_batch(tx: &mut dyn Sql, live: &mut Live, batch_id: u64) -> Result<(), StoreError> {
    if live.batches.contains_key(&batch_id) {
        return Ok(());
    }
    let row = tx.query_one(
        &format!("SELECT {BATCH_COLUMNS} FROM batches WHERE id = ?1"),
        &args![batch_id],
    )?;
    let (id, mut batch) = batch_from_row(&row)?;
    load_grants(tx, id, &mut batch)?;
    live.batches.insert(id, batch);
    Ok(())
}

fn host_key(bytes: Vec<u8>, host_id: u64) -> Result<PublicKey, StoreError> {
    Ok(PublicKey(bytes.try_into().map_err(|_| {
        StoreError::Corrupt(format!("host {host_id} has a malformed key"))
    })?))
}

/// Reads a host's row into a [`LiveHost`] (with nothing in flight), or `None`.
fn load_host(tx: &mut dyn Sql, host_id: u64) -> Result<Option<LiveHost>, StoreError> {
    let Some(row) = tx.query_row(
        "SELECT volunteer_id, cores, public_key, last_seen_ms, consecutive_valid, valid_results,
                timeouts_in_a_row
         FROM hosts WHERE id = ?1",
        &args![host_id],
    )?
    else {
        return Ok(None);
    };
    Ok(Some(LiveHost {
        volunteer_id: row.u64(0)?,
        cores: row.u32(1)?,
        key: host_key(row.blob(2)?, host_id)?,
        last_seen_ms: row.u64(3)?,
        trust: HostTrust {
            consecutive_valid: row.u32(4)?,
        },
        valid_results: row.u64(5)?,
        timeouts_in_a_row: row.u32(6)?,
        in_flight: Default::default(),
    }))
}

/// Builds the live work of `shards` from the database: batches with open units there, their
/// open units and replicas, replicas in progress of closed units, and the hosts holding work.
pub(crate) fn load_live(tx: &mut dyn Sql, shards: Shards) -> Result<Live, StoreError> {
    let mut live = Live {
        shards,
        ..Live::default()
    };
    let rows = tx.query(
        &format!(
            "SELECT {BATCH_COLUMNS} FROM batches b
             WHERE EXISTS (SELECT 1 FROM units u WHERE u.batch_id = b.id AND u.state = 'open'
                           AND {})",
            live.shards.sql_condition("u.id")
        ),
        &[],
    )?;
    for row in rows {
        let (id, mut batch) = batch_from_row(&row)?;
        load_grants(tx, id, &mut batch)?;
        live.batches.insert(id, batch);
    }
    let host_ids = tx.query(
        &format!(
            "SELECT DISTINCT host_id FROM replicas WHERE state = 'in_progress' AND {}",
            live.shards.sql_condition("unit_id")
        ),
        &[],
    )?;
    for row in host_ids {
        let host_id = row.u64(0)?;
        let host = load_host(tx, host_id)?.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "a replica is held by host {host_id}, which does not exist"
            ))
        })?;
        live.hosts.insert(host_id, host);
    }
    load_open_units(tx, &mut live, None)?;
    crate::ledger::refresh_funding(tx, &mut live)?;
    let orphans = tx.query(
        &format!(
            "SELECT r.id, r.unit_id, u.batch_id, r.host_id, r.volunteer_id, r.deadline_ms
             FROM replicas r JOIN units u ON u.id = r.unit_id
             WHERE r.state = 'in_progress' AND u.state != 'open' AND {}",
            live.shards.sql_condition("u.id")
        ),
        &[],
    )?;
    for row in orphans {
        live.insert_orphan_in_progress(
            row.u64(0)?,
            ReplicaRef {
                unit_id: row.u64(1)?,
                batch_id: row.u64(2)?,
                host_id: row.u64(3)?,
                volunteer_id: row.u64(4)?,
                deadline_ms: Some(row.u64(5)?),
            },
        );
    }
    live.recount_in_flight();
    Ok(live)
}

/// Loads open units and their replicas into `live`: every open unit of its shards, or only
/// `unit_id`. Their batch must be live already.
fn load_open_units(
    tx: &mut dyn Sql,
    live: &mut Live,
    unit_id: Option<u64>,
) -> Result<(), StoreError> {
    let held = live.shards.sql_condition("u.id");
    let mut replicas: std::collections::HashMap<u64, Vec<LiveReplica>> = Default::default();
    let rows = tx.query(
        &format!(
            "SELECT r.id, r.unit_id, r.host_id, r.volunteer_id, r.state, r.deadline_ms, r.result,
                    r.network, r.seasoned
             FROM replicas r JOIN units u ON u.id = r.unit_id
             WHERE u.state = 'open' AND (CAST(?1 AS BIGINT) IS NULL OR u.id = ?1) AND {held}"
        ),
        &args![unit_id],
    )?;
    for row in rows {
        let id = row.u64(0)?;
        let state = replica_state(id, &row.text(4)?, row.u64(5)?, row.opt_text(6)?)?;
        replicas.entry(row.u64(1)?).or_default().push(LiveReplica {
            replica: Replica {
                id,
                volunteer_id: row.u64(3)?,
                network: row.u64(7)?,
                seasoned: row.bool(8)?,
                state,
            },
            host_id: row.u64(2)?,
        });
    }
    // Credit already granted to replicas of open units (a unit validated alone, reopened): their
    // agreement later must not grant it again, their disagreement revokes it.
    let mut credited: std::collections::HashMap<u64, std::collections::BTreeMap<u64, u64>> =
        Default::default();
    let rows = tx.query(
        &format!(
            "SELECT r.unit_id, c.replica_id, c.fuel
             FROM credit c JOIN replicas r ON r.id = c.replica_id JOIN units u ON u.id = r.unit_id
             WHERE u.state = 'open' AND (CAST(?1 AS BIGINT) IS NULL OR u.id = ?1) AND {held}
               AND NOT EXISTS (SELECT 1 FROM credit_revoked x WHERE x.replica_id = c.replica_id)"
        ),
        &args![unit_id],
    )?;
    for row in rows {
        credited
            .entry(row.u64(0)?)
            .or_default()
            .insert(row.u64(1)?, row.u64(2)?);
    }
    let units = tx.query(
        &format!(
            "SELECT u.id, u.batch_id, u.input_hash, u.seed, u.alone FROM units u
             WHERE u.state = 'open' AND (CAST(?1 AS BIGINT) IS NULL OR u.id = ?1) AND {held}"
        ),
        &args![unit_id],
    )?;
    for row in units {
        let unit_id = row.u64(0)?;
        let mut unit_replicas = replicas.remove(&unit_id).unwrap_or_default();
        unit_replicas.sort_by_key(|r| r.replica.id);
        live.insert_unit(
            unit_id,
            LiveUnit {
                batch_id: row.u64(1)?,
                input: parse_hash(&row.text(2)?)?,
                seed: row.u64(3)?,
                alone: row.bool(4)?,
                replicas: unit_replicas,
                credited: credited.remove(&unit_id).unwrap_or_default(),
            },
        );
    }
    Ok(())
}

fn replica_state(
    id: u64,
    state: &str,
    deadline_ms: u64,
    result: Option<String>,
) -> Result<ReplicaState, StoreError> {
    Ok(match (state, result) {
        ("in_progress", _) => ReplicaState::InProgress { deadline_ms },
        ("reported", Some(result)) => ReplicaState::Reported(parse_result(&result)?),
        ("aborted", _) => ReplicaState::Aborted,
        ("timed_out", _) => ReplicaState::TimedOut,
        (other, _) => {
            return Err(StoreError::Corrupt(format!(
                "replica {id} in state {other} without a result"
            )));
        }
    })
}

/// Creates a batch and its units (the caller validated the policy).
pub(crate) fn create_batch(
    tx: &mut dyn Sql,
    live: &mut Live,
    batch: &NewBatch,
    now_ms: u64,
) -> Result<u64, StoreError> {
    // Only blobs the researcher holds: knowing another's hash is not having it.
    let mut checked = std::collections::HashSet::new();
    for hash in std::iter::once(&batch.module).chain(batch.units.iter().map(|u| &u.input)) {
        if checked.insert(*hash)
            && !crate::researchers::blob_visible(tx, batch.researcher_id, &hash.to_hex())?
        {
            return Err(StoreError::BlobMissing(*hash));
        }
    }
    let mut names = std::collections::HashSet::with_capacity(batch.units.len());
    if let Some(twice) = batch.units.iter().find(|u| !names.insert(u.name.as_str())) {
        return Err(StoreError::Invalid(format!(
            "unit name `{}` appears twice",
            twice.name
        )));
    }
    let owner = tx
        .query_row(
            "SELECT account_id FROM researchers WHERE id = ?1",
            &args![batch.researcher_id],
        )?
        .and_then(|row| row.opt_u64(0).transpose())
        .transpose()?
        .unwrap_or(0);
    let batch_id = tx.reserve_id(Sequence::Batches)?;
    let unit_ids = tx.reserve_ids(Sequence::Units, batch.units.len())?;
    tx.execute(
        "INSERT INTO batches (id, module_hash, quorum, max_total_replicas, max_error_replicas,
            replica_deadline_ms, fuel_limit, memory_limit_bytes, output_limit_bytes, created_ms,
            initial_replicas, max_success_replicas, priority, trust_after, spot_check_ppm,
            researcher_id, distinct_networks, bid_milli, pause_when_broke, seasoned_after)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
                 ?19, ?20)",
        &args![
            batch_id,
            batch.module.to_hex(),
            batch.policy.quorum,
            batch.policy.max_total_replicas,
            batch.policy.max_error_replicas,
            batch.policy.replica_deadline_ms,
            batch.fuel_limit,
            batch.memory_limit_bytes,
            batch.output_limit_bytes,
            now_ms,
            batch.policy.initial_replicas,
            batch.policy.max_success_replicas,
            batch.priority,
            batch.policy.adaptive.map(|a| a.trust_after),
            batch.policy.adaptive.map(|a| a.spot_check_ppm),
            batch.researcher_id,
            batch.policy.distinct_networks,
            batch.pricing.bid_milli,
            batch.pricing.pause_when_broke,
            batch.policy.seasoned_after,
        ],
    )?;
    for (unit, unit_id) in batch.units.iter().zip(&unit_ids) {
        tx.execute(
            "INSERT INTO units (id, batch_id, name, input_hash, seed, state)
             VALUES (?1, ?2, ?3, ?4, ?5, 'open')",
            &args![
                *unit_id,
                batch_id,
                &unit.name,
                unit.input.to_hex(),
                unit.seed
            ],
        )?;
    }
    // The other coordinators load the units of their shards.
    tx.announce(WorkChange::Added)?;
    if !unit_ids.iter().any(|id| live.shards.holds_unit(*id)) {
        return Ok(batch_id);
    }
    live.batches.insert(
        batch_id,
        LiveBatch {
            module: batch.module,
            policy: batch.policy,
            fuel_limit: batch.fuel_limit,
            memory_limit_bytes: batch.memory_limit_bytes,
            output_limit_bytes: batch.output_limit_bytes,
            priority: batch.priority,
            owner,
            pricing: batch.pricing,
            in_flight: 0,
            open_units: 0,
            wanting: Default::default(),
            grants: 0,
            granted_fuel: 0,
        },
    );
    for (unit, unit_id) in batch.units.iter().zip(unit_ids) {
        if !live.shards.holds_unit(unit_id) {
            continue;
        }
        live.insert_unit(
            unit_id,
            LiveUnit {
                batch_id,
                input: unit.input,
                seed: unit.seed,
                alone: false,
                replicas: Vec::new(),
                credited: Default::default(),
            },
        );
    }
    Ok(batch_id)
}

/// The live host, loaded from its row if it is not in memory yet.
fn live_host<'a>(
    tx: &mut dyn Sql,
    live: &'a mut Live,
    host_id: u64,
) -> Result<&'a mut LiveHost, StoreError> {
    match live.hosts.entry(host_id) {
        std::collections::hash_map::Entry::Occupied(entry) => Ok(entry.into_mut()),
        std::collections::hash_map::Entry::Vacant(entry) => {
            let host = load_host(tx, host_id)?.ok_or(StoreError::UnknownHost)?;
            Ok(entry.insert(host))
        }
    }
}

/// Applies `change` to a host's live copy, loading it first if it is not live, before the caller
/// writes the same change to the host's row. The order matters on PostgreSQL, where a write to a
/// shared row is held until the commit: a host loaded after such a write, later in the same
/// transaction, would be read without it and go on in memory with stale counts (found by the
/// live-work proptest: a late report that validated a unit of a host no longer live, followed by
/// an assignment to it in the same exchange). A host that is not registered has nothing to change.
fn change_live_host(
    tx: &mut dyn Sql,
    live: &mut Live,
    host_id: u64,
    change: impl FnOnce(&mut LiveHost),
) -> Result<(), StoreError> {
    match live_host(tx, live, host_id) {
        Ok(host) => {
            change(host);
            Ok(())
        }
        Err(StoreError::UnknownHost) => Ok(()),
        Err(error) => Err(error),
    }
}

pub(crate) fn assign(
    tx: &mut dyn Sql,
    live: &mut Live,
    host_id: u64,
    want: Want,
    now_ms: u64,
) -> Result<Option<Assignment>, StoreError> {
    let Want {
        fuel_per_second,
        network,
        ..
    } = want;
    let host = live_host(tx, live, host_id)?;
    if host.last_seen_ms.saturating_add(LAST_SEEN_RESOLUTION_MS) < now_ms {
        host.last_seen_ms = now_ms;
        // Never backwards: another coordinator may have seen the host later.
        tx.execute_shared(
            SharedRow("hosts", host_id),
            "UPDATE hosts SET last_seen_ms = ?2 WHERE id = ?1 AND last_seen_ms < ?2",
            &args![host_id, now_ms],
        )?;
    }
    let Some(host) = live.hosts.get(&host_id) else {
        return Err(StoreError::UnknownHost);
    };
    let cap =
        herd_lifecycle::host_in_flight_cap(host.cores, host.valid_results, host.timeouts_in_a_row);
    if host.in_flight.len() >= cap as usize {
        return Ok(None);
    }
    let (volunteer_id, key, trust) = (host.volunteer_id, host.key, host.trust);
    let Some(pick) = live.pick(
        (host_id, volunteer_id, network),
        fuel_per_second,
        ASSIGN_SCAN_LIMIT,
    ) else {
        return Ok(None);
    };
    let (Some(batch), Some(unit)) = (
        live.batches.get(&pick.batch_id),
        live.units.get(&pick.unit_id),
    ) else {
        return Err(StoreError::Corrupt(format!(
            "picked unit {} is not live",
            pick.unit_id
        )));
    };
    // Adaptive replication: a unit's first replica, going to a trusted host, may stand alone
    // unless a spot check (drawn here, unpredictably for the host) says otherwise.
    let alone = unit.replicas.is_empty()
        && batch.policy.adaptive.is_some()
        && trust.may_go_alone(&batch.policy, spot_check_draw()?);
    let deadline_ms = now_ms.saturating_add(batch.policy.replica_deadline_ms);
    let seasoned = live.seasoned(host_id, &batch.policy) && batch.policy.seasoned_after.is_some();
    let assignment = Assignment {
        replica_id: 0,
        unit_id: pick.unit_id,
        batch_id: pick.batch_id,
        host_key: key,
        module: batch.module,
        input: unit.input,
        seed: unit.seed,
        fuel_limit: batch.fuel_limit,
        memory_limit_bytes: batch.memory_limit_bytes,
        output_limit_bytes: batch.output_limit_bytes,
        deadline_ms,
    };
    let replica_id = tx.reserve_id(Sequence::Replicas)?;
    tx.execute(
        "INSERT INTO replicas (id, unit_id, host_id, volunteer_id, assigned_ms, deadline_ms, state,
             network, seasoned)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'in_progress', ?7, ?8)",
        &args![
            replica_id,
            pick.unit_id,
            host_id,
            volunteer_id,
            now_ms,
            deadline_ms,
            network,
            seasoned
        ],
    )?;
    if alone {
        tx.execute(
            "UPDATE units SET alone = 1 WHERE id = ?1",
            &args![pick.unit_id],
        )?;
    }
    if let Some(unit) = live.units.get_mut(&pick.unit_id) {
        unit.alone = alone;
    }
    live.add_replica(
        &pick,
        Replica {
            id: replica_id,
            volunteer_id,
            network,
            seasoned,
            state: ReplicaState::InProgress { deadline_ms },
        },
        host_id,
        deadline_ms,
    );
    Ok(Some(Assignment {
        replica_id,
        ..assignment
    }))
}

/// A uniform draw in `0..PPM` from the operating system's secure source, for spot checks.
fn spot_check_draw() -> Result<u32, StoreError> {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes)
        .map_err(|e| StoreError::Corrupt(format!("no secure random source: {e}")))?;
    Ok(u32::from_le_bytes(bytes) % PPM)
}

/// Writes a report into the replica's row.
fn write_report(
    tx: &mut dyn Sql,
    replica_id: u64,
    outcome: &Outcome,
    now_ms: u64,
) -> Result<ReplicaState, StoreError> {
    Ok(match outcome {
        Outcome::Countable(result) => {
            tx.execute(
                "UPDATE replicas SET state = 'reported', result = ?2, reported_ms = ?3,
                                     output_hash = ?4
                 WHERE id = ?1",
                &args![
                    replica_id,
                    encode_result(result)?,
                    now_ms,
                    result.output_hash.to_hex()
                ],
            )?;
            ReplicaState::Reported(result.clone())
        }
        Outcome::Aborted(reason) => {
            let reason =
                serde_json::to_string(reason).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            tx.execute(
                "UPDATE replicas SET state = 'aborted', abort_reason = ?2, reported_ms = ?3
                 WHERE id = ?1",
                &args![replica_id, reason, now_ms],
            )?;
            ReplicaState::Aborted
        }
    })
}

pub(crate) fn record_report(
    tx: &mut dyn Sql,
    live: &mut Live,
    host_id: u64,
    replica_id: u64,
    outcome: &Outcome,
    now_ms: u64,
) -> Result<ReportEffect, StoreError> {
    let Some(reference) = live.replicas.get(&replica_id).copied() else {
        return record_report_of_closed_unit(tx, live, host_id, replica_id, outcome, now_ms);
    };
    if reference.host_id != host_id {
        return Err(StoreError::NotYourReplica { replica_id });
    }
    if let Some(batch) = live.batches.get(&reference.batch_id)
        && let Some(reason) = impossible(outcome, batch.fuel_limit, batch.output_limit_bytes)
    {
        return Err(StoreError::ImpossibleReport { replica_id, reason });
    }
    let unit_open = match live.units.get(&reference.unit_id) {
        Some(unit) => {
            let state = unit
                .replicas
                .iter()
                .find(|r| r.replica.id == replica_id)
                .map(|r| &r.replica.state);
            // Idempotence: a replica reports once; a repeat changes nothing and is acknowledged.
            if matches!(
                state,
                Some(ReplicaState::Reported(_) | ReplicaState::Aborted)
            ) {
                return Ok(ReportEffect::Duplicate);
            }
            true
        }
        None => false,
    };
    // In progress, or timed out but reporting late: record it either way.
    let state = write_report(tx, replica_id, outcome, now_ms)?;
    live.end_in_progress(replica_id, state);
    if unit_open {
        Ok(match settle(tx, live, reference.unit_id, now_ms)? {
            Verdict::Validated { .. } => ReportEffect::Validated {
                unit_id: reference.unit_id,
            },
            Verdict::Failed { .. } => ReportEffect::Failed {
                unit_id: reference.unit_id,
            },
            Verdict::Open { .. } => ReportEffect::Recorded,
        })
    } else {
        check_late(tx, live, &reference, replica_id, outcome, now_ms)
    }
}

/// A report for a replica `Live` does not hold: unknown, someone else's, a repeat, or a late
/// report of a timed-out replica whose unit has closed since. Rare, so answered from SQL.
fn record_report_of_closed_unit(
    tx: &mut dyn Sql,
    live: &mut Live,
    host_id: u64,
    replica_id: u64,
    outcome: &Outcome,
    now_ms: u64,
) -> Result<ReportEffect, StoreError> {
    let Some(row) = tx.query_row(
        "SELECT r.unit_id, r.host_id, r.volunteer_id, r.state, u.batch_id, b.fuel_limit,
                b.output_limit_bytes
         FROM replicas r JOIN units u ON u.id = r.unit_id JOIN batches b ON b.id = u.batch_id
         WHERE r.id = ?1",
        &args![replica_id],
    )?
    else {
        return Err(StoreError::UnknownReplica(replica_id));
    };
    if row.u64(1)? != host_id {
        return Err(StoreError::NotYourReplica { replica_id });
    }
    if let Some(reason) = impossible(outcome, row.u64(5)?, row.u64(6)?) {
        return Err(StoreError::ImpossibleReport { replica_id, reason });
    }
    let unit_id = row.u64(0)?;
    if !live.shards.holds_unit(unit_id) {
        return forward(tx, host_id, replica_id, unit_id, outcome, now_ms);
    }
    if row.text(3)? != "timed_out" {
        return Ok(ReportEffect::Duplicate);
    }
    write_report(tx, replica_id, outcome, now_ms)?;
    let reference = ReplicaRef {
        unit_id: row.u64(0)?,
        batch_id: row.u64(4)?,
        host_id,
        volunteer_id: row.u64(2)?,
        deadline_ms: None,
    };
    check_late(tx, live, &reference, replica_id, outcome, now_ms)
}

/// Why a result is one no honest run of its batch makes, if it is: more fuel than the budget (a
/// run out of fuel reports the budget itself), or more output than the limit.
fn impossible(outcome: &Outcome, fuel_limit: u64, output_limit: u64) -> Option<String> {
    let Outcome::Countable(result) = outcome else {
        return None;
    };
    if result.fuel > fuel_limit {
        Some(format!(
            "the result claims {} fuel, over the batch's budget of {fuel_limit}",
            result.fuel
        ))
    } else if result.output_len > output_limit {
        Some(format!(
            "the result claims {} bytes of output, over the batch's limit of {output_limit}",
            result.output_len
        ))
    } else {
        None
    }
}

/// Keeps a report of a replica whose unit another coordinator decides, for that coordinator to
/// settle ([`settle_forwarded`]): durable once the group commits, so the worker may forget it.
/// A repeat of a report already kept changes nothing.
fn forward(
    tx: &mut dyn Sql,
    host_id: u64,
    replica_id: u64,
    unit_id: u64,
    outcome: &Outcome,
    now_ms: u64,
) -> Result<ReportEffect, StoreError> {
    let outcome = serde_json::to_string(outcome).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let shard = shard_of(unit_id);
    tx.execute(
        "INSERT INTO report_inbox (replica_id, shard, host_id, outcome, received_ms)
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (replica_id) DO NOTHING",
        &args![replica_id, shard, host_id, outcome, now_ms],
    )?;
    Ok(ReportEffect::Forwarded { shard })
}

/// Reports forwarded at most per call to [`settle_forwarded`].
const FORWARDED_PER_CALL: u64 = 512;

/// Settles reports other coordinators kept for the shards this writer holds, as if their
/// workers had sent them here (at the time they arrived), and removes them from the inbox in
/// the same transaction. Returns how many it settled.
pub(crate) fn settle_forwarded(tx: &mut dyn Sql, live: &mut Live) -> Result<usize, StoreError> {
    if !live.shards.is_shared() {
        return Ok(0);
    }
    let rows = tx.query(
        &format!(
            "SELECT replica_id, host_id, outcome, received_ms FROM report_inbox
             WHERE {} ORDER BY received_ms, replica_id LIMIT {FORWARDED_PER_CALL}",
            live.shards.sql_condition("shard")
        ),
        &[],
    )?;
    for row in &rows {
        let (replica_id, host_id) = (row.u64(0)?, row.u64(1)?);
        let outcome: Outcome = serde_json::from_str(&row.text(2)?)
            .map_err(|e| StoreError::Corrupt(format!("forwarded report {replica_id}: {e}")))?;
        match record_report(tx, live, host_id, replica_id, &outcome, row.u64(3)?) {
            // Checked by the coordinator that kept it: refused now only if its replica went
            // since (its batch retired), and then there is nothing left to settle.
            Ok(_) => {}
            Err(refused) if refused.is_refusal() => {}
            Err(other) => return Err(other),
        }
        tx.execute(
            "DELETE FROM report_inbox WHERE replica_id = ?1",
            &args![replica_id],
        )?;
    }
    Ok(rows.len())
}

/// A late report for a unit that has closed: checked against the canonical result, credited if
/// it agrees. (A late replica was timed out when its unit closed, so it was never credited.)
fn check_late(
    tx: &mut dyn Sql,
    live: &mut Live,
    reference: &ReplicaRef,
    replica_id: u64,
    outcome: &Outcome,
    now_ms: u64,
) -> Result<ReportEffect, StoreError> {
    let Outcome::Countable(result) = outcome else {
        return Ok(ReportEffect::Recorded);
    };
    let canonical = match tx.query_row(
        "SELECT canonical FROM units WHERE id = ?1 AND state = 'validated'",
        &args![reference.unit_id],
    )? {
        Some(row) => row.opt_text(0)?,
        None => None,
    };
    let Some(canonical) = canonical else {
        return Ok(ReportEffect::Recorded);
    };
    let canonical = parse_result(&canonical)?;
    let agreed = *result == canonical;
    if agreed {
        grant(tx, live, replica_id, reference, canonical.fuel, now_ms)?;
    } else {
        judge_invalid(tx, live, replica_id, reference, None, now_ms)?;
    }
    Ok(ReportEffect::LateChecked { agreed })
}

/// Applies the lifecycle's verdict for an open unit: on validation, grants credit, marks the
/// disagreeing replicas invalid, and moves their hosts' trust (adaptive replication).
fn settle(
    tx: &mut dyn Sql,
    live: &mut Live,
    unit_id: u64,
    now_ms: u64,
) -> Result<Verdict, StoreError> {
    // A unit whose lone replica failed goes back to its batch's own replication.
    if let Some(unit) = live.units.get_mut(&unit_id)
        && unit.alone
        && !unit.replicas.iter().any(|r| {
            matches!(
                r.replica.state,
                ReplicaState::InProgress { .. } | ReplicaState::Reported(_)
            )
        })
    {
        unit.alone = false;
        tx.execute("UPDATE units SET alone = 0 WHERE id = ?1", &args![unit_id])?;
    }
    let verdict = live
        .verdict(unit_id)
        .ok_or_else(|| StoreError::Corrupt(format!("unit {unit_id} is not live")))?;
    let (alone, adaptive, credited, payer) = match live.units.get(&unit_id) {
        Some(unit) => {
            let batch = live.batches.get(&unit.batch_id);
            (
                unit.alone,
                batch.is_some_and(|b| b.policy.adaptive.is_some()),
                unit.credited.clone(),
                batch.map(|b| (unit.batch_id, b.owner, b.pricing.bid_milli)),
            )
        }
        None => (false, false, Default::default(), None),
    };
    match &verdict {
        Verdict::Validated {
            canonical,
            agreeing,
            disagreeing,
        } => {
            let reference = |live: &Live, replica_id: &u64| {
                live.replicas
                    .get(replica_id)
                    .copied()
                    .ok_or_else(|| StoreError::Corrupt(format!("replica {replica_id} is not live")))
            };
            let agreeing: Vec<(u64, ReplicaRef)> = agreeing
                .iter()
                .map(|id| Ok((*id, reference(live, id)?)))
                .collect::<Result<_, StoreError>>()?;
            let disagreeing: Vec<(u64, ReplicaRef)> = disagreeing
                .iter()
                .map(|id| Ok((*id, reference(live, id)?)))
                .collect::<Result<_, StoreError>>()?;
            // A unit validated alone remembers its host and replica until a check of a later
            // replica of that host confirms it.
            let lone = agreeing.first().filter(|_| alone);
            tx.execute(
                "UPDATE units SET state = 'validated', canonical = ?2, alone_host_id = ?3,
                                  alone_replica_id = ?4, settled_ms = ?5
                 WHERE id = ?1",
                &args![
                    unit_id,
                    encode_result(canonical)?,
                    lone.map(|(_, r)| r.host_id),
                    lone.map(|(id, _)| *id),
                    now_ms
                ],
            )?;
            live.close_unit(unit_id);
            // The owner pays for the result once, at its bid, whatever the quorum: a unit
            // reopened and validated again (its lone result overturned) is paid again.
            if let Some((batch_id, owner, bid_milli)) = payer
                && bid_milli > 0
                && owner != 0
            {
                let price = crate::ledger::price(canonical.fuel, bid_milli);
                crate::ledger::charge(tx, owner, price, (batch_id, unit_id), now_ms)?;
            }
            for (replica_id, reference) in &agreeing {
                if !credited.contains_key(replica_id) {
                    grant(tx, live, *replica_id, reference, canonical.fuel, now_ms)?;
                } else {
                    mark_valid(tx, *replica_id)?;
                }
                if adaptive && !alone {
                    change_trust(
                        tx,
                        live,
                        reference.host_id,
                        TrustChange::ValidChecked,
                        *replica_id,
                    )?;
                }
            }
            for (replica_id, reference) in &disagreeing {
                let credited_fuel = credited.get(replica_id).copied();
                judge_invalid(tx, live, *replica_id, reference, credited_fuel, now_ms)?;
            }
        }
        Verdict::Failed { reason } => {
            tx.execute(
                "UPDATE units SET state = 'failed', failure = ?2, settled_ms = ?3 WHERE id = ?1",
                &args![unit_id, reason, now_ms],
            )?;
            live.close_unit(unit_id);
        }
        Verdict::Open { .. } => live.refresh_wanting(unit_id),
    }
    Ok(verdict)
}

/// A replica's result disagrees with its unit's canonical result: it is invalid, the credit it
/// was granted (`credited_fuel`: validated alone, then overturned) is revoked, and its host
/// loses its trust.
fn judge_invalid(
    tx: &mut dyn Sql,
    live: &mut Live,
    replica_id: u64,
    reference: &ReplicaRef,
    credited_fuel: Option<u64>,
    now_ms: u64,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE replicas SET validity = 'invalid' WHERE id = ?1",
        &args![replica_id],
    )?;
    if let Some(fuel) = credited_fuel {
        enter_in_ledger(
            tx,
            live,
            Ledger::Revocations,
            replica_id,
            reference,
            fuel,
            now_ms,
        )?;
    }
    change_trust(
        tx,
        live,
        reference.host_id,
        TrustChange::Invalid,
        replica_id,
    )
}

/// Moves a host's trust after the judgement of its replica `replica_id`. A checked valid result
/// confirms the units it validated alone with earlier replicas; an invalid one reopens every
/// unconfirmed one (back to full replication, the lone result kept as one replica among those
/// that will now judge it). The row is changed relative to what it holds, as
/// [`HostTrust::after`] does, so two coordinators judging one host's replicas never undo each
/// other.
fn change_trust(
    tx: &mut dyn Sql,
    live: &mut Live,
    host_id: u64,
    change: TrustChange,
    replica_id: u64,
) -> Result<(), StoreError> {
    change_live_host(tx, live, host_id, |host| {
        host.trust = host.trust.after(change)
    })?;
    match change {
        TrustChange::ValidChecked => {
            tx.execute_shared(
                SharedRow("hosts", host_id),
                "UPDATE hosts SET consecutive_valid = consecutive_valid + 1 WHERE id = ?1",
                &args![host_id],
            )?;
            tx.execute(
                "UPDATE units SET alone_host_id = NULL, alone_replica_id = NULL
                 WHERE alone_host_id = ?1 AND alone_replica_id < ?2",
                &args![host_id, replica_id],
            )?;
        }
        TrustChange::Invalid => {
            tx.execute_shared(
                SharedRow("hosts", host_id),
                "UPDATE hosts SET consecutive_valid = 0 WHERE id = ?1",
                &args![host_id],
            )?;
            reopen_alone_units(tx, live, host_id)?;
        }
    }
    Ok(())
}

/// Reopens the units `host_id` validated alone and no check has confirmed since.
fn reopen_alone_units(tx: &mut dyn Sql, live: &mut Live, host_id: u64) -> Result<(), StoreError> {
    let units = tx.query(
        "SELECT id, batch_id FROM units WHERE alone_host_id = ?1 AND state = 'validated'",
        &args![host_id],
    )?;
    if units.is_empty() {
        return Ok(());
    }
    // Units of other coordinators' shards are loaded there.
    tx.announce(WorkChange::Added)?;
    for row in units {
        let (unit_id, batch_id) = (row.u64(0)?, row.u64(1)?);
        tx.execute(
            "UPDATE units SET state = 'open', canonical = NULL, alone = 0, alone_host_id = NULL,
                              alone_replica_id = NULL
             WHERE id = ?1",
            &args![unit_id],
        )?;
        tx.execute(
            "UPDATE replicas SET validity = 'pending' WHERE unit_id = ?1 AND state = 'reported'",
            &args![unit_id],
        )?;
        if live.shards.holds_unit(unit_id) {
            load_batch(tx, live, batch_id)?;
            load_open_units(tx, live, Some(unit_id))?;
        }
    }
    // Replicas of those units still in progress now belong to open units again.
    live.recount_in_flight();
    Ok(())
}

fn mark_valid(tx: &mut dyn Sql, replica_id: u64) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE replicas SET validity = 'valid' WHERE id = ?1",
        &args![replica_id],
    )
}

/// Marks a replica valid and writes its credit grant to the ledger, updating its volunteer's
/// and host's recent average credit. The caller knows it was not credited before (a replica is
/// credited at most once; the ledger's unique `replica_id` guards it too).
fn grant(
    tx: &mut dyn Sql,
    live: &mut Live,
    replica_id: u64,
    reference: &ReplicaRef,
    fuel: u64,
    now_ms: u64,
) -> Result<(), StoreError> {
    mark_valid(tx, replica_id)?;
    enter_in_ledger(
        tx,
        live,
        Ledger::Grants,
        replica_id,
        reference,
        fuel,
        now_ms,
    )?;
    if let Some(batch) = live.batches.get_mut(&reference.batch_id) {
        batch.grants += 1;
        batch.granted_fuel = batch.granted_fuel.saturating_add(fuel / FUEL_SUM_UNIT);
    }
    Ok(())
}

/// The credit ledger's two tables: grants, and revocations of grants later found invalid.
#[derive(Clone, Copy)]
enum Ledger {
    Grants,
    Revocations,
}

/// Enters a replica's fuel in a ledger (once: each table's `replica_id` is unique) and moves
/// its volunteer's and host's recent average credit by it, its volunteer's balance, and its
/// host's count of valid results, up for a grant, down for a revocation.
fn enter_in_ledger(
    tx: &mut dyn Sql,
    live: &mut Live,
    ledger: Ledger,
    replica_id: u64,
    reference: &ReplicaRef,
    fuel: u64,
    now_ms: u64,
) -> Result<(), StoreError> {
    let (table, time, sign) = match ledger {
        Ledger::Grants => ("credit", "granted_ms", 1.0),
        Ledger::Revocations => ("credit_revoked", "revoked_ms", -1.0),
    };
    tx.execute(
        &format!(
            "INSERT INTO {table} (replica_id, volunteer_id, host_id, fuel, {time})
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (replica_id) DO NOTHING"
        ),
        &args![
            replica_id,
            reference.volunteer_id,
            reference.host_id,
            fuel,
            now_ms
        ],
    )?;
    let credit = sign * credit_for_fuel(fuel);
    // The volunteer's balance moves with the row (`ledger.rs`), and the host's count of valid
    // results (the seasoned rule), in the statements that move their recent averages.
    let (fuel, one) = (i64::try_from(fuel).unwrap_or(i64::MAX), 1i64);
    let (fuel, one) = if sign > 0.0 {
        (fuel, one)
    } else {
        (-fuel, -one)
    };
    let volunteer = (reference.volunteer_id, "balance = balance + ?6", fuel);
    add_recent_credit(tx, "volunteers", volunteer, credit, now_ms)?;
    // A valid result also ends the host's run of timeouts.
    change_live_host(tx, live, reference.host_id, |host| {
        host.valid_results = host.valid_results.saturating_add_signed(one);
        if one > 0 {
            host.timeouts_in_a_row = 0;
        }
    })?;
    let counters = if one > 0 {
        "valid_results = valid_results + ?6, timeouts_in_a_row = 0"
    } else {
        "valid_results = valid_results + ?6"
    };
    add_recent_credit(
        tx,
        "hosts",
        (reference.host_id, counters, one),
        credit,
        now_ms,
    )
}

/// Adds `credit` granted at `now_ms` to a volunteer's or host's recent average, as
/// [`herd_lifecycle::RecentAverage::granted`] does, computed by the database from the row it
/// holds: no read, and grants made by several coordinators add up whatever their order; and the
/// row's other counters moved by `counters` (SQL, its value as `?6`) in the same statement. An average older than
/// [`RAC_FORGOTTEN_MS`] has decayed to nothing (PostgreSQL's `exp` refuses to underflow where
/// Rust's gives 0).
fn add_recent_credit(
    tx: &mut dyn Sql,
    table: &'static str,
    (id, counters, value): (u64, &'static str, i64),
    credit: f64,
    now_ms: u64,
) -> Result<(), StoreError> {
    let half_life_days = RAC_HALF_LIFE_MS as f64 / 86_400_000.0;
    let added = credit * std::f64::consts::LN_2 / half_life_days;
    let decay_per_ms = std::f64::consts::LN_2 / RAC_HALF_LIFE_MS as f64;
    tx.execute_shared(
        SharedRow(table, id),
        &format!(
            "UPDATE {table} SET
                rac = CASE WHEN ?3 <= rac_ms THEN rac
                           WHEN ?3 - rac_ms >= ?5 THEN 0
                           ELSE rac * exp((rac_ms - ?3) * CAST(?4 AS DOUBLE PRECISION)) END + ?2,
                rac_ms = CASE WHEN ?3 > rac_ms THEN ?3 ELSE rac_ms END,
                {counters}
             WHERE id = ?1"
        ),
        &args![id, added, now_ms, decay_per_ms, RAC_FORGOTTEN_MS, value],
    )
}

/// After this long an average has decayed below 2^-1000 of itself: nothing (1,000 half-lives).
const RAC_FORGOTTEN_MS: u64 = 1000 * RAC_HALF_LIFE_MS;

/// Marks replicas in progress as timed out so their units are reissued, and settles their units.
pub(crate) fn time_out(
    tx: &mut dyn Sql,
    live: &mut Live,
    replica_ids: &[u64],
    now_ms: u64,
) -> Result<(), StoreError> {
    for &replica_id in replica_ids {
        let Some(reference) = live.replicas.get(&replica_id).copied() else {
            continue;
        };
        tx.execute(
            "UPDATE replicas SET state = 'timed_out' WHERE id = ?1",
            &args![replica_id],
        )?;
        live.end_in_progress(replica_id, ReplicaState::TimedOut);
        // It limits the host's work in progress until its next valid result.
        change_live_host(tx, live, reference.host_id, |host| {
            host.timeouts_in_a_row = host.timeouts_in_a_row.saturating_add(1);
        })?;
        tx.execute_shared(
            SharedRow("hosts", reference.host_id),
            "UPDATE hosts SET timeouts_in_a_row = timeouts_in_a_row + 1 WHERE id = ?1",
            &args![reference.host_id],
        )?;
        if live.units.contains_key(&reference.unit_id) {
            settle(tx, live, reference.unit_id, now_ms)?;
        }
    }
    Ok(())
}

/// Whether `hash` is the module or input of a replica in progress on `host_id`. Answered from
/// `Live` when the replica's unit and batch are open there; a replica in progress of a unit that
/// already closed is looked up in the database.
pub(crate) fn host_needs_blob(
    tx: &mut dyn Sql,
    live: &Live,
    host_id: u64,
    hash: &ContentHash,
) -> Result<bool, StoreError> {
    // A replica of another coordinator's shard (assigned there, its worker here since) is
    // known only to the database.
    let mut unresolved = live.shards.is_shared();
    let Some(host) = live.hosts.get(&host_id) else {
        return host_needs_blob_in_database(tx, host_id, hash, unresolved);
    };
    for replica_id in &host.in_flight {
        let Some(reference) = live.replicas.get(replica_id) else {
            continue;
        };
        match (
            live.units.get(&reference.unit_id),
            live.batches.get(&reference.batch_id),
        ) {
            (Some(unit), Some(batch)) => {
                if unit.input == *hash || batch.module == *hash {
                    return Ok(true);
                }
            }
            _ => unresolved = true,
        }
    }
    host_needs_blob_in_database(tx, host_id, hash, unresolved)
}

fn host_needs_blob_in_database(
    tx: &mut dyn Sql,
    host_id: u64,
    hash: &ContentHash,
    look: bool,
) -> Result<bool, StoreError> {
    if !look {
        return Ok(false);
    }
    tx.query_one(
        "SELECT EXISTS (
            SELECT 1 FROM replicas r
            JOIN units u ON u.id = r.unit_id
            JOIN batches b ON b.id = u.batch_id
            WHERE r.host_id = ?1 AND r.state = 'in_progress'
              AND (u.input_hash = ?2 OR b.module_hash = ?2))",
        &args![host_id, hash.to_hex()],
    )?
    .bool(0)
}

/// The replicas in progress that `host_id` holds but did not list in `held`.
/// [`crate::Store::unneeded_replicas`]: one lookup a replica (a hello holds at most
/// `herd_protocol::MAX_HELD_REPLICAS`), in the database, which every coordinator of the project
/// shares, so a replica of a unit another coordinator decides is judged as well.
pub(crate) fn unneeded_replicas(
    tx: &mut dyn Sql,
    host_id: u64,
    held: &[u64],
) -> Result<Vec<u64>, StoreError> {
    let mut unneeded = Vec::new();
    for &replica_id in held {
        let row = tx.query_row(
            "SELECT r.host_id, u.state FROM replicas r JOIN units u ON u.id = r.unit_id
             WHERE r.id = ?1",
            &args![replica_id],
        )?;
        let needed = match row {
            Some(row) => row.u64(0)? == host_id && row.text(1)? == "open",
            None => false,
        };
        if !needed {
            unneeded.push(replica_id);
        }
    }
    Ok(unneeded)
}

pub(crate) fn lost_replicas(
    tx: &mut dyn Sql,
    live: &mut Live,
    host_id: u64,
    held: &[u64],
) -> Result<Vec<u64>, StoreError> {
    let host = live_host(tx, live, host_id)?;
    let mut lost: Vec<u64> = host
        .in_flight
        .iter()
        .copied()
        .filter(|id| !held.contains(id))
        .collect();
    if lost.is_empty() || !live.shards.is_shared() {
        return Ok(lost);
    }
    // A replica whose report another coordinator kept for this one was reported, not lost:
    // the host forgot it because that report was acknowledged. It is settled from the inbox;
    // reissuing it would have a third replica computed and, agreeing late, credited.
    let kept: std::collections::HashSet<u64> = tx
        .query(
            "SELECT replica_id FROM report_inbox WHERE host_id = ?1",
            &args![host_id],
        )?
        .iter()
        .map(|row| row.u64(0))
        .collect::<Result<_, _>>()?;
    lost.retain(|id| !kept.contains(id));
    Ok(lost)
}

/// Counts refused reports against a host.
pub(crate) fn count_refused(
    tx: &mut dyn Sql,
    host_id: u64,
    refused: u64,
) -> Result<(), StoreError> {
    tx.execute_shared(
        SharedRow("hosts", host_id),
        "UPDATE hosts SET refused_reports = refused_reports + ?2 WHERE id = ?1",
        &args![host_id, refused],
    )
}
