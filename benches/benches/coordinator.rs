//! The real coordinator over QUIC on 127.0.0.1: validated units per second at quorum 2 with many
//! simulated workers, each its own QUIC connection and host key, asking for work and reporting
//! at once (no sandbox: this measures the coordinator, not the units). Also prints the
//! coordinator's resident memory per connected worker.
//!
//! The coordinator runs in this process (`herd_coordinator::run`), with its SQLite database and
//! blob store in a temporary directory, exactly as the binary runs it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herd_net::JoinString;
use herd_protocol::{
    ClientMessage, ContentHash, Outcome, PROTOCOL_VERSION, Report, RunResult, ServerMessage,
    SigningKey, Status,
};

const UNITS: usize = 2_000;
const WORKERS: usize = 32;

/// The coordinator under test, and how to reach it.
struct Running {
    join: JoinString,
    http: String,
    token: String,
    _dir: tempfile::TempDir,
}

fn start(runtime: &tokio::runtime::Runtime) -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = herd_coordinator::Config {
        data_dir: dir.path().to_path_buf(),
        quic: "127.0.0.1:0".parse().expect("addr"),
        http: "127.0.0.1:0".parse().expect("addr"),
    };
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    // The coordinator runs until the process ends.
    std::mem::forget(_stop);
    runtime.spawn(async move { herd_coordinator::run(config, shutdown).await });
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
        _dir: dir,
    }
}

/// Uploads a trivial module and `UNITS` inputs and creates a quorum-2 batch; returns its id.
fn create_batch(coordinator: &Running, round: usize) -> u64 {
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
    let units: Vec<serde_json::Value> = (0..UNITS)
        .map(|i| {
            let input = put(format!("{round} {i}").as_bytes());
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

/// A simulated worker: connects, says hello, then asks and reports until told to stop.
async fn worker(join: JoinString, index: usize, stop: Arc<AtomicBool>) {
    let key = SigningKey::from_seed([index as u8 + 1; 32]);
    let connection = herd_net::connect(&join).await.expect("connect");
    let hello = ClientMessage::Hello {
        protocol_version: PROTOCOL_VERSION,
        host_key: key.public_key(),
        volunteer: format!("sim-{index}"),
        team: None,
        cores: 4,
        held_replicas: Vec::new(),
    };
    let _: ServerMessage = herd_net::request(&connection, &hello).await.expect("hello");
    let result = RunResult {
        status: Status::Success,
        fuel: 1_000,
        output_len: 0,
        output_hash: ContentHash::of(b""),
    };
    while !stop.load(Ordering::Relaxed) {
        let answer: ServerMessage = herd_net::request(&connection, &ClientMessage::RequestWork)
            .await
            .expect("request work");
        let ServerMessage::Work(signed) = answer else {
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        };
        let report = Report {
            replica_id: signed.assignment.replica_id,
            outcome: Outcome::Countable(result.clone()),
        }
        .sign(&key)
        .expect("sign");
        let _: ServerMessage = herd_net::request(
            &connection,
            &ClientMessage::Report {
                report,
                output: Vec::new(),
            },
        )
        .await
        .expect("report");
    }
}

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn over_quic(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let coordinator = start(&runtime);
    let mut round = 0;
    let mut group = c.benchmark_group("coordinator");
    group.throughput(Throughput::Elements(UNITS as u64));
    group.sample_size(10);
    group.bench_function("quic_32_workers", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                round += 1;
                let batch = create_batch(&coordinator, round);
                let stop = Arc::new(AtomicBool::new(false));
                let started = Instant::now();
                let workers: Vec<_> = (0..WORKERS)
                    .map(|i| runtime.spawn(worker(coordinator.join.clone(), i, stop.clone())))
                    .collect();
                while validated(&coordinator, batch) < UNITS as u64 {
                    std::thread::sleep(Duration::from_millis(20));
                }
                total += started.elapsed();
                stop.store(true, Ordering::Relaxed);
                for worker in workers {
                    runtime.block_on(worker).expect("worker");
                }
            }
            total
        })
    });
    group.finish();

    // Memory per connected worker: resident memory of this process (the coordinator and the
    // clients' connections both live here, so this is an upper bound) with 500 idle workers.
    let before = resident_kib();
    let connections: Vec<_> = runtime.block_on(async {
        let mut connections = Vec::new();
        for i in 0..500 {
            let connection = herd_net::connect(&coordinator.join).await.expect("connect");
            let key = SigningKey::from_seed([(i % 250) as u8 + 1; 32]);
            let hello = ClientMessage::Hello {
                protocol_version: PROTOCOL_VERSION,
                host_key: key.public_key(),
                volunteer: format!("idle-{i}"),
                team: None,
                cores: 1,
                held_replicas: Vec::new(),
            };
            let _: ServerMessage = herd_net::request(&connection, &hello).await.expect("hello");
            connections.push(connection);
        }
        connections
    });
    std::thread::sleep(Duration::from_millis(500));
    let after = resident_kib();
    println!(
        "coordinator/memory_per_worker: {:.1} KiB resident per connected worker (500 workers: {} KiB -> {} KiB, coordinator and clients together)",
        (after.saturating_sub(before)) as f64 / 500.0,
        before,
        after
    );
    drop(connections);
}

criterion_group!(benches, over_quic);
criterion_main!(benches);
