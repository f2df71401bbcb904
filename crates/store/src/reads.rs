//! What researchers and dashboards read: a batch's progress and its units page by page, credit
//! per volunteer and team, every host's record. Read-only, so each backend may serve them off
//! the writer (a pool of connections that see every committed write).

use herd_lifecycle::credit_for_fuel;

use crate::sql::{Sql, args};
use crate::{
    BatchStatus, CreditLine, CreditTotals, HostLine, StoreError, UnitState, UnitStatus,
    parse_result, rac_at,
};

pub(crate) fn batch_status(
    tx: &mut dyn Sql,
    batch_id: u64,
) -> Result<Option<BatchStatus>, StoreError> {
    let Some(row) = tx.query_row(
        "SELECT module_hash, quorum, created_ms, researcher_id FROM batches WHERE id = ?1",
        &args![batch_id],
    )?
    else {
        return Ok(None);
    };
    let units = unit_page(tx, batch_id, 0, u32::MAX, None)?;
    let count = |state: &str| units.iter().filter(|u| u.state == state).count() as u64;
    Ok(Some(BatchStatus {
        id: batch_id,
        researcher_id: row.opt_u64(3)?.unwrap_or(0),
        module: row.text(0)?,
        quorum: row.u32(1)?,
        total: units.len() as u64,
        open: count("open"),
        validated: count("validated"),
        failed: count("failed"),
        created_ms: row.u64(2)?,
        units,
    }))
}

/// A batch's units with ids above `after`, in id order, at most `limit`, only those in
/// `state` if given.
pub(crate) fn unit_page(
    tx: &mut dyn Sql,
    batch_id: u64,
    after: u64,
    limit: u32,
    state: Option<UnitState>,
) -> Result<Vec<UnitStatus>, StoreError> {
    let rows = tx.query(
        "SELECT id, name, state, input_hash, canonical, failure,
            (SELECT COUNT(*) FROM replicas r WHERE r.unit_id = units.id)
         FROM units WHERE batch_id = ?1 AND id > ?2 AND (CAST(?3 AS TEXT) IS NULL OR state = ?3)
         ORDER BY id LIMIT ?4",
        &args![batch_id, after, state.map(UnitState::name), limit],
    )?;
    rows.iter()
        .map(|row| {
            Ok(UnitStatus {
                id: row.u64(0)?,
                name: row.text(1)?,
                state: row.text(2)?,
                input: row.text(3)?,
                result: row.opt_text(4)?.as_deref().map(parse_result).transpose()?,
                failure: row.opt_text(5)?,
                replicas: row.u32(6)?,
            })
        })
        .collect()
}

pub(crate) fn credit_totals(tx: &mut dyn Sql, now_ms: u64) -> Result<CreditTotals, StoreError> {
    let volunteers = tx
        .query(
            // Grants minus revocations (credit of results later found invalid).
            "SELECT v.name, v.team,
                CAST(COALESCE(SUM(c.fuel), 0)
                  - (SELECT COALESCE(SUM(x.fuel), 0) FROM credit_revoked x
                     WHERE x.volunteer_id = v.id) AS BIGINT),
                COUNT(c.id)
                  - (SELECT COUNT(*) FROM credit_revoked x WHERE x.volunteer_id = v.id),
                v.rac, v.rac_ms
             FROM volunteers v LEFT JOIN credit c ON c.volunteer_id = v.id
             -- Accounts that volunteered: a machine, or credit (a researcher's need not).
             WHERE EXISTS (SELECT 1 FROM hosts h WHERE h.volunteer_id = v.id)
                OR EXISTS (SELECT 1 FROM credit g WHERE g.volunteer_id = v.id)
             GROUP BY v.id ORDER BY 3 DESC, v.name",
            &[],
        )?
        .iter()
        .map(|row| {
            let fuel = row.u64(2)?;
            Ok(CreditLine {
                name: row.text(0)?,
                team: row.opt_text(1)?,
                fuel,
                credit: credit_for_fuel(fuel),
                recent_average_credit: rac_at(row.real(4)?, row.u64(5)?, now_ms),
                replicas: row.u64(3)?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    // A team's figures are its members' sums.
    let mut teams: Vec<CreditLine> = Vec::new();
    for volunteer in &volunteers {
        let Some(team) = &volunteer.team else {
            continue;
        };
        match teams.iter_mut().find(|t| &t.name == team) {
            Some(line) => {
                line.fuel += volunteer.fuel;
                line.replicas += volunteer.replicas;
                line.recent_average_credit += volunteer.recent_average_credit;
            }
            None => teams.push(CreditLine {
                name: team.clone(),
                team: None,
                fuel: volunteer.fuel,
                credit: 0.0,
                recent_average_credit: volunteer.recent_average_credit,
                replicas: volunteer.replicas,
            }),
        }
    }
    for team in &mut teams {
        team.credit = credit_for_fuel(team.fuel);
    }
    teams.sort_by(|a, b| b.fuel.cmp(&a.fuel).then_with(|| a.name.cmp(&b.name)));
    Ok(CreditTotals {
        fuel_per_credit: herd_lifecycle::FUEL_PER_CREDIT,
        volunteers,
        teams,
    })
}

pub(crate) fn hosts(tx: &mut dyn Sql, now_ms: u64) -> Result<Vec<HostLine>, StoreError> {
    let count = |condition: &str| {
        format!("CAST(COALESCE(SUM(CASE WHEN {condition} THEN 1 ELSE 0 END), 0) AS BIGINT)")
    };
    tx.query(
        &format!(
            "SELECT h.id, v.name, h.public_key, h.cores, h.last_seen_ms, h.rac, h.rac_ms,
                h.refused_reports, {}, {}, {}, {}, {},
                CAST((SELECT COALESCE(SUM(c.fuel), 0) FROM credit c WHERE c.host_id = h.id)
                  - (SELECT COALESCE(SUM(x.fuel), 0) FROM credit_revoked x
                     WHERE x.host_id = h.id) AS BIGINT),
                h.consecutive_valid
             FROM hosts h JOIN volunteers v ON v.id = h.volunteer_id
             LEFT JOIN replicas r ON r.host_id = h.id
             GROUP BY h.id, v.name ORDER BY h.id",
            count("r.validity = 'valid'"),
            count("r.validity = 'invalid'"),
            count("r.state = 'aborted'"),
            count("r.state = 'timed_out'"),
            count("r.state = 'in_progress'"),
        ),
        &[],
    )?
    .iter()
    .map(|row| {
        let fuel = row.u64(13)?;
        Ok(HostLine {
            id: row.u64(0)?,
            volunteer: row.text(1)?,
            public_key: row.blob(2)?.iter().map(|b| format!("{b:02x}")).collect(),
            cores: row.u32(3)?,
            last_seen_ms: row.u64(4)?,
            recent_average_credit: rac_at(row.real(5)?, row.u64(6)?, now_ms),
            refused_reports: row.u64(7)?,
            valid: row.u64(8)?,
            invalid: row.u64(9)?,
            errors: row.u64(10)?,
            timed_out: row.u64(11)?,
            in_progress: row.u64(12)?,
            consecutive_valid: row.u32(14)?,
            fuel,
            credit: credit_for_fuel(fuel),
        })
    })
    .collect()
}
