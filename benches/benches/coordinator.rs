//! The real coordinator over QUIC on 127.0.0.1: validated units per second at quorum 2 with many
//! simulated workers, each its own QUIC connection and host key, keeping one request in flight
//! per core (no sandbox: this measures the coordinator, not the units). Also prints the
//! coordinator's CPU time per validated unit and its resident memory per connected worker.
//!
//! The coordinator runs in its own process: this benchmark binary re-executes itself with
//! `HERD_BENCH_COORDINATOR_DIR` set, and that child runs `herd_coordinator::run` exactly as the
//! `herd-coordinator` binary does, with its SQLite database and blob store in a temporary
//! directory, or (`coordinator/quic_32_workers_batch_4_postgres`) on a throw-away PostgreSQL
//! server started for the run (`fsync=on`). The simulated workers, and PostgreSQL, share this
//! machine's two cores with it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use herd_net::JoinString;
use herd_protocol::{
    ClientMessage, ContentHash, FinishedReplica, Hello, Outcome, PROTOCOL_VERSION, Report,
    RunResult, ServerMessage, SignedAssignment, SigningKey, Status,
};

/// Units per batch: enough that a run lasts seconds, so polling its status every
/// `POLL` (which the coordinator answers with the whole batch's units) costs little and shifts
/// the end of a run by at most one poll.
const UNITS: usize = 10_000;
const POLL: Duration = Duration::from_millis(100);
const WORKERS: usize = 32;
/// Requests each simulated worker keeps in flight at once (its cores).
const CORES: usize = 4;

/// Set in the child process: run the coordinator on this data directory.
const CHILD_ENV: &str = "HERD_BENCH_COORDINATOR_DIR";
/// Set in the child process with a PostgreSQL URL: the coordinator's database.
const DATABASE_ENV: &str = "HERD_BENCH_DATABASE";
/// Units per batch on PostgreSQL (slower, so fewer, for a run of seconds too).
const UNITS_POSTGRES: usize = 2_000;

/// The coordinator under test (a child process), and how to reach it.
struct Running {
    join: JoinString,
    http: String,
    token: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child's side: runs the coordinator until killed.
fn run_coordinator(dir: &str) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let config = herd_coordinator::Config {
        data_dir: dir.into(),
        database: std::env::var(DATABASE_ENV).ok(),
        quic: "127.0.0.1:0".parse().expect("addr"),
        http: "127.0.0.1:0".parse().expect("addr"),
        // The simulated workers give names, not account keys.
        accounts: herd_coordinator::AccountRules {
            anonymous: true,
            ..Default::default()
        },
    };
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    runtime
        .block_on(herd_coordinator::run(config, shutdown))
        .expect("coordinator");
}

fn start(database: Option<&str>) -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut command = std::process::Command::new(std::env::current_exe().expect("this binary"));
    command
        .env(CHILD_ENV, dir.path())
        .stdout(std::process::Stdio::null());
    if let Some(url) = database {
        command.env(DATABASE_ENV, url);
    }
    let child = command.spawn().expect("start the coordinator process");
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).ok();
    let started = Instant::now();
    while read("http").is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "coordinator did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Running {
        join: read("join")
            .expect("join")
            .trim()
            .parse()
            .expect("join string"),
        http: read("http").expect("http").trim().to_string(),
        token: read("researcher.token").expect("token").trim().to_string(),
        child,
        _dir: dir,
    }
}

/// Uploads a trivial module and `units` inputs and creates a quorum-2 batch; returns its id.
fn create_batch(coordinator: &Running, units: usize) -> u64 {
    let agent = ureq::Agent::new_with_defaults();
    let auth = format!("Bearer {}", coordinator.token);
    let put = |bytes: &[u8]| {
        let hash = ContentHash::of(bytes);
        agent
            .put(&format!("{}/api/v1/blobs/{hash}", coordinator.http))
            .header("Authorization", &auth)
            .send(bytes)
            .expect("upload");
        hash
    };
    let module = put(&herd_sandbox::module_bytes(
        b"(module (memory (export \"memory\") 1) (func (export \"_start\")))",
    )
    .expect("module"));
    let units: Vec<serde_json::Value> = (0..units)
        .map(|i| {
            // The same inputs every round: after the first, uploads find them stored.
            let input = put(format!("{i}").as_bytes());
            serde_json::json!({ "name": format!("u{i}"), "input": input.to_hex() })
        })
        .collect();
    let mut response = agent
        .post(&format!("{}/api/v1/batches", coordinator.http))
        .header("Authorization", &auth)
        .send_json(serde_json::json!({ "module": module.to_hex(), "units": units, "quorum": 2 }))
        .expect("create batch");
    let created: serde_json::Value = response.body_mut().read_json().expect("json");
    created["id"].as_u64().expect("id")
}

fn validated(coordinator: &Running, batch: u64) -> u64 {
    let mut response = ureq::get(&format!("{}/api/v1/batches/{batch}", coordinator.http))
        .header("Authorization", &format!("Bearer {}", coordinator.token))
        .call()
        .expect("status");
    let status: serde_json::Value = response.body_mut().read_json().expect("json");
    status["validated"].as_u64().expect("validated")
}

/// A simulated worker: connects, says hello, then runs `CORES / batch` loops that each report
/// `batch` finished units and ask for `batch` more in one exchange, until told to stop. With
/// `batch` 1 it talks as the real worker does today (one exchange per core); with `batch` =
/// `CORES` as a BOINC client does (one scheduler request for the whole host).
async fn worker(join: JoinString, index: usize, batch: usize, stop: Arc<AtomicBool>) {
    let key = SigningKey::from_seed([index as u8 + 1; 32]);
    let connection = herd_net::connect(&join).await.expect("connect");
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        instrumentation_version: herd_sandbox::INSTRUMENTATION_VERSION,
        host_key: key.public_key(),
        account_key: None,
        volunteer: format!("sim-{index}"),
        team: None,
        cores: CORES as u32,
        held_replicas: Vec::new(),
    };
    let _: ServerMessage = herd_net::say_hello(&connection, &key, hello)
        .await
        .expect("hello");
    let loops: Vec<_> = (0..CORES / batch)
        .map(|_| tokio::spawn(exchanges(connection.clone(), batch, stop.clone())))
        .collect();
    for handle in loops {
        handle.await.expect("exchange loop");
    }
}

/// Reports what the last exchange assigned (as if computed at once) and asks for `batch` more.
async fn exchanges(connection: herd_net::Connection, batch: usize, stop: Arc<AtomicBool>) {
    let result = RunResult {
        status: Status::Success,
        fuel: 1_000,
        output_len: 0,
        output_hash: ContentHash::of(b""),
    };
    let mut assigned: Vec<SignedAssignment> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let reports = assigned
            .drain(..)
            .map(|signed| FinishedReplica {
                report: Report {
                    replica_id: signed.assignment.replica_id,
                    outcome: Outcome::Countable(result.clone()),
                },
                output: Vec::new(),
            })
            .collect();
        let answer: ServerMessage = herd_net::request(
            &connection,
            &ClientMessage::Exchange {
                reports,
                want: batch as u32,
                fuel_per_second: None,
            },
        )
        .await
        .expect("exchange");
        let ServerMessage::Exchanged { work, .. } = answer else {
            panic!("unexpected answer {answer:?}");
        };
        if work.is_empty() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assigned = work;
    }
}

/// PostgreSQL's count of commits and of rows inserted, updated and deleted in the database at
/// `url`, read with `psql` (after a pause: the server publishes its statistics at most once a
/// second).
fn database_work(url: &str) -> (u64, u64) {
    std::thread::sleep(Duration::from_millis(1500));
    let output = std::process::Command::new("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-F",
            " ",
            "-c",
            "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted FROM pg_stat_database \
             WHERE datname = current_database()",
            url,
        ])
        .output()
        .expect("psql");
    let text = String::from_utf8_lossy(&output.stdout);
    let mut numbers = text.split_whitespace().map(|n| n.parse().unwrap_or(0));
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0))
}

/// Waits until two coordinators hold eight shards each.
fn wait_for_shared_shards(url: &str) {
    let started = Instant::now();
    loop {
        let output = std::process::Command::new("psql")
            .args([
                "-X",
                "-A",
                "-t",
                "-c",
                "SELECT string_agg(n::text, ',' ORDER BY n) FROM \
                 (SELECT count(*) AS n FROM leases WHERE holder IS NOT NULL GROUP BY holder) h",
                url,
            ])
            .output()
            .expect("psql");
        if String::from_utf8_lossy(&output.stdout).trim() == "8,8" {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the coordinators did not share the shards out"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Units validated in every batch of the coordinator (its summary).
fn validated_everywhere(coordinator: &Running) -> u64 {
    let mut response = ureq::get(&format!("{}/api/v1/summary", coordinator.http))
        .call()
        .expect("summary");
    let summary: serde_json::Value = response.body_mut().read_json().expect("json");
    summary["units_validated"].as_u64().unwrap_or(0)
}

/// A field of `/proc/PID/status` in KiB (e.g. `VmRSS`).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// CPU time (user + system) the process has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which ends with the last ')'): utime and stime are the
    // 12th and 13th, in clock ticks (100 per second on Linux).
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Measures batches of `units` run by 32 simulated workers exchanging `batch` units at a time,
/// as `name`, spread over `coordinators` (of one project); prints the coordinators' CPU per
/// validated unit, all of them together.
fn measure(
    c: &mut Criterion,
    runtime: &tokio::runtime::Runtime,
    coordinators: &[&Running],
    name: &str,
    units: usize,
    batch: usize,
    database: Option<&str>,
) {
    let coordinator = coordinators[0];
    let cpu = || -> Duration { coordinators.iter().map(|c| cpu_time(c.child.id())).sum() };
    let database_before = database.map(database_work);
    let validated_before = database.map(|_| validated_everywhere(coordinator));
    let mut group = c.benchmark_group("coordinator");
    group.throughput(Throughput::Elements(units as u64));
    group.sample_size(10);
    let mut cpu_spent = Duration::ZERO;
    let mut units_timed = 0u64;
    group.bench_function(name, |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let batch_id = create_batch(coordinator, units);
                let stop = Arc::new(AtomicBool::new(false));
                let cpu_before = cpu();
                let started = Instant::now();
                let workers: Vec<_> = (0..WORKERS)
                    .map(|i| {
                        let join = coordinators[i % coordinators.len()].join.clone();
                        runtime.spawn(worker(join, i, batch, stop.clone()))
                    })
                    .collect();
                while validated(coordinator, batch_id) < units as u64 {
                    std::thread::sleep(POLL);
                }
                total += started.elapsed();
                cpu_spent += cpu().saturating_sub(cpu_before);
                units_timed += units as u64;
                stop.store(true, Ordering::Relaxed);
                for worker in workers {
                    runtime.block_on(worker).expect("worker");
                }
            }
            total
        })
    });
    group.finish();
    if let (Some(url), Some((commits, rows))) = (database, database_before) {
        let (commits_after, rows_after) = database_work(url);
        // Every batch's units, warm-up included, were validated through the database.
        let all_units =
            validated_everywhere(coordinator).saturating_sub(validated_before.unwrap_or(0));
        println!(
            "coordinator/postgres_per_unit ({name}): {:.2} commits and {:.1} rows written per validated unit ({all_units} units)",
            commits_after.saturating_sub(commits) as f64 / all_units.max(1) as f64,
            rows_after.saturating_sub(rows) as f64 / all_units.max(1) as f64,
        );
    }
    let per_unit = cpu_spent.as_secs_f64() / units_timed.max(1) as f64;
    println!(
        "coordinator/cpu_per_unit ({name}): {:.0} µs of coordinator CPU per validated unit ({} units; {:.0} units/s per core)",
        per_unit * 1e6,
        units_timed,
        1.0 / per_unit.max(1e-12)
    );
}

fn over_quic(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let coordinator = start(None);
    for batch in [1, CORES] {
        let name = format!("quic_32_workers_batch_{batch}");
        measure(c, &runtime, &[&coordinator], &name, UNITS, batch, None);
    }
    drop(coordinator);
    {
        let server = herd_pgtest::Server::start(herd_pgtest::Durability::Full).expect("PostgreSQL");
        server.create_database("bench").expect("database");
        let url = server.url("bench");
        let coordinator = start(Some(&url));
        let name = format!("quic_32_workers_batch_{CORES}_postgres");
        measure(
            c,
            &runtime,
            &[&coordinator],
            &name,
            UNITS_POSTGRES,
            CORES,
            Some(&url),
        );
        // A second coordinator of the project: half the workers each, the shards shared out.
        let second = start(Some(&url));
        wait_for_shared_shards(&url);
        let name = format!("quic_32_workers_batch_{CORES}_postgres_two_coordinators");
        measure(
            c,
            &runtime,
            &[&coordinator, &second],
            &name,
            UNITS_POSTGRES,
            CORES,
            Some(&url),
        );
    }

    // Memory per connected worker: a fresh coordinator process's resident memory with 500 idle
    // workers connected (each registered), against before they came. (Fresh, because after the
    // throughput runs the allocator's free pages would blur the difference.)
    let coordinator = start(None);
    let pid = coordinator.child.id();
    std::thread::sleep(Duration::from_millis(500));
    let before = status_kib(pid, "VmRSS:");
    let connections: Vec<_> = runtime.block_on(async {
        let mut connections = Vec::new();
        for i in 0..500 {
            let connection = herd_net::connect(&coordinator.join).await.expect("connect");
            let key = SigningKey::from_seed([(i % 250) as u8 + 1; 32]);
            let hello = Hello {
                protocol_version: PROTOCOL_VERSION,
                instrumentation_version: herd_sandbox::INSTRUMENTATION_VERSION,
                host_key: key.public_key(),
                account_key: None,
                volunteer: format!("idle-{i}"),
                team: None,
                cores: 1,
                held_replicas: Vec::new(),
            };
            let _: ServerMessage = herd_net::say_hello(&connection, &key, hello)
                .await
                .expect("hello");
            connections.push(connection);
        }
        connections
    });
    std::thread::sleep(Duration::from_millis(500));
    let after = status_kib(pid, "VmRSS:");
    println!(
        "coordinator/memory_per_worker: {:.1} KiB resident per connected worker (coordinator process alone; 500 workers: {} KiB -> {} KiB)",
        (after.saturating_sub(before)) as f64 / 500.0,
        before,
        after
    );
    drop(connections);
}

criterion_group!(benches, over_quic);

fn main() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        run_coordinator(&dir);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
