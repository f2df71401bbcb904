//! The shards' leases: which coordinator decides which units. Every coordinator on one database
//! is active: it serves workers, researchers and dashboards. The live work is partitioned into
//! [`SHARDS`] shards (a unit's is `unit_id mod SHARDS`), and each shard is decided by the one
//! coordinator holding its lease, so the lifecycle's invariants hold without a distributed lock
//! on the hot path.
//!
//! A lease is a row of `leases`: the holder's name, an epoch, and an expiry by the database's
//! own clock (coordinators' clocks never matter). Each coordinator's lease thread, every
//! [`RENEW_EVERY`]:
//! - beats its heart in `coordinators`, so the others know how many share the work;
//! - renews every lease it holds, learning the set it holds (another may have handed it one);
//! - publishes how many units of each of its shards want a replica (`wanting`, so a taker
//!   takes the shards with work first);
//! - takes free or expired shards (a coordinator that died or stopped) up to its fair share,
//!   `ceil(SHARDS / live coordinators)`, bumping each one's epoch;
//! - below `floor(SHARDS / live coordinators)` (it has just started), asks the coordinator
//!   holding the most for one (`wanted_by`); a holder above that floor hands a requested shard
//!   over at its next tick. Shards move only from above the floor to below it, so they never
//!   go back and forth.
//!
//! Units are spread over shards by id, so every coordinator holds a share of every batch; a
//! worker that finds no work at its coordinator moves on to the project's next one, so work
//! in any shard reaches idle hosts wherever they connected.
//!
//! Fencing: every group of writes begins by reading this coordinator's lease rows `FOR KEY
//! SHARE` and decides only the shards it still holds at the epochs its live work was loaded
//! under. Taking a shard over (or handing one off) locks its row `FOR UPDATE`, which waits
//! until the holder's group in flight has committed; the new epoch makes the old holder drop
//! the shard at its next group, so two coordinators never decide one unit. The holder's own
//! renewal (a plain `UPDATE`) does not conflict with its groups' lock, so a busy writer never
//! starves its leases. A holder stopped in the middle of a group (SIGSTOP) is cut off by the
//! server after `idle_in_transaction_session_timeout`, so it cannot hold rows' locks, and with
//! them its shards, while it sleeps.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use super::PgDb;
use crate::StoreError;
use crate::group::Database;
use crate::shards::SHARDS;
use crate::sql::{Sql, args};

/// How long a lease lasts without renewal: a dead holder's shards are taken over within this
/// (plus one renewal period).
pub(crate) const LEASE_SECS: u64 = 10;

/// How often leases are renewed, free ones looked for, and requests answered.
const RENEW_EVERY: Duration = Duration::from_secs(1);

/// What this coordinator knows of its leases and of the work its writer holds.
#[derive(Debug, Default)]
struct State {
    /// Shards held as of the last renewal, with their epochs.
    held: BTreeMap<u64, u64>,
    /// Shards handed to another coordinator that the writer has not let go of yet.
    handed_off: BTreeSet<u64>,
    /// Units wanting a replica, per shard, as the writer last saw them.
    wanting: BTreeMap<u64, u64>,
    /// `wanting` as last written to the lease rows.
    published: BTreeMap<u64, u64>,
}

/// The leases as the writer and the lease thread see them.
pub(crate) struct Lease {
    /// This coordinator's name in the lease rows: unique per process.
    pub(crate) name: String,
    /// Its HTTP address, recorded for dashboards and operators.
    http: String,
    state: Mutex<State>,
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
            state: Mutex::new(State::default()),
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding it leaves plain data, still meaningful.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The shards held as of the last renewal.
    pub(crate) fn held(&self) -> BTreeMap<u64, u64> {
        self.state().held.clone()
    }

    /// The writer's count of units wanting a replica per shard, after a group.
    pub(crate) fn observe(&self, wanting: BTreeMap<u64, u64>) {
        self.state().wanting = wanting;
    }

    /// The writer no longer holds `shard` at `epoch`: handed off (said when it was), or taken
    /// over after this coordinator failed to renew it, which the writer reports as fencing.
    pub(crate) fn let_go(&self, shard: u64, epoch: u64, now_held_by: Option<&str>) {
        if self.state().handed_off.remove(&shard) {
            return;
        }
        tracing::error!(
            "fenced: shard {shard} is no longer this coordinator's (it held epoch {epoch} and \
             stalled past its {LEASE_SECS} s lease; {}); it writes nothing more for it",
            now_held_by.map_or("no one holds it now".to_string(), |h| format!(
                "{h} holds it"
            ))
        );
    }

    /// One round of renewals, takeovers and hand-offs on `db` (see the module documentation).
    pub(crate) fn tick(&self, db: &mut PgDb) -> Result<(), StoreError> {
        db.reconnect_if_closed()?;
        db.execute_count(
            "INSERT INTO coordinators (name, http, expires_at)
             VALUES (?1, ?2, now() + make_interval(secs => ?3))
             ON CONFLICT (name) DO UPDATE SET expires_at = excluded.expires_at",
            &args![&self.name, &self.http, LEASE_SECS as f64],
        )?;
        let rows = db.query(
            "UPDATE leases SET expires_at = now() + make_interval(secs => ?2)
             WHERE holder = ?1 RETURNING shard, epoch, wanted_by",
            &args![&self.name, LEASE_SECS as f64],
        )?;
        let mut held = BTreeMap::new();
        let mut requests = Vec::new();
        for row in &rows {
            held.insert(row.u64(0)?, row.u64(1)?);
            if let Some(by) = row.opt_text(2)?
                && by != self.name
            {
                requests.push((row.u64(0)?, by));
            }
        }
        self.renewed(&held);
        self.publish_wanting(db, &held)?;
        let coordinators = db
            .number(
                "SELECT count(*) FROM coordinators WHERE expires_at > now()",
                &[],
            )?
            .max(1);
        let (floor, fair_share) = (SHARDS / coordinators, SHARDS.div_ceil(coordinators));
        for (shard, to) in &requests {
            if self.state().held.len() as u64 > floor {
                self.hand_off(db, *shard, to)?;
            } else {
                db.execute_count(
                    "UPDATE leases SET wanted_by = NULL WHERE shard = ?1 AND holder = ?2",
                    &args![*shard, &self.name],
                )?;
            }
        }
        let held_now = self.state().held.len() as u64;
        let taken = if held_now < fair_share {
            self.take_free(db, fair_share - held_now)?
        } else {
            0
        };
        if held_now + taken < floor {
            self.ask_for_share(db, floor, floor - held_now - taken)?;
        }
        Ok(())
    }

    /// Records the set renewed, saying what was gained (handed over by another) and lost.
    fn renewed(&self, held: &BTreeMap<u64, u64>) {
        let mut state = self.state();
        for (shard, epoch) in held {
            if !state.held.contains_key(shard) {
                tracing::info!("holds shard {shard} (epoch {epoch})");
            }
        }
        for shard in state.held.keys() {
            if !held.contains_key(shard) && !state.handed_off.contains(shard) {
                tracing::error!(
                    "lost the lease of shard {shard}: another coordinator took it over"
                );
            }
        }
        state.held = held.clone();
    }

    /// Writes each held shard's count of units wanting a replica, where it changed.
    fn publish_wanting(&self, db: &mut PgDb, held: &BTreeMap<u64, u64>) -> Result<(), StoreError> {
        let (wanting, published) = {
            let state = self.state();
            (state.wanting.clone(), state.published.clone())
        };
        let mut now_published = BTreeMap::new();
        for shard in held.keys() {
            let count = wanting.get(shard).copied().unwrap_or(0);
            if published.get(shard) != Some(&count) {
                db.execute(
                    "UPDATE leases SET wanting = ?2 WHERE shard = ?1 AND holder = ?3",
                    &args![*shard, count, &self.name],
                )?;
            }
            now_published.insert(*shard, count);
        }
        db.flush()?;
        self.state().published = now_published;
        Ok(())
    }

    /// Hands `shard` to the coordinator `to`, which asked for it.
    fn hand_off(&self, db: &mut PgDb, shard: u64, to: &str) -> Result<(), StoreError> {
        // `FOR UPDATE` waits for this coordinator's own group in flight, which holds the row
        // `FOR KEY SHARE`: everything it decided for the shard is committed before the shard
        // changes hands.
        db.execute("BEGIN", &[])?;
        let handed = (|| {
            let mine = db.query_row(
                "SELECT epoch FROM leases WHERE shard = ?1 AND holder = ?2 FOR UPDATE",
                &args![shard, &self.name],
            )?;
            if mine.is_none() {
                return Ok(false);
            }
            self.state().handed_off.insert(shard);
            let moved = db.execute_count(
                "UPDATE leases SET holder = ?3, holder_http = c.http, epoch = leases.epoch + 1,
                     expires_at = now() + make_interval(secs => ?4), wanted_by = NULL,
                     wanting = 0
                 FROM coordinators c
                 WHERE leases.shard = ?1 AND leases.holder = ?2 AND c.name = ?3
                   AND c.expires_at > now()",
                &args![shard, &self.name, to, LEASE_SECS as f64],
            )?;
            if moved == 0 {
                db.execute(
                    "UPDATE leases SET wanted_by = NULL WHERE shard = ?1",
                    &args![shard],
                )?;
            }
            db.execute("COMMIT", &[])?;
            db.flush()?;
            Ok(moved > 0)
        })();
        match handed {
            Ok(true) => {
                tracing::info!("handed shard {shard} to {to}, which holds fewer than its share");
                let mut state = self.state();
                state.held.remove(&shard);
                state.published.remove(&shard);
                Ok(())
            }
            Ok(false) => {
                self.state().handed_off.remove(&shard);
                Ok(())
            }
            Err(error) => {
                db.rollback();
                self.state().handed_off.remove(&shard);
                Err(error)
            }
        }
    }

    /// Takes up to `wanted` shards no one holds (or whose holder stopped renewing), those with
    /// work first. Returns how many.
    fn take_free(&self, db: &mut PgDb, wanted: u64) -> Result<u64, StoreError> {
        db.execute("BEGIN", &[])?;
        // `SKIP LOCKED`: a row still locked by its old holder's group in flight (or by another
        // taker) is left for the next tick rather than waited for.
        let taken = (|| {
            let rows = db.query(
                "SELECT shard, epoch FROM leases
                 WHERE (holder IS NULL OR expires_at < now()) AND holder IS DISTINCT FROM ?1
                 ORDER BY wanting DESC, shard LIMIT ?2 FOR UPDATE SKIP LOCKED",
                &args![&self.name, wanted],
            )?;
            let mut taken = Vec::new();
            for row in &rows {
                let (shard, epoch) = (row.u64(0)?, row.u64(1)? + 1);
                db.execute(
                    "UPDATE leases SET holder = ?2, holder_http = ?3, epoch = ?4,
                         expires_at = now() + make_interval(secs => ?5), wanted_by = NULL,
                         wanting = 0
                     WHERE shard = ?1",
                    &args![shard, &self.name, &self.http, epoch, LEASE_SECS as f64],
                )?;
                taken.push((shard, epoch));
            }
            db.execute("COMMIT", &[])?;
            db.flush()?;
            Ok(taken)
        })();
        match taken {
            Ok(taken) => {
                let mut state = self.state();
                for (shard, epoch) in &taken {
                    tracing::info!("holds shard {shard} (epoch {epoch})");
                    state.held.insert(*shard, *epoch);
                }
                Ok(taken.len() as u64)
            }
            Err(error) => {
                db.rollback();
                Err(error)
            }
        }
    }

    /// Asks the live coordinator holding the most shards (more than `floor`) for up to
    /// `wanted` of them beyond its floor, those with the most work first; requests still
    /// outstanding count against `wanted`.
    fn ask_for_share(&self, db: &mut PgDb, floor: u64, wanted: u64) -> Result<(), StoreError> {
        let Some(richest) = db.query_row(
            "SELECT holder, count(*) FROM leases
             WHERE holder IS NOT NULL AND holder <> ?1 AND expires_at > now()
             GROUP BY holder HAVING count(*) > ?2
             ORDER BY count(*) DESC, holder LIMIT 1",
            &args![&self.name, floor],
        )?
        else {
            return Ok(());
        };
        let (holder, holds) = (richest.text(0)?, richest.u64(1)?);
        let outstanding = db.number(
            "SELECT count(*) FROM leases WHERE wanted_by = ?1",
            &args![&self.name],
        )?;
        let asked = (holds - floor).min(wanted).saturating_sub(outstanding);
        if asked > 0 {
            db.execute_count(
                "UPDATE leases SET wanted_by = ?1
                 WHERE shard IN (SELECT shard FROM leases
                                 WHERE holder = ?2 AND wanted_by IS NULL
                                 ORDER BY wanting DESC, shard LIMIT ?3)",
                &args![&self.name, &holder, asked],
            )?;
        }
        Ok(())
    }

    /// Gives every lease up (a clean stop), so the others take the shards over at once.
    fn release(&self, db: &mut PgDb) {
        let _ = db.execute_count(
            "UPDATE leases SET holder = NULL, expires_at = 'epoch', wanted_by = NULL
             WHERE holder = ?1",
            &args![&self.name],
        );
        let _ = db.execute_count(
            "DELETE FROM coordinators WHERE name = ?1 OR expires_at < now() - interval '1 day'",
            &args![&self.name],
        );
        self.state().held.clear();
    }
}

/// The lease thread: a round every [`RENEW_EVERY`] on a connection of its own, until `stop`
/// closes; then gives the leases up.
pub(crate) fn keep(lease: Arc<Lease>, mut db: PgDb, stop: mpsc::Receiver<()>) {
    loop {
        if let Err(error) = lease.tick(&mut db) {
            tracing::warn!("the shards' leases: {error}");
        }
        match stop.recv_timeout(RENEW_EVERY) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => break,
        }
    }
    lease.release(&mut db);
}
