//! Storage: the coordinator's durable state, behind one seam.
//!
//! [`Store`] is the seam: the coordinator's shell calls only its methods. Two backends implement
//! it, [`SqliteStore`] (one embedded file, the default) and [`PgStore`] (PostgreSQL, shared by
//! several coordinators). Both run the same logic: what each call does (`operations.rs`), the
//! hot path (`work.rs`), the reads (`reads.rs`, `researchers.rs`, `stats.rs`) are written once
//! against `sql::Sql`, and a backend is only how it runs SQL, commits groups and serves reads.
//! Rows (volunteers, hosts, batches, units, replicas, the credit ledger) live in the database;
//! bytes (modules, inputs, outputs) live in the content-addressed blob store (`herd-blobs`).
//!
//! Architecture Invariant: every method that changes state commits its transaction before its
//! result arrives, so whatever the coordinator acknowledges has been made durable.
//!
//! Architecture Invariant: a replica is credited at most once (the ledger's `replica_id` is
//! unique), and only after a quorum agreed on its result.

mod accounts;
mod group;
pub mod ledger;
mod live;
mod migrate;
mod operations;
mod pending;
mod postgres;
mod reads;
mod researchers;
mod shards;
mod sql;
mod sqlite;
mod stats;
mod threads;
mod work;

use herd_lifecycle::Policy;
use herd_protocol::{Assignment, ContentHash, Outcome, PublicKey, RunResult};
use serde::Serialize;

pub use migrate::{Migrated, migrate_sqlite_to_postgres};
pub use pending::{Answer, Pending};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// A storage failure, or a request the stored state refuses.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] rusqlite::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("replica {0} does not exist")]
    UnknownReplica(u64),
    #[error("replica {replica_id} was not assigned to this host")]
    NotYourReplica { replica_id: u64 },
    #[error("host is not registered")]
    UnknownHost,
    /// A report of a result no honest run makes: refused, and counted against its host.
    #[error("replica {replica_id}: {reason}")]
    ImpossibleReport { replica_id: u64, reason: String },
    /// A host presented an account key no account holds: never issued, or replaced or revoked
    /// (`revoked`) since.
    #[error("{}", if *revoked {
        "the account key was revoked: ask the project for a new one (herd account key NAME)"
    } else {
        "the account key is not one of this project's: check it, or sign up (herd account create NAME)"
    })]
    UnknownAccount { revoked: bool },
    /// A name (an account's) that someone already has.
    #[error("{0}")]
    Taken(String),
    #[error("{0}")]
    Invalid(String),
    /// A batch names a module or input that its researcher has not uploaded (and no batch of
    /// theirs uses): missing, or someone else's, which looks the same.
    #[error("blob {0} has not been uploaded")]
    BlobMissing(ContentHash),
    /// A well-formed request the project's rules refuse (a new host may not change the team of
    /// the volunteer it joins).
    #[error("{0}")]
    NotAllowed(String),
    #[error("could not commit: {0}")]
    Commit(String),
    #[error("the store is closed")]
    Closed,
}

impl StoreError {
    /// Whether the database could not write for want of disk space (SQLite's `SQLITE_FULL`,
    /// PostgreSQL's class 53, or either's message of it, as another caller of the same group
    /// commit receives it): nothing of the operation was kept, and it may be tried again once
    /// space is freed.
    pub fn is_disk_full(&self) -> bool {
        const SAID: [&str; 3] = ["disk is full", "No space left on device", "53100"];
        match self {
            StoreError::Database(rusqlite::Error::SqliteFailure(failure, _)) => {
                failure.code == rusqlite::ErrorCode::DiskFull
            }
            StoreError::Database(_) => false,
            StoreError::Postgres(message) | StoreError::Commit(message) => {
                SAID.iter().any(|said| message.contains(said))
            }
            _ => false,
        }
    }
}

/// Why the store refused a report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReportRefusal {
    /// No such replica.
    UnknownReplica,
    /// The replica was assigned to another host.
    NotYourReplica,
    /// A result no honest run makes (more fuel than the batch's budget, more output than its
    /// limit), saying which.
    Impossible(String),
}

/// A registered host and its volunteer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRecord {
    pub host_id: u64,
    pub volunteer_id: u64,
    /// The volunteer's (account's) name as the project has it.
    pub volunteer: String,
    pub cores: u32,
}

/// An account: a volunteer who computes (and, with the submit permission, a researcher). Its
/// key is never kept, only the key's hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Account {
    pub id: u64,
    pub name: String,
    pub team: Option<String>,
    pub created_ms: u64,
    /// Whether it has an account key now (not revoked).
    pub has_key: bool,
}

/// An account's key changed: the account as it is now, and the hash of the key it had, which
/// no longer attaches anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyChange {
    pub account: Account,
    pub replaced: Option<String>,
}

/// Everything the statistics exports publish: every volunteer, team and host with credit, as
/// BOINC's `db_dump` writes them for stats sites.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StatsDump {
    pub volunteers: Vec<VolunteerStats>,
    pub teams: Vec<TeamStats>,
    pub hosts: Vec<HostStats>,
}

/// A volunteer's line in the statistics.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VolunteerStats {
    pub id: u64,
    pub name: String,
    pub created_ms: u64,
    pub team_id: Option<u64>,
    pub credit: f64,
    pub recent_average_credit: f64,
    /// When the recent average was last brought up to date (Unix milliseconds).
    pub rac_ms: u64,
}

/// A team's line: its members' sums.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TeamStats {
    pub id: u64,
    pub name: String,
    pub created_ms: u64,
    /// The first volunteer who joined it (BOINC's founder).
    pub founder_id: u64,
    pub founder_name: String,
    pub members: u64,
    pub credit: f64,
    pub recent_average_credit: f64,
    pub rac_ms: u64,
}

/// A host's line.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HostStats {
    pub id: u64,
    pub volunteer_id: u64,
    pub cores: u32,
    pub created_ms: u64,
    pub last_seen_ms: u64,
    pub credit: f64,
    pub recent_average_credit: f64,
    pub rac_ms: u64,
}

/// The project at a glance, for dashboards and `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ProjectSummary {
    /// Accounts with at least one host.
    pub volunteers: u64,
    /// Volunteers with a host seen within the activity window.
    pub volunteers_active: u64,
    pub hosts: u64,
    /// Hosts seen within the activity window.
    pub hosts_active: u64,
    /// Units validated per second over the throughput window.
    pub units_per_second: f64,
    /// Fuel credited per second over the throughput window (every agreeing replica's).
    pub fuel_per_second: f64,
    /// The throughput window, in seconds.
    pub window_secs: u64,
    /// Units waiting for results: open units of every batch.
    pub queue_depth: u64,
    pub replicas_in_progress: u64,
    pub batches_open: u64,
    pub units_validated: u64,
    pub units_failed: u64,
    /// Every grant less every revocation, in credits.
    pub total_credit: f64,
}

/// Work done in one interval of time, for throughput charts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ThroughputBucket {
    /// The interval's start (Unix milliseconds).
    pub start_ms: u64,
    /// Units validated in it.
    pub units: u64,
    /// Fuel credited in it.
    pub fuel: u64,
}

/// A researcher: who may create batches and see them (no one else sees them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Researcher {
    pub id: u64,
    pub name: String,
}

/// One line of a researcher's list of batches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BatchSummary {
    pub id: u64,
    pub module: String,
    pub quorum: u32,
    pub priority: i32,
    pub total: u64,
    pub open: u64,
    pub validated: u64,
    pub failed: u64,
    pub created_ms: u64,
}

/// A batch to create: one module, its policy and limits, and one unit per input.
#[derive(Clone, Debug)]
pub struct NewBatch {
    /// Whose batch it is.
    pub researcher_id: u64,
    pub module: ContentHash,
    pub policy: Policy,
    pub fuel_limit: u64,
    pub memory_limit_bytes: u64,
    pub output_limit_bytes: u64,
    /// Higher goes first; batches of equal priority share the workers fairly.
    pub priority: i32,
    /// What the batch pays for its validated units, and what happens when its owner cannot.
    pub pricing: Pricing,
    pub units: Vec<NewUnit>,
}

/// What a batch pays for each validated unit: `bid_milli` thousandths of a credit per credit of
/// the fuel its quorum agreed (0: the free tier, paying nothing), taken from its owner's balance
/// ([`ledger`](crate::ledger)). Paying batches are served before free ones, the higher bid first;
/// when the owner's balance is spent the batch is served as free, at priority 0, or with
/// `pause_when_broke` waits until the owner can pay again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pricing {
    pub bid_milli: u32,
    pub pause_when_broke: bool,
}

/// One unit of a new batch.
#[derive(Clone, Debug)]
pub struct NewUnit {
    /// The researcher's name for it (its input file's name); outputs are named after it.
    pub name: String,
    pub input: ContentHash,
    pub seed: u64,
}

/// What recording a report changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReportEffect {
    /// The same report was already recorded: nothing changed.
    Duplicate,
    /// Recorded; the unit is still open.
    Recorded,
    /// Recorded, and it completed a quorum: the unit is validated.
    Validated { unit_id: u64 },
    /// Recorded, and the unit has failed.
    Failed { unit_id: u64 },
    /// A late report for a unit already validated: it agreed (and was credited) or not.
    LateChecked { agreed: bool },
    /// The replica's unit is decided by another coordinator of the project (it holds the unit's
    /// shard): the report is kept in the database, and that coordinator settles it.
    Forwarded { shard: u64 },
}

/// A unit's state as researchers see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UnitStatus {
    pub id: u64,
    pub name: String,
    /// `open`, `validated` or `failed`.
    pub state: String,
    pub input: String,
    /// The canonical result, once validated.
    pub result: Option<RunResult>,
    pub failure: Option<String>,
    pub replicas: u32,
}

/// A unit's state, to filter a batch's units by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitState {
    Open,
    Validated,
    Failed,
}

impl UnitState {
    /// The name the database and the API use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Validated => "validated",
            Self::Failed => "failed",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [Self::Open, Self::Validated, Self::Failed]
            .into_iter()
            .find(|state| state.name() == name)
    }
}

/// A batch's progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BatchStatus {
    pub id: u64,
    /// The researcher whose batch it is.
    pub researcher_id: u64,
    pub module: String,
    pub quorum: u32,
    pub total: u64,
    pub open: u64,
    pub validated: u64,
    pub failed: u64,
    pub created_ms: u64,
    pub units: Vec<UnitStatus>,
}

/// Credit totals for one volunteer or team.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CreditLine {
    pub name: String,
    pub team: Option<String>,
    /// Agreed fuel of every credited replica.
    pub fuel: u64,
    /// `fuel` in credits (see `herd_lifecycle::FUEL_PER_CREDIT`).
    pub credit: f64,
    /// Credit per day, decaying with a 7-day half-life (BOINC's RAC).
    pub recent_average_credit: f64,
    pub replicas: u64,
}

/// What retiring a batch removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RetiredBatch {
    pub units: u64,
    pub replicas: u64,
    /// Modules, inputs and outputs that no remaining batch refers to.
    pub unreferenced_blobs: Vec<ContentHash>,
}

/// One host's record: what it computed and how it behaved.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HostLine {
    pub id: u64,
    pub volunteer: String,
    /// The host's ed25519 key, hex.
    pub public_key: String,
    pub cores: u32,
    pub last_seen_ms: u64,
    /// Replicas that agreed with the canonical result.
    pub valid: u64,
    /// Replicas that disagreed with it.
    pub invalid: u64,
    /// Replicas reported as aborted.
    pub errors: u64,
    /// Replicas not reported by their deadline (or lost).
    pub timed_out: u64,
    pub in_progress: u64,
    /// Valid results in a row, each checked against other hosts (adaptive replication trusts a
    /// host after enough of them; an invalid result resets it).
    pub consecutive_valid: u32,
    /// Reports refused: bad signature, someone else's replica, unknown replica, bad output.
    pub refused_reports: u64,
    pub fuel: u64,
    pub credit: f64,
    pub recent_average_credit: f64,
}

/// Credit per volunteer and per team, highest first.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CreditTotals {
    pub fuel_per_credit: u64,
    pub volunteers: Vec<CreditLine>,
    pub teams: Vec<CreditLine>,
}

/// The coordinator's durable state. Every call answers through a [`Pending`] result, which async
/// code awaits and other code waits for; a change is durable before its result arrives.
pub trait Store: Send + Sync {
    /// Whether the database keeps blobs for every coordinator of the project (PostgreSQL), or
    /// each coordinator keeps its own in its blob store (SQLite: the calls below do nothing).
    fn shares_blobs(&self) -> bool;

    /// Keeps blobs (modules, inputs, outputs) in the database for every coordinator; each is
    /// named by its hash. Committed before it returns.
    fn share_blobs(&self, blobs: Vec<Vec<u8>>) -> Pending<()>;

    /// A blob kept in the database, unverified (the caller checks its hash).
    fn shared_blob(&self, hash: &ContentHash) -> Pending<Option<Vec<u8>>>;

    /// Which of `hashes` the database does not keep.
    fn shared_blobs_missing(&self, hashes: Vec<ContentHash>) -> Pending<Vec<ContentHash>>;

    /// Forgets blobs no batch refers to any more (after [`retire_batch`](Store::retire_batch)).
    fn unshare_blobs(&self, hashes: Vec<ContentHash>) -> Pending<()>;

    /// Registers a host (or updates it) by volunteer name alone, as a project with anonymous
    /// volunteers allows, creating the volunteer if new. The caller has checked that the host
    /// proved it holds `key`.
    ///
    /// An anonymous name belongs to the machine that first registered it: another host giving it
    /// is refused ([`StoreError::NotAllowed`]), as is any host giving the name of an account
    /// that has (or had) an account key, which only [`attach_host`](Store::attach_host) reaches.
    /// Names are compared ignoring ASCII case. The name's own host may change its team. Replicas
    /// already assigned keep the volunteer they were assigned under, whatever host record
    /// changes later.
    fn register_host(
        &self,
        key: &PublicKey,
        volunteer: &str,
        team: Option<&str>,
        cores: u32,
        now_ms: u64,
    ) -> Pending<HostRecord>;

    /// Attaches a host (or updates it) to the account holding the key whose hash is
    /// `key_hash`: [`StoreError::UnknownAccount`] if none does. A team given moves the account
    /// to it (the key proves the account); none leaves it. The caller has checked that the host
    /// proved it holds `key`.
    fn attach_host(
        &self,
        key: &PublicKey,
        key_hash: &str,
        team: Option<&str>,
        cores: u32,
        now_ms: u64,
    ) -> Pending<HostRecord>;

    /// Creates an account holding the key whose hash is `key_hash` (and the API token whose hash
    /// is `token_hash`); [`StoreError::Taken`] if its
    /// name is (ignoring ASCII case). With `invitation` (a code's hash) the sign-up spends that
    /// invitation, and is refused ([`StoreError::NotAllowed`]) if it is unknown or spent.
    fn create_account(
        &self,
        name: &str,
        team: Option<&str>,
        key_hash: &str,
        token_hash: Option<&str>,
        invitation: Option<&str>,
        now_ms: u64,
    ) -> Pending<Account>;

    /// The account called `name` (ignoring ASCII case).
    fn account(&self, name: &str) -> Pending<Option<Account>>;

    /// Gives the account called `name` a new key (its hash), or with `None` revokes its key;
    /// the key replaced no longer attaches anything. `None` if there is no such account. How a
    /// project hands out keys for the volunteers that existed before accounts did.
    fn set_account_key(&self, name: &str, key_hash: Option<&str>) -> Pending<Option<KeyChange>>;

    /// Records an invitation code (its hash), good for one sign-up.
    fn create_invitation(&self, code_hash: &str, now_ms: u64) -> Pending<()>;

    /// Creates a batch and its units; returns the batch id. Its module and every input must be
    /// blobs the researcher holds ([`blob_visible`](Store::blob_visible)): another's blob, even
    /// named by its hash, is [`StoreError::BlobMissing`] exactly as a missing one is.
    fn create_batch(&self, batch: &NewBatch, now_ms: u64) -> Pending<u64>;

    /// Picks a unit that wants a replica and that this host's volunteer has not had, creates the
    /// replica and returns its (unsigned) assignment; `None` if there is nothing for this host
    /// (or it is at its cap). The host's network is not known here (tests and tools); the
    /// coordinator assigns through [`exchange`](Store::exchange), whose [`Want`] names it.
    fn assign(&self, host_id: u64, now_ms: u64) -> Pending<Option<Assignment>>;

    /// Records a host's report for one of its replicas and validates the unit if it can.
    fn record_report(
        &self,
        host_id: u64,
        replica_id: u64,
        outcome: &Outcome,
        now_ms: u64,
    ) -> Pending<ReportEffect>;

    /// Settles the reports that other coordinators of a shared database kept for units of the
    /// shards this one holds ([`ReportEffect::Forwarded`]); returns how many. Nothing to do on
    /// a database of one's own.
    fn settle_forwarded(&self) -> Pending<usize>;

    /// Times out replicas past their deadline; returns how many.
    fn expire_deadlines(&self, now_ms: u64) -> Pending<usize>;

    /// Called when a host (re)connects holding the replicas `held`: its other in-progress
    /// replicas were lost (an assignment whose answer never arrived, a crash), so they are timed
    /// out now and reissued instead of waiting for their deadline. Returns how many.
    fn release_lost_replicas(&self, host_id: u64, held: &[u64], now_ms: u64) -> Pending<usize>;

    /// Of the replicas `held` that a (re)connecting host says it holds, those it need not run:
    /// not its own, or gone (their batch retired), or of a unit already decided.
    fn unneeded_replicas(&self, host_id: u64, held: &[u64]) -> Pending<Vec<u64>>;

    /// A batch's progress and units, or `None` if there is no such batch.
    fn batch_status(&self, batch_id: u64) -> Pending<Option<BatchStatus>>;

    /// Credit totals and recent average credit (as of `now_ms`) per volunteer and team.
    fn credit_totals(&self, now_ms: u64) -> Pending<CreditTotals>;

    /// Every host's record, with recent average credit as of `now_ms`.
    fn hosts(&self, now_ms: u64) -> Pending<Vec<HostLine>>;

    /// Whether `hash` is the module or the input of a replica in progress on this host: what a
    /// host may fetch.
    fn host_needs_blob(&self, host_id: u64, hash: &ContentHash) -> Pending<bool>;

    /// Purges a batch: its units and replicas are deleted (the credit ledger keeps its grants),
    /// and the blobs no other batch refers to are named so the caller can archive and delete
    /// them. `None` if there is no such batch. Committed before it returns.
    fn retire_batch(&self, batch_id: u64) -> Pending<Option<RetiredBatch>>;

    /// Counts a refused report against a host.
    fn record_refused_report(&self, host_id: u64) -> Pending<()>;

    /// Every volunteer, team and host with credit, recent averages as of `now_ms`, by id.
    fn stats_dump(&self, now_ms: u64) -> Pending<StatsDump>;

    /// Units validated and fuel credited from `since_ms` on, in intervals of `bucket_ms`
    /// (every interval, empty ones too, oldest first).
    fn throughput(
        &self,
        since_ms: u64,
        until_ms: u64,
        bucket_ms: u64,
    ) -> Pending<Vec<ThroughputBucket>>;

    /// The project at a glance as of `now_ms`: activity within `active_ms`, throughput over
    /// the last `window_ms`.
    fn project_summary(
        &self,
        now_ms: u64,
        active_ms: u64,
        window_ms: u64,
    ) -> Pending<ProjectSummary>;

    /// The researcher called `name`, created with this token hash if new, given the token hash
    /// if not; batches created before researchers existed become theirs. For the coordinator's
    /// own administrator, whose token is in its data directory.
    fn ensure_researcher(&self, name: &str, token_hash: &str, now_ms: u64) -> Pending<Researcher>;

    /// Adds a researcher: a new account (with no key) with the permission to submit; refused if
    /// a researcher has the name (`Invalid`) or an account does (`Taken`: grant it instead).
    fn add_researcher(&self, name: &str, token_hash: &str, now_ms: u64) -> Pending<Researcher>;

    /// Gives the account called `account` the permission to submit, with the API token whose
    /// hash is `token_hash` (replacing any token it had); `None` if there is no such account.
    fn grant_submit(
        &self,
        account: &str,
        token_hash: &str,
        now_ms: u64,
    ) -> Pending<Option<Researcher>>;

    /// Withdraws the account's permission to submit (its token answers nothing; its batches
    /// stay); `None` if there is no such account, `Some(false)` if it had none.
    fn deny_submit(&self, account: &str, now_ms: u64) -> Pending<Option<bool>>;

    /// The researcher holding the token with this hash, if its permission stands.
    fn researcher_by_token(&self, token_hash: &str) -> Pending<Option<Researcher>>;

    /// A researcher's batches with ids above `after`, oldest first, at most `limit`.
    fn list_batches(
        &self,
        researcher_id: u64,
        after: u64,
        limit: u32,
    ) -> Pending<Vec<BatchSummary>>;

    /// A batch's counts and its researcher's id, without its units.
    fn batch_summary(&self, batch_id: u64) -> Pending<Option<(u64, BatchSummary)>>;

    /// A page of a batch's units: ids above `after`, in id order, at most `limit`, only those
    /// in `state` if given.
    fn batch_units(
        &self,
        batch_id: u64,
        after: u64,
        limit: u32,
        state: Option<UnitState>,
    ) -> Pending<Vec<UnitStatus>>;

    /// Whose batch this is; `None` if there is no such batch.
    fn batch_owner(&self, batch_id: u64) -> Pending<Option<u64>>;

    /// Whether the researcher holds a blob: uploaded it ([`record_uploads`](Store::record_uploads)),
    /// or one of their batches uses it (its module, an input, or an output a replica reported).
    fn blob_visible(&self, researcher_id: u64, hash: &ContentHash) -> Pending<bool>;

    /// Records that the researcher uploaded these blobs (already stored), so they may read them
    /// and make batches of them. Committed before it returns.
    fn record_uploads(&self, researcher_id: u64, hashes: Vec<ContentHash>) -> Pending<()>;

    /// Cancels a batch: its open units fail as cancelled, and no more replicas of it are sent
    /// (those running may still report). Returns how many units it cancelled; `None` if there
    /// is no such batch.
    fn cancel_batch(&self, batch_id: u64) -> Pending<Option<u64>>;

    /// The account whose API token hashes to `token_hash`: what signs a person's requests for
    /// their own credit (and, with the submit permission, their batches: a researcher's token is
    /// its account's).
    fn account_by_token(&self, token_hash: &str) -> Pending<Option<Account>>;

    /// Gives the account called `name` a new API token (its hash), replacing any it had, its
    /// submit permission's included; `None` if there is no such account.
    fn set_account_token(&self, name: &str, token_hash: &str) -> Pending<Option<Account>>;

    /// The credit statement of the account called `name`: its balance, what each kind of
    /// movement added up to, and its `recent` latest movements; `None` if there is no account.
    fn statement(&self, name: &str, recent: u32) -> Pending<Option<ledger::Statement>>;

    /// The project gives `amount` fuel of credit to the account called `name` (a research
    /// group's allowance, say): a `granted` row. [`StoreError::Invalid`] for no such account or
    /// no amount.
    fn grant_credit(
        &self,
        name: &str,
        amount: u64,
        memo: Option<&str>,
        now_ms: u64,
    ) -> Pending<ledger::LedgerRow>;

    /// Sends `amount` fuel of credit from the account `from_id` to the account called `to`,
    /// refused ([`StoreError::NotAllowed`]) if the sender's balance, with its overdraft, does
    /// not cover it. Once the answer is in, [`transfer_happened`](Store::transfer_happened)
    /// says whether it took place: another coordinator's charge committed in between may still
    /// have turned it down (the balance is checked again, under lock, at commit).
    fn send_credit(
        &self,
        from_id: u64,
        to: &str,
        amount: u64,
        memo: Option<&str>,
        now_ms: u64,
    ) -> Pending<ledger::Transfer>;

    /// Whether the transfer written as [`ledger::Transfer::row_id`] took place.
    fn transfer_happened(&self, row_id: u64) -> Pending<bool>;

    /// How far below zero the account called `name` may go, in fuel (`None`: no limit).
    fn set_overdraft(&self, name: &str, overdraft: Option<u64>) -> Pending<()>;

    /// Reads again which owners of paying batches can no longer pay (so their batches fall to
    /// the free tier or pause) and which can again. Returns how many changed. The coordinator
    /// runs it every few seconds.
    fn refresh_funding(&self) -> Pending<usize>;

    /// A worker's exchange in one operation: records its reports in order (each as
    /// [`record_report`](Store::record_report) would; a refused one does not stop the others),
    /// counts the refused ones against the host, then assigns up to `want.units` replicas as
    /// [`assign`](Store::assign) would, of batches whose typical unit the host can finish before
    /// the deadline at `want.fuel_per_second`. One operation instead of many: one savepoint,
    /// one answer.
    fn exchange(
        &self,
        host_id: u64,
        reports: Vec<(u64, Outcome)>,
        want: Want,
        now_ms: u64,
    ) -> Pending<Exchange>;
}

/// The work a host asks for in an exchange.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Want {
    /// How many replicas.
    pub units: u32,
    /// The host's measured speed per core (fuel per second, pauses included), if known.
    pub fuel_per_second: Option<u64>,
    /// The host's network as the coordinator sees its connection (`herd_lifecycle::network_of`),
    /// which batches asking for distinct networks take at most one replica of a unit from;
    /// `UNKNOWN_NETWORK` (0) for a host whose address is not known, which that rule does not
    /// hold back (tests and tools: the coordinator always knows it).
    pub network: u64,
}

impl Want {
    /// `units` replicas for a host of unknown speed.
    pub fn units(units: u32) -> Self {
        Self {
            units,
            ..Self::default()
        }
    }
}

/// What an exchange did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    /// Each report's fate, in the order given: its effect, or why it was refused.
    pub reports: Vec<Result<ReportEffect, ReportRefusal>>,
    /// The new replicas, at most `want`.
    pub assignments: Vec<Assignment>,
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
fn rac_at(per_day: f64, as_of_ms: u64, now_ms: u64) -> f64 {
    herd_lifecycle::RecentAverage { per_day, as_of_ms }
        .at(now_ms)
        .per_day
}

#[cfg(test)]
mod tests;
