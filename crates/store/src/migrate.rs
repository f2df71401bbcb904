//! Moving a project from its SQLite file to PostgreSQL (`herd-coordinator migrate`): every row of
//! every table copied with its id, every blob (so every coordinator of the project can serve it), the sequences set past every id ever used (the ledgers'
//! included, so no new replica meets an old grant), all in one PostgreSQL transaction, and the
//! copy checked (every table's count, the ledgers' totals, every volunteer's credit and balance) before it
//! commits. A copy that does not check out is rolled back and nothing is left half done.

use std::path::Path;

use serde::Serialize;

use crate::group::Database;
use crate::postgres::PgDb;
use crate::sql::{Sql, Value};
use crate::sqlite::SqliteDb;
use crate::{SqliteStore, StoreError, reads};

/// The tables in the order their references allow, with the columns both schemas share.
const TABLES: &[(&str, &[&str])] = &[
    (
        "volunteers",
        &[
            "id",
            "name",
            "team",
            "rac",
            "rac_ms",
            "created_ms",
            "name_key",
            "key_hash",
            "revoked_key_hash",
            "balance",
            "overdraft",
            "token_hash",
        ],
    ),
    ("teams", &["id", "name", "created_ms"]),
    // After the volunteers: a researcher is an account's permission to submit.
    (
        "researchers",
        &[
            "id",
            "name",
            "token_hash",
            "created_ms",
            "account_id",
            "revoked_ms",
        ],
    ),
    (
        "hosts",
        &[
            "id",
            "public_key",
            "volunteer_id",
            "cores",
            "registered_ms",
            "last_seen_ms",
            "rac",
            "rac_ms",
            "refused_reports",
            "consecutive_valid",
            "valid_results",
            "timeouts_in_a_row",
        ],
    ),
    (
        "batches",
        &[
            "id",
            "module_hash",
            "quorum",
            "max_total_replicas",
            "max_error_replicas",
            "replica_deadline_ms",
            "fuel_limit",
            "memory_limit_bytes",
            "output_limit_bytes",
            "created_ms",
            "initial_replicas",
            "max_success_replicas",
            "priority",
            "trust_after",
            "spot_check_ppm",
            "researcher_id",
            "distinct_networks",
            "bid_milli",
            "pause_when_broke",
            "seasoned_after",
        ],
    ),
    (
        "units",
        &[
            "id",
            "batch_id",
            "name",
            "input_hash",
            "seed",
            "state",
            "canonical",
            "failure",
            "alone",
            "alone_host_id",
            "alone_replica_id",
            "settled_ms",
        ],
    ),
    (
        "replicas",
        &[
            "id",
            "unit_id",
            "host_id",
            "volunteer_id",
            "assigned_ms",
            "deadline_ms",
            "state",
            "result",
            "abort_reason",
            "validity",
            "reported_ms",
            "output_hash",
            "network",
            "seasoned",
        ],
    ),
    (
        "credit",
        &[
            "id",
            "replica_id",
            "volunteer_id",
            "host_id",
            "fuel",
            "granted_ms",
        ],
    ),
    (
        "credit_revoked",
        &[
            "id",
            "replica_id",
            "volunteer_id",
            "host_id",
            "fuel",
            "revoked_ms",
        ],
    ),
    (
        "ledger",
        &[
            "id",
            "account_id",
            "kind",
            "amount",
            "batch_id",
            "unit_id",
            "counterpart_id",
            "memo",
            "created_ms",
        ],
    ),
    ("blob_uploads", &["hash", "researcher_id"]),
    (
        "invitations",
        &["code_hash", "created_ms", "used_by", "used_ms"],
    ),
];

/// What a migration copied.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Migrated {
    /// Rows per table, in copy order.
    pub tables: Vec<(String, u64)>,
    /// Fuel granted and fuel revoked, in both databases alike.
    pub granted_fuel: u64,
    pub revoked_fuel: u64,
    /// Blobs copied, and their bytes.
    pub blobs: u64,
    pub blob_bytes: u64,
}

/// Held blob bytes sent to the server at a time while copying blobs.
const BLOB_FLUSH_BYTES: usize = 64 << 20;

/// Copies the project in the SQLite file at `sqlite` (migrated to the current schema first) and
/// its `blobs` (the data directory's blob store, each blob's bytes) into the empty PostgreSQL
/// database at `url`, and checks the copy. Refused if the database already holds a project. No
/// coordinator may be running on the file meanwhile.
pub fn migrate_sqlite_to_postgres(
    sqlite: &Path,
    url: &str,
    blobs: impl IntoIterator<Item = Result<Vec<u8>, StoreError>>,
) -> Result<Migrated, StoreError> {
    if !sqlite.exists() {
        return Err(StoreError::Invalid(format!(
            "{} does not exist: there is no project to migrate",
            sqlite.display()
        )));
    }
    // Opening the store brings an older file to the current schema.
    drop(SqliteStore::open(sqlite)?);
    let mut source = SqliteDb::read_only(sqlite)?;
    let mut target = PgDb::connect(url)?;
    target.create_schema()?;
    target.begin()?;
    let result = copy(&mut source, &mut target, blobs);
    match result {
        Ok(migrated) => {
            target.commit()?;
            Ok(migrated)
        }
        Err(error) => {
            target.rollback();
            Err(error)
        }
    }
}

fn copy(
    source: &mut SqliteDb,
    target: &mut PgDb,
    blobs: impl IntoIterator<Item = Result<Vec<u8>, StoreError>>,
) -> Result<Migrated, StoreError> {
    for (table, _) in TABLES {
        let rows = target.number(&format!("SELECT COUNT(*) FROM {table}"), &[])?;
        if rows > 0 {
            return Err(StoreError::Invalid(format!(
                "the database already holds a project ({rows} rows in `{table}`); migrate into an \
                 empty database"
            )));
        }
    }
    let mut tables = Vec::new();
    for (table, columns) in TABLES {
        let list = columns.join(", ");
        let rows = source.query(&format!("SELECT {list} FROM {table}"), &[])?;
        let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
        let insert = format!(
            "INSERT INTO {table} ({list}) VALUES ({})",
            placeholders.join(", ")
        );
        for row in &rows {
            target.execute(&insert, &row.0)?;
        }
        tables.push((table.to_string(), rows.len() as u64));
    }
    set_sequences(source, target)?;
    let (mut count, mut bytes, mut held) = (0u64, 0u64, 0usize);
    let mut hashes = std::collections::HashSet::new();
    for blob in blobs {
        let blob = blob?;
        let hash = crate::ContentHash::of(&blob).to_hex();
        if !hashes.insert(hash.clone()) {
            continue;
        }
        count += 1;
        bytes += blob.len() as u64;
        held += blob.len();
        target.execute(
            "INSERT INTO blobs (hash, bytes) VALUES (?1, ?2)",
            &[Value::from(hash), Value::Blob(blob)],
        )?;
        if held >= BLOB_FLUSH_BYTES {
            target.flush()?;
            held = 0;
        }
    }
    let mut migrated = check(source, target, tables)?;
    let kept = target.number("SELECT COUNT(*) FROM blobs", &[])?;
    if kept != count {
        return Err(StoreError::Corrupt(format!(
            "blobs: {count} read, {kept} in PostgreSQL"
        )));
    }
    migrated.blobs = count;
    migrated.blob_bytes = bytes;
    Ok(migrated)
}

/// Every sequence past every id the project ever used.
fn set_sequences(source: &mut SqliteDb, target: &mut PgDb) -> Result<(), StoreError> {
    for table in ["batches", "units", "replicas", "ledger"] {
        // SQLite's counter remembers ids of retired rows; the ledgers remember purged replicas.
        let mut last = source
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = ?1",
                &[Value::from(table)],
            )?
            .map(|row| row.u64(0))
            .transpose()?
            .unwrap_or(0);
        last = last.max(source.number(
            &format!("SELECT CAST(COALESCE(MAX(id), 0) AS BIGINT) FROM {table}"),
            &[],
        )?);
        if table == "replicas" {
            for ledger in ["credit", "credit_revoked"] {
                last = last.max(source.number(
                    &format!("SELECT CAST(COALESCE(MAX(replica_id), 0) AS BIGINT) FROM {ledger}"),
                    &[],
                )?);
            }
        }
        if last > 0 {
            target.query(
                &format!("SELECT setval('{table}_id_seq', ?1)"),
                &[Value::from(last)],
            )?;
        }
    }
    for table in [
        "researchers",
        "volunteers",
        "teams",
        "hosts",
        "credit",
        "credit_revoked",
    ] {
        let last = target.number(
            &format!("SELECT CAST(COALESCE(MAX(id), 0) AS BIGINT) FROM {table}"),
            &[],
        )?;
        if last > 0 {
            target.query(
                &format!("SELECT setval(pg_get_serial_sequence('{table}', 'id'), ?1)"),
                &[Value::from(last)],
            )?;
        }
    }
    Ok(())
}

/// The copy against the original: every table's count, the ledgers' totals, and every
/// volunteer's credit and replica count.
fn check(
    source: &mut SqliteDb,
    target: &mut PgDb,
    tables: Vec<(String, u64)>,
) -> Result<Migrated, StoreError> {
    for (table, copied) in &tables {
        let there = target.number(&format!("SELECT COUNT(*) FROM {table}"), &[])?;
        if there != *copied {
            return Err(StoreError::Corrupt(format!(
                "`{table}`: {copied} rows read, {there} in PostgreSQL"
            )));
        }
    }
    let total = |db: &mut dyn Sql, ledger: &str| {
        db.number(
            &format!("SELECT CAST(COALESCE(SUM(fuel), 0) AS BIGINT) FROM {ledger}"),
            &[],
        )
    };
    let (granted, revoked) = (total(source, "credit")?, total(source, "credit_revoked")?);
    let copied = (total(target, "credit")?, total(target, "credit_revoked")?);
    if copied != (granted, revoked) {
        return Err(StoreError::Corrupt(format!(
            "credit: {granted} granted and {revoked} revoked in SQLite, {} and {} in PostgreSQL",
            copied.0, copied.1
        )));
    }
    let lines = |db: &mut dyn Sql| -> Result<Vec<(String, u64, u64)>, StoreError> {
        Ok(reads::credit_totals(db, 0)?
            .volunteers
            .into_iter()
            .map(|v| (v.name, v.fuel, v.replicas))
            .collect())
    };
    if lines(source)? != lines(target)? {
        return Err(StoreError::Corrupt(
            "volunteers' credit differs between SQLite and PostgreSQL".into(),
        ));
    }
    let balances = |db: &mut dyn Sql| -> Result<Vec<(u64, i64)>, StoreError> {
        db.query("SELECT id, balance FROM volunteers ORDER BY id", &[])?
            .iter()
            .map(|row| Ok((row.u64(0)?, row.int(1)?)))
            .collect()
    };
    if balances(source)? != balances(target)? {
        return Err(StoreError::Corrupt(
            "accounts' balances differ between SQLite and PostgreSQL".into(),
        ));
    }
    Ok(Migrated {
        tables,
        granted_fuel: granted,
        revoked_fuel: revoked,
        blobs: 0,
        blob_bytes: 0,
    })
}
