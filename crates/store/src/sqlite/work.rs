//! The hot path of the SQLite store: loading the live work into memory, registering hosts,
//! creating batches, assigning, recording reports, timing out replicas and granting credit.
//! Each operation decides from [`Live`] and writes its decision to SQLite, in the writer's group
//! transaction; the database stays the truth and `Live` is rebuilt from it after any failure.
//!
//! Rule that keeps `Live` a true mirror: an operation refuses a request (unknown host or replica,
//! someone else's replica, a bad batch) before it changes anything; any other error marks `Live`
//! stale, and the writer rebuilds it once the group has been rolled back or committed.

use herd_lifecycle::{
    Adaptive, HostTrust, PPM, Policy, RecentAverage, Replica, ReplicaState, TrustChange, Verdict,
    credit_for_fuel,
};
use herd_protocol::{Assignment, ContentHash, Outcome, PublicKey};
use rusqlite::{Connection, OptionalExtension, params};

use super::{encode_result, parse_hash, parse_result, to_i64, to_u64};
use crate::live::{FUEL_SUM_UNIT, Live, LiveBatch, LiveHost, LiveReplica, LiveUnit, ReplicaRef};
use crate::{HostRecord, NewBatch, ReportEffect, StoreError};

/// Units examined per assignment request before answering "no work".
const ASSIGN_SCAN_LIMIT: usize = 512;

/// "Last seen" is kept to the minute: rewriting a host's row on every request would cost a write
/// per assignment.
const LAST_SEEN_RESOLUTION_MS: u64 = 60_000;

/// Columns of `batches` read by [`batch_from_row`], in its order.
const BATCH_COLUMNS: &str = "id, module_hash, quorum, max_total_replicas, max_error_replicas,
    replica_deadline_ms, fuel_limit, memory_limit_bytes, output_limit_bytes, initial_replicas,
    max_success_replicas, priority, trust_after, spot_check_ppm";

fn batch_from_row(row: &rusqlite::Row<'_>) -> Result<(u64, String, LiveBatch), rusqlite::Error> {
    let module: String = row.get(1)?;
    Ok((
        to_u64(row.get(0)?),
        module,
        LiveBatch {
            // Parsed by the caller (a rusqlite row closure cannot return a StoreError).
            module: herd_protocol::ContentHash::of(b""),
            policy: Policy {
                quorum: row.get(2)?,
                max_total_replicas: row.get(3)?,
                max_error_replicas: row.get(4)?,
                replica_deadline_ms: to_u64(row.get(5)?),
                initial_replicas: row.get(9)?,
                max_success_replicas: row.get(10)?,
                adaptive: match (
                    row.get::<_, Option<u32>>(12)?,
                    row.get::<_, Option<u32>>(13)?,
                ) {
                    (Some(trust_after), Some(spot_check_ppm)) => Some(Adaptive {
                        trust_after,
                        spot_check_ppm,
                    }),
                    _ => None,
                },
            },
            fuel_limit: to_u64(row.get(6)?),
            memory_limit_bytes: to_u64(row.get(7)?),
            output_limit_bytes: to_u64(row.get(8)?),
            priority: row.get(11)?,
            in_flight: 0,
            open_units: 0,
            wanting: Default::default(),
            grants: 0,
            granted_fuel: 0,
        },
    ))
}

/// Reads a batch's credit grants into its live record (for its typical fuel).
fn load_grants(tx: &Connection, batch_id: u64, batch: &mut LiveBatch) -> Result<(), StoreError> {
    let (grants, fuel): (i64, i64) = tx
        .prepare_cached(&format!(
            "SELECT COUNT(*), COALESCE(SUM(c.fuel / {FUEL_SUM_UNIT}), 0)
             FROM units u JOIN replicas r ON r.unit_id = u.id JOIN credit c ON c.replica_id = r.id
             WHERE u.batch_id = ?1"
        ))?
        .query_row([to_i64(batch_id)], |row| Ok((row.get(0)?, row.get(1)?)))?;
    batch.grants = to_u64(grants);
    batch.granted_fuel = to_u64(fuel);
    Ok(())
}

fn host_key(bytes: Vec<u8>, host_id: u64) -> Result<PublicKey, StoreError> {
    Ok(PublicKey(bytes.try_into().map_err(|_| {
        StoreError::Corrupt(format!("host {host_id} has a malformed key"))
    })?))
}

/// Reads a host's row into a [`LiveHost`] (with nothing in flight), or `None`.
fn load_host(tx: &Connection, host_id: u64) -> Result<Option<LiveHost>, StoreError> {
    let row: Option<(i64, u32, Vec<u8>, i64, u32)> = tx
        .prepare_cached(
            "SELECT volunteer_id, cores, public_key, last_seen_ms, consecutive_valid
             FROM hosts WHERE id = ?1",
        )?
        .query_row([to_i64(host_id)], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })
        .optional()?;
    let Some((volunteer_id, cores, key, last_seen_ms, consecutive_valid)) = row else {
        return Ok(None);
    };
    Ok(Some(LiveHost {
        volunteer_id: to_u64(volunteer_id),
        cores,
        key: host_key(key, host_id)?,
        last_seen_ms: to_u64(last_seen_ms),
        trust: HostTrust { consecutive_valid },
        in_flight: Default::default(),
    }))
}

/// Builds the live work from the database: batches with open units, their open units and
/// replicas, replicas in progress of closed units, and the hosts holding work.
pub(super) fn load_live(tx: &Connection) -> Result<Live, StoreError> {
    let mut live = Live::default();
    let batches: Vec<(u64, String, LiveBatch)> = tx
        .prepare(&format!(
            "SELECT {BATCH_COLUMNS} FROM batches b
             WHERE EXISTS (SELECT 1 FROM units u WHERE u.batch_id = b.id AND u.state = 'open')"
        ))?
        .query_map([], batch_from_row)?
        .collect::<Result<_, _>>()?;
    for (id, module, mut batch) in batches {
        batch.module = parse_hash(&module)?;
        load_grants(tx, id, &mut batch)?;
        live.batches.insert(id, batch);
    }
    let host_ids: Vec<i64> = tx
        .prepare("SELECT DISTINCT host_id FROM replicas WHERE state = 'in_progress'")?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    for host_id in host_ids {
        let host_id = to_u64(host_id);
        let host = load_host(tx, host_id)?.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "a replica is held by host {host_id}, which does not exist"
            ))
        })?;
        live.hosts.insert(host_id, host);
    }
    load_open_units(tx, &mut live, None)?;
    let orphans: Vec<(i64, i64, i64, i64, i64, i64)> = tx
        .prepare(
            "SELECT r.id, r.unit_id, u.batch_id, r.host_id, r.volunteer_id, r.deadline_ms
             FROM replicas r JOIN units u ON u.id = r.unit_id
             WHERE r.state = 'in_progress' AND u.state != 'open'",
        )?
        .query_map([], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
                row.get(5)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    for (id, unit_id, batch_id, host_id, volunteer_id, deadline_ms) in orphans {
        live.insert_orphan_in_progress(
            to_u64(id),
            ReplicaRef {
                unit_id: to_u64(unit_id),
                batch_id: to_u64(batch_id),
                host_id: to_u64(host_id),
                volunteer_id: to_u64(volunteer_id),
                deadline_ms: Some(to_u64(deadline_ms)),
            },
        );
    }
    live.recount_in_flight();
    Ok(live)
}

/// Loads open units and their replicas into `live`: every open unit, or only `unit_id`. Their
/// batch must be live already.
fn load_open_units(
    tx: &Connection,
    live: &mut Live,
    unit_id: Option<u64>,
) -> Result<(), StoreError> {
    let only = unit_id.map(to_i64);
    let mut replicas: std::collections::HashMap<u64, Vec<LiveReplica>> = Default::default();
    {
        let mut statement = tx.prepare_cached(
            "SELECT r.id, r.unit_id, r.host_id, r.volunteer_id, r.state, r.deadline_ms, r.result
             FROM replicas r JOIN units u ON u.id = r.unit_id
             WHERE u.state = 'open' AND (?1 IS NULL OR u.id = ?1)",
        )?;
        let rows = statement.query_map([only], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, i64>(5)?,
                row.get::<_, Option<String>>(6)?,
            ))
        })?;
        for row in rows {
            let (id, unit_id, host_id, volunteer_id, state, deadline_ms, result) = row?;
            let state = replica_state(to_u64(id), &state, to_u64(deadline_ms), result)?;
            replicas
                .entry(to_u64(unit_id))
                .or_default()
                .push(LiveReplica {
                    replica: Replica {
                        id: to_u64(id),
                        volunteer_id: to_u64(volunteer_id),
                        state,
                    },
                    host_id: to_u64(host_id),
                });
        }
    }
    let units: Vec<(i64, i64, String, i64, bool)> = tx
        .prepare_cached(
            "SELECT id, batch_id, input_hash, seed, alone FROM units
             WHERE state = 'open' AND (?1 IS NULL OR id = ?1)",
        )?
        .query_map([only], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    for (unit_id, batch_id, input, seed, alone) in units {
        let unit_id = to_u64(unit_id);
        let mut unit_replicas = replicas.remove(&unit_id).unwrap_or_default();
        unit_replicas.sort_by_key(|r| r.replica.id);
        live.insert_unit(
            unit_id,
            LiveUnit {
                batch_id: to_u64(batch_id),
                input: parse_hash(&input)?,
                seed: to_u64(seed),
                alone,
                replicas: unit_replicas,
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

/// Registers (or updates) a host under its volunteer; names were checked by the caller, and the
/// host's proof of its key by the coordinator. The rules are [`Store::register_host`]'s: a new
/// volunteer is created with the hello's team; an existing one takes a team change only from a
/// host already registered to it, and a host joining it may name its team or none.
///
/// [`Store::register_host`]: crate::Store::register_host
pub(super) fn register_host(
    tx: &Connection,
    live: &mut Live,
    key: &PublicKey,
    volunteer: &str,
    team: Option<&str>,
    cores: u32,
    now_ms: u64,
) -> Result<HostRecord, StoreError> {
    let host_owner: Option<i64> = tx
        .prepare_cached("SELECT volunteer_id FROM hosts WHERE public_key = ?1")?
        .query_row([&key.0[..]], |row| row.get(0))
        .optional()?;
    let existing: Option<(i64, Option<String>)> = tx
        .prepare_cached("SELECT id, team FROM volunteers WHERE name = ?1")?
        .query_row([volunteer], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    // The volunteer, and whether this hello sets (or changes) its team.
    let (volunteer_id, sets_team) = match existing {
        None => {
            tx.prepare_cached(
                "INSERT INTO volunteers (name, team, created_ms) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![volunteer, team, to_i64(now_ms)])?;
            (tx.last_insert_rowid(), true)
        }
        Some((id, current)) if current.as_deref() == team => (id, false),
        Some((id, _)) if host_owner == Some(id) => {
            // One of the volunteer's own hosts: it may change the team (or leave it).
            tx.prepare_cached("UPDATE volunteers SET team = ?2 WHERE id = ?1")?
                .execute(params![id, team])?;
            (id, true)
        }
        // A host joining an existing volunteer without naming a team joins it as it is.
        Some((id, _)) if team.is_none() => (id, false),
        Some((_, current)) => {
            return Err(StoreError::NotAllowed(format!(
                "volunteer `{volunteer}` is already registered ({}): a host joining it cannot change its team to `{}`; \
                 give its team (or none) on this machine, or change the team from a host already registered to `{volunteer}`",
                current.map_or("with no team".to_string(), |t| format!("on team `{t}`")),
                team.unwrap_or_default()
            )));
        }
    };
    if sets_team && let Some(team) = team {
        tx.prepare_cached("INSERT OR IGNORE INTO teams (name, created_ms) VALUES (?1, ?2)")?
            .execute(params![team, to_i64(now_ms)])?;
    }
    tx.prepare_cached(
        "INSERT INTO hosts (public_key, volunteer_id, cores, registered_ms, last_seen_ms)
         VALUES (?1, ?2, ?3, ?4, ?4)
         ON CONFLICT (public_key) DO UPDATE SET
            volunteer_id = excluded.volunteer_id, cores = excluded.cores,
            last_seen_ms = excluded.last_seen_ms",
    )?
    .execute(params![&key.0[..], volunteer_id, cores, to_i64(now_ms)])?;
    let (host_id, consecutive_valid): (i64, u32) = tx
        .prepare_cached("SELECT id, consecutive_valid FROM hosts WHERE public_key = ?1")?
        .query_row([&key.0[..]], |row| Ok((row.get(0)?, row.get(1)?)))?;
    let (host_id, volunteer_id) = (to_u64(host_id), to_u64(volunteer_id));
    let host = live.hosts.entry(host_id).or_insert_with(|| LiveHost {
        volunteer_id,
        cores,
        key: *key,
        last_seen_ms: now_ms,
        trust: HostTrust { consecutive_valid },
        in_flight: Default::default(),
    });
    host.volunteer_id = volunteer_id;
    host.cores = cores;
    host.key = *key;
    host.last_seen_ms = now_ms;
    Ok(HostRecord {
        host_id,
        volunteer_id,
        cores,
    })
}

/// Creates a batch and its units (the caller validated the policy).
pub(super) fn create_batch(
    tx: &Connection,
    live: &mut Live,
    batch: &NewBatch,
    now_ms: u64,
) -> Result<u64, StoreError> {
    // Only blobs the researcher holds: knowing another's hash is not having it.
    let mut checked = std::collections::HashSet::new();
    for hash in std::iter::once(&batch.module).chain(batch.units.iter().map(|u| &u.input)) {
        if checked.insert(*hash)
            && !super::researchers::blob_visible(tx, batch.researcher_id, &hash.to_hex())?
        {
            return Err(StoreError::BlobMissing(*hash));
        }
    }
    tx.execute(
        "INSERT INTO batches (module_hash, quorum, max_total_replicas, max_error_replicas,
            replica_deadline_ms, fuel_limit, memory_limit_bytes, output_limit_bytes, created_ms,
            initial_replicas, max_success_replicas, priority, trust_after, spot_check_ppm,
            researcher_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        params![
            batch.module.to_hex(),
            batch.policy.quorum,
            batch.policy.max_total_replicas,
            batch.policy.max_error_replicas,
            to_i64(batch.policy.replica_deadline_ms),
            to_i64(batch.fuel_limit),
            to_i64(batch.memory_limit_bytes),
            to_i64(batch.output_limit_bytes),
            to_i64(now_ms),
            batch.policy.initial_replicas,
            batch.policy.max_success_replicas,
            batch.priority,
            batch.policy.adaptive.map(|a| a.trust_after),
            batch.policy.adaptive.map(|a| a.spot_check_ppm),
            to_i64(batch.researcher_id),
        ],
    )?;
    let batch_id = to_u64(tx.last_insert_rowid());
    let mut unit_ids = Vec::with_capacity(batch.units.len());
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO units (batch_id, name, input_hash, seed, state)
             VALUES (?1, ?2, ?3, ?4, 'open')",
        )?;
        for unit in &batch.units {
            insert
                .execute(params![
                    to_i64(batch_id),
                    unit.name,
                    unit.input.to_hex(),
                    to_i64(unit.seed)
                ])
                .map_err(|e| match e {
                    rusqlite::Error::SqliteFailure(f, _)
                        if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                    {
                        StoreError::Invalid(format!("unit name `{}` appears twice", unit.name))
                    }
                    other => StoreError::Database(other),
                })?;
            unit_ids.push(to_u64(tx.last_insert_rowid()));
        }
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
            in_flight: 0,
            open_units: 0,
            wanting: Default::default(),
            grants: 0,
            granted_fuel: 0,
        },
    );
    for (unit, unit_id) in batch.units.iter().zip(unit_ids) {
        live.insert_unit(
            unit_id,
            LiveUnit {
                batch_id,
                input: unit.input,
                seed: unit.seed,
                alone: false,
                replicas: Vec::new(),
            },
        );
    }
    Ok(batch_id)
}

/// The live host, loaded from its row if it is not in memory yet.
fn live_host<'a>(
    tx: &Connection,
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

pub(super) fn assign(
    tx: &Connection,
    live: &mut Live,
    host_id: u64,
    fuel_per_second: Option<u64>,
    now_ms: u64,
) -> Result<Option<Assignment>, StoreError> {
    let host = live_host(tx, live, host_id)?;
    if host.last_seen_ms.saturating_add(LAST_SEEN_RESOLUTION_MS) < now_ms {
        tx.prepare_cached("UPDATE hosts SET last_seen_ms = ?2 WHERE id = ?1")?
            .execute(params![to_i64(host_id), to_i64(now_ms)])?;
        host.last_seen_ms = now_ms;
    }
    if host.in_flight.len() >= host.cores as usize {
        return Ok(None);
    }
    let (volunteer_id, key, trust) = (host.volunteer_id, host.key, host.trust);
    let Some(pick) = live.pick(host_id, volunteer_id, fuel_per_second, ASSIGN_SCAN_LIMIT) else {
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
    tx.prepare_cached(
        "INSERT INTO replicas (unit_id, host_id, volunteer_id, assigned_ms, deadline_ms, state)
         VALUES (?1, ?2, ?3, ?4, ?5, 'in_progress')",
    )?
    .execute(params![
        to_i64(pick.unit_id),
        to_i64(host_id),
        to_i64(volunteer_id),
        to_i64(now_ms),
        to_i64(deadline_ms)
    ])?;
    let replica_id = to_u64(tx.last_insert_rowid());
    if alone {
        tx.prepare_cached("UPDATE units SET alone = 1 WHERE id = ?1")?
            .execute([to_i64(pick.unit_id)])?;
    }
    let assignment = Assignment {
        replica_id,
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
    if let Some(unit) = live.units.get_mut(&pick.unit_id) {
        unit.alone = alone;
    }
    live.add_replica(
        &pick,
        Replica {
            id: replica_id,
            volunteer_id,
            state: ReplicaState::InProgress { deadline_ms },
        },
        host_id,
        deadline_ms,
    );
    Ok(Some(assignment))
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
    tx: &Connection,
    replica_id: u64,
    outcome: &Outcome,
    now_ms: u64,
) -> Result<ReplicaState, StoreError> {
    Ok(match outcome {
        Outcome::Countable(result) => {
            tx.prepare_cached(
                "UPDATE replicas SET state = 'reported', result = ?2, reported_ms = ?3,
                                     output_hash = ?4
                 WHERE id = ?1",
            )?
            .execute(params![
                to_i64(replica_id),
                encode_result(result)?,
                to_i64(now_ms),
                result.output_hash.to_hex()
            ])?;
            ReplicaState::Reported(result.clone())
        }
        Outcome::Aborted(reason) => {
            let reason =
                serde_json::to_string(reason).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            tx.prepare_cached(
                "UPDATE replicas SET state = 'aborted', abort_reason = ?2, reported_ms = ?3
                 WHERE id = ?1",
            )?
            .execute(params![to_i64(replica_id), reason, to_i64(now_ms)])?;
            ReplicaState::Aborted
        }
    })
}

pub(super) fn record_report(
    tx: &Connection,
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
    tx: &Connection,
    live: &mut Live,
    host_id: u64,
    replica_id: u64,
    outcome: &Outcome,
    now_ms: u64,
) -> Result<ReportEffect, StoreError> {
    let row: Option<(i64, i64, i64, String, i64)> = tx
        .prepare_cached(
            "SELECT r.unit_id, r.host_id, r.volunteer_id, r.state, u.batch_id
             FROM replicas r JOIN units u ON u.id = r.unit_id WHERE r.id = ?1",
        )?
        .query_row([to_i64(replica_id)], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })
        .optional()?;
    let Some((unit_id, owner, volunteer_id, state, batch_id)) = row else {
        return Err(StoreError::UnknownReplica(replica_id));
    };
    if to_u64(owner) != host_id {
        return Err(StoreError::NotYourReplica { replica_id });
    }
    if state != "timed_out" {
        return Ok(ReportEffect::Duplicate);
    }
    write_report(tx, replica_id, outcome, now_ms)?;
    let reference = ReplicaRef {
        unit_id: to_u64(unit_id),
        batch_id: to_u64(batch_id),
        host_id,
        volunteer_id: to_u64(volunteer_id),
        deadline_ms: None,
    };
    check_late(tx, live, &reference, replica_id, outcome, now_ms)
}

/// A late report for a unit that has closed: checked against the canonical result, credited if
/// it agrees.
fn check_late(
    tx: &Connection,
    live: &mut Live,
    reference: &ReplicaRef,
    replica_id: u64,
    outcome: &Outcome,
    now_ms: u64,
) -> Result<ReportEffect, StoreError> {
    let Outcome::Countable(result) = outcome else {
        return Ok(ReportEffect::Recorded);
    };
    let canonical: Option<String> = tx
        .prepare_cached("SELECT canonical FROM units WHERE id = ?1 AND state = 'validated'")?
        .query_row([to_i64(reference.unit_id)], |row| row.get(0))
        .optional()?
        .flatten();
    let Some(canonical) = canonical else {
        return Ok(ReportEffect::Recorded);
    };
    let canonical = parse_result(&canonical)?;
    let agreed = *result == canonical;
    if agreed {
        grant(tx, live, replica_id, reference, canonical.fuel, now_ms)?;
    } else {
        judge_invalid(tx, live, replica_id, now_ms)?;
    }
    Ok(ReportEffect::LateChecked { agreed })
}

/// Applies the lifecycle's verdict for an open unit: on validation, grants credit, marks the
/// disagreeing replicas invalid, and moves their hosts' trust (adaptive replication).
fn settle(
    tx: &Connection,
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
        tx.prepare_cached("UPDATE units SET alone = 0 WHERE id = ?1")?
            .execute([to_i64(unit_id)])?;
    }
    let verdict = live
        .verdict(unit_id)
        .ok_or_else(|| StoreError::Corrupt(format!("unit {unit_id} is not live")))?;
    let (alone, adaptive) = match live.units.get(&unit_id) {
        Some(unit) => (
            unit.alone,
            live.batches
                .get(&unit.batch_id)
                .is_some_and(|b| b.policy.adaptive.is_some()),
        ),
        None => (false, false),
    };
    match &verdict {
        Verdict::Validated {
            canonical,
            agreeing,
            disagreeing,
        } => {
            let mut references = Vec::with_capacity(agreeing.len());
            for replica_id in agreeing {
                references.push(live.replicas.get(replica_id).copied().ok_or_else(|| {
                    StoreError::Corrupt(format!("replica {replica_id} is not live"))
                })?);
            }
            // A unit validated alone remembers its host and replica until a check of a later
            // replica of that host confirms it.
            let alone_host = references
                .first()
                .filter(|_| alone)
                .map(|r| to_i64(r.host_id));
            let alone_replica = agreeing.first().filter(|_| alone).map(|id| to_i64(*id));
            tx.prepare_cached(
                "UPDATE units SET state = 'validated', canonical = ?2, alone_host_id = ?3,
                                  alone_replica_id = ?4, settled_ms = ?5
                 WHERE id = ?1",
            )?
            .execute(params![
                to_i64(unit_id),
                encode_result(canonical)?,
                alone_host,
                alone_replica,
                to_i64(now_ms)
            ])?;
            live.close_unit(unit_id);
            for (replica_id, reference) in agreeing.iter().zip(&references) {
                grant(tx, live, *replica_id, reference, canonical.fuel, now_ms)?;
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
            for replica_id in disagreeing {
                judge_invalid(tx, live, *replica_id, now_ms)?;
            }
        }
        Verdict::Failed { reason } => {
            tx.prepare_cached(
                "UPDATE units SET state = 'failed', failure = ?2, settled_ms = ?3 WHERE id = ?1",
            )?
            .execute(params![to_i64(unit_id), reason, to_i64(now_ms)])?;
            live.close_unit(unit_id);
        }
        Verdict::Open { .. } => live.refresh_wanting(unit_id),
    }
    Ok(verdict)
}

/// A replica's result disagrees with its unit's canonical result: it is invalid, any credit it
/// was granted (validated alone, then overturned) is revoked, and its host loses its trust.
fn judge_invalid(
    tx: &Connection,
    live: &mut Live,
    replica_id: u64,
    now_ms: u64,
) -> Result<(), StoreError> {
    tx.prepare_cached("UPDATE replicas SET validity = 'invalid' WHERE id = ?1")?
        .execute([to_i64(replica_id)])?;
    let revoked = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO credit_revoked (replica_id, volunteer_id, host_id, fuel, revoked_ms)
             SELECT replica_id, volunteer_id, host_id, fuel, ?2 FROM credit WHERE replica_id = ?1",
        )?
        .execute(params![to_i64(replica_id), to_i64(now_ms)])?;
    let (volunteer_id, host_id): (i64, i64) = tx
        .prepare_cached("SELECT volunteer_id, host_id FROM replicas WHERE id = ?1")?
        .query_row([to_i64(replica_id)], |row| Ok((row.get(0)?, row.get(1)?)))?;
    if revoked == 1 {
        let fuel: i64 = tx
            .prepare_cached("SELECT fuel FROM credit_revoked WHERE replica_id = ?1")?
            .query_row([to_i64(replica_id)], |row| row.get(0))?;
        let credit = -credit_for_fuel(to_u64(fuel));
        update_rac(
            tx,
            &mut live.volunteer_rac,
            "volunteers",
            to_u64(volunteer_id),
            credit,
            now_ms,
        )?;
        update_rac(
            tx,
            &mut live.host_rac,
            "hosts",
            to_u64(host_id),
            credit,
            now_ms,
        )?;
    }
    change_trust(tx, live, to_u64(host_id), TrustChange::Invalid, replica_id)
}

/// Moves a host's trust after the judgement of its replica `replica_id`. A checked valid result
/// confirms the units it validated alone with earlier replicas; an invalid one reopens every
/// unconfirmed one (back to full replication, the lone result kept as one replica among those
/// that will now judge it).
fn change_trust(
    tx: &Connection,
    live: &mut Live,
    host_id: u64,
    change: TrustChange,
    replica_id: u64,
) -> Result<(), StoreError> {
    let trust = match live.hosts.get(&host_id) {
        Some(host) => host.trust,
        None => load_host(tx, host_id)?.map(|h| h.trust).unwrap_or_default(),
    }
    .after(change);
    tx.prepare_cached("UPDATE hosts SET consecutive_valid = ?2 WHERE id = ?1")?
        .execute(params![to_i64(host_id), trust.consecutive_valid])?;
    if let Some(host) = live.hosts.get_mut(&host_id) {
        host.trust = trust;
    }
    match change {
        TrustChange::ValidChecked => {
            tx.prepare_cached(
                "UPDATE units SET alone_host_id = NULL, alone_replica_id = NULL
                 WHERE alone_host_id = ?1 AND alone_replica_id < ?2",
            )?
            .execute([to_i64(host_id), to_i64(replica_id)])?;
        }
        TrustChange::Invalid => reopen_alone_units(tx, live, host_id)?,
    }
    Ok(())
}

/// Reopens the units `host_id` validated alone and no check has confirmed since.
fn reopen_alone_units(tx: &Connection, live: &mut Live, host_id: u64) -> Result<(), StoreError> {
    let units: Vec<(i64, i64)> = tx
        .prepare_cached(
            "SELECT id, batch_id FROM units WHERE alone_host_id = ?1 AND state = 'validated'",
        )?
        .query_map([to_i64(host_id)], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<Result<_, _>>()?;
    if units.is_empty() {
        return Ok(());
    }
    for (unit_id, batch_id) in &units {
        tx.prepare_cached(
            "UPDATE units SET state = 'open', canonical = NULL, alone = 0, alone_host_id = NULL,
                              alone_replica_id = NULL
             WHERE id = ?1",
        )?
        .execute([unit_id])?;
        tx.prepare_cached(
            "UPDATE replicas SET validity = 'pending' WHERE unit_id = ?1 AND state = 'reported'",
        )?
        .execute([unit_id])?;
        let batch_id = to_u64(*batch_id);
        if !live.batches.contains_key(&batch_id) {
            let (id, module, mut batch) = tx
                .prepare_cached(&format!(
                    "SELECT {BATCH_COLUMNS} FROM batches WHERE id = ?1"
                ))?
                .query_row([to_i64(batch_id)], batch_from_row)?;
            batch.module = parse_hash(&module)?;
            load_grants(tx, id, &mut batch)?;
            live.batches.insert(id, batch);
        }
        load_open_units(tx, live, Some(to_u64(*unit_id)))?;
    }
    // Replicas of those units still in progress now belong to open units again.
    live.recount_in_flight();
    Ok(())
}

/// Marks a replica valid and writes its credit grant to the ledger (once: the ledger's
/// `replica_id` is unique), updating its volunteer's and host's recent average credit.
fn grant(
    tx: &Connection,
    live: &mut Live,
    replica_id: u64,
    reference: &ReplicaRef,
    fuel: u64,
    now_ms: u64,
) -> Result<(), StoreError> {
    tx.prepare_cached("UPDATE replicas SET validity = 'valid' WHERE id = ?1")?
        .execute([to_i64(replica_id)])?;
    let granted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO credit (replica_id, volunteer_id, host_id, fuel, granted_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            to_i64(replica_id),
            to_i64(reference.volunteer_id),
            to_i64(reference.host_id),
            to_i64(fuel),
            to_i64(now_ms)
        ])?;
    if granted == 1 {
        if let Some(batch) = live.batches.get_mut(&reference.batch_id) {
            batch.grants += 1;
            batch.granted_fuel = batch.granted_fuel.saturating_add(fuel / FUEL_SUM_UNIT);
        }
        let credit = credit_for_fuel(fuel);
        update_rac(
            tx,
            &mut live.volunteer_rac,
            "volunteers",
            reference.volunteer_id,
            credit,
            now_ms,
        )?;
        update_rac(
            tx,
            &mut live.host_rac,
            "hosts",
            reference.host_id,
            credit,
            now_ms,
        )?;
    }
    Ok(())
}

fn update_rac(
    tx: &Connection,
    cache: &mut std::collections::HashMap<u64, RecentAverage>,
    table: &str,
    id: u64,
    credit: f64,
    now_ms: u64,
) -> Result<(), StoreError> {
    let current = match cache.get(&id) {
        Some(rac) => *rac,
        None => {
            let (per_day, as_of_ms): (f64, i64) = tx
                .prepare_cached(&format!("SELECT rac, rac_ms FROM {table} WHERE id = ?1"))?
                .query_row([to_i64(id)], |row| Ok((row.get(0)?, row.get(1)?)))?;
            RecentAverage {
                per_day,
                as_of_ms: to_u64(as_of_ms),
            }
        }
    };
    let rac = current.granted(credit, now_ms);
    tx.prepare_cached(&format!(
        "UPDATE {table} SET rac = ?2, rac_ms = ?3 WHERE id = ?1"
    ))?
    .execute(params![to_i64(id), rac.per_day, to_i64(rac.as_of_ms)])?;
    cache.insert(id, rac);
    Ok(())
}

/// Marks replicas in progress as timed out so their units are reissued, and settles their units.
pub(super) fn time_out(
    tx: &Connection,
    live: &mut Live,
    replica_ids: &[u64],
    now_ms: u64,
) -> Result<(), StoreError> {
    for &replica_id in replica_ids {
        let Some(reference) = live.replicas.get(&replica_id).copied() else {
            continue;
        };
        tx.prepare_cached("UPDATE replicas SET state = 'timed_out' WHERE id = ?1")?
            .execute([to_i64(replica_id)])?;
        live.end_in_progress(replica_id, ReplicaState::TimedOut);
        if live.units.contains_key(&reference.unit_id) {
            settle(tx, live, reference.unit_id, now_ms)?;
        }
    }
    Ok(())
}

/// Whether `hash` is the module or input of a replica in progress on `host_id`. Answered from
/// `Live` when the replica's unit and batch are open there; a replica in progress of a unit that
/// already closed is looked up in the database.
pub(super) fn host_needs_blob(
    tx: &Connection,
    live: &Live,
    host_id: u64,
    hash: &ContentHash,
) -> Result<bool, StoreError> {
    let Some(host) = live.hosts.get(&host_id) else {
        return Ok(false);
    };
    let mut unresolved = false;
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
    if !unresolved {
        return Ok(false);
    }
    let hex = hash.to_hex();
    let found: bool = tx
        .prepare_cached(
            "SELECT EXISTS (
                SELECT 1 FROM replicas r
                JOIN units u ON u.id = r.unit_id
                JOIN batches b ON b.id = u.batch_id
                WHERE r.host_id = ?1 AND r.state = 'in_progress'
                  AND (u.input_hash = ?2 OR b.module_hash = ?2))",
        )?
        .query_row(params![to_i64(host_id), hex], |row| row.get(0))?;
    Ok(found)
}

/// The replicas in progress that `host_id` holds but did not list in `held`.
pub(super) fn lost_replicas(
    tx: &Connection,
    live: &mut Live,
    host_id: u64,
    held: &[u64],
) -> Result<Vec<u64>, StoreError> {
    let host = live_host(tx, live, host_id)?;
    Ok(host
        .in_flight
        .iter()
        .copied()
        .filter(|id| !held.contains(id))
        .collect())
}
