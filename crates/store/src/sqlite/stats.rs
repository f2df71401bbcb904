//! The statistics dump: every volunteer, team and host that has credit, with ids, creation
//! times, credit (grants less revocations) and recent average credit, for the BOINC-style
//! exports stats sites read.

use herd_lifecycle::credit_for_fuel;
use rusqlite::Connection;

use super::{rac_at, to_i64, to_u64};
use crate::{
    HostStats, ProjectSummary, StatsDump, StoreError, TeamStats, ThroughputBucket, VolunteerStats,
};

pub(super) fn dump(tx: &Connection, now_ms: u64) -> Result<StatsDump, StoreError> {
    let volunteers: Vec<VolunteerStats> = tx
        .prepare(
            "SELECT v.id, v.name, v.created_ms, t.id,
                (SELECT COALESCE(SUM(c.fuel), 0) FROM credit c WHERE c.volunteer_id = v.id)
                  - (SELECT COALESCE(SUM(x.fuel), 0) FROM credit_revoked x
                     WHERE x.volunteer_id = v.id),
                v.rac, v.rac_ms
             FROM volunteers v LEFT JOIN teams t ON t.name = v.team
             ORDER BY v.id",
        )?
        .query_map([], |row| {
            let rac_ms: i64 = row.get(6)?;
            Ok(VolunteerStats {
                id: to_u64(row.get(0)?),
                name: row.get(1)?,
                created_ms: to_u64(row.get(2)?),
                team_id: row.get::<_, Option<i64>>(3)?.map(to_u64),
                credit: credit_for_fuel(to_u64(row.get(4)?)),
                recent_average_credit: rac_at(row.get(5)?, rac_ms, now_ms),
                rac_ms: now_ms.max(to_u64(rac_ms)),
            })
        })?
        .collect::<Result<_, _>>()?;
    let team_rows: Vec<(i64, String, i64)> = tx
        .prepare("SELECT id, name, created_ms FROM teams ORDER BY id")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
        .collect::<Result<_, _>>()?;
    // Members by team, in one pass (volunteers are in id order, so each list is too).
    let mut by_team: std::collections::HashMap<u64, Vec<&VolunteerStats>> = Default::default();
    for volunteer in &volunteers {
        if let Some(team) = volunteer.team_id {
            by_team.entry(team).or_default().push(volunteer);
        }
    }
    let mut teams = Vec::new();
    for (id, name, created_ms) in team_rows {
        let id = to_u64(id);
        let members = by_team.remove(&id).unwrap_or_default();
        // Volunteers are in id order: the first member is the one who joined first.
        let Some(founder) = members.first() else {
            continue;
        };
        teams.push(TeamStats {
            id,
            founder_id: founder.id,
            founder_name: founder.name.clone(),
            name,
            created_ms: to_u64(created_ms),
            members: members.len() as u64,
            credit: members.iter().map(|v| v.credit).sum(),
            recent_average_credit: members.iter().map(|v| v.recent_average_credit).sum(),
            rac_ms: now_ms,
        });
    }
    let hosts: Vec<HostStats> = tx
        .prepare(
            "SELECT h.id, h.volunteer_id, h.cores, h.registered_ms, h.last_seen_ms,
                (SELECT COALESCE(SUM(c.fuel), 0) FROM credit c WHERE c.host_id = h.id)
                  - (SELECT COALESCE(SUM(x.fuel), 0) FROM credit_revoked x
                     WHERE x.host_id = h.id),
                h.rac, h.rac_ms
             FROM hosts h ORDER BY h.id",
        )?
        .query_map([], |row| {
            let rac_ms: i64 = row.get(7)?;
            Ok(HostStats {
                id: to_u64(row.get(0)?),
                volunteer_id: to_u64(row.get(1)?),
                cores: row.get(2)?,
                created_ms: to_u64(row.get(3)?),
                last_seen_ms: to_u64(row.get(4)?),
                credit: credit_for_fuel(to_u64(row.get(5)?)),
                recent_average_credit: rac_at(row.get(6)?, rac_ms, now_ms),
                rac_ms: now_ms.max(to_u64(rac_ms)),
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(StatsDump {
        volunteers,
        teams,
        hosts,
    })
}

/// A single number a query answers.
fn number<P: rusqlite::Params>(tx: &Connection, sql: &str, params: P) -> Result<u64, StoreError> {
    Ok(to_u64(
        tx.prepare_cached(sql)?
            .query_row(params, |row| row.get(0))?,
    ))
}

pub(super) fn summary(
    tx: &Connection,
    live: &crate::live::Live,
    now_ms: u64,
    active_ms: u64,
    window_ms: u64,
) -> Result<ProjectSummary, StoreError> {
    let active_since = [to_i64(now_ms.saturating_sub(active_ms))];
    let window_start = [to_i64(now_ms.saturating_sub(window_ms))];
    let window_secs = (window_ms / 1000).max(1);
    let validated_in_window = number(
        tx,
        "SELECT COUNT(*) FROM units WHERE settled_ms >= ?1 AND state = 'validated'",
        window_start,
    )?;
    let fuel_in_window = number(
        tx,
        "SELECT COALESCE(SUM(fuel), 0) FROM credit WHERE granted_ms >= ?1",
        window_start,
    )?;
    let total_fuel = number(
        tx,
        "SELECT (SELECT COALESCE(SUM(fuel), 0) FROM credit)
              - (SELECT COALESCE(SUM(fuel), 0) FROM credit_revoked)",
        [],
    )?;
    Ok(ProjectSummary {
        volunteers: number(tx, "SELECT COUNT(*) FROM volunteers", [])?,
        volunteers_active: number(
            tx,
            "SELECT COUNT(DISTINCT volunteer_id) FROM hosts WHERE last_seen_ms >= ?1",
            active_since,
        )?,
        hosts: number(tx, "SELECT COUNT(*) FROM hosts", [])?,
        hosts_active: number(
            tx,
            "SELECT COUNT(*) FROM hosts WHERE last_seen_ms >= ?1",
            active_since,
        )?,
        units_per_second: validated_in_window as f64 / window_secs as f64,
        fuel_per_second: fuel_in_window as f64 / window_secs as f64,
        window_secs,
        queue_depth: live.units.len() as u64,
        replicas_in_progress: live.deadlines.len() as u64,
        batches_open: live.batches.len() as u64,
        units_validated: number(
            tx,
            "SELECT COUNT(*) FROM units WHERE state = 'validated'",
            [],
        )?,
        units_failed: number(tx, "SELECT COUNT(*) FROM units WHERE state = 'failed'", [])?,
        total_credit: credit_for_fuel(total_fuel),
    })
}

pub(super) fn throughput(
    tx: &Connection,
    since_ms: u64,
    until_ms: u64,
    bucket_ms: u64,
) -> Result<Vec<ThroughputBucket>, StoreError> {
    let bucket_ms = bucket_ms.max(1);
    let count = until_ms.saturating_sub(since_ms).div_ceil(bucket_ms);
    let mut buckets: Vec<ThroughputBucket> = (0..count)
        .map(|i| ThroughputBucket {
            start_ms: since_ms + i * bucket_ms,
            units: 0,
            fuel: 0,
        })
        .collect();
    let range = [to_i64(since_ms), to_i64(until_ms), to_i64(bucket_ms)];
    let units: Vec<(i64, i64)> = tx
        .prepare_cached(
            "SELECT (settled_ms - ?1) / ?3, COUNT(*) FROM units
             WHERE state = 'validated' AND settled_ms >= ?1 AND settled_ms < ?2 GROUP BY 1",
        )?
        .query_map(range, |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (index, n) in units {
        if let Some(bucket) = buckets.get_mut(to_u64(index) as usize) {
            bucket.units = to_u64(n);
        }
    }
    let fuel: Vec<(i64, i64)> = tx
        .prepare_cached(
            "SELECT (granted_ms - ?1) / ?3, SUM(fuel) FROM credit
             WHERE granted_ms >= ?1 AND granted_ms < ?2 GROUP BY 1",
        )?
        .query_map(range, |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (index, n) in fuel {
        if let Some(bucket) = buckets.get_mut(to_u64(index) as usize) {
            bucket.fuel = to_u64(n);
        }
    }
    Ok(buckets)
}
