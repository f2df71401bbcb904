//! What each [`Store`] call does, on any backend: the checks made before anything reaches the
//! database, then the work, run by the backend in its writer (with the live work) or on its
//! read path. A backend is only its [`Backend`] seam: the threads its connections run on.

use herd_protocol::{Assignment, ContentHash, Outcome, PublicKey};

use crate::live::Live;
use crate::sql::{Sql, Value, WorkChange, args};
use crate::threads::Threads;
use crate::{
    Account, BatchStatus, BatchSummary, CreditTotals, Exchange, HostLine, HostRecord, KeyChange,
    NewBatch, Pending, ProjectSummary, ReportEffect, ReportRefusal, Researcher, RetiredBatch,
    StatsDump, Store, StoreError, ThroughputBucket, UnitState, UnitStatus, Want, accounts, ledger,
    parse_hash, reads, researchers, stats, work,
};

/// What a backend is to the store's logic: the threads that run its work (a writer with the
/// live work, and readers), each with a connection of the backend's kind.
pub(crate) trait Backend: Send + Sync {
    fn threads(&self) -> &Threads;

    /// Whether other coordinators share the database: blobs are then kept in it (see
    /// [`Store::shares_blobs`]) and reports may be forwarded between coordinators.
    fn shared(&self) -> bool {
        false
    }
}

/// Hashes as an SQL list of literals: hex digits only, so nothing needs quoting.
fn hash_list(hashes: &[ContentHash]) -> String {
    hashes
        .iter()
        .map(|hash| format!("'{}'", hash.to_hex()))
        .collect::<Vec<_>>()
        .join(", ")
}

impl StoreError {
    /// Whether this error refuses a request (raised before anything changed) rather than
    /// reporting a failure that may have interrupted an operation midway.
    pub(crate) fn is_refusal(&self) -> bool {
        matches!(
            self,
            StoreError::UnknownReplica(_)
                | StoreError::NotYourReplica { .. }
                | StoreError::UnknownHost
                | StoreError::ImpossibleReport { .. }
                | StoreError::UnknownAccount { .. }
                | StoreError::Taken(_)
                | StoreError::Invalid(_)
                | StoreError::BlobMissing(_)
                | StoreError::NotAllowed(_)
        )
    }

    /// The same error for another caller (errors are not `Clone`: a database error's source is
    /// kept as its message).
    pub(crate) fn for_another(&self) -> StoreError {
        StoreError::Commit(self.to_string())
    }
}

/// Names volunteers and teams may have, and a host's cores.
fn check_host_names(volunteer: &str, team: Option<&str>, cores: u32) -> Result<(), StoreError> {
    accounts::check_names(volunteer, team)?;
    if !(1..=1024).contains(&cores) {
        return Err(StoreError::Invalid(format!(
            "cores {cores} is outside 1..=1024"
        )));
    }
    Ok(())
}

/// Purges a batch (see [`Store::retire_batch`]).
fn retire(
    tx: &mut dyn Sql,
    live: &mut Live,
    batch_id: u64,
) -> Result<Option<RetiredBatch>, StoreError> {
    if researchers::owner(tx, batch_id)?.is_none() {
        return Ok(None);
    }
    // Its units in every shard: no other coordinator decides any of them meanwhile.
    tx.announce(WorkChange::Barrier)?;
    // Every blob the batch refers to: its module, its inputs, every reported output.
    let mut referenced: Vec<String> = tx
        .query(
            "SELECT module_hash FROM batches WHERE id = ?1
             UNION SELECT input_hash FROM units WHERE batch_id = ?1
             UNION SELECT r.output_hash FROM replicas r JOIN units u ON u.id = r.unit_id
                   WHERE u.batch_id = ?1 AND r.output_hash IS NOT NULL",
            &args![batch_id],
        )?
        .iter()
        .map(|row| row.text(0))
        .collect::<Result<_, _>>()?;
    referenced.sort();
    referenced.dedup();
    let replicas = tx.execute_count(
        "DELETE FROM replicas WHERE unit_id IN (SELECT id FROM units WHERE batch_id = ?1)",
        &args![batch_id],
    )?;
    let units = tx.execute_count("DELETE FROM units WHERE batch_id = ?1", &args![batch_id])?;
    tx.execute("DELETE FROM batches WHERE id = ?1", &args![batch_id])?;
    // Blobs that no remaining batch refers to may go.
    let mut unreferenced = Vec::new();
    for hash in referenced {
        let still_used = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM batches WHERE module_hash = ?1)
                 OR EXISTS (SELECT 1 FROM units WHERE input_hash = ?1)
                 OR EXISTS (SELECT 1 FROM replicas WHERE output_hash = ?1)",
                &args![&hash],
            )?
            .bool(0)?;
        if !still_used {
            // The blob is about to go: no one holds it any more.
            tx.execute("DELETE FROM blob_uploads WHERE hash = ?1", &args![&hash])?;
            unreferenced.push(parse_hash(&hash)?);
        }
    }
    live.remove_batch(batch_id);
    Ok(Some(RetiredBatch {
        units,
        replicas,
        unreferenced_blobs: unreferenced,
    }))
}

impl<B: Backend> Store for B {
    fn shares_blobs(&self) -> bool {
        self.shared()
    }

    fn share_blobs(&self, blobs: Vec<Vec<u8>>) -> Pending<()> {
        if !self.shared() {
            return Pending::ready(Ok(()));
        }
        self.threads().write(move |tx, _| {
            for bytes in blobs {
                tx.execute(
                    "INSERT INTO blobs (hash, bytes) VALUES (?1, ?2) ON CONFLICT (hash) DO NOTHING",
                    &[
                        Value::from(ContentHash::of(&bytes).to_hex()),
                        Value::Blob(bytes),
                    ],
                )?;
            }
            Ok(())
        })
    }

    fn shared_blob(&self, hash: &ContentHash) -> Pending<Option<Vec<u8>>> {
        if !self.shared() {
            return Pending::ready(Ok(None));
        }
        let hash = hash.to_hex();
        self.threads().read(move |tx| {
            tx.query_row("SELECT bytes FROM blobs WHERE hash = ?1", &args![hash])?
                .map(|row| row.blob(0))
                .transpose()
        })
    }

    fn shared_blobs_missing(&self, hashes: Vec<ContentHash>) -> Pending<Vec<ContentHash>> {
        if !self.shared() {
            return Pending::ready(Ok(hashes));
        }
        self.threads().read(move |tx| {
            let mut missing = Vec::new();
            for chunk in hashes.chunks(1000) {
                let kept: std::collections::HashSet<String> = tx
                    .query(
                        &format!(
                            "SELECT hash FROM blobs WHERE hash IN ({})",
                            hash_list(chunk)
                        ),
                        &[],
                    )?
                    .iter()
                    .map(|row| row.text(0))
                    .collect::<Result<_, _>>()?;
                missing.extend(chunk.iter().filter(|h| !kept.contains(&h.to_hex())));
            }
            Ok(missing)
        })
    }

    fn unshare_blobs(&self, hashes: Vec<ContentHash>) -> Pending<()> {
        if !self.shared() || hashes.is_empty() {
            return Pending::ready(Ok(()));
        }
        self.threads().write(move |tx, _| {
            for chunk in hashes.chunks(1000) {
                tx.execute(
                    &format!("DELETE FROM blobs WHERE hash IN ({})", hash_list(chunk)),
                    &[],
                )?;
            }
            Ok(())
        })
    }

    fn register_host(
        &self,
        key: &PublicKey,
        volunteer: &str,
        team: Option<&str>,
        cores: u32,
        now_ms: u64,
    ) -> Pending<HostRecord> {
        if let Err(error) = check_host_names(volunteer, team, cores) {
            return Pending::ready(Err(error));
        }
        let key = *key;
        let name = volunteer.trim().to_string();
        let team = team.map(|t| t.trim().to_string());
        self.threads().write(move |tx, live| {
            accounts::register_host(tx, live, &key, &name, team.as_deref(), cores, now_ms)
        })
    }

    fn attach_host(
        &self,
        key: &PublicKey,
        key_hash: &str,
        team: Option<&str>,
        cores: u32,
        now_ms: u64,
    ) -> Pending<HostRecord> {
        if let Err(error) = check_host_names("-", team, cores) {
            return Pending::ready(Err(error));
        }
        let (key, key_hash) = (*key, key_hash.to_owned());
        let team = team.map(|t| t.trim().to_string());
        self.threads().write(move |tx, live| {
            accounts::attach_host(tx, live, &key, &key_hash, team.as_deref(), cores, now_ms)
        })
    }

    fn create_account(
        &self,
        name: &str,
        team: Option<&str>,
        key_hash: &str,
        token_hash: Option<&str>,
        invitation: Option<&str>,
        now_ms: u64,
    ) -> Pending<Account> {
        let (name, team) = (name.to_owned(), team.map(str::to_owned));
        let (key_hash, invitation) = (key_hash.to_owned(), invitation.map(str::to_owned));
        let token_hash = token_hash.map(str::to_owned);
        self.threads().write(move |tx, _| {
            accounts::create(
                tx,
                &name,
                team.as_deref(),
                (&key_hash, token_hash.as_deref()),
                invitation.as_deref(),
                now_ms,
            )
        })
    }

    fn account(&self, name: &str) -> Pending<Option<Account>> {
        let name = name.to_owned();
        self.threads().read(move |tx| accounts::by_name(tx, &name))
    }

    fn set_account_key(&self, name: &str, key_hash: Option<&str>) -> Pending<Option<KeyChange>> {
        let (name, key_hash) = (name.to_owned(), key_hash.map(str::to_owned));
        self.threads()
            .write(move |tx, _| accounts::set_key(tx, &name, key_hash.as_deref()))
    }

    fn create_invitation(&self, code_hash: &str, now_ms: u64) -> Pending<()> {
        let code_hash = code_hash.to_owned();
        self.threads()
            .write(move |tx, _| accounts::create_invitation(tx, &code_hash, now_ms))
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
        self.threads()
            .write(move |tx, live| work::create_batch(tx, live, &batch, now_ms))
    }

    fn assign(&self, host_id: u64, now_ms: u64) -> Pending<Option<Assignment>> {
        self.threads()
            .write(move |tx, live| work::assign(tx, live, host_id, Want::units(1), now_ms))
    }

    fn record_report(
        &self,
        host_id: u64,
        replica_id: u64,
        outcome: &Outcome,
        now_ms: u64,
    ) -> Pending<ReportEffect> {
        let outcome = outcome.clone();
        self.threads().write(move |tx, live| {
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
        self.threads().write(move |tx, live| {
            let mut fates = Vec::with_capacity(reports.len());
            for (replica_id, outcome) in &reports {
                fates.push(
                    match work::record_report(tx, live, host_id, *replica_id, outcome, now_ms) {
                        Ok(effect) => Ok(effect),
                        Err(StoreError::UnknownReplica(_)) => Err(ReportRefusal::UnknownReplica),
                        Err(StoreError::NotYourReplica { .. }) => {
                            Err(ReportRefusal::NotYourReplica)
                        }
                        Err(StoreError::ImpossibleReport { reason, .. }) => {
                            Err(ReportRefusal::Impossible(reason))
                        }
                        Err(other) => return Err(other),
                    },
                );
            }
            let refused = fates.iter().filter(|f| f.is_err()).count();
            if refused > 0 {
                work::count_refused(tx, host_id, refused as u64)?;
            }
            let mut assignments = Vec::new();
            for _ in 0..want.units {
                match work::assign(tx, live, host_id, want, now_ms)? {
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

    fn settle_forwarded(&self) -> Pending<usize> {
        if !self.shared() {
            return Pending::ready(Ok(0));
        }
        self.threads().write(work::settle_forwarded)
    }

    fn expire_deadlines(&self, now_ms: u64) -> Pending<usize> {
        self.threads().write(move |tx, live| {
            let expired = live.expired(now_ms);
            work::time_out(tx, live, &expired, now_ms)?;
            Ok(expired.len())
        })
    }

    fn unneeded_replicas(&self, host_id: u64, held: &[u64]) -> Pending<Vec<u64>> {
        let held = held.to_vec();
        self.threads()
            .read(move |tx| work::unneeded_replicas(tx, host_id, &held))
    }

    fn release_lost_replicas(&self, host_id: u64, held: &[u64], now_ms: u64) -> Pending<usize> {
        let held = held.to_vec();
        self.threads().write(move |tx, live| {
            let lost = work::lost_replicas(tx, live, host_id, &held)?;
            work::time_out(tx, live, &lost, now_ms)?;
            Ok(lost.len())
        })
    }

    fn host_needs_blob(&self, host_id: u64, hash: &ContentHash) -> Pending<bool> {
        let hash = *hash;
        self.threads()
            .write(move |tx, live| work::host_needs_blob(tx, live, host_id, &hash))
    }

    fn batch_status(&self, batch_id: u64) -> Pending<Option<BatchStatus>> {
        self.threads()
            .read(move |tx| reads::batch_status(tx, batch_id))
    }

    fn credit_totals(&self, now_ms: u64) -> Pending<CreditTotals> {
        self.threads()
            .read(move |tx| reads::credit_totals(tx, now_ms))
    }

    fn hosts(&self, now_ms: u64) -> Pending<Vec<HostLine>> {
        self.threads().read(move |tx| reads::hosts(tx, now_ms))
    }

    fn retire_batch(&self, batch_id: u64) -> Pending<Option<RetiredBatch>> {
        self.threads()
            .write(move |tx, live| retire(tx, live, batch_id))
    }

    fn record_refused_report(&self, host_id: u64) -> Pending<()> {
        self.threads()
            .write(move |tx, _| work::count_refused(tx, host_id, 1))
    }

    fn stats_dump(&self, now_ms: u64) -> Pending<StatsDump> {
        self.threads().read(move |tx| stats::dump(tx, now_ms))
    }

    fn throughput(
        &self,
        since_ms: u64,
        until_ms: u64,
        bucket_ms: u64,
    ) -> Pending<Vec<ThroughputBucket>> {
        self.threads()
            .read(move |tx| stats::throughput(tx, since_ms, until_ms, bucket_ms))
    }

    fn project_summary(
        &self,
        now_ms: u64,
        active_ms: u64,
        window_ms: u64,
    ) -> Pending<ProjectSummary> {
        self.threads()
            .read(move |tx| stats::summary(tx, now_ms, active_ms, window_ms))
    }

    fn ensure_researcher(&self, name: &str, token_hash: &str, now_ms: u64) -> Pending<Researcher> {
        let (name, token_hash) = (name.to_owned(), token_hash.to_owned());
        self.threads()
            .write(move |tx, _| researchers::ensure(tx, &name, &token_hash, now_ms))
    }

    fn add_researcher(&self, name: &str, token_hash: &str, now_ms: u64) -> Pending<Researcher> {
        let (name, token_hash) = (name.to_owned(), token_hash.to_owned());
        self.threads()
            .write(move |tx, _| researchers::add(tx, &name, &token_hash, now_ms))
    }

    fn grant_submit(
        &self,
        account: &str,
        token_hash: &str,
        now_ms: u64,
    ) -> Pending<Option<Researcher>> {
        let (account, token_hash) = (account.to_owned(), token_hash.to_owned());
        self.threads()
            .write(move |tx, _| researchers::grant_submit(tx, &account, &token_hash, now_ms))
    }

    fn deny_submit(&self, account: &str, now_ms: u64) -> Pending<Option<bool>> {
        let account = account.to_owned();
        self.threads()
            .write(move |tx, _| researchers::deny_submit(tx, &account, now_ms))
    }

    fn researcher_by_token(&self, token_hash: &str) -> Pending<Option<Researcher>> {
        let token_hash = token_hash.to_owned();
        self.threads()
            .read(move |tx| researchers::by_token(tx, &token_hash))
    }

    fn list_batches(
        &self,
        researcher_id: u64,
        after: u64,
        limit: u32,
    ) -> Pending<Vec<BatchSummary>> {
        self.threads()
            .read(move |tx| researchers::list_batches(tx, researcher_id, after, limit))
    }

    fn batch_summary(&self, batch_id: u64) -> Pending<Option<(u64, BatchSummary)>> {
        self.threads()
            .read(move |tx| researchers::summary(tx, batch_id))
    }

    fn batch_units(
        &self,
        batch_id: u64,
        after: u64,
        limit: u32,
        state: Option<UnitState>,
    ) -> Pending<Vec<UnitStatus>> {
        self.threads()
            .read(move |tx| reads::unit_page(tx, batch_id, after, limit, state))
    }

    fn batch_owner(&self, batch_id: u64) -> Pending<Option<u64>> {
        self.threads()
            .read(move |tx| researchers::owner(tx, batch_id))
    }

    fn blob_visible(&self, researcher_id: u64, hash: &ContentHash) -> Pending<bool> {
        let hash = hash.to_hex();
        self.threads()
            .read(move |tx| researchers::blob_visible(tx, researcher_id, &hash))
    }

    fn record_uploads(&self, researcher_id: u64, hashes: Vec<ContentHash>) -> Pending<()> {
        self.threads()
            .write(move |tx, _| researchers::record_uploads(tx, researcher_id, &hashes))
    }

    fn account_by_token(&self, token_hash: &str) -> Pending<Option<Account>> {
        let token_hash = token_hash.to_owned();
        self.threads()
            .read(move |tx| accounts::by_token(tx, &token_hash))
    }

    fn set_account_token(&self, name: &str, token_hash: &str) -> Pending<Option<Account>> {
        let (name, token_hash) = (name.to_owned(), token_hash.to_owned());
        self.threads().write(move |tx, _| {
            let Some(account) = accounts::by_name(tx, &name)? else {
                return Ok(None);
            };
            accounts::set_token(tx, account.id, &token_hash)?;
            Ok(Some(account))
        })
    }

    fn statement(&self, name: &str, recent: u32) -> Pending<Option<ledger::Statement>> {
        let name = name.to_owned();
        self.threads()
            .read(move |tx| ledger::statement(tx, &name, recent))
    }

    fn grant_credit(
        &self,
        name: &str,
        amount: u64,
        memo: Option<&str>,
        now_ms: u64,
    ) -> Pending<ledger::LedgerRow> {
        let (name, memo) = (name.to_owned(), memo.map(str::to_owned));
        self.threads()
            .write(move |tx, _| ledger::grant(tx, &name, amount, memo.as_deref(), now_ms))
    }

    fn send_credit(
        &self,
        from_id: u64,
        to: &str,
        amount: u64,
        memo: Option<&str>,
        now_ms: u64,
    ) -> Pending<ledger::Transfer> {
        let (to, memo) = (to.to_owned(), memo.map(str::to_owned));
        self.threads()
            .write(move |tx, _| ledger::send(tx, from_id, &to, amount, memo.as_deref(), now_ms))
    }

    fn transfer_happened(&self, row_id: u64) -> Pending<bool> {
        // On the writer: a reader's snapshot might predate the transfer's commit.
        self.threads().write(move |tx, _| ledger::sent(tx, row_id))
    }

    fn set_overdraft(&self, name: &str, overdraft: Option<u64>) -> Pending<()> {
        let name = name.to_owned();
        self.threads()
            .write(move |tx, _| ledger::set_overdraft(tx, &name, overdraft))
    }

    fn refresh_funding(&self) -> Pending<usize> {
        self.threads().write(ledger::refresh_funding)
    }

    fn cancel_batch(&self, batch_id: u64) -> Pending<Option<u64>> {
        self.threads()
            .write(move |tx, live| researchers::cancel(tx, live, batch_id))
    }
}
