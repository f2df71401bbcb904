//! The store's behaviour suite, driven through the [`Store`] seam and run on both backends
//! (every test once on SQLite, once on a real PostgreSQL started for the test process):
//! validation, credit, idempotence, refusals, durability across a reopen, and the live work
//! mirroring the database after every step of random operation sequences.

use std::ops::Deref;

use herd_lifecycle::Policy;
use herd_protocol::{AbortReason, ContentHash, Outcome, PublicKey, RunResult, Status};

use crate::live::Live;
use crate::operations::Backend;
use crate::*;

/// The backends the suite runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Sqlite,
    Postgres,
}

/// A store as the tests see it: the seam, plus the check that the live work mirrors the database.
pub(crate) trait TestStore: Store {
    /// Where the live work in memory differs from what loading it from the database gives now.
    fn live_mirrors_database(&self) -> Pending<Option<String>>;

    /// Runs `work` as one operation in the writer's group.
    fn operation(&self, work: Operation) -> Pending<()>;
}

/// A test's own operation for [`TestStore::operation`].
pub(crate) type Operation =
    Box<dyn FnOnce(&mut dyn crate::sql::Sql, &mut Live) -> Result<(), StoreError> + Send>;

impl<B: Backend> TestStore for B {
    fn live_mirrors_database(&self) -> Pending<Option<String>> {
        self.threads().write(|tx, live: &mut Live| {
            let loaded = work::load_live(tx, live.shards.clone())?;
            Ok(live.mirror_difference(&loaded))
        })
    }

    fn operation(&self, work: Operation) -> Pending<()> {
        self.threads().write(work)
    }
}

/// A store under test and the database it keeps: a SQLite file in a temporary directory, or a
/// fresh database on the test process's PostgreSQL server.
pub(crate) struct Subject {
    store: Option<Box<dyn TestStore>>,
    kind: Kind,
    sqlite_dir: Option<tempfile::TempDir>,
    postgres_url: Option<String>,
}

impl Subject {
    pub(crate) fn new(kind: Kind) -> Self {
        let mut subject = Self {
            store: None,
            kind,
            sqlite_dir: None,
            postgres_url: None,
        };
        match kind {
            Kind::Sqlite => subject.sqlite_dir = Some(tempfile::tempdir().expect("tempdir")),
            Kind::Postgres => {
                subject.postgres_url =
                    Some(herd_pgtest::fresh_database().expect("a PostgreSQL database"));
            }
        }
        subject.reopen();
        subject
    }

    /// The SQLite file, for a SQLite subject.
    pub(crate) fn sqlite_path(&self) -> Option<std::path::PathBuf> {
        self.sqlite_dir
            .as_ref()
            .map(|dir| dir.path().join("herd.sqlite"))
    }

    /// Closes the store (its writer finishes what it holds), keeping its database.
    pub(crate) fn close(&mut self) {
        drop(self.store.take());
    }

    /// Closes the store (its writer finishes what it holds) and opens the same database again.
    pub(crate) fn reopen(&mut self) {
        drop(self.store.take());
        self.store = Some(match self.kind {
            Kind::Sqlite => {
                let dir = self.sqlite_dir.as_ref().expect("a directory");
                Box::new(SqliteStore::open(&dir.path().join("herd.sqlite")).expect("open"))
            }
            Kind::Postgres => Box::new(
                PgStore::connect(self.postgres_url.as_ref().expect("a URL")).expect("connect"),
            ),
        });
    }
}

impl Deref for Subject {
    type Target = dyn TestStore;

    fn deref(&self) -> &Self::Target {
        self.store.as_deref().expect("open")
    }
}

/// Every behaviour test, once per backend.
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $test() { super::$test(super::Kind::Sqlite) })*
        }
        mod postgres {
            $(#[test] fn $test() { super::$test(super::Kind::Postgres) })*
        }
    };
}

/// Some exchanges say how fast the host is, so the deadline filter runs in the mirror test too,
/// and from which of two networks.
fn want_with_speed(units: u32) -> Want {
    Want {
        units,
        // Too slow for any unit of 3e9 fuel, or fast enough.
        fuel_per_second: [None, Some(50), None, Some(10_000_000)][units as usize % 4],
        network: [7, 8][units as usize % 2],
    }
}

pub(crate) fn key(n: u8) -> PublicKey {
    PublicKey([n; 32])
}

pub(crate) fn success(output: &[u8]) -> Outcome {
    Outcome::Countable(RunResult {
        status: Status::Success,
        fuel: 3_000_000_000,
        output_len: output.len() as u64,
        output_hash: ContentHash::of(output),
    })
}

/// Creating a batch as a researcher does: its module and inputs uploaded first.
pub(crate) trait CreateUploaded {
    fn create_uploaded(&self, batch: &NewBatch, now_ms: u64) -> Pending<u64>;
}

impl<S: Store + ?Sized> CreateUploaded for S {
    fn create_uploaded(&self, batch: &NewBatch, now_ms: u64) -> Pending<u64> {
        let hashes = std::iter::once(batch.module)
            .chain(batch.units.iter().map(|u| u.input))
            .collect();
        if let Err(error) = self.record_uploads(batch.researcher_id, hashes).wait() {
            return Pending::ready(Err(error));
        }
        self.create_batch(batch, now_ms)
    }
}

/// A store with one researcher (id 1), whom [`batch`] makes the owner.
pub(crate) fn open_store(kind: Kind) -> Subject {
    let store = Subject::new(kind);
    let researcher = store
        .ensure_researcher("tester", "token-hash", 0)
        .wait()
        .expect("researcher");
    assert_eq!(researcher.id, 1);
    store
}

pub(crate) fn batch(units: usize, quorum: u32) -> NewBatch {
    NewBatch {
        researcher_id: 1,
        module: ContentHash::of(b"module"),
        policy: Policy::with_quorum(quorum),
        fuel_limit: 10_000_000_000,
        memory_limit_bytes: 1 << 20,
        output_limit_bytes: 1 << 10,
        priority: 0,
        pricing: Pricing::default(),
        units: (0..units)
            .map(|i| NewUnit {
                name: format!("unit-{i}"),
                input: ContentHash::of(&i.to_le_bytes()),
                seed: i as u64,
            })
            .collect(),
    }
}

fn hosts(store: &Subject, n: u8) -> Vec<HostRecord> {
    hosts_from(store, 1, n)
}

/// `n` hosts of volunteers `volunteer-FIRST` on, each with a key of its number.
fn hosts_from(store: &Subject, first: u8, n: u8) -> Vec<HostRecord> {
    (first..first + n)
        .map(|i| {
            store
                .register_host(&key(i), &format!("volunteer-{i}"), Some("team"), 4, 0)
                .wait()
                .expect("register")
        })
        .collect()
}

fn agreement_validates_the_unit_and_credits_each_agreeing_volunteer_once(kind: Kind) {
    let store = open_store(kind);
    let batch_id = store
        .create_uploaded(&batch(1, 2), 0)
        .wait()
        .expect("batch");
    let hosts = hosts(&store, 3);
    let a = store
        .assign(hosts[0].host_id, 10)
        .wait()
        .expect("assign")
        .expect("work");
    let b = store
        .assign(hosts[1].host_id, 10)
        .wait()
        .expect("assign")
        .expect("work");
    // Quorum 2 with two in flight: the third host gets nothing.
    assert_eq!(
        store.assign(hosts[2].host_id, 10).wait().expect("assign"),
        None
    );
    assert_eq!(
        store
            .record_report(hosts[0].host_id, a.replica_id, &success(b"out"), 20)
            .wait()
            .expect("report"),
        ReportEffect::Recorded
    );
    assert_eq!(
        store
            .record_report(hosts[1].host_id, b.replica_id, &success(b"out"), 20)
            .wait()
            .expect("report"),
        ReportEffect::Validated { unit_id: a.unit_id }
    );
    // The same report again changes nothing and is acknowledged.
    assert_eq!(
        store
            .record_report(hosts[1].host_id, b.replica_id, &success(b"out"), 30)
            .wait()
            .expect("report"),
        ReportEffect::Duplicate
    );
    let status = store
        .batch_status(batch_id)
        .wait()
        .expect("status")
        .expect("batch");
    assert_eq!(status.validated, 1);
    assert_eq!(
        status.units[0].result.as_ref().map(|r| r.output_hash),
        Some(ContentHash::of(b"out"))
    );
    let credit = store.credit_totals(10_000).wait().expect("credit");
    // The researcher's account computed nothing: not listed.
    let earned: Vec<(&str, f64)> = credit
        .volunteers
        .iter()
        .map(|v| (v.name.as_str(), v.credit))
        .collect();
    assert_eq!(
        earned,
        vec![
            ("volunteer-1", 3.0),
            ("volunteer-2", 3.0),
            ("volunteer-3", 0.0)
        ]
    );
    assert_eq!(credit.teams[0].credit, 6.0);
}

fn a_disagreement_leads_to_a_third_replica_that_decides(kind: Kind) {
    let store = open_store(kind);
    let batch_id = store
        .create_uploaded(&batch(1, 2), 0)
        .wait()
        .expect("batch");
    let hosts = hosts(&store, 3);
    let a = store
        .assign(hosts[0].host_id, 0)
        .wait()
        .expect("assign")
        .expect("work");
    let b = store
        .assign(hosts[1].host_id, 0)
        .wait()
        .expect("assign")
        .expect("work");
    store
        .record_report(hosts[0].host_id, a.replica_id, &success(b"right"), 1)
        .wait()
        .expect("report");
    store
        .record_report(hosts[1].host_id, b.replica_id, &success(b"wrong"), 1)
        .wait()
        .expect("report");
    let c = store
        .assign(hosts[2].host_id, 2)
        .wait()
        .expect("assign")
        .expect("a third replica is sent");
    assert_eq!(c.unit_id, a.unit_id);
    assert_eq!(
        store
            .record_report(hosts[2].host_id, c.replica_id, &success(b"right"), 3)
            .wait()
            .expect("report"),
        ReportEffect::Validated { unit_id: a.unit_id }
    );
    let credit = store.credit_totals(10_000).wait().expect("credit");
    let liar = credit
        .volunteers
        .iter()
        .find(|v| v.name == "volunteer-2")
        .expect("listed");
    assert_eq!(liar.credit, 0.0);
    let status = store
        .batch_status(batch_id)
        .wait()
        .expect("status")
        .expect("batch");
    assert_eq!(status.units[0].replicas, 3);
}

fn one_volunteer_never_gets_two_replicas_of_a_unit_even_from_two_hosts(kind: Kind) {
    let store = open_store(kind);
    store
        .create_uploaded(&batch(1, 2), 0)
        .wait()
        .expect("batch");
    // Two machines attached to one account with its key.
    store
        .create_account("ada", None, "ada-key", None, None, 0)
        .wait()
        .expect("account");
    let first = store
        .attach_host(&key(1), "ada-key", None, 4, 0)
        .wait()
        .expect("attach");
    let second = store
        .attach_host(&key(2), "ada-key", None, 4, 0)
        .wait()
        .expect("attach");
    assert_eq!(first.volunteer_id, second.volunteer_id);
    assert!(
        store
            .assign(first.host_id, 0)
            .wait()
            .expect("assign")
            .is_some()
    );
    assert_eq!(store.assign(first.host_id, 0).wait().expect("assign"), None);
    assert_eq!(
        store.assign(second.host_id, 0).wait().expect("assign"),
        None
    );
}

fn a_host_holds_no_more_replicas_than_its_cores(kind: Kind) {
    let store = open_store(kind);
    store
        .create_uploaded(&batch(5, 1), 0)
        .wait()
        .expect("batch");
    let host = store
        .register_host(&key(1), "ada", None, 2, 0)
        .wait()
        .expect("register");
    assert!(
        store
            .assign(host.host_id, 0)
            .wait()
            .expect("assign")
            .is_some()
    );
    assert!(
        store
            .assign(host.host_id, 0)
            .wait()
            .expect("assign")
            .is_some()
    );
    assert_eq!(store.assign(host.host_id, 0).wait().expect("assign"), None);
}

fn a_new_host_earns_its_cores_and_one_that_lets_replicas_time_out_gets_less_work(kind: Kind) {
    let store = open_store(kind);
    let mut many = batch(40, 1);
    many.policy.replica_deadline_ms = 1_000;
    store.create_uploaded(&many, 0).wait().expect("batch");
    // A machine claiming 256 cores holds two units at first, not 256.
    let host = store
        .register_host(&key(1), "ada", None, 256, 0)
        .wait()
        .expect("register")
        .host_id;
    let take_all = |now: u64| {
        let mut taken = Vec::new();
        while let Some(a) = store.assign(host, now).wait().expect("assign") {
            taken.push(a);
        }
        taken
    };
    let first = take_all(0);
    assert_eq!(first.len(), 2);
    // Each valid result earns one more place.
    for (i, a) in first.iter().enumerate() {
        store
            .record_report(
                host,
                a.replica_id,
                &success(&a.unit_id.to_le_bytes()),
                10 + i as u64,
            )
            .wait()
            .expect("report");
    }
    let second = take_all(20);
    assert_eq!(second.len(), 4, "two valid results: four places");
    // It lets them all time out: each halves what it may hold, down to one.
    assert_eq!(store.expire_deadlines(2_000).wait().expect("expire"), 4);
    let third = take_all(2_000);
    assert_eq!(third.len(), 1, "four timeouts in a row: one place");
    mirrored(&store);
    // A valid result gives it back everything it had earned (three results: five places).
    store
        .record_report(
            host,
            third[0].replica_id,
            &success(&third[0].unit_id.to_le_bytes()),
            2_010,
        )
        .wait()
        .expect("report");
    let fourth = take_all(2_020);
    assert_eq!(fourth.len(), 5);
    mirrored(&store);
}

fn a_result_no_honest_run_makes_is_refused_and_counted_against_its_host(kind: Kind) {
    let store = open_store(kind);
    let mut one = batch(1, 2);
    one.fuel_limit = 1_000;
    one.output_limit_bytes = 10;
    store.create_uploaded(&one, 0).wait().expect("batch");
    let hosts = hosts(&store, 1);
    let host = hosts[0].host_id;
    let a = store.assign(host, 0).wait().expect("assign").expect("work");
    let claim = |fuel: u64, output_len: u64| {
        Outcome::Countable(RunResult {
            status: Status::Success,
            fuel,
            output_len,
            output_hash: ContentHash::of(b"x"),
        })
    };
    // More fuel than the budget, or more output than the limit: refused, saying which.
    let refused = store
        .exchange(
            host,
            vec![
                (a.replica_id, claim(1_001, 1)),
                (a.replica_id, claim(10, 11)),
            ],
            Want::units(0),
            1,
        )
        .wait()
        .expect("exchange");
    match &refused.reports[..] {
        [
            Err(ReportRefusal::Impossible(fuel)),
            Err(ReportRefusal::Impossible(output)),
        ] => {
            assert!(
                fuel.contains("1001 fuel, over the batch's budget of 1000"),
                "{fuel}"
            );
            assert!(
                output.contains("11 bytes of output, over the batch's limit of 10"),
                "{output}"
            );
        }
        other => panic!("{other:?}"),
    }
    let line = store
        .hosts(2)
        .wait()
        .expect("hosts")
        .into_iter()
        .find(|h| h.id == host)
        .expect("host");
    assert_eq!(line.refused_reports, 2, "{line:?}");
    // The replica is still the host's, and a possible result of it is recorded.
    assert_eq!(
        store
            .record_report(host, a.replica_id, &claim(1_000, 10), 3)
            .wait()
            .expect("report"),
        ReportEffect::Recorded
    );
    mirrored(&store);
}

fn reports_for_unknown_or_foreign_replicas_are_refused(kind: Kind) {
    let store = open_store(kind);
    store
        .create_uploaded(&batch(1, 2), 0)
        .wait()
        .expect("batch");
    let hosts = hosts(&store, 2);
    let a = store
        .assign(hosts[0].host_id, 0)
        .wait()
        .expect("assign")
        .expect("work");
    assert!(matches!(
        store
            .record_report(hosts[1].host_id, a.replica_id, &success(b"x"), 1)
            .wait(),
        Err(StoreError::NotYourReplica { .. })
    ));
    assert!(matches!(
        store
            .record_report(hosts[0].host_id, 999, &success(b"x"), 1)
            .wait(),
        Err(StoreError::UnknownReplica(999))
    ));
}

fn expired_replicas_are_replaced_and_a_late_report_is_still_checked(kind: Kind) {
    let store = open_store(kind);
    let mut spec = batch(1, 1);
    spec.policy.replica_deadline_ms = 1_000;
    store.create_uploaded(&spec, 0).wait().expect("batch");
    let hosts = hosts(&store, 2);
    let a = store
        .assign(hosts[0].host_id, 0)
        .wait()
        .expect("assign")
        .expect("work");
    assert_eq!(
        store.assign(hosts[1].host_id, 500).wait().expect("assign"),
        None
    );
    assert_eq!(store.expire_deadlines(2_000).wait().expect("expire"), 1);
    let b = store
        .assign(hosts[1].host_id, 2_000)
        .wait()
        .expect("assign")
        .expect("replacement");
    store
        .record_report(hosts[1].host_id, b.replica_id, &success(b"x"), 2_500)
        .wait()
        .expect("report");
    assert_eq!(
        store
            .record_report(hosts[0].host_id, a.replica_id, &success(b"x"), 3_000)
            .wait()
            .expect("late report"),
        ReportEffect::LateChecked { agreed: true }
    );
    let credit = store.credit_totals(10_000).wait().expect("credit");
    assert!(credit.volunteers.iter().all(|v| v.credit == 3.0));
}

fn aborts_never_count_and_too_many_fail_the_unit(kind: Kind) {
    let store = open_store(kind);
    let mut spec = batch(1, 1);
    spec.policy.max_error_replicas = 2;
    let batch_id = store.create_uploaded(&spec, 0).wait().expect("batch");
    let hosts = hosts(&store, 3);
    for host in &hosts[..2] {
        let r = store
            .assign(host.host_id, 0)
            .wait()
            .expect("assign")
            .expect("work");
        store
            .record_report(
                host.host_id,
                r.replica_id,
                &Outcome::Aborted(AbortReason::HostFailure("disk".into())),
                1,
            )
            .wait()
            .expect("report");
    }
    let status = store
        .batch_status(batch_id)
        .wait()
        .expect("status")
        .expect("batch");
    assert_eq!(status.failed, 1);
    assert!(
        status.units[0]
            .failure
            .as_deref()
            .is_some_and(|f| f.contains("aborted"))
    );
}

fn everything_survives_reopening_the_database(kind: Kind) {
    let mut store = Subject::new(kind);
    let (batch_id, replica_id, host_id) = {
        store
            .ensure_researcher("tester", "token-hash", 0)
            .wait()
            .expect("researcher");
        let batch_id = store
            .create_uploaded(&batch(2, 1), 0)
            .wait()
            .expect("batch");
        let host = store
            .register_host(&key(1), "ada", Some("x"), 4, 0)
            .wait()
            .expect("register");
        let r = store
            .assign(host.host_id, 0)
            .wait()
            .expect("assign")
            .expect("work");
        (batch_id, r.replica_id, host.host_id)
    };
    store.reopen();
    assert_eq!(
        store
            .record_report(host_id, replica_id, &success(b"y"), 5)
            .wait()
            .expect("report"),
        ReportEffect::Validated { unit_id: 1 }
    );
    let status = store
        .batch_status(batch_id)
        .wait()
        .expect("status")
        .expect("batch");
    assert_eq!((status.validated, status.open), (1, 1));
}

fn bad_batches_and_names_are_refused_by_name(kind: Kind) {
    let store = open_store(kind);
    let mut spec = batch(2, 2);
    spec.units[1].name = spec.units[0].name.clone();
    assert!(matches!(
        store.create_uploaded(&spec, 0).wait(),
        Err(StoreError::Invalid(m)) if m.contains("appears twice")
    ));
    // The refused batch's first unit and its batch row were rolled back with it: nothing of it
    // can be assigned or seen, and the live work still mirrors the database.
    let host = hosts(&store, 1)[0].host_id;
    assert_eq!(store.assign(host, 0).wait().expect("assign"), None);
    assert_eq!(store.batch_status(1).wait().expect("status"), None);
    mirrored(&store);
    assert!(matches!(
        store.create_uploaded(&batch(1, 99), 0).wait(),
        Err(StoreError::Invalid(m)) if m.contains("quorum 99")
    ));
    assert!(matches!(
        store.register_host(&key(1), "", None, 1, 0).wait(),
        Err(StoreError::Invalid(_))
    ));
}

fn a_volunteer_whose_replica_aborted_may_take_the_unit_again_once(kind: Kind) {
    // Two volunteers, quorum 2: if an abort barred its volunteer, the unit could never finish.
    let store = open_store(kind);
    let batch_id = store
        .create_uploaded(&batch(1, 2), 0)
        .wait()
        .expect("batch");
    let hosts = hosts(&store, 2);
    let a = store
        .assign(hosts[0].host_id, 0)
        .wait()
        .expect("assign")
        .expect("work");
    let b = store
        .assign(hosts[1].host_id, 0)
        .wait()
        .expect("assign")
        .expect("work");
    store
        .record_report(
            hosts[0].host_id,
            a.replica_id,
            &Outcome::Aborted(AbortReason::HostFailure("lost the network".into())),
            1,
        )
        .wait()
        .expect("report");
    let again = store
        .assign(hosts[0].host_id, 2)
        .wait()
        .expect("assign")
        .expect("the same volunteer may try again");
    assert_eq!(again.unit_id, a.unit_id);
    // A second abort is its last: the unit waits for another volunteer rather than letting one
    // host's trouble spend its whole error limit.
    store
        .record_report(
            hosts[0].host_id,
            again.replica_id,
            &Outcome::Aborted(AbortReason::HostFailure("disk full".into())),
            2,
        )
        .wait()
        .expect("report");
    assert_eq!(
        store.assign(hosts[0].host_id, 2).wait().expect("assign"),
        None
    );
    let third = hosts_from(&store, 3, 1)[0].host_id;
    let again = store
        .assign(third, 2)
        .wait()
        .expect("assign")
        .expect("another volunteer takes it");
    assert_eq!(again.unit_id, a.unit_id);
    store
        .record_report(hosts[1].host_id, b.replica_id, &success(b"x"), 3)
        .wait()
        .expect("report");
    store
        .record_report(third, again.replica_id, &success(b"x"), 4)
        .wait()
        .expect("report");
    let status = store
        .batch_status(batch_id)
        .wait()
        .expect("status")
        .expect("batch");
    assert_eq!(status.validated, 1);
}

fn credit_carries_a_recent_average_and_hosts_keep_their_record(kind: Kind) {
    let store = open_store(kind);
    store
        .create_uploaded(&batch(1, 2), 0)
        .wait()
        .expect("batch");
    let hosts = hosts(&store, 3);
    let a = store
        .assign(hosts[0].host_id, 0)
        .wait()
        .expect("assign")
        .expect("work");
    let b = store
        .assign(hosts[1].host_id, 0)
        .wait()
        .expect("assign")
        .expect("work");
    store
        .record_report(hosts[0].host_id, a.replica_id, &success(b"right"), 0)
        .wait()
        .expect("report");
    store
        .record_report(hosts[1].host_id, b.replica_id, &success(b"wrong"), 0)
        .wait()
        .expect("report");
    let c = store
        .assign(hosts[2].host_id, 0)
        .wait()
        .expect("assign")
        .expect("work");
    store
        .record_report(hosts[2].host_id, c.replica_id, &success(b"right"), 0)
        .wait()
        .expect("report");
    store
        .record_refused_report(hosts[1].host_id)
        .wait()
        .expect("count");
    let week = 7 * 86_400_000;
    let now = store.credit_totals(0).wait().expect("credit");
    let later = store.credit_totals(week).wait().expect("credit");
    let rac = |totals: &CreditTotals, name: &str| {
        totals
            .volunteers
            .iter()
            .find(|v| v.name == name)
            .map(|v| v.recent_average_credit)
            .expect("listed")
    };
    assert!(rac(&now, "volunteer-1") > 0.0);
    assert!((rac(&later, "volunteer-1") - rac(&now, "volunteer-1") / 2.0).abs() < 1e-9);
    assert_eq!(rac(&now, "volunteer-2"), 0.0);
    assert!((now.teams[0].recent_average_credit - 2.0 * rac(&now, "volunteer-1")).abs() < 1e-9);
    let records = store.hosts(0).wait().expect("hosts");
    let line = |i: usize| &records[i];
    assert_eq!((line(0).valid, line(0).invalid), (1, 0));
    assert_eq!(
        (line(1).valid, line(1).invalid, line(1).refused_reports),
        (0, 1, 1)
    );
    assert_eq!(line(2).valid, 1);
    assert_eq!(line(1).credit, 0.0);
    assert_eq!(line(0).public_key, "01".repeat(32));
}

/// An operation that fails after writing is undone alone: its writes are gone, the group's
/// other operations are kept, and the store goes on.
fn an_operation_that_fails_midway_is_undone_alone(kind: Kind) {
    let store = open_store(kind);
    let failed = store.operation(Box::new(|tx, _| {
        crate::researchers::add(tx, "undone", "undone-hash", 0)?;
        Err(StoreError::Corrupt(
            "failing on purpose after a write".into(),
        ))
    }));
    let kept = store.add_researcher("kept", "kept-hash", 0);
    assert!(failed.wait().is_err());
    kept.wait().expect("the other operation is kept");
    assert_eq!(
        store
            .researcher_by_token("undone-hash")
            .wait()
            .expect("read"),
        None
    );
    assert!(
        store
            .researcher_by_token("kept-hash")
            .wait()
            .expect("read")
            .is_some()
    );
    assert_eq!(store.live_mirrors_database().wait().expect("mirror"), None);
}

/// A grant made today (Unix time), years after the average's epoch, and a second a week later:
/// the average is what [`herd_lifecycle::RecentAverage`] computes, on both backends.
fn recent_average_credit_at_real_times_is_the_lifecycles(kind: Kind) {
    let store = open_store(kind);
    store
        .create_uploaded(&batch(2, 1), 0)
        .wait()
        .expect("batch");
    let host = hosts(&store, 1)[0].host_id;
    let today = 1_764_633_600_000; // 2025-12-02
    let week = 7 * 86_400_000;
    let mut expected = herd_lifecycle::RecentAverage {
        per_day: 0.0,
        as_of_ms: 0,
    };
    for now in [today, today + week] {
        let a = store
            .assign(host, now)
            .wait()
            .expect("assign")
            .expect("work");
        store
            .record_report(host, a.replica_id, &success(b"out"), now)
            .wait()
            .expect("report");
        expected = expected.granted(herd_lifecycle::credit_for_fuel(3_000_000_000), now);
    }
    let totals = store.credit_totals(today + week).wait().expect("credit");
    let rac = totals.volunteers[0].recent_average_credit;
    assert!(rac > 0.0);
    assert!(
        (rac - expected.per_day).abs() < 1e-9 * expected.per_day,
        "{rac} vs {}",
        expected.per_day
    );
}

fn batches_share_workers_fairly_and_priority_goes_first(kind: Kind) {
    let store = open_store(kind);
    let first = store
        .create_uploaded(&batch(10, 1), 0)
        .wait()
        .expect("batch");
    let second = store
        .create_uploaded(&batch(10, 1), 0)
        .wait()
        .expect("batch");
    let host = store
        .register_host(&key(1), "ada", None, 8, 0)
        .wait()
        .expect("register");
    give_history(&*store, host.host_id, 100);
    // Equal priority: the batch with fewer replicas in flight goes next, so they alternate.
    let served: Vec<u64> = (0..4)
        .map(|_| {
            store
                .assign(host.host_id, 0)
                .wait()
                .expect("assign")
                .expect("work")
                .batch_id
        })
        .collect();
    assert_eq!(served, vec![first, second, first, second]);
    // A batch of higher priority is served before both.
    let mut urgent = batch(2, 1);
    urgent.priority = 5;
    let urgent = store.create_uploaded(&urgent, 0).wait().expect("batch");
    let next: Vec<u64> = (0..3)
        .map(|_| {
            store
                .assign(host.host_id, 0)
                .wait()
                .expect("assign")
                .expect("work")
                .batch_id
        })
        .collect();
    assert_eq!(next, vec![urgent, urgent, first]);
}

fn retiring_a_batch_purges_its_rows_keeps_credit_and_names_only_unshared_blobs(kind: Kind) {
    let store = open_store(kind);
    let first = store
        .create_uploaded(&batch(2, 1), 0)
        .wait()
        .expect("batch");
    // The second batch shares the module and the first unit's input.
    let mut shared = batch(1, 1);
    shared.units[0].name = "other".into();
    let second = store.create_uploaded(&shared, 0).wait().expect("batch");
    let host = store
        .register_host(&key(1), "ada", None, 4, 0)
        .wait()
        .expect("register");
    for _ in 0..3 {
        let r = store
            .assign(host.host_id, 0)
            .wait()
            .expect("assign")
            .expect("work");
        let output = format!("out {}", r.unit_id);
        store
            .record_report(host.host_id, r.replica_id, &success(output.as_bytes()), 1)
            .wait()
            .expect("report");
    }
    let before = store.credit_totals(1).wait().expect("credit");
    let retired = store
        .retire_batch(first)
        .wait()
        .expect("retire")
        .expect("existed");
    assert_eq!((retired.units, retired.replicas), (2, 2));
    let mut expected = vec![
        ContentHash::of(&1usize.to_le_bytes()),
        ContentHash::of(b"out 1"),
        ContentHash::of(b"out 2"),
    ];
    expected.sort();
    let mut named = retired.unreferenced_blobs.clone();
    named.sort();
    assert_eq!(named, expected, "the module and the shared input stay");
    assert_eq!(store.batch_status(first).wait().expect("status"), None);
    assert!(store.batch_status(second).wait().expect("status").is_some());
    assert_eq!(
        store.credit_totals(1).wait().expect("credit"),
        before,
        "grants outlive the rows"
    );
    assert_eq!(store.retire_batch(first).wait().expect("retire"), None);
}

fn ids_are_never_reused_after_the_newest_batch_is_retired_and_its_grants_stay_apart(kind: Kind) {
    let store = open_store(kind);
    let host = hosts(&store, 1)[0].host_id;
    let run_one = |batch_id: u64| {
        let r = store.assign(host, 0).wait().expect("assign").expect("work");
        assert_eq!(r.batch_id, batch_id);
        store
            .record_report(host, r.replica_id, &success(b"x"), 1)
            .wait()
            .expect("report");
        r
    };
    let first = store
        .create_uploaded(&batch(1, 1), 0)
        .wait()
        .expect("batch");
    let old = run_one(first);
    store.retire_batch(first).wait().expect("retire");
    // The newest batch, its unit and its replica are gone: none of their ids comes back.
    let second = store
        .create_uploaded(&batch(1, 1), 0)
        .wait()
        .expect("batch");
    assert!(second > first, "batch id {second} after {first}");
    let new = run_one(second);
    assert!(new.unit_id > old.unit_id && new.replica_id > old.replica_id);
    // Both grants are in the ledger: the second was not taken for the first.
    let totals = store.credit_totals(1).wait().expect("credit");
    assert_eq!(totals.volunteers[0].replicas, 2, "{totals:?}");
    mirrored(&store);
}

/// A quorum-2 batch with adaptive replication: trusted after `trust_after` checked valid results,
/// spot checks with the given chance.
fn adaptive_batch(units: usize, trust_after: u32, spot_check_ppm: u32) -> NewBatch {
    let mut new = batch(units, 2);
    new.policy.adaptive = Some(herd_lifecycle::Adaptive {
        trust_after,
        spot_check_ppm,
    });
    new
}

/// Runs one unit to validation on two hosts, both reporting `result_of(host)`; returns its id.
fn validate_pair(store: &Subject, a: u64, b: u64, output_a: &[u8], output_b: &[u8]) -> u64 {
    let first = store.assign(a, 0).wait().expect("assign").expect("work");
    let second = store.assign(b, 0).wait().expect("assign").expect("work");
    assert_eq!(first.unit_id, second.unit_id);
    store
        .record_report(a, first.replica_id, &success(output_a), 1)
        .wait()
        .expect("report");
    store
        .record_report(b, second.replica_id, &success(output_b), 1)
        .wait()
        .expect("report");
    first.unit_id
}

/// Gives a host a history of `valid` valid results, as if earned before, in the database and in
/// the live work: it may then hold as many replicas as its cores
/// ([`herd_lifecycle::host_in_flight_cap`]).
pub(crate) fn give_history(store: &dyn TestStore, host_id: u64, valid: u64) {
    store
        .operation(Box::new(move |tx, live| {
            tx.execute(
                "UPDATE hosts SET valid_results = ?2 WHERE id = ?1",
                &crate::sql::args![host_id, valid],
            )?;
            if let Some(host) = live.hosts.get_mut(&host_id) {
                host.valid_results = valid;
            }
            Ok(())
        }))
        .wait()
        .expect("a history");
}

pub(crate) fn mirrored(store: &Subject) {
    assert_eq!(store.live_mirrors_database().wait().expect("mirror"), None);
}

fn a_trusted_host_validates_alone_and_spot_checks_still_come(kind: Kind) {
    let store = open_store(kind);
    let hosts = hosts(&store, 3);
    let (trusted, other) = (hosts[0].host_id, hosts[1].host_id);
    // Never spot-checked: once trusted, every unit it starts is validated by it alone.
    let batch_id = store
        .create_uploaded(&adaptive_batch(4, 2, 0), 0)
        .wait()
        .expect("batch");
    validate_pair(&store, trusted, other, b"ok", b"ok");
    validate_pair(&store, trusted, other, b"ok", b"ok");
    let line = store.hosts(2).wait().expect("hosts")[0].clone();
    assert_eq!(line.consecutive_valid, 2);
    let lone = store
        .assign(trusted, 3)
        .wait()
        .expect("assign")
        .expect("work");
    assert_eq!(
        store
            .assign(other, 3)
            .wait()
            .expect("assign")
            .map(|a| a.unit_id),
        Some(lone.unit_id + 1),
        "the lone unit wants no second replica"
    );
    let effect = store
        .record_report(trusted, lone.replica_id, &success(b"ok"), 4)
        .wait()
        .expect("report");
    assert_eq!(
        effect,
        ReportEffect::Validated {
            unit_id: lone.unit_id
        }
    );
    mirrored(&store);
    let status = store
        .batch_status(batch_id)
        .wait()
        .expect("status")
        .expect("batch");
    assert_eq!(status.validated, 3);
    // Always spot-checked: trust never lets a unit stand alone.
    let checked = store
        .create_uploaded(&adaptive_batch(1, 1, herd_lifecycle::PPM), 5)
        .wait()
        .expect("batch");
    store.retire_batch(batch_id).wait().expect("retire");
    let a = store
        .assign(trusted, 6)
        .wait()
        .expect("assign")
        .expect("work");
    let b = store
        .assign(other, 6)
        .wait()
        .expect("assign")
        .expect("work");
    assert_eq!((a.unit_id, a.batch_id), (b.unit_id, checked));
}

fn an_invalid_result_resets_trust_and_reopens_what_the_host_validated_alone(kind: Kind) {
    invalid_result_history(&open_store(kind));
}

/// Adaptive replication's whole story on `store`: trust earned, units validated alone, the liar
/// caught, its lone units reopened and their credit revoked.
fn invalid_result_history(store: &Subject) {
    let hosts = hosts(store, 3);
    let (sleeper, honest, third) = (hosts[0].host_id, hosts[1].host_id, hosts[2].host_id);
    store
        .create_uploaded(&adaptive_batch(6, 1, 0), 0)
        .wait()
        .expect("batch");
    // Honest once (trusted from then on), confirmed unit by unit...
    validate_pair(store, sleeper, honest, b"ok", b"ok");
    // ...then two units validated alone with wrong results.
    let mut lone_units = Vec::new();
    for _ in 0..2 {
        let lone = store
            .assign(sleeper, 1)
            .wait()
            .expect("assign")
            .expect("work");
        store
            .record_report(sleeper, lone.replica_id, &success(b"lie"), 2)
            .wait()
            .expect("report");
        lone_units.push(lone.unit_id);
    }
    let sleeper_credit = |store: &Subject| {
        store
            .credit_totals(10)
            .wait()
            .expect("credit")
            .volunteers
            .into_iter()
            .find(|v| v.name == "volunteer-1")
            .map(|v| v.fuel)
            .expect("line")
    };
    assert_eq!(sleeper_credit(store), 3 * 3_000_000_000);
    // Then it is caught: a checked unit where it disagrees with two honest hosts.
    let caught = store
        .assign(third, 3)
        .wait()
        .expect("assign")
        .expect("work");
    let liar = store
        .assign(sleeper, 3)
        .wait()
        .expect("assign")
        .expect("work");
    assert_eq!(
        caught.unit_id, liar.unit_id,
        "trust ended? no: the third host started it"
    );
    store
        .record_report(sleeper, liar.replica_id, &success(b"lie"), 4)
        .wait()
        .expect("report");
    store
        .record_report(third, caught.replica_id, &success(b"ok"), 4)
        .wait()
        .expect("report");
    let tie = store
        .assign(honest, 4)
        .wait()
        .expect("assign")
        .expect("work");
    assert_eq!(tie.unit_id, caught.unit_id);
    store
        .record_report(honest, tie.replica_id, &success(b"ok"), 5)
        .wait()
        .expect("report");
    mirrored(store);
    let line = store.hosts(6).wait().expect("hosts")[0].clone();
    assert_eq!((line.consecutive_valid, line.invalid), (0, 1));
    // Its lone units are open again (its lie kept as one replica) and go to honest hosts, who
    // outvote it.
    let open = store
        .batch_status(1)
        .wait()
        .expect("status")
        .expect("batch");
    assert!(
        lone_units
            .iter()
            .all(|id| open.units.iter().any(|u| u.id == *id && u.state == "open"))
    );
    for _ in 0..4 {
        for host in [honest, third] {
            if let Some(assignment) = store.assign(host, 6).wait().expect("assign") {
                assert!(lone_units.contains(&assignment.unit_id) || assignment.unit_id > 4);
                store
                    .record_report(host, assignment.replica_id, &success(b"ok"), 7)
                    .wait()
                    .expect("report");
            }
            mirrored(store);
        }
    }
    let status = store
        .batch_status(1)
        .wait()
        .expect("status")
        .expect("batch");
    let wrong = status
        .units
        .iter()
        .filter(|u| {
            u.result
                .as_ref()
                .is_some_and(|r| r.output_hash == ContentHash::of(b"lie"))
        })
        .count();
    assert_eq!(wrong, 0, "no lie stands");
    assert_eq!(status.validated, 6);
    // Its credit for the overturned lies is revoked; the honest unit's stays.
    assert_eq!(sleeper_credit(store), 3_000_000_000);
}

fn a_host_too_slow_for_the_deadline_gets_no_units_of_a_batch_it_cannot_finish(kind: Kind) {
    let store = open_store(kind);
    let mut new = batch(6, 1);
    new.policy.replica_deadline_ms = 60_000;
    store.create_uploaded(&new, 0).wait().expect("batch");
    let hosts = hosts(&store, 4);
    let speed = |fuel_per_second| Want {
        units: 1,
        fuel_per_second,
        ..Want::default()
    };
    // Before any result the batch's typical unit is unknown: even a slow host gets one.
    let first = store
        .exchange(hosts[0].host_id, Vec::new(), speed(Some(1)), 0)
        .wait()
        .expect("exchange");
    assert_eq!(first.assignments.len(), 1);
    let replica_id = first.assignments[0].replica_id;
    store
        .record_report(hosts[0].host_id, replica_id, &success(b"x"), 1)
        .wait()
        .expect("report");
    // A typical unit now burns 3e9 fuel: in the minute the deadline gives, that needs 50 M
    // fuel per second.
    let ask = |host: usize, fuel_per_second| {
        store
            .exchange(hosts[host].host_id, Vec::new(), speed(fuel_per_second), 2)
            .wait()
            .expect("exchange")
            .assignments
            .len()
    };
    assert_eq!(ask(1, Some(40_000_000)), 0, "too slow");
    assert_eq!(ask(2, Some(60_000_000)), 1, "fast enough");
    assert_eq!(ask(3, None), 1, "speed unknown: benefit of the doubt");
    // The typical fuel is rebuilt from the ledger when the store is opened again.
    mirrored(&store);
}

fn an_exchange_records_reports_in_order_refuses_some_alone_and_assigns_after(kind: Kind) {
    let store = open_store(kind);
    store
        .create_uploaded(&batch(3, 1), 0)
        .wait()
        .expect("batch");
    let hosts = hosts(&store, 2);
    let (host, other) = (hosts[0].host_id, hosts[1].host_id);
    let first = store
        .exchange(host, Vec::new(), Want::units(2), 0)
        .wait()
        .expect("exchange");
    assert_eq!(first.reports, Vec::new());
    assert_eq!(first.assignments.len(), 2);
    let foreign = store
        .assign(other, 0)
        .wait()
        .expect("assign")
        .expect("work");
    // Its two replicas, someone else's, and one that does not exist: the refusals do not stop
    // the others, and the cores they free are filled again in the same operation.
    let reports = vec![
        (first.assignments[0].replica_id, success(b"a")),
        (foreign.replica_id, success(b"b")),
        (999, success(b"c")),
        (first.assignments[1].replica_id, success(b"d")),
    ];
    let second = store
        .exchange(host, reports, Want::units(4), 1)
        .wait()
        .expect("exchange");
    assert_eq!(
        second.reports,
        vec![
            Ok(ReportEffect::Validated {
                unit_id: first.assignments[0].unit_id
            }),
            Err(ReportRefusal::NotYourReplica),
            Err(ReportRefusal::UnknownReplica),
            Ok(ReportEffect::Validated {
                unit_id: first.assignments[1].unit_id
            }),
        ]
    );
    assert!(
        second.assignments.is_empty(),
        "the third unit is the other host's"
    );
    let line = store.hosts(2).wait().expect("hosts")[0].clone();
    assert_eq!((line.valid, line.refused_reports), (2, 2));
    mirrored(&store);
}

mod mirror {
    //! Property: whatever sequence of operations the coordinator makes, the live work held in
    //! memory equals what loading it from the database gives, so a restart (which loads it)
    //! continues exactly where the running coordinator was.

    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Register {
            host: u8,
            volunteer: u8,
            cores: u32,
        },
        Batch {
            units: usize,
            quorum: u32,
            extra: u32,
            adaptive: bool,
        },
        Assign {
            host: u8,
        },
        Report {
            host: u8,
            pick: usize,
            kind: u8,
        },
        Advance {
            ms: u64,
        },
        Expire,
        Release {
            host: u8,
            keep: u8,
        },
        Retire {
            pick: usize,
        },
        Exchange {
            host: u8,
            kind: u8,
            want: u32,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..5u8, 0..3u8, 1..4u32).prop_map(|(host, volunteer, cores)| Op::Register {
                host,
                volunteer,
                cores
            }),
            (1..4usize, 1..4u32, 0..2u32, any::<bool>()).prop_map(
                |(units, quorum, extra, adaptive)| Op::Batch {
                    units,
                    quorum,
                    extra,
                    adaptive
                }
            ),
            (0..5u8).prop_map(|host| Op::Assign { host }),
            (0..5u8).prop_map(|host| Op::Assign { host }),
            (0..5u8, 0..8usize, 0..5u8).prop_map(|(host, pick, kind)| Op::Report {
                host,
                pick,
                kind
            }),
            (0..5u8, 0..8usize, 0..5u8).prop_map(|(host, pick, kind)| Op::Report {
                host,
                pick,
                kind
            }),
            (0..1_500u64).prop_map(|ms| Op::Advance { ms }),
            Just(Op::Expire),
            (0..5u8, 0..255u8).prop_map(|(host, keep)| Op::Release { host, keep }),
            (0..4usize).prop_map(|pick| Op::Retire { pick }),
            (0..5u8, 0..5u8, 0..4u32).prop_map(|(host, kind, want)| Op::Exchange {
                host,
                kind,
                want
            }),
        ]
    }

    fn outcome(unit_id: u64, kind: u8) -> Outcome {
        match kind {
            // Mostly the true result, sometimes a wrong one or an abort.
            0..=2 => success(&unit_id.to_le_bytes()),
            3 => success(b"wrong"),
            _ => Outcome::Aborted(AbortReason::Cancelled),
        }
    }

    fn run(kind: Kind, ops: Vec<Op>) {
        let store = open_store(kind);
        let mut now = 0u64;
        let mut host_ids: std::collections::BTreeMap<u8, u64> = Default::default();
        let mut held: std::collections::BTreeMap<u8, Vec<(u64, u64)>> = Default::default();
        let mut batches = Vec::new();
        for op in ops {
            match op {
                Op::Register {
                    host,
                    volunteer,
                    cores,
                } => {
                    // A volunteer's machines attach with its account key (an account is
                    // created on first use), so a volunteer may have several hosts.
                    let name = format!("v{volunteer}");
                    let account_key = format!("key-{name}");
                    match store
                        .create_account(&name, None, &account_key, None, None, now)
                        .wait()
                    {
                        Ok(_) | Err(StoreError::Taken(_)) => {}
                        Err(other) => panic!("account {name}: {other:?}"),
                    }
                    let record = store
                        .attach_host(&key(host + 1), &account_key, None, cores, now)
                        .wait()
                        .expect("attach");
                    host_ids.insert(host, record.host_id);
                }
                Op::Batch {
                    units,
                    quorum,
                    extra,
                    adaptive,
                } => {
                    let mut new = batch(units, quorum);
                    if adaptive {
                        // Trust after one checked result, half the units spot-checked.
                        new.policy.adaptive = Some(herd_lifecycle::Adaptive {
                            trust_after: 1,
                            spot_check_ppm: 500_000,
                        });
                    }
                    new.policy.initial_replicas = quorum + extra;
                    new.policy.replica_deadline_ms = 1_000;
                    // Every other batch takes one replica of a unit per network (the exchanges
                    // come from two).
                    new.policy.distinct_networks = batches.len() % 2 == 1;
                    // Every third needs a host with a valid result behind it in each quorum.
                    new.policy.seasoned_after = (batches.len() % 3 == 2).then_some(1);
                    for unit in &mut new.units {
                        unit.name = format!("{}-{}", batches.len(), unit.name);
                    }
                    batches.push(store.create_uploaded(&new, now).wait().expect("batch"));
                }
                Op::Assign { host } => {
                    let Some(host_id) = host_ids.get(&host) else {
                        continue;
                    };
                    if let Some(assignment) = store.assign(*host_id, now).wait().expect("assign") {
                        held.entry(host)
                            .or_default()
                            .push((assignment.replica_id, assignment.unit_id));
                        // A new replica never takes a host past its cores.
                        let line = store
                            .hosts(now)
                            .wait()
                            .expect("hosts")
                            .into_iter()
                            .find(|line| line.id == *host_id)
                            .expect("host line");
                        assert!(line.in_progress <= u64::from(line.cores), "{line:?}");
                    }
                }
                Op::Report { host, pick, kind } => {
                    let Some(host_id) = host_ids.get(&host) else {
                        continue;
                    };
                    let Some(&(replica_id, unit_id)) =
                        held.get(&host).and_then(|h| h.get(pick % h.len().max(1)))
                    else {
                        continue;
                    };
                    match store
                        .record_report(*host_id, replica_id, &outcome(unit_id, kind), now)
                        .wait()
                    {
                        Ok(_) | Err(StoreError::UnknownReplica(_)) => {}
                        // A host re-registered under another key index may not own it.
                        Err(StoreError::NotYourReplica { .. }) => {}
                        Err(other) => panic!("report: {other}"),
                    }
                }
                Op::Advance { ms } => now += ms,
                Op::Expire => {
                    store.expire_deadlines(now).wait().expect("expire");
                }
                Op::Release { host, keep } => {
                    let Some(host_id) = host_ids.get(&host) else {
                        continue;
                    };
                    let kept: Vec<u64> = held
                        .get(&host)
                        .map(|h| {
                            h.iter()
                                .enumerate()
                                .filter(|(i, _)| keep & (1 << (i % 8)) != 0)
                                .map(|(_, (replica, _))| *replica)
                                .collect()
                        })
                        .unwrap_or_default();
                    store
                        .release_lost_replicas(*host_id, &kept, now)
                        .wait()
                        .expect("release");
                }
                Op::Exchange { host, kind, want } => {
                    let Some(host_id) = host_ids.get(&host) else {
                        continue;
                    };
                    // Reports everything it holds, then asks for more.
                    let reports: Vec<(u64, Outcome)> = held
                        .get(&host)
                        .map(|h| {
                            h.iter()
                                .map(|(replica, unit)| (*replica, outcome(*unit, kind)))
                                .collect()
                        })
                        .unwrap_or_default();
                    let exchanged = store
                        .exchange(*host_id, reports, want_with_speed(want), now)
                        .wait()
                        .expect("exchange");
                    assert!(exchanged.assignments.len() <= want as usize);
                    for assignment in exchanged.assignments {
                        held.entry(host)
                            .or_default()
                            .push((assignment.replica_id, assignment.unit_id));
                    }
                }
                Op::Retire { pick } => {
                    if !batches.is_empty() {
                        let batch_id = batches.remove(pick % batches.len());
                        store.retire_batch(batch_id).wait().expect("retire");
                    }
                }
            }
            if let Some(difference) = store.live_mirrors_database().wait().expect("mirror") {
                panic!("live work differs from the database: {difference}");
            }
            // Grants and revocations, in any order, keep every balance its ledger's sum.
            ledger::every_balance_is_its_ledger_sum(&store);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn live_work_always_mirrors_the_database_on_sqlite(ops in proptest::collection::vec(op(), 1..60)) {
            run(Kind::Sqlite, ops);
        }
    }

    proptest! {
        // Each case is a fresh database on the server, so fewer of them.
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn live_work_always_mirrors_the_database_on_postgres(ops in proptest::collection::vec(op(), 1..60)) {
            run(Kind::Postgres, ops);
        }
    }
}

fn researchers_see_only_their_own_batches_and_blobs_and_can_cancel(kind: Kind) {
    let store = open_store(kind);
    let other = store
        .add_researcher("grace", "other-hash", 0)
        .wait()
        .expect("add");
    assert!(matches!(
        store.add_researcher("grace", "third-hash", 0).wait(),
        Err(StoreError::Invalid(message)) if message.contains("already")
    ));
    assert!(matches!(
        store.add_researcher("no spaces", "h", 0).wait(),
        Err(StoreError::Invalid(message)) if message.contains("letters")
    ));
    assert_eq!(
        store
            .researcher_by_token("other-hash")
            .wait()
            .expect("lookup"),
        Some(other.clone())
    );
    assert_eq!(
        store.researcher_by_token("nobody").wait().expect("lookup"),
        None
    );
    let mine = store
        .create_uploaded(&batch(3, 1), 0)
        .wait()
        .expect("batch");
    let mut theirs_new = batch(2, 1);
    theirs_new.researcher_id = other.id;
    theirs_new.module = ContentHash::of(b"their module");
    let theirs = store.create_uploaded(&theirs_new, 1).wait().expect("batch");
    let ids = |researcher, after, limit| -> Vec<u64> {
        store
            .list_batches(researcher, after, limit)
            .wait()
            .expect("list")
            .iter()
            .map(|b| b.id)
            .collect()
    };
    assert_eq!(ids(1, 0, 10), vec![mine]);
    assert_eq!(ids(other.id, 0, 10), vec![theirs]);
    // Pages: after the last id seen.
    let more = store
        .create_uploaded(&batch(1, 1), 2)
        .wait()
        .expect("batch");
    assert_eq!(ids(1, 0, 1), vec![mine]);
    assert_eq!(ids(1, mine, 1), vec![more]);
    assert_eq!(ids(1, more, 1), Vec::<u64>::new());
    assert_eq!(
        store.batch_owner(theirs).wait().expect("owner"),
        Some(other.id)
    );
    assert_eq!(store.batch_owner(999).wait().expect("owner"), None);
    let visible = |researcher, what: &[u8]| {
        store
            .blob_visible(researcher, &ContentHash::of(what))
            .wait()
            .expect("visible")
    };
    assert!(visible(1, b"module"));
    assert!(!visible(1, b"their module"));
    assert!(visible(other.id, b"their module"));
    // An output is visible to the owner of the batch whose replica reported it.
    let host = hosts(&store, 1)[0].host_id;
    let r = store.assign(host, 3).wait().expect("assign").expect("work");
    assert_eq!(r.batch_id, mine);
    store
        .record_report(host, r.replica_id, &success(b"my output"), 4)
        .wait()
        .expect("report");
    assert!(visible(1, b"my output"));
    assert!(!visible(other.id, b"my output"));
    // Cancelling: the open units fail, no more work is sent for them.
    assert_eq!(store.cancel_batch(mine).wait().expect("cancel"), Some(2));
    let status = store
        .batch_status(mine)
        .wait()
        .expect("status")
        .expect("batch");
    assert_eq!((status.validated, status.failed, status.open), (1, 2, 0));
    assert!(
        status
            .units
            .iter()
            .filter(|u| u.state == "failed")
            .all(|u| u.failure.as_deref() == Some("cancelled by the researcher"))
    );
    assert_eq!(store.cancel_batch(999).wait().expect("cancel"), None);
    mirrored(&store);
}

fn a_researcher_ensured_again_keeps_its_id_and_takes_the_new_token(kind: Kind) {
    let store = Subject::new(kind);
    let first = store
        .ensure_researcher("admin", "h1", 0)
        .wait()
        .expect("admin");
    // The token file changed: same researcher, new token.
    let again = store
        .ensure_researcher("admin", "h2", 1)
        .wait()
        .expect("admin");
    assert_eq!(first, again);
    assert_eq!(
        store.researcher_by_token("h1").wait().expect("lookup"),
        None
    );
    assert_eq!(
        store.researcher_by_token("h2").wait().expect("lookup"),
        Some(first)
    );
}

fn the_stats_dump_lists_volunteers_teams_and_hosts_by_id_with_their_credit(kind: Kind) {
    let store = open_store(kind);
    store
        .create_uploaded(&batch(2, 2), 0)
        .wait()
        .expect("batch");
    // hosts() registers volunteer-1 and volunteer-2 in team "team".
    let hosts = hosts(&store, 2);
    let loner = store
        .register_host(&key(9), "loner", None, 1, 5)
        .wait()
        .expect("register");
    for host in &hosts {
        let r = store
            .assign(host.host_id, 10)
            .wait()
            .expect("assign")
            .expect("work");
        store
            .record_report(host.host_id, r.replica_id, &success(b"same"), 20)
            .wait()
            .expect("report");
    }
    let dump = store.stats_dump(30).wait().expect("dump");
    let names: Vec<&str> = dump.volunteers.iter().map(|v| v.name.as_str()).collect();
    // The researcher's account computed nothing: not a volunteer, not listed.
    assert_eq!(names, vec!["volunteer-1", "volunteer-2", "loner"]);
    // success() burns 3e9 fuel: 3 credits each.
    assert_eq!(dump.volunteers[0].credit, 3.0);
    assert!(dump.volunteers[0].recent_average_credit > 0.0);
    assert_eq!(dump.volunteers[2].credit, 0.0);
    assert_eq!(dump.volunteers[2].team_id, None);
    assert_eq!(dump.teams.len(), 1);
    let team = &dump.teams[0];
    assert_eq!(
        (team.name.as_str(), team.members, team.credit),
        ("team", 2, 6.0)
    );
    assert_eq!(team.founder_name, "volunteer-1");
    assert_eq!(dump.volunteers[0].team_id, Some(team.id));
    assert_eq!(dump.hosts.len(), 3);
    assert_eq!(dump.hosts[2].id, loner.host_id);
    assert_eq!(dump.hosts[0].credit, 3.0);
    // The project at a glance: one unit validated at 20 ms, within a 10 s window.
    let summary = store
        .project_summary(1_000, 60_000, 10_000)
        .wait()
        .expect("summary");
    assert_eq!((summary.volunteers, summary.hosts), (3, 3));
    assert_eq!((summary.volunteers_active, summary.hosts_active), (3, 3));
    assert_eq!((summary.units_validated, summary.queue_depth), (1, 1));
    assert_eq!(summary.window_secs, 10);
    assert_eq!(summary.units_per_second, 0.1);
    assert_eq!(summary.fuel_per_second, 6e9 / 10.0);
    assert_eq!(summary.total_credit, 6.0);
    assert_eq!(summary.batches_open, 1);
    // A minute later the window holds nothing, and the hosts seen at 10 ms are not active
    // within a 1 s activity window.
    let later = store
        .project_summary(120_000, 1_000, 10_000)
        .wait()
        .expect("summary");
    assert_eq!((later.units_per_second, later.hosts_active), (0.0, 0));
    // The chart's series: the unit settled at 20 ms falls in the first 10 ms bucket of [10, 40).
    let series = store.throughput(10, 40, 10).wait().expect("throughput");
    let units: Vec<u64> = series.iter().map(|b| b.units).collect();
    let starts: Vec<u64> = series.iter().map(|b| b.start_ms).collect();
    assert_eq!((starts, units), (vec![10, 20, 30], vec![0, 1, 0]));
    assert_eq!(series[1].fuel, 6_000_000_000);
}

fn credit_goes_to_the_volunteer_a_replica_was_assigned_under_whatever_its_host_becomes(kind: Kind) {
    let store = open_store(kind);
    store
        .create_uploaded(&batch(1, 2), 0)
        .wait()
        .expect("batch");
    let ada = store
        .register_host(&key(1), "ada", None, 1, 0)
        .wait()
        .expect("register");
    let bob = store
        .register_host(&key(2), "bob", None, 1, 0)
        .wait()
        .expect("register");
    let a = store
        .assign(ada.host_id, 1)
        .wait()
        .expect("assign")
        .expect("work");
    let b = store
        .assign(bob.host_id, 1)
        .wait()
        .expect("assign")
        .expect("work");
    // Ada's host, by its own proven hello, now computes for mallory.
    let moved = store
        .register_host(&key(1), "mallory", None, 1, 2)
        .wait()
        .expect("register");
    assert_eq!(moved.host_id, ada.host_id);
    assert_ne!(moved.volunteer_id, ada.volunteer_id);
    for (host, replica) in [(ada.host_id, a.replica_id), (bob.host_id, b.replica_id)] {
        store
            .record_report(host, replica, &success(b"out"), 3)
            .wait()
            .expect("report");
    }
    let credit = store.credit_totals(10).wait().expect("credit");
    let of = |name: &str| {
        credit
            .volunteers
            .iter()
            .find(|v| v.name == name)
            .map(|v| (v.credit, v.replicas))
    };
    assert_eq!(of("ada"), Some((3.0, 1)));
    assert_eq!(of("bob"), Some((3.0, 1)));
    assert_eq!(of("mallory"), Some((0.0, 0)));
    mirrored(&store);
}

fn a_host_may_fetch_only_the_module_and_inputs_of_its_replicas_in_progress(kind: Kind) {
    let store = open_store(kind);
    let mut first = batch(2, 2);
    // A third replica at once, so one is still in progress after the unit closes.
    first.policy.initial_replicas = 3;
    first.units.truncate(1);
    store.create_uploaded(&first, 0).wait().expect("batch");
    let mut other = batch(1, 1);
    other.module = ContentHash::of(b"another module");
    other.units[0].input = ContentHash::of(b"another input");
    // Served after the first, so every host below gets a replica of the first.
    other.priority = -1;
    store.create_uploaded(&other, 0).wait().expect("batch");
    let hosts = hosts(&store, 3);
    let module = ContentHash::of(b"module");
    let input = first.units[0].input;
    let needs =
        |host: u64, hash: &ContentHash| store.host_needs_blob(host, hash).wait().expect("needs");
    // Before any assignment, nothing.
    assert!(!needs(hosts[0].host_id, &module));
    let replicas: Vec<Assignment> = hosts
        .iter()
        .map(|h| {
            store
                .assign(h.host_id, 1)
                .wait()
                .expect("assign")
                .expect("work")
        })
        .collect();
    assert!(replicas.iter().all(|r| r.unit_id == replicas[0].unit_id));
    for host in &hosts {
        assert!(needs(host.host_id, &module));
        assert!(needs(host.host_id, &input));
        // Another batch's module and input, an output, anything else: no.
        assert!(!needs(host.host_id, &other.module));
        assert!(!needs(host.host_id, &other.units[0].input));
        assert!(!needs(host.host_id, &ContentHash::of(b"out")));
    }
    assert!(!needs(999, &module), "an unknown host needs nothing");
    // Two agree: the unit closes. Their hosts need nothing more; the third, still computing a
    // replica of a closed unit (looked up in the database), still needs what it runs.
    for i in 0..2 {
        store
            .record_report(
                hosts[i].host_id,
                replicas[i].replica_id,
                &success(b"out"),
                2,
            )
            .wait()
            .expect("report");
    }
    assert!(!needs(hosts[0].host_id, &module));
    assert!(!needs(hosts[1].host_id, &input));
    assert!(needs(hosts[2].host_id, &module));
    assert!(needs(hosts[2].host_id, &input));
    assert!(!needs(hosts[2].host_id, &other.module));
    // Once it has reported, it needs nothing either.
    store
        .record_report(
            hosts[2].host_id,
            replicas[2].replica_id,
            &success(b"out"),
            3,
        )
        .wait()
        .expect("report");
    assert!(!needs(hosts[2].host_id, &input));
    mirrored(&store);
}

fn a_batch_may_use_only_blobs_its_researcher_uploaded_or_already_uses(kind: Kind) {
    let store = open_store(kind);
    let other = store
        .add_researcher("other", "other-token-hash", 0)
        .wait()
        .expect("researcher");
    // Researcher 1's batch, its blobs uploaded.
    let hers = batch(2, 1);
    store.create_uploaded(&hers, 0).wait().expect("batch");
    // The other researcher names her module and input by hash without holding them: refused as
    // if missing, and nothing is created.
    let mut theirs = batch(1, 1);
    theirs.researcher_id = other.id;
    assert!(matches!(
        store.create_batch(&theirs, 1).wait(),
        Err(StoreError::BlobMissing(hash)) if hash == hers.module
    ));
    store
        .record_uploads(other.id, vec![hers.module])
        .wait()
        .expect("upload");
    assert!(matches!(
        store.create_batch(&theirs, 1).wait(),
        Err(StoreError::BlobMissing(hash)) if hash == hers.units[0].input
    ));
    assert!(
        !store
            .blob_visible(other.id, &hers.units[0].input)
            .wait()
            .expect("visible")
    );
    assert_eq!(
        store
            .list_batches(other.id, 0, 10)
            .wait()
            .expect("list")
            .len(),
        0
    );
    // Once they upload it themselves (they have the bytes), it is theirs too.
    store
        .record_uploads(other.id, vec![hers.units[0].input])
        .wait()
        .expect("upload");
    assert!(
        store
            .blob_visible(other.id, &hers.units[0].input)
            .wait()
            .expect("visible")
    );
    store.create_batch(&theirs, 2).wait().expect("batch");
    mirrored(&store);
}

on_both_backends!(
    agreement_validates_the_unit_and_credits_each_agreeing_volunteer_once,
    a_disagreement_leads_to_a_third_replica_that_decides,
    one_volunteer_never_gets_two_replicas_of_a_unit_even_from_two_hosts,
    a_host_holds_no_more_replicas_than_its_cores,
    a_new_host_earns_its_cores_and_one_that_lets_replicas_time_out_gets_less_work,
    reports_for_unknown_or_foreign_replicas_are_refused,
    a_result_no_honest_run_makes_is_refused_and_counted_against_its_host,
    expired_replicas_are_replaced_and_a_late_report_is_still_checked,
    aborts_never_count_and_too_many_fail_the_unit,
    everything_survives_reopening_the_database,
    bad_batches_and_names_are_refused_by_name,
    a_volunteer_whose_replica_aborted_may_take_the_unit_again_once,
    credit_carries_a_recent_average_and_hosts_keep_their_record,
    recent_average_credit_at_real_times_is_the_lifecycles,
    an_operation_that_fails_midway_is_undone_alone,
    batches_share_workers_fairly_and_priority_goes_first,
    retiring_a_batch_purges_its_rows_keeps_credit_and_names_only_unshared_blobs,
    ids_are_never_reused_after_the_newest_batch_is_retired_and_its_grants_stay_apart,
    a_trusted_host_validates_alone_and_spot_checks_still_come,
    an_invalid_result_resets_trust_and_reopens_what_the_host_validated_alone,
    a_host_too_slow_for_the_deadline_gets_no_units_of_a_batch_it_cannot_finish,
    an_exchange_records_reports_in_order_refuses_some_alone_and_assigns_after,
    researchers_see_only_their_own_batches_and_blobs_and_can_cancel,
    a_researcher_ensured_again_keeps_its_id_and_takes_the_new_token,
    the_stats_dump_lists_volunteers_teams_and_hosts_by_id_with_their_credit,
    credit_goes_to_the_volunteer_a_replica_was_assigned_under_whatever_its_host_becomes,
    a_host_may_fetch_only_the_module_and_inputs_of_its_replicas_in_progress,
    a_batch_may_use_only_blobs_its_researcher_uploaded_or_already_uses,
);

#[test]
fn a_sqlite_project_with_history_migrates_to_postgresql_with_every_total_equal() {
    let store = open_store(Kind::Sqlite);
    // History: revocations, reopened units and trust (adaptive replication)...
    invalid_result_history(&store);
    // ...and a batch validated, then retired (its rows purged, its grants kept).
    let retired = store
        .create_uploaded(&batch(2, 1), 20)
        .wait()
        .expect("batch");
    let host = hosts(&store, 3)[0].host_id;
    for _ in 0..2 {
        let a = store
            .assign(host, 21)
            .wait()
            .expect("assign")
            .expect("work");
        store
            .record_report(host, a.replica_id, &success(b"r"), 22)
            .wait()
            .expect("report");
    }
    store.retire_batch(retired).wait().expect("retire");
    // Accounts: one with a key (its machine attached with it) and an invitation spent.
    store
        .create_invitation("code", 23)
        .wait()
        .expect("invitation");
    store
        .create_account("grace", None, "grace-key", None, Some("code"), 23)
        .wait()
        .expect("account");
    store
        .attach_host(&key(40), "grace-key", None, 1, 24)
        .wait()
        .expect("attach");
    // Credit moved: a grant, and a transfer of part of it.
    store
        .grant_credit("grace", 5_000_000_000, Some("allowance"), 25)
        .wait()
        .expect("grant");
    let grace = store.account("grace").wait().expect("a").expect("grace").id;
    store
        .send_credit(grace, "tester", 2_000_000_000, None, 26)
        .wait()
        .expect("send");
    let now = 30;
    let before = (
        store.credit_totals(now).wait().expect("credit"),
        store.hosts(now).wait().expect("hosts"),
        store.stats_dump(now).wait().expect("dump"),
        store
            .project_summary(now, 1000, 1000)
            .wait()
            .expect("summary"),
        store.statement("grace", 10).wait().expect("statement"),
    );
    assert!(
        before.0.volunteers.iter().any(|v| v.fuel > 0),
        "some credit to move"
    );
    let path = store.sqlite_path().expect("a file");
    let mut store = store;
    store.close();
    let url = herd_pgtest::fresh_database().expect("a database");
    let blobs = [b"module".to_vec(), b"an input".to_vec()];
    let migrated =
        migrate_sqlite_to_postgres(&path, &url, blobs.iter().cloned().map(Ok)).expect("migrate");
    assert_eq!((migrated.blobs, migrated.blob_bytes), (2, 14));
    assert!(migrated.revoked_fuel > 0, "{migrated:?}");
    assert!(
        migrated.tables.iter().all(|(_, rows)| *rows > 0),
        "{migrated:?}"
    );
    let moved = PgStore::connect(&url).expect("connect");
    assert_eq!(
        moved
            .shared_blob(&ContentHash::of(b"an input"))
            .wait()
            .expect("read"),
        Some(b"an input".to_vec()),
        "the blobs came too"
    );
    let after = (
        moved.credit_totals(now).wait().expect("credit"),
        moved.hosts(now).wait().expect("hosts"),
        moved.stats_dump(now).wait().expect("dump"),
        moved
            .project_summary(now, 1000, 1000)
            .wait()
            .expect("summary"),
        moved.statement("grace", 10).wait().expect("statement"),
    );
    assert_eq!(after, before);
    // A second migration into the same database is refused by name; nothing changes.
    let again = migrate_sqlite_to_postgres(&path, &url, []).expect_err("refused");
    assert!(
        again.to_string().contains("already holds a project"),
        "{again}"
    );
    // Ids go on above every id used before, the retired batch's and the ledger's included.
    let next = moved
        .create_uploaded(&batch(1, 1), now)
        .wait()
        .expect("a new batch");
    assert!(next > retired);
    let assignment = moved
        .assign(host, now)
        .wait()
        .expect("assign")
        .expect("work");
    let old = rusqlite::Connection::open(&path).expect("the old file");
    let highest_used: i64 = old
        .query_row(
            "SELECT MAX((SELECT seq FROM sqlite_sequence WHERE name = 'replicas'),
                        (SELECT MAX(replica_id) FROM credit))",
            [],
            |row| row.get(0),
        )
        .expect("highest replica id");
    assert!(highest_used > 0);
    assert!(assignment.replica_id > highest_used as u64);
    assert_eq!(moved.live_mirrors_database().wait().expect("mirror"), None);
    // The account's key still attaches its machine, and its name is still taken in any case.
    let grace = moved
        .attach_host(&key(40), "grace-key", None, 1, 40)
        .wait()
        .expect("attach after the move");
    assert_eq!(grace.volunteer, "grace");
    assert!(matches!(
        moved
            .create_account("GRACE", None, "k", None, None, 40)
            .wait(),
        Err(StoreError::Taken(_))
    ));
}

mod account_rules;
mod ledger;
