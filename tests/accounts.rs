//! Accounts end to end: volunteers sign up, attach machines with their account keys and earn
//! credit under their accounts, spend it on a batch with a bid (served before an equal free
//! batch, paid by exactly its agreed fuel) and send it to each other; a name cannot be taken twice, a project without anonymous
//! volunteers refuses a machine with no key, a revoked or unknown key stops a worker (exit 3,
//! no retry loop), and sign-up follows the project's rules (open with a limit per network, by
//! invitation, or by the administrator only).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use herd_e2e::{
    Coordinator, LogsOnFailure, bin_dir, eventually, start_account_worker, start_worker, worker_dir,
};

use super::{check_results, submit, write_tiles};

/// A coordinator with open sign-up and no anonymous volunteers, on the project's database at
/// `database` (PostgreSQL), or its SQLite file.
fn open_project(root: &Path, database: Option<&str>) -> Coordinator {
    Coordinator::start_with(
        root,
        &root.join("coordinator"),
        0,
        database,
        &["--sign-up", "open"],
    )
    .expect("coordinator")
}

/// `herd account create NAME` with no token, as a volunteer runs it: the account key it
/// printed (and then its API token, [`sign_up_with_token`]).
fn sign_up(coordinator: &Coordinator, name: &str, team: Option<&str>) -> String {
    sign_up_with_token(coordinator, name, team).0
}

/// `herd account create NAME`: the account key and the API token it printed, in that order.
fn sign_up_with_token(
    coordinator: &Coordinator,
    name: &str,
    team: Option<&str>,
) -> (String, String) {
    let mut args = vec!["account", "create", name];
    if let Some(team) = team {
        args.extend(["--team", team]);
    }
    let output = herd_anonymous(coordinator, &args);
    assert!(
        output.status.success(),
        "sign-up of {name}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8_lossy(&output.stdout).to_string();
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 2, "a key and a token: {printed:?}");
    assert_eq!(lines[0].len(), 48, "an account key: {printed:?}");
    assert_eq!(lines[1].len(), 48, "an API token: {printed:?}");
    assert_ne!(lines[0], lines[1]);
    (lines[0].to_string(), lines[1].to_string())
}

/// `herd` with an account's API token, which must succeed; its stdout.
fn herd_with(coordinator: &Coordinator, token: &str, args: &[&str]) -> String {
    let output = coordinator.herd_as(token, args);
    assert!(
        output.status.success(),
        "herd {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// The statement of the account whose API token this is.
fn statement(coordinator: &Coordinator, token: &str) -> serde_json::Value {
    let printed = herd_with(coordinator, token, &["account", "--json", "--recent", "50"]);
    serde_json::from_str(&printed).expect("a statement")
}

fn fuel(value: &serde_json::Value) -> i64 {
    value
        .as_i64()
        .unwrap_or_else(|| panic!("an amount of fuel: {value}"))
}

/// `herd` with no researcher token.
fn herd_anonymous(coordinator: &Coordinator, args: &[&str]) -> std::process::Output {
    Command::new(bin_dir().join("herd"))
        .args(args)
        .env("HERD_COORDINATOR", &coordinator.http)
        .env_remove("HERD_TOKEN")
        .output()
        .expect("run herd")
}

/// `herd-worker attach`, the key typed on standard input.
fn attach(data_dir: &Path, key: &str) {
    let mut child = Command::new(bin_dir().join("herd-worker"))
        .args(["attach", "--data-dir", &data_dir.display().to_string()])
        .env_remove("HERD_ACCOUNT_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run herd-worker attach");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{key}\n").as_bytes())
        .expect("type the key");
    let output = child.wait_with_output().expect("attach");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn volunteer_line(coordinator: &Coordinator, name: &str) -> Option<serde_json::Value> {
    coordinator.herd_json(&["credit", "--json"])["volunteers"]
        .as_array()
        .expect("volunteers")
        .iter()
        .find(|v| v["name"] == name)
        .cloned()
}

/// Waits for a worker to stop, and checks it stopped for good (exit 3) saying `why`.
fn stops_for_good(worker: &mut herd_e2e::Process, why: &str) {
    let code = eventually(Duration::from_secs(90), "the worker to stop", || {
        worker.exit_code()
    });
    let log = std::fs::read_to_string(&worker.log).expect("log");
    assert_eq!(code, Some(3), "{log}");
    assert!(log.contains(why), "{log}");
    assert!(!log.contains("reconnecting"), "no retry loop: {log}");
}

#[test]
fn volunteers_sign_up_attach_with_their_keys_earn_credit_and_a_revoked_key_stops_its_worker() {
    sign_up_attach_earn_and_revoke(None);
}

#[test]
fn on_postgresql_volunteers_sign_up_attach_with_their_keys_and_a_revoked_key_stops_its_worker() {
    let server = herd_pgtest::Server::start(herd_pgtest::Durability::Full).expect("PostgreSQL");
    server.create_database("herd").expect("create the database");
    sign_up_attach_earn_and_revoke(Some(&server.url("herd")));
}

/// The volunteer's whole path, on the project's database at `database` (PostgreSQL), or its
/// SQLite file.
fn sign_up_attach_earn_and_revoke(database: Option<&str>) {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let coordinator = open_project(root.path(), database);

    // Two volunteers sign up; a name cannot be taken again, in any case.
    let (ada_key, ada_token) = sign_up_with_token(&coordinator, "ada", Some("engines"));
    let bob_key = sign_up(&coordinator, "bob", None);
    let stolen = herd_anonymous(&coordinator, &["account", "create", "ADA"]);
    assert!(!stolen.status.success());
    let said = String::from_utf8_lossy(&stolen.stderr);
    assert!(
        said.contains("taken") && said.contains("name_taken"),
        "{said}"
    );

    // A machine with no account key is refused on this project, for good.
    let mut nameless =
        start_worker(root.path(), &coordinator.join, "carol", "x", 1).expect("worker");
    stops_for_good(&mut nameless, "account key");

    // Ada attaches her machine (the key typed in, kept readable by her only); Bob gives his in
    // the environment.
    let ada_dir = worker_dir(root.path(), "ada-laptop");
    attach(&ada_dir, &ada_key);
    let mode = std::fs::metadata(ada_dir.join("account.key"))
        .expect("the key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let mut ada = start_account_worker(root.path(), &coordinator.join, "ada-laptop", &[])
        .expect("ada's worker");
    let bob_worker = || {
        start_account_worker(
            root.path(),
            &coordinator.join,
            "bob-desktop",
            &[("HERD_ACCOUNT_KEY", &bob_key)],
        )
        .expect("bob's worker")
    };
    let mut bob = bob_worker();

    // They compute a batch together; every output is right and the credit is theirs.
    let inputs = root.path().join("inputs");
    let tiles = write_tiles(&inputs, 4);
    let batch = submit(&coordinator, root.path(), &inputs, true);
    check_results(&coordinator, root.path(), batch, &tiles);
    for (name, team) in [("ada", Some("engines")), ("bob", None)] {
        let line = volunteer_line(&coordinator, name).expect("listed");
        assert_eq!(line["replicas"], 4, "{line}");
        assert_eq!(line["team"].as_str(), team, "{line}");
        assert!(line["credit"].as_f64().expect("credit") > 0.0, "{line}");
    }
    // One host each, under the account's name.
    let hosts = coordinator.herd_json(&["hosts", "--json"]);
    let mut owners: Vec<&str> = hosts["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .filter_map(|h| h["volunteer"].as_str())
        .collect();
    owners.sort();
    assert_eq!(owners, ["ada", "bob"], "{hosts}");

    // What Ada earned is her balance, which her API token (not her account key) shows.
    let earned = statement(&coordinator, &ada_token);
    assert!(fuel(&earned["balance"]) > 0, "{earned}");
    assert_eq!(earned["balance"], earned["earned"], "{earned}");
    let (status, answer) = coordinator.api("GET", "/api/v1/account", Some(&ada_key), None);
    assert_eq!(
        status, 403,
        "the account key only attaches machines: {answer}"
    );
    // She gets the permission to submit (with a new token, which replaces the one she had) and
    // spends her credit: with the workers stopped, the project queues a batch and then she
    // queues an equal one with a bid. Hers is computed first.
    let output = coordinator.herd(&["account", "grant", "ada", "submit"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let ada_token = String::from_utf8_lossy(&output.stdout).trim().to_string();
    ada.kill();
    bob.kill();
    let free = submit(&coordinator, root.path(), &inputs, false);
    let module = root.path().join("mandelbrot.wasm");
    let printed = herd_with(
        &coordinator,
        &ada_token,
        &[
            "submit",
            &module.display().to_string(),
            "--inputs",
            &inputs.display().to_string(),
            "--spend-priority",
        ],
    );
    let paid: u64 = printed.trim().parse().expect("a batch id");
    let mut ada = start_account_worker(root.path(), &coordinator.join, "ada-laptop", &[])
        .expect("ada's worker");
    let _bob = bob_worker();
    for (batch, token) in [
        (paid, ada_token.as_str()),
        (free, coordinator.token.as_str()),
    ] {
        eventually(
            Duration::from_secs(120),
            "both batches to be validated",
            || {
                let status = coordinator.herd_as(token, &["status", &batch.to_string(), "--json"]);
                let status: serde_json::Value = serde_json::from_slice(&status.stdout).ok()?;
                (status["validated"] == 4).then_some(())
            },
        );
    }
    // Each machine took a replica of every unit of the paid batch it could before any of the
    // free one (it may hold one replica of a unit only, so it goes on to the free batch while
    // the other machine catches up).
    let later = coordinator
        .sql_number(&format!(
            "SELECT COUNT(*) FROM replicas p JOIN units pu ON pu.id = p.unit_id,
                    replicas f JOIN units fu ON fu.id = f.unit_id
             WHERE pu.batch_id = {paid} AND fu.batch_id = {free} AND p.host_id = f.host_id
               AND p.assigned_ms > f.assigned_ms"
        ))
        .expect("assignment times");
    assert_eq!(
        later, 0,
        "a paid replica was handed out after a free one to the same machine"
    );
    let first = |batch: u64| {
        coordinator
            .sql_number(&format!(
                "SELECT MIN(r.assigned_ms) FROM replicas r JOIN units u ON u.id = r.unit_id
                 WHERE u.batch_id = {batch}"
            ))
            .expect("assignment times")
    };
    assert!(
        first(paid) <= first(free),
        "the paid batch was served first"
    );
    // Her balance fell by exactly the agreed fuel of her validated units, once each.
    let status = coordinator.herd_as(&ada_token, &["status", &paid.to_string(), "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status");
    let agreed: i64 = status["units"]
        .as_array()
        .expect("units")
        .iter()
        .map(|unit| fuel(&unit["result"]["fuel"]))
        .sum();
    let after = statement(&coordinator, &ada_token);
    assert_eq!(fuel(&after["spent"]), agreed, "{after}");
    assert_eq!(
        fuel(&after["balance"]),
        fuel(&after["earned"]) - agreed,
        "{after}"
    );
    let spent_rows = after["recent"]
        .as_array()
        .expect("recent")
        .iter()
        .filter(|row| row["kind"] == "spent" && row["batch_id"] == paid)
        .count();
    assert_eq!(spent_rows, 4, "{after}");
    // She sends half her balance to Bob; more than she has is refused, naming her balance.
    let half = fuel(&after["balance"]) / 2;
    let amount = format!("{}.{:09}", half / 1_000_000_000, half % 1_000_000_000);
    let bob_before = coordinator.herd_json(&["account", "show", "bob", "--json"]);
    herd_with(
        &coordinator,
        &ada_token,
        &["credit", "send", "bob", &amount, "--memo", "thanks"],
    );
    let bob_after = coordinator.herd_json(&["account", "show", "bob", "--json"]);
    assert_eq!(
        fuel(&bob_after["balance"]) - fuel(&bob_before["balance"]),
        half,
        "{bob_after}"
    );
    assert_eq!(fuel(&bob_after["received"]), half, "{bob_after}");
    let refused = coordinator.herd_as(&ada_token, &["credit", "send", "bob", "1000000"]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("insufficient_credit") && said.contains("does not cover"),
        "{said}"
    );
    let last = statement(&coordinator, &ada_token);
    assert_eq!(
        fuel(&last["balance"]),
        fuel(&after["balance"]) - half,
        "{last}"
    );
    let sent = &last["recent"][0];
    assert_eq!(
        (&sent["kind"], &sent["counterpart"], &sent["memo"]),
        (&"sent".into(), &"bob".into(), &"thanks".into()),
        "{last}"
    );

    // A key no account holds: refused, for good.
    let mut guesser = start_account_worker(
        root.path(),
        &coordinator.join,
        "guesser",
        &[("HERD_ACCOUNT_KEY", &"ab".repeat(24))],
    )
    .expect("worker");
    stops_for_good(&mut guesser, "not one of this project's");

    let replicas = volunteer_line(&coordinator, "ada").expect("listed")["replicas"].clone();
    // The administrator revokes Ada's key: her running worker stops at its next request.
    let revoked = coordinator.herd(&["account", "revoke", "ada"]);
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    stops_for_good(&mut ada, "revoked");
    // Only the administrator revokes: Bob cannot revoke anyone's, with his key or without.
    let (status, answer) = coordinator.api("DELETE", "/api/v1/accounts/bob/key", None, None);
    assert_eq!(status, 401, "{answer}");

    // A new key for Ada (as for volunteers from before accounts): her machine is back, and her
    // credit is still hers.
    let output = coordinator.herd(&["account", "key", "ada"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let new_key = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert_ne!(new_key, ada_key);
    attach(&ada_dir, &new_key);
    let mut ada = start_account_worker(root.path(), &coordinator.join, "ada-laptop", &[])
        .expect("ada's worker");
    eventually(Duration::from_secs(30), "ada's worker to connect", || {
        let log = std::fs::read_to_string(&ada.log).unwrap_or_default();
        log.contains("connected to").then_some(())
    });
    assert!(ada.is_running());
    let line = volunteer_line(&coordinator, "ada").expect("listed");
    assert_eq!(line["replicas"], replicas, "{line}");
}

#[test]
fn sign_up_is_open_with_a_limit_per_network_by_invitation_or_the_administrators_only() {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let new_account = |name: &str| format!(r#"{{"name": "{name}"}}"#);

    // Open, two an hour from one network: the third waits; the administrator's do not count.
    let open = Coordinator::start_with(
        root.path(),
        &root.path().join("open"),
        0,
        None,
        &["--sign-up", "open", "--sign-ups-per-hour", "2"],
    )
    .expect("coordinator");
    for name in ["ada", "bob"] {
        let (status, answer) = open.api("POST", "/api/v1/accounts", None, Some(&new_account(name)));
        assert_eq!(status, 201, "{answer}");
        assert_eq!(answer["name"], name);
        assert_eq!(answer["account_key"].as_str().map(str::len), Some(48));
    }
    let (status, answer) = open.api(
        "POST",
        "/api/v1/accounts",
        None,
        Some(&new_account("carol")),
    );
    assert_eq!(status, 429, "{answer}");
    assert_eq!(answer["error"]["code"], "too_many_sign_ups");
    let (status, answer) = open.api(
        "POST",
        "/api/v1/accounts",
        Some(&open.token),
        Some(&new_account("carol")),
    );
    assert_eq!(status, 201, "{answer}");
    // Bad names are refused by name.
    let (status, answer) = open.api(
        "POST",
        "/api/v1/accounts",
        Some(&open.token),
        Some(r#"{"name": "  "}"#),
    );
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_account");

    // By invitation: none, a made-up one and a spent one are refused; a fresh one lets one in.
    let invited = Coordinator::start_with(
        root.path(),
        &root.path().join("invited"),
        0,
        None,
        &["--sign-up", "invitation"],
    )
    .expect("coordinator");
    let (status, answer) = invited.api("POST", "/api/v1/accounts", None, Some(&new_account("ada")));
    assert_eq!(status, 403, "{answer}");
    assert_eq!(answer["error"]["code"], "invitation_required");
    let output = invited.herd(&["account", "invite"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let code = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let with_code =
        |name: &str, code: &str| format!(r#"{{"name": "{name}", "invitation": "{code}"}}"#);
    let (status, answer) = invited.api(
        "POST",
        "/api/v1/accounts",
        None,
        Some(&with_code("ada", "made-up")),
    );
    assert_eq!(status, 403, "{answer}");
    assert_eq!(answer["error"]["code"], "bad_invitation");
    let (status, answer) = invited.api(
        "POST",
        "/api/v1/accounts",
        None,
        Some(&with_code("ada", &code)),
    );
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = invited.api(
        "POST",
        "/api/v1/accounts",
        None,
        Some(&with_code("bob", &code)),
    );
    assert_eq!(status, 403, "a spent invitation: {answer}");
    // Only the administrator invites.
    let (status, _) = invited.api("POST", "/api/v1/invitations", None, None);
    assert_eq!(status, 401);

    // The administrator's only (the default): sign-up is closed to everyone else.
    let closed = Coordinator::start_with(root.path(), &root.path().join("closed"), 0, None, &[])
        .expect("coordinator");
    let refused = herd_anonymous(&closed, &["account", "create", "ada"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("sign_up_closed"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let output = closed.herd(&["account", "create", "ada", "--json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let created: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(created["name"], "ada");
}

/// Two machines behind one router (both on 127.0.0.1, one /24), two accounts: a batch asking
/// for distinct networks gets one replica of each unit from them and no more, so they cannot
/// validate anything alone; the same units without the rule are validated by the two.
#[test]
fn two_accounts_behind_one_router_cannot_form_a_quorum_of_a_batch_asking_for_distinct_networks() {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let coordinator = Coordinator::start(root.path(), 0).expect("coordinator");
    let _workers: Vec<_> = ["ada", "bob"]
        .iter()
        .map(|name| start_worker(root.path(), &coordinator.join, name, "t", 1).expect("worker"))
        .collect();
    let inputs = root.path().join("inputs");
    let tiles = write_tiles(&inputs, 2);
    let held = super::submit_with(
        &coordinator,
        root.path(),
        &inputs,
        false,
        &["--distinct-networks"],
    );
    // Each unit gets its one replica from the network, computed and reported...
    let reported = |coordinator: &Coordinator| {
        let status = coordinator.herd_json(&["status", &held.to_string(), "--json"]);
        let hosts = coordinator.herd_json(&["hosts", "--json"]);
        let in_progress: u64 = hosts["hosts"]
            .as_array()
            .expect("hosts")
            .iter()
            .map(|h| h["in_progress"].as_u64().expect("a count"))
            .sum();
        let once = status["units"]
            .as_array()
            .expect("units")
            .iter()
            .all(|u| u["replicas"] == 1);
        (once && in_progress == 0).then_some(status)
    };
    eventually(Duration::from_secs(60), "one replica of each unit", || {
        reported(&coordinator)
    });
    // ...and, while both machines keep asking for work, no second one.
    std::thread::sleep(Duration::from_secs(5));
    let status = reported(&coordinator).expect("still one replica of each unit");
    assert_eq!(status["validated"], 0, "{status}");
    assert_eq!(status["open"], 2, "{status}");
    // Without the rule the same two validate the same units.
    let free = submit(&coordinator, root.path(), &inputs, true);
    check_results(&coordinator, root.path(), free, &tiles);
}

/// `herd-worker install --account-key`: the key goes in the data directory (0600), never in
/// the unit others can read, and the unit's command computes for the account.
#[test]
fn an_installed_worker_keeps_its_account_key_out_of_the_unit_and_computes_for_the_account() {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let coordinator = open_project(root.path(), None);
    let key = sign_up(&coordinator, "ada", None);
    let home = root.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let output = Command::new(bin_dir().join("herd-worker"))
        .args(["install", "--join", &coordinator.join, "--no-start"])
        .env("HERD_ACCOUNT_KEY", &key)
        .env("HOME", &home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_DATA_HOME")
        .output()
        .expect("run herd-worker install");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let unit = std::fs::read_to_string(home.join(".config/systemd/user/herd-worker.service"))
        .expect("the unit was written");
    assert!(!unit.contains(&key), "the key is not in the unit: {unit}");
    let data_dir = home.join(".local/share/herd-worker");
    let mode = std::fs::metadata(data_dir.join("account.key"))
        .expect("the key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The unit's own command line, as systemd would run it, with no key in its environment.
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let arguments = super::unquote_exec_start(exec);
    let _worker = herd_e2e::spawn(
        Path::new(&arguments[0]),
        &arguments[1..],
        root.path().join("installed-worker.log"),
    )
    .expect("start the unit's command");
    eventually(Duration::from_secs(20), "the installed worker", || {
        let hosts = coordinator.herd_json(&["hosts", "--json"]);
        hosts["hosts"]
            .as_array()?
            .iter()
            .any(|h| h["volunteer"] == "ada")
            .then_some(())
    });
}

/// One account to volunteer and to submit: the administrator grants a signed-up volunteer the
/// permission to submit (a token, shown once), she submits with it, and once it is withdrawn
/// her token is refused while her batch stays hers.
#[test]
fn the_administrator_grants_an_account_the_permission_to_submit_and_withdraws_it() {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let coordinator = open_project(root.path(), None);
    sign_up(&coordinator, "ada", None);
    // Adding a researcher by an account's name is refused, naming the way to do it.
    let output = coordinator.herd(&["researcher", "add", "ada"]);
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("herd account grant ada submit"), "{said}");
    let output = coordinator.herd(&["account", "grant", "ada", "submit"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let module = root.path().join("mandelbrot.wasm");
    std::fs::write(&module, herd_samples::MANDELBROT_WASM).expect("module");
    let inputs = root.path().join("inputs");
    write_tiles(&inputs, 2);
    let batch = super::submit_as(&coordinator, &token, &module, &inputs);
    let listed = coordinator.herd_as(&token, &["batches", "--json"]);
    assert!(listed.status.success());
    // Withdrawn: her token is refused; the batch is still hers (the administrator sees it not).
    let output = coordinator.herd(&["account", "deny", "ada", "submit"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (status, answer) = coordinator.api("GET", "/api/v1/batches", Some(&token), None);
    assert_eq!(status, 403, "{answer}");
    // Granted again: a new token sees her batch; the old one stays dead.
    let output = coordinator.herd(&["account", "grant", "ada", "submit"]);
    let again = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let (status, answer) = coordinator.api(
        "GET",
        &format!("/api/v1/batches/{batch}"),
        Some(&again),
        None,
    );
    assert_eq!(status, 200, "{answer}");
    let (status, _) = coordinator.api("GET", "/api/v1/batches", Some(&token), None);
    assert_eq!(status, 403);
    // The administrator's own permission cannot be withdrawn.
    let (status, answer) = coordinator.api(
        "DELETE",
        "/api/v1/accounts/admin/permissions/submit",
        Some(&coordinator.token),
        None,
    );
    assert_eq!(status, 403, "{answer}");
}

/// Posts the dashboard's sign-up form as a browser does; the status and the page answered.
fn join_form(coordinator: &Coordinator, fields: &[(&str, &str)]) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent
        .post(&format!("{}/join", coordinator.http))
        .send_form(fields.iter().copied())
        .expect("an HTTP answer");
    let status = response.status().as_u16();
    let page = response.body_mut().read_to_string().expect("a page");
    (status, page)
}

/// The text of the element with `id` in a page the coordinator made.
fn element(page: &str, id: &str) -> String {
    page.split(&format!("id=\"{id}\">"))
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap_or_else(|| panic!("no #{id} in {page}"))
        .to_string()
}

#[test]
fn the_dashboard_signs_a_volunteer_up_with_a_form_that_shows_the_key_and_the_token_once() {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let coordinator = open_project(root.path(), None);
    // The form, in a browser; an invitation link fills in its code.
    let form = herd_e2e::browser_dom(&format!("{}/#/join?invitation=c0de", coordinator.http));
    assert!(
        form.contains("<form id=\"join-form\" method=\"post\" action=\"/join\">"),
        "{form}"
    );
    assert!(form.contains("id=\"invitation\" value=\"c0de\""), "{form}");
    // Posted as the browser posts it: a page with the key and the token, which work.
    let (status, page) = join_form(
        &coordinator,
        &[("name", "Ada <3"), ("team", ""), ("invitation", "")],
    );
    assert_eq!(status, 201, "{page}");
    assert_eq!(element(&page, "joined"), "Welcome, Ada &lt;3");
    let (key, token) = (element(&page, "account-key"), element(&page, "token"));
    assert_eq!((key.len(), token.len()), (48, 48), "{page}");
    let (status, statement) = coordinator.api("GET", "/api/v1/account", Some(&token), None);
    assert_eq!(status, 200, "{statement}");
    assert_eq!(statement["account"], "Ada <3");
    let ada_dir = worker_dir(root.path(), "ada");
    attach(&ada_dir, &key);
    // The same name again, in another case: refused by name, on a page saying so.
    let (status, page) = join_form(&coordinator, &[("name", "ADA <3")]);
    assert_eq!(status, 409, "{page}");
    assert!(element(&page, "error").contains("is taken"), "{page}");
    // On a project whose administrator creates the accounts, the form says so.
    let closed = Coordinator::start_with(root.path(), &root.path().join("closed"), 0, None, &[])
        .expect("coordinator");
    let (status, page) = join_form(&closed, &[("name", "grace")]);
    assert_eq!(status, 403, "{page}");
    assert!(
        element(&page, "error").contains("created by its administrator"),
        "{page}"
    );
}
