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
    let totals = store.credit_totals(0).wait().expect("credit");
    assert_eq!(totals.volunteers[0].name, "ada");
    assert_eq!(totals.volunteers[0].recent_average_credit, 0.0);
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
    let mut names: Vec<String> = store
        .credit_totals(0)
        .wait()
        .expect("credit")
        .volunteers
        .into_iter()
        .map(|v| v.name)
        .collect();
    names.sort();
    // The oldest keeps its name; the others are told apart by their ids.
    assert_eq!(names, ["ADA-4", "Ada", "ada-2", "bob"]);
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
