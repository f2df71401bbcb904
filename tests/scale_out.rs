//! End-to-end on PostgreSQL: coordinators whose database is a real PostgreSQL server (Debian's,
//! started for each test by `herd-pgtest`, fsync on), with real workers on 127.0.0.1.

use std::path::Path;
use std::time::{Duration, Instant};

use herd_e2e::{Coordinator, LogsOnFailure, eventually, free_udp_port, start_worker};
use herd_net::JoinString;
use herd_pgtest::{Durability, Server};

use super::{
    VOLUNTEERS, check_ledger, check_results, completes_exactly, killed_mid_batch_and_restarted,
    submit, write_tiles, write_tiles_of,
};

/// A fresh server with an empty database `herd`; the server stops when it is dropped.
fn database() -> (Server, String) {
    let server = Server::start(Durability::Full).expect("PostgreSQL");
    server.create_database("herd").expect("create the database");
    let url = server.url("herd");
    (server, url)
}

#[test]
fn a_coordinator_on_postgresql_validates_a_batch_and_resumes_after_a_kill_with_nothing_lost_or_credited_twice()
 {
    let (_server, url) = database();
    killed_mid_batch_and_restarted(Some(&url));
}

#[test]
fn herd_coordinator_migrate_moves_a_sqlite_project_to_postgresql_with_every_total_equal() {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let port = free_udp_port();
    let mut coordinator = Coordinator::start(root.path(), port).expect("coordinator");
    let workers: Vec<_> = VOLUNTEERS
        .iter()
        .map(|(name, team)| {
            start_worker(root.path(), &coordinator.join, name, team, 1).expect("worker")
        })
        .collect();
    let tiles = write_tiles(&root.path().join("inputs"), 6);
    let batch = submit(&coordinator, root.path(), &root.path().join("inputs"), true);
    let status = coordinator.herd_json(&["status", &batch.to_string(), "--json"]);
    let credit = coordinator.herd_json(&["credit", "--json"]);
    drop(workers);
    coordinator.process.kill();
    drop(coordinator);

    let (_server, url) = database();
    let output = std::process::Command::new(herd_e2e::bin_dir().join("herd-coordinator"))
        .args(["migrate", "--data-dir"])
        .arg(root.path().join("coordinator"))
        .args(["--to", &url])
        .output()
        .expect("run migrate");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(said.contains("copied and checked"), "{said}");
    let on_disk = std::fs::read_dir(root.path().join("coordinator").join("blobs"))
        .expect("blob store")
        .filter_map(Result::ok)
        .flat_map(|shard| std::fs::read_dir(shard.path()).into_iter().flatten())
        .filter_map(Result::ok)
        .filter(|entry| entry.path().is_file())
        .count();
    assert!(
        said.contains(&format!("blobs: {on_disk} (")),
        "every blob of the data directory ({on_disk}) is copied: {said}"
    );
    // Migrating again into the same database is refused, saying why.
    let again = std::process::Command::new(herd_e2e::bin_dir().join("herd-coordinator"))
        .args(["migrate", "--data-dir"])
        .arg(root.path().join("coordinator"))
        .args(["--to", &url])
        .output()
        .expect("run migrate");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a project"));

    let coordinator = Coordinator::start_on(root.path(), port, Some(&url)).expect("on PostgreSQL");
    assert_eq!(
        coordinator
            .sql_number("SELECT COUNT(*) FROM blobs")
            .expect("blobs"),
        on_disk as i64,
        "the blobs are in the database, for every coordinator"
    );
    assert_eq!(
        coordinator.herd_json(&["status", &batch.to_string(), "--json"]),
        status
    );
    let moved = coordinator.herd_json(&["credit", "--json"]);
    let totals = |credit: &serde_json::Value| -> Vec<(String, u64, u64)> {
        credit["volunteers"]
            .as_array()
            .expect("volunteers")
            .iter()
            .map(|v| {
                (
                    v["name"].as_str().expect("name").to_string(),
                    v["fuel"].as_u64().expect("fuel"),
                    v["replicas"].as_u64().expect("replicas"),
                )
            })
            .collect()
    };
    assert_eq!(totals(&moved), totals(&credit));
    check_results(&coordinator, root.path(), batch, &tiles);
    check_ledger(&coordinator, &status);
    // The moved project goes on: the same workers (same keys) compute a new batch on it.
    let _workers: Vec<_> = VOLUNTEERS
        .iter()
        .map(|(name, team)| {
            start_worker(root.path(), &coordinator.join, name, team, 1).expect("worker")
        })
        .collect();
    let next = submit(&coordinator, root.path(), &root.path().join("inputs"), true);
    assert!(next > batch);
    let next_status = coordinator.herd_json(&["status", &next.to_string(), "--json"]);
    assert_eq!(next_status["validated"], 6, "{next_status}");
    assert_eq!(
        coordinator.herd_json(&["hosts", "--json"])["hosts"]
            .as_array()
            .expect("hosts")
            .len(),
        3,
        "the workers are the same hosts as before the move"
    );
}

/// The project's secrets a second coordinator needs, copied from the first's data directory
/// into `dir` (README: "Several coordinators").
fn copy_secrets(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("data directory");
    for file in [
        "tls.cert.der",
        "tls.key.der",
        "project.key",
        "researcher.token",
    ] {
        std::fs::copy(from.join(file), to.join(file)).expect("copy a secret");
    }
}

/// The project's join string naming every coordinator's address, in order.
fn project_join(coordinators: &[&Coordinator]) -> String {
    let joins: Vec<JoinString> = coordinators
        .iter()
        .map(|c| c.join.parse().expect("a join string"))
        .collect();
    JoinString {
        addrs: joins.iter().flat_map(|j| j.addrs.clone()).collect(),
        ..joins[0].clone()
    }
    .to_string()
}

/// Thirty tiles whose units last long enough (tenths of a second each) to stop a coordinator in
/// the middle of their batch.
fn slow_tiles(root: &Path) -> Vec<(String, String)> {
    write_tiles_of(&root.join("inputs"), 30, (96, 64), 3000)
}

/// Two coordinators on one database. The second starts on an empty data directory and takes
/// the project's secrets from the database: the same join string but for its address.
fn two_coordinators(root: &Path, url: &str) -> (Coordinator, Coordinator) {
    let first = Coordinator::start_on(root, free_udp_port(), Some(url)).expect("first");
    let second = Coordinator::start_in(root, &root.join("second"), free_udp_port(), Some(url))
        .expect("second");
    let identity = |c: &Coordinator| {
        let join: JoinString = c.join.parse().expect("join string");
        (join.cert_sha256, join.project_key, c.token.clone())
    };
    assert_eq!(
        identity(&first),
        identity(&second),
        "one project, one identity"
    );
    (first, second)
}

fn log_of(coordinator: &Coordinator) -> String {
    std::fs::read_to_string(&coordinator.process.log).unwrap_or_default()
}

/// How many shards `holder` holds, as the database says (`of` reads it).
fn shards_held(of: &Coordinator, holder: &Coordinator) -> i64 {
    of.sql_number(&format!(
        "SELECT count(*) FROM leases WHERE holder_http = '{}' AND expires_at > now()",
        holder.http
    ))
    .unwrap_or(-1)
}

#[test]
fn two_coordinators_share_a_batch_and_one_takes_the_others_shards_when_it_is_killed() {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let (_server, url) = database();
    let (mut first, second) = two_coordinators(root.path(), &url);
    // A data directory of another project is refused, saying why.
    let stranger = root.path().join("stranger");
    let other = Coordinator::start_in(root.path(), &stranger, free_udp_port(), None)
        .expect("a coordinator of its own project");
    drop(other);
    let refused = Coordinator::start_in(root.path(), &stranger, free_udp_port(), Some(&url))
        .err()
        .expect("refused");
    assert!(
        refused.to_string().contains("another project's"),
        "{refused}"
    );
    // Every coordinator takes researchers' writes, and every one sees them.
    creates_a_researcher(&second, &first.token);
    let join = project_join(&[&first, &second]);
    let _workers: Vec<_> = VOLUNTEERS
        .iter()
        .map(|(name, team)| start_worker(root.path(), &join, name, team, 1).expect("worker"))
        .collect();
    let tiles = slow_tiles(root.path());
    let batch = submit(&second, root.path(), &root.path().join("inputs"), false);
    assert_eq!(
        first.herd_json(&["status", &batch.to_string(), "--json"])["total"],
        30,
        "both read the same project"
    );
    eventually(Duration::from_secs(120), "some units validated", || {
        let status = first.herd_json(&["status", &batch.to_string(), "--json"]);
        (status["validated"].as_u64()? >= 3).then_some(())
    });
    eprintln!(
        "shards held before the kill: first {}, second {}",
        shards_held(&second, &first),
        shards_held(&second, &second)
    );
    first.process.kill();
    let killed = Instant::now();
    let at_kill = second.herd_json(&["status", &batch.to_string(), "--json"]);
    assert!(
        at_kill["validated"].as_u64() < Some(30),
        "killed in the middle of the batch: {at_kill}"
    );
    eventually(
        Duration::from_secs(60),
        "the second holds every shard",
        || (shards_held(&second, &second) == 16).then_some(()),
    );
    eprintln!(
        "every shard held by the second {:?} after the kill",
        killed.elapsed()
    );
    // Fail-over: from the kill to the first unit validated after it.
    eventually(
        Duration::from_secs(60),
        "a unit validated after the kill",
        || {
            let status = second.herd_json(&["status", &batch.to_string(), "--json"]);
            (status["validated"].as_u64()? > at_kill["validated"].as_u64()?).then_some(())
        },
    );
    eprintln!(
        "computing again through the second {:?} after the kill",
        killed.elapsed()
    );
    completes_exactly(
        &second,
        root.path(),
        batch,
        &tiles,
        Duration::from_secs(120),
    );
    eprintln!("batch completed {:?} after the kill", killed.elapsed());
    assert!(log_of(&second).contains("holds shard"));
}

/// Every worker connects to the first of two coordinators (their host keys are chosen so), while
/// the second holds half the shards: the work in the second's shards reaches them only because an
/// idle worker moves on to the project's next coordinator. The batch completes.
#[test]
fn idle_workers_move_on_to_the_coordinator_holding_the_work() {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let (_server, url) = database();
    let (first, second) = two_coordinators(root.path(), &url);
    eventually(Duration::from_secs(60), "the shards shared out", || {
        (shards_held(&first, &first) == 8 && shards_held(&first, &second) == 8).then_some(())
    });
    let join = project_join(&[&first, &second]);
    let _workers: Vec<_> = VOLUNTEERS
        .iter()
        .enumerate()
        .map(|(i, (name, team))| {
            // A host key of its own whose first byte is even: the worker starts at the first
            // address.
            let seed = (0u8..=255)
                .map(|n| {
                    let mut seed = [n; 32];
                    seed[31] = i as u8;
                    seed
                })
                .find(|seed| {
                    herd_protocol::SigningKey::from_seed(*seed).public_key().0[0].is_multiple_of(2)
                })
                .expect("a seed");
            let dir = herd_e2e::worker_dir(root.path(), name);
            std::fs::create_dir_all(&dir).expect("worker directory");
            std::fs::write(dir.join("host.key"), format!("{}\n", hex_of(&seed))).expect("key");
            start_worker(root.path(), &join, name, team, 1).expect("worker")
        })
        .collect();
    let tiles = slow_tiles(root.path());
    let batch = submit(&first, root.path(), &root.path().join("inputs"), false);
    completes_exactly(
        &second,
        root.path(),
        batch,
        &tiles,
        Duration::from_secs(180),
    );
    let moved = VOLUNTEERS.iter().any(|(name, _)| {
        std::fs::read_dir(root.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| {
                let file = entry.file_name().to_string_lossy().into_owned();
                file.starts_with(&format!("worker-{name}-")) && file.ends_with(".log")
            })
            .any(|entry| {
                std::fs::read_to_string(entry.path())
                    .unwrap_or_default()
                    .contains("no work at this coordinator; looking at the project's next")
            })
    });
    assert!(moved, "a worker moved on to the second coordinator");
}

/// Creates a researcher through `coordinator` with the administrator's `token`: a write any
/// coordinator of the project takes.
fn creates_a_researcher(coordinator: &Coordinator, token: &str) {
    let (code, body) = coordinator.api(
        "POST",
        "/api/v1/researchers",
        Some(token),
        Some(r#"{"name": "lovelace"}"#),
    );
    assert_eq!(code, 201, "{body}");
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_stalled_coordinator_is_fenced_and_writes_nothing_for_the_shards_another_took() {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let (_server, url) = database();
    let (first, second) = two_coordinators(root.path(), &url);
    let join = project_join(&[&first, &second]);
    let _workers: Vec<_> = VOLUNTEERS
        .iter()
        .map(|(name, team)| start_worker(root.path(), &join, name, team, 1).expect("worker"))
        .collect();
    let tiles = slow_tiles(root.path());
    let batch = submit(&first, root.path(), &root.path().join("inputs"), false);
    eventually(Duration::from_secs(120), "some units validated", || {
        let status = first.herd_json(&["status", &batch.to_string(), "--json"]);
        (status["validated"].as_u64()? >= 3).then_some(())
    });
    let signal = |name: &str| {
        let status = std::process::Command::new("kill")
            .args([name, &first.process.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    };
    // The first holds every shard at first (it started first); hungry workers on the second
    // may have been handed some since.
    assert!(shards_held(&second, &first) > 0);
    // Stalled past its leases: the second takes its shards over.
    signal("-STOP");
    let at_stop = second.herd_json(&["status", &batch.to_string(), "--json"]);
    assert!(
        at_stop["validated"].as_u64() < Some(30),
        "stopped in the middle of the batch: {at_stop}"
    );
    eventually(Duration::from_secs(60), "the second takes over", || {
        (shards_held(&second, &second) == 16).then_some(())
    });
    signal("-CONT");
    eventually(
        Duration::from_secs(30),
        "the first says it is fenced",
        || log_of(&first).contains("fenced: shard").then_some(()),
    );
    // Exactly two grants per unit: the fenced coordinator credited nothing twice.
    completes_exactly(
        &second,
        root.path(),
        batch,
        &tiles,
        Duration::from_secs(120),
    );
    // The first, resumed, still serves: writes that are no shard's go through it.
    creates_a_researcher(&first, &first.token);
}

#[test]
fn postgresql_stopped_mid_batch_and_started_again_loses_nothing_and_credits_nothing_twice() {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let (mut server, url) = database();
    let coordinator =
        Coordinator::start_on(root.path(), free_udp_port(), Some(&url)).expect("coordinator");
    let _workers: Vec<_> = VOLUNTEERS
        .iter()
        .map(|(name, team)| {
            start_worker(root.path(), &coordinator.join, name, team, 1).expect("worker")
        })
        .collect();
    let tiles = slow_tiles(root.path());
    let batch = submit(
        &coordinator,
        root.path(),
        &root.path().join("inputs"),
        false,
    );
    eventually(Duration::from_secs(120), "some units validated", || {
        let status = coordinator.herd_json(&["status", &batch.to_string(), "--json"]);
        (status["validated"].as_u64()? >= 3).then_some(())
    });
    // As a crash would: no checkpoint, every connection cut. Workers go on computing and keep
    // their results in their spools meanwhile.
    let before = coordinator.herd_json(&["status", &batch.to_string(), "--json"]);
    server.stop_immediately().expect("stop PostgreSQL");
    assert!(
        before["validated"].as_u64() < Some(30),
        "stopped in the middle of the batch: {before}"
    );
    std::thread::sleep(Duration::from_secs(3));
    server.start_again().expect("start PostgreSQL again");
    completes_exactly(
        &coordinator,
        root.path(),
        batch,
        &tiles,
        Duration::from_secs(120),
    );
}

/// The issue's scenario: three coordinators on one PostgreSQL, six workers spread over them, a
/// 300-unit quorum-2 batch. One coordinator is killed and not restarted; another is killed too
/// and restarted. The batch completes, every output right, exactly two grants per unit.
#[test]
fn three_coordinators_six_workers_300_units_survive_two_kills_with_nothing_lost_or_credited_twice()
{
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let (_server, url) = database();
    let first = Coordinator::start_on(root.path(), free_udp_port(), Some(&url)).expect("first");
    let mut coordinators = vec![first];
    for n in 1..3 {
        let dir = root.path().join(format!("coordinator-{n}"));
        copy_secrets(&coordinators[0].data_dir, &dir);
        coordinators.push(
            Coordinator::start_in(root.path(), &dir, free_udp_port(), Some(&url))
                .expect("another coordinator"),
        );
    }
    let join = project_join(&coordinators.iter().collect::<Vec<_>>());
    let _workers: Vec<_> = (1..=6)
        .map(|n| {
            start_worker(root.path(), &join, &format!("volunteer-{n}"), "herd", 1).expect("worker")
        })
        .collect();
    let tiles = write_tiles_of(&root.path().join("inputs"), 300, (48, 32), 2000);
    let batch = submit(
        &coordinators[0],
        root.path(),
        &root.path().join("inputs"),
        false,
    );
    let started = Instant::now();
    let validated = |c: &Coordinator| -> Option<u64> {
        let (code, status) = c.api(
            "GET",
            &format!("/api/v1/batches/{batch}"),
            Some(&c.token),
            None,
        );
        (code == 200)
            .then(|| status["validated"].as_u64())
            .flatten()
    };
    eventually(Duration::from_secs(120), "30 units validated", || {
        (validated(&coordinators[0])? >= 30).then_some(())
    });
    let held: Vec<i64> = coordinators
        .iter()
        .map(|c| shards_held(&coordinators[0], c))
        .collect();
    eprintln!("shards held at the first kill: {held:?}");
    // One dies and stays dead.
    let mut dead = coordinators.remove(0);
    dead.process.kill();
    let at_first_kill = validated(&coordinators[0]).expect("the others read");
    assert!(at_first_kill < 300, "killed mid-batch");
    eventually(Duration::from_secs(60), "its shards taken over", || {
        (shards_held(&coordinators[0], &coordinators[0])
            + shards_held(&coordinators[0], &coordinators[1])
            == 16)
            .then_some(())
    });
    eventually(Duration::from_secs(60), "progress without it", || {
        (validated(&coordinators[0])? > at_first_kill + 10).then_some(())
    });
    // Another dies too, and comes back.
    let mut second = coordinators.remove(0);
    let (second_dir, second_join) = (second.data_dir.clone(), second.join.clone());
    second.process.kill();
    drop(second);
    let port = second_join.parse::<JoinString>().expect("join").addrs[0].port();
    let at_second_kill = validated(&coordinators[0]).expect("the last one reads");
    assert!(at_second_kill < 300, "killed mid-batch");
    coordinators.push(
        Coordinator::start_in(root.path(), &second_dir, port, Some(&url)).expect("restarted"),
    );
    completes_exactly(
        &coordinators[0],
        root.path(),
        batch,
        &tiles,
        Duration::from_secs(300),
    );
    eprintln!(
        "300 units through two kills in {:?} (validated at the kills: {at_first_kill}, {at_second_kill})",
        started.elapsed()
    );
    drop(dead);
}
