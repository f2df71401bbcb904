//! Lifecycle tests, written as scenarios: replicas come and go, the verdict is checked at each step.

use herd_protocol::{ContentHash, Status};

use super::*;

fn result(output: &[u8], fuel: u64) -> RunResult {
    RunResult {
        status: Status::Success,
        fuel,
        output_len: output.len() as u64,
        output_hash: ContentHash::of(output),
    }
}

fn replica(id: u64, volunteer_id: u64, state: ReplicaState) -> Replica {
    Replica {
        id,
        volunteer_id,
        // Each volunteer on a network of its own, unless a test says otherwise.
        network: 1000 + volunteer_id,
        seasoned: false,
        state,
    }
}

fn in_progress(id: u64, volunteer_id: u64) -> Replica {
    replica(
        id,
        volunteer_id,
        ReplicaState::InProgress { deadline_ms: 1000 },
    )
}

fn reported(id: u64, volunteer_id: u64, output: &[u8]) -> Replica {
    replica(id, volunteer_id, ReplicaState::Reported(result(output, 10)))
}

#[test]
fn a_new_unit_wants_a_quorum_of_replicas() {
    let policy = Policy::with_quorum(2);
    assert_eq!(evaluate(&policy, &[]), Verdict::Open { wanted: 2 });
    assert_eq!(
        evaluate(&policy, &[in_progress(1, 1)]),
        Verdict::Open { wanted: 1 }
    );
    assert_eq!(
        evaluate(&policy, &[in_progress(1, 1), in_progress(2, 2)]),
        Verdict::Open { wanted: 0 }
    );
}

#[test]
fn agreement_validates_and_names_the_agreeing_replicas() {
    let policy = Policy::with_quorum(2);
    let verdict = evaluate(&policy, &[reported(1, 1, b"a"), reported(2, 2, b"a")]);
    assert_eq!(
        verdict,
        Verdict::Validated {
            canonical: result(b"a", 10),
            agreeing: vec![1, 2],
            disagreeing: vec![],
        }
    );
}

#[test]
fn a_disagreement_sends_a_third_replica_which_decides() {
    let policy = Policy::with_quorum(2);
    let split = [reported(1, 1, b"a"), reported(2, 2, b"b")];
    assert_eq!(evaluate(&policy, &split), Verdict::Open { wanted: 1 });
    let third = [
        reported(1, 1, b"a"),
        reported(2, 2, b"b"),
        reported(3, 3, b"b"),
    ];
    assert_eq!(
        evaluate(&policy, &third),
        Verdict::Validated {
            canonical: result(b"b", 10),
            agreeing: vec![2, 3],
            disagreeing: vec![1],
        }
    );
}

#[test]
fn the_same_output_with_different_fuel_is_a_disagreement() {
    let policy = Policy::with_quorum(2);
    let replicas = [
        reported(1, 1, b"a"),
        replica(2, 2, ReplicaState::Reported(result(b"a", 11))),
    ];
    assert_eq!(evaluate(&policy, &replicas), Verdict::Open { wanted: 1 });
}

#[test]
fn aborts_and_timeouts_are_replaced_until_the_error_limit() {
    let policy = Policy::with_quorum(2);
    let replicas = [replica(1, 1, ReplicaState::Aborted), reported(2, 2, b"a")];
    assert_eq!(evaluate(&policy, &replicas), Verdict::Open { wanted: 1 });
    let replicas: Vec<Replica> = (1..=8)
        .map(|i| {
            let state = if i % 2 == 0 {
                ReplicaState::Aborted
            } else {
                ReplicaState::TimedOut
            };
            replica(i, i, state)
        })
        .collect();
    assert_eq!(
        evaluate(&policy, &replicas[..7]),
        Verdict::Open { wanted: 2 }
    );
    assert!(matches!(
        evaluate(&policy, &replicas),
        Verdict::Failed { reason } if reason.contains("8 replicas aborted or timed out (limit 8)")
    ));
}

#[test]
fn endless_disagreement_fails_at_the_success_limit() {
    let policy = Policy::with_quorum(2);
    let replicas: Vec<Replica> = (1..=8).map(|i| reported(i, i, &i.to_le_bytes())).collect();
    assert_eq!(
        evaluate(&policy, &replicas[..7]),
        Verdict::Open { wanted: 1 }
    );
    assert!(matches!(
        evaluate(&policy, &replicas),
        Verdict::Failed { reason }
            if reason.contains("no agreement among 8 successful replicas (limit 8)")
    ));
}

#[test]
fn the_total_limit_ends_a_unit_that_cannot_get_more_replicas() {
    let mut policy = Policy::with_quorum(2);
    policy.max_total_replicas = 3;
    let replicas = [
        reported(1, 1, b"a"),
        reported(2, 2, b"b"),
        replica(3, 3, ReplicaState::TimedOut),
    ];
    assert!(matches!(
        evaluate(&policy, &replicas),
        Verdict::Failed { reason } if reason.contains("no agreement after 3 replicas (limit 3)")
    ));
}

#[test]
fn extra_initial_replicas_are_sent_at_first_only() {
    let mut policy = Policy::with_quorum(2);
    policy.initial_replicas = 3;
    assert_eq!(evaluate(&policy, &[]), Verdict::Open { wanted: 3 });
    // Two agree while the third is still out: validated without waiting for it.
    let replicas = [
        reported(1, 1, b"a"),
        reported(2, 2, b"a"),
        in_progress(3, 3),
    ];
    assert!(matches!(
        evaluate(&policy, &replicas),
        Verdict::Validated { .. }
    ));
    // Two disagree, one in flight: that one may decide, no fourth yet.
    let replicas = [
        reported(1, 1, b"a"),
        reported(2, 2, b"b"),
        in_progress(3, 3),
    ];
    assert_eq!(evaluate(&policy, &replicas), Verdict::Open { wanted: 0 });
}

#[test]
fn one_volunteer_never_gets_two_replicas_of_a_unit() {
    let replicas = [in_progress(1, 7), reported(2, 8, b"a")];
    assert!(!may_assign_to(&replicas, 7));
    assert!(!may_assign_to(&replicas, 8));
    assert!(may_assign_to(&replicas, 9));
    // An aborted or timed-out replica can never count, so its volunteer may try again.
    let failed = [
        replica(1, 7, ReplicaState::Aborted),
        replica(2, 8, ReplicaState::TimedOut),
    ];
    assert!(may_assign_to(&failed, 7));
    assert!(may_assign_to(&failed, 8));
}

#[test]
fn replicas_past_their_deadline_expire() {
    let replicas = [
        replica(1, 1, ReplicaState::InProgress { deadline_ms: 500 }),
        replica(2, 2, ReplicaState::InProgress { deadline_ms: 1500 }),
        reported(3, 3, b"a"),
    ];
    assert_eq!(expired(&replicas, 1000), vec![1]);
    assert_eq!(expired(&replicas, 2000), vec![1, 2]);
}

#[test]
fn quorum_one_validates_on_the_first_success() {
    let policy = Policy::with_quorum(1);
    assert!(matches!(
        evaluate(&policy, &[reported(1, 1, b"a")]),
        Verdict::Validated { .. }
    ));
}

#[test]
fn policies_out_of_range_are_refused_by_name() {
    let mut policy = Policy::with_quorum(0);
    assert!(policy.validate().unwrap_err().0.contains("quorum 0"));
    policy = Policy::with_quorum(2);
    policy.max_total_replicas = 1;
    let message = policy.validate().unwrap_err().0;
    assert!(
        message.contains("initial_replicas 2 is outside"),
        "{message}"
    );
    policy = Policy::with_quorum(2);
    policy.initial_replicas = 1;
    assert!(
        policy
            .validate()
            .unwrap_err()
            .0
            .contains("initial_replicas 1")
    );
    policy = Policy::with_quorum(2);
    policy.max_success_replicas = 1;
    assert!(
        policy
            .validate()
            .unwrap_err()
            .0
            .contains("max_success_replicas 1")
    );
    assert!(Policy::with_quorum(3).validate().is_ok());
}

#[test]
fn credit_is_fuel_over_a_billion() {
    assert_eq!(credit_for_fuel(2_500_000_000), 2.5);
}

#[test]
fn recent_average_credit_halves_in_a_week_and_converges_to_the_daily_rate() {
    let day = 86_400_000;
    let rac = RecentAverage::default().granted(10.0, 0);
    let week_later = rac.at(7 * day);
    assert!((week_later.per_day - rac.per_day / 2.0).abs() < 1e-9);
    // 100 credits a day, every day, for a year: the average is 100 a day.
    let mut rac = RecentAverage::default();
    for d in 0..365 {
        rac = rac.granted(100.0, d * day);
    }
    assert!((rac.at(364 * day).per_day - 100.0).abs() < 6.0, "{rac:?}");
    // Time passed in out of order changes nothing.
    assert_eq!(rac.at(0), rac);
}

#[test]
fn trust_grows_with_checked_valid_results_and_an_invalid_one_ends_it() {
    let mut policy = Policy::with_quorum(2);
    let trust = HostTrust::default()
        .after(TrustChange::ValidChecked)
        .after(TrustChange::ValidChecked);
    assert_eq!(trust.consecutive_valid, 2);
    assert!(
        !trust.may_go_alone(&policy, PPM - 1),
        "adaptive replication is off by default"
    );
    policy.adaptive = Some(Adaptive {
        trust_after: 2,
        spot_check_ppm: 100_000,
    });
    assert!(trust.may_go_alone(&policy, 100_000));
    assert!(!trust.may_go_alone(&policy, 99_999), "a spot check");
    assert!(
        !trust
            .after(TrustChange::Invalid)
            .may_go_alone(&policy, PPM - 1)
    );
    let quorum_one = Policy {
        adaptive: policy.adaptive,
        ..Policy::with_quorum(1)
    };
    assert!(
        !trust.may_go_alone(&quorum_one, PPM - 1),
        "quorum 1 has nothing to save"
    );
    let alone = policy.alone();
    assert_eq!((alone.quorum, alone.initial_replicas), (1, 1));
    assert_eq!(alone.max_error_replicas, policy.max_error_replicas);
}

#[test]
fn adaptive_settings_out_of_range_are_refused_by_name() {
    let mut policy = Policy::with_quorum(2);
    policy.adaptive = Some(Adaptive {
        trust_after: 0,
        spot_check_ppm: 0,
    });
    assert!(policy.validate().unwrap_err().0.contains("trust_after"));
    policy.adaptive = Some(Adaptive {
        trust_after: 5,
        spot_check_ppm: PPM + 1,
    });
    assert!(policy.validate().unwrap_err().0.contains("spot_check_ppm"));
    policy.adaptive = Some(Adaptive::DEFAULT);
    assert_eq!(policy.validate(), Ok(()));
}

#[test]
fn a_network_is_an_ipv4_24_or_an_ipv6_48_and_never_the_unknown_one() {
    let of = |text: &str| network_of(text.parse().expect("an address"));
    assert_eq!(of("192.0.2.1"), of("192.0.2.254"));
    assert_ne!(of("192.0.2.1"), of("192.0.3.1"));
    assert_eq!(of("2001:db8:5::1"), of("2001:db8:5:ffff::9"));
    assert_ne!(of("2001:db8:5::1"), of("2001:db8:6::1"));
    assert_eq!(of("::ffff:192.0.2.7"), of("192.0.2.1"));
    // IPv4 and IPv6 numbers never meet, and none is the unknown network.
    assert_ne!(of("0.0.0.1"), of("::1"));
    for address in ["0.0.0.0", "::", "127.0.0.1", "255.255.255.255"] {
        assert_ne!(of(address), UNKNOWN_NETWORK, "{address}");
    }
}

#[test]
fn with_distinct_networks_a_network_holding_a_live_replica_takes_no_other() {
    let mut policy = Policy::with_quorum(2);
    let mut replicas = vec![in_progress(1, 7), reported(2, 8, b"x")];
    replicas[0].network = 50;
    replicas[1].network = 60;
    // Off: any network may take one.
    assert!(network_may_take(&policy, &replicas, 50));
    policy.distinct_networks = true;
    assert!(!network_may_take(&policy, &replicas, 50));
    assert!(!network_may_take(&policy, &replicas, 60));
    assert!(network_may_take(&policy, &replicas, 70));
    // A replica that aborted or timed out frees its network, as it frees its volunteer.
    replicas[0].state = ReplicaState::Aborted;
    assert!(network_may_take(&policy, &replicas, 50));
    // A host whose network is not known is not held back by the rule.
    assert!(network_may_take(&policy, &replicas, UNKNOWN_NETWORK));
}

#[test]
fn under_the_seasoned_rule_a_quorum_needs_one_seasoned_replica_and_keeps_it_a_place() {
    let policy = Policy {
        seasoned_after: Some(5),
        ..Policy::with_quorum(2)
    };
    assert!(!is_seasoned(&policy, 4) && is_seasoned(&policy, 5));
    assert!(
        is_seasoned(&Policy::with_quorum(2), 0),
        "no rule: every host counts"
    );
    let seasoned = |mut r: Replica| {
        r.seasoned = true;
        r
    };
    // Two fresh hosts agree: not enough; the unit wants one more, and only a seasoned host
    // may take it.
    let fresh = [reported(1, 1, b"a"), reported(2, 2, b"a")];
    assert_eq!(evaluate(&policy, &fresh), Verdict::Open { wanted: 1 });
    assert!(!seasoned_may_take(&policy, &fresh, false));
    assert!(seasoned_may_take(&policy, &fresh, true));
    // A seasoned host agreeing validates it, and every agreeing replica earns credit.
    let mut with = fresh.to_vec();
    with.push(seasoned(reported(3, 3, b"a")));
    assert_eq!(
        evaluate(&policy, &with),
        Verdict::Validated {
            canonical: result(b"a", 10),
            agreeing: vec![1, 2, 3],
            disagreeing: vec![],
        }
    );
    // A fresh host may take the first place of a new unit, not the last.
    assert!(seasoned_may_take(&policy, &[], false));
    let one = [in_progress(1, 1)];
    assert!(!seasoned_may_take(&policy, &one, false));
    // With a seasoned replica in flight, anyone may take the rest.
    let one_seasoned = [seasoned(in_progress(1, 1))];
    assert!(seasoned_may_take(&policy, &one_seasoned, false));
    // A seasoned host agreeing with one fresh one is a quorum.
    let pair = [seasoned(reported(1, 1, b"x")), reported(2, 2, b"x")];
    assert!(matches!(
        evaluate(&policy, &pair),
        Verdict::Validated { .. }
    ));
    // Without the rule nothing changes.
    assert!(matches!(
        evaluate(&Policy::with_quorum(2), &fresh),
        Verdict::Validated { .. }
    ));
    assert!(seasoned_may_take(&Policy::with_quorum(2), &one, false));
    let bad = Policy {
        seasoned_after: Some(0),
        ..Policy::with_quorum(2)
    };
    assert!(bad.validate().is_err());
}

#[test]
fn a_host_earns_its_cores_with_valid_results_and_loses_them_by_letting_replicas_time_out() {
    // New: two at once, whatever it claims; one more per valid result, up to its cores.
    assert_eq!(host_in_flight_cap(256, 0, 0), 2);
    assert_eq!(host_in_flight_cap(256, 5, 0), 7);
    assert_eq!(host_in_flight_cap(4, 100, 0), 4);
    assert_eq!(host_in_flight_cap(1, 0, 0), 1);
    // Each timeout in a row halves it, never below one.
    assert_eq!(host_in_flight_cap(16, 100, 1), 8);
    assert_eq!(host_in_flight_cap(16, 100, 3), 2);
    assert_eq!(host_in_flight_cap(16, 100, 40), 1);
}

#[test]
fn a_volunteer_may_take_a_unit_again_after_an_error_but_not_after_two() {
    let aborted = |id, volunteer| replica(id, volunteer, ReplicaState::Aborted);
    let timed_out = |id, volunteer| replica(id, volunteer, ReplicaState::TimedOut);
    assert!(may_assign_to(&[aborted(1, 7)], 7));
    assert!(!may_assign_to(&[aborted(1, 7), timed_out(2, 7)], 7));
    // Others' errors are theirs.
    assert!(may_assign_to(&[aborted(1, 8), aborted(2, 8)], 7));
    // Holding or having reported one bars it, as ever.
    assert!(!may_assign_to(&[in_progress(1, 7)], 7));
    assert!(!may_assign_to(&[aborted(1, 7), reported(2, 7, b"x")], 7));
}
