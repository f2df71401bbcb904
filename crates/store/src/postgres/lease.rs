//! The project's lease: which coordinator decides the live work. Several coordinators may run
//! on one database; the one holding the lease is active (it assigns, settles reports and
//! serves workers), the others stand by and serve reads, and take the lease over when the
//! holder has not renewed it for [`LEASE_SECS`]: because it died, lost its network or stalled.
//!
//! The lease is a row (`leases`, shard 0) holding the holder's name, an epoch and an expiry by
//! the database's own clock (coordinators' clocks never matter). Its holder renews it every
//! [`RENEW_EVERY`]; a taker bumps the epoch. Fencing: every group of writes begins by reading
//! the row `FOR KEY SHARE` and is abandoned unless it still names this coordinator at the epoch
//! its live work was loaded under. A takeover locks the row `FOR UPDATE`, which waits until
//! that group has committed, and its new epoch makes every later group of the old holder fail;
//! the holder's renewal (a plain `UPDATE`) does not conflict with its own groups' lock, so a
//! busy writer never starves its lease. A
//! holder stopped in the middle of a group (SIGSTOP) is cut off by the server after
//! `idle_in_transaction_session_timeout`, so it cannot hold the row's lock, and with it the
//! project, while it sleeps.
//!
//! The lease is one row today, shard 0, for the whole project; partitioning the live work
//! into many shards, each under a lease of its own, is the next step of issue 15.

use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use tokio::sync::watch;

use super::PgDb;
use crate::StoreError;
use crate::group::Database;
use crate::sql::{Sql, args};

/// How long a lease lasts without renewal: a dead holder is replaced within this (plus one
/// renewal period).
pub(crate) const LEASE_SECS: u64 = 10;

/// How often the holder renews its lease, and a standby looks for an expired one.
const RENEW_EVERY: Duration = Duration::from_secs(1);

/// What this coordinator knows of the lease.
#[derive(Debug, Default)]
struct Held {
    /// The epoch it holds the lease at; `None` while standing by.
    epoch: Option<u64>,
    /// The active coordinator's HTTP address, as it gave it (for standbys to point to).
    active_http: Option<String>,
}

/// The lease as the writer and the coordinator see it.
pub(crate) struct Lease {
    /// This coordinator's name in the lease row: unique per process.
    pub(crate) name: String,
    /// Its HTTP address, recorded with the lease for standbys to point researchers to.
    http: String,
    held: Mutex<Held>,
    active: watch::Sender<bool>,
}

impl Lease {
    pub(crate) fn new(http: &str) -> Result<Arc<Self>, StoreError> {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce)
            .map_err(|e| StoreError::Corrupt(format!("no secure random source: {e}")))?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "coordinator".into());
        let name = format!(
            "{host}/{}/{}",
            std::process::id(),
            nonce.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        Ok(Arc::new(Self {
            name,
            http: http.to_owned(),
            held: Mutex::new(Held::default()),
            active: watch::channel(false).0,
        }))
    }

    /// The epoch held, if any.
    pub(crate) fn epoch(&self) -> Option<u64> {
        self.held.lock().ok().and_then(|held| held.epoch)
    }

    /// Whether this coordinator is active, as it changes.
    pub(crate) fn activity(&self) -> watch::Receiver<bool> {
        self.active.subscribe()
    }

    /// Why this coordinator refuses to write now.
    pub(crate) fn standing_by(&self) -> StoreError {
        let active = self
            .held
            .lock()
            .ok()
            .and_then(|held| held.active_http.clone());
        StoreError::Standby(match active {
            Some(http) => format!(
                "this coordinator is standing by; the project's active coordinator is at {http}"
            ),
            None => "this coordinator is standing by (no coordinator holds the project's lease \
                     yet; one will within a few seconds)"
                .to_string(),
        })
    }

    fn set(&self, epoch: Option<u64>, active_http: Option<String>) {
        if let Ok(mut held) = self.held.lock() {
            held.epoch = epoch;
            held.active_http = active_http;
        }
        self.active.send_replace(epoch.is_some());
    }

    /// The writer found the lease taken over: it stops writing at once.
    pub(crate) fn fenced(&self, holder: &str, epoch: u64) {
        let mine = self.epoch();
        tracing::error!(
            "fenced: the project's lease is now held by {holder} at epoch {epoch} (this \
             coordinator held epoch {mine:?} and stalled past its {LEASE_SECS} s lease); it \
             writes nothing more and stands by"
        );
        self.set(None, None);
    }

    /// One renewal or takeover attempt on `db`.
    pub(crate) fn tick(&self, db: &mut PgDb) -> Result<(), StoreError> {
        db.reconnect_if_closed()?;
        match self.epoch() {
            Some(epoch) => {
                let renewed = db.execute_count(
                    "UPDATE leases SET expires_at = now() + make_interval(secs => ?3)
                     WHERE shard = 0 AND holder = ?1 AND epoch = ?2",
                    &args![&self.name, epoch, LEASE_SECS as f64],
                )?;
                if renewed == 0 {
                    tracing::error!(
                        "lost the project's lease (epoch {epoch}): another coordinator took it \
                         over; standing by"
                    );
                    self.set(None, None);
                }
            }
            None => {
                // Looked at first without a lock, so a standby disturbs no one while the lease
                // is alive.
                let row = db.query_one(
                    "SELECT holder_http, holder IS NULL OR expires_at < now() FROM leases
                     WHERE shard = 0",
                    &[],
                )?;
                let (active, free) = (row.opt_text(0)?, row.bool(1)?);
                if !free {
                    self.set(None, active);
                    return Ok(());
                }
                // Taken under `FOR UPDATE`, which waits for the holder's group in flight (its
                // `FOR KEY SHARE`), so no group of the old holder commits after this one.
                db.execute("BEGIN", &[])?;
                let taken = db
                    .query_row(
                        "SELECT epoch FROM leases
                         WHERE shard = 0 AND (holder IS NULL OR expires_at < now()) FOR UPDATE",
                        &[],
                    )
                    .and_then(|expired| match expired {
                        Some(row) => {
                            let epoch = row.u64(0)? + 1;
                            db.execute(
                                "UPDATE leases SET holder = ?1, holder_http = ?2, epoch = ?3,
                                     expires_at = now() + make_interval(secs => ?4)
                                 WHERE shard = 0",
                                &args![&self.name, &self.http, epoch, LEASE_SECS as f64],
                            )?;
                            db.execute("COMMIT", &[])?;
                            db.flush()?;
                            Ok(Some(epoch))
                        }
                        None => Ok(None),
                    });
                match taken {
                    Ok(Some(epoch)) => {
                        tracing::info!(
                            "holds the project's lease (epoch {epoch}): this coordinator is active"
                        );
                        self.set(Some(epoch), Some(self.http.clone()));
                    }
                    Ok(None) => db.rollback(),
                    Err(error) => {
                        db.rollback();
                        return Err(error);
                    }
                }
            }
        }
        Ok(())
    }

    /// Gives the lease up (a clean stop), so a standby takes over at once.
    fn release(&self, db: &mut PgDb) {
        if let Some(epoch) = self.epoch() {
            let _ = db.execute_count(
                "UPDATE leases SET holder = NULL, expires_at = 'epoch'
                 WHERE shard = 0 AND holder = ?1 AND epoch = ?2",
                &args![&self.name, epoch],
            );
            self.set(None, None);
        }
    }
}

/// The lease's thread: renews (or takes) the lease every [`RENEW_EVERY`] on a connection of its
/// own, until `stop` closes; then releases it.
pub(crate) fn keep(lease: Arc<Lease>, mut db: PgDb, stop: mpsc::Receiver<()>) {
    loop {
        if let Err(error) = lease.tick(&mut db) {
            tracing::warn!("the project's lease: {error}");
        }
        match stop.recv_timeout(RENEW_EVERY) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => break,
        }
    }
    lease.release(&mut db);
}
