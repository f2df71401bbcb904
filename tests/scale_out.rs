//! End-to-end on PostgreSQL: coordinators whose database is a real PostgreSQL server (Debian's,
//! started for each test by `herd-pgtest`, fsync on), with real workers on 127.0.0.1.

use herd_e2e::{Coordinator, LogsOnFailure, free_udp_port, start_worker};
use herd_pgtest::{Durability, Server};

use super::{
    VOLUNTEERS, check_ledger, check_results, killed_mid_batch_and_restarted, submit, write_tiles,
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
