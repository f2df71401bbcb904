//! Bad networks, for real (issue 18): the coordinator and each volunteer in network namespaces of
//! the test's own, joined by links it spoils with `iptables` and `tc` ([`herd_e2e::netns`]):
//! random loss, a partition longer than QUIC's idle timeout, a 1 Mbit/s home line, and a worker
//! cut off for good. Each test checks that nothing is lost (every output right against the native
//! kernel, credit exactly the agreed fuel) and that the links carried no storm of retries.
//!
//! The figures each test prints (`--nocapture`) are the ones in RELIABILITY.md.

use std::path::Path;
use std::time::{Duration, Instant};

use herd_e2e::netns::{COORDINATOR_ADDR, Carried, Network};
use herd_e2e::{Coordinator, LogsOnFailure, Process, eventually, start_worker};

use super::{VOLUNTEERS, completes_exactly, spooled, submit_with, write_tiles_of};

/// A coordinator in `network`'s coordinator namespace, its data in `root`.
fn coordinator(network: &Network, root: &Path) -> Coordinator {
    network.in_coordinator(|| {
        Coordinator::start_at(
            root,
            &root.join("coordinator"),
            &format!("{COORDINATOR_ADDR}:0"),
            None,
            &["--anonymous-volunteers"],
        )
        .expect("coordinator")
    })
}

/// One single-core worker per home of `network`, named after [`VOLUNTEERS`].
fn workers(network: &Network, root: &Path, join: &str, homes: usize) -> Vec<Process> {
    (0..homes)
        .map(|home| {
            let (name, team) = VOLUNTEERS[home];
            network.in_home(home, || {
                start_worker(root, join, name, team, 1).expect("worker")
            })
        })
        .collect()
}

/// Submits `tiles` to `coordinator` (run in its namespace: the CLI reaches it on 127.0.0.1
/// there), quorum 2, with `extra` arguments; returns the batch id.
fn submit_in(
    network: &Network,
    coordinator: &Coordinator,
    root: &Path,
    inputs: &Path,
    extra: &[&str],
) -> u64 {
    network.in_coordinator(|| submit_with(coordinator, root, inputs, false, extra))
}

/// Units of `batch` validated so far, asked from the coordinator's namespace.
fn validated(network: &Network, coordinator: &Coordinator, batch: u64) -> u64 {
    network.in_coordinator(|| validated_here(coordinator, batch))
}

/// Units of `batch` validated so far (0 while the coordinator does not answer), asked from the
/// calling thread's network.
fn validated_here(coordinator: &Coordinator, batch: u64) -> u64 {
    let (code, status) = coordinator.api(
        "GET",
        &format!("/api/v1/batches/{batch}"),
        Some(&coordinator.token),
        None,
    );
    if code == 200 {
        status["validated"].as_u64().unwrap_or(0)
    } else {
        0
    }
}

/// Checks that each of the `units` was computed by exactly two replicas, its quorum: none
/// computed again when it did not need to be. (A replica whose assignment was lost on the way,
/// and so never computed, is reissued: that costs no work.)
fn computed_exactly_twice(coordinator: &Coordinator, units: usize) {
    let computed = coordinator
        .sql_number("SELECT COUNT(*) FROM replicas WHERE state IN ('reported', 'aborted')")
        .expect("count replicas");
    assert_eq!(
        computed,
        2 * units as i64,
        "a unit was computed more than twice"
    );
}

/// What every home's link carried, summed.
fn carried(network: &Network, homes: usize) -> Carried {
    (0..homes).fold(
        Carried {
            received: 0,
            sent: 0,
        },
        |sum, home| {
            let link = network.carried(home);
            Carried {
                received: sum.received + link.received,
                sent: sum.sent + link.sent,
            }
        },
    )
}

/// 15% loss each way for the whole batch, and in its middle a partition of 45 s, longer than
/// QUIC's idle timeout (30 s): every connection dies. Once healed, the workers reconnect and
/// deliver what they computed meanwhile; the batch completes with every output right, credit
/// exact, and no unit computed more than its quorum's two times.
#[test]
fn a_batch_survives_loss_and_a_partition_longer_than_the_idle_timeout_computing_nothing_twice() {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let network = Network::new(2);
    let coordinator = coordinator(&network, root.path());
    let workers = workers(&network, root.path(), &coordinator.join, 2);
    network.lose(0, 0.15);
    network.lose(1, 0.15);
    let tiles = write_tiles_of(&root.path().join("inputs"), 16, (96, 64), 3_000);
    let started = Instant::now();
    let batch = submit_in(
        &network,
        &coordinator,
        root.path(),
        &root.path().join("inputs"),
        &[],
    );
    eventually(Duration::from_secs(180), "the batch to start", || {
        (validated(&network, &coordinator, batch) >= 2).then_some(())
    });
    network.cut(0);
    network.cut(1);
    let cut_at = validated(&network, &coordinator, batch);
    std::thread::sleep(herd_net::IDLE_TIMEOUT + Duration::from_secs(15));
    network.heal(0);
    network.heal(1);
    network.lose(0, 0.15);
    network.lose(1, 0.15);
    network.in_coordinator(|| {
        completes_exactly(
            &coordinator,
            root.path(),
            batch,
            &tiles,
            Duration::from_secs(300),
        )
    });
    let took = started.elapsed();
    computed_exactly_twice(&coordinator, tiles.len());
    for (worker, (name, _)) in workers.iter().zip(&VOLUNTEERS) {
        let log = std::fs::read_to_string(&worker.log).expect("worker log");
        assert!(
            log.matches("connected to").count() >= 2,
            "{name} never reconnected after the partition:\n{log}"
        );
        assert_eq!(
            spooled(root.path(), name, "finished"),
            0,
            "{name} still holds a report"
        );
    }
    let link = carried(&network, 2);
    eprintln!(
        "15% loss and a 45 s partition: {} units in {:.1} s ({cut_at} validated when cut); \
         the homes received {} KiB and sent {} KiB",
        tiles.len(),
        took.as_secs_f64(),
        link.received >> 10,
        link.sent >> 10
    );
}

/// One batch of `tiles` (and `extra` inputs) on fresh links with `fault` put on them just before
/// it is submitted: how long it took and what the links carried meanwhile. Checks that it
/// completed with every output right, credit exact, and no unit computed more than twice.
struct Run {
    took: Duration,
    carried: Carried,
    /// The workers' logs.
    logs: Vec<String>,
}

fn one_batch(
    root: &Path,
    tiles: &[(String, String)],
    inputs: &Path,
    fault: impl Fn(&Network),
) -> Run {
    let network = Network::new(2);
    let coordinator = coordinator(&network, root);
    let workers = workers(&network, root, &coordinator.join, 2);
    // Both workers connected and asking for work before the clock starts.
    eventually(Duration::from_secs(60), "both workers to connect", || {
        (coordinator
            .sql_number("SELECT COUNT(*) FROM hosts")
            .unwrap_or(0)
            == 2)
            .then_some(())
    });
    fault(&network);
    let before = carried(&network, 2);
    let started = Instant::now();
    let batch = submit_in(&network, &coordinator, root, inputs, &[]);
    network.in_coordinator(|| {
        completes_exactly(&coordinator, root, batch, tiles, Duration::from_secs(600))
    });
    let took = started.elapsed();
    let after = carried(&network, 2);
    computed_exactly_twice(&coordinator, tiles.len());
    Run {
        took,
        carried: Carried {
            received: after.received - before.received,
            sent: after.sent - before.sent,
        },
        logs: workers
            .iter()
            .map(|worker| std::fs::read_to_string(&worker.log).expect("worker log"))
            .collect(),
    }
}

/// 30% of packets lost each way on both volunteers' links: the batch takes longer but completes
/// with every output right and credit exact, and the homes send no storm of retries: about what a
/// clean run sends, plus QUIC's retransmissions of what was lost.
#[test]
fn thirty_percent_loss_slows_a_batch_but_loses_nothing_and_raises_no_storm() {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let runs: Vec<Run> = [None, Some(0.30)]
        .into_iter()
        .map(|loss| {
            let dir = root
                .path()
                .join(if loss.is_some() { "lossy" } else { "clean" });
            let inputs = dir.join("inputs");
            let tiles = write_tiles_of(&inputs, 12, (48, 32), 300);
            one_batch(&dir, &tiles, &inputs, |network| {
                if let Some(p) = loss {
                    network.lose(0, p);
                    network.lose(1, p);
                }
            })
        })
        .collect();
    let (clean, lossy) = (&runs[0], &runs[1]);
    eprintln!(
        "30% loss: 12 units in {:.1} s against {:.1} s clean ({:.1}x); the homes sent {} KiB \
         against {} KiB ({:.2}x) and received {} KiB against {} KiB",
        lossy.took.as_secs_f64(),
        clean.took.as_secs_f64(),
        lossy.took.as_secs_f64() / clean.took.as_secs_f64(),
        lossy.carried.sent >> 10,
        clean.carried.sent >> 10,
        lossy.carried.sent as f64 / clean.carried.sent as f64,
        lossy.carried.received >> 10,
        clean.carried.received >> 10,
    );
    // Each packet is sent 1 / 0.7 = 1.43 times on average, a little more when the
    // acknowledgements are lost too; a storm (whole reports sent again on every timeout) would
    // be many times that.
    assert!(
        lossy.carried.sent <= 3 * clean.carried.sent,
        "the homes sent {} bytes under 30% loss, against {} clean",
        lossy.carried.sent,
        clean.carried.sent
    );
}

/// Both volunteers on 1 Mbit/s lines, and one unit's input is 2 MiB: the batch completes with
/// every output right, each home downloads that input once (not again on a retry), and the
/// transfer takes at least what the line allows.
#[test]
fn a_two_mib_input_over_a_one_mbit_line_is_fetched_once_and_the_batch_completes() {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    const BIG: usize = 2 << 20;
    let runs: Vec<Run> = [false, true]
        .into_iter()
        .map(|limited| {
            let dir = root.path().join(if limited { "limited" } else { "clean" });
            let inputs = dir.join("inputs");
            let mut tiles = write_tiles_of(&inputs, 4, (48, 32), 300);
            // A small tile padded to 2 MiB (the job reads only its first line's worth); a
            // different tile in each run, so nothing is shared between them.
            let x = if limited { 0.1 } else { 0.2 };
            let text = herd_samples::mandelbrot_input((x, -0.5), (x + 0.1, 0.5), (16, 16), 50);
            let mut padded = text.clone().into_bytes();
            padded.resize(BIG, b' ');
            std::fs::write(inputs.join("padded"), &padded).expect("write input");
            tiles.push(("padded".into(), text));
            one_batch(&dir, &tiles, &inputs, |network| {
                if limited {
                    network.limit(0, "1mbit");
                    network.limit(1, "1mbit");
                }
            })
        })
        .collect();
    let (clean, limited) = (&runs[0], &runs[1]);
    eprintln!(
        "1 Mbit/s: 5 units (one of 2 MiB) in {:.1} s against {:.1} s clean ({:.1}x); the homes \
         received {} KiB against {} KiB",
        limited.took.as_secs_f64(),
        clean.took.as_secs_f64(),
        limited.took.as_secs_f64() / clean.took.as_secs_f64(),
        limited.carried.received >> 10,
        clean.carried.received >> 10,
    );
    // Each worker fetched the big input once: not again after a retry.
    for log in &limited.logs {
        assert_eq!(
            log.matches(&format!("{BIG} bytes in")).count(),
            1,
            "the 2 MiB input was not fetched exactly once:\n{log}"
        );
    }
    // Once each, with the module, the small inputs and QUIC's framing: a second fetch of the
    // input would add 2 MiB.
    let once = 2 * (BIG + herd_samples::MANDELBROT_WASM.len()) as u64;
    // On the clean link QUIC itself sends some packets again (the sender outruns a receiver
    // busy decrypting, whose socket buffer overflows); on the 1 Mbit/s line the line is the
    // bottleneck, and what arrives is one copy.
    assert!(
        limited.carried.received <= once + once / 4,
        "the homes received {} bytes, more than one copy each of the input and module ({once})",
        limited.carried.received
    );
    // The line's limit held: 2 MiB at 1 Mbit/s takes 16.8 s (a busy machine only slows it).
    assert!(
        limited.took >= Duration::from_secs(16),
        "2 MiB over 1 Mbit/s took {:?}",
        limited.took
    );
}

/// A volunteer cut off for good in the middle of a batch: its replicas are given to the others
/// once their deadline passes, and the batch completes with every output right. When its link
/// comes back long after, its late reports are checked against the accepted results, as the
/// lifecycle says: an agreeing one is credited, and nothing else changes.
#[test]
fn a_worker_cut_off_for_good_has_its_replicas_reissued_and_its_late_reports_checked() {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let network = Network::new(3);
    let coordinator = coordinator(&network, root.path());
    let workers = workers(&network, root.path(), &coordinator.join, 3);
    let inputs = root.path().join("inputs");
    let tiles = write_tiles_of(&inputs, 12, (96, 64), 2_000);
    let batch = submit_in(
        &network,
        &coordinator,
        root.path(),
        &inputs,
        &["--deadline", "20s"],
    );
    let (alan, _) = VOLUNTEERS[2];
    eventually(Duration::from_secs(120), "alan to hold a replica", || {
        (spooled(root.path(), alan, "assigned") + spooled(root.path(), alan, "finished") > 0)
            .then_some(())
    });
    network.cut(2);
    eventually(Duration::from_secs(300), "every unit validated", || {
        (validated(&network, &coordinator, batch) == tiles.len() as u64).then_some(())
    });
    let number = |sql: &str| coordinator.sql_number(sql).expect(sql);
    let alan_id = format!("(SELECT id FROM volunteers WHERE name = '{alan}')");
    let timed_out = number(&format!(
        "SELECT COUNT(*) FROM replicas WHERE state = 'timed_out' AND volunteer_id = {alan_id}"
    ));
    assert!(timed_out >= 1, "alan's replicas never timed out");
    let timed_out_ids = (0..timed_out)
        .map(|n| {
            number(&format!(
                "SELECT id FROM replicas WHERE state = 'timed_out' AND volunteer_id = {alan_id}
                 ORDER BY id LIMIT 1 OFFSET {n}"
            ))
            .to_string()
        })
        .collect::<Vec<_>>()
        .join(",");
    network.in_coordinator(|| super::check_results(&coordinator, root.path(), batch, &tiles));
    let credited_before = number("SELECT COUNT(*) FROM credit");
    assert_eq!(
        credited_before,
        2 * tiles.len() as i64,
        "two grants per unit"
    );

    // Back again: alan's worker reconnects and delivers what it finished while cut off.
    network.heal(2);
    // Everything it held is settled: a finished replica reported (late), one it had not started
    // dropped, as the coordinator's welcome says its unit was decided.
    eventually(
        Duration::from_secs(120),
        "alan to settle what it held",
        || {
            (spooled(root.path(), alan, "finished") + spooled(root.path(), alan, "assigned") == 0
                && std::fs::read_to_string(&workers[2].log)
                    .is_ok_and(|log| log.matches("connected to").count() >= 2))
            .then_some(())
        },
    );
    // Its late results agree with the accepted ones: each is credited with the agreed fuel,
    // once, and every unit still has its one accepted result.
    let late = number(&format!(
        "SELECT COUNT(*) FROM replicas WHERE state = 'reported' AND id IN ({timed_out_ids})"
    ));
    let credit_rows = number("SELECT COUNT(*) FROM credit");
    assert_eq!(
        credit_rows,
        credited_before + late,
        "late agreeing reports are credited once each"
    );
    assert_eq!(
        number("SELECT COUNT(*) - COUNT(DISTINCT replica_id) FROM credit"),
        0,
        "a replica was credited twice"
    );
    assert_eq!(
        number(
            "SELECT COUNT(*) FROM credit c JOIN replicas r ON r.id = c.replica_id
             JOIN units u ON u.id = r.unit_id
             WHERE c.fuel != json_extract(u.canonical, '$.fuel')"
        ),
        0,
        "a grant differs from its unit's agreed fuel"
    );
    eprintln!(
        "cut off for good: {timed_out} of alan's replicas timed out and were reissued; {late} \
         late reports agreed and were credited"
    );
}

/// A host back after its replica timed out and its unit was decided without it is told so in
/// the welcome, and need not run it; so are replicas that are not its own or do not exist. A
/// hello naming more replicas than any machine could hold is refused.
#[test]
fn a_host_back_after_its_unit_was_decided_is_told_it_need_not_run_its_replica() {
    use herd_protocol::{ClientMessage, ErrorCode, ServerMessage, SigningKey};

    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let coordinator = Coordinator::start(root.path(), 0).expect("coordinator");
    let join: herd_net::JoinString = coordinator.join.parse().expect("join string");
    let inputs = root.path().join("inputs");
    let tiles = write_tiles_of(&inputs, 1, (16, 16), 100);
    let batch = submit_with(
        &coordinator,
        root.path(),
        &inputs,
        false,
        &["--deadline", "1s"],
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let key = SigningKey::from_seed([77; 32]);
    let hello = |held: Vec<u64>| herd_protocol::Hello {
        held_replicas: held,
        ..herd_e2e::hello_from(&key, "wanderer", None)
    };
    // The wanderer takes the unit's first replica and goes away with it.
    let taken = runtime.block_on(async {
        let connection = herd_net::connect(&join).await.expect("connect");
        let _: ServerMessage = herd_net::say_hello(&connection, &key, hello(Vec::new()))
            .await
            .expect("hello");
        let answer: ServerMessage = herd_net::request(
            &connection,
            &ClientMessage::Exchange {
                reports: Vec::new(),
                want: 1,
                fuel_per_second: None,
            },
        )
        .await
        .expect("work");
        let ServerMessage::Exchanged { work, .. } = answer else {
            panic!("unexpected {answer:?}");
        };
        connection.close(0u32.into(), b"away");
        work[0].assignment.replica_id
    });
    // Its deadline passes; two others validate the unit.
    let _workers: Vec<Process> = VOLUNTEERS[..2]
        .iter()
        .map(|(name, team)| {
            start_worker(root.path(), &coordinator.join, name, team, 1).expect("worker")
        })
        .collect();
    eventually(Duration::from_secs(120), "the unit validated", || {
        (validated_here(&coordinator, batch) == 1).then_some(())
    });
    super::check_results(&coordinator, root.path(), batch, &tiles);
    let another = coordinator
        .sql_number(&format!("SELECT MIN(id) FROM replicas WHERE id != {taken}"))
        .expect("another replica") as u64;
    runtime.block_on(async {
        let connection = herd_net::connect(&join).await.expect("connect");
        let welcome: ServerMessage =
            herd_net::say_hello(&connection, &key, hello(vec![taken, another, 987_654_321]))
                .await
                .expect("hello");
        match welcome {
            ServerMessage::Welcome { unneeded, .. } => {
                assert_eq!(unneeded, vec![taken, another, 987_654_321]);
            }
            other => panic!("unexpected {other:?}"),
        }
        let connection = herd_net::connect(&join).await.expect("connect");
        let too_many = (1..=herd_protocol::MAX_HELD_REPLICAS as u64 + 1).collect();
        let refused: ServerMessage = herd_net::say_hello(&connection, &key, hello(too_many))
            .await
            .expect("an answer");
        match refused {
            ServerMessage::Error { code, message } => {
                assert_eq!(code, ErrorCode::Malformed);
                assert!(message.contains("at most 4096 replicas"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    });
}

/// A worker whose connection is lost while it fetches a unit's input, and whose replica times
/// out and is decided by others meanwhile, does not run it once it reconnects: the welcome says
/// it is no longer needed, and the volunteer's machine is spared the work.
#[test]
fn a_worker_back_after_its_unit_was_decided_drops_the_replica_it_had_not_started() {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let port = herd_e2e::free_udp_port();
    let mut coordinator = Coordinator::start(root.path(), port).expect("coordinator");
    let join = coordinator.join.clone();
    // 2 MiB at 64 KiB/s: half a minute of fetching, during which all else happens.
    let slow = herd_e2e::start_worker_with(
        root.path(),
        &join,
        "slow",
        "t",
        1,
        &["--always", "--pref", "download_kib_per_s=64"],
    )
    .expect("worker");
    let inputs = root.path().join("big-inputs");
    std::fs::create_dir_all(&inputs).expect("inputs dir");
    let text = herd_samples::mandelbrot_input((-2.0, -1.0), (0.5, 1.0), (16, 16), 50);
    let mut input = text.clone().into_bytes();
    input.resize(2 << 20, b' ');
    std::fs::write(inputs.join("padded"), &input).expect("write input");
    let batch = submit_with(
        &coordinator,
        root.path(),
        &inputs,
        false,
        &["--deadline", "3s"],
    );
    eventually(
        Duration::from_secs(30),
        "the slow worker to take the unit",
        || (spooled(root.path(), "slow", "assigned") == 1).then_some(()),
    );
    // Its deadline passes mid-fetch; two others take the unit and validate it.
    let _others: Vec<Process> = VOLUNTEERS[..2]
        .iter()
        .map(|(name, team)| start_worker(root.path(), &join, name, team, 1).expect("worker"))
        .collect();
    eventually(Duration::from_secs(60), "the unit validated", || {
        (validated_here(&coordinator, batch) == 1).then_some(())
    });
    let log = std::fs::read_to_string(&slow.log).expect("log");
    assert!(
        !log.contains("2097152 bytes in"),
        "the slow worker finished its fetch before the test could interrupt it"
    );
    // The coordinator restarts: the slow worker's fetch fails, and it reconnects.
    coordinator.process.kill();
    drop(coordinator);
    let coordinator = Coordinator::start(root.path(), port).expect("restart");
    eventually(
        Duration::from_secs(90),
        "the slow worker to drop its replica",
        || {
            std::fs::read_to_string(&slow.log)
                .is_ok_and(|log| log.contains("is no longer needed"))
                .then_some(())
        },
    );
    let log = std::fs::read_to_string(&slow.log).expect("log");
    assert!(
        !log.contains("slot 0: replica"),
        "it ran the replica:\n{log}"
    );
    assert_eq!(spooled(root.path(), "slow", "assigned"), 0);
    super::check_results(
        &coordinator,
        root.path(),
        batch,
        &[("padded".to_string(), text)],
    );
}
