//! Researchers and what each may see: their tokens (stored as hashes), their batches, the
//! blobs they uploaded and the blobs of their batches, and cancelling a batch.

use rusqlite::{Connection, OptionalExtension, params};

use super::{to_i64, to_u64};
use crate::live::Live;
use crate::{BatchSummary, Researcher, StoreError};
use herd_protocol::ContentHash;

/// Researcher names: what `herd researcher add` accepts.
pub(super) fn check_name(name: &str) -> Result<(), StoreError> {
    let fine = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if fine {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "researcher name `{}` must be 1 to 64 letters, digits, `-`, `_` or `.`",
            name.escape_debug()
        )))
    }
}

fn by_name(tx: &Connection, name: &str) -> Result<Option<Researcher>, StoreError> {
    Ok(tx
        .prepare_cached("SELECT id FROM researchers WHERE name = ?1")?
        .query_row([name], |row| row.get::<_, i64>(0))
        .optional()?
        .map(|id| Researcher {
            id: to_u64(id),
            name: name.to_owned(),
        }))
}

pub(super) fn ensure(
    tx: &Connection,
    name: &str,
    token_hash: &str,
    now_ms: u64,
) -> Result<Researcher, StoreError> {
    check_name(name)?;
    let researcher = match by_name(tx, name)? {
        Some(found) => {
            tx.execute(
                "UPDATE researchers SET token_hash = ?2 WHERE id = ?1",
                params![to_i64(found.id), token_hash],
            )?;
            found
        }
        None => add(tx, name, token_hash, now_ms)?,
    };
    tx.execute(
        "UPDATE batches SET researcher_id = ?1 WHERE researcher_id IS NULL",
        [to_i64(researcher.id)],
    )?;
    Ok(researcher)
}

pub(super) fn add(
    tx: &Connection,
    name: &str,
    token_hash: &str,
    now_ms: u64,
) -> Result<Researcher, StoreError> {
    check_name(name)?;
    if by_name(tx, name)?.is_some() {
        return Err(StoreError::Invalid(format!(
            "there is already a researcher called `{name}`"
        )));
    }
    tx.execute(
        "INSERT INTO researchers (name, token_hash, created_ms) VALUES (?1, ?2, ?3)",
        params![name, token_hash, to_i64(now_ms)],
    )?;
    Ok(Researcher {
        id: to_u64(tx.last_insert_rowid()),
        name: name.to_owned(),
    })
}

pub(super) fn by_token(
    tx: &Connection,
    token_hash: &str,
) -> Result<Option<Researcher>, StoreError> {
    Ok(tx
        .prepare_cached("SELECT id, name FROM researchers WHERE token_hash = ?1")?
        .query_row([token_hash], |row| {
            Ok(Researcher {
                id: to_u64(row.get(0)?),
                name: row.get(1)?,
            })
        })
        .optional()?)
}

/// The columns [`summary_from_row`] reads, from `batches b`.
const SUMMARY_COLUMNS: &str = "b.id, b.module_hash, b.quorum, b.priority, b.created_ms,
    (SELECT COUNT(*) FROM units u WHERE u.batch_id = b.id AND u.state = 'open'),
    (SELECT COUNT(*) FROM units u WHERE u.batch_id = b.id AND u.state = 'validated'),
    (SELECT COUNT(*) FROM units u WHERE u.batch_id = b.id AND u.state = 'failed'),
    b.researcher_id";

fn summary_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(u64, BatchSummary)> {
    let (open, validated, failed): (i64, i64, i64) = (row.get(5)?, row.get(6)?, row.get(7)?);
    Ok((
        row.get::<_, Option<i64>>(8)?.map_or(0, to_u64),
        BatchSummary {
            id: to_u64(row.get(0)?),
            module: row.get(1)?,
            quorum: row.get(2)?,
            priority: row.get(3)?,
            created_ms: to_u64(row.get(4)?),
            total: to_u64(open + validated + failed),
            open: to_u64(open),
            validated: to_u64(validated),
            failed: to_u64(failed),
        },
    ))
}

pub(super) fn list_batches(
    tx: &Connection,
    researcher_id: u64,
    after: u64,
    limit: u32,
) -> Result<Vec<BatchSummary>, StoreError> {
    let mut statement = tx.prepare_cached(&format!(
        "SELECT {SUMMARY_COLUMNS} FROM batches b
         WHERE b.researcher_id = ?1 AND b.id > ?2 ORDER BY b.id LIMIT ?3"
    ))?;
    let rows = statement.query_map(
        params![to_i64(researcher_id), to_i64(after), i64::from(limit)],
        summary_from_row,
    )?;
    Ok(rows
        .map(|row| row.map(|(_, summary)| summary))
        .collect::<Result<_, _>>()?)
}

/// A batch's counts and whose it is.
pub(super) fn summary(
    tx: &Connection,
    batch_id: u64,
) -> Result<Option<(u64, BatchSummary)>, StoreError> {
    Ok(tx
        .prepare_cached(&format!(
            "SELECT {SUMMARY_COLUMNS} FROM batches b WHERE b.id = ?1"
        ))?
        .query_row([to_i64(batch_id)], summary_from_row)
        .optional()?)
}

pub(super) fn owner(tx: &Connection, batch_id: u64) -> Result<Option<u64>, StoreError> {
    Ok(tx
        .prepare_cached("SELECT researcher_id FROM batches WHERE id = ?1")?
        .query_row([to_i64(batch_id)], |row| row.get::<_, Option<i64>>(0))
        .optional()?
        .map(|owner| owner.map_or(0, to_u64)))
}

/// Records that the researcher uploaded these blobs (each once).
pub(super) fn record_uploads(
    tx: &Connection,
    researcher_id: u64,
    hashes: &[ContentHash],
) -> Result<(), StoreError> {
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO blob_uploads (hash, researcher_id) VALUES (?1, ?2)",
    )?;
    for hash in hashes {
        insert.execute(params![hash.to_hex(), to_i64(researcher_id)])?;
    }
    Ok(())
}

/// Whether the researcher holds the blob: uploaded it, or one of their batches uses it (its
/// module, an input, or an output a replica reported).
pub(super) fn blob_visible(
    tx: &Connection,
    researcher_id: u64,
    hash: &str,
) -> Result<bool, StoreError> {
    Ok(tx
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM blob_uploads WHERE hash = ?2 AND researcher_id = ?1)
             OR EXISTS (SELECT 1 FROM batches WHERE researcher_id = ?1 AND module_hash = ?2)
             OR EXISTS (SELECT 1 FROM units u JOIN batches b ON b.id = u.batch_id
                        WHERE u.input_hash = ?2 AND b.researcher_id = ?1)
             OR EXISTS (SELECT 1 FROM replicas r JOIN units u ON u.id = r.unit_id
                        JOIN batches b ON b.id = u.batch_id
                        WHERE r.output_hash = ?2 AND b.researcher_id = ?1)",
        )?
        .query_row(params![to_i64(researcher_id), hash], |row| row.get(0))?)
}

pub(super) fn cancel(
    tx: &Connection,
    live: &mut Live,
    batch_id: u64,
) -> Result<Option<u64>, StoreError> {
    if owner(tx, batch_id)?.is_none() {
        return Ok(None);
    }
    let open: Vec<i64> = tx
        .prepare_cached("SELECT id FROM units WHERE batch_id = ?1 AND state = 'open'")?
        .query_map([to_i64(batch_id)], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    tx.execute(
        "UPDATE units SET state = 'failed', failure = 'cancelled by the researcher'
         WHERE batch_id = ?1 AND state = 'open'",
        [to_i64(batch_id)],
    )?;
    for unit_id in &open {
        live.close_unit(to_u64(*unit_id));
    }
    Ok(Some(open.len() as u64))
}
