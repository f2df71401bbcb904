//! Accounts: who a volunteer is, and how a machine proves it computes for them.
//!
//! An account is a row of `volunteers`: a name (unique ignoring ASCII case, through its
//! `name_key`), a team, and an account key kept only as its hash (`key_hash`). A host attaches
//! to an account by presenting the key ([`attach_host`]); the key a host presented before it was
//! replaced or revoked is kept as `revoked_key_hash`, so such a host is told its key was revoked
//! rather than that it is unknown. On a project with anonymous volunteers a host may still
//! register by name alone ([`register_host`]), and such a name belongs to the machine that first
//! used it: another host giving it is refused, and so is anyone giving the name of an account
//! that has a key. Invitation codes (`invitations`, kept as hashes too) are spent by the sign-up
//! they let in, once.

use herd_lifecycle::HostTrust;
use herd_protocol::PublicKey;

use crate::live::{Live, LiveHost};
use crate::sql::{Sql, args};
use crate::{Account, HostRecord, KeyChange, StoreError};

/// The form of a name that must be unique: trimmed, ASCII letters in lower case. Both databases'
/// `lower()` agree with it (SQLite's folds only ASCII; PostgreSQL's is asked for the `C`
/// collation's), so the schema's migration computes it for existing rows the same way.
pub(crate) fn name_key(name: &str) -> String {
    name.trim().to_ascii_lowercase()
}

/// Names volunteers (accounts) and teams may have: 1 to 64 printable characters.
pub(crate) fn check_names(volunteer: &str, team: Option<&str>) -> Result<(), StoreError> {
    let name = volunteer.trim();
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(StoreError::Invalid(format!(
            "volunteer name `{}` must be 1 to 64 printable characters",
            volunteer.escape_debug()
        )));
    }
    if let Some(team) = team
        && (team.trim().is_empty() || team.len() > 64 || team.chars().any(char::is_control))
    {
        return Err(StoreError::Invalid(format!(
            "team name `{}` must be 1 to 64 printable characters",
            team.escape_debug()
        )));
    }
    Ok(())
}

/// The columns [`account_from_row`] reads.
const ACCOUNT_COLUMNS: &str = "id, name, team, created_ms, key_hash IS NOT NULL";

fn account_from_row(row: &crate::sql::Row) -> Result<Account, StoreError> {
    Ok(Account {
        id: row.u64(0)?,
        name: row.text(1)?,
        team: row.opt_text(2)?,
        created_ms: row.u64(3)?,
        has_key: row.bool(4)?,
    })
}

/// The account called `name` (ignoring ASCII case).
pub(crate) fn by_name(tx: &mut dyn Sql, name: &str) -> Result<Option<Account>, StoreError> {
    tx.query_row(
        &format!("SELECT {ACCOUNT_COLUMNS} FROM volunteers WHERE name_key = ?1"),
        &args![name_key(name)],
    )?
    .map(|row| account_from_row(&row))
    .transpose()
}

/// The account whose API token hashes to `token_hash`.
pub(crate) fn by_token(tx: &mut dyn Sql, token_hash: &str) -> Result<Option<Account>, StoreError> {
    tx.query_row(
        &format!("SELECT {ACCOUNT_COLUMNS} FROM volunteers WHERE token_hash = ?1"),
        &args![token_hash],
    )?
    .map(|row| account_from_row(&row))
    .transpose()
}

/// Gives the account `id` the API token whose hash is `token_hash`, replacing any it had: one
/// token per account, which its submit permission (if it has one) answers to as well.
pub(crate) fn set_token(tx: &mut dyn Sql, id: u64, token_hash: &str) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE volunteers SET token_hash = ?2 WHERE id = ?1",
        &args![id, token_hash],
    )?;
    tx.execute(
        "UPDATE researchers SET token_hash = ?2 WHERE account_id = ?1",
        &args![id, token_hash],
    )
}

fn ensure_team(tx: &mut dyn Sql, team: Option<&str>, now_ms: u64) -> Result<(), StoreError> {
    if let Some(team) = team {
        tx.execute(
            "INSERT INTO teams (name, created_ms) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
            &args![team, now_ms],
        )?;
    }
    Ok(())
}

/// Creates an account with its key's hash (and its API token's); with `invitation`, spends that
/// invitation code (its hash), refusing the sign-up if the code is unknown or spent.
pub(crate) fn create(
    tx: &mut dyn Sql,
    name: &str,
    team: Option<&str>,
    (key_hash, token_hash): (&str, Option<&str>),
    invitation: Option<&str>,
    now_ms: u64,
) -> Result<Account, StoreError> {
    check_names(name, team)?;
    let (name, team) = (name.trim(), team.map(str::trim));
    if let Some(taken) = by_name(tx, name)? {
        return Err(StoreError::Taken(format!(
            "the name `{name}` is taken (by `{}`); choose another",
            taken.name
        )));
    }
    let id = tx
        .query_one(
            "INSERT INTO volunteers (name, name_key, team, key_hash, token_hash, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
            &args![name, name_key(name), team, key_hash, token_hash, now_ms],
        )?
        .u64(0)?;
    if let Some(code_hash) = invitation {
        let spent = tx.execute_count(
            "UPDATE invitations SET used_by = ?2, used_ms = ?3
             WHERE code_hash = ?1 AND used_by IS NULL",
            &args![code_hash, id, now_ms],
        )?;
        if spent == 0 {
            // Refused: the job's savepoint takes the account back with it.
            return Err(StoreError::NotAllowed(
                "the invitation code is unknown or has been used; ask the project for another"
                    .into(),
            ));
        }
    }
    ensure_team(tx, team, now_ms)?;
    Ok(Account {
        id,
        name: name.to_owned(),
        team: team.map(str::to_owned),
        created_ms: now_ms,
        has_key: true,
    })
}

/// Gives the account called `name` a new key (its hash), or with `None` revokes its key. The key
/// it replaces is kept as revoked. `None` if there is no such account.
pub(crate) fn set_key(
    tx: &mut dyn Sql,
    name: &str,
    key_hash: Option<&str>,
) -> Result<Option<KeyChange>, StoreError> {
    let Some(row) = tx.query_row(
        "SELECT key_hash FROM volunteers WHERE name_key = ?1",
        &args![name_key(name)],
    )?
    else {
        return Ok(None);
    };
    let replaced = row.opt_text(0)?;
    tx.execute(
        "UPDATE volunteers SET key_hash = ?2, revoked_key_hash = COALESCE(key_hash, revoked_key_hash)
         WHERE name_key = ?1",
        &args![name_key(name), key_hash],
    )?;
    let account = by_name(tx, name)?
        .ok_or_else(|| StoreError::Corrupt(format!("account `{name}` vanished")))?;
    Ok(Some(KeyChange { account, replaced }))
}

/// Records an invitation code (its hash), good for one sign-up.
pub(crate) fn create_invitation(
    tx: &mut dyn Sql,
    code_hash: &str,
    now_ms: u64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO invitations (code_hash, created_ms) VALUES (?1, ?2)",
        &args![code_hash, now_ms],
    )
}

/// The account whose host is `key`, if the host is registered.
fn host_owner(tx: &mut dyn Sql, key: &PublicKey) -> Result<Option<u64>, StoreError> {
    tx.query_row(
        "SELECT volunteer_id FROM hosts WHERE public_key = ?1",
        &args![&key.0[..]],
    )?
    .map(|row| row.u64(0))
    .transpose()
}

/// Attaches a host to the account whose key hashes to `key_hash` (the coordinator checked the
/// host's proof of its own key, the caller the team's name). The key proves the account, so a hello naming a team moves the
/// account to it; one naming none leaves it as it is. A host registered to another account
/// before moves to this one (replicas already assigned keep the volunteer they were assigned
/// under).
pub(crate) fn attach_host(
    tx: &mut dyn Sql,
    live: &mut Live,
    key: &PublicKey,
    key_hash: &str,
    team: Option<&str>,
    cores: u32,
    now_ms: u64,
) -> Result<HostRecord, StoreError> {
    let team = team.map(str::trim);
    let Some(row) = tx.query_row(
        "SELECT id, team, name FROM volunteers WHERE key_hash = ?1",
        &args![key_hash],
    )?
    else {
        let revoked = tx
            .query_row(
                "SELECT 1 FROM volunteers WHERE revoked_key_hash = ?1",
                &args![key_hash],
            )?
            .is_some();
        return Err(StoreError::UnknownAccount { revoked });
    };
    let (volunteer_id, current, name) = (row.u64(0)?, row.opt_text(1)?, row.text(2)?);
    if team.is_some() && team != current.as_deref() {
        tx.execute(
            "UPDATE volunteers SET team = ?2 WHERE id = ?1",
            &args![volunteer_id, team],
        )?;
        ensure_team(tx, team, now_ms)?;
    }
    upsert_host(tx, live, key, (volunteer_id, name), cores, now_ms)
}

/// Registers (or updates) a host by volunteer name alone, on a project with anonymous
/// volunteers; names were checked by the caller, and the host's proof of its key by the
/// coordinator. The rules are [`Store::register_host`]'s.
///
/// [`Store::register_host`]: crate::Store::register_host
pub(crate) fn register_host(
    tx: &mut dyn Sql,
    live: &mut Live,
    key: &PublicKey,
    volunteer: &str,
    team: Option<&str>,
    cores: u32,
    now_ms: u64,
) -> Result<HostRecord, StoreError> {
    let owner = host_owner(tx, key)?;
    let existing = tx.query_row(
        "SELECT id, team, key_hash IS NOT NULL OR revoked_key_hash IS NOT NULL, name
         FROM volunteers WHERE name_key = ?1",
        &args![name_key(volunteer)],
    )?;
    let (volunteer_id, name) = match existing {
        None => {
            let id = tx
                .query_one(
                    "INSERT INTO volunteers (name, name_key, team, created_ms)
                     VALUES (?1, ?2, ?3, ?4) RETURNING id",
                    &args![volunteer, name_key(volunteer), team, now_ms],
                )?
                .u64(0)?;
            ensure_team(tx, team, now_ms)?;
            (id, volunteer.to_owned())
        }
        Some(row) => {
            let (id, current, keyed, name) =
                (row.u64(0)?, row.opt_text(1)?, row.bool(2)?, row.text(3)?);
            if keyed {
                // An account that has (or had) a key is reached only through one.
                return Err(StoreError::NotAllowed(format!(
                    "`{name}` is an account with an account key: a machine computes for it only \
                     when attached with that key (herd-worker attach --data-dir DIR)"
                )));
            }
            if owner != Some(id) {
                let others = tx.number(
                    "SELECT COUNT(*) FROM hosts WHERE volunteer_id = ?1",
                    &args![id],
                )?;
                if others > 0 {
                    return Err(StoreError::NotAllowed(format!(
                        "the volunteer name `{name}` is held by another machine; choose another \
                         name, or create an account and attach every machine with its key"
                    )));
                }
            }
            if current.as_deref() != team {
                tx.execute(
                    "UPDATE volunteers SET team = ?2 WHERE id = ?1",
                    &args![id, team],
                )?;
                ensure_team(tx, team, now_ms)?;
            }
            (id, name)
        }
    };
    upsert_host(tx, live, key, (volunteer_id, name), cores, now_ms)
}

/// The host's row and its live record, under the volunteer `(id, name)`.
fn upsert_host(
    tx: &mut dyn Sql,
    live: &mut Live,
    key: &PublicKey,
    (volunteer_id, volunteer): (u64, String),
    cores: u32,
    now_ms: u64,
) -> Result<HostRecord, StoreError> {
    let row = tx.query_one(
        "INSERT INTO hosts (public_key, volunteer_id, cores, registered_ms, last_seen_ms)
         VALUES (?1, ?2, ?3, ?4, ?4)
         ON CONFLICT (public_key) DO UPDATE SET
            volunteer_id = excluded.volunteer_id, cores = excluded.cores,
            last_seen_ms = excluded.last_seen_ms
         RETURNING id, consecutive_valid, valid_results, timeouts_in_a_row",
        &args![&key.0[..], volunteer_id, cores, now_ms],
    )?;
    let (host_id, consecutive_valid) = (row.u64(0)?, row.u32(1)?);
    let (valid_results, timeouts_in_a_row) = (row.u64(2)?, row.u32(3)?);
    let host = live.hosts.entry(host_id).or_insert_with(|| LiveHost {
        volunteer_id,
        cores,
        key: *key,
        last_seen_ms: now_ms,
        trust: HostTrust { consecutive_valid },
        valid_results,
        timeouts_in_a_row,
        in_flight: Default::default(),
    });
    host.volunteer_id = volunteer_id;
    host.cores = cores;
    host.key = *key;
    host.last_seen_ms = now_ms;
    host.trust = HostTrust { consecutive_valid };
    host.valid_results = valid_results;
    host.timeouts_in_a_row = timeouts_in_a_row;
    Ok(HostRecord {
        host_id,
        volunteer_id,
        volunteer,
        cores,
    })
}
