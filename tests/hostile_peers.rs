//! Hostile peers speaking the real protocol (issue 18): liars who compute nothing and report a
//! made-up result, colluders who report the same lie, and replays of reports. Each case asserts
//! the coordinator's answer, and the honest workers (real processes) run beside them.
//!
//! The other attacks have their own tests in `e2e.rs`: another host's key in a hello, a hello
//! replayed on another connection, blobs no replica of the host needs, a report whose output does
//! not hash to its claim, absurd fuel and output claims (the store's tests), and a host claiming
//! 256 cores that never reports.

use std::time::Duration;

use herd_e2e::{Coordinator, LogsOnFailure, eventually, hello_from, start_worker};
use herd_protocol::{
    ClientMessage, ContentHash, ErrorCode, FinishedReplica, Outcome, Report, RunResult,
    ServerMessage, SignedAssignment, SigningKey, Status,
};

use super::{check_results, submit, write_tiles_of};

/// A client of the coordinator's that computes nothing: it takes assignments and reports
/// whatever it is told to.
struct Liar {
    connection: herd_net::Connection,
}

/// The lie every liar tells: an output of its own making, hashed honestly (a wrong hash is
/// refused at once), with a plausible fuel.
const LIE: &[u8] = b"the answer is 42";

fn lie_about(replica_id: u64) -> FinishedReplica {
    FinishedReplica {
        report: Report {
            replica_id,
            outcome: Outcome::Countable(RunResult {
                status: Status::Success,
                fuel: 123_456,
                output_len: LIE.len() as u64,
                output_hash: ContentHash::of(LIE),
            }),
        },
        output: LIE.to_vec(),
    }
}

impl Liar {
    async fn connect(join: &herd_net::JoinString, seed: u8, name: &str) -> Self {
        let key = SigningKey::from_seed([seed; 32]);
        let connection = herd_net::connect(join).await.expect("connect");
        let welcome: ServerMessage =
            herd_net::say_hello(&connection, &key, hello_from(&key, name, None))
                .await
                .expect("hello");
        assert!(
            matches!(welcome, ServerMessage::Welcome { .. }),
            "{welcome:?}"
        );
        Self { connection }
    }

    /// Sends `reports` and asks for `want` units; returns the answer's refusals and work.
    async fn exchange(
        &self,
        reports: Vec<FinishedReplica>,
        want: u32,
    ) -> (Vec<(u64, ErrorCode)>, Vec<SignedAssignment>) {
        let answer: ServerMessage = herd_net::request(
            &self.connection,
            &ClientMessage::Exchange {
                reports,
                want,
                fuel_per_second: None,
            },
        )
        .await
        .expect("an answer");
        let ServerMessage::Exchanged { refused, work, .. } = answer else {
            panic!("unexpected {answer:?}");
        };
        (
            refused.iter().map(|r| (r.replica_id, r.code)).collect(),
            work,
        )
    }

    /// Takes one replica of every unit it may, lying about each as it goes (a new host holds
    /// two at a time); returns the replicas it lied about.
    async fn lie_about_everything(&self) -> Vec<u64> {
        let mut lied = Vec::new();
        let mut holding: Vec<u64> = Vec::new();
        loop {
            let reports = holding.drain(..).map(lie_about).collect();
            let (refused, work) = self.exchange(reports, 2).await;
            assert!(
                refused.is_empty(),
                "a lie was refused outright: {refused:?}"
            );
            if work.is_empty() {
                return lied;
            }
            for signed in work {
                lied.push(signed.assignment.replica_id);
                holding.push(signed.assignment.replica_id);
            }
        }
    }
}

/// The credit a volunteer holds, from the public totals.
fn credit_of(coordinator: &Coordinator, volunteer: &str) -> f64 {
    let credit = coordinator.herd_json(&["credit", "--json"]);
    credit["volunteers"]
        .as_array()
        .expect("volunteers")
        .iter()
        .find(|v| v["name"] == volunteer)
        .map_or(0.0, |v| v["credit"].as_f64().expect("credit"))
}

#[test]
fn liars_below_the_quorum_never_win_colluders_win_only_as_the_whole_quorum_and_replays_change_nothing()
 {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let coordinator = Coordinator::start(root.path(), 0).expect("coordinator");
    let join: herd_net::JoinString = coordinator.join.parse().expect("join string");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let units = 4;
    let number = |sql: &str| coordinator.sql_number(sql).expect(sql);

    // One liar, first to every unit of a quorum-2 batch: each unit then has a lie and, from
    // ada, the truth; they disagree, so each needs a third replica, which grace gives. The
    // truth wins every unit, and the liar earns nothing.
    let inputs = root.path().join("first");
    let tiles = write_tiles_of(&inputs, units, (16, 16), 100);
    let batch = submit(&coordinator, root.path(), &inputs, false);
    let mallory = runtime.block_on(Liar::connect(&join, 41, "mallory"));
    let lied = runtime.block_on(mallory.lie_about_everything());
    assert_eq!(lied.len(), units, "the liar took one replica of each unit");
    let ada = start_worker(root.path(), &coordinator.join, "ada", "t", 1).expect("worker");
    eventually(
        Duration::from_secs(120),
        "ada's replica of each unit",
        || {
            (number(
                "SELECT COUNT(*) FROM replicas WHERE state = 'reported' AND volunteer_id =
                 (SELECT id FROM volunteers WHERE name = 'ada')",
            ) == units as i64)
                .then_some(())
        },
    );
    assert_eq!(
        number("SELECT COUNT(*) FROM units WHERE state = 'validated'"),
        0,
        "a lie and the truth are no quorum"
    );
    let grace = start_worker(root.path(), &coordinator.join, "grace", "t", 1).expect("worker");
    eventually(Duration::from_secs(120), "the batch validated", || {
        (number("SELECT COUNT(*) FROM units WHERE state = 'validated'") == units as i64)
            .then_some(())
    });
    check_results(&coordinator, root.path(), batch, &tiles);
    assert_eq!(
        credit_of(&coordinator, "mallory"),
        0.0,
        "the liar earned credit"
    );
    assert!(credit_of(&coordinator, "ada") > 0.0);
    assert_eq!(
        number(&format!(
            "SELECT COUNT(*) FROM replicas WHERE id IN ({}) AND validity = 'invalid'",
            lied.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        )),
        units as i64,
        "every lie is judged invalid"
    );

    // Replays change nothing. The liar's own report again: answered as before (reports are
    // idempotent), nothing new recorded. Ada's report, sent by the liar: not its replica.
    let credit_rows = number("SELECT COUNT(*) FROM credit");
    let ada_replica = number(
        "SELECT MIN(id) FROM replicas WHERE volunteer_id = (SELECT id FROM volunteers WHERE name = 'ada')",
    ) as u64;
    let (refused, _) = runtime.block_on(mallory.exchange(vec![lie_about(lied[0])], 0));
    assert!(refused.is_empty(), "a repeated report: {refused:?}");
    let (refused, _) = runtime.block_on(mallory.exchange(vec![lie_about(ada_replica)], 0));
    assert_eq!(refused, vec![(ada_replica, ErrorCode::NotYourReplica)]);
    assert_eq!(
        number("SELECT COUNT(*) FROM credit"),
        credit_rows,
        "a replay moved credit"
    );
    assert_eq!(credit_of(&coordinator, "mallory"), 0.0);
    // A report for a replica of a batch retired since: no such replica any more.
    let output = coordinator.herd(&["retire", &batch.to_string()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (refused, _) = runtime.block_on(mallory.exchange(vec![lie_about(lied[1])], 0));
    assert_eq!(refused, vec![(lied[1], ErrorCode::UnknownReplica)]);

    // Two colluders who are a unit's whole quorum win it: the limit of agreement, plainly. The
    // honest workers are stopped so that the colluders take every replica.
    drop(ada);
    drop(grace);
    let inputs = root.path().join("second");
    write_tiles_of(&inputs, 2, (16, 16), 100);
    let batch = submit(&coordinator, root.path(), &inputs, false);
    let trudy = runtime.block_on(Liar::connect(&join, 42, "trudy"));
    let mut colluded = runtime.block_on(mallory.lie_about_everything());
    colluded.extend(runtime.block_on(trudy.lie_about_everything()));
    assert_eq!(colluded.len(), 4, "two replicas of each of two units");
    let status = coordinator.herd_json(&["status", &batch.to_string(), "--json"]);
    assert_eq!(status["validated"], 2, "{status}");
    for unit in status["units"].as_array().expect("units") {
        assert_eq!(
            unit["result"]["output_hash"],
            ContentHash::of(LIE).to_hex(),
            "the colluders' lie was accepted, as a quorum of two colluders can: {unit}"
        );
    }
    assert!(credit_of(&coordinator, "trudy") > 0.0);
}
