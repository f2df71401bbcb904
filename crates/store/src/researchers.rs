//! Researchers and what each may see: their tokens (stored as hashes), their batches, the
//! blobs they uploaded and the blobs of their batches, and cancelling a batch.
//!
//! A researcher is an account's permission to submit (`researchers.account_id`): the row holds
//! the account's API token and owns its batches, and withdrawing the permission
//! (`revoked_ms`) makes the token answer nothing while the batches stay the researcher's.

use crate::live::Live;
use crate::sql::{Row, Sql, WorkChange, args};
use crate::{BatchSummary, Researcher, StoreError};
use herd_protocol::ContentHash;

/// Researcher names: what `herd researcher add` accepts.
pub(crate) fn check_name(name: &str) -> Result<(), StoreError> {
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

fn by_name(tx: &mut dyn Sql, name: &str) -> Result<Option<Researcher>, StoreError> {
    let Some(row) = tx.query_row("SELECT id FROM researchers WHERE name = ?1", &args![name])?
    else {
        return Ok(None);
    };
    Ok(Some(Researcher {
        id: row.u64(0)?,
        name: name.to_owned(),
    }))
}

/// The account called `name`, created (with no key) if there is none.
fn account_for(tx: &mut dyn Sql, name: &str, now_ms: u64) -> Result<u64, StoreError> {
    if let Some(account) = crate::accounts::by_name(tx, name)? {
        return Ok(account.id);
    }
    tx.query_one(
        "INSERT INTO volunteers (name, name_key, created_ms) VALUES (?1, ?2, ?3) RETURNING id",
        &args![name, crate::accounts::name_key(name), now_ms],
    )?
    .u64(0)
}

/// The researcher `name` with this token, linked to the account of that name (made if new),
/// its permission to submit restored: the coordinator's administrator, at every start.
pub(crate) fn ensure(
    tx: &mut dyn Sql,
    name: &str,
    token_hash: &str,
    now_ms: u64,
) -> Result<Researcher, StoreError> {
    check_name(name)?;
    let researcher = match by_name(tx, name)? {
        Some(found) => {
            let linked = tx
                .query_one(
                    "SELECT account_id FROM researchers WHERE id = ?1",
                    &args![found.id],
                )?
                .opt_u64(0)?;
            let account_id = match linked {
                Some(id) => id,
                None => account_for(tx, name, now_ms)?,
            };
            tx.execute(
                "UPDATE researchers SET token_hash = ?2, revoked_ms = NULL, account_id = ?3
                 WHERE id = ?1",
                &args![found.id, token_hash, account_id],
            )?;
            crate::accounts::set_token(tx, account_id, token_hash)?;
            found
        }
        None => {
            let account_id = account_for(tx, name, now_ms)?;
            insert(tx, name, token_hash, account_id, now_ms)?
        }
    };
    tx.execute(
        "UPDATE batches SET researcher_id = ?1 WHERE researcher_id IS NULL",
        &args![researcher.id],
    )?;
    // The administrator's account is the project's own: it pays for the project's bids and may
    // go below zero without limit (`ledger.rs`).
    tx.execute(
        "UPDATE volunteers SET overdraft = NULL
         WHERE id = (SELECT account_id FROM researchers WHERE id = ?1)",
        &args![researcher.id],
    )?;
    Ok(researcher)
}

/// A new researcher: a new account (with no key) that may submit. A name an account already
/// has is refused: that account gets the permission explicitly ([`grant_submit`]), so a
/// sign-up cannot be handed someone else's permission by a coincidence of names.
pub(crate) fn add(
    tx: &mut dyn Sql,
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
    if let Some(account) = crate::accounts::by_name(tx, name)? {
        return Err(StoreError::Taken(format!(
            "`{}` is an account already: give it the permission to submit with `herd account \
             grant {} submit`",
            account.name, account.name
        )));
    }
    let account_id = account_for(tx, name, now_ms)?;
    insert(tx, name, token_hash, account_id, now_ms)
}

fn insert(
    tx: &mut dyn Sql,
    name: &str,
    token_hash: &str,
    account_id: u64,
    now_ms: u64,
) -> Result<Researcher, StoreError> {
    let id = tx
        .query_one(
            "INSERT INTO researchers (name, token_hash, created_ms, account_id)
             VALUES (?1, ?2, ?3, ?4) RETURNING id",
            &args![name, token_hash, now_ms, account_id],
        )?
        .u64(0)?;
    crate::accounts::set_token(tx, account_id, token_hash)?;
    Ok(Researcher {
        id,
        name: name.to_owned(),
    })
}

/// Gives the account called `account` the permission to submit, with a new API token (the
/// hash): a researcher of its own if it had none, or its researcher again (keeping its batches,
/// the old token dead) if it had one. `None` if there is no such account.
pub(crate) fn grant_submit(
    tx: &mut dyn Sql,
    account: &str,
    token_hash: &str,
    now_ms: u64,
) -> Result<Option<Researcher>, StoreError> {
    let Some(account) = crate::accounts::by_name(tx, account)? else {
        return Ok(None);
    };
    if let Some(row) = tx.query_row(
        "SELECT id, name FROM researchers WHERE account_id = ?1",
        &args![account.id],
    )? {
        let researcher = Researcher {
            id: row.u64(0)?,
            name: row.text(1)?,
        };
        tx.execute(
            "UPDATE researchers SET token_hash = ?2, revoked_ms = NULL WHERE id = ?1",
            &args![researcher.id, token_hash],
        )?;
        crate::accounts::set_token(tx, account.id, token_hash)?;
        return Ok(Some(researcher));
    }
    if by_name(tx, &account.name)?.is_some() {
        return Err(StoreError::Taken(format!(
            "a researcher of another account is called `{}`",
            account.name
        )));
    }
    insert(tx, &account.name, token_hash, account.id, now_ms).map(Some)
}

/// Withdraws the account's permission to submit: its token answers nothing from now on, its
/// batches stay. `None` if there is no such account; `Some(false)` if it had no permission.
pub(crate) fn deny_submit(
    tx: &mut dyn Sql,
    account: &str,
    now_ms: u64,
) -> Result<Option<bool>, StoreError> {
    let Some(account) = crate::accounts::by_name(tx, account)? else {
        return Ok(None);
    };
    let changed = tx.execute_count(
        "UPDATE researchers SET revoked_ms = ?2 WHERE account_id = ?1 AND revoked_ms IS NULL",
        &args![account.id, now_ms],
    )?;
    Ok(Some(changed > 0))
}

pub(crate) fn by_token(
    tx: &mut dyn Sql,
    token_hash: &str,
) -> Result<Option<Researcher>, StoreError> {
    let Some(row) = tx.query_row(
        "SELECT id, name FROM researchers WHERE token_hash = ?1 AND revoked_ms IS NULL",
        &args![token_hash],
    )?
    else {
        return Ok(None);
    };
    Ok(Some(Researcher {
        id: row.u64(0)?,
        name: row.text(1)?,
    }))
}

/// The columns [`summary_from_row`] reads, from `batches b`.
const SUMMARY_COLUMNS: &str = "b.id, b.module_hash, b.quorum, b.priority, b.created_ms,
    (SELECT COUNT(*) FROM units u WHERE u.batch_id = b.id AND u.state = 'open'),
    (SELECT COUNT(*) FROM units u WHERE u.batch_id = b.id AND u.state = 'validated'),
    (SELECT COUNT(*) FROM units u WHERE u.batch_id = b.id AND u.state = 'failed'),
    b.researcher_id";

fn summary_from_row(row: &Row) -> Result<(u64, BatchSummary), StoreError> {
    let (open, validated, failed) = (row.u64(5)?, row.u64(6)?, row.u64(7)?);
    Ok((
        row.opt_u64(8)?.unwrap_or(0),
        BatchSummary {
            id: row.u64(0)?,
            module: row.text(1)?,
            quorum: row.u32(2)?,
            priority: row.i32(3)?,
            created_ms: row.u64(4)?,
            total: open + validated + failed,
            open,
            validated,
            failed,
        },
    ))
}

pub(crate) fn list_batches(
    tx: &mut dyn Sql,
    researcher_id: u64,
    after: u64,
    limit: u32,
) -> Result<Vec<BatchSummary>, StoreError> {
    tx.query(
        &format!(
            "SELECT {SUMMARY_COLUMNS} FROM batches b
             WHERE b.researcher_id = ?1 AND b.id > ?2 ORDER BY b.id LIMIT ?3"
        ),
        &args![researcher_id, after, limit],
    )?
    .iter()
    .map(|row| Ok(summary_from_row(row)?.1))
    .collect()
}

/// A batch's counts and whose it is.
pub(crate) fn summary(
    tx: &mut dyn Sql,
    batch_id: u64,
) -> Result<Option<(u64, BatchSummary)>, StoreError> {
    tx.query_row(
        &format!("SELECT {SUMMARY_COLUMNS} FROM batches b WHERE b.id = ?1"),
        &args![batch_id],
    )?
    .as_ref()
    .map(summary_from_row)
    .transpose()
}

pub(crate) fn owner(tx: &mut dyn Sql, batch_id: u64) -> Result<Option<u64>, StoreError> {
    tx.query_row(
        "SELECT researcher_id FROM batches WHERE id = ?1",
        &args![batch_id],
    )?
    .map(|row| Ok(row.opt_u64(0)?.unwrap_or(0)))
    .transpose()
}

/// Records that the researcher uploaded these blobs (each once).
pub(crate) fn record_uploads(
    tx: &mut dyn Sql,
    researcher_id: u64,
    hashes: &[ContentHash],
) -> Result<(), StoreError> {
    for hash in hashes {
        tx.execute(
            "INSERT INTO blob_uploads (hash, researcher_id) VALUES (?1, ?2)
             ON CONFLICT (hash, researcher_id) DO NOTHING",
            &args![hash.to_hex(), researcher_id],
        )?;
    }
    Ok(())
}

/// Whether the researcher holds the blob: uploaded it, or one of their batches uses it (its
/// module, an input, or an output a replica reported).
pub(crate) fn blob_visible(
    tx: &mut dyn Sql,
    researcher_id: u64,
    hash: &str,
) -> Result<bool, StoreError> {
    tx.query_one(
        "SELECT EXISTS (SELECT 1 FROM blob_uploads WHERE hash = ?2 AND researcher_id = ?1)
         OR EXISTS (SELECT 1 FROM batches WHERE researcher_id = ?1 AND module_hash = ?2)
         OR EXISTS (SELECT 1 FROM units u JOIN batches b ON b.id = u.batch_id
                    WHERE u.input_hash = ?2 AND b.researcher_id = ?1)
         OR EXISTS (SELECT 1 FROM replicas r JOIN units u ON u.id = r.unit_id
                    JOIN batches b ON b.id = u.batch_id
                    WHERE r.output_hash = ?2 AND b.researcher_id = ?1)",
        &args![researcher_id, hash],
    )?
    .bool(0)
}

pub(crate) fn cancel(
    tx: &mut dyn Sql,
    live: &mut Live,
    batch_id: u64,
) -> Result<Option<u64>, StoreError> {
    if owner(tx, batch_id)?.is_none() {
        return Ok(None);
    }
    // Its units in every shard: no other coordinator decides any of them meanwhile.
    tx.announce(WorkChange::Barrier)?;
    let open = tx.query(
        "SELECT id FROM units WHERE batch_id = ?1 AND state = 'open'",
        &args![batch_id],
    )?;
    tx.execute(
        "UPDATE units SET state = 'failed', failure = 'cancelled by the researcher'
         WHERE batch_id = ?1 AND state = 'open'",
        &args![batch_id],
    )?;
    for row in &open {
        live.close_unit(row.u64(0)?);
    }
    Ok(Some(open.len() as u64))
}
