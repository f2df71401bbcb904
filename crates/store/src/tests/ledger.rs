//! The behaviour suite's ledger: balances that are always the sum of their movements, batches
//! paid at their bid as their units are validated, the queue by bid, an owner who can pay no more
//! falling to the free tier or pausing, grants, transfers and overdrafts. Every test on both
//! backends, and a property test of random sequences of every movement against a model.

use super::{CreateUploaded, Kind, Subject, batch, key, mirrored, open_store, success};
use crate::ledger::{Movement, price};
use crate::sql::args;
use crate::{Pricing, StoreError};

/// Fuel of one replica's work in [`success`]: three credits.
const FUEL: u64 = 3_000_000_000;
const CREDIT: u64 = herd_lifecycle::FUEL_PER_CREDIT;

/// Checks, in the database, that every account's balance is the sum of its movements: the
/// `credit` grants, less the revocations, plus the `ledger` rows.
pub(crate) fn every_balance_is_its_ledger_sum(store: &Subject) {
    store
        .operation(Box::new(|tx, _| {
            let rows = tx.query(
                "SELECT v.name, v.balance,
                    CAST((SELECT COALESCE(SUM(c.fuel), 0) FROM credit c WHERE c.volunteer_id = v.id)
                      - (SELECT COALESCE(SUM(x.fuel), 0) FROM credit_revoked x
                         WHERE x.volunteer_id = v.id)
                      + (SELECT COALESCE(SUM(l.amount), 0) FROM ledger l
                         WHERE l.account_id = v.id) AS BIGINT)
                 FROM volunteers v",
                &args![],
            )?;
            for row in rows {
                let (name, balance, sum) = (row.text(0)?, row.int(1)?, row.int(2)?);
                if balance != sum {
                    return Err(StoreError::Corrupt(format!(
                        "{name}'s balance is {balance} but its movements add up to {sum}"
                    )));
                }
            }
            Ok(())
        }))
        .wait()
        .expect("every balance is its ledger's sum");
}

/// An account with a key (`key-NAME`), one machine attached (host key `host`), and the
/// permission to submit; returns (account id, host id, researcher id).
fn member(store: &Subject, name: &str, host: u8) -> (u64, u64, u64) {
    let account = store
        .create_account(name, None, &format!("key-{name}"), None, None, 0)
        .wait()
        .expect("account");
    let attached = store
        .attach_host(&key(host), &format!("key-{name}"), None, 4, 0)
        .wait()
        .expect("attach");
    let researcher = store
        .grant_submit(name, &format!("token-{name}"), 0)
        .wait()
        .expect("grant")
        .expect("an account");
    (account.id, attached.host_id, researcher.id)
}

fn balance(store: &Subject, name: &str) -> i64 {
    store
        .statement(name, 10)
        .wait()
        .expect("statement")
        .expect("an account")
        .balance
}

/// A batch of `units` units, quorum 2, owned by `researcher` at `bid_milli`.
fn paying(
    researcher: u64,
    units: usize,
    bid_milli: u32,
    pause_when_broke: bool,
) -> crate::NewBatch {
    let mut new = batch(units, 2);
    new.researcher_id = researcher;
    new.pricing = Pricing {
        bid_milli,
        pause_when_broke,
    };
    // Unit names and inputs apart from every other batch's.
    for unit in &mut new.units {
        unit.name = format!("{researcher}-{bid_milli}-{}", unit.name);
        unit.input =
            crate::ContentHash::of(format!("{researcher}-{bid_milli}-{}", unit.seed).as_bytes());
    }
    new
}

/// Runs the next unit `a` and `b` are given to validation (both agree); returns its batch id.
fn validate_next(store: &Subject, a: u64, b: u64, now_ms: u64) -> u64 {
    let first = store
        .assign(a, now_ms)
        .wait()
        .expect("assign")
        .expect("work");
    let second = store
        .assign(b, now_ms)
        .wait()
        .expect("assign")
        .expect("work");
    assert_eq!(first.unit_id, second.unit_id, "both replicas of one unit");
    for (host, replica) in [(a, first.replica_id), (b, second.replica_id)] {
        store
            .record_report(host, replica, &success(b"agreed"), now_ms + 1)
            .wait()
            .expect("report");
    }
    first.batch_id
}

fn a_batch_is_paid_at_its_bid_as_its_units_are_validated_and_served_before_free_ones(kind: Kind) {
    let store = open_store(kind);
    let (_, ada_host, _) = member(&store, "ada", 1);
    let (_, bob_host, _) = member(&store, "bob", 2);
    let (_, _, cy) = member(&store, "cy", 3);
    // Ada and Bob earn by computing a free batch of the project's.
    store
        .create_uploaded(&batch(2, 2), 0)
        .wait()
        .expect("batch");
    validate_next(&store, ada_host, bob_host, 10);
    validate_next(&store, ada_host, bob_host, 10);
    assert_eq!(balance(&store, "ada"), 2 * FUEL as i64);
    // The project pays nothing for a free batch.
    assert_eq!(balance(&store, "tester"), 0);
    // Cy has nothing: the project grants an allowance, then Cy's batches bid.
    let granted = store
        .grant_credit("CY", 10 * CREDIT, Some("lab allowance"), 20)
        .wait()
        .expect("grant");
    assert_eq!(granted.kind, Movement::Granted);
    let free = store
        .create_uploaded(&paying(cy, 1, 0, false), 30)
        .wait()
        .expect("free batch");
    let cheap = store
        .create_uploaded(&paying(cy, 1, 1000, false), 30)
        .wait()
        .expect("bid 1");
    let dear = store
        .create_uploaded(&paying(cy, 1, 1500, false), 30)
        .wait()
        .expect("bid 1.5");
    // Served by bid, whatever the order of creation: the dearer first, the free batch last.
    assert_eq!(validate_next(&store, ada_host, bob_host, 40), dear);
    assert_eq!(
        balance(&store, "cy"),
        (10 * CREDIT - price(FUEL, 1500)) as i64
    );
    assert_eq!(validate_next(&store, ada_host, bob_host, 50), cheap);
    assert_eq!(
        balance(&store, "cy"),
        (10 * CREDIT - price(FUEL, 1500) - FUEL) as i64,
        "a bid of 1 pays exactly the agreed fuel, once, whatever the quorum"
    );
    assert_eq!(validate_next(&store, ada_host, bob_host, 60), free);
    let statement = store
        .statement("cy", 10)
        .wait()
        .expect("statement")
        .expect("cy");
    assert_eq!(statement.spent, (price(FUEL, 1500) + FUEL) as i64);
    assert_eq!(statement.granted, (10 * CREDIT) as i64);
    assert_eq!(statement.balance, statement.sum_of_movements());
    // Newest first: the two units paid for, then the grant.
    let kinds: Vec<(Movement, Option<u64>)> = statement
        .recent
        .iter()
        .map(|row| (row.kind, row.batch_id))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (Movement::Spent, Some(cheap)),
            (Movement::Spent, Some(dear)),
            (Movement::Granted, None)
        ]
    );
    assert_eq!(statement.recent[2].memo.as_deref(), Some("lab allowance"));
    let ada = store
        .statement("ada", 3)
        .wait()
        .expect("statement")
        .expect("ada");
    assert_eq!((ada.earned, ada.recent.len()), (5 * FUEL as i64, 3));
    assert!(ada.recent.iter().all(|row| row.kind == Movement::Earned));
    every_balance_is_its_ledger_sum(&store);
    mirrored(&store);
}

fn an_owner_who_cannot_pay_is_served_as_free_or_paused_and_never_below_zero(kind: Kind) {
    let store = open_store(kind);
    let (ada, ada_host, _) = member(&store, "ada", 1);
    let (_, bob_host, _) = member(&store, "bob", 2);
    let (_, _, cy) = member(&store, "cy", 3);
    let (_, _, di) = member(&store, "di", 4);
    // Cy can pay for one and a half units at a bid of 1; Di for half of one at a bid of 2.
    store
        .grant_credit("cy", FUEL + FUEL / 2, None, 0)
        .wait()
        .expect("grant");
    store
        .grant_credit("di", FUEL, None, 0)
        .wait()
        .expect("grant");
    // The project's free batch has priority 1; Cy's asks for 5, which it keeps only while it
    // pays.
    let free = store
        .create_uploaded(
            &crate::NewBatch {
                priority: 1,
                ..paying(1, 1, 0, false)
            },
            10,
        )
        .wait()
        .expect("batch");
    let falls = store
        .create_uploaded(
            &crate::NewBatch {
                priority: 5,
                ..paying(cy, 3, 1000, false)
            },
            10,
        )
        .wait()
        .expect("batch");
    let pauses = store
        .create_uploaded(&paying(di, 2, 2000, true), 10)
        .wait()
        .expect("batch");
    assert_eq!(store.refresh_funding().wait().expect("refresh"), 0);
    // Di's unit first (the higher bid), for which only half is left: Di pays what there is,
    // and no more.
    assert_eq!(validate_next(&store, ada_host, bob_host, 20), pauses);
    assert_eq!(balance(&store, "di"), 0);
    // The coordinator learns it: Di's batch waits.
    assert_eq!(store.refresh_funding().wait().expect("refresh"), 1);
    // Cy's units, the first paid in full, the second with the half left.
    assert_eq!(validate_next(&store, ada_host, bob_host, 30), falls);
    assert_eq!(balance(&store, "cy"), (FUEL / 2) as i64);
    assert_eq!(validate_next(&store, ada_host, bob_host, 40), falls);
    assert_eq!(balance(&store, "cy"), 0);
    // Cy's batch falls to the free tier, at priority 0: after the project's free batch.
    assert_eq!(store.refresh_funding().wait().expect("refresh"), 1);
    assert_eq!(validate_next(&store, ada_host, bob_host, 50), free);
    assert_eq!(validate_next(&store, ada_host, bob_host, 60), falls);
    assert_eq!(balance(&store, "cy"), 0, "served as free: nothing paid");
    assert_eq!(
        store.assign(ada_host, 70).wait().expect("assign"),
        None,
        "Di's batch waits"
    );
    // Credit Ada earned, sent to Di, resumes it at its bid.
    let sent = store
        .send_credit(ada, "di", 2 * FUEL, Some("for the lab"), 80)
        .wait()
        .expect("send");
    assert!(
        store
            .transfer_happened(sent.row_id)
            .wait()
            .expect("happened")
    );
    // Two changes: Di can pay, and Cy, whose batch is done, owns no paying batch.
    assert_eq!(store.refresh_funding().wait().expect("refresh"), 2);
    assert_eq!(validate_next(&store, ada_host, bob_host, 90), pauses);
    assert_eq!(balance(&store, "di"), 0);
    let statement = store
        .statement("di", 10)
        .wait()
        .expect("statement")
        .expect("di");
    assert_eq!(
        (statement.spent, statement.received, statement.granted),
        ((3 * FUEL) as i64, (2 * FUEL) as i64, FUEL as i64)
    );
    assert_eq!(statement.recent[0].kind, Movement::Spent);
    assert_eq!(statement.recent[1].kind, Movement::Received);
    assert_eq!(statement.recent[1].counterpart.as_deref(), Some("ada"));
    assert_eq!(statement.recent[1].memo.as_deref(), Some("for the lab"));
    let ada = store
        .statement("ada", 10)
        .wait()
        .expect("statement")
        .expect("ada");
    assert_eq!(ada.sent, (2 * FUEL) as i64);
    assert_eq!(ada.balance, (6 * FUEL - 2 * FUEL) as i64);
    every_balance_is_its_ledger_sum(&store);
    mirrored(&store);
}

fn transfers_never_overdraw_unless_the_project_allows_and_name_what_they_refuse(kind: Kind) {
    let store = open_store(kind);
    let (ada, _, _) = member(&store, "ada", 1);
    member(&store, "bob", 2);
    store
        .grant_credit("ada", 5 * CREDIT, None, 0)
        .wait()
        .expect("grant");
    let refused = |result: Result<crate::ledger::Transfer, StoreError>| match result {
        Err(StoreError::NotAllowed(message)) => message,
        other => panic!("unexpected {other:?}"),
    };
    let message = refused(store.send_credit(ada, "bob", 6 * CREDIT, None, 1).wait());
    assert!(
        message.contains("balance is 5 credit") && message.contains("sending 6"),
        "{message}"
    );
    for (to, amount, why) in [
        ("nobody", CREDIT, "no account called `nobody`"),
        ("ada", CREDIT, "to itself"),
        ("bob", 0, "more than 0"),
    ] {
        match store.send_credit(ada, to, amount, None, 1).wait() {
            Err(StoreError::Invalid(message)) => assert!(message.contains(why), "{message}"),
            other => panic!("{to} {amount}: unexpected {other:?}"),
        }
    }
    assert!(matches!(
        store.grant_credit("ada", 1, Some("a\nb"), 1).wait(),
        Err(StoreError::Invalid(_))
    ));
    // The whole balance may go; with an overdraft of 2, two more.
    let sent = store
        .send_credit(ada, "Bob", 5 * CREDIT, None, 2)
        .wait()
        .expect("send");
    assert_eq!((sent.to.as_str(), sent.amount), ("bob", 5 * CREDIT));
    assert!(
        store
            .transfer_happened(sent.row_id)
            .wait()
            .expect("happened")
    );
    refused(store.send_credit(ada, "bob", 1, None, 3).wait());
    store
        .set_overdraft("ada", Some(2 * CREDIT))
        .wait()
        .expect("overdraft");
    let message = refused(store.send_credit(ada, "bob", 3 * CREDIT, None, 4).wait());
    assert!(message.contains("overdraft of 2"), "{message}");
    store
        .send_credit(ada, "bob", 2 * CREDIT, None, 5)
        .wait()
        .expect("send");
    assert_eq!(balance(&store, "ada"), -2 * CREDIT as i64);
    assert_eq!(balance(&store, "bob"), 7 * CREDIT as i64);
    // The project's own account has no limit.
    let project = store
        .account("tester")
        .wait()
        .expect("a")
        .expect("tester")
        .id;
    store
        .send_credit(project, "bob", 100 * CREDIT, None, 6)
        .wait()
        .expect("the project sends what it likes");
    let statement = store
        .statement("tester", 5)
        .wait()
        .expect("s")
        .expect("tester");
    assert_eq!(
        (statement.balance, statement.overdraft),
        (-100 * CREDIT as i64, None)
    );
    assert!(
        !store
            .transfer_happened(u64::MAX >> 2)
            .wait()
            .expect("asked")
    );
    // Everything stays after a reopen.
    let mut store = store;
    store.reopen();
    assert_eq!(balance(&store, "bob"), 107 * CREDIT as i64);
    every_balance_is_its_ledger_sum(&store);
}

fn an_account_has_one_api_token_which_its_submit_permission_answers_to_as_well(kind: Kind) {
    let store = open_store(kind);
    let ada = store
        .create_account("ada", None, "key-ada", Some("token-1"), None, 0)
        .wait()
        .expect("account");
    let by = |hash: &str| {
        store
            .account_by_token(hash)
            .wait()
            .expect("lookup")
            .map(|a| a.id)
    };
    assert_eq!(by("token-1"), Some(ada.id));
    assert_eq!(by("key-ada"), None, "the account key is not its token");
    // The submit permission comes with a new token, which replaces the account's.
    let researcher = store
        .grant_submit("ada", "token-2", 1)
        .wait()
        .expect("grant")
        .expect("ada");
    assert_eq!((by("token-1"), by("token-2")), (None, Some(ada.id)));
    let submits = |hash: &str| {
        store
            .researcher_by_token(hash)
            .wait()
            .expect("lookup")
            .map(|r| r.id)
    };
    assert_eq!(submits("token-2"), Some(researcher.id));
    // Withdrawn, the token no longer submits but still speaks for the account's credit.
    store.deny_submit("ada", 2).wait().expect("deny");
    assert_eq!((submits("token-2"), by("token-2")), (None, Some(ada.id)));
    // A new token replaces it everywhere; an account with no token (from before) gets one.
    store
        .grant_submit("ada", "token-3", 3)
        .wait()
        .expect("grant");
    store
        .set_account_token("ADA", "token-4")
        .wait()
        .expect("token")
        .expect("ada");
    assert_eq!((by("token-3"), submits("token-3")), (None, None));
    assert_eq!(
        (by("token-4"), submits("token-4")),
        (Some(ada.id), Some(researcher.id))
    );
    assert_eq!(
        store
            .set_account_token("nobody", "t")
            .wait()
            .expect("token"),
        None
    );
    // The administrator's token is its account's too.
    let tester = store.account("tester").wait().expect("a").expect("tester");
    assert_eq!(by("token-hash"), Some(tester.id));
}

on_both_backends!(
    an_account_has_one_api_token_which_its_submit_permission_answers_to_as_well,
    a_batch_is_paid_at_its_bid_as_its_units_are_validated_and_served_before_free_ones,
    an_owner_who_cannot_pay_is_served_as_free_or_paused_and_never_below_zero,
    transfers_never_overdraw_unless_the_project_allows_and_name_what_they_refuse,
);

/// Random sequences of every movement against a model of what each balance must be.
mod random_movements {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        /// A one-unit batch of `owner` (3 is the project) at a bid, computed by two members.
        Compute {
            owner: usize,
            bid: usize,
            workers: (usize, usize),
        },
        Grant {
            to: usize,
            credits: u64,
        },
        Send {
            from: usize,
            to: usize,
            fuel: u64,
        },
        Overdraft {
            of: usize,
            credits: Option<u64>,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..4usize, 0..3usize, 0..3usize, 1..3usize).prop_map(|(owner, bid, a, step)| {
                Op::Compute {
                    owner,
                    bid,
                    workers: (a, (a + step) % 3),
                }
            }),
            (0..4usize, 0..4u64).prop_map(|(to, credits)| Op::Grant { to, credits }),
            (0..4usize, 0..4usize, 0..12_000_000_000u64).prop_map(|(from, to, fuel)| Op::Send {
                from,
                to,
                fuel
            }),
            (0..3usize, proptest::option::of(0..3u64))
                .prop_map(|(of, credits)| Op::Overdraft { of, credits }),
        ]
    }

    const BIDS: [u32; 3] = [0, 1000, 2500];

    fn run(kind: Kind, ops: Vec<Op>) {
        let store = open_store(kind);
        let names = ["m0", "m1", "m2", "tester"];
        let members: Vec<(u64, u64, u64)> = (0..3)
            .map(|i| member(&store, names[i], i as u8 + 1))
            .collect();
        let project = store
            .account("tester")
            .wait()
            .expect("a")
            .expect("tester")
            .id;
        let account = |i: usize| if i == 3 { project } else { members[i].0 };
        let researcher = |i: usize| if i == 3 { 1 } else { members[i].2 };
        // The model: each balance, and each overdraft (`None`: no limit).
        let mut balances = [0i64; 4];
        let mut overdrafts = [Some(0i64), Some(0), Some(0), None];
        let available = |balance: i64, overdraft: Option<i64>| overdraft.map(|o| balance + o);
        for (n, op) in ops.into_iter().enumerate() {
            let now = n as u64 * 10;
            match op {
                Op::Compute {
                    owner,
                    bid,
                    workers: (a, b),
                } => {
                    let mut new = paying(researcher(owner), 1, BIDS[bid], false);
                    for unit in &mut new.units {
                        unit.name = format!("{n}");
                        unit.input = crate::ContentHash::of(&n.to_le_bytes());
                    }
                    store.create_uploaded(&new, now).wait().expect("batch");
                    validate_next(&store, members[a].1, members[b].1, now);
                    // The owner pays first (what is left, down to the overdraft), then the
                    // workers earn.
                    let wanted = price(FUEL, BIDS[bid]) as i64;
                    let paid = match available(balances[owner], overdrafts[owner]) {
                        None => wanted,
                        Some(left) => wanted.min(left.max(0)),
                    };
                    balances[owner] -= paid;
                    balances[a] += FUEL as i64;
                    balances[b] += FUEL as i64;
                }
                Op::Grant { to, credits } => {
                    let result = store
                        .grant_credit(names[to], credits * CREDIT, None, now)
                        .wait();
                    if credits == 0 {
                        assert!(matches!(result, Err(StoreError::Invalid(_))), "{result:?}");
                    } else {
                        result.expect("grant");
                        balances[to] += (credits * CREDIT) as i64;
                    }
                }
                Op::Send { from, to, fuel } => {
                    let result = store
                        .send_credit(account(from), names[to], fuel, None, now)
                        .wait();
                    let covered = available(balances[from], overdrafts[from])
                        .is_none_or(|left| left >= fuel as i64);
                    match result {
                        Ok(sent) => {
                            assert!(from != to && fuel > 0 && covered, "{from} {to} {fuel}");
                            assert!(store.transfer_happened(sent.row_id).wait().expect("asked"));
                            balances[from] -= fuel as i64;
                            balances[to] += fuel as i64;
                        }
                        Err(StoreError::Invalid(_)) => assert!(from == to || fuel == 0),
                        Err(StoreError::NotAllowed(_)) => assert!(!covered),
                        Err(other) => panic!("send: {other:?}"),
                    }
                }
                Op::Overdraft { of, credits } => {
                    let overdraft = credits.map(|c| c * CREDIT);
                    store
                        .set_overdraft(names[of], overdraft)
                        .wait()
                        .expect("overdraft");
                    overdrafts[of] = overdraft.map(|o| o as i64);
                }
            }
            for (i, name) in names.iter().enumerate() {
                let statement = store
                    .statement(name, 1)
                    .wait()
                    .expect("s")
                    .expect("account");
                assert_eq!(statement.balance, balances[i], "{name} after op {n}");
                assert_eq!(statement.balance, statement.sum_of_movements(), "{name}");
            }
        }
        every_balance_is_its_ledger_sum(&store);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn every_balance_is_the_sum_of_its_movements_on_sqlite(ops in proptest::collection::vec(op(), 1..30)) {
            run(Kind::Sqlite, ops);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn every_balance_is_the_sum_of_its_movements_on_postgres(ops in proptest::collection::vec(op(), 1..30)) {
            run(Kind::Postgres, ops);
        }
    }
}
