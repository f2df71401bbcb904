//! The statistics dump: every volunteer, team and host that has credit, with ids, creation
//! times, credit (grants less revocations) and recent average credit, for the BOINC-style
//! exports stats sites read.

use herd_lifecycle::credit_for_fuel;

use crate::sql::{Sql, args};
use crate::{
    HostStats, ProjectSummary, StatsDump, StoreError, TeamStats, ThroughputBucket, VolunteerStats,
    rac_at,
};

pub(crate) fn dump(tx: &mut dyn Sql, now_ms: u64) -> Result<StatsDump, StoreError> {
    let volunteers: Vec<VolunteerStats> = tx
        .query(
            "SELECT v.id, v.name, v.created_ms, t.id,
                CAST((SELECT COALESCE(SUM(c.fuel), 0) FROM credit c WHERE c.volunteer_id = v.id)
                  - (SELECT COALESCE(SUM(x.fuel), 0) FROM credit_revoked x
                     WHERE x.volunteer_id = v.id) AS BIGINT),
                v.rac, v.rac_ms
             FROM volunteers v LEFT JOIN teams t ON t.name = v.team
             -- Accounts that volunteered: a machine, or credit (a researcher's need not).
             WHERE EXISTS (SELECT 1 FROM hosts h WHERE h.volunteer_id = v.id)
                OR EXISTS (SELECT 1 FROM credit g WHERE g.volunteer_id = v.id)
             ORDER BY v.id",
            &[],
        )?
        .iter()
        .map(|row| {
            let rac_ms = row.u64(6)?;
            Ok(VolunteerStats {
                id: row.u64(0)?,
                name: row.text(1)?,
                created_ms: row.u64(2)?,
                team_id: row.opt_u64(3)?,
                credit: credit_for_fuel(row.u64(4)?),
                recent_average_credit: rac_at(row.real(5)?, rac_ms, now_ms),
                rac_ms: now_ms.max(rac_ms),
            })
        })
        .collect::<Result<_, StoreError>>()?;
    let team_rows: Vec<(u64, String, u64)> = tx
        .query("SELECT id, name, created_ms FROM teams ORDER BY id", &[])?
        .iter()
        .map(|row| Ok((row.u64(0)?, row.text(1)?, row.u64(2)?)))
        .collect::<Result<_, StoreError>>()?;
    // Members by team, in one pass (volunteers are in id order, so each list is too).
    let mut by_team: std::collections::HashMap<u64, Vec<&VolunteerStats>> = Default::default();
    for volunteer in &volunteers {
        if let Some(team) = volunteer.team_id {
            by_team.entry(team).or_default().push(volunteer);
        }
    }
    let mut teams = Vec::new();
    for (id, name, created_ms) in team_rows {
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
            created_ms,
            members: members.len() as u64,
            credit: members.iter().map(|v| v.credit).sum(),
            recent_average_credit: members.iter().map(|v| v.recent_average_credit).sum(),
            rac_ms: now_ms,
        });
    }
    let hosts: Vec<HostStats> = tx
        .query(
            "SELECT h.id, h.volunteer_id, h.cores, h.registered_ms, h.last_seen_ms,
                CAST((SELECT COALESCE(SUM(c.fuel), 0) FROM credit c WHERE c.host_id = h.id)
                  - (SELECT COALESCE(SUM(x.fuel), 0) FROM credit_revoked x
                     WHERE x.host_id = h.id) AS BIGINT),
                h.rac, h.rac_ms
             FROM hosts h ORDER BY h.id",
            &[],
        )?
        .iter()
        .map(|row| {
            let rac_ms = row.u64(7)?;
            Ok(HostStats {
                id: row.u64(0)?,
                volunteer_id: row.u64(1)?,
                cores: row.u32(2)?,
                created_ms: row.u64(3)?,
                last_seen_ms: row.u64(4)?,
                credit: credit_for_fuel(row.u64(5)?),
                recent_average_credit: rac_at(row.real(6)?, rac_ms, now_ms),
                rac_ms: now_ms.max(rac_ms),
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok(StatsDump {
        volunteers,
        teams,
        hosts,
    })
}

pub(crate) fn summary(
    tx: &mut dyn Sql,
    now_ms: u64,
    active_ms: u64,
    window_ms: u64,
) -> Result<ProjectSummary, StoreError> {
    let active_since = args![now_ms.saturating_sub(active_ms)];
    let window_start = args![now_ms.saturating_sub(window_ms)];
    let window_secs = (window_ms / 1000).max(1);
    let validated_in_window = tx.number(
        "SELECT COUNT(*) FROM units WHERE settled_ms >= ?1 AND state = 'validated'",
        &window_start,
    )?;
    let fuel_in_window = tx.number(
        "SELECT CAST(COALESCE(SUM(fuel), 0) AS BIGINT) FROM credit WHERE granted_ms >= ?1",
        &window_start,
    )?;
    let total_fuel = tx.number(
        "SELECT CAST((SELECT COALESCE(SUM(fuel), 0) FROM credit)
              - (SELECT COALESCE(SUM(fuel), 0) FROM credit_revoked) AS BIGINT)",
        &[],
    )?;
    Ok(ProjectSummary {
        // Accounts that have volunteered a machine (a researcher's own account need not).
        volunteers: tx.number(
            "SELECT COUNT(*) FROM volunteers v WHERE EXISTS (SELECT 1 FROM hosts h WHERE h.volunteer_id = v.id)",
            &[],
        )?,
        volunteers_active: tx.number(
            "SELECT COUNT(DISTINCT volunteer_id) FROM hosts WHERE last_seen_ms >= ?1",
            &active_since,
        )?,
        hosts: tx.number("SELECT COUNT(*) FROM hosts", &[])?,
        hosts_active: tx.number(
            "SELECT COUNT(*) FROM hosts WHERE last_seen_ms >= ?1",
            &active_since,
        )?,
        units_per_second: validated_in_window as f64 / window_secs as f64,
        fuel_per_second: fuel_in_window as f64 / window_secs as f64,
        window_secs,
        queue_depth: tx.number("SELECT COUNT(*) FROM units WHERE state = 'open'", &[])?,
        replicas_in_progress: tx.number(
            "SELECT COUNT(*) FROM replicas WHERE state = 'in_progress'",
            &[],
        )?,
        batches_open: tx.number(
            "SELECT COUNT(DISTINCT batch_id) FROM units WHERE state = 'open'",
            &[],
        )?,
        units_validated: tx.number("SELECT COUNT(*) FROM units WHERE state = 'validated'", &[])?,
        units_failed: tx.number("SELECT COUNT(*) FROM units WHERE state = 'failed'", &[])?,
        total_credit: credit_for_fuel(total_fuel),
    })
}

pub(crate) fn throughput(
    tx: &mut dyn Sql,
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
    let range = args![since_ms, until_ms, bucket_ms];
    let units = tx.query(
        "SELECT (settled_ms - ?1) / ?3, COUNT(*) FROM units
         WHERE state = 'validated' AND settled_ms >= ?1 AND settled_ms < ?2 GROUP BY 1",
        &range,
    )?;
    for row in units {
        if let Some(bucket) = buckets.get_mut(row.u64(0)? as usize) {
            bucket.units = row.u64(1)?;
        }
    }
    let fuel = tx.query(
        "SELECT (granted_ms - ?1) / ?3, CAST(SUM(fuel) AS BIGINT) FROM credit
         WHERE granted_ms >= ?1 AND granted_ms < ?2 GROUP BY 1",
        &range,
    )?;
    for row in fuel {
        if let Some(bucket) = buckets.get_mut(row.u64(0)? as usize) {
            bucket.fuel = row.u64(1)?;
        }
    }
    Ok(buckets)
}
