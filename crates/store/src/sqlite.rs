//! The SQLite backend of [`Store`](crate::Store): one database file, WAL journal,
//! `synchronous=FULL` so a committed transaction survives power loss.
//!
//! One writer thread owns the connection and, beside it, the live work in memory
//! ([`Live`](crate::live::Live)): assignment and settling reports are decided in memory and
//! written to SQLite, so the hot path runs no query; SQLite is the durable record and the source
//! `Live` is loaded from at start. Reads run on their own connections (WAL lets them read while
//! the writer writes), so dashboards never wait behind the hot path.

use std::path::{Path, PathBuf};

use rusqlite::functions::FunctionFlags;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::group::Database;
use crate::operations::Backend;
use crate::sql::{Row, Sequence, Sql, Value, args};
use crate::threads::{Reader, Threads};
use crate::{StoreError, work};

const SCHEMA_VERSION: i64 = 15;

/// Migrations from each version to the next: `MIGRATIONS[0]` takes version 1 to 2.
const MIGRATIONS: &[&str] = &[
    // 2: recent average credit per volunteer and host; refused reports counted against hosts.
    "ALTER TABLE volunteers ADD COLUMN rac REAL NOT NULL DEFAULT 0;
     ALTER TABLE volunteers ADD COLUMN rac_ms INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE hosts ADD COLUMN rac REAL NOT NULL DEFAULT 0;
     ALTER TABLE hosts ADD COLUMN rac_ms INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE hosts ADD COLUMN refused_reports INTEGER NOT NULL DEFAULT 0;",
    // 3: the rest of BOINC's replication policy per batch, and batch priority.
    "ALTER TABLE batches ADD COLUMN initial_replicas INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE batches ADD COLUMN max_success_replicas INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE batches ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
     UPDATE batches SET initial_replicas = quorum, max_success_replicas = 4 * quorum;
     CREATE INDEX units_by_batch ON units (batch_id, state, id);",
    // 4: the credit ledger outlives the replicas it records (a retired batch's rows are purged,
    // its grants stay), so `replica_id` is no longer a foreign key; it stays unique.
    "CREATE TABLE credit_v4 (
         id INTEGER PRIMARY KEY,
         replica_id INTEGER NOT NULL UNIQUE,
         volunteer_id INTEGER NOT NULL REFERENCES volunteers(id),
         host_id INTEGER NOT NULL REFERENCES hosts(id),
         fuel INTEGER NOT NULL,
         granted_ms INTEGER NOT NULL
     );
     INSERT INTO credit_v4 SELECT id, replica_id, volunteer_id, host_id, fuel, granted_ms FROM credit;
     DROP TABLE credit;
     ALTER TABLE credit_v4 RENAME TO credit;
     ALTER TABLE replicas ADD COLUMN output_hash TEXT;
     UPDATE replicas SET output_hash = json_extract(result, '$.output_hash')
         WHERE result IS NOT NULL;
     CREATE INDEX replicas_by_output ON replicas (output_hash);
     CREATE INDEX units_by_input ON units (input_hash);",
    // 5: adaptive replication (per batch; trust per host; units validated alone and whether a
    // later check confirmed them) and credit revoked from replicas later found invalid.
    "ALTER TABLE batches ADD COLUMN trust_after INTEGER;
     ALTER TABLE batches ADD COLUMN spot_check_ppm INTEGER;
     ALTER TABLE hosts ADD COLUMN consecutive_valid INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE units ADD COLUMN alone INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE units ADD COLUMN alone_host_id INTEGER;
     ALTER TABLE units ADD COLUMN alone_replica_id INTEGER;
     CREATE INDEX units_alone_unconfirmed ON units (alone_host_id) WHERE alone_host_id IS NOT NULL;
     CREATE TABLE credit_revoked (
         id INTEGER PRIMARY KEY,
         replica_id INTEGER NOT NULL UNIQUE,
         volunteer_id INTEGER NOT NULL REFERENCES volunteers(id),
         host_id INTEGER NOT NULL REFERENCES hosts(id),
         fuel INTEGER NOT NULL,
         revoked_ms INTEGER NOT NULL
     );",
    // 6: batch, unit and replica ids are never reused. Retiring the newest batch purged the
    // highest ids and SQLite handed them out again: a researcher's batch id could name another
    // batch, and a new replica could meet its id in the credit ledger, which outlives purged
    // replicas, and lose its grant. AUTOINCREMENT tables, their counters starting above every
    // id ever used (the ledgers included). Foreign keys are off while migrating.
    "CREATE TABLE batches_v6 (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         module_hash TEXT NOT NULL,
         quorum INTEGER NOT NULL,
         max_total_replicas INTEGER NOT NULL,
         max_error_replicas INTEGER NOT NULL,
         replica_deadline_ms INTEGER NOT NULL,
         fuel_limit INTEGER NOT NULL,
         memory_limit_bytes INTEGER NOT NULL,
         output_limit_bytes INTEGER NOT NULL,
         created_ms INTEGER NOT NULL,
         initial_replicas INTEGER NOT NULL DEFAULT 0,
         max_success_replicas INTEGER NOT NULL DEFAULT 0,
         priority INTEGER NOT NULL DEFAULT 0,
         trust_after INTEGER,
         spot_check_ppm INTEGER
     );
     CREATE TABLE units_v6 (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         batch_id INTEGER NOT NULL REFERENCES batches(id),
         name TEXT NOT NULL,
         input_hash TEXT NOT NULL,
         seed INTEGER NOT NULL,
         state TEXT NOT NULL CHECK (state IN ('open', 'validated', 'failed')),
         canonical TEXT,
         failure TEXT,
         alone INTEGER NOT NULL DEFAULT 0,
         alone_host_id INTEGER,
         alone_replica_id INTEGER,
         UNIQUE (batch_id, name)
     );
     CREATE TABLE replicas_v6 (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         unit_id INTEGER NOT NULL REFERENCES units(id),
         host_id INTEGER NOT NULL REFERENCES hosts(id),
         volunteer_id INTEGER NOT NULL REFERENCES volunteers(id),
         assigned_ms INTEGER NOT NULL,
         deadline_ms INTEGER NOT NULL,
         state TEXT NOT NULL CHECK (state IN ('in_progress', 'reported', 'aborted', 'timed_out')),
         result TEXT,
         abort_reason TEXT,
         validity TEXT NOT NULL DEFAULT 'pending' CHECK (validity IN ('pending', 'valid', 'invalid')),
         reported_ms INTEGER,
         output_hash TEXT
     );
     INSERT INTO batches_v6 SELECT * FROM batches;
     INSERT INTO units_v6 SELECT * FROM units;
     INSERT INTO replicas_v6 SELECT * FROM replicas;
     DROP TABLE replicas;
     DROP TABLE units;
     DROP TABLE batches;
     ALTER TABLE batches_v6 RENAME TO batches;
     ALTER TABLE units_v6 RENAME TO units;
     ALTER TABLE replicas_v6 RENAME TO replicas;
     DELETE FROM sqlite_sequence WHERE name IN ('batches', 'units', 'replicas');
     INSERT INTO sqlite_sequence (name, seq)
         SELECT 'batches', COALESCE(MAX(id), 0) FROM batches
         UNION ALL SELECT 'units', COALESCE(MAX(id), 0) FROM units
         UNION ALL SELECT 'replicas', MAX(COALESCE((SELECT MAX(id) FROM replicas), 0),
                                          COALESCE((SELECT MAX(replica_id) FROM credit), 0),
                                          COALESCE((SELECT MAX(replica_id) FROM credit_revoked), 0));
     CREATE INDEX units_by_state ON units (state, id);
     CREATE INDEX units_by_batch ON units (batch_id, state, id);
     CREATE INDEX units_by_input ON units (input_hash);
     CREATE INDEX units_alone_unconfirmed ON units (alone_host_id) WHERE alone_host_id IS NOT NULL;
     CREATE INDEX replicas_by_unit ON replicas (unit_id);
     CREATE INDEX replicas_in_progress ON replicas (state, deadline_ms);
     CREATE INDEX replicas_by_host ON replicas (host_id, state);
     CREATE INDEX replicas_by_output ON replicas (output_hash);",
    // 7: researchers, each seeing only their own batches. Tokens are kept as hashes. Batches
    // from before belong to the coordinator's administrator (set at start).
    "CREATE TABLE researchers (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         name TEXT NOT NULL UNIQUE,
         token_hash TEXT NOT NULL UNIQUE,
         created_ms INTEGER NOT NULL
     );
     ALTER TABLE batches ADD COLUMN researcher_id INTEGER REFERENCES researchers(id);
     CREATE INDEX batches_by_researcher ON batches (researcher_id, id);",
    // 8: teams with ids and creation times, and volunteers' creation times, for the statistics
    // exports (stats sites key teams and users by id); when each unit was settled, for the
    // project's throughput.
    "CREATE TABLE teams (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         name TEXT NOT NULL UNIQUE,
         created_ms INTEGER NOT NULL
     );
     INSERT INTO teams (name, created_ms)
         SELECT DISTINCT team, 0 FROM volunteers WHERE team IS NOT NULL ORDER BY team;
     ALTER TABLE volunteers ADD COLUMN created_ms INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE units ADD COLUMN settled_ms INTEGER;
     CREATE INDEX units_by_settled ON units (settled_ms) WHERE settled_ms IS NOT NULL;
     CREATE INDEX credit_by_time ON credit (granted_ms);",
    // 9: who uploaded each blob, so a researcher's batch may use only blobs that researcher
    // holds (uploaded, or of their own batches), never another's by knowing its hash.
    "CREATE TABLE blob_uploads (
         hash TEXT NOT NULL,
         researcher_id INTEGER NOT NULL REFERENCES researchers(id),
         PRIMARY KEY (hash, researcher_id)
     ) WITHOUT ROWID;",
    // 10: accounts. A volunteer's name is unique ignoring ASCII case (`name_key`; of names that
    // differed only in case, all but the oldest get `-ID` appended), and an account may hold an
    // account key (its hash) that its machines attach with; the key it held before it was
    // replaced or revoked is kept to tell such a machine so. Invitation codes for sign-ups.
    "ALTER TABLE volunteers ADD COLUMN name_key TEXT;
     ALTER TABLE volunteers ADD COLUMN key_hash TEXT;
     ALTER TABLE volunteers ADD COLUMN revoked_key_hash TEXT;
     UPDATE volunteers SET name = name || '-' || id
         WHERE id NOT IN (SELECT MIN(id) FROM volunteers GROUP BY lower(trim(name)));
     UPDATE volunteers SET name_key = lower(trim(name));
     CREATE UNIQUE INDEX volunteers_by_name_key ON volunteers (name_key);
     CREATE UNIQUE INDEX volunteers_by_key ON volunteers (key_hash);
     CREATE INDEX volunteers_by_revoked_key ON volunteers (revoked_key_hash);
     CREATE TABLE invitations (
         code_hash TEXT PRIMARY KEY,
         created_ms INTEGER NOT NULL,
         used_by INTEGER REFERENCES volunteers(id),
         used_ms INTEGER
     );",
    // 11: the network each replica's host was on when it was assigned
    // (`herd_lifecycle::network_of`; 0 for older replicas, not known), and batches that take at
    // most one replica of a unit from a network.
    "ALTER TABLE replicas ADD COLUMN network INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE batches ADD COLUMN distinct_networks INTEGER NOT NULL DEFAULT 0;",
    // 12: a researcher is an account's permission to submit. Each researcher is linked to the
    // account of its name (made, with no key, if there was none); of researchers whose names
    // differ only in case, the oldest takes that account and each other one an account named
    // `NAME-rID`. A withdrawn permission keeps its row (and its batches), not its token.
    "ALTER TABLE researchers ADD COLUMN account_id INTEGER REFERENCES volunteers(id);
     ALTER TABLE researchers ADD COLUMN revoked_ms INTEGER;
     INSERT INTO volunteers (name, name_key, created_ms)
         SELECT CASE WHEN r.id = (SELECT MIN(o.id) FROM researchers o
                                  WHERE lower(o.name) = lower(r.name))
                     THEN r.name ELSE r.name || '-r' || r.id END,
                CASE WHEN r.id = (SELECT MIN(o.id) FROM researchers o
                                  WHERE lower(o.name) = lower(r.name))
                     THEN lower(r.name) ELSE lower(r.name) || '-r' || r.id END,
                r.created_ms
         FROM researchers r
         WHERE NOT EXISTS (SELECT 1 FROM volunteers v WHERE v.name_key = lower(r.name))
            OR r.id <> (SELECT MIN(o.id) FROM researchers o WHERE lower(o.name) = lower(r.name));
     UPDATE researchers SET account_id = (
         SELECT v.id FROM volunteers v WHERE v.name_key =
             CASE WHEN researchers.id = (SELECT MIN(o.id) FROM researchers o
                                         WHERE lower(o.name) = lower(researchers.name))
                  THEN lower(researchers.name)
                  ELSE lower(researchers.name) || '-r' || researchers.id END);
     CREATE UNIQUE INDEX researchers_by_account ON researchers (account_id);",
    // 13: credit as a balance (`ledger.rs`), and every account's API token (its hash; a
    // researcher's token is its account's). Each account's balance in fuel, kept beside the
    // movements it sums: the grants and revocations of `credit` and `credit_revoked`, and the
    // `ledger`'s spending, grants from the project and transfers. `overdraft` is how far below
    // zero the account may go (NULL: no limit). A batch may bid a price per credit of agreed
    // work (thousandths; 0 is the free tier), and when its owner cannot pay it either pauses or
    // is served as free. No index of `credit` by volunteer: every grant would pay for it on the
    // hot path (17% of validated units/s, BENCHMARKS.md), for statements that are rare reads.
    "ALTER TABLE volunteers ADD COLUMN balance INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE volunteers ADD COLUMN overdraft INTEGER DEFAULT 0;
     UPDATE volunteers SET balance =
         (SELECT COALESCE(SUM(c.fuel), 0) FROM credit c WHERE c.volunteer_id = volunteers.id)
       - (SELECT COALESCE(SUM(x.fuel), 0) FROM credit_revoked x
          WHERE x.volunteer_id = volunteers.id);
     CREATE TABLE ledger (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         account_id INTEGER NOT NULL REFERENCES volunteers(id),
         kind TEXT NOT NULL CHECK (kind IN ('spent', 'granted', 'sent', 'received')),
         amount INTEGER NOT NULL,
         batch_id INTEGER,
         unit_id INTEGER,
         counterpart_id INTEGER REFERENCES volunteers(id),
         memo TEXT,
         created_ms INTEGER NOT NULL
     );
     CREATE INDEX ledger_by_account ON ledger (account_id, id);
     CREATE INDEX ledger_by_batch ON ledger (batch_id) WHERE batch_id IS NOT NULL;
     CREATE INDEX credit_revoked_by_volunteer ON credit_revoked (volunteer_id, id);
     ALTER TABLE batches ADD COLUMN bid_milli INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE batches ADD COLUMN pause_when_broke INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE volunteers ADD COLUMN token_hash TEXT;
     UPDATE volunteers SET token_hash = (SELECT r.token_hash FROM researchers r
                                         WHERE r.account_id = volunteers.id
                                           AND r.revoked_ms IS NULL);
     CREATE UNIQUE INDEX volunteers_by_token ON volunteers (token_hash);",
    // 14: seasoned hosts. Each host's valid results (grants less revocations, counted from the
    // ledgers for the hosts from before), whether each replica's host was seasoned when it was
    // given the replica, and batches whose quorums need a seasoned host.
    "ALTER TABLE hosts ADD COLUMN valid_results INTEGER NOT NULL DEFAULT 0;
     UPDATE hosts SET valid_results =
         (SELECT COUNT(*) FROM credit c WHERE c.host_id = hosts.id)
       - (SELECT COUNT(*) FROM credit_revoked x WHERE x.host_id = hosts.id);
     ALTER TABLE replicas ADD COLUMN seasoned INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE batches ADD COLUMN seasoned_after INTEGER;",
    // 15: each host's replicas timed out (or lost) in a row since its last valid result, which
    // limit the work it is given (`herd_lifecycle::host_in_flight_cap`).
    "ALTER TABLE hosts ADD COLUMN timeouts_in_a_row INTEGER NOT NULL DEFAULT 0;",
];

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS volunteers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    team TEXT
);
CREATE TABLE IF NOT EXISTS hosts (
    id INTEGER PRIMARY KEY,
    public_key BLOB NOT NULL UNIQUE,
    volunteer_id INTEGER NOT NULL REFERENCES volunteers(id),
    cores INTEGER NOT NULL,
    registered_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    module_hash TEXT NOT NULL,
    quorum INTEGER NOT NULL,
    max_total_replicas INTEGER NOT NULL,
    max_error_replicas INTEGER NOT NULL,
    replica_deadline_ms INTEGER NOT NULL,
    fuel_limit INTEGER NOT NULL,
    memory_limit_bytes INTEGER NOT NULL,
    output_limit_bytes INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS units (
    id INTEGER PRIMARY KEY,
    batch_id INTEGER NOT NULL REFERENCES batches(id),
    name TEXT NOT NULL,
    input_hash TEXT NOT NULL,
    seed INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('open', 'validated', 'failed')),
    canonical TEXT,
    failure TEXT,
    UNIQUE (batch_id, name)
);
CREATE INDEX IF NOT EXISTS units_by_state ON units (state, id);
CREATE TABLE IF NOT EXISTS replicas (
    id INTEGER PRIMARY KEY,
    unit_id INTEGER NOT NULL REFERENCES units(id),
    host_id INTEGER NOT NULL REFERENCES hosts(id),
    volunteer_id INTEGER NOT NULL REFERENCES volunteers(id),
    assigned_ms INTEGER NOT NULL,
    deadline_ms INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('in_progress', 'reported', 'aborted', 'timed_out')),
    result TEXT,
    abort_reason TEXT,
    validity TEXT NOT NULL DEFAULT 'pending' CHECK (validity IN ('pending', 'valid', 'invalid')),
    reported_ms INTEGER
);
CREATE INDEX IF NOT EXISTS replicas_by_unit ON replicas (unit_id);
CREATE INDEX IF NOT EXISTS replicas_in_progress ON replicas (state, deadline_ms);
CREATE INDEX IF NOT EXISTS replicas_by_host ON replicas (host_id, state);
CREATE TABLE IF NOT EXISTS credit (
    id INTEGER PRIMARY KEY,
    replica_id INTEGER NOT NULL UNIQUE REFERENCES replicas(id),
    volunteer_id INTEGER NOT NULL REFERENCES volunteers(id),
    host_id INTEGER NOT NULL REFERENCES hosts(id),
    fuel INTEGER NOT NULL,
    granted_ms INTEGER NOT NULL
);
";

/// Connections serving reads beside the writer.
const READERS: usize = 2;

/// The coordinator's state in one SQLite file.
///
/// Group commit (`group.rs`): one writer thread owns the connection and the live
/// work, and commits every waiting operation in one transaction. Reads run on `READERS`
/// read-only connections of their own, each in a read transaction (a snapshot of what was
/// committed); an in-memory database, which other connections cannot open, reads through the
/// writer.
pub struct SqliteStore {
    threads: Threads,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let connection = Connection::open(path)?;
        Self::init(connection, Some(path.to_path_buf()))
    }

    /// An in-memory database, for tests of code above the seam.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?, None)
    }

    fn init(connection: Connection, path: Option<PathBuf>) -> Result<Self, StoreError> {
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        // Each operation runs in a savepoint; its sub-journal belongs in memory, not in a
        // temporary file written on every change (a third of the writer's time before).
        connection.pragma_update(None, "temp_store", "MEMORY")?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        // `SCHEMA` is version 1; a new database is created at 1 and migrated like an old one.
        connection.execute_batch(SCHEMA)?;
        connection.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', 1)",
            [],
        )?;
        let mut connection = connection;
        // Migrations that rebuild a table need foreign keys off (a pragma that only takes
        // effect outside a transaction); they are checked before being turned on again.
        connection.pragma_update(None, "foreign_keys", "OFF")?;
        loop {
            let version: i64 = connection.query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |row| row.get(0),
            )?;
            if version == SCHEMA_VERSION {
                break;
            }
            let migration = usize::try_from(version - 1)
                .ok()
                .and_then(|i| MIGRATIONS.get(i))
                .ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "database schema version {version}, this coordinator reads up to {SCHEMA_VERSION}"
                    ))
                })?;
            let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute_batch(migration)?;
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'schema_version'",
                [version + 1],
            )?;
            tx.commit()?;
        }
        let dangling: i64 =
            connection.query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |row| {
                row.get(0)
            })?;
        if dangling > 0 {
            return Err(StoreError::Corrupt(format!(
                "{dangling} rows refer to rows that do not exist"
            )));
        }
        connection.pragma_update(None, "foreign_keys", "ON")?;
        // `exp` for the recent average's decay (this SQLite is built without math functions).
        connection.create_scalar_function(
            "exp",
            1,
            FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
            |context| Ok(context.get::<f64>(0)?.exp()),
        )?;
        let mut db = SqliteDb::new(connection);
        // Load once here so a corrupt database is refused at open, not at the first request.
        work::load_live(&mut db, crate::shards::Shards::alone())?;
        let mut readers = Vec::new();
        if let Some(path) = path {
            for _ in 0..READERS {
                let reader = SqliteDb::read_only(&path)?;
                reader
                    .connection
                    .busy_timeout(std::time::Duration::from_secs(5))?;
                readers.push(reader);
            }
        }
        Ok(Self {
            threads: Threads::start("herd-sqlite", db, readers)?,
        })
    }
}

impl Backend for SqliteStore {
    fn threads(&self) -> &Threads {
        &self.threads
    }
}

/// A SQLite connection behind [`Sql`]: every statement runs at once, prepared once and cached.
pub(crate) struct SqliteDb {
    connection: Connection,
    /// The last id reserved of each sequence, once read.
    last_ids: std::collections::HashMap<Sequence, u64>,
}

impl SqliteDb {
    fn new(connection: Connection) -> Self {
        Self {
            connection,
            last_ids: Default::default(),
        }
    }

    /// The file at `path`, opened read-only (for copying a project out of it).
    pub(crate) fn read_only(path: &Path) -> Result<Self, StoreError> {
        Ok(Self::new(Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?))
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(value) => ValueRef::Integer(*value),
            Value::Real(value) => ValueRef::Real(*value),
            Value::Text(value) => ValueRef::Text(value.as_bytes()),
            Value::Blob(value) => ValueRef::Blob(value),
        }))
    }
}

fn value_of(column: ValueRef<'_>) -> Result<Value, StoreError> {
    Ok(match column {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(value) => Value::Int(value),
        ValueRef::Real(value) => Value::Real(value),
        ValueRef::Text(bytes) => Value::Text(
            String::from_utf8(bytes.to_vec())
                .map_err(|_| StoreError::Corrupt("a text column is not UTF-8".into()))?,
        ),
        ValueRef::Blob(bytes) => Value::Blob(bytes.to_vec()),
    })
}

impl Sql for SqliteDb {
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<(), StoreError> {
        self.execute_count(sql, params).map(|_| ())
    }

    fn execute_count(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        let changed = self
            .connection
            .prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(params))?;
        Ok(changed as u64)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        let mut statement = self.connection.prepare_cached(sql)?;
        let columns = statement.column_count();
        let mut rows = statement.query(rusqlite::params_from_iter(params))?;
        let mut answer = Vec::new();
        while let Some(row) = rows.next()? {
            let mut values = Vec::with_capacity(columns);
            for index in 0..columns {
                values.push(value_of(row.get_ref(index)?)?);
            }
            answer.push(Row(values));
        }
        Ok(answer)
    }

    /// Ids above `sqlite_sequence`'s counter, read once and then counted here: inserting a row
    /// with an explicit id moves the counter past it, so the file stays right, and a reserved
    /// id never inserted (its operation failed) is only a gap. The count is forgotten when a
    /// transaction is rolled back.
    fn reserve_ids(&mut self, sequence: Sequence, n: usize) -> Result<Vec<u64>, StoreError> {
        let last_used = match self.last_ids.get(&sequence) {
            Some(last) => *last,
            None => self
                .query_row(
                    "SELECT seq FROM sqlite_sequence WHERE name = ?1",
                    &args![sequence.table()],
                )?
                .map(|row| row.u64(0))
                .transpose()?
                .unwrap_or(0),
        };
        let first = last_used + 1;
        let last = last_used + n as u64;
        self.last_ids.insert(sequence, last);
        Ok((first..=last).collect())
    }
}

impl Reader for SqliteDb {
    fn begin_read(&mut self) -> Result<(), StoreError> {
        self.connection.execute_batch("BEGIN")?;
        Ok(())
    }

    fn end_read(&mut self) {
        if !self.connection.is_autocommit() {
            let _ = self.connection.execute_batch("COMMIT");
        }
    }
}

impl Database for SqliteDb {
    fn begin(&mut self) -> Result<bool, StoreError> {
        // Immediate: the writer lock is taken now, not at the first write.
        self.connection
            .prepare_cached("BEGIN IMMEDIATE")?
            .execute([])?;
        Ok(true)
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        self.connection.prepare_cached("COMMIT")?.execute([])?;
        Ok(())
    }

    fn rollback(&mut self) {
        self.last_ids.clear();
        if !self.connection.is_autocommit() {
            let _ = self.connection.execute_batch("ROLLBACK");
        }
    }

    fn as_sql(&mut self) -> &mut dyn Sql {
        self
    }
}

#[cfg(test)]
mod tests;
