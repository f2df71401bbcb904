//! The volunteer's worker: connects to a coordinator over QUIC, asks for work, fetches the module
//! and input by content hash (checking the hash), checks the project's signature on the
//! assignment, runs the unit in the sandbox, and reports the outcome signed with its host key.
//! It runs one unit per core it was given, and reconnects with backoff when the coordinator is away.
//!
//! Trust: the worker trusts the coordinator's certificate only by the fingerprint in its join
//! string, and an assignment only with the project key's signature. It compiles every module
//! itself; no compiled code ever comes over the network.

pub mod account;
pub mod bandwidth;
pub mod cache;
pub mod governor;
pub mod input;
pub mod install;
pub mod logind;
pub mod preferences;
pub mod screen;
pub mod sources;
pub mod speed;
pub mod spool;
pub mod status;
pub mod supervisor;
pub mod x11;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, bail};
use herd_blobs::BlobStore;
use herd_net::{Connection, JoinString};
use herd_protocol::{
    AbortReason, AccountKey, Assignment, ClientMessage, ContentHash, ErrorCode, FinishedReplica,
    Hello, Outcome, PROTOCOL_VERSION, Report, ServerMessage, SignedAssignment, SigningKey,
    Standing,
};
use herd_sandbox::{Execution, Limits, Sandbox};
use std::time::Instant;

use crate::bandwidth::Network;
use crate::governor::{Governor, POLL, Readings};
use crate::logind::Logind;
use crate::preferences::{Preferences, WeekTime};
use crate::sources::{IdleSource, LoadSource, PowerSource, PowerSupplies, ProcStat};
use crate::spool::Spool;
use crate::status::StatusReport;
use crate::supervisor::{Admission, Supervisor, UnitInfo};
use tokio::sync::watch;

/// The first wait before reconnecting; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The longest wait between attempts when the join string names several coordinators: one of
/// them takes the project over within its lease (10 s), so the worker keeps looking often.
const MAX_BACKOFF_SEVERAL: Duration = Duration::from_secs(2);

/// A session that was welcomed and lasted this long worked: the next reconnection starts over
/// from [`MIN_BACKOFF`] (a coordinator restarted again and again is rejoined at once each time),
/// while one that fails sooner keeps doubling the wait (no storm against a coordinator that
/// accepts and drops).
const WORKED_FOR: Duration = Duration::from_secs(5);

/// The wait before reconnecting after a session that ended: `next` (the backoff so far), or the
/// shortest again if the session was welcomed and `lasted` at least [`WORKED_FOR`].
fn reconnect_wait(next: Duration, welcomed: bool, lasted: Duration) -> Duration {
    if welcomed && lasted >= WORKED_FOR {
        MIN_BACKOFF
    } else {
        next
    }
}

/// How long to wait after a refused request before asking again.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

/// What the worker needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub join: JoinString,
    /// The account this machine computes for, by its key; without one, `volunteer` is the name
    /// it computes under on a project with anonymous volunteers.
    pub account_key: Option<String>,
    /// The volunteer's name (with an account key, only what this machine calls it).
    pub volunteer: String,
    pub team: Option<String>,
    /// Units run at once at most (the `max_cores` preference may lower it).
    pub cores: u32,
    /// `KEY=VALUE` preferences that override the file's.
    pub preference_overrides: Vec<String>,
    /// A dedicated machine: compute whatever the user, the load, the battery or the clock say
    /// (the CPU, memory and core limits still hold).
    pub always: bool,
}

/// The preferences file in a worker's data directory.
pub fn preferences_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("preferences.toml")
}

/// Reads the preferences file (missing: defaults) with the overrides applied.
pub fn load_preferences(
    path: &std::path::Path,
    overrides: &[String],
) -> anyhow::Result<Preferences> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => return Err(error).with_context(|| format!("read {}", path.display())),
    };
    Preferences::parse(&text, overrides).with_context(|| format!("{}", path.display()))
}

/// The worker's long-lived parts.
struct Worker {
    config: Config,
    host_key: SigningKey,
    cache: BlobStore,
    sandbox: Arc<Sandbox>,
    /// Finished replicas whose report has not been acknowledged: sent again, first thing, on the
    /// next connection. Each is also in the spool until the coordinator answers it.
    unacknowledged: Mutex<Vec<FinishedReplica>>,
    /// Assignments found in the spool after a restart, to run before asking for new work.
    recovered: Mutex<Vec<SignedAssignment>>,
    /// Every replica this worker holds: accepted and not yet answered by the coordinator
    /// (running, waiting to run, or finished and unacknowledged). `Hello` names them all, so a
    /// reconnection does not make the coordinator give them to someone else.
    in_hand: Mutex<std::collections::BTreeSet<u64>>,
    spool: Spool,
    supervisor: Arc<Supervisor>,
    network: Arc<Network>,
    /// The volunteer's credit and rank, as the coordinator last said.
    standing: Mutex<Option<Standing>>,
    connected: std::sync::atomic::AtomicBool,
    /// Sessions the coordinator welcomed, for the reconnection's backoff.
    welcomes: std::sync::atomic::AtomicU64,
    /// Which of the join string's coordinators answered last (tried first next time); at
    /// first, the one this host's key picks, so hosts spread over the project's coordinators.
    coordinator: std::sync::atomic::AtomicUsize,
    /// Answers without work in a row since work last came, over every connection: an idle
    /// worker moving between coordinators waits longer each time.
    idle_streak: std::sync::atomic::AtomicU32,
    /// Units finished since the worker started.
    finished_units: std::sync::atomic::AtomicU64,
    /// How fast units get done here, sent with each request for work.
    speed: Mutex<speed::Speed>,
    /// Taken by the slot that asks for new work (see `slot`).
    work_probe: tokio::sync::Mutex<()>,
}

/// The join string's addresses, for messages.
fn join_addresses(join: &herd_net::JoinString) -> String {
    join.addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Locks a mutex whose data stays valid whatever a panicking holder did (lists only pushed to
/// and drained).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs the worker until `shutdown` turns true.
pub async fn run(config: Config, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    if !(1..=herd_sandbox::MAX_CONCURRENT_UNITS).contains(&config.cores) {
        bail!(
            "--cores {} is outside 1..={}",
            config.cores,
            herd_sandbox::MAX_CONCURRENT_UNITS
        );
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("create data dir {}", config.data_dir.display()))?;
    let host_key = herd_net::load_or_create_key(&config.data_dir.join("host.key"))
        .context("load the host identity")?;
    let cache = BlobStore::open(config.data_dir.join("cache")).context("open the blob cache")?;
    let sandbox = Arc::new(
        Sandbox::with_disk_cache(&config.data_dir.join("compiled"))
            .context("configure the sandbox")?,
    );
    let preferences_file = preferences_path(&config.data_dir);
    let preferences = load_preferences(&preferences_file, &config.preference_overrides)?;
    // After a crash or a reboot nothing cached is trusted unchecked.
    let checked = cache.clone();
    match tokio::task::spawn_blocking(move || cache::verify(&checked)).await? {
        Ok(corrupt) if corrupt.is_empty() => {}
        Ok(corrupt) => tracing::warn!(
            "{} cached blobs no longer matched their hash and were removed",
            corrupt.len()
        ),
        Err(error) => tracing::error!("checking the cache: {error}"),
    }
    enforce_disk_limit(
        cache.clone(),
        config.data_dir.join("compiled"),
        preferences.disk_mb,
    )
    .await;
    tracing::info!(
        "host key {}; volunteer {}; {} cores{}",
        host_key.public_key().to_hex(),
        config.volunteer,
        config.cores,
        if config.always {
            "; --always: computing whatever the user is doing"
        } else {
            ""
        }
    );
    let supervisor = Arc::new(Supervisor::new(
        Governor::new(preferences, config.always),
        config.cores,
    ));
    let network = Arc::new(Network::new(&supervisor.preferences()));
    let sources = Sources::find(std::path::Path::new("/")).await;
    let governing = tokio::spawn(govern(
        supervisor.clone(),
        sources,
        preferences_file,
        config.preference_overrides.clone(),
        (cache.clone(), config.data_dir.join("compiled")),
        network.clone(),
    ));
    let _stop_governing = AbortOnDrop(governing);
    let spool = Spool::open(&config.data_dir).context("open the spool")?;
    let recovered = spool.recover().context("read the spool")?;
    for path in &recovered.corrupt {
        tracing::error!("spool file {} does not decode; set aside", path.display());
    }
    let mut finished = recovered.finished;
    let mut restart = Vec::new();
    for signed in recovered.assigned {
        let replica_id = signed.assignment.replica_id;
        if signed.assignment.deadline_ms < now_ms() {
            // Too late to be of use: say so, so the coordinator gives it to someone else now.
            tracing::warn!(
                "replica {replica_id} from the spool is past its deadline; reporting it aborted"
            );
            let report = Report {
                replica_id,
                outcome: Outcome::Aborted(AbortReason::HostFailure(
                    "the worker stopped and the deadline passed before it could run again".into(),
                )),
            };
            let done = FinishedReplica {
                report,
                output: Vec::new(),
            };
            spool.finished(&done).context("spool an aborted replica")?;
            finished.push(done);
        } else {
            tracing::info!("replica {replica_id} from the spool will run again");
            restart.push(signed);
        }
    }
    if !finished.is_empty() {
        tracing::info!(
            "{} finished replicas in the spool wait to be reported",
            finished.len()
        );
    }
    let in_hand = finished
        .iter()
        .map(|f| f.report.replica_id)
        .chain(restart.iter().map(|s| s.assignment.replica_id))
        .collect();
    // Oldest first, taken from the end.
    restart.reverse();
    let speed = speed::Speed::load(&config.data_dir);
    if let Some(pace) = speed.fuel_per_second() {
        tracing::info!("measured speed: {pace} fuel per second per unit");
    }
    // Hosts spread over the project's coordinators, each starting at the one its key picks.
    let first_coordinator =
        usize::from(host_key.public_key().0[0]) % config.join.addrs.len().max(1);
    let worker = Arc::new(Worker {
        config,
        host_key,
        cache,
        sandbox,
        unacknowledged: Mutex::new(finished),
        recovered: Mutex::new(restart),
        in_hand: Mutex::new(in_hand),
        spool,
        supervisor,
        network,
        standing: Mutex::new(None),
        connected: std::sync::atomic::AtomicBool::new(false),
        welcomes: std::sync::atomic::AtomicU64::new(0),
        coordinator: std::sync::atomic::AtomicUsize::new(first_coordinator),
        idle_streak: std::sync::atomic::AtomicU32::new(0),
        finished_units: std::sync::atomic::AtomicU64::new(0),
        speed: Mutex::new(speed),
        work_probe: tokio::sync::Mutex::new(()),
    });
    let status_writer = tokio::spawn(write_status(worker.clone()));
    let _stop_status = AbortOnDrop(status_writer);
    let mut backoff = MIN_BACKOFF;
    let max_backoff = if worker.config.join.addrs.len() > 1 {
        MAX_BACKOFF_SEVERAL
    } else {
        MAX_BACKOFF
    };
    loop {
        let (welcomes, began) = (
            worker.welcomes.load(std::sync::atomic::Ordering::Relaxed),
            std::time::Instant::now(),
        );
        let session = tokio::select! {
            result = worker.clone().session() => result,
            _ = shutdown.wait_for(|stop| *stop) => {
                stopped();
                return Ok(());
            }
        };
        let welcomed = worker.welcomes.load(std::sync::atomic::Ordering::Relaxed) != welcomes;
        backoff = reconnect_wait(backoff, welcomed, began.elapsed());
        match session {
            Ok(()) => backoff = MIN_BACKOFF,
            // Retrying would only repeat it: stop and say why.
            Err(error) if error.is::<Permanent>() => return Err(error),
            Err(error) => tracing::warn!("{error:#}; reconnecting in {backoff:?}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|stop| *stop) => {
                stopped();
                return Ok(());
            }
        }
        backoff = (backoff * 2).min(max_backoff);
    }
}

impl Worker {
    /// One connection: handshake, then one loop per core until the connection fails.
    async fn session(self: Arc<Self>) -> anyhow::Result<()> {
        let join = &self.config.join;
        // The coordinator that answered last is tried first, then the project's others in turn.
        let preferred = self.coordinator.load(std::sync::atomic::Ordering::Relaxed);
        let (connection, index) = match herd_net::connect_from(join, preferred).await {
            Ok(answered) => answered,
            Err(error @ herd_net::NetError::CertificateMismatch { .. }) => {
                return Err(Permanent(error.to_string()).into());
            }
            Err(error) => {
                return Err(anyhow::Error::from(error).context(format!(
                    "connect to the coordinator ({})",
                    join_addresses(join)
                )));
            }
        };
        // Signed over this connection's channel binding: proof that this host holds its key,
        // worthless on any other connection.
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            instrumentation_version: herd_sandbox::INSTRUMENTATION_VERSION,
            host_key: self.host_key.public_key(),
            account_key: self.config.account_key.clone().map(AccountKey),
            volunteer: self.config.volunteer.clone(),
            team: self.config.team.clone(),
            cores: self.config.cores,
            held_replicas: lock(&self.in_hand).iter().copied().collect(),
        };
        match herd_net::say_hello(&connection, &self.host_key, hello).await? {
            ServerMessage::Welcome {
                project_key,
                unneeded,
            } if project_key == join.project_key => self.drop_unneeded(&unneeded).await,
            ServerMessage::Welcome { project_key, .. } => {
                return Err(Permanent(format!(
                    "the coordinator's project key {} is not the join string's {}; check the join string",
                    project_key.to_hex(),
                    join.project_key.to_hex()
                ))
                .into());
            }
            ServerMessage::Error {
                code:
                    code @ (ErrorCode::UnsupportedVersion
                    | ErrorCode::Malformed
                    | ErrorCode::NotAllowed
                    | ErrorCode::UnknownAccount
                    | ErrorCode::AccountRequired),
                message,
            } => {
                // This worker will be refused the same way every time.
                return Err(Permanent(format!(
                    "the coordinator refused this worker ({code:?}): {message}"
                ))
                .into());
            }
            ServerMessage::Error { code, message } => {
                bail!("the coordinator refused this worker ({code:?}): {message}")
            }
            other => bail!("unexpected answer to Hello: {other:?}"),
        }
        self.coordinator
            .store(index, std::sync::atomic::Ordering::Relaxed);
        self.welcomes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!("connected to {}", join.addrs[index]);
        self.connected
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let _disconnected = Disconnected(&self.connected);
        self.flush_reports(&connection).await?;
        let standing = tokio::spawn(self.clone().follow_standing(connection.clone()));
        let _stop_standing = AbortOnDrop(standing);
        let mut slots = tokio::task::JoinSet::new();
        for slot in 0..self.config.cores {
            let worker = self.clone();
            let connection = connection.clone();
            slots.spawn(async move { worker.slot(slot, connection).await });
        }
        // A slot stops only when the connection fails. The others are not cut short: each
        // notices on its next request, and one that is computing finishes its unit and keeps the
        // report for the next connection, so no finished work is thrown away.
        let mut first_error = None;
        while let Some(ended) = slots.join_next().await {
            let error = match ended {
                Ok(Ok(())) => continue,
                Ok(Err(error)) => error,
                Err(panic) => anyhow::anyhow!("a work slot panicked: {panic}"),
            };
            // A refusal for good outranks the connection failing under the other slots.
            if error.is::<Permanent>() {
                first_error = Some(error);
            } else {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Asks the coordinator for the volunteer's credit and rank now and every minute.
    async fn follow_standing(self: Arc<Self>, connection: Connection) {
        loop {
            self.network.wait_until_allowed().await;
            match herd_net::request_paced(&connection, &ClientMessage::Standing, &*self.network)
                .await
            {
                Ok(ServerMessage::Standing(standing)) => *lock(&self.standing) = Some(standing),
                Ok(other) => tracing::debug!("standing: {other:?}"),
                Err(_) => return,
            }
            tokio::time::sleep(STANDING_EVERY).await;
        }
    }

    /// Sends the reports an earlier connection (or an earlier run of the worker) could not
    /// deliver.
    async fn flush_reports(&self, connection: &Connection) -> anyhow::Result<()> {
        let waiting: Vec<FinishedReplica> = lock(&self.unacknowledged).clone();
        if !waiting.is_empty() {
            tracing::info!("sending {} unacknowledged reports", waiting.len());
        }
        for finished in waiting {
            self.deliver(connection, &finished).await?;
        }
        Ok(())
    }

    /// Sends one report; `Err` only if the connection failed (the report is kept).
    async fn deliver(
        &self,
        connection: &Connection,
        finished: &FinishedReplica,
    ) -> anyhow::Result<()> {
        let replica_id = finished.report.replica_id;
        let message = ClientMessage::Report {
            report: finished.report.clone(),
            output: finished.output.clone(),
        };
        self.network.wait_until_allowed().await;
        match herd_net::request_paced(connection, &message, &*self.network).await? {
            ServerMessage::ReportAccepted { .. } => {}
            ServerMessage::Error { code, message } => {
                // Refused for good (unknown replica, bad output): keeping it would not help.
                tracing::warn!("report for replica {replica_id} refused ({code:?}): {message}");
            }
            other => bail!("unexpected answer to Report: {other:?}"),
        }
        self.answered(replica_id).await
    }

    /// Replicas the coordinator no longer needs (their units were decided while this worker was
    /// away): those not yet started are dropped, rather than spending the volunteer's machine on
    /// them. A running one finishes, and a finished one is still reported: an agreeing late result
    /// is credited.
    async fn drop_unneeded(&self, unneeded: &[u64]) {
        // Only the recovered ones wait to start; a running or finished replica is not among them.
        let dropped: Vec<u64> = {
            let mut recovered = lock(&self.recovered);
            let (dropped, kept) = std::mem::take(&mut *recovered)
                .into_iter()
                .partition(|s| unneeded.contains(&s.assignment.replica_id));
            *recovered = kept;
            dropped
                .into_iter()
                .map(|s: SignedAssignment| s.assignment.replica_id)
                .collect()
        };
        for replica_id in dropped {
            tracing::info!(
                "replica {replica_id} is no longer needed (its unit was decided); not running it"
            );
            self.let_go(replica_id).await;
        }
    }

    /// An assignment refused before it ran: it leaves the spool and the worker's hands.
    async fn let_go(&self, replica_id: u64) {
        lock(&self.in_hand).remove(&replica_id);
        let spool = self.spool.clone();
        if let Ok(Err(error)) =
            tokio::task::spawn_blocking(move || spool.forget_assignment(replica_id)).await
        {
            tracing::error!("{error}");
        }
    }

    /// The coordinator has answered a report: it leaves the spool and the worker's hands.
    async fn answered(&self, replica_id: u64) -> anyhow::Result<()> {
        lock(&self.unacknowledged).retain(|f| f.report.replica_id != replica_id);
        lock(&self.in_hand).remove(&replica_id);
        let spool = self.spool.clone();
        tokio::task::spawn_blocking(move || spool.delivered(replica_id))
            .await
            .context("spool task panicked")?
            .context("remove a delivered report from the spool")?;
        Ok(())
    }

    /// Asks for work and runs it, forever; returns only when the connection fails. After the
    /// first unit, each report asks for the next unit in the same round trip.
    async fn slot(self: Arc<Self>, slot: u32, connection: Connection) -> anyhow::Result<()> {
        let mut next: Option<SignedAssignment> = None;
        // Answers without work in a row: here, and (for the wait) since work last came.
        let mut idle_here: u32 = 0;
        let mut idle_answers = self.idle_streak.load(std::sync::atomic::Ordering::Relaxed);
        loop {
            if next.is_none() {
                // Ask for work only when a unit could start.
                self.supervisor.wait_for_room().await;
            }
            let recovered = lock(&self.recovered).pop();
            // Held while asking for new work and through a "no work" wait: one slot at a time
            // asks, so an idle worker sends one request per wait, not one per core.
            let mut probe = None;
            let answer = match next.take().or(recovered) {
                Some(signed) => ServerMessage::Work(signed),
                None => {
                    probe = Some(self.work_probe.lock().await);
                    self.network.wait_until_allowed().await;
                    let ask = ClientMessage::Exchange {
                        reports: Vec::new(),
                        want: 1,
                        fuel_per_second: self.fuel_per_second(),
                    };
                    match herd_net::request_paced(&connection, &ask, &*self.network).await? {
                        ServerMessage::Exchanged {
                            work,
                            retry_after_ms,
                            ..
                        } => match work.into_iter().next() {
                            Some(signed) => ServerMessage::Work(signed),
                            None => ServerMessage::NoWork { retry_after_ms },
                        },
                        other => other,
                    }
                }
            };
            match answer {
                ServerMessage::Work(signed) => {
                    // Work came: the next slot may ask at once.
                    drop(probe.take());
                    let project_key = self.config.join.project_key;
                    let replica_id = signed.assignment.replica_id;
                    let refusal = match signed.verify(&project_key) {
                        Err(problem) => Some(format!("a bad signature ({problem})")),
                        Ok(()) if signed.assignment.host_key != self.host_key.public_key() => {
                            Some("it was assigned to another host".to_string())
                        }
                        Ok(()) => None,
                    };
                    if let Some(refusal) = refusal {
                        tracing::error!("refusing replica {replica_id}: {refusal}");
                        self.let_go(replica_id).await;
                        tokio::time::sleep(ERROR_PAUSE).await;
                        continue;
                    }
                    idle_answers = 0;
                    idle_here = 0;
                    self.idle_streak
                        .store(0, std::sync::atomic::Ordering::Relaxed);
                    // In the spool before it starts: after a crash it runs again.
                    lock(&self.in_hand).insert(replica_id);
                    let spool = self.spool.clone();
                    let spooled = signed.clone();
                    match tokio::task::spawn_blocking(move || spool.assigned(&spooled)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => {
                            tracing::error!("{error}; running replica {replica_id} unspooled")
                        }
                        Err(panic) => tracing::error!("spool task: {panic}"),
                    }
                    next = self.compute_and_report(slot, &connection, signed).await?;
                }
                ServerMessage::NoWork { retry_after_ms } => {
                    // The coordinator's wait, doubled for every answer in a row without work
                    // (up to 16 times): a worker without work stays quiet, and still picks up a
                    // new batch within seconds.
                    idle_answers = (idle_answers + 1).min(5);
                    idle_here += 1;
                    self.idle_streak
                        .store(idle_answers, std::sync::atomic::Ordering::Relaxed);
                    let addrs = &self.config.join.addrs;
                    if addrs.len() > 1 && idle_here >= 2 && lock(&self.in_hand).is_empty() {
                        // Each coordinator of the project decides its own shards of the work:
                        // an idle worker looks for work at the next one, holding nothing here
                        // to lose by leaving.
                        let next = (self.coordinator.load(std::sync::atomic::Ordering::Relaxed)
                            + 1)
                            % addrs.len();
                        self.coordinator
                            .store(next, std::sync::atomic::Ordering::Relaxed);
                        tracing::info!(
                            "no work at this coordinator; looking at the project's next, {}",
                            addrs[next]
                        );
                        connection.close(MOVING_ON, b"looking for work at another coordinator");
                        return Ok(());
                    }
                    let wait = u64::from(retry_after_ms.clamp(50, 60_000)) << (idle_answers - 1);
                    tokio::time::sleep(Duration::from_millis(wait.min(60_000))).await;
                }
                ServerMessage::Error { code, message } if account_refused(code) => {
                    return Err(Permanent(format!(
                        "the coordinator refused this worker ({code:?}): {message}"
                    ))
                    .into());
                }
                ServerMessage::Error { code, message } => {
                    tracing::warn!("work request refused ({code:?}): {message}");
                    tokio::time::sleep(ERROR_PAUSE).await;
                }
                other => bail!("unexpected answer to a request for work: {other:?}"),
            }
        }
    }

    /// Runs a replica and reports it, asking for the next; returns the next assignment if the
    /// coordinator had one (after waiting out its retry time if it had none).
    async fn compute_and_report(
        &self,
        slot: u32,
        connection: &Connection,
        signed: SignedAssignment,
    ) -> anyhow::Result<Option<SignedAssignment>> {
        let assignment = &signed.assignment;
        let replica_id = assignment.replica_id;
        let execution = match self.compute(connection, assignment).await {
            Ok(execution) => execution,
            // The connection failed while fetching what the unit needs: not the unit's fault,
            // and no reason to give the replica up. It stays in the spool and in hand, and runs
            // first on the next connection.
            Err(error) if lost_connection(&error) => {
                tracing::warn!("replica {replica_id}: {error:#}; it will run after reconnecting");
                lock(&self.recovered).push(signed.clone());
                return Err(error);
            }
            Err(error) => {
                tracing::warn!("replica {replica_id}: {error:#}");
                Execution {
                    outcome: Outcome::Aborted(AbortReason::HostFailure(format!("{error:#}"))),
                    output: Vec::new(),
                }
            }
        };
        match &execution.outcome {
            Outcome::Countable(result) => tracing::info!(
                "slot {slot}: replica {replica_id} (unit {}): {}, fuel {}, {} bytes out",
                assignment.unit_id,
                result.status.name(),
                result.fuel,
                result.output_len
            ),
            Outcome::Aborted(reason) => {
                tracing::warn!("slot {slot}: replica {replica_id} aborted: {reason:?}")
            }
        }
        let report = Report {
            replica_id,
            outcome: execution.outcome,
        };
        let finished = FinishedReplica {
            report,
            output: execution.output,
        };
        self.finished_units
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if status::is_image(&finished.output) {
            // The screensaver view shows the latest image a unit made.
            let path = self.config.data_dir.join(status::LATEST_IMAGE);
            let image = finished.output.clone();
            let _ = tokio::task::spawn_blocking(move || herd_net::write_file(&path, &image, 0o644))
                .await;
        }
        // On disk before it is sent: kept until the coordinator answers, whatever happens.
        let spool = self.spool.clone();
        let spooled = finished.clone();
        match tokio::task::spawn_blocking(move || spool.finished(&spooled)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!("{error}; replica {replica_id} is kept in memory only")
            }
            Err(panic) => tracing::error!("spool task: {panic}"),
        }
        lock(&self.unacknowledged).push(finished.clone());
        // One report and one unit per exchange: each slot keeps its own pace. (Batching reports
        // and work for several slots is for the work-fetch policy to decide.)
        let message = ClientMessage::Exchange {
            reports: vec![finished],
            // Ask for the next unit only if it could start now; otherwise the slot asks later.
            want: u32::from(self.supervisor.has_room()),
            fuel_per_second: self.fuel_per_second(),
        };
        self.network.wait_until_allowed().await;
        let answer = herd_net::request_paced(connection, &message, &*self.network)
            .await
            .with_context(|| format!("report replica {replica_id}"))?;
        match answer {
            ServerMessage::Exchanged {
                refused,
                work,
                retry_after_ms,
                ..
            } => {
                self.answered(replica_id).await?;
                for refusal in refused {
                    // Refused for good (unknown replica, bad output): keeping it would not help.
                    tracing::warn!(
                        "report for replica {} refused ({:?}): {}",
                        refusal.replica_id,
                        refusal.code,
                        refusal.message
                    );
                }
                let next = work.into_iter().next();
                if next.is_none() {
                    tokio::time::sleep(Duration::from_millis(
                        retry_after_ms.clamp(50, 60_000).into(),
                    ))
                    .await;
                }
                Ok(next)
            }
            ServerMessage::Error { code, message } if account_refused(code) => {
                // The account's key was revoked while this unit ran: the report stays in the
                // spool (a machine attached again delivers it), and the worker stops.
                Err(Permanent(format!(
                    "the coordinator refused this worker ({code:?}): {message}"
                ))
                .into())
            }
            ServerMessage::Error { code, message } => {
                tracing::warn!("report for replica {replica_id} refused ({code:?}): {message}");
                self.answered(replica_id).await?;
                Ok(None)
            }
            other => bail!("unexpected answer to an exchange: {other:?}"),
        }
    }

    /// Fetches what the unit needs and runs it in the sandbox.
    async fn compute(
        &self,
        connection: &Connection,
        assignment: &Assignment,
    ) -> anyhow::Result<Execution> {
        let limits = Limits {
            fuel: assignment.fuel_limit,
            memory_bytes: assignment.memory_limit_bytes,
            output_bytes: assignment.output_limit_bytes,
            ..Limits::default()
        };
        // Even a signed assignment is checked: limits past the sandbox's maxima are refused, not
        // quietly lowered (replicas elsewhere would run under other limits and disagree).
        if let Err(problem) = limits.check() {
            bail!("assignment {}: {problem}", assignment.replica_id);
        }
        let module = self.blob(connection, assignment.module).await?;
        let input = self.blob(connection, assignment.input).await?;
        let replica_id = assignment.replica_id;
        let control = match self
            .supervisor
            .admit(UnitInfo {
                replica_id,
                unit_id: assignment.unit_id,
                batch_id: assignment.batch_id,
                fuel_limit: assignment.fuel_limit,
                memory_bytes: assignment.memory_limit_bytes,
            })
            .await
        {
            Admission::Start(control) => control,
            Admission::TooBig { memory_mb } => bail!(
                "replica {replica_id} may use {} MiB of memory; this volunteer allows {memory_mb} MiB",
                assignment.memory_limit_bytes >> 20
            ),
        };
        let sandbox = self.sandbox.clone();
        let seed = assignment.seed;
        let execution = tokio::task::spawn_blocking(move || match sandbox.admit(&module) {
            // Only the run is timed, pauses included: instrumenting and compiling a module
            // happens once per machine (then it is cached), and counting it made a first unit
            // look hundreds of times slower than the machine is. The coordinator then judged
            // that this host could not meet a short deadline, gave it no more of the batch, and
            // so it never measured again (found by the network tests).
            Ok(admitted) => {
                let started = Instant::now();
                let execution = sandbox.run_controlled(&admitted, &input, seed, &limits, control);
                (execution, Some(started.elapsed()))
            }
            Err(refusal) => (
                Execution {
                    outcome: Outcome::Aborted(AbortReason::ModuleRejected(refusal.to_string())),
                    output: Vec::new(),
                },
                None,
            ),
        })
        .await;
        self.supervisor.finished(replica_id);
        let (execution, ran_for) = execution.context("sandbox task panicked")?;
        if let (Outcome::Countable(result), Some(ran_for)) = (&execution.outcome, ran_for) {
            self.measured(result.fuel, ran_for).await;
        }
        Ok(execution)
    }

    /// This machine's measured speed, as sent with requests for work.
    fn fuel_per_second(&self) -> Option<u64> {
        lock(&self.speed).fuel_per_second()
    }

    /// A unit burned `fuel` in `elapsed` (pauses included): the speed moves and is kept.
    async fn measured(&self, fuel: u64, elapsed: Duration) {
        let speed = {
            let mut speed = lock(&self.speed);
            speed.observe(fuel, elapsed);
            speed.clone()
        };
        let data_dir = self.config.data_dir.clone();
        match tokio::task::spawn_blocking(move || speed.save(&data_dir)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!("speed file: {error:#}"),
            Err(panic) => tracing::debug!("speed task: {panic}"),
        }
    }

    /// A blob from the local cache, or fetched from the coordinator and checked against its hash.
    async fn blob(&self, connection: &Connection, hash: ContentHash) -> anyhow::Result<Vec<u8>> {
        let cache = self.cache.clone();
        let cached = tokio::task::spawn_blocking(move || {
            let found = cache.get(&hash);
            if let Ok(Some(_)) = found {
                // Recently used: the last to be evicted. Failing to mark it only ages it.
                let _ = cache.touch(&hash);
            }
            found
        })
        .await?;
        match cached {
            Ok(Some(bytes)) => return Ok(bytes),
            Ok(None) => {}
            Err(error) => {
                tracing::warn!("cached blob {hash} is unusable ({error}); fetching again")
            }
        }
        self.network.wait_until_allowed().await;
        let started = std::time::Instant::now();
        let answer = herd_net::request_paced(
            connection,
            &ClientMessage::FetchBlob { hash },
            &*self.network,
        )
        .await?;
        let bytes = match answer {
            ServerMessage::Blob { hash: got, bytes } if got == hash => {
                let seconds = started.elapsed().as_secs_f64().max(1e-6);
                tracing::info!(
                    "fetched blob {hash}: {} bytes in {:.0} ms ({:.0} KiB/s)",
                    bytes.len(),
                    seconds * 1e3,
                    bytes.len() as f64 / 1024.0 / seconds
                );
                bytes
            }
            ServerMessage::Error { code, message } => {
                bail!("fetch blob {hash} refused ({code:?}): {message}")
            }
            other => bail!("unexpected answer to FetchBlob: {other:?}"),
        };
        let cache = self.cache.clone();
        let stored = bytes.clone();
        let cached =
            tokio::task::spawn_blocking(move || cache.put_verified(&hash, &stored)).await?;
        match cached {
            Ok(()) => self.keep_caches_in_limit().await,
            // A blob that verified but cannot be kept (the volunteer's disk is full, say) is still
            // the unit's: it runs from memory, rather than the replica failing for the host's
            // trouble and being handed out again to fail again, spending the unit's error limit.
            Err(error @ herd_blobs::BlobError::Io { .. }) => {
                tracing::warn!(
                    "cannot keep blob {hash} in the cache ({error}); using it from memory"
                )
            }
            Err(error) => {
                return Err(
                    anyhow::Error::from(error).context(format!("blob {hash} from the coordinator"))
                );
            }
        }
        Ok(bytes)
    }

    /// Evicts the least recently used cache files past the volunteer's `disk_mb`.
    async fn keep_caches_in_limit(&self) {
        enforce_disk_limit(
            self.cache.clone(),
            self.config.data_dir.join("compiled"),
            self.supervisor.preferences().disk_mb,
        )
        .await;
    }
}

/// Evicts cache files past `disk_mb`, saying in the log what it removed.
async fn enforce_disk_limit(cache: BlobStore, compiled: PathBuf, disk_mb: u64) {
    let removed = tokio::task::spawn_blocking(move || {
        cache::enforce_limit(&cache, &compiled, disk_mb.saturating_mul(1 << 20))
    })
    .await;
    match removed {
        Ok(Ok(removed)) if removed.files > 0 => tracing::info!(
            "cache over its {disk_mb} MiB: removed {} least recently used files ({} bytes)",
            removed.files,
            removed.bytes
        ),
        Ok(Ok(_)) => {}
        Ok(Err(error)) => tracing::error!("keeping the cache within {disk_mb} MiB: {error}"),
        Err(panic) => tracing::error!("cache task: {panic}"),
    }
}

/// A failure that retrying cannot cure (the wrong coordinator, a refused version): the worker
/// stops with it instead of reconnecting forever.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Permanent(pub String);

/// Refusals of the machine's account itself (its key unknown or revoked, or none given where
/// one is needed): the same on every request and every reconnection, so the worker stops.
fn account_refused(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::UnknownAccount | ErrorCode::AccountRequired)
}

/// Milliseconds since the Unix epoch (deadlines and the status file are in this clock).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Says the worker is stopping. Every finished replica is already in the spool (written before it
/// is reported), and units cut short run again from their spool entry at the next start.
fn stopped() {
    tracing::info!("stopping: finished work is in the spool, unfinished units will run again");
}

/// How often the worker asks for the volunteer's standing.
const STANDING_EVERY: Duration = Duration::from_secs(60);

/// Clears the "connected" flag when a session ends, however it ends.
struct Disconnected<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for Disconnected<'_> {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Writes `DATA_DIR/status.json` for `herd-worker status` and `screen`: at start, whenever units
/// start, end, pause or resume, each second while units run, and as a heartbeat otherwise.
async fn write_status(worker: Arc<Worker>) {
    let path = worker.config.data_dir.join(status::STATUS_FILE);
    let mut last: Option<StatusReport> = None;
    let mut changes = worker.supervisor.subscribe();
    let mut first = true;
    loop {
        if !first {
            // Each second while units run; at the heartbeat's pace while none does.
            let pause = if worker.supervisor.running() > 0 {
                status::WRITE_EVERY
            } else {
                Duration::from_millis(status::HEARTBEAT_MS)
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                changed = changes.changed() => if changed.is_err() { return },
            }
        }
        first = false;
        let report = StatusReport {
            volunteer: worker.config.volunteer.clone(),
            team: worker.config.team.clone(),
            connected: worker.connected.load(std::sync::atomic::Ordering::Relaxed),
            hold: worker.supervisor.hold().map(|h| h.to_string()),
            units: worker
                .supervisor
                .snapshot()
                .into_iter()
                .map(status::UnitLine::from)
                .collect(),
            standing: lock(&worker.standing).clone(),
            finished_units: worker
                .finished_units
                .load(std::sync::atomic::Ordering::Relaxed),
            written_ms: now_ms(),
            pid: std::process::id(),
        };
        // Unchanged: rewritten only as a heartbeat, well within the time readers call stale.
        if let Some(last) = &last {
            let unchanged = StatusReport {
                written_ms: last.written_ms,
                ..report.clone()
            } == *last;
            if unchanged && report.written_ms - last.written_ms < status::HEARTBEAT_MS {
                continue;
            }
        }
        last = Some(report.clone());
        let path = path.clone();
        let written = tokio::task::spawn_blocking(move || report.write(&path)).await;
        if let Ok(Err(error)) = written {
            tracing::debug!("status file: {error}");
        }
    }
}

/// Whether an error came from the connection to the coordinator (as opposed to a refusal, a
/// bad blob or this machine).
fn lost_connection(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<herd_net::NetError>(),
            Some(
                herd_net::NetError::Connection(_)
                    | herd_net::NetError::Write(_)
                    | herd_net::NetError::Closed(_)
                    | herd_net::NetError::Read(_)
                    | herd_net::NetError::NoAnswer(_)
            )
        )
    })
}

/// Aborts a task when dropped: the governor stops with the worker.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The sources this machine has.
struct Sources {
    idle: Option<Box<dyn IdleSource>>,
    load: Option<Box<dyn LoadSource>>,
    power: Option<Box<dyn PowerSource>>,
}

impl Sources {
    /// Finds the sources (an X display, logind on the system bus, the kernel's files under
    /// `root`) and says in the log which it found and which it uses.
    async fn find(root: &std::path::Path) -> Self {
        let idle = find_idle_source(root).await;
        let sources = Self {
            idle,
            load: ProcStat::find(root).map(|s| Box::new(s) as Box<dyn LoadSource>),
            power: PowerSupplies::find(root).map(|s| Box::new(s) as Box<dyn PowerSource>),
        };
        match &sources.idle {
            Some(idle) => tracing::info!("user idle time from {}", idle.name()),
            None => tracing::warn!(
                "no source of user idle time found (no X display, no logind, no readable input \
                 device or terminal): computing regardless of user input"
            ),
        }
        match &sources.load {
            Some(load) => tracing::info!("other programs' CPU load from {}", load.name()),
            None => tracing::warn!("no source of CPU load found"),
        }
        match &sources.power {
            Some(power) => tracing::info!("battery state from {}", power.name()),
            None => tracing::info!("no power supplies listed: never on battery"),
        }
        sources
    }
}

/// The user idle source, by precedence: an X display (it sees every pointer motion, and
/// minimal X sessions never tell logind they are idle), then logind (desktops, Wayland, text
/// sessions), then the input devices and terminals themselves. Each one found is logged.
async fn find_idle_source(root: &std::path::Path) -> Option<Box<dyn IdleSource>> {
    let mut found: Vec<Box<dyn IdleSource>> = Vec::new();
    let named = std::env::var_os("DISPLAY").is_some();
    for display in x11::X11Idle::candidates() {
        match x11::X11Idle::connect(&display) {
            Ok(source) => found.push(Box::new(source)),
            // `$DISPLAY` failing is worth saying; a leftover socket of an ended X server is not.
            Err(error) if named => tracing::info!("not using X: {error}"),
            Err(error) => tracing::debug!("not using X: {error}"),
        }
    }
    if let Some(logind) = Logind::connect_system().await {
        found.push(Box::new(logind));
    }
    if let Some(devices) = input::InputDevices::find(root) {
        found.push(Box::new(devices));
    }
    for other in found.iter().skip(1) {
        tracing::info!("also found, not used: {}", other.name());
    }
    found.into_iter().next()
}

/// The QUIC close code of a connection an idle worker leaves to look for work at another of the
/// project's coordinators.
const MOVING_ON: herd_net::VarInt = herd_net::VarInt::from_u32(3);

/// Polls for the load and the battery this often (user input is polled every [`POLL`]).
const SLOW_POLL: Duration = Duration::from_secs(1);

/// How often the governor looks while no unit runs (a unit starting wakes it at once): with
/// nothing to pause, a few seconds' delay in starting is nothing against `idle_minutes`.
const IDLE_POLL: Duration = Duration::from_secs(5);

/// The governor's loop: reads the sources every [`POLL`], re-reads the preferences file when it
/// changes, and has the supervisor pause or resume units when the decision changes.
async fn govern(
    supervisor: Arc<Supervisor>,
    mut sources: Sources,
    preferences_file: PathBuf,
    overrides: Vec<String>,
    (cache, compiled): (BlobStore, PathBuf),
    network: Arc<Network>,
) {
    let started = Instant::now();
    let modified = |path: &std::path::Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let mut file_version = modified(&preferences_file);
    let mut load = None;
    let mut on_battery = None;
    let mut last_slow: Option<Instant> = None;
    let mut changes = supervisor.subscribe();
    let mut week_time = WeekTime::now();
    let mut logged_hold = None;
    // Decide first, then wait: no unit starts before the first decision.
    loop {
        if last_slow.is_none_or(|at| at.elapsed() >= SLOW_POLL) {
            // The windows are to the minute: the local time is read once a second.
            week_time = WeekTime::now();
            last_slow = Some(Instant::now());
            load = sources.load.as_mut().and_then(|s| s.other_load_percent());
            on_battery = sources.power.as_mut().and_then(|s| s.on_battery());
            let version = modified(&preferences_file);
            if version != file_version {
                file_version = version;
                match load_preferences(&preferences_file, &overrides) {
                    Ok(preferences) => {
                        tracing::info!("preferences reloaded from {}", preferences_file.display());
                        let disk_mb = preferences.disk_mb;
                        network.set_preferences(&preferences);
                        let given_up = supervisor.set_preferences(preferences);
                        enforce_disk_limit(cache.clone(), compiled.clone(), disk_mb).await;
                        if !given_up.is_empty() {
                            tracing::warn!(
                                "giving up replicas {given_up:?}: the new memory limit cannot hold them"
                            );
                        }
                    }
                    // The running worker keeps the preferences it has.
                    Err(error) => tracing::error!("{error:#}; keeping the previous preferences"),
                }
            }
        }
        let readings = Readings {
            user_idle: sources.idle.as_mut().and_then(|s| s.user_idle()),
            other_load_percent: load,
            on_battery,
            week_time,
        };
        let now_ms = started.elapsed().as_millis() as u64;
        if let Some(change) = supervisor.apply(now_ms, &readings) {
            // A line when the reason changes, not each time its figures do (the user's idle
            // seconds would log a line a second).
            // The CPU limit's slicing is routine, not worth a line twice a second.
            let change = change.filter(|hold| *hold != governor::Hold::Throttled);
            let kind = change.as_ref().map(std::mem::discriminant);
            if kind != logged_hold {
                logged_hold = kind;
                match change {
                    Some(hold) => tracing::info!("holding units: {hold}"),
                    None => tracing::info!("units may run"),
                }
            }
        }
        // Every POLL while units run (the user's return must pause them at once); otherwise
        // every IDLE_POLL, or at once when a unit starts: an idle worker barely wakes.
        let pause = if supervisor.running() > 0 {
            POLL
        } else {
            IDLE_POLL
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_that_worked_is_followed_by_the_shortest_wait_and_a_failing_one_backs_off() {
        let long = WORKED_FOR + Duration::from_secs(11);
        // Welcomed and up for a while: a restarted coordinator is rejoined at once.
        assert_eq!(reconnect_wait(MAX_BACKOFF, true, long), MIN_BACKOFF);
        // Welcomed but dropped at once, or never welcomed however long it tried: the backoff
        // goes on growing, so a coordinator that accepts and drops sees no storm.
        assert_eq!(
            reconnect_wait(Duration::from_secs(8), true, Duration::from_millis(300)),
            Duration::from_secs(8)
        );
        assert_eq!(
            reconnect_wait(Duration::from_secs(8), false, long),
            Duration::from_secs(8)
        );
    }
}
