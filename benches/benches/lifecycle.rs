//! Full-lifecycle throughput in validated units per second at quorum 2: create, assign, report,
//! validate, credit.
//! - `lifecycle/core`: the pure lifecycle alone (`evaluate` and `may_assign_to` on in-memory
//!   replicas), no storage;
//! - `lifecycle/sqlite`: the real `SqliteStore` on a file (WAL, `synchronous=FULL`), driven by
//!   64 threads standing in for the coordinator's request handlers, each assigning a replica to
//!   a host and reporting it, until every unit of a batch is validated;
//! - `lifecycle/postgres`: the same on the real `PgStore`, on a throw-away PostgreSQL server
//!   started for the run (`fsync=on`, `synchronous_commit=on`), sharing the machine with it.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herd_lifecycle::{Policy, Replica, ReplicaState, Verdict, evaluate, may_assign_to};
use herd_protocol::{ContentHash, Outcome, PublicKey, RunResult, Status};
use herd_store::{NewBatch, NewUnit, PgStore, SqliteStore, Store};

const UNITS: usize = 2_000;
const HOSTS: u8 = 64;
const THREADS: usize = 64;

fn result() -> RunResult {
    RunResult {
        status: Status::Success,
        fuel: 1_000,
        output_len: 1,
        output_hash: ContentHash::of(b"x"),
    }
}

fn core(c: &mut Criterion) {
    let policy = Policy::with_quorum(2);
    let mut group = c.benchmark_group("lifecycle");
    group.throughput(Throughput::Elements(UNITS as u64));
    group.bench_function("core", |b| {
        b.iter(|| {
            let mut validated = 0;
            for unit in 0..UNITS as u64 {
                let mut replicas: Vec<Replica> = Vec::new();
                for volunteer in 1..=2u64 {
                    if matches!(evaluate(&policy, &replicas), Verdict::Open { wanted } if wanted > 0)
                        && may_assign_to(&replicas, volunteer)
                    {
                        replicas.push(Replica {
                            id: unit * 2 + volunteer,
                            volunteer_id: volunteer,
                            network: volunteer,
                            seasoned: false,
                            state: ReplicaState::InProgress { deadline_ms: 1 },
                        });
                    }
                }
                for i in 0..replicas.len() {
                    replicas[i].state = ReplicaState::Reported(result());
                    if let Verdict::Validated { .. } = evaluate(&policy, &replicas) {
                        validated += 1;
                    }
                }
            }
            assert_eq!(validated, UNITS);
        })
    });
    group.finish();
}

fn batch() -> NewBatch {
    NewBatch {
        researcher_id: 1,
        module: ContentHash::of(b"module"),
        policy: Policy::with_quorum(2),
        fuel_limit: 1_000_000,
        memory_limit_bytes: 1 << 20,
        output_limit_bytes: 1 << 10,
        priority: 0,
        pricing: herd_store::Pricing::default(),
        units: (0..UNITS)
            .map(|i| NewUnit {
                name: format!("u{i}"),
                input: ContentHash::of(&i.to_le_bytes()),
                seed: i as u64,
            })
            .collect(),
    }
}

/// Runs one batch to completion; returns the time it took.
fn run_batch(store: &dyn Store, hosts: &[u64]) -> Duration {
    let batch = batch();
    let blobs = std::iter::once(batch.module)
        .chain(batch.units.iter().map(|u| u.input))
        .collect();
    store
        .record_uploads(batch.researcher_id, blobs)
        .wait()
        .expect("uploads");
    let batch_id = store.create_batch(&batch, 0).wait().expect("batch");
    let started = Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            scope.spawn(move || {
                let mine: Vec<u64> = hosts
                    .iter()
                    .copied()
                    .skip(thread)
                    .step_by(THREADS)
                    .collect();
                let mut idle_rounds = 0;
                while idle_rounds < 3 {
                    let mut worked = false;
                    for &host in &mine {
                        if let Some(a) = store.assign(host, 1).wait().expect("assign") {
                            store
                                .record_report(host, a.replica_id, &Outcome::Countable(result()), 2)
                                .wait()
                                .expect("report");
                            worked = true;
                        }
                    }
                    idle_rounds = if worked { 0 } else { idle_rounds + 1 };
                }
            });
        }
    });
    let status = store
        .batch_status(batch_id)
        .wait()
        .expect("status")
        .expect("batch");
    assert_eq!(status.validated, UNITS as u64);
    started.elapsed()
}

/// Measures `store`: a researcher, 64 hosts, then batches run to completion.
fn measure(c: &mut Criterion, name: &str, store: &dyn Store) {
    store
        .ensure_researcher("bench", "token-hash", 0)
        .wait()
        .expect("researcher");
    let hosts: Vec<u64> = (1..=HOSTS)
        .map(|i| {
            store
                .register_host(&PublicKey([i; 32]), &format!("v{i}"), None, 4, 0)
                .wait()
                .expect("register")
                .host_id
        })
        .collect();
    let mut group = c.benchmark_group("lifecycle");
    group.throughput(Throughput::Elements(UNITS as u64));
    group.sample_size(10);
    group.bench_function(name, |b| {
        b.iter_custom(|iterations| (0..iterations).map(|_| run_batch(store, &hosts)).sum())
    });
    group.finish();
}

fn sqlite(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("bench.sqlite")).expect("open");
    measure(c, "sqlite", &store);
}

fn postgres(c: &mut Criterion) {
    let server = herd_pgtest::Server::start(herd_pgtest::Durability::Full).expect("PostgreSQL");
    server.create_database("bench").expect("database");
    let store = PgStore::connect(&server.url("bench")).expect("connect");
    measure(c, "postgres", &store);
}

criterion_group!(benches, core, sqlite, postgres);
criterion_main!(benches);
