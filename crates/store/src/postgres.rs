//! The PostgreSQL backend of [`Store`](crate::Store), for projects that outgrow one machine:
//! every coordinator of the project connects to the same database and serves workers and
//! researchers. The live work is split into shards, each decided by the coordinator holding
//! its lease; when a coordinator goes, the others take its shards over ([`lease`]). A report
//! reaching a coordinator that does not hold its unit's shard is kept in `report_inbox` and
//! settled by the shard's holder.
//!
//! The logic is the SQLite backend's (see the crate docs); what differs is how SQL is run. One
//! writer thread owns a connection and the live work, and commits groups exactly as SQLite's
//! does (`group.rs`); its writes are held and sent pipelined (tokio-postgres sends every request
//! of a batch of futures before reading any answer), so a group costs a round trip or two, not
//! one per statement. Ids come from sequences, reserved a block at a time. Reads run on a pool
//! of connections of their own, each in a read-only snapshot, never behind the writer.
//!
//! Each connection is driven by a single-threaded tokio runtime on its own thread, so the store's
//! synchronous logic calls it directly. A connection that breaks (PostgreSQL restarted) is
//! opened again before the next group or read; the group that broke fails and is retried by
//! its callers, and the live work is loaded again from what was committed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::error::Error;

use bytes::BytesMut;
use futures_util::future::try_join_all;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, NoTls, Statement};

mod lease;

use std::sync::{Arc, mpsc};

use lease::Lease;

use crate::group::Database;
use crate::live::Live;
use crate::operations::Backend;
use crate::shards::Shards;
use crate::sql::{Row, Sequence, SharedRow, Sql, Value, WorkChange, args};
use crate::threads::{Reader, Threads};
use crate::{StoreError, work};

/// The schema's version: [`SCHEMA`] creates version 1, and [`MIGRATIONS`] bring it here.
const SCHEMA_VERSION: i64 = 9;

/// Migrations from each version to the next: `MIGRATIONS[0]` takes version 1 to 2.
const MIGRATIONS: &[&str] = &[
    // 2: several coordinators on one database: the project's lease (shard 0 is the whole
    // project for now), blobs every coordinator can read, and the project's secrets.
    "CREATE TABLE leases (
         shard BIGINT PRIMARY KEY,
         holder TEXT,
         holder_http TEXT,
         epoch BIGINT NOT NULL DEFAULT 0,
         expires_at TIMESTAMPTZ NOT NULL DEFAULT 'epoch'
     );
     INSERT INTO leases (shard) VALUES (0);
     CREATE TABLE blobs (hash TEXT PRIMARY KEY, bytes BYTEA NOT NULL);
     CREATE TABLE project_secrets (name TEXT PRIMARY KEY, value BYTEA NOT NULL);",
    // 3: the live work in 16 shards, each under a lease of its own; the coordinators sharing
    // them; a version the writers reload their live work by when units change in shards they
    // do not hold; reports kept for the holder of their unit's shard.
    "INSERT INTO leases (shard) SELECT generate_series(1, 15);
     ALTER TABLE leases ADD COLUMN wanting BIGINT NOT NULL DEFAULT 0,
                        ADD COLUMN wanted_by TEXT;
     CREATE TABLE coordinators (
         name TEXT PRIMARY KEY,
         http TEXT NOT NULL,
         expires_at TIMESTAMPTZ NOT NULL
     );
     CREATE TABLE work_version (id BIGINT PRIMARY KEY, version BIGINT NOT NULL);
     INSERT INTO work_version (id, version) VALUES (0, 0);
     CREATE TABLE report_inbox (
         replica_id BIGINT PRIMARY KEY,
         shard BIGINT NOT NULL,
         host_id BIGINT NOT NULL,
         outcome TEXT NOT NULL,
         received_ms BIGINT NOT NULL
     );
     CREATE INDEX report_inbox_by_shard ON report_inbox (shard, received_ms);",
    // 4: accounts, as SQLite's schema 10 (`lower` under the `C` collation folds ASCII only, as
    // SQLite's and `accounts::name_key` do).
    "ALTER TABLE volunteers ADD COLUMN name_key TEXT,
                           ADD COLUMN key_hash TEXT,
                           ADD COLUMN revoked_key_hash TEXT;
     UPDATE volunteers SET name = name || '-' || id
         WHERE id NOT IN (SELECT MIN(id) FROM volunteers GROUP BY lower(trim(name) COLLATE \"C\"));
     UPDATE volunteers SET name_key = lower(trim(name) COLLATE \"C\");
     CREATE UNIQUE INDEX volunteers_by_name_key ON volunteers (name_key);
     CREATE UNIQUE INDEX volunteers_by_key ON volunteers (key_hash);
     CREATE INDEX volunteers_by_revoked_key ON volunteers (revoked_key_hash);
     CREATE TABLE invitations (
         code_hash TEXT PRIMARY KEY,
         created_ms BIGINT NOT NULL,
         used_by BIGINT REFERENCES volunteers(id),
         used_ms BIGINT
     );",
    // 5: replicas' networks and batches asking for distinct ones, as SQLite's schema 11.
    "ALTER TABLE replicas ADD COLUMN network BIGINT NOT NULL DEFAULT 0;
     ALTER TABLE batches ADD COLUMN distinct_networks BIGINT NOT NULL DEFAULT 0;",
    // 6: researchers as accounts' permissions to submit, as SQLite's schema 12.
    "ALTER TABLE researchers ADD COLUMN account_id BIGINT REFERENCES volunteers(id),
                            ADD COLUMN revoked_ms BIGINT;
     INSERT INTO volunteers (name, name_key, created_ms)
         SELECT CASE WHEN r.id = (SELECT MIN(o.id) FROM researchers o
                                  WHERE lower(o.name COLLATE \"C\") = lower(r.name COLLATE \"C\"))
                     THEN r.name ELSE r.name || '-r' || r.id END,
                CASE WHEN r.id = (SELECT MIN(o.id) FROM researchers o
                                  WHERE lower(o.name COLLATE \"C\") = lower(r.name COLLATE \"C\"))
                     THEN lower(r.name COLLATE \"C\")
                     ELSE lower(r.name COLLATE \"C\") || '-r' || r.id END,
                r.created_ms
         FROM researchers r
         WHERE NOT EXISTS (SELECT 1 FROM volunteers v
                           WHERE v.name_key = lower(r.name COLLATE \"C\"))
            OR r.id <> (SELECT MIN(o.id) FROM researchers o
                        WHERE lower(o.name COLLATE \"C\") = lower(r.name COLLATE \"C\"));
     UPDATE researchers SET account_id = (
         SELECT v.id FROM volunteers v WHERE v.name_key =
             CASE WHEN researchers.id = (SELECT MIN(o.id) FROM researchers o
                                         WHERE lower(o.name COLLATE \"C\")
                                             = lower(researchers.name COLLATE \"C\"))
                  THEN lower(researchers.name COLLATE \"C\")
                  ELSE lower(researchers.name COLLATE \"C\") || '-r' || researchers.id END);
     CREATE UNIQUE INDEX researchers_by_account ON researchers (account_id);",
    // 7: credit as a balance and accounts' API tokens, as SQLite's schema 13; the ledger's ids come from a sequence the
    // store reserves from, as the hot path writes spending rows.
    "ALTER TABLE volunteers ADD COLUMN balance BIGINT NOT NULL DEFAULT 0,
                           ADD COLUMN overdraft BIGINT DEFAULT 0;
     UPDATE volunteers SET balance =
         (SELECT COALESCE(SUM(c.fuel), 0) FROM credit c WHERE c.volunteer_id = volunteers.id)
       - (SELECT COALESCE(SUM(x.fuel), 0) FROM credit_revoked x
          WHERE x.volunteer_id = volunteers.id);
     CREATE SEQUENCE ledger_id_seq;
     CREATE TABLE ledger (
         id BIGINT PRIMARY KEY DEFAULT nextval('ledger_id_seq'),
         account_id BIGINT NOT NULL REFERENCES volunteers(id),
         kind TEXT NOT NULL CHECK (kind IN ('spent', 'granted', 'sent', 'received')),
         amount BIGINT NOT NULL,
         batch_id BIGINT,
         unit_id BIGINT,
         counterpart_id BIGINT REFERENCES volunteers(id),
         memo TEXT,
         created_ms BIGINT NOT NULL
     );
     CREATE INDEX ledger_by_account ON ledger (account_id, id);
     CREATE INDEX ledger_by_batch ON ledger (batch_id) WHERE batch_id IS NOT NULL;
     CREATE INDEX credit_revoked_by_volunteer ON credit_revoked (volunteer_id, id);
     ALTER TABLE batches ADD COLUMN bid_milli BIGINT NOT NULL DEFAULT 0,
                         ADD COLUMN pause_when_broke BIGINT NOT NULL DEFAULT 0;
     ALTER TABLE volunteers ADD COLUMN token_hash TEXT;
     UPDATE volunteers SET token_hash = (SELECT r.token_hash FROM researchers r
                                         WHERE r.account_id = volunteers.id
                                           AND r.revoked_ms IS NULL);
     CREATE UNIQUE INDEX volunteers_by_token ON volunteers (token_hash);",
    // 8: seasoned hosts, as SQLite's schema 14.
    "ALTER TABLE hosts ADD COLUMN valid_results BIGINT NOT NULL DEFAULT 0;
     UPDATE hosts SET valid_results =
         (SELECT COUNT(*) FROM credit c WHERE c.host_id = hosts.id)
       - (SELECT COUNT(*) FROM credit_revoked x WHERE x.host_id = hosts.id);
     ALTER TABLE replicas ADD COLUMN seasoned BIGINT NOT NULL DEFAULT 0;
     ALTER TABLE batches ADD COLUMN seasoned_after BIGINT;",
    // 9: hosts' timeouts in a row, as SQLite's schema 15.
    "ALTER TABLE hosts ADD COLUMN timeouts_in_a_row BIGINT NOT NULL DEFAULT 0;",
];

/// The tables, as SQLite's schema 9 has them: every integer is a `BIGINT` (flags are 0/1),
/// keys are `BYTEA`, averages `DOUBLE PRECISION`. Batch, unit and replica ids come from
/// sequences the store reserves from (never reused); the others are identities.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
CREATE TABLE volunteers (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    team TEXT,
    rac DOUBLE PRECISION NOT NULL DEFAULT 0,
    rac_ms BIGINT NOT NULL DEFAULT 0,
    created_ms BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE teams (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_ms BIGINT NOT NULL
);
CREATE TABLE hosts (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    public_key BYTEA NOT NULL UNIQUE,
    volunteer_id BIGINT NOT NULL REFERENCES volunteers(id),
    cores BIGINT NOT NULL,
    registered_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    rac DOUBLE PRECISION NOT NULL DEFAULT 0,
    rac_ms BIGINT NOT NULL DEFAULT 0,
    refused_reports BIGINT NOT NULL DEFAULT 0,
    consecutive_valid BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE researchers (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    token_hash TEXT NOT NULL UNIQUE,
    created_ms BIGINT NOT NULL
);
CREATE SEQUENCE batches_id_seq;
CREATE TABLE batches (
    id BIGINT PRIMARY KEY DEFAULT nextval('batches_id_seq'),
    module_hash TEXT NOT NULL,
    quorum BIGINT NOT NULL,
    max_total_replicas BIGINT NOT NULL,
    max_error_replicas BIGINT NOT NULL,
    replica_deadline_ms BIGINT NOT NULL,
    fuel_limit BIGINT NOT NULL,
    memory_limit_bytes BIGINT NOT NULL,
    output_limit_bytes BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    initial_replicas BIGINT NOT NULL DEFAULT 0,
    max_success_replicas BIGINT NOT NULL DEFAULT 0,
    priority BIGINT NOT NULL DEFAULT 0,
    trust_after BIGINT,
    spot_check_ppm BIGINT,
    researcher_id BIGINT REFERENCES researchers(id)
);
CREATE INDEX batches_by_researcher ON batches (researcher_id, id);
CREATE SEQUENCE units_id_seq;
CREATE TABLE units (
    id BIGINT PRIMARY KEY DEFAULT nextval('units_id_seq'),
    batch_id BIGINT NOT NULL REFERENCES batches(id),
    name TEXT NOT NULL,
    input_hash TEXT NOT NULL,
    seed BIGINT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('open', 'validated', 'failed')),
    canonical TEXT,
    failure TEXT,
    alone BIGINT NOT NULL DEFAULT 0,
    alone_host_id BIGINT,
    alone_replica_id BIGINT,
    settled_ms BIGINT,
    UNIQUE (batch_id, name)
);
CREATE INDEX units_by_state ON units (state, id);
CREATE INDEX units_by_batch ON units (batch_id, state, id);
CREATE INDEX units_by_input ON units (input_hash);
CREATE INDEX units_alone_unconfirmed ON units (alone_host_id) WHERE alone_host_id IS NOT NULL;
CREATE INDEX units_by_settled ON units (settled_ms) WHERE settled_ms IS NOT NULL;
CREATE SEQUENCE replicas_id_seq;
CREATE TABLE replicas (
    id BIGINT PRIMARY KEY DEFAULT nextval('replicas_id_seq'),
    unit_id BIGINT NOT NULL REFERENCES units(id),
    host_id BIGINT NOT NULL REFERENCES hosts(id),
    volunteer_id BIGINT NOT NULL REFERENCES volunteers(id),
    assigned_ms BIGINT NOT NULL,
    deadline_ms BIGINT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('in_progress', 'reported', 'aborted', 'timed_out')),
    result TEXT,
    abort_reason TEXT,
    validity TEXT NOT NULL DEFAULT 'pending' CHECK (validity IN ('pending', 'valid', 'invalid')),
    reported_ms BIGINT,
    output_hash TEXT
);
CREATE INDEX replicas_by_unit ON replicas (unit_id);
CREATE INDEX replicas_in_progress ON replicas (state, deadline_ms);
CREATE INDEX replicas_by_host ON replicas (host_id, state);
CREATE INDEX replicas_by_output ON replicas (output_hash);
CREATE TABLE credit (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    replica_id BIGINT NOT NULL UNIQUE,
    volunteer_id BIGINT NOT NULL REFERENCES volunteers(id),
    host_id BIGINT NOT NULL REFERENCES hosts(id),
    fuel BIGINT NOT NULL,
    granted_ms BIGINT NOT NULL
);
CREATE INDEX credit_by_time ON credit (granted_ms);
CREATE INDEX credit_by_volunteer ON credit (volunteer_id);
CREATE INDEX credit_by_host ON credit (host_id);
CREATE TABLE credit_revoked (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    replica_id BIGINT NOT NULL UNIQUE,
    volunteer_id BIGINT NOT NULL REFERENCES volunteers(id),
    host_id BIGINT NOT NULL REFERENCES hosts(id),
    fuel BIGINT NOT NULL,
    revoked_ms BIGINT NOT NULL
);
CREATE TABLE blob_uploads (
    hash TEXT NOT NULL,
    researcher_id BIGINT NOT NULL REFERENCES researchers(id),
    PRIMARY KEY (hash, researcher_id)
);
";

/// Ids reserved from a sequence at a time by the writer.
const ID_BLOCK: usize = 256;

/// Connections serving reads beside the writer.
const READERS: usize = 2;

/// The coordinator's state in a PostgreSQL database. See the module documentation.
pub struct PgStore {
    url: String,
    threads: Threads,
    lease: Arc<Lease>,
    /// Closing it stops the lease's thread, which then releases the lease.
    stop_lease: Option<mpsc::Sender<()>>,
    lease_thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // The writer first (it finishes what it holds), then the lease goes.
        drop(std::mem::replace(&mut self.threads, Threads::none()));
        drop(self.stop_lease.take());
        if let Some(thread) = self.lease_thread.take() {
            let _ = thread.join();
        }
    }
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user@host:port/name`), creating the
    /// schema if the database is empty, as a coordinator with no HTTP address to give.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_as(url, "(no HTTP address)")
    }

    /// Connects as the coordinator serving HTTP at `http`, and takes its share of the shards no
    /// one holds (all of them, for the first coordinator: see [`lease`]).
    pub fn connect_as(url: &str, http: &str) -> Result<Self, StoreError> {
        let mut db = PgDb::connect(url)?;
        db.create_schema()?;
        // Load once here so a corrupt database is refused at start, not at the first request.
        db.begin_plain()?;
        let loaded = work::load_live(&mut db, Shards::alone());
        db.rollback();
        loaded?;
        let lease = Lease::new(http)?;
        db.lease = Some(lease.clone());
        // The first round at once: a lone coordinator holds every shard when this returns.
        let mut lease_db = PgDb::connect(url)?;
        if let Err(error) = lease.tick(&mut lease_db) {
            tracing::warn!("the shards' leases: {error}");
        }
        let (stop_lease, stopped) = mpsc::channel();
        let keeper = lease.clone();
        let lease_thread = std::thread::Builder::new()
            .name("herd-pg-lease".into())
            .spawn(move || lease::keep(keeper, lease_db, stopped))
            .map_err(|e| StoreError::Corrupt(format!("cannot start the lease thread: {e}")))?;
        let readers = (0..READERS)
            .map(|_| PgDb::connect(url))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            url: url.to_owned(),
            threads: Threads::start("herd-pg", db, readers)?,
            lease,
            stop_lease: Some(stop_lease),
            lease_thread: Some(lease_thread),
        })
    }
}

impl PgStore {
    /// The shards this coordinator holds now, with their epochs.
    pub fn shards_held(&self) -> BTreeMap<u64, u64> {
        self.lease.held()
    }

    /// The project's secrets (its certificate and key, signing key and administrator's token,
    /// by file name), the same for every coordinator of the project: `ours` are recorded if the
    /// database has none yet (the first coordinator's), and the database's are returned. On a
    /// connection of its own, outside the writer: a coordinator needs them before it writes
    /// anything.
    pub fn project_secrets(
        &self,
        ours: Vec<(String, Vec<u8>)>,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut db = PgDb::connect(&self.url)?;
        db.begin_plain()?;
        for (name, value) in ours {
            db.execute(
                "INSERT INTO project_secrets (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO NOTHING",
                &[Value::from(name), Value::Blob(value)],
            )?;
        }
        let secrets = db
            .query("SELECT name, value FROM project_secrets ORDER BY name", &[])?
            .iter()
            .map(|row| Ok((row.text(0)?, row.blob(1)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        db.commit()?;
        Ok(secrets)
    }
}

impl Backend for PgStore {
    fn threads(&self) -> &Threads {
        &self.threads
    }

    fn shared(&self) -> bool {
        true
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        // The server's own message (with its detail) says what went wrong; the client's
        // `Display` alone says only "db error".
        match error.as_db_error() {
            Some(db) => StoreError::Postgres(match db.detail() {
                Some(detail) => format!("{}: {detail}", db.message()),
                None => db.message().to_string(),
            }),
            None => StoreError::Postgres(error.to_string()),
        }
    }
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(value) => match *ty {
                Type::INT8 => value.to_sql(ty, out),
                Type::INT4 => i32::try_from(*value)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*value)?.to_sql(ty, out),
                Type::BOOL => (*value != 0).to_sql(ty, out),
                Type::FLOAT8 => (*value as f64).to_sql(ty, out),
                _ => Err(format!("an integer cannot be sent as {ty}").into()),
            },
            Value::Real(value) => match *ty {
                Type::FLOAT8 => value.to_sql(ty, out),
                Type::FLOAT4 => (*value as f32).to_sql(ty, out),
                _ => Err(format!("a number cannot be sent as {ty} (cast the parameter)").into()),
            },
            Value::Text(value) => match *ty {
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => value.to_sql(ty, out),
                _ => Err(format!("text cannot be sent as {ty}").into()),
            },
            Value::Blob(value) => match *ty {
                Type::BYTEA => value.to_sql(ty, out),
                _ => Err(format!("bytes cannot be sent as {ty}").into()),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// A column of a PostgreSQL row as a [`Value`].
fn value_of(row: &tokio_postgres::Row, index: usize) -> Result<Value, StoreError> {
    let ty = row.columns()[index].type_();
    let value = match *ty {
        Type::INT8 => row.try_get::<_, Option<i64>>(index)?.map(Value::Int),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(index)?
            .map(|v| Value::Int(v.into())),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(index)?
            .map(|v| Value::Int(v.into())),
        Type::BOOL => row
            .try_get::<_, Option<bool>>(index)?
            .map(|v| Value::Int(v.into())),
        Type::FLOAT8 => row.try_get::<_, Option<f64>>(index)?.map(Value::Real),
        Type::FLOAT4 => row
            .try_get::<_, Option<f32>>(index)?
            .map(|v| Value::Real(v.into())),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
            row.try_get::<_, Option<String>>(index)?.map(Value::Text)
        }
        Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(index)?.map(Value::Blob),
        _ => {
            return Err(StoreError::Corrupt(format!(
                "column {index} has type {ty}, which the store does not read (cast it)"
            )));
        }
    };
    Ok(value.unwrap_or(Value::Null))
}

/// `?N` parameters as PostgreSQL writes them (`$N`). The store's SQL has no `?` elsewhere.
fn dollar_parameters(sql: &str) -> String {
    sql.replace('?', "$")
}

/// A PostgreSQL connection behind [`Sql`], driven by its own single-threaded runtime.
pub(crate) struct PgDb {
    url: String,
    runtime: tokio::runtime::Runtime,
    client: Client,
    /// Prepared statements by the store's SQL text.
    statements: HashMap<String, Statement>,
    /// Statements held until the next query or the commit, in order.
    held: Vec<(String, Vec<Value>)>,
    /// Writes to rows other coordinators write too, held until the commit (see
    /// [`Sql::execute_shared`]).
    shared: Vec<(SharedRow, String, Vec<Value>)>,
    /// Ids reserved from each sequence and not used yet.
    ids: HashMap<Sequence, VecDeque<u64>>,
    /// The writer's: the leases every group is fenced by.
    lease: Option<Arc<Lease>>,
    /// The shards (with their epochs) and the work version the live work was loaded under.
    loaded: Option<Loaded>,
    /// The same as the group now running found them in the database.
    current: Loaded,
    /// The operation of the group now running, if any (see [`Database::begin_job`]).
    job: Option<JobMark>,
}

/// Where an operation's held writes begin, and whether its savepoint has been sent: only when
/// the operation reads midway (its earlier writes must then go out first). An operation that
/// reads nothing, as the hot path's do, is undone by forgetting its held writes, and costs the
/// server no subtransaction (PostgreSQL slows down past 64 in one transaction).
#[derive(Clone, Copy, Debug)]
struct JobMark {
    held_from: usize,
    shared_from: usize,
    savepoint: bool,
}

/// Shards held, by epoch, and the work version (`None` with no shard held).
type Loaded = (BTreeMap<u64, u64>, Option<u64>);

impl PgDb {
    pub(crate) fn connect(url: &str) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Postgres(format!("cannot start a runtime: {e}")))?;
        let client = Self::open(&runtime, url)?;
        Ok(Self {
            url: url.to_owned(),
            runtime,
            client,
            statements: HashMap::new(),
            held: Vec::new(),
            shared: Vec::new(),
            ids: HashMap::new(),
            lease: None,
            loaded: None,
            current: Loaded::default(),
            job: None,
        })
    }

    fn open(runtime: &tokio::runtime::Runtime, url: &str) -> Result<Client, StoreError> {
        let (client, connection) = runtime
            .block_on(tokio_postgres::connect(url, NoTls))
            .map_err(|e| StoreError::Postgres(format!("cannot connect to {url}: {e}")))?;
        // The connection's task runs whenever this thread waits on the runtime.
        runtime.spawn(connection);
        // A coordinator stopped in the middle of a transaction (SIGSTOP, a stalled machine) is
        // cut off, so the locks it holds (the lease row's among them) do not outlive its lease.
        runtime
            .block_on(client.batch_execute(
                "SET idle_in_transaction_session_timeout = '5s'; SET lock_timeout = '5s'",
            ))
            .map_err(|e| StoreError::Postgres(format!("cannot set up the connection: {e}")))?;
        Ok(client)
    }

    /// Opens the connection again if it broke (the server restarted); its prepared statements
    /// went with it.
    fn reconnect_if_closed(&mut self) -> Result<(), StoreError> {
        // The connection's task only runs while this thread waits on the runtime: let it see
        // what happened to the socket meanwhile (a server that went away).
        self.runtime.block_on(tokio::task::yield_now());
        if self.client.is_closed() {
            self.client = Self::open(&self.runtime, &self.url)?;
            self.statements.clear();
            self.held.clear();
            self.shared.clear();
        }
        Ok(())
    }

    /// Creates the schema in an empty database, or checks the version of an existing one. An
    /// advisory lock keeps coordinators starting together from creating it twice.
    pub(crate) fn create_schema(&mut self) -> Result<(), StoreError> {
        let client = &self.client;
        self.runtime.block_on(async {
            client
                .batch_execute("SELECT pg_advisory_lock(7269657264)")
                .await?;
            let exists: bool = client
                .query_one("SELECT to_regclass('volunteers') IS NOT NULL", &[])
                .await?
                .try_get(0)?;
            let result = async {
                if !exists {
                    client
                        .batch_execute(&format!(
                            "BEGIN; {SCHEMA}
                             INSERT INTO meta (key, value) VALUES ('schema_version', 1);
                             COMMIT;"
                        ))
                        .await?;
                }
                loop {
                    let version: i64 = client
                        .query_one("SELECT value FROM meta WHERE key = 'schema_version'", &[])
                        .await?
                        .try_get(0)?;
                    if version == SCHEMA_VERSION {
                        return Ok(());
                    }
                    let migration = usize::try_from(version - 1)
                        .ok()
                        .and_then(|i| MIGRATIONS.get(i))
                        .ok_or_else(|| {
                            StoreError::Corrupt(format!(
                                "database schema version {version}, this coordinator reads up to \
                                 {SCHEMA_VERSION}"
                            ))
                        })?;
                    client
                        .batch_execute(&format!(
                            "BEGIN; {migration}
                             UPDATE meta SET value = {} WHERE key = 'schema_version';
                             COMMIT;",
                            version + 1
                        ))
                        .await?;
                }
            }
            .await;
            client
                .batch_execute("SELECT pg_advisory_unlock(7269657264)")
                .await?;
            result
        })
    }

    /// Prepares (once) every statement of `sqls`, pipelined.
    fn prepare_all<'s>(&mut self, sqls: impl Iterator<Item = &'s str>) -> Result<(), StoreError> {
        let mut missing: Vec<String> = Vec::new();
        for sql in sqls {
            if !self.statements.contains_key(sql) && !missing.iter().any(|m| m == sql) {
                missing.push(sql.to_owned());
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let client = &self.client;
        let prepared = self.runtime.block_on(try_join_all(
            missing
                .iter()
                .map(|sql| async move { client.prepare(&dollar_parameters(sql)).await }),
        ))?;
        self.statements.extend(missing.into_iter().zip(prepared));
        Ok(())
    }

    /// Sends every held statement, pipelined, and waits for all their answers.
    pub(crate) fn flush(&mut self) -> Result<(), StoreError> {
        if let Some(mark) = &mut self.job
            && !mark.savepoint
        {
            // This operation is about to reach the server (its writes, or a statement run at
            // once): from here on it is undone by its savepoint.
            self.held
                .insert(mark.held_from, ("SAVEPOINT job".to_owned(), Vec::new()));
            mark.savepoint = true;
        }
        if self.held.is_empty() {
            return Ok(());
        }
        let held = std::mem::take(&mut self.held);
        self.prepare_all(held.iter().map(|(sql, _)| sql.as_str()))?;
        let client = &self.client;
        let statements = &self.statements;
        self.runtime
            .block_on(try_join_all(held.iter().map(|(sql, params)| async move {
                let statement = statements
                    .get(sql)
                    .ok_or_else(|| StoreError::Corrupt(format!("not prepared: {sql}")))?;
                let params: Vec<&(dyn ToSql + Sync)> =
                    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
                client
                    .execute(statement, &params)
                    .await
                    .map_err(StoreError::from)
            })))?;
        Ok(())
    }

    fn statement(&mut self, sql: &str) -> Result<Statement, StoreError> {
        self.prepare_all(std::iter::once(sql))?;
        self.statements
            .get(sql)
            .cloned()
            .ok_or_else(|| StoreError::Corrupt(format!("not prepared: {sql}")))
    }
}

impl Sql for PgDb {
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<(), StoreError> {
        self.held.push((sql.to_owned(), params.to_vec()));
        Ok(())
    }

    fn execute_shared(
        &mut self,
        row: SharedRow,
        sql: &str,
        params: &[Value],
    ) -> Result<(), StoreError> {
        self.shared.push((row, sql.to_owned(), params.to_vec()));
        Ok(())
    }

    fn announce(&mut self, change: WorkChange) -> Result<(), StoreError> {
        if change == WorkChange::Barrier {
            // Waits for every coordinator's group in flight (each holds its lease rows `FOR KEY
            // SHARE`); every group beginning after this waits for the commit, then sees the
            // new version and loads its live work again.
            self.query("SELECT shard FROM leases ORDER BY shard FOR UPDATE", &[])?;
        }
        self.execute(
            "UPDATE work_version SET version = version + 1 WHERE id = 0",
            &[],
        )
    }

    fn execute_count(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        self.flush()?;
        let statement = self.statement(sql)?;
        let params: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        Ok(self
            .runtime
            .block_on(self.client.execute(&statement, &params))?)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        self.flush()?;
        let statement = self.statement(sql)?;
        let params: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let rows = self
            .runtime
            .block_on(self.client.query(&statement, &params))?;
        rows.iter()
            .map(|row| {
                (0..row.len())
                    .map(|index| value_of(row, index))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Row)
            })
            .collect()
    }

    /// Ids from the table's sequence, a block at a time: sequences are never rolled back, so
    /// an id is never handed out twice, by this coordinator or any other.
    fn reserve_ids(&mut self, sequence: Sequence, n: usize) -> Result<Vec<u64>, StoreError> {
        let available = self.ids.get(&sequence).map_or(0, VecDeque::len);
        if available < n {
            let wanted = (n - available).max(ID_BLOCK);
            let rows = self.query(
                &format!(
                    "SELECT nextval('{}_id_seq') FROM generate_series(1, ?1)",
                    sequence.table()
                ),
                &args![wanted],
            )?;
            let fresh = rows
                .iter()
                .map(|row| row.u64(0))
                .collect::<Result<Vec<_>, _>>()?;
            self.ids.entry(sequence).or_default().extend(fresh);
        }
        let ids = self.ids.entry(sequence).or_default();
        Ok(ids.drain(..n).collect())
    }
}

impl PgDb {
    /// Begins a transaction, reconnecting first if the connection broke.
    fn begin_plain(&mut self) -> Result<(), StoreError> {
        self.reconnect_if_closed()?;
        self.execute("BEGIN", &[])
    }
}

impl Reader for PgDb {
    fn begin_read(&mut self) -> Result<(), StoreError> {
        self.reconnect_if_closed()?;
        self.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", &[])
    }

    fn end_read(&mut self) {
        self.rollback();
    }
}

impl Database for PgDb {
    /// Begins a group, fenced by the leases: this coordinator's lease rows, read `FOR KEY
    /// SHARE` (so no takeover or hand-off, which lock a row `FOR UPDATE`, happens until this
    /// group ends), say which shards it decides now. The live work is current if it was loaded
    /// under exactly those shards and epochs and the same work version; a shard lost since is
    /// dropped from it, fenced.
    fn begin(&mut self) -> Result<bool, StoreError> {
        self.begin_plain()?;
        let Some(lease) = self.lease.clone() else {
            return Ok(true);
        };
        let rows = self.query(
            "SELECT l.shard, l.epoch, v.version FROM leases l, work_version v
             WHERE l.holder = ?1 AND v.id = 0 FOR KEY SHARE OF l",
            &args![&lease.name],
        )?;
        let mut held = BTreeMap::new();
        let mut version = None;
        for row in &rows {
            held.insert(row.u64(0)?, row.u64(1)?);
            version = Some(row.u64(2)?);
        }
        let current = match self.loaded.clone() {
            Some((loaded, loaded_version)) => {
                for (&shard, &epoch) in &loaded {
                    if held.get(&shard) != Some(&epoch) {
                        let holder = self
                            .query_row("SELECT holder FROM leases WHERE shard = ?1", &args![shard])?
                            .map(|row| row.opt_text(0))
                            .transpose()?
                            .flatten();
                        lease.let_go(shard, epoch, holder.as_deref());
                    }
                }
                loaded == held && (held.is_empty() || loaded_version == version)
            }
            None => false,
        };
        self.current = (held, version);
        Ok(current)
    }

    fn load_live(&mut self) -> Result<Live, StoreError> {
        let shards = match &self.lease {
            Some(_) => Shards::shared(self.current.0.keys().copied()),
            None => Shards::alone(),
        };
        let live = work::load_live(self, shards)?;
        self.loaded = Some(self.current.clone());
        Ok(live)
    }

    fn after_group(&mut self, live: &Live) {
        let Some(lease) = &self.lease else {
            return;
        };
        lease.observe(live.wanting_by_shard());
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        // Rows other coordinators write are locked last, in one order for every coordinator.
        let mut shared = std::mem::take(&mut self.shared);
        shared.sort_by_key(|(row, _, _)| *row);
        self.held
            .extend(shared.into_iter().map(|(_, sql, params)| (sql, params)));
        self.execute("COMMIT", &[])?;
        self.flush()
    }

    fn rollback(&mut self) {
        self.held.clear();
        self.shared.clear();
        self.job = None;
        if !self.client.is_closed() {
            let _ = self.runtime.block_on(self.client.batch_execute("ROLLBACK"));
        }
    }

    fn as_sql(&mut self) -> &mut dyn Sql {
        self
    }

    fn begin_job(&mut self) -> Result<(), StoreError> {
        self.job = Some(JobMark {
            held_from: self.held.len(),
            shared_from: self.shared.len(),
            savepoint: false,
        });
        Ok(())
    }

    fn end_job(&mut self) -> Result<(), StoreError> {
        match self.job.take() {
            Some(mark) if mark.savepoint => self.execute("RELEASE job", &[]),
            _ => Ok(()),
        }
    }

    fn undo_job(&mut self) -> Result<(), StoreError> {
        if let Some(mark) = &self.job {
            self.shared.truncate(mark.shared_from);
        }
        match self.job.take() {
            Some(mark) if mark.savepoint => {
                self.execute("ROLLBACK TO job", &[])?;
                self.execute("RELEASE job", &[])
            }
            Some(mark) => {
                self.held.truncate(mark.held_from);
                Ok(())
            }
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shards::{SHARDS, shard_of};

    use crate::tests::{CreateUploaded, batch};
    use crate::{ReportEffect, Store};
    use herd_protocol::{ContentHash, Outcome, PublicKey, RunResult, Status};

    fn within_seconds(seconds: u64, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "{what} within {seconds} s"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    fn success() -> Outcome {
        Outcome::Countable(RunResult {
            status: Status::Success,
            fuel: 1000,
            output_len: 3,
            output_hash: ContentHash::of(b"out"),
        })
    }

    /// Two coordinators on one database: the first holds every shard until the second comes,
    /// then each holds half; each hands out only the units of its own shards; a report reaching
    /// the coordinator that does not decide its unit is kept and settled by the one that does;
    /// and when the first goes, the second takes every shard over and decides what it left.
    #[test]
    fn coordinators_share_the_shards_forward_reports_and_take_over() {
        let url = herd_pgtest::fresh_database().expect("a database");
        let first = PgStore::connect_as(&url, "http://first").expect("the first coordinator");
        assert_eq!(
            first.shards_held().len() as u64,
            SHARDS,
            "a lone coordinator holds all"
        );
        first
            .ensure_researcher("tester", "token-hash", 0)
            .wait()
            .expect("researcher");
        let second = PgStore::connect_as(&url, "http://second").expect("a second coordinator");
        within_seconds(30, "each holds its share", || {
            let (a, b) = (first.shards_held(), second.shards_held());
            a.len() == 8 && b.len() == 8 && a.keys().all(|shard| !b.contains_key(shard))
        });
        // Any coordinator creates batches; the holders of its units' shards decide them.
        second
            .create_uploaded(&batch(16, 2), 0)
            .wait()
            .expect("a batch through the second");
        let register = |store: &PgStore, n: u8| {
            store
                .register_host(&PublicKey([n; 32]), &format!("volunteer-{n}"), None, 16, 0)
                .wait()
                .expect("register")
                .host_id
        };
        let take_all = |store: &PgStore, host: u64| {
            let mut units = Vec::new();
            while let Some(assignment) = store.assign(host, 10).wait().expect("assign") {
                units.push((assignment.unit_id, assignment.replica_id));
            }
            units
        };
        let (a, b) = (register(&first, 1), register(&second, 2));
        // Hosts with a history, so each may hold its whole share at once.
        crate::tests::give_history(&first, a, 100);
        crate::tests::give_history(&second, b, 100);
        let mut on_first = Vec::new();
        within_seconds(10, "the first loads the batch made by the second", || {
            on_first.extend(take_all(&first, a));
            !on_first.is_empty()
        });
        let on_second = take_all(&second, b);
        assert_eq!((on_first.len(), on_second.len()), (8, 8), "each its half");
        let held_by_first = first.shards_held();
        assert!(
            on_first
                .iter()
                .all(|(unit, _)| held_by_first.contains_key(&shard_of(*unit)))
        );
        assert!(
            on_second
                .iter()
                .all(|(unit, _)| !held_by_first.contains_key(&shard_of(*unit)))
        );
        // Worker a failed over to the second coordinator: its reports are kept, not refused.
        register(&second, 1);
        for (unit, replica) in &on_first {
            assert_eq!(
                second
                    .record_report(a, *replica, &success(), 20)
                    .wait()
                    .expect("forwarded"),
                ReportEffect::Forwarded {
                    shard: shard_of(*unit)
                }
            );
        }
        // A repeat is kept once; someone else's replica is still refused.
        let (_, repeated) = on_first[0];
        second
            .record_report(a, repeated, &success(), 21)
            .wait()
            .expect("again");
        assert!(
            second
                .record_report(b, repeated, &success(), 21)
                .wait()
                .is_err()
        );
        // Worker a, having delivered them, comes back to the first holding nothing: its
        // reports waiting in the inbox are not lost replicas to reissue.
        assert_eq!(
            first
                .release_lost_replicas(a, &[], 22)
                .wait()
                .expect("release"),
            0,
            "reported through the other coordinator, not lost"
        );
        assert_eq!(
            second.settle_forwarded().wait().expect("settle"),
            0,
            "not its shards"
        );
        assert_eq!(first.settle_forwarded().wait().expect("settle"), 8);
        assert_eq!(
            first.settle_forwarded().wait().expect("settle"),
            0,
            "settled once"
        );
        for (_, replica) in &on_second {
            assert_eq!(
                second
                    .record_report(b, *replica, &success(), 30)
                    .wait()
                    .expect("report"),
                ReportEffect::Recorded
            );
        }
        // The first goes (a clean stop gives its leases up): the second takes every shard and
        // decides the units the first left, with the reports it settled.
        drop(first);
        within_seconds(15, "the second takes every shard over", || {
            second.shards_held().len() as u64 == SHARDS
        });
        let mut validated = 0;
        for (_, replica) in take_all(&second, b) {
            match second
                .record_report(b, replica, &success(), 40)
                .wait()
                .expect("report")
            {
                ReportEffect::Validated { .. } => validated += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(validated, 8, "every unit a reported through the second");
        let c = register(&second, 3);
        crate::tests::give_history(&second, c, 100);
        assert_eq!(take_all(&second, c).len(), 8, "the units b alone reported");
    }

    #[test]
    fn parameters_are_written_the_postgresql_way() {
        assert_eq!(
            dollar_parameters("SELECT a FROM t WHERE b = ?1 AND c > ?12"),
            "SELECT a FROM t WHERE b = $1 AND c > $12"
        );
    }
}
