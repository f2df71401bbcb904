//! Crashes again and again (issue 18): the coordinator, and separately the workers, killed with
//! SIGKILL at random moments during one batch, each kill followed by a check of the invariants
//! (no replica credited twice, no unit with more grants than its quorum, every balance its
//! ledger's sum, nothing validated ever undone), and the batch completing with every output
//! right and exactly two grants per unit.
//!
//! The suite runs a bounded number of kills; `HERD_KILLS=50` runs the long variant
//! (RELIABILITY.md), and `HERD_KILL_SEED` replays a run's moments. Each kill waits for the batch
//! to make progress first, so every kill lands mid-batch however fast or busy the machine is.

use std::path::Path;
use std::time::Duration;

use herd_e2e::{Coordinator, LogsOnFailure, Process, eventually, free_udp_port, start_worker};

use super::{VOLUNTEERS, completes_exactly, submit, write_tiles_of};

/// Kills per test: `HERD_KILLS`, or a bounded number for the suite.
fn kills() -> usize {
    std::env::var("HERD_KILLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5)
}

/// The moments' randomness: `HERD_KILL_SEED`, or a new seed (printed, to replay a failure).
struct Moments(u64);

impl Moments {
    fn new() -> Self {
        let seed = std::env::var("HERD_KILL_SEED")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("kill moments: HERD_KILL_SEED={seed}");
        Self(seed | 1)
    }

    /// A number in `0..bound` (xorshift).
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

/// Units validated so far, or `None` while the coordinator is not answering.
fn validated(coordinator: &Coordinator, batch: u64) -> Option<u64> {
    let (code, status) = coordinator.api(
        "GET",
        &format!("/api/v1/batches/{batch}"),
        Some(&coordinator.token),
        None,
    );
    (code == 200)
        .then(|| status["validated"].as_u64())
        .flatten()
}

/// Waits until the batch has validated more than `than` units (or all of `total`); returns the
/// count.
fn progress(coordinator: &Coordinator, batch: u64, than: u64, total: u64) -> u64 {
    eventually(Duration::from_secs(180), "the batch to progress", || {
        validated(coordinator, batch).filter(|n| *n > than || *n == total)
    })
}

/// The invariants that hold at every moment, read from the database beside the coordinator.
fn invariants_hold(coordinator: &Coordinator, quorum: i64) {
    let number = |sql: &str| coordinator.sql_number(sql).expect("an invariant's query");
    assert_eq!(
        number("SELECT COUNT(*) - COUNT(DISTINCT replica_id) FROM credit"),
        0,
        "a replica was credited twice"
    );
    assert_eq!(
        number(&format!(
            "SELECT COUNT(*) FROM (SELECT r.unit_id FROM credit c
             JOIN replicas r ON r.id = c.replica_id
             GROUP BY r.unit_id HAVING COUNT(*) > {quorum}) AS over"
        )),
        0,
        "a unit has more grants than its quorum"
    );
    assert_eq!(
        number(
            "SELECT COUNT(*) FROM credit c JOIN replicas r ON r.id = c.replica_id
             JOIN units u ON u.id = r.unit_id WHERE u.state <> 'validated'"
        ),
        0,
        "credit was granted for a unit that is not validated"
    );
    assert_eq!(
        number(
            "SELECT COUNT(*) FROM volunteers v WHERE v.balance <>
               (SELECT COALESCE(SUM(c.fuel), 0) FROM credit c WHERE c.volunteer_id = v.id)
             - (SELECT COALESCE(SUM(x.fuel), 0) FROM credit_revoked x WHERE x.volunteer_id = v.id)
             + (SELECT COALESCE(SUM(l.amount), 0) FROM ledger l WHERE l.account_id = v.id)"
        ),
        0,
        "a balance differs from its ledger's sum"
    );
}

/// Tiles enough for the kills to land among them: `20 x kills` of them (a restarted worker or
/// coordinator validates a burst of units at once, from the results spooled meanwhile).
fn long_batch(root: &Path, kills: usize) -> Vec<(String, String)> {
    write_tiles_of(&root.join("inputs"), 20 * kills.max(1), (96, 64), 1_500)
}

#[test]
fn a_coordinator_killed_again_and_again_mid_batch_loses_nothing_and_credits_nothing_twice() {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let kills = kills();
    let mut moments = Moments::new();
    let port = free_udp_port();
    let mut coordinator = Coordinator::start_on(root.path(), port, None).expect("coordinator");
    let _workers: Vec<Process> = VOLUNTEERS
        .iter()
        .map(|(name, team)| {
            start_worker(root.path(), &coordinator.join, name, team, 1).expect("worker")
        })
        .collect();
    let tiles = long_batch(root.path(), kills);
    let total = tiles.len() as u64;
    let batch = submit(
        &coordinator,
        root.path(),
        &root.path().join("inputs"),
        false,
    );
    let (mut seen, mut landed) = (0, 0);
    for _ in 0..kills {
        seen = progress(&coordinator, batch, seen, total);
        if seen == total {
            break;
        }
        // A random moment after the progress: mid-exchange, mid-commit, between units.
        std::thread::sleep(Duration::from_millis(moments.below(400)));
        coordinator.process.kill();
        landed += 1;
        drop(coordinator);
        coordinator = Coordinator::start_on(root.path(), port, None).expect("restart");
        invariants_hold(&coordinator, 2);
        let now = validated(&coordinator, batch).expect("the restarted coordinator answers");
        assert!(
            now >= seen,
            "validated units were undone: {now} after {seen}"
        );
        seen = now;
    }
    eprintln!("{landed} kills of the coordinator landed mid-batch");
    assert!(landed >= 1, "no kill landed mid-batch");
    completes_exactly(
        &coordinator,
        root.path(),
        batch,
        &tiles,
        Duration::from_secs(180),
    );
    invariants_hold(&coordinator, 2);
}

#[test]
fn workers_killed_again_and_again_mid_batch_lose_nothing_and_nothing_is_credited_twice() {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let kills = kills();
    let mut moments = Moments::new();
    let coordinator = Coordinator::start(root.path(), 0).expect("coordinator");
    let start = |i: usize| {
        let (name, team) = VOLUNTEERS[i];
        start_worker(root.path(), &coordinator.join, name, team, 1).expect("worker")
    };
    let mut workers: Vec<Process> = (0..VOLUNTEERS.len()).map(start).collect();
    let tiles = long_batch(root.path(), kills);
    let total = tiles.len() as u64;
    let batch = submit(
        &coordinator,
        root.path(),
        &root.path().join("inputs"),
        false,
    );
    let (mut seen, mut landed) = (0, 0);
    for _ in 0..kills {
        seen = progress(&coordinator, batch, seen, total);
        if seen == total {
            break;
        }
        std::thread::sleep(Duration::from_millis(moments.below(400)));
        // One worker, killed mid-unit or mid-report, started again on its data directory.
        let victim = moments.below(workers.len() as u64) as usize;
        workers[victim].kill();
        landed += 1;
        workers[victim] = start(victim);
        invariants_hold(&coordinator, 2);
    }
    eprintln!("{landed} kills of workers landed mid-batch");
    assert!(landed >= 1, "no kill landed mid-batch");
    completes_exactly(
        &coordinator,
        root.path(),
        batch,
        &tiles,
        Duration::from_secs(180),
    );
    invariants_hold(&coordinator, 2);
}
