//! Tests of what only the SQLite backend has: its migrations from older schemas.

use herd_protocol::ContentHash;

use super::*;
use crate::Store;
use crate::tests::{CreateUploaded, batch};

/// A database at schema version 1 (the first release's) in `dir`, with `volunteers` in it.
fn version_1_database(dir: &std::path::Path, volunteers: &[&str]) -> std::path::PathBuf {
    let path = dir.join("old.sqlite");
    let old = rusqlite::Connection::open(&path).expect("open");
    old.execute_batch(SCHEMA).expect("schema v1");
    old.execute(
        "INSERT INTO meta (key, value) VALUES ('schema_version', 1)",
        [],
    )
    .expect("version");
    for name in volunteers {
        old.execute(
            "INSERT INTO volunteers (name, team) VALUES (?1, NULL)",
            [name],
        )
        .expect("row");
    }
    path
}

#[test]
fn a_version_1_database_is_migrated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = version_1_database(dir.path(), &["ada"]);
    {
        let old = rusqlite::Connection::open(&path).expect("open");
        old.execute(
            "INSERT INTO batches (module_hash, quorum, max_total_replicas, max_error_replicas,
                 replica_deadline_ms, fuel_limit, memory_limit_bytes, output_limit_bytes,
                 created_ms)
             VALUES (?1, 2, 16, 8, 1000, 1000, 1048576, 1024, 0)",
            [ContentHash::of(b"old module").to_hex()],
        )
        .expect("batch");
    }
    let store = SqliteStore::open(&path).expect("migrated");
    let ada = store.account("ada").wait().expect("account").expect("ada");
    assert_eq!((ada.id, ada.has_key), (1, false));
    // The batch from before researchers existed becomes the administrator's.
    let admin = store
        .ensure_researcher("admin", "h", 0)
        .wait()
        .expect("admin");
    assert_eq!(store.batch_owner(1).wait().expect("owner"), Some(admin.id));
    // Ids go on above the old ones.
    let next = store
        .create_uploaded(&batch(1, 1), 0)
        .wait()
        .expect("batch");
    assert_eq!(next, 2);
}

#[test]
fn volunteers_whose_names_differ_only_in_case_keep_their_rows_and_the_later_ones_are_renamed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = version_1_database(dir.path(), &["Ada", "ada", "bob", "ADA"]);
    let store = SqliteStore::open(&path).expect("migrated");
    // The oldest keeps its name; the others are told apart by their ids.
    let names: Vec<String> = (1..=4)
        .map(|id| {
            let row: String = rusqlite::Connection::open(&path)
                .expect("open")
                .query_row("SELECT name FROM volunteers WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .expect("a volunteer");
            row
        })
        .collect();
    assert_eq!(names, ["Ada", "ada-2", "bob", "ADA-4"]);
    for (name, id) in [("ada", 1), ("ADA-4", 4), ("Ada-2", 2), ("BOB", 3)] {
        let account = store.account(name).wait().expect("account").expect(name);
        assert_eq!((account.id, account.has_key), (id, false), "{name}");
    }
    // Every one of them is an account the administrator can hand a key to.
    assert!(
        store
            .set_account_key("ada-2", Some("h"))
            .wait()
            .expect("key")
            .is_some()
    );
}

#[test]
fn researchers_from_before_accounts_become_accounts_that_may_submit() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A volunteer `ada` and researchers `ada`, `Ada` and `carol` at schema 9.
    let path = version_1_database(dir.path(), &["ada"]);
    {
        let store = SqliteStore::open(&path).expect("migrated");
        drop(store);
        let old = rusqlite::Connection::open(&path).expect("open");
        old.execute_batch(
            "DROP INDEX researchers_by_account;
             UPDATE meta SET value = 11 WHERE key = 'schema_version';
             DELETE FROM researchers;
             INSERT INTO researchers (id, name, token_hash, created_ms) VALUES
                 (1, 'ada', 'h1', 0), (2, 'Ada', 'h2', 0), (3, 'carol', 'h3', 0);",
        )
        .expect("researchers at schema 11");
        old.execute_batch(
            "ALTER TABLE researchers DROP COLUMN account_id;
             ALTER TABLE researchers DROP COLUMN revoked_ms;
             DROP TABLE ledger;
             DROP INDEX credit_revoked_by_volunteer;
             DROP INDEX volunteers_by_token;
             ALTER TABLE volunteers DROP COLUMN token_hash;
             ALTER TABLE volunteers DROP COLUMN balance;
             ALTER TABLE volunteers DROP COLUMN overdraft;
             ALTER TABLE batches DROP COLUMN bid_milli;
             ALTER TABLE batches DROP COLUMN pause_when_broke;
             ALTER TABLE hosts DROP COLUMN valid_results;
             ALTER TABLE hosts DROP COLUMN timeouts_in_a_row;
             ALTER TABLE replicas DROP COLUMN seasoned;
             ALTER TABLE batches DROP COLUMN seasoned_after;",
        )
        .expect("as schema 11 had them");
    }
    let store = SqliteStore::open(&path).expect("migrated again");
    // The oldest `ada` takes the volunteer's account; `Ada` gets one of its own; carol a new one.
    let ada = store.account("ada").wait().expect("account").expect("ada");
    assert_eq!(ada.id, 1);
    assert!(store.account("Ada-r2").wait().expect("account").is_some());
    assert!(store.account("carol").wait().expect("account").is_some());
    for token in ["h1", "h2", "h3"] {
        assert!(
            store
                .researcher_by_token(token)
                .wait()
                .expect("token")
                .is_some(),
            "{token}"
        );
    }
    // Withdrawing ada's permission leaves the others'.
    assert_eq!(
        store.deny_submit("ada", 1).wait().expect("deny"),
        Some(true)
    );
    assert_eq!(store.researcher_by_token("h1").wait().expect("token"), None);
    assert!(
        store
            .researcher_by_token("h2")
            .wait()
            .expect("token")
            .is_some()
    );
}
