//! The SQLite backend of [`Store`]: one database file, WAL journal, `synchronous=FULL` so a
//! committed transaction survives power loss. One connection behind a mutex: the coordinator's
//! writes are serialised anyway, and SQLite allows one writer at a time.

use std::path::Path;
use std::sync::mpsc;

use herd_lifecycle::{
    Policy, RecentAverage, Replica, ReplicaState, Verdict, credit_for_fuel, evaluate, may_assign_to,
};
use herd_protocol::{Assignment, ContentHash, Outcome, PublicKey, RunResult};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::{
    BatchStatus, CreditLine, CreditTotals, HostLine, HostRecord, NewBatch, ReportEffect,
    RetiredBatch, Store, StoreError, UnitStatus,
};

/// The schema version this code writes; an older database is migrated, a newer one refused.
const SCHEMA_VERSION: i64 = 4;

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
];

/// Open units examined per assignment request before answering "no work".
const ASSIGN_SCAN_LIMIT: i64 = 512;

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

/// Operations committed together at most: bounds the latency one group adds to its last member.
const MAX_GROUP: usize = 512;

/// One operation for the writer: it runs inside the group's transaction (in its own savepoint)
/// and returns whether it succeeded and how to answer its caller once the group's fate is known.
type Job = Box<dyn FnOnce(&Connection) -> (bool, Reply) + Send>;
type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;

/// The coordinator's state in one SQLite file.
///
/// Group commit: every operation is handed to one writer thread that owns the connection. The
/// writer takes all the operations waiting, runs each in its own savepoint inside one
/// transaction (a failing one is rolled back alone), commits once, and only then answers each
/// caller. One fsync serves many acknowledgements, and nothing is acknowledged before it is
/// durable. Reads go through the same thread, so they see every committed write.
pub struct SqliteStore {
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the queue ends the writer once it has finished what it holds.
        drop(self.jobs.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// The writer thread: groups waiting jobs into one transaction each.
fn write_loop(mut connection: Connection, jobs: mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let mut tx = match connection.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(error) => {
                // Each job's reply must still be sent: run none, fail all.
                let message = error.to_string();
                drop(group);
                eprintln!("herd-store: cannot begin a transaction: {message}");
                continue;
            }
        };
        let mut replies = Vec::with_capacity(group.len());
        for job in group {
            let Ok(mut savepoint) = tx.savepoint() else {
                replies.push(Box::new(|_: Result<(), String>| {}) as Reply);
                continue;
            };
            let (ok, reply) = job(&savepoint);
            if ok {
                if let Err(error) = savepoint.commit() {
                    reply(Err(error.to_string()));
                    continue;
                }
            } else {
                let _ = savepoint.rollback();
            }
            replies.push(reply);
        }
        let committed = tx.commit().map_err(|e| e.to_string());
        for reply in replies {
            reply(committed.clone());
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let connection = Connection::open(path)?;
        Self::init(connection)
    }

    /// An in-memory database, for tests of code above the seam.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(connection: Connection) -> Result<Self, StoreError> {
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        // `SCHEMA` is version 1; a new database is created at 1 and migrated like an old one.
        connection.execute_batch(SCHEMA)?;
        connection.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', 1)",
            [],
        )?;
        let mut connection = connection;
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
        let (sender, receiver) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("herd-store-writer".into())
            .spawn(move || write_loop(connection, receiver))
            .map_err(|e| StoreError::Corrupt(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            jobs: Some(sender),
            writer: Some(writer),
        })
    }

    /// Runs `work` on the writer thread inside the current group's transaction and returns its
    /// result once the group is committed (or the error that stopped it).
    fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (answer, result) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |connection: &Connection| {
            let outcome = work(connection);
            let ok = outcome.is_ok();
            let reply: Reply = Box::new(move |committed: Result<(), String>| {
                let _ = answer.send(match committed {
                    Ok(()) => outcome,
                    Err(message) => Err(StoreError::Commit(message)),
                });
            });
            (ok, reply)
        });
        let jobs = self.jobs.as_ref().ok_or(StoreError::Closed)?;
        jobs.send(job).map_err(|_| StoreError::Closed)?;
        result.recv().map_err(|_| StoreError::Closed)?
    }
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn parse_hash(text: &str) -> Result<ContentHash, StoreError> {
    text.parse()
        .map_err(|e| StoreError::Corrupt(format!("{e}")))
}

fn parse_result(text: &str) -> Result<RunResult, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("stored result: {e}")))
}

fn encode_result(result: &RunResult) -> Result<String, StoreError> {
    serde_json::to_string(result).map_err(|e| StoreError::Corrupt(format!("encode result: {e}")))
}

/// A batch's policy and limits, as stored.
struct BatchRow {
    module: ContentHash,
    policy: Policy,
    fuel_limit: u64,
    memory_limit_bytes: u64,
    output_limit_bytes: u64,
}

fn load_batch(tx: &Connection, batch_id: u64) -> Result<BatchRow, StoreError> {
    let row = tx.query_row(
        "SELECT module_hash, quorum, max_total_replicas, max_error_replicas, replica_deadline_ms,
                fuel_limit, memory_limit_bytes, output_limit_bytes, initial_replicas,
                max_success_replicas
         FROM batches WHERE id = ?1",
        [to_i64(batch_id)],
        |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, u32>(1)?,
                row.get::<_, u32>(2)?,
                row.get::<_, u32>(3)?,
                row.get::<_, i64>(4)?,
                row.get::<_, i64>(5)?,
                row.get::<_, i64>(6)?,
                row.get::<_, i64>(7)?,
                row.get::<_, u32>(8)?,
                row.get::<_, u32>(9)?,
            ))
        },
    )?;
    Ok(BatchRow {
        module: parse_hash(&row.0)?,
        policy: Policy {
            quorum: row.1,
            initial_replicas: row.8,
            max_total_replicas: row.2,
            max_error_replicas: row.3,
            max_success_replicas: row.9,
            replica_deadline_ms: to_u64(row.4),
        },
        fuel_limit: to_u64(row.5),
        memory_limit_bytes: to_u64(row.6),
        output_limit_bytes: to_u64(row.7),
    })
}

/// A unit's replicas as the lifecycle sees them.
fn load_replicas(tx: &Connection, unit_id: u64) -> Result<Vec<Replica>, StoreError> {
    let mut statement = tx.prepare_cached(
        "SELECT id, volunteer_id, state, deadline_ms, result FROM replicas WHERE unit_id = ?1",
    )?;
    let rows = statement.query_map([to_i64(unit_id)], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, i64>(1)?,
            row.get::<_, String>(2)?,
            row.get::<_, i64>(3)?,
            row.get::<_, Option<String>>(4)?,
        ))
    })?;
    let mut replicas = Vec::new();
    for row in rows {
        let (id, volunteer_id, state, deadline_ms, result) = row?;
        let state = match (state.as_str(), result) {
            ("in_progress", _) => ReplicaState::InProgress {
                deadline_ms: to_u64(deadline_ms),
            },
            ("reported", Some(result)) => ReplicaState::Reported(parse_result(&result)?),
            ("aborted", _) => ReplicaState::Aborted,
            ("timed_out", _) => ReplicaState::TimedOut,
            (other, _) => {
                return Err(StoreError::Corrupt(format!(
                    "replica {id} in state {other} without a result"
                )));
            }
        };
        replicas.push(Replica {
            id: to_u64(id),
            volunteer_id: to_u64(volunteer_id),
            state,
        });
    }
    Ok(replicas)
}

/// Applies the lifecycle's verdict for a unit, granting credit on validation.
fn settle_unit(
    tx: &Connection,
    unit_id: u64,
    policy: &Policy,
    now_ms: u64,
) -> Result<Verdict, StoreError> {
    let replicas = load_replicas(tx, unit_id)?;
    let verdict = evaluate(policy, &replicas);
    match &verdict {
        Verdict::Validated {
            canonical,
            agreeing,
            disagreeing,
        } => {
            tx.execute(
                "UPDATE units SET state = 'validated', canonical = ?2 WHERE id = ?1",
                params![to_i64(unit_id), encode_result(canonical)?],
            )?;
            for replica_id in agreeing {
                mark_valid_and_credit(tx, *replica_id, canonical.fuel, now_ms)?;
            }
            for replica_id in disagreeing {
                tx.execute(
                    "UPDATE replicas SET validity = 'invalid' WHERE id = ?1",
                    [to_i64(*replica_id)],
                )?;
            }
        }
        Verdict::Failed { reason } => {
            tx.execute(
                "UPDATE units SET state = 'failed', failure = ?2 WHERE id = ?1",
                params![to_i64(unit_id), reason],
            )?;
        }
        Verdict::Open { .. } => {}
    }
    Ok(verdict)
}

fn mark_valid_and_credit(
    tx: &Connection,
    replica_id: u64,
    fuel: u64,
    now_ms: u64,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE replicas SET validity = 'valid' WHERE id = ?1",
        [to_i64(replica_id)],
    )?;
    // The unique replica_id makes a second grant for the same replica impossible.
    let granted = tx.execute(
        "INSERT OR IGNORE INTO credit (replica_id, volunteer_id, host_id, fuel, granted_ms)
         SELECT id, volunteer_id, host_id, ?2, ?3 FROM replicas WHERE id = ?1",
        params![to_i64(replica_id), to_i64(fuel), to_i64(now_ms)],
    )?;
    if granted == 1 {
        let (volunteer_id, host_id): (i64, i64) = tx.query_row(
            "SELECT volunteer_id, host_id FROM replicas WHERE id = ?1",
            [to_i64(replica_id)],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        let credit = credit_for_fuel(fuel);
        for (table, id) in [("volunteers", volunteer_id), ("hosts", host_id)] {
            let (per_day, as_of_ms): (f64, i64) = tx.query_row(
                &format!("SELECT rac, rac_ms FROM {table} WHERE id = ?1"),
                [id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?;
            let rac = RecentAverage {
                per_day,
                as_of_ms: to_u64(as_of_ms),
            }
            .granted(credit, now_ms);
            tx.execute(
                &format!("UPDATE {table} SET rac = ?2, rac_ms = ?3 WHERE id = ?1"),
                params![id, rac.per_day, to_i64(rac.as_of_ms)],
            )?;
        }
    }
    Ok(())
}

/// A stored recent average, brought up to `now_ms`.
fn rac_at(per_day: f64, as_of_ms: i64, now_ms: u64) -> f64 {
    RecentAverage {
        per_day,
        as_of_ms: to_u64(as_of_ms),
    }
    .at(now_ms)
    .per_day
}

/// Marks replicas as timed out (no reply) so their units are reissued, and fails any unit that
/// can no longer go on.
fn time_out(tx: &Connection, replica_ids: &[i64], now_ms: u64) -> Result<(), StoreError> {
    for replica_id in replica_ids {
        let (unit_id, batch_id, unit_open): (i64, i64, bool) = tx.query_row(
            "UPDATE replicas SET state = 'timed_out' WHERE id = ?1
             RETURNING unit_id,
                       (SELECT batch_id FROM units WHERE id = replicas.unit_id),
                       (SELECT state = 'open' FROM units WHERE id = replicas.unit_id)",
            [replica_id],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )?;
        if unit_open {
            let batch = load_batch(tx, to_u64(batch_id))?;
            settle_unit(tx, to_u64(unit_id), &batch.policy, now_ms)?;
        }
    }
    Ok(())
}

impl Store for SqliteStore {
    fn register_host(
        &self,
        key: &PublicKey,
        volunteer: &str,
        team: Option<&str>,
        cores: u32,
        now_ms: u64,
    ) -> Result<HostRecord, StoreError> {
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
        if !(1..=1024).contains(&cores) {
            return Err(StoreError::Invalid(format!(
                "cores {cores} is outside 1..=1024"
            )));
        }
        let key = *key;
        let name = name.to_string();
        let team = team.map(|t| t.trim().to_string());
        self.run(move |tx: &Connection| {
            tx.execute(
                "INSERT INTO volunteers (name, team) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET team = excluded.team",
                params![name, team],
            )?;
            let volunteer_id: i64 =
                tx.query_row("SELECT id FROM volunteers WHERE name = ?1", [name], |row| {
                    row.get(0)
                })?;
            tx.execute(
                "INSERT INTO hosts (public_key, volunteer_id, cores, registered_ms, last_seen_ms)
             VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT (public_key) DO UPDATE SET
                volunteer_id = excluded.volunteer_id, cores = excluded.cores,
                last_seen_ms = excluded.last_seen_ms",
                params![&key.0[..], volunteer_id, cores, to_i64(now_ms)],
            )?;
            let host_id: i64 = tx.query_row(
                "SELECT id FROM hosts WHERE public_key = ?1",
                [&key.0[..]],
                |row| row.get(0),
            )?;
            Ok(HostRecord {
                host_id: to_u64(host_id),
                volunteer_id: to_u64(volunteer_id),
                cores,
            })
        })
    }

    fn create_batch(&self, batch: &NewBatch, now_ms: u64) -> Result<u64, StoreError> {
        batch
            .policy
            .validate()
            .map_err(|e| StoreError::Invalid(e.0))?;
        if batch.units.is_empty() {
            return Err(StoreError::Invalid(
                "a batch needs at least one unit".into(),
            ));
        }
        let batch = batch.clone();
        self.run(move |tx: &Connection| {
            tx.execute(
                "INSERT INTO batches (module_hash, quorum, max_total_replicas, max_error_replicas,
                replica_deadline_ms, fuel_limit, memory_limit_bytes, output_limit_bytes, created_ms,
                initial_replicas, max_success_replicas, priority)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
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
                ],
            )?;
            let batch_id = tx.last_insert_rowid();
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO units (batch_id, name, input_hash, seed, state)
                 VALUES (?1, ?2, ?3, ?4, 'open')",
                )?;
                for unit in &batch.units {
                    insert
                        .execute(params![
                            batch_id,
                            unit.name,
                            unit.input.to_hex(),
                            to_i64(unit.seed)
                        ])
                        .map_err(|e| match e {
                            rusqlite::Error::SqliteFailure(f, _)
                                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                            {
                                StoreError::Invalid(format!(
                                    "unit name `{}` appears twice",
                                    unit.name
                                ))
                            }
                            other => StoreError::Database(other),
                        })?;
                }
            }
            Ok(to_u64(batch_id))
        })
    }

    fn assign(&self, host_id: u64, now_ms: u64) -> Result<Option<Assignment>, StoreError> {
        self.run(move |tx: &Connection| {
        let host: Option<(i64, u32, Vec<u8>)> = tx
            .query_row(
                "SELECT volunteer_id, cores, public_key FROM hosts WHERE id = ?1",
                [to_i64(host_id)],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()?;
        let Some((volunteer_id, cores, host_key)) = host else {
            return Err(StoreError::UnknownHost);
        };
        let host_key = PublicKey(
            host_key
                .try_into()
                .map_err(|_| StoreError::Corrupt(format!("host {host_id} has a malformed key")))?,
        );
        // "Last seen" to the minute is all a host record needs; not rewriting the row on every
        // request saves a write per assignment.
        tx.execute(
            "UPDATE hosts SET last_seen_ms = ?2 WHERE id = ?1 AND last_seen_ms < ?2 - 60000",
            params![to_i64(host_id), to_i64(now_ms)],
        )?;
        let in_flight: u32 = tx.query_row(
            "SELECT COUNT(*) FROM replicas WHERE host_id = ?1 AND state = 'in_progress'",
            [to_i64(host_id)],
            |row| row.get(0),
        )?;
        if in_flight >= cores {
            return Ok(None);
        }
        // Batches with open units, served by priority, then fairly: the batch with the fewest
        // replicas in flight goes next, so one large batch cannot starve the others.
        let mut batches: Vec<(i64, i32, i64)> = tx
            .prepare_cached(
                "SELECT b.id, b.priority,
                        (SELECT COUNT(*) FROM replicas r JOIN units u ON u.id = r.unit_id
                         WHERE u.batch_id = b.id AND r.state = 'in_progress')
                 FROM batches b
                 WHERE EXISTS (SELECT 1 FROM units u WHERE u.batch_id = b.id AND u.state = 'open')",
            )?
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
            .collect::<Result<_, _>>()?;
        batches.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)).then(a.0.cmp(&b.0)));
        // Examine open units batch by batch, lazily, and take the first that wants a replica
        // and may go to this volunteer. A unit with `initial_replicas` in flight cannot want
        // more (see `evaluate`), so SQL skips those.
        let mut budget = ASSIGN_SCAN_LIMIT;
        for (batch_id, _, _) in batches {
            if budget <= 0 {
                break;
            }
            let batch = load_batch(tx, to_u64(batch_id))?;
            let mut statement = tx.prepare_cached(
                "SELECT id, input_hash, seed FROM units
                 WHERE batch_id = ?3 AND state = 'open'
                   AND (SELECT COUNT(*) FROM replicas r
                        WHERE r.unit_id = units.id AND r.state = 'in_progress') < ?4
                   AND NOT EXISTS (SELECT 1 FROM replicas r
                                   WHERE r.unit_id = units.id AND r.volunteer_id = ?1
                                     AND r.state IN ('in_progress', 'reported'))
                 ORDER BY id LIMIT ?2",
            )?;
            let mut rows = statement.query(params![
                volunteer_id,
                budget,
                batch_id,
                batch.policy.initial_replicas
            ])?;
            while let Some(row) = rows.next()? {
                budget -= 1;
                let unit_id = to_u64(row.get::<_, i64>(0)?);
                let replicas = load_replicas(tx, unit_id)?;
                let wanted = match evaluate(&batch.policy, &replicas) {
                    Verdict::Open { wanted } => wanted,
                    _ => 0,
                };
                if wanted == 0 || !may_assign_to(&replicas, to_u64(volunteer_id)) {
                    continue;
                }
                // Parse before inserting: a corrupt row must not leave a replica nobody was sent.
                let input = parse_hash(&row.get::<_, String>(1)?)?;
                let seed = to_u64(row.get::<_, i64>(2)?);
                let deadline_ms = now_ms.saturating_add(batch.policy.replica_deadline_ms);
                tx.execute(
                    "INSERT INTO replicas (unit_id, host_id, volunteer_id, assigned_ms, deadline_ms, state)
                     VALUES (?1, ?2, ?3, ?4, ?5, 'in_progress')",
                    params![
                        to_i64(unit_id),
                        to_i64(host_id),
                        volunteer_id,
                        to_i64(now_ms),
                        to_i64(deadline_ms)
                    ],
                )?;
                return Ok(Some(Assignment {
                    replica_id: to_u64(tx.last_insert_rowid()),
                    unit_id,
                    batch_id: to_u64(batch_id),
                    host_key,
                    module: batch.module,
                    input,
                    seed,
                    fuel_limit: batch.fuel_limit,
                    memory_limit_bytes: batch.memory_limit_bytes,
                    output_limit_bytes: batch.output_limit_bytes,
                    deadline_ms,
                }));
            }
        }
        Ok(None)
        })
    }

    fn record_report(
        &self,
        host_id: u64,
        replica_id: u64,
        outcome: &Outcome,
        now_ms: u64,
    ) -> Result<ReportEffect, StoreError> {
        let outcome = outcome.clone();
        self.run(move |tx: &Connection| {
            let row: Option<(i64, i64, String)> = tx
                .query_row(
                    "SELECT unit_id, host_id, state FROM replicas WHERE id = ?1",
                    [to_i64(replica_id)],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .optional()?;
            let Some((unit_id, owner, state)) = row else {
                return Err(StoreError::UnknownReplica(replica_id));
            };
            if to_u64(owner) != host_id {
                return Err(StoreError::NotYourReplica { replica_id });
            }
            // Idempotence: a replica reports once; a repeat changes nothing and is acknowledged.
            if state == "reported" || state == "aborted" {
                return Ok(ReportEffect::Duplicate);
            }
            // In progress, or timed out but reporting late: record it either way.
            match &outcome {
                Outcome::Countable(result) => {
                    tx.execute(
                        "UPDATE replicas SET state = 'reported', result = ?2, reported_ms = ?3,
                                        output_hash = ?4
                     WHERE id = ?1",
                        params![
                            to_i64(replica_id),
                            encode_result(result)?,
                            to_i64(now_ms),
                            result.output_hash.to_hex()
                        ],
                    )?;
                }
                Outcome::Aborted(reason) => {
                    let reason = serde_json::to_string(reason)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    tx.execute(
                        "UPDATE replicas SET state = 'aborted', abort_reason = ?2, reported_ms = ?3
                     WHERE id = ?1",
                        params![to_i64(replica_id), reason, to_i64(now_ms)],
                    )?;
                }
            }
            let (batch_id, unit_state, canonical): (i64, String, Option<String>) = tx.query_row(
                "SELECT batch_id, state, canonical FROM units WHERE id = ?1",
                [unit_id],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )?;
            let unit_id = to_u64(unit_id);
            let effect = match (unit_state.as_str(), &outcome) {
                ("open", _) => {
                    let batch = load_batch(tx, to_u64(batch_id))?;
                    match settle_unit(tx, unit_id, &batch.policy, now_ms)? {
                        Verdict::Validated { .. } => ReportEffect::Validated { unit_id },
                        Verdict::Failed { .. } => ReportEffect::Failed { unit_id },
                        Verdict::Open { .. } => ReportEffect::Recorded,
                    }
                }
                ("validated", Outcome::Countable(result)) => {
                    let canonical = parse_result(canonical.as_deref().unwrap_or_default())?;
                    let agreed = *result == canonical;
                    if agreed {
                        mark_valid_and_credit(tx, replica_id, canonical.fuel, now_ms)?;
                    } else {
                        tx.execute(
                            "UPDATE replicas SET validity = 'invalid' WHERE id = ?1",
                            [to_i64(replica_id)],
                        )?;
                    }
                    ReportEffect::LateChecked { agreed }
                }
                _ => ReportEffect::Recorded,
            };
            Ok(effect)
        })
    }

    fn expire_deadlines(&self, now_ms: u64) -> Result<usize, StoreError> {
        self.run(move |tx: &Connection| {
            let expired: Vec<i64> = tx
                .prepare_cached(
                    "SELECT id FROM replicas WHERE state = 'in_progress' AND deadline_ms < ?1",
                )?
                .query_map([to_i64(now_ms)], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            time_out(tx, &expired, now_ms)?;
            Ok(expired.len())
        })
    }

    fn release_lost_replicas(
        &self,
        host_id: u64,
        held: &[u64],
        now_ms: u64,
    ) -> Result<usize, StoreError> {
        let held = held.to_vec();
        self.run(move |tx: &Connection| {
            let lost: Vec<i64> = tx
                .prepare_cached(
                    "SELECT id FROM replicas WHERE host_id = ?1 AND state = 'in_progress'",
                )?
                .query_map([to_i64(host_id)], |row| row.get(0))?
                .collect::<Result<Vec<i64>, _>>()?
                .into_iter()
                .filter(|id| !held.contains(&to_u64(*id)))
                .collect();
            time_out(tx, &lost, now_ms)?;
            Ok(lost.len())
        })
    }

    fn batch_status(&self, batch_id: u64) -> Result<Option<BatchStatus>, StoreError> {
        self.run(move |tx: &Connection| {
            let batch: Option<(String, u32, i64)> = tx
                .query_row(
                    "SELECT module_hash, quorum, created_ms FROM batches WHERE id = ?1",
                    [to_i64(batch_id)],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .optional()?;
            let Some((module, quorum, created_ms)) = batch else {
                return Ok(None);
            };
            let mut units = Vec::new();
            {
                let mut statement = tx.prepare_cached(
                    "SELECT id, name, state, input_hash, canonical, failure,
                        (SELECT COUNT(*) FROM replicas r WHERE r.unit_id = units.id)
                 FROM units WHERE batch_id = ?1 ORDER BY id",
                )?;
                let rows = statement.query_map([to_i64(batch_id)], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, Option<String>>(4)?,
                        row.get::<_, Option<String>>(5)?,
                        row.get::<_, u32>(6)?,
                    ))
                })?;
                for row in rows {
                    let (id, name, state, input, canonical, failure, replicas) = row?;
                    units.push(UnitStatus {
                        id: to_u64(id),
                        name,
                        state,
                        input,
                        result: canonical.as_deref().map(parse_result).transpose()?,
                        failure,
                        replicas,
                    });
                }
            }
            let count = |state: &str| units.iter().filter(|u| u.state == state).count() as u64;
            Ok(Some(BatchStatus {
                id: batch_id,
                module,
                quorum,
                total: units.len() as u64,
                open: count("open"),
                validated: count("validated"),
                failed: count("failed"),
                created_ms: to_u64(created_ms),
                units,
            }))
        })
    }

    fn credit_totals(&self, now_ms: u64) -> Result<CreditTotals, StoreError> {
        self.run(move |connection: &Connection| {
            let volunteers = connection
                .prepare(
                    "SELECT v.name, v.team, COALESCE(SUM(c.fuel), 0), COUNT(c.id), v.rac, v.rac_ms
                 FROM volunteers v LEFT JOIN credit c ON c.volunteer_id = v.id
                 GROUP BY v.id ORDER BY 3 DESC, v.name",
                )?
                .query_map([], |row| {
                    let fuel = to_u64(row.get::<_, i64>(2)?);
                    Ok(CreditLine {
                        name: row.get(0)?,
                        team: row.get(1)?,
                        fuel,
                        credit: credit_for_fuel(fuel),
                        recent_average_credit: rac_at(row.get(4)?, row.get(5)?, now_ms),
                        replicas: to_u64(row.get::<_, i64>(3)?),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
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
        })
    }

    fn hosts(&self, now_ms: u64) -> Result<Vec<HostLine>, StoreError> {
        self.run(move |connection: &Connection| {
            let hosts = connection
                .prepare(
                    "SELECT h.id, v.name, h.public_key, h.cores, h.last_seen_ms, h.rac, h.rac_ms,
                        h.refused_reports,
                        COALESCE(SUM(r.validity = 'valid'), 0),
                        COALESCE(SUM(r.validity = 'invalid'), 0),
                        COALESCE(SUM(r.state = 'aborted'), 0),
                        COALESCE(SUM(r.state = 'timed_out'), 0),
                        COALESCE(SUM(r.state = 'in_progress'), 0),
                        (SELECT COALESCE(SUM(c.fuel), 0) FROM credit c WHERE c.host_id = h.id)
                 FROM hosts h JOIN volunteers v ON v.id = h.volunteer_id
                 LEFT JOIN replicas r ON r.host_id = h.id
                 GROUP BY h.id ORDER BY h.id",
                )?
                .query_map([], |row| {
                    let key: Vec<u8> = row.get(2)?;
                    let fuel = to_u64(row.get::<_, i64>(13)?);
                    Ok(HostLine {
                        id: to_u64(row.get::<_, i64>(0)?),
                        volunteer: row.get(1)?,
                        public_key: key.iter().map(|b| format!("{b:02x}")).collect(),
                        cores: row.get(3)?,
                        last_seen_ms: to_u64(row.get::<_, i64>(4)?),
                        recent_average_credit: rac_at(row.get(5)?, row.get(6)?, now_ms),
                        refused_reports: to_u64(row.get::<_, i64>(7)?),
                        valid: to_u64(row.get::<_, i64>(8)?),
                        invalid: to_u64(row.get::<_, i64>(9)?),
                        errors: to_u64(row.get::<_, i64>(10)?),
                        timed_out: to_u64(row.get::<_, i64>(11)?),
                        in_progress: to_u64(row.get::<_, i64>(12)?),
                        fuel,
                        credit: credit_for_fuel(fuel),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(hosts)
        })
    }

    fn retire_batch(&self, batch_id: u64) -> Result<Option<RetiredBatch>, StoreError> {
        self.run(move |tx: &Connection| {
            let id = to_i64(batch_id);
            let exists: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM batches WHERE id = ?1)",
                [id],
                |row| row.get(0),
            )?;
            if !exists {
                return Ok(None);
            }
            // Every blob the batch refers to: its module, its inputs, every reported output.
            let mut referenced: Vec<String> = tx
                .prepare_cached(
                    "SELECT module_hash FROM batches WHERE id = ?1
                 UNION SELECT input_hash FROM units WHERE batch_id = ?1",
                )?
                .query_map([id], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            let outputs: Vec<String> = tx
                .prepare_cached(
                    "SELECT r.output_hash FROM replicas r JOIN units u ON u.id = r.unit_id
                 WHERE u.batch_id = ?1 AND r.output_hash IS NOT NULL",
                )?
                .query_map([id], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            referenced.extend(outputs);
            referenced.sort();
            referenced.dedup();
            let replicas = tx.execute(
                "DELETE FROM replicas WHERE unit_id IN (SELECT id FROM units WHERE batch_id = ?1)",
                [id],
            )?;
            let units = tx.execute("DELETE FROM units WHERE batch_id = ?1", [id])?;
            tx.execute("DELETE FROM batches WHERE id = ?1", [id])?;
            // Blobs that no remaining batch refers to may go.
            let mut unreferenced = Vec::new();
            for hash in referenced {
                let still_used: bool = tx.query_row(
                    "SELECT EXISTS (SELECT 1 FROM batches WHERE module_hash = ?1)
                     OR EXISTS (SELECT 1 FROM units WHERE input_hash = ?1)
                     OR EXISTS (SELECT 1 FROM replicas WHERE output_hash = ?1)",
                    [&hash],
                    |row| row.get(0),
                )?;
                if !still_used {
                    unreferenced.push(parse_hash(&hash)?);
                }
            }
            Ok(Some(RetiredBatch {
                units: units as u64,
                replicas: replicas as u64,
                unreferenced_blobs: unreferenced,
            }))
        })
    }

    fn record_refused_report(&self, host_id: u64) -> Result<(), StoreError> {
        self.run(move |connection: &Connection| {
            connection.execute(
                "UPDATE hosts SET refused_reports = refused_reports + 1 WHERE id = ?1",
                [to_i64(host_id)],
            )?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests;
