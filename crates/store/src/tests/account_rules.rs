//! The behaviour suite's accounts: names unique ignoring case, machines attached by account
//! key, keys replaced and revoked, invitations spent once, and anonymous names held by the
//! machine that first gave them. Every test on both backends.

use super::{CreateUploaded, Kind, Subject, batch, key, mirrored, open_store, success};
use crate::{StoreError, Want};

fn volunteer_team(store: &Subject, name: &str) -> Option<String> {
    store
        .credit_totals(0)
        .wait()
        .expect("credit")
        .volunteers
        .into_iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("volunteer {name} is listed"))
        .team
}

fn accounts_are_unique_ignoring_case_and_their_key_attaches_every_machine(kind: Kind) {
    let store = open_store(kind);
    let ada = store
        .create_account("Ada", Some("engines"), "key-1", None, None, 7)
        .wait()
        .expect("account");
    assert_eq!(
        (ada.name.as_str(), ada.team.as_deref(), ada.has_key),
        ("Ada", Some("engines"), true)
    );
    // The same name in another case, or with spaces around it, is taken: refused by name.
    for taken in ["ada", "ADA", " Ada "] {
        match store
            .create_account(taken, None, "key-2", None, None, 8)
            .wait()
        {
            Err(StoreError::Taken(message)) => assert!(message.contains("`Ada`"), "{message}"),
            other => panic!("{taken:?}: unexpected {other:?}"),
        }
    }
    assert_eq!(
        store.account("aDa").wait().expect("account").map(|a| a.id),
        Some(ada.id)
    );
    assert_eq!(store.account("bob").wait().expect("account"), None);
    // Two machines attach with the key; both compute for the account, under its name.
    let first = store
        .attach_host(&key(1), "key-1", None, 4, 9)
        .wait()
        .expect("attach");
    let second = store
        .attach_host(&key(2), "key-1", None, 2, 9)
        .wait()
        .expect("attach");
    assert_eq!((first.volunteer_id, second.volunteer_id), (ada.id, ada.id));
    assert_eq!(first.volunteer, "Ada");
    // A key no account holds attaches nothing, and says it is unknown, not revoked.
    assert!(matches!(
        store.attach_host(&key(3), "key-9", None, 1, 9).wait(),
        Err(StoreError::UnknownAccount { revoked: false })
    ));
    assert_eq!(store.hosts(9).wait().expect("hosts").len(), 2);
    // The key proves the account: a machine attached with it may move it to another team.
    store
        .attach_host(&key(2), "key-1", Some("analysts"), 2, 10)
        .wait()
        .expect("attach");
    assert_eq!(volunteer_team(&store, "Ada").as_deref(), Some("analysts"));
    // A machine naming no team leaves it.
    store
        .attach_host(&key(1), "key-1", None, 4, 11)
        .wait()
        .expect("attach");
    assert_eq!(volunteer_team(&store, "Ada").as_deref(), Some("analysts"));
    // Nobody reaches the account by its name alone, in any case.
    for name in ["Ada", "ada"] {
        match store.register_host(&key(5), name, None, 1, 12).wait() {
            Err(StoreError::NotAllowed(message)) => {
                assert!(message.contains("account key"), "{message}")
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    mirrored(&store);
}

fn a_replaced_or_revoked_key_attaches_nothing_and_says_it_was_revoked(kind: Kind) {
    let store = open_store(kind);
    store
        .create_account("ada", None, "key-1", None, None, 0)
        .wait()
        .expect("account");
    // A new key replaces the old one, which the change names so it can stop its machines.
    let change = store
        .set_account_key("ADA", Some("key-2"))
        .wait()
        .expect("new key")
        .expect("an account");
    assert_eq!(change.replaced.as_deref(), Some("key-1"));
    assert!(matches!(
        store.attach_host(&key(1), "key-1", None, 1, 1).wait(),
        Err(StoreError::UnknownAccount { revoked: true })
    ));
    let host = store
        .attach_host(&key(1), "key-2", None, 1, 1)
        .wait()
        .expect("the new key attaches");
    assert_eq!(host.volunteer_id, change.account.id);
    // Revoked: no key at all now.
    let revoked = store
        .set_account_key("ada", None)
        .wait()
        .expect("revoke")
        .expect("an account");
    assert_eq!(revoked.replaced.as_deref(), Some("key-2"));
    assert!(!revoked.account.has_key);
    assert!(matches!(
        store.attach_host(&key(1), "key-2", None, 1, 2).wait(),
        Err(StoreError::UnknownAccount { revoked: true })
    ));
    // Its machines cannot fall back on its name either.
    assert!(matches!(
        store.register_host(&key(1), "ada", None, 1, 2).wait(),
        Err(StoreError::NotAllowed(_))
    ));
    // No such account.
    assert_eq!(
        store
            .set_account_key("nobody", Some("key-3"))
            .wait()
            .expect("no account"),
        None
    );
    // A key again, and the machine is back.
    store
        .set_account_key("ada", Some("key-4"))
        .wait()
        .expect("new key")
        .expect("an account");
    assert_eq!(
        store
            .attach_host(&key(1), "key-4", None, 1, 3)
            .wait()
            .expect("attach")
            .host_id,
        host.host_id
    );
    mirrored(&store);
}

fn an_invitation_lets_one_sign_up_in_and_a_refused_one_leaves_no_account(kind: Kind) {
    let store = open_store(kind);
    store
        .create_invitation("code-1", 0)
        .wait()
        .expect("invitation");
    store
        .create_account("ada", None, "key-1", None, Some("code-1"), 1)
        .wait()
        .expect("the invitation lets ada in");
    for (name, code) in [("bob", "code-1"), ("carol", "code-9")] {
        match store
            .create_account(name, None, "key-2", None, Some(code), 2)
            .wait()
        {
            Err(StoreError::NotAllowed(message)) => {
                assert!(message.contains("invitation"), "{message}")
            }
            other => panic!("{name}: unexpected {other:?}"),
        }
        assert_eq!(store.account(name).wait().expect("account"), None);
    }
    // The refused sign-ups' key is not taken either: the next account may hold it.
    store
        .create_account("dave", None, "key-2", None, None, 3)
        .wait()
        .expect("account");
}

fn an_anonymous_name_belongs_to_the_machine_that_first_gave_it(kind: Kind) {
    let store = open_store(kind);
    let first = store
        .register_host(&key(1), "ada", Some("real"), 4, 0)
        .wait()
        .expect("register");
    assert_eq!(first.volunteer, "ada");
    // Another machine giving the name, in any case and with any team, is refused by name, and
    // nothing changes: no host, no team.
    for (name, team) in [
        ("ada", Some("real")),
        ("ADA", None),
        ("ada", Some("mallory-team")),
    ] {
        match store.register_host(&key(9), name, team, 1, 2).wait() {
            Err(StoreError::NotAllowed(message)) => {
                assert!(message.contains("another machine"), "{message}");
            }
            other => panic!("{name}: unexpected {other:?}"),
        }
    }
    assert_eq!(store.hosts(0).wait().expect("hosts").len(), 1);
    assert!(
        store
            .credit_totals(0)
            .wait()
            .expect("credit")
            .teams
            .iter()
            .all(|t| t.name != "mallory-team")
    );
    // The name's own machine changes the team, or leaves it, and may give the name in
    // another case (it stays as first given).
    let again = store
        .register_host(&key(1), "ADA", Some("engines"), 4, 3)
        .wait()
        .expect("the name's own machine");
    assert_eq!(
        (again.host_id, again.volunteer.as_str()),
        (first.host_id, "ada")
    );
    assert_eq!(volunteer_team(&store, "ada").as_deref(), Some("engines"));
    store
        .register_host(&key(1), "ada", None, 4, 4)
        .wait()
        .expect("leaves the team");
    assert_eq!(volunteer_team(&store, "ada"), None);
    // Sign-up cannot take an anonymous name either.
    assert!(matches!(
        store
            .create_account("Ada", None, "key-1", None, None, 5)
            .wait(),
        Err(StoreError::Taken(_))
    ));
    mirrored(&store);
}

fn a_volunteer_from_before_accounts_gets_a_key_and_keeps_its_credit_and_machines(kind: Kind) {
    let store = open_store(kind);
    store
        .create_uploaded(&batch(1, 2), 0)
        .wait()
        .expect("batch");
    // Two volunteers as they existed before accounts: named by their machines.
    let ada = store
        .register_host(&key(1), "ada", Some("engines"), 1, 0)
        .wait()
        .expect("register");
    let bob = store
        .register_host(&key(2), "bob", None, 1, 0)
        .wait()
        .expect("register");
    for host in [ada.host_id, bob.host_id] {
        let work = store.assign(host, 1).wait().expect("assign").expect("work");
        store
            .record_report(host, work.replica_id, &success(b"out"), 2)
            .wait()
            .expect("report");
    }
    let credit_of = |name: &str| {
        store
            .credit_totals(10)
            .wait()
            .expect("credit")
            .volunteers
            .into_iter()
            .find(|v| v.name == name)
            .map(|v| (v.credit, v.replicas))
    };
    let before = credit_of("ada");
    assert_eq!(before, Some((3.0, 1)));
    let account = store.account("ada").wait().expect("account").expect("ada");
    assert!(!account.has_key);
    // The administrator hands ada a key: her machine attaches with it and is the same host of
    // the same account, with its credit and team.
    store
        .set_account_key("ada", Some("ada-key"))
        .wait()
        .expect("key")
        .expect("an account");
    let attached = store
        .attach_host(&key(1), "ada-key", None, 1, 20)
        .wait()
        .expect("attach");
    assert_eq!(
        (attached.host_id, attached.volunteer_id),
        (ada.host_id, ada.volunteer_id)
    );
    assert_eq!(credit_of("ada"), before);
    assert_eq!(volunteer_team(&store, "ada").as_deref(), Some("engines"));
    // From now on her name alone reaches nothing, not even from her own machine.
    assert!(matches!(
        store.register_host(&key(1), "ada", None, 1, 21).wait(),
        Err(StoreError::NotAllowed(_))
    ));
    // Bob, without a key yet, still computes by name from his machine.
    store
        .register_host(&key(2), "bob", None, 1, 21)
        .wait()
        .expect("bob");
    mirrored(&store);
}

fn a_batch_asking_for_distinct_networks_takes_one_replica_of_a_unit_per_network(kind: Kind) {
    let mut store = open_store(kind);
    let mut one_unit = batch(1, 2);
    one_unit.policy.distinct_networks = true;
    store.create_uploaded(&one_unit, 0).wait().expect("batch");
    // Three accounts: two of them (one adversary's, say) behind one router.
    let hosts: Vec<_> = (1..=3)
        .map(|i| {
            store
                .register_host(&key(i), &format!("v{i}"), None, 1, 0)
                .wait()
                .expect("register")
        })
        .collect();
    let from = |network| Want {
        units: 1,
        network,
        ..Want::default()
    };
    let ask = |store: &Subject, host: usize, network| {
        store
            .exchange(hosts[host].host_id, Vec::new(), from(network), 1)
            .wait()
            .expect("exchange")
            .assignments
    };
    let first = ask(&store, 0, 50);
    assert_eq!(first.len(), 1);
    // Another account on the same network gets nothing of that unit, even after a reopening
    // (the network is kept with the replica).
    assert!(ask(&store, 1, 50).is_empty());
    store.reopen();
    assert!(ask(&store, 1, 50).is_empty());
    // A host on another network takes the second replica.
    assert_eq!(ask(&store, 2, 60).len(), 1);
    mirrored(&store);
    // An aborted replica frees its network, as it frees its volunteer.
    store
        .record_report(
            hosts[0].host_id,
            first[0].replica_id,
            &herd_protocol::Outcome::Aborted(herd_protocol::AbortReason::Cancelled),
            2,
        )
        .wait()
        .expect("abort");
    assert_eq!(ask(&store, 1, 50).len(), 1);
    mirrored(&store);
}

fn a_researcher_is_an_accounts_permission_to_submit_which_the_administrator_grants_and_withdraws(
    kind: Kind,
) {
    let store = open_store(kind);
    // A new researcher is a new account, with no key yet.
    let bob = store
        .add_researcher("bob", "bob-token", 1)
        .wait()
        .expect("researcher");
    let account = store.account("BOB").wait().expect("account").expect("bob");
    assert!(!account.has_key);
    // A name an account already has is refused: that account is granted the permission.
    store
        .create_account("ada", None, "ada-key", None, None, 2)
        .wait()
        .expect("account");
    match store.add_researcher("ada", "t", 3).wait() {
        Err(StoreError::Taken(message)) => assert!(message.contains("grant"), "{message}"),
        other => panic!("unexpected {other:?}"),
    }
    let ada = store
        .grant_submit("Ada", "ada-token", 4)
        .wait()
        .expect("grant")
        .expect("an account");
    assert_eq!(ada.name, "ada");
    assert_eq!(
        store
            .researcher_by_token("ada-token")
            .wait()
            .expect("token")
            .map(|r| r.id),
        Some(ada.id)
    );
    // Withdrawn: the token answers nothing, the batches stay the researcher's.
    let mut own = batch(1, 1);
    own.researcher_id = ada.id;
    let batch_id = store.create_uploaded(&own, 5).wait().expect("batch");
    assert_eq!(
        store.deny_submit("ada", 6).wait().expect("deny"),
        Some(true)
    );
    assert_eq!(
        store
            .researcher_by_token("ada-token")
            .wait()
            .expect("token"),
        None
    );
    assert_eq!(
        store.deny_submit("ada", 7).wait().expect("deny"),
        Some(false)
    );
    assert_eq!(store.deny_submit("nobody", 7).wait().expect("deny"), None);
    assert_eq!(
        store.batch_owner(batch_id).wait().expect("owner"),
        Some(ada.id)
    );
    // Granted again: the same researcher (its batches), a new token, the old one still dead.
    let again = store
        .grant_submit("ada", "ada-token-2", 8)
        .wait()
        .expect("grant")
        .expect("an account");
    assert_eq!(again.id, ada.id);
    assert_eq!(
        store
            .researcher_by_token("ada-token")
            .wait()
            .expect("token"),
        None
    );
    assert!(
        store
            .researcher_by_token("ada-token-2")
            .wait()
            .expect("token")
            .is_some()
    );
    assert_eq!(
        store.grant_submit("nobody", "t", 9).wait().expect("grant"),
        None
    );
    // Bob's permission is his own.
    assert!(
        store
            .researcher_by_token("bob-token")
            .wait()
            .expect("token")
            .is_some_and(|r| r.id == bob.id)
    );
}

fn a_batch_needing_a_seasoned_host_keeps_a_place_for_one_and_validates_only_with_one(kind: Kind) {
    let mut store = open_store(kind);
    let hosts: Vec<_> = (1..=4)
        .map(|i| {
            store
                .register_host(&key(i), &format!("v{i}"), None, 1, 0)
                .wait()
                .expect("register")
        })
        .collect();
    let host = |i: usize| hosts[i].host_id;
    let report = |store: &Subject, host: u64, replica: u64, output: &[u8]| {
        store
            .record_report(host, replica, &success(output), 5)
            .wait()
            .expect("report")
    };
    // History: hosts 0 and 1 validate a unit of an ordinary batch, one valid result each.
    let mut history = batch(1, 2);
    history.units[0].name = "history".into();
    history.units[0].input = crate::ContentHash::of(b"history");
    store.create_uploaded(&history, 0).wait().expect("batch");
    for i in [0, 1] {
        let a = store
            .assign(host(i), 1)
            .wait()
            .expect("assign")
            .expect("work");
        report(&store, host(i), a.replica_id, b"h");
    }
    // A batch whose quorums need a host with at least one valid result.
    let mut seasoned = batch(1, 2);
    seasoned.policy.seasoned_after = Some(1);
    store.create_uploaded(&seasoned, 2).wait().expect("batch");
    // A fresh host may take the first place; the last is kept for a seasoned host, even after
    // a reopening (whether a replica's host was seasoned is kept with it).
    let first = store
        .assign(host(2), 3)
        .wait()
        .expect("assign")
        .expect("work");
    assert_eq!(store.assign(host(3), 3).wait().expect("assign"), None);
    store.reopen();
    assert_eq!(store.assign(host(3), 3).wait().expect("assign"), None);
    mirrored(&store);
    let second = store
        .assign(host(0), 3)
        .wait()
        .expect("assign")
        .expect("work");
    assert_eq!(second.unit_id, first.unit_id);
    report(&store, host(2), first.replica_id, b"s");
    assert_eq!(
        report(&store, host(0), second.replica_id, b"s"),
        crate::ReportEffect::Validated {
            unit_id: first.unit_id
        }
    );
    // Host 2 has a history now, and counts as seasoned for the next batch.
    let line = |store: &Subject, id: u64| {
        store
            .hosts(5)
            .wait()
            .expect("hosts")
            .into_iter()
            .find(|h| h.id == id)
            .expect("a host")
    };
    assert_eq!(line(&store, host(2)).valid, 1);
    mirrored(&store);
}

on_both_backends!(
    a_batch_needing_a_seasoned_host_keeps_a_place_for_one_and_validates_only_with_one,
    a_researcher_is_an_accounts_permission_to_submit_which_the_administrator_grants_and_withdraws,
    a_batch_asking_for_distinct_networks_takes_one_replica_of_a_unit_per_network,
    a_volunteer_from_before_accounts_gets_a_key_and_keeps_its_credit_and_machines,
    accounts_are_unique_ignoring_case_and_their_key_attaches_every_machine,
    a_replaced_or_revoked_key_attaches_nothing_and_says_it_was_revoked,
    an_invitation_lets_one_sign_up_in_and_a_refused_one_leaves_no_account,
    an_anonymous_name_belongs_to_the_machine_that_first_gave_it,
);
