//! The coordinator: the project's single source of truth. It serves workers over QUIC
//! (registration, assignments, blobs, reports) and researchers and dashboards over HTTP, and keeps
//! everything in its data directory: the SQLite database, the blob store, its TLS certificate,
//! the project's signing key and the researcher token.
//!
//! This crate is the shell around the pure parts: the lifecycle decides, the [`Store`] commits,
//! and only then does the coordinator answer.

mod accounts;
mod archive;
mod blobs;
mod credit;
mod data_dir;
mod http;
mod leaderboard;
mod metrics;
mod quic;
mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use herd_blobs::BlobStore;
use herd_protocol::SigningKey;
use herd_sandbox::Sandbox;
use herd_store::{PgStore, SqliteStore, Store};
use tokio::sync::watch;

pub use data_dir::DataDir;

/// The coordinator's decoders of outside bytes that are not otherwise public, for the fuzz
/// targets (`fuzz/`) and the replay of their corpora in the test suite. A refusal is its message,
/// as the API would send it.
#[doc(hidden)]
pub mod fuzzing {
    /// `POST /api/v1/batches`' body, checked as the API checks it before it looks at the store.
    pub fn batch_request(body: &[u8]) -> Result<herd_store::NewBatch, String> {
        crate::http::parse_batch(body, 1, &crate::AccountRules::default())
            .map_err(|e| e.message().to_string())
    }

    /// `POST /api/v1/blobs`' body split into its blobs.
    pub fn bulk_upload(body: &[u8]) -> Result<Vec<&[u8]>, String> {
        crate::http::split_frames(body).map_err(|e| e.message().to_string())
    }
}

/// How often replicas past their deadline are timed out.
const DEADLINE_SWEEP: Duration = Duration::from_secs(2);

/// How often reports other coordinators kept for this one's shards are settled (on a shared
/// database): a forwarded report waits at most this long.
const FORWARDED_SWEEP: Duration = Duration::from_millis(500);

/// Where the coordinator keeps its state and listens.
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    /// The project's database: `None` for the embedded SQLite file in the data directory, or a
    /// PostgreSQL URL (`postgres://...`) shared with the project's other coordinators.
    pub database: Option<String>,
    /// The QUIC address workers connect to.
    pub quic: SocketAddr,
    /// The HTTP address of the researcher and dashboard API.
    pub http: SocketAddr,
    /// How accounts come to exist, and whether machines may compute without one.
    pub accounts: AccountRules,
}

pub use accounts::{AccountRules, SignUp};

/// What every request handler shares.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) blobs: blobs::ProjectBlobs,
    /// Where retired batches are archived when the researcher asks (`DIR/archive`).
    pub(crate) archive_dir: PathBuf,
    pub(crate) sandbox: Sandbox,
    pub(crate) project_key: SigningKey,
    /// Where the statistics exports are written (`DIR/stats`).
    pub(crate) stats_dir: PathBuf,
    /// The latest statistics dump and when it was taken: leaderboards are served from it for
    /// [`DUMP_FRESH_MS`], so dashboards polling them cost one query a while, not one each.
    pub(crate) dump_cache: tokio::sync::Mutex<Option<(u64, Arc<herd_store::StatsDump>)>>,
    pub(crate) accounts: accounts::Accounts,
}

/// How long a statistics dump serves leaderboards.
pub(crate) const DUMP_FRESH_MS: u64 = 30_000;

impl Shared {
    /// The statistics dump, at most [`DUMP_FRESH_MS`] old.
    pub(crate) async fn fresh_dump(&self) -> anyhow::Result<Arc<herd_store::StatsDump>> {
        let mut cache = self.dump_cache.lock().await;
        let now = now_ms();
        if let Some((taken, dump)) = cache.as_ref()
            && now.saturating_sub(*taken) < DUMP_FRESH_MS
        {
            return Ok(dump.clone());
        }
        let dump = Arc::new(self.store.stats_dump(now).await?);
        *cache = Some((now, dump.clone()));
        Ok(dump)
    }
}

/// Milliseconds since the Unix epoch: the only clock the coordinator reads, passed to the pure
/// parts as an argument.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs blocking work (SQLite, wasmtime) off the async threads.
pub(crate) async fn blocking<T, F>(work: F) -> anyhow::Result<T>
where
    F: FnOnce() -> anyhow::Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .context("blocking task panicked")?
}

/// Starts the coordinator and runs until `shutdown` turns true.
pub async fn run(config: Config, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let mut dir = DataDir::open(&config.data_dir)?;
    let listener = tokio::net::TcpListener::bind(config.http)
        .await
        .with_context(|| format!("bind HTTP on {}", config.http))?;
    let http_addr = listener.local_addr().context("HTTP local address")?;
    let http_url = format!("http://{http_addr}");
    let (store, project_secrets) = open_store(&dir, config.database.as_deref(), &http_url).await?;
    if let Some(project) = project_secrets
        && project != dir.secrets()?
    {
        // A coordinator joining a project presents the project's identity.
        if !dir.fresh {
            anyhow::bail!(
                "{} holds another project's certificate, keys or token than the database's: \
                 start a new coordinator with an empty data directory (it takes the project's \
                 from the database), or point it at its own project's database",
                config.data_dir.display()
            );
        }
        tracing::info!(
            "joined the project: its certificate, keys and token come from the database"
        );
        dir = dir.adopt(&project)?;
    }
    let blobs = blobs::ProjectBlobs::new(
        BlobStore::open(dir.blobs_path()).context("open the blob store")?,
        store.clone(),
    );
    let sandbox = Sandbox::new().context("configure the sandbox")?;
    let shared = Arc::new(Shared {
        store,
        blobs,
        archive_dir: config.data_dir.join("archive"),
        sandbox,
        project_key: SigningKey::from_seed(dir.project_key.seed()),
        stats_dir: stats::dir(&config.data_dir),
        dump_cache: tokio::sync::Mutex::new(None),
        accounts: accounts::Accounts::new(config.accounts),
    });
    // The token in DATA_DIR/researcher.token is the administrator's (on a shared database, the
    // project's, which every coordinator's directory holds).
    let admin_token = http::token_hash(&dir.researcher_token);
    shared
        .store
        .ensure_researcher(http::ADMIN, &admin_token, now_ms())
        .await
        .context("record the administrator's token")?;

    // Derived from the project key so it survives restarts; see `server_endpoint`.
    let reset_secret = blake3::derive_key("herd quic stateless reset v1", &dir.project_key.seed());
    let endpoint =
        herd_net::server_endpoint(config.quic, &dir.cert_der, &dir.key_der, &reset_secret)
            .context("start the QUIC endpoint")?;
    let quic_addr = endpoint.local_addr().context("QUIC local address")?;

    let join = herd_net::JoinString {
        addrs: vec![quic_addr],
        cert_sha256: herd_net::fingerprint(&dir.cert_der),
        project_key: shared.project_key.public_key(),
    };
    dir.write_addresses(&join.to_string(), &http_url)?;
    println!("join: {join}");
    println!("http: {http_url}");
    println!("token: {}", dir.token_path().display());

    let quic_task = tokio::spawn(quic::serve(endpoint.clone(), shared.clone()));
    let http_shutdown = shutdown.clone();
    let http_task = tokio::spawn(http::serve(listener, shared.clone(), http_shutdown));
    let sweeper = tokio::spawn(sweep_deadlines(shared.clone()));
    let forwarded = tokio::spawn(settle_forwarded(shared.clone()));
    let exporter = tokio::spawn(stats::export_on_schedule(shared.clone()));

    let _ = shutdown.wait_for(|stop| *stop).await;
    tracing::info!("shutting down");
    endpoint.close(0u32.into(), b"coordinator shutting down");
    sweeper.abort();
    forwarded.abort();
    exporter.abort();
    quic_task.abort();
    let _ = http_task.await;
    endpoint.wait_idle().await;
    Ok(())
}

/// The project's database: PostgreSQL at `url`, or the data directory's SQLite file. On
/// PostgreSQL, also the project's secrets, as the database holds them (this directory's, if it
/// is the first coordinator).
async fn open_store(
    dir: &DataDir,
    url: Option<&str>,
    http_url: &str,
) -> anyhow::Result<(Arc<dyn Store>, Option<Vec<(String, Vec<u8>)>>)> {
    match url {
        Some(url) => {
            if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
                anyhow::bail!(
                    "--database {url}: give a PostgreSQL URL (postgres://user@host:port/name), \
                     or leave it out for the data directory's SQLite file"
                );
            }
            let (url, http_url) = (url.to_owned(), http_url.to_owned());
            let ours = dir.secrets()?;
            let (store, project) = blocking(move || {
                let store = PgStore::connect_as(&url, &http_url)
                    .with_context(|| format!("connect to the database {url}"))?;
                let project = store
                    .project_secrets(ours)
                    .context("the project's secrets in the database")?;
                Ok((store, project))
            })
            .await?;
            Ok((Arc::new(store), Some(project)))
        }
        None => {
            let path = dir.database_path();
            let store =
                blocking(move || SqliteStore::open(&path).context("open the database")).await?;
            Ok((Arc::new(store), None))
        }
    }
}

/// Settles the reports other coordinators of the database kept for this one's shards.
async fn settle_forwarded(shared: Arc<Shared>) {
    if !shared.store.shares_blobs() {
        // A database of its own: no other coordinator forwards anything.
        return;
    }
    let mut interval = tokio::time::interval(FORWARDED_SWEEP);
    loop {
        interval.tick().await;
        match shared.store.settle_forwarded().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!("settled {n} reports other coordinators kept for this one"),
            Err(error) => tracing::error!("settle forwarded reports: {error:#}"),
        }
    }
}

async fn sweep_deadlines(shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(DEADLINE_SWEEP);
    loop {
        interval.tick().await;
        match shared.store.expire_deadlines(now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("{n} replicas passed their deadline and will be reissued"),
            Err(error) => tracing::error!("expire deadlines: {error:#}"),
        }
        // Owners of paying batches who spent their balance (their batches fall to the free tier
        // or pause), or can pay again.
        match shared.store.refresh_funding().await {
            Ok(0) => {}
            Ok(n) => tracing::info!("{n} batch owners can no longer pay, or can again"),
            Err(error) => tracing::error!("refresh funding: {error:#}"),
        }
    }
}
