//! The SQLite backend of [`Store`]: one database file, WAL journal, `synchronous=FULL` so a
//! committed transaction survives power loss.
//!
//! One writer thread owns the connection and, beside it, the live work in memory ([`Live`]):
//! assignment and settling reports are decided in memory and written to SQLite, so the hot path
//! runs no query; SQLite is the durable record and the source `Live` is loaded from at start.

mod researchers;
mod stats;
mod work;

use std::path::Path;
use std::sync::mpsc;

use herd_lifecycle::credit_for_fuel;
use herd_protocol::{Assignment, ContentHash, Outcome, PublicKey, RunResult};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::live::Live;
use crate::{
    BatchStatus, BatchSummary, CreditLine, CreditTotals, Exchange, HostLine, HostRecord, NewBatch,
    Pending, ProjectSummary, ReportEffect, ReportRefusal, Researcher, RetiredBatch, StatsDump,
    Store, StoreError, ThroughputBucket, UnitState, UnitStatus, Want,
};

const SCHEMA_VERSION: i64 = 9;

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

/// Operations committed together at most: bounds the latency one group adds to its last member.
const MAX_GROUP: usize = 512;

/// One operation for the writer: it runs inside the group's transaction (in its own savepoint)
/// with the live work, and says how it went and how to answer its caller once the group's fate
/// is known.
type Job = Box<dyn FnOnce(&Connection, &mut Live) -> JobDone + Send>;
type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;

struct JobDone {
    /// Its writes are kept (else its savepoint is rolled back).
    ok: bool,
    /// It failed in a way that may have left `Live` ahead of the database.
    stale: bool,
    reply: Reply,
}

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

/// The writer thread: groups waiting jobs into one transaction each. `live` is `None` when it
/// must be (re)loaded from the database before the next group: at start, and after a group in
/// which an operation failed midway or the commit failed.
fn write_loop(mut connection: Connection, jobs: mpsc::Receiver<Job>) {
    let mut live: Option<Live> = None;
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let tx = match connection.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(error) => {
                // Dropping the jobs unanswered tells each caller the store failed.
                eprintln!("herd-store: cannot begin a transaction: {error}");
                continue;
            }
        };
        let live_now = match live.take() {
            Some(loaded) => loaded,
            None => match work::load_live(&tx) {
                Ok(loaded) => loaded,
                Err(error) => {
                    eprintln!("herd-store: cannot load the live work: {error}");
                    continue;
                }
            },
        };
        let mut live_now = live_now;
        let mut stale = false;
        let mut replies = Vec::with_capacity(group.len());
        for job in group {
            // Savepoints by cached statements: rusqlite's `Savepoint` parses its SQL every time,
            // and every operation takes one.
            if execute_cached(&tx, "SAVEPOINT job").is_err() {
                stale = true;
                continue;
            }
            let done = job(&tx, &mut live_now);
            stale |= done.stale;
            if done.ok {
                if let Err(error) = execute_cached(&tx, "RELEASE job") {
                    stale = true;
                    (done.reply)(Err(error.to_string()));
                    continue;
                }
            } else if execute_cached(&tx, "ROLLBACK TO job")
                .and_then(|()| execute_cached(&tx, "RELEASE job"))
                .is_err()
            {
                stale = true;
            }
            replies.push(done.reply);
        }
        let committed = tx.commit().map_err(|e| e.to_string());
        if committed.is_ok() && !stale {
            live = Some(live_now);
        }
        for reply in replies {
            reply(committed.clone());
        }
    }
}

/// Runs one statement that returns no rows, prepared once per connection.
fn execute_cached(connection: &Connection, sql: &str) -> Result<(), rusqlite::Error> {
    connection.prepare_cached(sql)?.execute([])?;
    Ok(())
}

impl StoreError {
    /// Whether this error refuses a request (raised before anything changed) rather than
    /// reporting a failure that may have interrupted an operation midway.
    fn is_refusal(&self) -> bool {
        matches!(
            self,
            StoreError::UnknownReplica(_)
                | StoreError::NotYourReplica { .. }
                | StoreError::UnknownHost
                | StoreError::Invalid(_)
        )
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
        // Load once here so a corrupt database is refused at open, not at the first request.
        work::load_live(&connection)?;
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

    /// Runs `work` on the writer thread inside the current group's transaction, with the live
    /// work; its result arrives once the group is committed (or as the error that stopped it).
    fn run<T, F>(&self, work: F) -> Pending<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut Live) -> Result<T, StoreError> + Send + 'static,
    {
        let (answer, pending) = Pending::channel();
        let job: Job = Box::new(move |connection: &Connection, live: &mut Live| {
            let outcome = work(connection, live);
            let ok = outcome.is_ok();
            let stale = matches!(&outcome, Err(error) if !error.is_refusal());
            let reply: Reply = Box::new(move |committed: Result<(), String>| {
                answer.send(match committed {
                    Ok(()) => outcome,
                    Err(message) => Err(StoreError::Commit(message)),
                });
            });
            JobDone { ok, stale, reply }
        });
        // A job that cannot be queued is dropped with its answer: the caller sees `Closed`.
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(job);
        }
        pending
    }
}

/// A batch's units with ids above `after`, in id order, at most `limit`, only those in
/// `state` if given.
fn unit_page(
    tx: &Connection,
    batch_id: u64,
    after: u64,
    limit: u32,
    state: Option<UnitState>,
) -> Result<Vec<UnitStatus>, StoreError> {
    let mut statement = tx.prepare_cached(
        "SELECT id, name, state, input_hash, canonical, failure,
            (SELECT COUNT(*) FROM replicas r WHERE r.unit_id = units.id)
         FROM units WHERE batch_id = ?1 AND id > ?2 AND (?3 IS NULL OR state = ?3)
         ORDER BY id LIMIT ?4",
    )?;
    let rows = statement.query_map(
        params![
            to_i64(batch_id),
            to_i64(after),
            state.map(UnitState::name),
            i64::from(limit)
        ],
        |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, Option<String>>(4)?,
                row.get::<_, Option<String>>(5)?,
                row.get::<_, u32>(6)?,
            ))
        },
    )?;
    let mut units = Vec::new();
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
    Ok(units)
}

#[cfg(test)]
impl SqliteStore {
    /// Whether the live work in memory equals what loading it from the database gives now.
    fn live_mirrors_database(&self) -> Pending<Option<String>> {
        self.run(|tx, live| {
            let loaded = work::load_live(tx)?;
            Ok(live.mirror_difference(&loaded))
        })
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

/// A stored recent average, brought up to `now_ms`.
fn rac_at(per_day: f64, as_of_ms: i64, now_ms: u64) -> f64 {
    herd_lifecycle::RecentAverage {
        per_day,
        as_of_ms: to_u64(as_of_ms),
    }
    .at(now_ms)
    .per_day
}

impl Store for SqliteStore {
    fn register_host(
        &self,
        key: &PublicKey,
        volunteer: &str,
        team: Option<&str>,
        cores: u32,
        now_ms: u64,
    ) -> Pending<HostRecord> {
        let name = volunteer.trim();
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Pending::ready(Err(StoreError::Invalid(format!(
                "volunteer name `{}` must be 1 to 64 printable characters",
                volunteer.escape_debug()
            ))));
        }
        if let Some(team) = team
            && (team.trim().is_empty() || team.len() > 64 || team.chars().any(char::is_control))
        {
            return Pending::ready(Err(StoreError::Invalid(format!(
                "team name `{}` must be 1 to 64 printable characters",
                team.escape_debug()
            ))));
        }
        if !(1..=1024).contains(&cores) {
            return Pending::ready(Err(StoreError::Invalid(format!(
                "cores {cores} is outside 1..=1024"
            ))));
        }
        let key = *key;
        let name = name.to_string();
        let team = team.map(|t| t.trim().to_string());
        self.run(move |tx, live| {
            work::register_host(tx, live, &key, &name, team.as_deref(), cores, now_ms)
        })
    }

    fn create_batch(&self, batch: &NewBatch, now_ms: u64) -> Pending<u64> {
        if let Err(error) = batch.policy.validate() {
            return Pending::ready(Err(StoreError::Invalid(error.0)));
        }
        if batch.units.is_empty() {
            return Pending::ready(Err(StoreError::Invalid(
                "a batch needs at least one unit".into(),
            )));
        }
        let batch = batch.clone();
        self.run(move |tx, live| work::create_batch(tx, live, &batch, now_ms))
    }

    fn assign(&self, host_id: u64, now_ms: u64) -> Pending<Option<Assignment>> {
        self.run(move |tx, live| work::assign(tx, live, host_id, None, now_ms))
    }

    fn record_report(
        &self,
        host_id: u64,
        replica_id: u64,
        outcome: &Outcome,
        now_ms: u64,
    ) -> Pending<ReportEffect> {
        let outcome = outcome.clone();
        self.run(move |tx, live| {
            work::record_report(tx, live, host_id, replica_id, &outcome, now_ms)
        })
    }

    fn exchange(
        &self,
        host_id: u64,
        reports: Vec<(u64, Outcome)>,
        want: Want,
        now_ms: u64,
    ) -> Pending<Exchange> {
        self.run(move |tx, live| {
            let mut fates = Vec::with_capacity(reports.len());
            for (replica_id, outcome) in &reports {
                fates.push(
                    match work::record_report(tx, live, host_id, *replica_id, outcome, now_ms) {
                        Ok(effect) => Ok(effect),
                        Err(StoreError::UnknownReplica(_)) => Err(ReportRefusal::UnknownReplica),
                        Err(StoreError::NotYourReplica { .. }) => {
                            Err(ReportRefusal::NotYourReplica)
                        }
                        Err(other) => return Err(other),
                    },
                );
            }
            let refused = fates.iter().filter(|f| f.is_err()).count();
            if refused > 0 {
                tx.prepare_cached(
                    "UPDATE hosts SET refused_reports = refused_reports + ?2 WHERE id = ?1",
                )?
                .execute(params![to_i64(host_id), refused as i64])?;
            }
            let mut assignments = Vec::new();
            for _ in 0..want.units {
                match work::assign(tx, live, host_id, want.fuel_per_second, now_ms)? {
                    Some(assignment) => assignments.push(assignment),
                    None => break,
                }
            }
            Ok(Exchange {
                reports: fates,
                assignments,
            })
        })
    }

    fn expire_deadlines(&self, now_ms: u64) -> Pending<usize> {
        self.run(move |tx, live| {
            let expired = live.expired(now_ms);
            work::time_out(tx, live, &expired, now_ms)?;
            Ok(expired.len())
        })
    }

    fn release_lost_replicas(&self, host_id: u64, held: &[u64], now_ms: u64) -> Pending<usize> {
        let held = held.to_vec();
        self.run(move |tx, live| {
            let lost = work::lost_replicas(tx, live, host_id, &held)?;
            work::time_out(tx, live, &lost, now_ms)?;
            Ok(lost.len())
        })
    }

    fn host_needs_blob(&self, host_id: u64, hash: &ContentHash) -> Pending<bool> {
        let hash = *hash;
        self.run(move |tx, live| work::host_needs_blob(tx, live, host_id, &hash))
    }

    fn batch_status(&self, batch_id: u64) -> Pending<Option<BatchStatus>> {
        self.run(move |tx: &Connection, _: &mut Live| {
            let batch: Option<(String, u32, i64, Option<i64>)> = tx
                .query_row(
                    "SELECT module_hash, quorum, created_ms, researcher_id
                     FROM batches WHERE id = ?1",
                    [to_i64(batch_id)],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
                )
                .optional()?;
            let Some((module, quorum, created_ms, researcher_id)) = batch else {
                return Ok(None);
            };
            let units = unit_page(tx, batch_id, 0, u32::MAX, None)?;
            let count = |state: &str| units.iter().filter(|u| u.state == state).count() as u64;
            Ok(Some(BatchStatus {
                id: batch_id,
                researcher_id: researcher_id.map_or(0, to_u64),
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

    fn credit_totals(&self, now_ms: u64) -> Pending<CreditTotals> {
        self.run(move |connection: &Connection, _: &mut Live| {
            let volunteers = connection
                .prepare(
                    // Grants minus revocations (credit of results later found invalid).
                    "SELECT v.name, v.team,
                        COALESCE(SUM(c.fuel), 0)
                          - (SELECT COALESCE(SUM(x.fuel), 0) FROM credit_revoked x
                             WHERE x.volunteer_id = v.id),
                        COUNT(c.id)
                          - (SELECT COUNT(*) FROM credit_revoked x WHERE x.volunteer_id = v.id),
                        v.rac, v.rac_ms
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

    fn hosts(&self, now_ms: u64) -> Pending<Vec<HostLine>> {
        self.run(move |connection: &Connection, _: &mut Live| {
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
                          - (SELECT COALESCE(SUM(x.fuel), 0) FROM credit_revoked x
                             WHERE x.host_id = h.id),
                        h.consecutive_valid
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
                        consecutive_valid: row.get(14)?,
                        fuel,
                        credit: credit_for_fuel(fuel),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(hosts)
        })
    }

    fn retire_batch(&self, batch_id: u64) -> Pending<Option<RetiredBatch>> {
        self.run(move |tx: &Connection, live: &mut Live| {
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
                    // The blob is about to go: no one holds it any more.
                    tx.execute("DELETE FROM blob_uploads WHERE hash = ?1", [&hash])?;
                    unreferenced.push(parse_hash(&hash)?);
                }
            }
            live.remove_batch(batch_id);
            Ok(Some(RetiredBatch {
                units: units as u64,
                replicas: replicas as u64,
                unreferenced_blobs: unreferenced,
            }))
        })
    }

    fn ensure_researcher(&self, name: &str, token_hash: &str, now_ms: u64) -> Pending<Researcher> {
        let (name, token_hash) = (name.to_owned(), token_hash.to_owned());
        self.run(move |tx, _| researchers::ensure(tx, &name, &token_hash, now_ms))
    }

    fn add_researcher(&self, name: &str, token_hash: &str, now_ms: u64) -> Pending<Researcher> {
        let (name, token_hash) = (name.to_owned(), token_hash.to_owned());
        self.run(move |tx, _| researchers::add(tx, &name, &token_hash, now_ms))
    }

    fn researcher_by_token(&self, token_hash: &str) -> Pending<Option<Researcher>> {
        let token_hash = token_hash.to_owned();
        self.run(move |tx, _| researchers::by_token(tx, &token_hash))
    }

    fn list_batches(
        &self,
        researcher_id: u64,
        after: u64,
        limit: u32,
    ) -> Pending<Vec<BatchSummary>> {
        self.run(move |tx, _| researchers::list_batches(tx, researcher_id, after, limit))
    }

    fn batch_summary(&self, batch_id: u64) -> Pending<Option<(u64, BatchSummary)>> {
        self.run(move |tx, _| researchers::summary(tx, batch_id))
    }

    fn batch_units(
        &self,
        batch_id: u64,
        after: u64,
        limit: u32,
        state: Option<UnitState>,
    ) -> Pending<Vec<UnitStatus>> {
        self.run(move |tx, _| unit_page(tx, batch_id, after, limit, state))
    }

    fn batch_owner(&self, batch_id: u64) -> Pending<Option<u64>> {
        self.run(move |tx, _| researchers::owner(tx, batch_id))
    }

    fn blob_visible(&self, researcher_id: u64, hash: &ContentHash) -> Pending<bool> {
        let hash = hash.to_hex();
        self.run(move |tx, _| researchers::blob_visible(tx, researcher_id, &hash))
    }

    fn record_uploads(&self, researcher_id: u64, hashes: Vec<ContentHash>) -> Pending<()> {
        self.run(move |tx, _| researchers::record_uploads(tx, researcher_id, &hashes))
    }

    fn cancel_batch(&self, batch_id: u64) -> Pending<Option<u64>> {
        self.run(move |tx, live| researchers::cancel(tx, live, batch_id))
    }

    fn stats_dump(&self, now_ms: u64) -> Pending<StatsDump> {
        self.run(move |tx, _| stats::dump(tx, now_ms))
    }

    fn throughput(
        &self,
        since_ms: u64,
        until_ms: u64,
        bucket_ms: u64,
    ) -> Pending<Vec<ThroughputBucket>> {
        self.run(move |tx, _| stats::throughput(tx, since_ms, until_ms, bucket_ms))
    }

    fn project_summary(
        &self,
        now_ms: u64,
        active_ms: u64,
        window_ms: u64,
    ) -> Pending<ProjectSummary> {
        self.run(move |tx, live| stats::summary(tx, live, now_ms, active_ms, window_ms))
    }

    fn record_refused_report(&self, host_id: u64) -> Pending<()> {
        self.run(move |connection: &Connection, _: &mut Live| {
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
