//! End-to-end: a real coordinator and real workers on 127.0.0.1, driven through the `herd` CLI.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herd_e2e::{Coordinator, LogsOnFailure, eventually, free_udp_port, hello_from, start_worker};
use herd_protocol::{
    ChannelBinding, ClientMessage, ErrorCode, Hello, PROTOCOL_VERSION, ServerMessage, SigningKey,
};

mod accounts;
mod disk;
mod hostile_peers;
mod kills;
mod load;
mod network;
mod scale_out;

#[path = "../sample-jobs/mandelbrot/src/kernel.rs"]
#[allow(dead_code, unreachable_pub)]
mod tile;

const VOLUNTEERS: [(&str, &str); 3] = [
    ("ada", "engines"),
    ("grace", "engines"),
    ("alan", "bletchley"),
];

/// Writes `count` Mandelbrot tile inputs into `dir`; returns (name, input text).
fn write_tiles(dir: &Path, count: usize) -> Vec<(String, String)> {
    write_tiles_of(dir, count, (48, 32), 300)
}

/// [`write_tiles`] with tiles of `size` pixels and `iterations` at most per pixel: bigger
/// numbers make units that last long enough to kill a coordinator in the middle of a batch.
fn write_tiles_of(
    dir: &Path,
    count: usize,
    size: (u32, u32),
    iterations: u32,
) -> Vec<(String, String)> {
    std::fs::create_dir_all(dir).expect("inputs dir");
    (0..count)
        .map(|i| {
            let x = -2.0 + 0.12 * i as f64;
            let text = herd_samples::mandelbrot_input((x, -0.6), (x + 0.12, 0.6), size, iterations);
            let name = format!("tile-{i:02}");
            std::fs::write(dir.join(&name), &text).expect("write input");
            (name, text)
        })
        .collect()
}

fn submit(coordinator: &Coordinator, root: &Path, inputs: &Path, wait: bool) -> u64 {
    submit_with(coordinator, root, inputs, wait, &[])
}

/// `herd submit` of the Mandelbrot module with extra arguments; returns the batch id.
fn submit_with(
    coordinator: &Coordinator,
    root: &Path,
    inputs: &Path,
    wait: bool,
    extra: &[&str],
) -> u64 {
    let module = root.join("mandelbrot.wasm");
    std::fs::write(&module, herd_samples::MANDELBROT_WASM).expect("module");
    let module = module.display().to_string();
    let inputs = inputs.display().to_string();
    let mut args = vec!["submit", &module, "--inputs", &inputs, "--quorum", "2"];
    args.extend_from_slice(extra);
    if wait {
        args.push("--wait");
    }
    let output = coordinator.herd(&args);
    assert!(
        output.status.success(),
        "submit failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("submit prints the batch id")
}

/// `herd submit MODULE --inputs DIR` with another researcher's token; returns the batch id.
fn submit_as(coordinator: &Coordinator, token: &str, module: &Path, inputs: &Path) -> u64 {
    let output = coordinator.herd_as(
        token,
        &[
            "submit",
            &module.display().to_string(),
            "--inputs",
            &inputs.display().to_string(),
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("submit prints the batch id")
}

/// Checks every output against the known answer (the job's own code, run natively).
fn check_results(coordinator: &Coordinator, root: &Path, batch: u64, tiles: &[(String, String)]) {
    let out = root.join(format!("results-{batch}"));
    let output = coordinator.herd(&[
        "results",
        &batch.to_string(),
        "--out",
        &out.display().to_string(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for (name, text) in tiles {
        let expected = tile::render_ppm(&tile::parse_tile(text).expect("valid tile"));
        let actual = std::fs::read(out.join(name)).expect("output written");
        assert!(
            actual == expected,
            "output of {name} differs from the known answer"
        );
    }
}

/// The results as one tar archive: every output, named after its unit, read back by a real
/// tar reader; a partial download resumes with only the missing bytes, and a resumption of
/// another archive (a different ETag) gets the whole one.
fn check_archive(coordinator: &Coordinator, root: &Path, batch: u64, tiles: &[(String, String)]) {
    let archive = root.join(format!("results-{batch}.tar"));
    let report = coordinator.herd_json(&[
        "results",
        &batch.to_string(),
        "--archive",
        &archive.display().to_string(),
        "--json",
    ]);
    let whole = std::fs::read(&archive).expect("archive written");
    assert_eq!(report["bytes"], whole.len() as u64);
    let mut reader = tar::Archive::new(&whole[..]);
    let mut names = Vec::new();
    for file in reader.entries().expect("a tar archive") {
        let mut file = file.expect("an entry");
        let name = file.path().expect("a name").display().to_string();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut bytes).expect("its bytes");
        let (_, text) = tiles
            .iter()
            .find(|(n, _)| *n == name)
            .expect("a known unit");
        assert!(
            bytes == tile::render_ppm(&tile::parse_tile(text).expect("tile")),
            "{name}"
        );
        names.push(name);
    }
    assert_eq!(names.len(), tiles.len());

    let url = format!("{}/api/v1/batches/{batch}/results", coordinator.http);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let get = |range: Option<&str>, if_range: Option<&str>| {
        let mut request = agent
            .get(&url)
            .header("Authorization", &format!("Bearer {}", coordinator.token));
        if let Some(range) = range {
            request = request.header("Range", range);
        }
        if let Some(tag) = if_range {
            request = request.header("If-Range", tag);
        }
        let mut response = request.call().expect("an answer");
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let (etag, content_range) = (header("ETag"), header("Content-Range"));
        let body = response
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_vec()
            .expect("body");
        (status, etag, content_range, body)
    };
    let (status, etag, _, body) = get(None, None);
    assert_eq!((status, body.len()), (200, whole.len()));
    let (status, _, content_range, body) = get(Some("bytes=1000-"), Some(&etag));
    assert_eq!(status, 206);
    assert_eq!(
        content_range,
        format!("bytes 1000-{}/{}", whole.len() - 1, whole.len())
    );
    assert!(body == whole[1000..]);
    let (status, _, _, body) = get(Some("bytes=1000-"), Some("\"another archive\""));
    assert_eq!((status, body.len()), (200, whole.len()));
    let (status, _, _, _) = get(Some(&format!("bytes={}-", whole.len())), None);
    assert_eq!(status, 416);
    // The CLI resumes a partial download left by an interrupted run.
    std::fs::remove_file(&archive).expect("remove");
    std::fs::write(archive.with_extension("part"), &whole[..1000]).expect("part");
    std::fs::write(archive.with_extension("part.etag"), &etag).expect("etag");
    coordinator.herd_json(&[
        "results",
        &batch.to_string(),
        "--archive",
        &archive.display().to_string(),
        "--json",
    ]);
    assert!(std::fs::read(&archive).expect("resumed") == whole);
    assert!(!archive.with_extension("part").exists());
}

/// Credit must equal exactly two grants of each unit's agreed fuel, and no replica is credited
/// twice; no volunteer reported two replicas of one unit.
fn check_ledger(coordinator: &Coordinator, status: &serde_json::Value) {
    let agreed: u64 = status["units"]
        .as_array()
        .expect("units")
        .iter()
        .map(|u| u["result"]["fuel"].as_u64().expect("fuel"))
        .sum();
    let credit = coordinator.herd_json(&["credit", "--json"]);
    let fuel: u64 = credit["volunteers"]
        .as_array()
        .expect("volunteers")
        .iter()
        .map(|v| v["fuel"].as_u64().expect("fuel"))
        .sum();
    assert_eq!(
        fuel,
        2 * agreed,
        "credit is two agreeing replicas' fuel per unit"
    );
    let doubled = coordinator
        .sql_number(
            "SELECT COUNT(*) FROM (SELECT unit_id, volunteer_id FROM replicas
             WHERE state = 'reported'
             GROUP BY unit_id, volunteer_id HAVING COUNT(*) > 1) AS doubled",
        )
        .expect("query");
    assert_eq!(doubled, 0, "a volunteer held two replicas of one unit");
    let twice = coordinator
        .sql_number("SELECT COUNT(*) - COUNT(DISTINCT replica_id) FROM credit")
        .expect("query");
    assert_eq!(twice, 0, "a replica was credited twice");
}

/// Waits (reads may fail meanwhile: a coordinator reconnecting to its database) until all
/// `tiles` of `batch` are validated on `coordinator`, then checks every output against the
/// kernel, the ledger ([`check_ledger`]) and exactly two grants per unit in it.
fn completes_exactly(
    coordinator: &Coordinator,
    root: &Path,
    batch: u64,
    tiles: &[(String, String)],
    limit: Duration,
) {
    eventually(limit, "every unit validated", || {
        let (code, status) = coordinator.api(
            "GET",
            &format!("/api/v1/batches/{batch}"),
            Some(&coordinator.token),
            None,
        );
        (code == 200 && status["validated"].as_u64() == Some(tiles.len() as u64)).then_some(())
    });
    let status = coordinator.herd_json(&["status", &batch.to_string(), "--json"]);
    check_results(coordinator, root, batch, tiles);
    check_ledger(coordinator, &status);
    assert_eq!(
        coordinator
            .sql_number("SELECT COUNT(*) FROM credit")
            .expect("ledger"),
        2 * tiles.len() as i64,
        "exactly two grants per unit"
    );
}

#[test]
fn a_batch_of_20_units_is_validated_by_quorum_and_credited() {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let coordinator = Coordinator::start(root.path(), 0).expect("coordinator");
    let _workers: Vec<_> = VOLUNTEERS
        .iter()
        .map(|(name, team)| {
            start_worker(root.path(), &coordinator.join, name, team, 2).expect("worker")
        })
        .collect();
    let tiles = write_tiles(&root.path().join("inputs"), 20);
    let batch = submit(&coordinator, root.path(), &root.path().join("inputs"), true);
    let status = coordinator.herd_json(&["status", &batch.to_string(), "--json"]);
    assert_eq!(status["total"], 20);
    assert_eq!(status["validated"], 20, "{status}");
    for unit in status["units"].as_array().expect("units") {
        assert_eq!(unit["result"]["status"], "success");
        assert!(unit["replicas"].as_u64().expect("replicas") >= 2);
    }
    check_results(&coordinator, root.path(), batch, &tiles);
    check_archive(&coordinator, root.path(), batch, &tiles);
    check_ledger(&coordinator, &status);
    // Each worker measured its speed on the units it ran and keeps it for its requests.
    for (name, _) in VOLUNTEERS {
        let file = herd_e2e::worker_dir(root.path(), name).join("speed.json");
        if let Ok(bytes) = std::fs::read(&file) {
            let speed: serde_json::Value = serde_json::from_slice(&bytes).expect("speed json");
            let pace = speed["fuel_per_second"].as_f64().expect("a measured speed");
            assert!(pace >= 1.0, "{name}: {speed}");
        }
    }
    let measured = VOLUNTEERS
        .iter()
        .filter(|(name, _)| {
            herd_e2e::worker_dir(root.path(), name)
                .join("speed.json")
                .exists()
        })
        .count();
    assert!(
        measured >= 2,
        "a quorum of 2 needs two workers that ran units"
    );
    let credit = coordinator.herd_json(&["credit", "--json"]);
    let teams: HashMap<String, f64> = credit["teams"]
        .as_array()
        .expect("teams")
        .iter()
        .map(|t| {
            (
                t["name"].as_str().expect("name").to_string(),
                t["credit"].as_f64().expect("credit"),
            )
        })
        .collect();
    assert!(teams["engines"] > 0.0 && teams["bletchley"] >= 0.0);
    let table = coordinator.herd(&["credit"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("ada"));
    for volunteer in credit["volunteers"].as_array().expect("volunteers") {
        let (credit, rac) = (
            volunteer["credit"].as_f64().expect("credit"),
            volunteer["recent_average_credit"].as_f64().expect("rac"),
        );
        assert_eq!(credit > 0.0, rac > 0.0, "{volunteer}");
    }
    // Host records: every credited replica is a valid one, and nobody lied or failed.
    let hosts = coordinator.herd_json(&["hosts", "--json"]);
    let hosts = hosts["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), 3);
    let valid: u64 = hosts
        .iter()
        .map(|h| h["valid"].as_u64().expect("valid"))
        .sum();
    let replicas: u64 = credit["volunteers"]
        .as_array()
        .expect("volunteers")
        .iter()
        .map(|v| v["replicas"].as_u64().expect("replicas"))
        .sum();
    assert_eq!(valid, replicas);
    assert_eq!(valid, 40);
    for host in hosts {
        assert_eq!(
            (
                host["invalid"].as_u64(),
                host["errors"].as_u64(),
                host["refused_reports"].as_u64()
            ),
            (Some(0), Some(0), Some(0)),
            "{host}"
        );
    }

    // Retire with an archive: rows and unshared blobs go, credit stays, the archive holds it all.
    let before = coordinator.herd_json(&["credit", "--json"]);
    let retired = coordinator.herd_json(&["retire", &batch.to_string(), "--archive", "--json"]);
    assert_eq!(
        (retired["units"].as_u64(), retired["replicas"].as_u64()),
        (Some(20), Some(40))
    );
    let archive = std::path::PathBuf::from(retired["archive"].as_str().expect("archive path"));
    assert!(archive.join("status.json").is_file());
    for (name, text) in &tiles {
        let expected = tile::render_ppm(&tile::parse_tile(text).expect("valid tile"));
        assert!(std::fs::read(archive.join("outputs").join(name)).expect("archived") == expected);
    }
    let output_hash = status["units"][0]["result"]["output_hash"]
        .as_str()
        .expect("hash");
    let blob = coordinator
        .data_dir
        .join("blobs")
        .join(&output_hash[..2])
        .join(output_hash);
    assert!(!blob.exists(), "the output blob was purged");
    let gone = coordinator.herd(&["status", &batch.to_string()]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&gone.stderr).contains("no batch"));
    // (Recent average credit decays between the two reads; the ledger's totals do not move.)
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
    assert_eq!(
        totals(&coordinator.herd_json(&["credit", "--json"])),
        totals(&before)
    );
}

#[test]
fn adaptive_replication_lets_trusted_hosts_validate_alone_with_correct_results() {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let coordinator = Coordinator::start(root.path(), 0).expect("coordinator");
    let _workers: Vec<_> = VOLUNTEERS
        .iter()
        .map(|(name, team)| {
            start_worker(root.path(), &coordinator.join, name, team, 1).expect("worker")
        })
        .collect();
    let tiles = write_tiles(&root.path().join("inputs"), 30);
    // Trusted after one checked valid result, never spot-checked: after the first units,
    // each unit a trusted host starts is validated by it alone.
    let batch = submit_with(
        &coordinator,
        root.path(),
        &root.path().join("inputs"),
        true,
        &["--trust-after", "1", "--spot-check", "0"],
    );
    let status = coordinator.herd_json(&["status", &batch.to_string(), "--json"]);
    assert_eq!(status["validated"], 30, "{status}");
    let alone = status["units"]
        .as_array()
        .expect("units")
        .iter()
        .filter(|unit| unit["replicas"] == 1)
        .count();
    assert!(alone > 0, "no unit was validated alone: {status}");
    check_results(&coordinator, root.path(), batch, &tiles);
    let hosts = coordinator_hosts(&coordinator.http);
    assert!(
        hosts["hosts"]
            .as_array()
            .expect("hosts")
            .iter()
            .any(|h| h["consecutive_valid"].as_u64() >= Some(1)),
        "{hosts}"
    );
}

/// The whole chain of X idle detection with a real X server: workers that see the mouse move
/// on the display fetch nothing, and compute once it has rested for `idle_minutes`.
#[test]
fn workers_on_an_x_display_wait_while_the_mouse_moves_and_compute_once_it_rests() {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let coordinator = Coordinator::start(root.path(), 0).expect("coordinator");
    let screen = herd_e2e::xvfb::Xvfb::start();
    screen.move_the_mouse(1);
    let preferences = "only_when_idle = true\nidle_minutes = 1\nsuspend_above_load_percent = 0\n";
    let names = ["ada", "grace"];
    let workers: Vec<_> = names
        .iter()
        .map(|name| {
            let dir = herd_e2e::worker_dir(root.path(), name);
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(dir.join("preferences.toml"), preferences).expect("preferences");
            herd_e2e::start_worker_in(
                root.path(),
                &coordinator.join,
                name,
                "t",
                1,
                &[],
                &[("DISPLAY", &screen.display), ("HERD_LOG", "info")],
            )
            .expect("worker")
        })
        .collect();
    write_tiles(&root.path().join("inputs"), 2);
    let batch = submit(
        &coordinator,
        root.path(),
        &root.path().join("inputs"),
        false,
    );
    let source = format!("user idle time from X display {}", screen.display);
    for worker in &workers {
        eventually(Duration::from_secs(10), "the X source to be used", || {
            let log = std::fs::read_to_string(&worker.log).unwrap_or_default();
            (log.contains(&source) && log.contains("holding units: the computer is in use"))
                .then_some(())
        });
    }
    // The volunteer keeps working for a while: nothing is fetched, nothing computed.
    for x in 0..8 {
        screen.move_the_mouse(10 * x);
        std::thread::sleep(Duration::from_secs(2));
    }
    screen.move_the_mouse(100);
    let rested_from = std::time::Instant::now();
    let status = coordinator.herd_json(&["status", &batch.to_string(), "--json"]);
    assert!(
        status["units"]
            .as_array()
            .expect("units")
            .iter()
            .all(|u| u["replicas"] == 0),
        "nothing fetched while the mouse moved: {status}"
    );
    // Then leaves: after a minute without input the batch is computed.
    eventually(
        Duration::from_secs(120),
        "the batch to be validated",
        || {
            let status = coordinator.herd_json(&["status", &batch.to_string(), "--json"]);
            (status["validated"] == 2).then_some(())
        },
    );
    let waited = rested_from.elapsed();
    assert!(
        waited >= Duration::from_secs(60),
        "computed after {waited:?} of rest"
    );
}

#[test]
fn a_worker_computes_only_in_its_hours_and_rereads_its_preferences() {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let coordinator = Coordinator::start(root.path(), 0).expect("coordinator");
    // Computing hours that exclude now (the workers' local time is UTC); no idle or load rule,
    // which this shared machine could trip.
    let hour = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        / 3_600
        % 24;
    let later = (hour + 6) % 24;
    let closed = format!(
        "compute_windows = [\"daily {later:02}:00-{:02}:00\"]\nonly_when_idle = false\nsuspend_above_load_percent = 0\n",
        later + 1
    );
    let open = "only_when_idle = false\nsuspend_above_load_percent = 0\n";
    let names = ["ada", "grace"];
    for name in names {
        let dir = herd_e2e::worker_dir(root.path(), name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("preferences.toml"), &closed).expect("preferences");
    }
    let mut workers: Vec<_> = names
        .iter()
        .map(|name| {
            herd_e2e::start_worker_with(root.path(), &coordinator.join, name, "t", 1, &[])
                .expect("worker")
        })
        .collect();
    write_tiles(&root.path().join("inputs"), 4);
    let batch = submit(
        &coordinator,
        root.path(),
        &root.path().join("inputs"),
        false,
    );
    let read_log =
        |worker: &herd_e2e::Process| std::fs::read_to_string(&worker.log).unwrap_or_default();
    herd_e2e::eventually(
        Duration::from_secs(10),
        "the hours to hold the work",
        || {
            read_log(&workers[0])
                .contains("outside the computing hours")
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let status = coordinator.herd_json(&["status", &batch.to_string(), "--json"]);
    assert_eq!(status["validated"], 0, "{status}");
    assert!(
        status["units"]
            .as_array()
            .expect("units")
            .iter()
            .all(|u| u["replicas"] == 0),
        "no work was even fetched outside the hours: {status}"
    );
    // A bad file is refused by name and the worker keeps its preferences (and keeps running).
    let first = herd_e2e::worker_dir(root.path(), "ada").join("preferences.toml");
    std::fs::write(&first, "cpu_percent = 500\n").expect("write");
    herd_e2e::eventually(
        Duration::from_secs(10),
        "the bad file to be refused",
        || {
            read_log(&workers[0])
                .contains("`cpu_percent` = 500 is outside 1..=100")
                .then_some(())
        },
    );
    assert!(workers[0].is_running());
    // Opening the hours in the file lets the work through, without a restart.
    for name in names {
        let dir = herd_e2e::worker_dir(root.path(), name);
        std::fs::write(dir.join("preferences.toml"), open).expect("preferences");
    }
    herd_e2e::eventually(Duration::from_secs(60), "the batch to be validated", || {
        let status = coordinator.herd_json(&["status", &batch.to_string(), "--json"]);
        (status["validated"] == 4).then_some(())
    });
    // A worker started with a preference out of range stops at once and names it.
    let mut bad = herd_e2e::start_worker_with(
        root.path(),
        &coordinator.join,
        "alan",
        "t",
        1,
        &["--pref", "cpu_percent=0"],
    )
    .expect("worker");
    herd_e2e::eventually(Duration::from_secs(10), "the worker to stop", || {
        (!bad.is_running()).then_some(())
    });
    assert!(
        read_log(&bad).contains("`cpu_percent` = 0 is outside 1..=100"),
        "{}",
        read_log(&bad)
    );
    workers.clear();
}

#[test]
fn a_coordinator_killed_mid_batch_resumes_with_nothing_lost_or_credited_twice() {
    killed_mid_batch_and_restarted(None);
}

/// A coordinator on `database` (see [`Coordinator::start_on`]) is killed with SIGKILL in the
/// middle of a 30-unit quorum-2 batch and started again: it keeps its identity, every unit is
/// validated with the right output, and the ledger holds exactly two grants per unit.
fn killed_mid_batch_and_restarted(database: Option<&str>) {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let port = free_udp_port();
    let mut coordinator = Coordinator::start_on(root.path(), port, database).expect("coordinator");
    let _workers: Vec<_> = VOLUNTEERS
        .iter()
        .map(|(name, team)| {
            start_worker(root.path(), &coordinator.join, name, team, 1).expect("worker")
        })
        .collect();
    let tiles = write_tiles(&root.path().join("inputs"), 30);
    let batch = submit(
        &coordinator,
        root.path(),
        &root.path().join("inputs"),
        false,
    );
    eventually(Duration::from_secs(120), "some units validated", || {
        let status = coordinator.herd_json(&["status", &batch.to_string(), "--json"]);
        (status["validated"].as_u64()? >= 3).then_some(())
    });
    coordinator.process.kill();
    let join = coordinator.join.clone();
    drop(coordinator);
    let coordinator = Coordinator::start_on(root.path(), port, database).expect("restart");
    assert_eq!(
        coordinator.join, join,
        "the restarted coordinator keeps its identity"
    );
    completes_exactly(
        &coordinator,
        root.path(),
        batch,
        &tiles,
        Duration::from_secs(60),
    );
    assert_eq!(
        coordinator.data_dir.join("herd.sqlite").exists(),
        database.is_none(),
        "the project is in its database and nowhere else"
    );
}

/// Writes one Mandelbrot tile deep inside the set (every pixel runs all its iterations), so a
/// unit lasts seconds; returns the inputs directory.
fn write_long_tile(root: &Path) -> std::path::PathBuf {
    let dir = root.join("long-inputs");
    std::fs::create_dir_all(&dir).expect("inputs dir");
    let text = herd_samples::mandelbrot_input((-0.5, -0.4), (0.1, 0.4), (320, 320), 5_000);
    std::fs::write(dir.join("deep"), text).expect("write input");
    dir
}

/// Replicas in a worker's spool directory (`assigned` or `finished`): files named by replica
/// id only. A file still being written has a temporary name and does not count: it is not yet
/// durable, and a worker killed then rightly recomputes its replica.
fn spooled(root: &Path, volunteer: &str, which: &str) -> usize {
    std::fs::read_dir(
        herd_e2e::worker_dir(root, volunteer)
            .join("spool")
            .join(which),
    )
    .map(|entries| {
        entries
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|name| name.parse::<u64>().is_ok())
            })
            .count()
    })
    .unwrap_or(0)
}

#[test]
fn a_worker_killed_mid_unit_runs_it_again_from_its_spool() {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let coordinator = Coordinator::start(root.path(), 0).expect("coordinator");
    let start =
        |name: &str| start_worker(root.path(), &coordinator.join, name, "t", 1).expect("worker");
    let mut ada = start("ada");
    let _grace = start("grace");
    let inputs = write_long_tile(root.path());
    let batch = submit_with(
        &coordinator,
        root.path(),
        &inputs,
        false,
        &["--fuel", "1000000000000"],
    );
    eventually(Duration::from_secs(60), "ada to start the unit", || {
        (spooled(root.path(), "ada", "assigned") == 1).then_some(())
    });
    ada.kill();
    let ada = start("ada");
    // `herd-worker status` shows the restarted unit at work.
    let ada_dir = herd_e2e::worker_dir(root.path(), "ada");
    let worker_status = |json: bool| {
        let mut command = std::process::Command::new(herd_e2e::bin_dir().join("herd-worker"));
        command.args(["status", "--data-dir", &ada_dir.display().to_string()]);
        if json {
            command.arg("--json");
        }
        command.output().expect("run herd-worker status")
    };
    let shown = eventually(
        Duration::from_secs(30),
        "ada's status to show the unit",
        || {
            let output = worker_status(false);
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            (output.status.success() && text.contains("computing 1 unit")).then_some(text)
        },
    );
    assert!(
        shown.starts_with("ada (team t): computing 1 unit"),
        "{shown}"
    );
    assert!(shown.contains("replica "), "{shown}");
    let json: serde_json::Value =
        serde_json::from_slice(&worker_status(true).stdout).expect("status JSON");
    assert_eq!(json["volunteer"], "ada");
    let status = eventually(Duration::from_secs(120), "the unit validated", || {
        let status = coordinator.herd_json(&["status", &batch.to_string(), "--json"]);
        (status["validated"] == 1).then_some(status)
    });
    // Ada ran it again from her spool: no third replica was needed, and her spool is empty.
    assert_eq!(status["units"][0]["replicas"], 2, "{status}");
    let log = std::fs::read_to_string(&ada.log).expect("log");
    assert!(log.contains("from the spool will run again"), "{log}");
    eventually(Duration::from_secs(10), "ada's spool to empty", || {
        (spooled(root.path(), "ada", "assigned") + spooled(root.path(), "ada", "finished") == 0)
            .then_some(())
    });
    // The tile she made is kept for the screensaver view, as the PPM the job wrote.
    let latest = std::fs::read(ada_dir.join("latest.ppm")).expect("latest image");
    assert!(latest.starts_with(b"P6\n320 320\n255\n"));
    drop(ada);
    // A worker that is not running (its process is gone): status says so at once and exits 1.
    let output = worker_status(false);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stdout).contains("not running"));
}

#[test]
fn a_result_finished_while_the_coordinator_is_down_survives_the_worker_being_killed_too() {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let port = free_udp_port();
    let mut coordinator = Coordinator::start(root.path(), port).expect("coordinator");
    let join = coordinator.join.clone();
    let start = |name: &str| start_worker(root.path(), &join, name, "t", 1).expect("worker");
    let mut workers = vec![start("ada"), start("grace")];
    let inputs = write_long_tile(root.path());
    let batch = submit_with(
        &coordinator,
        root.path(),
        &inputs,
        false,
        &["--fuel", "1000000000000"],
    );
    // Both have the unit's input and run it (their status files show it running).
    let running = |name: &str| {
        let path = herd_e2e::worker_dir(root.path(), name).join("status.json");
        std::fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .is_some_and(|status| status["units"].as_array().is_some_and(|u| u.len() == 1))
    };
    eventually(Duration::from_secs(60), "both to run the unit", || {
        (running("ada") && running("grace")).then_some(())
    });
    // The coordinator dies; both finish and cannot report; then both die too.
    coordinator.process.kill();
    drop(coordinator);
    eventually(
        Duration::from_secs(120),
        "both results in the spools",
        || {
            (spooled(root.path(), "ada", "finished") == 1
                && spooled(root.path(), "grace", "finished") == 1)
                .then_some(())
        },
    );
    for worker in &mut workers {
        worker.kill();
    }
    let coordinator = Coordinator::start(root.path(), port).expect("restart");
    let _workers = [start("ada"), start("grace")];
    let status = eventually(Duration::from_secs(60), "the unit validated", || {
        let status = coordinator.herd_json(&["status", &batch.to_string(), "--json"]);
        (status["validated"] == 1).then_some(status)
    });
    // Validated from the two spooled results: not recomputed, nothing reissued.
    assert_eq!(status["units"][0]["replicas"], 2, "{status}");
    check_ledger(&coordinator, &status);
}

#[test]
fn a_worker_given_a_wrong_certificate_or_a_bad_join_string_stops_with_a_clear_error() {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let coordinator = Coordinator::start(root.path(), 0).expect("coordinator");
    // The right address, another certificate's fingerprint.
    let (before, after) = coordinator.join.split_once("cert=").expect("join string");
    let wrong = format!("{before}cert={}{}", "ab".repeat(32), &after[64..]);
    let mut worker =
        herd_e2e::start_worker_with(root.path(), &wrong, "mallory", "t", 1, &["--always"])
            .expect("worker");
    eventually(Duration::from_secs(20), "the worker to stop", || {
        (!worker.is_running()).then_some(())
    });
    let log = std::fs::read_to_string(&worker.log).expect("log");
    assert!(
        log.contains("does not match the join string's") && log.contains("check the join string"),
        "{log}"
    );
    assert!(!log.contains("reconnecting"), "no retry loop: {log}");
    // A join string that does not parse is refused before anything starts.
    let output = std::process::Command::new(herd_e2e::bin_dir().join("herd-worker"))
        .args([
            "--data-dir",
            &root.path().join("w").display().to_string(),
            "--name",
            "x",
            "--join",
            "herd://127.0.0.1:1?cert=zz",
        ])
        .output()
        .expect("run herd-worker");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--join"), "{stderr}");
}

/// The arguments of a systemd `ExecStart=` line whose every argument is double-quoted.
fn unquote_exec_start(line: &str) -> Vec<String> {
    let mut arguments = Vec::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut argument = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => argument.extend(chars.next()),
                '%' | '$' => {
                    argument.push(c);
                    chars.next();
                }
                c => argument.push(c),
            }
        }
        arguments.push(argument);
    }
    arguments
}

#[test]
fn herd_worker_install_writes_a_user_unit_whose_command_runs_the_worker() {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let coordinator = Coordinator::start(root.path(), 0).expect("coordinator");
    let home = root.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let output = std::process::Command::new(herd_e2e::bin_dir().join("herd-worker"))
        .args([
            "install",
            "--join",
            &coordinator.join,
            "--name",
            "ada",
            "--team",
            "engines",
            "--no-start",
        ])
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
    assert!(
        unit.contains("RestartPreventExitStatus=2 3") && unit.contains("WantedBy=default.target")
    );
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let arguments = unquote_exec_start(exec);
    assert_eq!(
        arguments[2],
        home.join(".local/share/herd-worker").display().to_string()
    );
    // The unit's own command line, as systemd would run it: the worker joins and registers.
    let _worker = herd_e2e::spawn(
        Path::new(&arguments[0]),
        &arguments[1..],
        root.path().join("installed-worker.log"),
    )
    .expect("start the unit's command");
    eventually(
        Duration::from_secs(20),
        "the installed worker to register",
        || {
            let hosts = coordinator_hosts(&coordinator.http);
            hosts["hosts"]
                .as_array()?
                .iter()
                .any(|h| h["volunteer"] == "ada")
                .then_some(())
        },
    );
}

#[test]
fn a_download_limit_is_never_exceeded_on_a_large_input() {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let coordinator = Coordinator::start(root.path(), 0).expect("coordinator");
    let limited = |name: &str| {
        herd_e2e::start_worker_with(
            root.path(),
            &coordinator.join,
            name,
            "t",
            1,
            &["--always", "--pref", "download_kib_per_s=512"],
        )
        .expect("worker")
    };
    let workers = [limited("ada"), limited("grace")];
    // A small tile, padded to 2 MiB (the job reads only its first line's worth).
    let inputs = root.path().join("big-inputs");
    std::fs::create_dir_all(&inputs).expect("inputs dir");
    let mut input =
        herd_samples::mandelbrot_input((-2.0, -1.0), (0.5, 1.0), (16, 16), 50).into_bytes();
    input.resize(2 << 20, b' ');
    std::fs::write(inputs.join("padded"), &input).expect("write input");
    let batch = submit(&coordinator, root.path(), &inputs, true);
    let status = coordinator.herd_json(&["status", &batch.to_string(), "--json"]);
    assert_eq!(status["validated"], 1, "{status}");
    for worker in &workers {
        let log = std::fs::read_to_string(&worker.log).expect("log");
        let rate: f64 = log
            .lines()
            .filter(|l| l.contains("fetched blob") && l.contains("2097152 bytes"))
            .find_map(|l| {
                let (_, rest) = l.rsplit_once('(')?;
                rest.trim_end_matches(" KiB/s)").parse().ok()
            })
            .expect("the big input's fetch is logged");
        // A limit is an upper bound: the reader waits before each 16 KiB chunk but the first
        // tenth of a second's burst and the last chunk, so no transfer can go faster than this
        // (plus the log's rounding). A busy machine only ever makes it slower, so the lower
        // bound is loose; how close to the limit it paces is for a benchmark, not a test.
        let (limit, size) = (512.0, 2048.0);
        let fastest = limit * size / (size - limit / 10.0 - 16.0) + 1.0;
        assert!(
            rate <= fastest && rate >= limit / 8.0,
            "fetched at {rate} KiB/s with a {limit} KiB/s limit (at most {fastest:.1})"
        );
    }
}

/// The coordinator goes away while the workers are still fetching a unit's input: the
/// replicas are not given up (that would waste them and count as errors); the workers fetch
/// again once it is back, and the unit validates on exactly its two replicas.
#[test]
fn losing_the_coordinator_mid_fetch_does_not_give_the_replicas_up() {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let port = free_udp_port();
    let mut coordinator = Coordinator::start(root.path(), port).expect("coordinator");
    let join = coordinator.join.clone();
    let limited = |name: &str| {
        herd_e2e::start_worker_with(
            root.path(),
            &join,
            name,
            "t",
            1,
            &["--always", "--pref", "download_kib_per_s=256"],
        )
        .expect("worker")
    };
    let workers = [limited("ada"), limited("grace")];
    // 2 MiB at 256 KiB/s: eight seconds of fetching to be interrupted.
    let inputs = root.path().join("big-inputs");
    std::fs::create_dir_all(&inputs).expect("inputs dir");
    let mut input =
        herd_samples::mandelbrot_input((-2.0, -1.0), (0.5, 1.0), (16, 16), 50).into_bytes();
    input.resize(2 << 20, b' ');
    std::fs::write(inputs.join("padded"), &input).expect("write input");
    let batch = submit(&coordinator, root.path(), &inputs, false);
    eventually(Duration::from_secs(30), "both to accept the unit", || {
        (spooled(root.path(), "ada", "assigned") == 1
            && spooled(root.path(), "grace", "assigned") == 1)
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    coordinator.process.kill();
    drop(coordinator);
    let coordinator = Coordinator::start(root.path(), port).expect("restart");
    let status = eventually(Duration::from_secs(90), "the unit validated", || {
        let status = coordinator.herd_json(&["status", &batch.to_string(), "--json"]);
        (status["validated"] == 1).then_some(status)
    });
    assert_eq!(status["units"][0]["replicas"], 2, "{status}");
    for worker in &workers {
        let log = std::fs::read_to_string(&worker.log).expect("log");
        assert!(!log.contains("aborted"), "{log}");
        assert!(log.contains("it will run after reconnecting"), "{log}");
    }
}

#[test]
fn a_worker_stops_cleanly_on_sigterm() {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let coordinator = Coordinator::start(root.path(), 0).expect("coordinator");
    let mut worker = start_worker(root.path(), &coordinator.join, "ada", "t", 1).expect("worker");
    eventually(Duration::from_secs(20), "the worker to connect", || {
        std::fs::read_to_string(&worker.log)
            .ok()?
            .contains("connected to")
            .then_some(())
    });
    let status = std::process::Command::new("kill")
        .args(["-TERM", &worker.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let code = eventually(Duration::from_secs(10), "the worker to exit", || {
        worker.exit_code()
    });
    assert_eq!(code, Some(0), "a clean exit");
    let log = std::fs::read_to_string(&worker.log).expect("log");
    assert!(
        log.contains("stopping: finished work is in the spool"),
        "{log}"
    );
}

/// The public host records, fetched with a plain HTTP client (no token).
fn coordinator_hosts(http: &str) -> serde_json::Value {
    let mut response = ureq::get(&format!("{http}/api/v1/hosts"))
        .call()
        .expect("GET /api/v1/hosts");
    response.body_mut().read_json().expect("JSON")
}

/// Sends `frame` as the first message of a fresh connection and returns the answer.
async fn hello_answer(join: &herd_net::JoinString, frame: Vec<u8>) -> ServerMessage {
    let connection = herd_net::connect(join).await.expect("connect");
    refused_first(&connection, frame).await
}

/// Sends `frame` as the first message of `connection` and returns the answer, a refusal: the
/// coordinator closes the connection after it.
async fn refused_first(connection: &herd_net::Connection, frame: Vec<u8>) -> ServerMessage {
    let answer = first_answer(connection, frame).await;
    let closed = tokio::time::timeout(Duration::from_secs(10), connection.closed()).await;
    assert!(closed.is_ok(), "the connection was not closed");
    answer
}

/// Sends `frame` as the first message of `connection` and returns the answer.
async fn first_answer(connection: &herd_net::Connection, frame: Vec<u8>) -> ServerMessage {
    let (mut send, mut recv) = connection.open_bi().await.expect("stream");
    send.write_all(&frame).await.expect("write");
    send.finish().expect("finish");
    herd_net::read_message(&mut recv).await.expect("an answer")
}

#[test]
fn bad_versions_frames_signatures_modules_and_tokens_get_clear_errors_and_the_coordinator_carries_on()
 {
    let root = tempfile::tempdir().expect("tempdir");
    let coordinator = Coordinator::start(root.path(), 0).expect("coordinator");
    let join: herd_net::JoinString = coordinator.join.parse().expect("join string");
    let coordinator_http = coordinator.http.clone();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        // A hello of a later version: refused by name (its proof is not even looked at).
        let eve = SigningKey::from_seed([3; 32]);
        let later = herd_protocol::encode_frame(&ClientMessage::Hello(
            Hello {
                protocol_version: 99,
                ..hello_from(&eve, "eve", None)
            }
            .sign(&eve, &ChannelBinding([0; 32]))
            .expect("sign"),
        ))
        .expect("encode");
        match hello_answer(&join, later).await {
            ServerMessage::Error { code, message } => {
                assert_eq!(code, ErrorCode::UnsupportedVersion);
                assert!(message.contains("protocol version 99"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
        // Exactly what a protocol-4 worker sends (its hello had no proof, so it does not decode
        // as this version's): refused by its version's number, which it can read.
        let mut v4 = vec![0, 4, herd_sandbox::INSTRUMENTATION_VERSION as u8];
        v4.extend_from_slice(&[3; 32]);
        v4.extend_from_slice(&[3, b'e', b'v', b'e', 0, 1, 0]);
        let mut frame = (v4.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&v4);
        match hello_answer(&join, frame).await {
            ServerMessage::Error { code, message } => {
                assert_eq!(code, ErrorCode::UnsupportedVersion);
                assert!(
                    message.contains("protocol version 4 is not supported")
                        && message.contains(&format!("speaks {PROTOCOL_VERSION}"))
                        && message.contains("update herd-worker"),
                    "{message}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        // The right protocol, but another version of the instrumentation: its replicas' fuel
        // could not be compared with the others', so it is refused by name.
        let other_pass = herd_protocol::encode_frame(&ClientMessage::Hello(
            Hello {
                instrumentation_version: herd_sandbox::INSTRUMENTATION_VERSION + 1,
                ..hello_from(&eve, "eve", None)
            }
            .sign(&eve, &ChannelBinding([0; 32]))
            .expect("sign"),
        ))
        .expect("encode");
        match hello_answer(&join, other_pass).await {
            ServerMessage::Error { code, message } => {
                assert_eq!(code, ErrorCode::UnsupportedVersion);
                assert!(message.contains("instrumentation version"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
        // A lone report for a replica no one was given: refused by name and counted against
        // the host in its public record, and the connection stays usable. (A report needs no
        // signature of its own: only the host can have proven this connection, which the
        // forged-hello checks below show.)
        let host = herd_protocol::SigningKey::from_seed([4; 32]);
        let connection = herd_net::connect(&join).await.expect("connect");
        let welcome: ServerMessage =
            herd_net::say_hello(&connection, &host, hello_from(&host, "mallory", None))
                .await
                .expect("hello");
        assert!(
            matches!(welcome, ServerMessage::Welcome { .. }),
            "{welcome:?}"
        );
        let stray = herd_protocol::Report {
            replica_id: 1,
            outcome: herd_protocol::Outcome::Aborted(herd_protocol::AbortReason::Cancelled),
        };
        let answer: ServerMessage = herd_net::request(
            &connection,
            &ClientMessage::Report {
                report: stray,
                output: Vec::new(),
            },
        )
        .await
        .expect("an answer");
        match answer {
            ServerMessage::Error { code, message } => {
                assert_eq!(code, ErrorCode::UnknownReplica);
                assert!(message.contains('1'), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
        let hosts: serde_json::Value = coordinator_hosts(&coordinator_http);
        let mallory = hosts["hosts"]
            .as_array()
            .expect("hosts")
            .iter()
            .find(|h| h["volunteer"] == "mallory")
            .expect("mallory's host is listed")
            .clone();
        assert_eq!(mallory["refused_reports"], 1, "{mallory}");
        let standing: ServerMessage = herd_net::request(&connection, &ClientMessage::Standing)
            .await
            .expect("the connection still answers");
        assert!(
            matches!(standing, ServerMessage::Standing(_)),
            "{standing:?}"
        );

        // An exchange: a report whose output does not match its hash is refused alone (and
        // counted), one for a replica that does not exist likewise; an exchange asking for more
        // than the maximum is refused whole and the connection closed.
        let honest = herd_protocol::SigningKey::from_seed([6; 32]);
        let connection = herd_net::connect(&join).await.expect("connect");
        let _: ServerMessage =
            herd_net::say_hello(&connection, &honest, hello_from(&honest, "trent", None))
                .await
                .expect("hello");
        let claims = |replica_id: u64, output: &[u8]| herd_protocol::FinishedReplica {
            report: herd_protocol::Report {
                replica_id,
                outcome: herd_protocol::Outcome::Countable(herd_protocol::RunResult {
                    status: herd_protocol::Status::Success,
                    fuel: 1,
                    output_len: 2,
                    output_hash: herd_protocol::ContentHash::of(b"ok"),
                }),
            },
            output: output.to_vec(),
        };
        let answer: ServerMessage = herd_net::request(
            &connection,
            &ClientMessage::Exchange {
                reports: vec![claims(1, b"no"), claims(424_242, b"ok")],
                want: 0,
                fuel_per_second: None,
            },
        )
        .await
        .expect("an answer");
        let ServerMessage::Exchanged {
            accepted, refused, ..
        } = answer
        else {
            panic!("unexpected {answer:?}");
        };
        assert!(accepted.is_empty());
        let codes: Vec<ErrorCode> = refused.iter().map(|r| r.code).collect();
        assert_eq!(codes, vec![ErrorCode::BadOutput, ErrorCode::UnknownReplica]);
        assert!(
            refused[0].message.contains("hash to"),
            "{}",
            refused[0].message
        );
        let hosts: serde_json::Value = coordinator_hosts(&coordinator_http);
        let trent = hosts["hosts"]
            .as_array()
            .expect("hosts")
            .iter()
            .find(|h| h["volunteer"] == "trent")
            .expect("trent's host is listed")
            .clone();
        assert_eq!(trent["refused_reports"], 2, "{trent}");
        let answer: ServerMessage = herd_net::request(
            &connection,
            &ClientMessage::Exchange {
                reports: Vec::new(),
                want: 65,
                fuel_per_second: None,
            },
        )
        .await
        .expect("an answer");
        match answer {
            ServerMessage::Error { code, message } => {
                assert_eq!(code, ErrorCode::Malformed);
                assert!(message.contains("at most 64"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
        let closed = tokio::time::timeout(Duration::from_secs(10), connection.closed()).await;
        assert!(closed.is_ok(), "the connection was not closed");

        let junk = vec![0, 0, 0, 3, 0xff, 0xff, 0xff];
        match hello_answer(&join, junk).await {
            ServerMessage::Error { code, .. } => assert_eq!(code, ErrorCode::Malformed),
            other => panic!("unexpected {other:?}"),
        }
    });
    // Still serving.
    let credit = coordinator.herd_json(&["credit", "--json"]);
    assert!(credit["volunteers"].is_array());

    // A module with a forbidden import is refused before anything is created, naming the import.
    let bad = root.path().join("bad.wat");
    std::fs::write(
        &bad,
        r#"(module (import "env" "system" (func (param i32))) (memory (export "memory") 1) (func (export "_start")))"#,
    )
    .expect("write");
    let inputs = root.path().join("inputs");
    write_tiles(&inputs, 1);
    let output = coordinator.herd(&[
        "submit",
        &bad.display().to_string(),
        "--inputs",
        &inputs.display().to_string(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("`env.system`"));

    // Bytes that are no module at all, named `.wasm`: the same words from `herd run`, from
    // `herd submit` and in the coordinator's 422, decided by the bytes, not the name.
    let not_a_module = "not a WebAssembly module (no `\\0asm` header, and not WebAssembly text)";
    let junk: Vec<u8> = (0..256u32).map(|i| (i * 151 + 7) as u8 | 0x80).collect();
    let junk_path = root.path().join("x.wasm");
    std::fs::write(&junk_path, &junk).expect("write");
    for args in [
        vec!["run", junk_path.to_str().expect("path")],
        vec![
            "submit",
            junk_path.to_str().expect("path"),
            "--inputs",
            inputs.to_str().expect("path"),
        ],
    ] {
        let output = coordinator.herd(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(not_a_module), "{args:?}: {stderr}");
    }
    let junk_hash = herd_protocol::ContentHash::of(&junk);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let uploaded = agent
        .put(&format!("{}/api/v1/blobs/{junk_hash}", coordinator.http))
        .header("Authorization", &format!("Bearer {}", coordinator.token))
        .send(&junk[..])
        .expect("an answer");
    assert_eq!(uploaded.status().as_u16(), 201);
    let input_hash =
        herd_protocol::ContentHash::of(&std::fs::read(inputs.join("tile-00")).expect("an input"));
    let request = format!(
        r#"{{"module": "{junk_hash}", "units": [{{"name": "u", "input": "{input_hash}"}}]}}"#
    );
    let (status, body) = coordinator.api(
        "POST",
        "/api/v1/batches",
        Some(&coordinator.token),
        Some(&request),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("module_rejected")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(not_a_module)),
        "{body}"
    );

    // A module that could never run under the batch's memory limit is refused, naming both.
    let big = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crates/sandbox/fixtures/big_memory.wat"
    );
    let output = coordinator.herd(&[
        "submit",
        big,
        "--inputs",
        &inputs.display().to_string(),
        "--memory-mb",
        "1",
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("67108864 bytes of initial memory") && stderr.contains("1048576"),
        "{stderr}"
    );

    // Adaptive replication settings out of range are refused by name.
    let good = root.path().join("mandelbrot.wasm");
    std::fs::write(&good, herd_samples::MANDELBROT_WASM).expect("module");
    let output = coordinator.herd(&[
        "submit",
        &good.display().to_string(),
        "--inputs",
        &inputs.display().to_string(),
        "--trust-after",
        "5",
        "--spot-check",
        "1.5",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("spot_check 1.5 is outside 0..=1"),
        "{stderr}"
    );

    // A wrong token gets 403 and a message, never data.
    let output = std::process::Command::new(herd_e2e::bin_dir().join("herd"))
        .args([
            "status",
            "1",
            "--coordinator",
            &coordinator.http,
            "--token",
            "wrong-token-0000",
        ])
        .output()
        .expect("run herd");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("forbidden"), "{stderr}");
}

/// Issue 13's attack, from outside: a raw client speaking the protocol names an honest host's
/// public key (public at `/api/v1/hosts`), another volunteer and team, and no replicas held. It
/// cannot prove the key, so it is refused and changes nothing: the honest host keeps its
/// volunteer, team, replicas and credit. A hello recorded on one connection is refused on
/// another; a proven host gets no blob it was not assigned; and a stranger's own host cannot move
/// a volunteer to another team.
#[test]
fn a_stranger_naming_another_hosts_key_is_refused_and_takes_no_replica_credit_team_or_blob() {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let coordinator = Coordinator::start(root.path(), 0).expect("coordinator");
    let join: herd_net::JoinString = coordinator.join.parse().expect("join string");
    let start =
        |name: &str| start_worker(root.path(), &coordinator.join, name, "real", 1).expect("worker");
    let ada = start("ada");
    let bob = start("bob");
    // One unit lasting many seconds (four times the other tests' long tile), so both honest
    // hosts are surely in the middle of it during the attack, however fast the machine.
    let long = root.path().join("attack-inputs");
    std::fs::create_dir_all(&long).expect("inputs dir");
    let text = herd_samples::mandelbrot_input((-0.5, -0.4), (0.1, 0.4), (320, 320), 20_000);
    std::fs::write(long.join("deep"), text).expect("write input");
    let long_batch = submit_with(
        &coordinator,
        root.path(),
        &long,
        false,
        &["--fuel", "1000000000000"],
    );
    eventually(
        Duration::from_secs(60),
        "ada and bob to start the unit",
        || {
            (spooled(root.path(), "ada", "assigned") == 1
                && spooled(root.path(), "bob", "assigned") == 1)
                .then_some(())
        },
    );
    let host_of = |hosts: &serde_json::Value, volunteer: &str| -> Vec<serde_json::Value> {
        hosts["hosts"]
            .as_array()
            .expect("hosts")
            .iter()
            .filter(|h| h["volunteer"] == volunteer)
            .cloned()
            .collect()
    };
    let before = coordinator_hosts(&coordinator.http);
    let ada_host = host_of(&before, "ada").pop().expect("ada's host is listed");
    assert_eq!(ada_host["in_progress"], 1, "{ada_host}");
    let ada_key = herd_protocol::PublicKey::from_hex(ada_host["public_key"].as_str().expect("key"))
        .expect("a public key");
    let module = herd_protocol::ContentHash::of(herd_samples::MANDELBROT_WASM);
    let input = herd_protocol::ContentHash::of(
        &std::fs::read(long.join("deep")).expect("the long unit's input"),
    );
    let mallory = SigningKey::from_seed([66; 32]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        // Ada's key, mallory's name and team, nothing held: signed with mallory's own key, the
        // best a stranger can do.
        let claim = Hello {
            host_key: ada_key,
            ..hello_from(&mallory, "mallory", Some("mallory-team"))
        };
        let connection = herd_net::connect(&join).await.expect("connect");
        let channel = herd_net::channel_binding(&connection).expect("channel binding");
        let forged = herd_protocol::encode_frame(&ClientMessage::Hello(
            claim.clone().sign(&mallory, &channel).expect("sign"),
        ))
        .expect("encode");
        match refused_first(&connection, forged).await {
            ServerMessage::Error { code, message } => {
                assert_eq!(code, ErrorCode::BadSignature);
                assert!(
                    message.contains(&ada_key.to_hex())
                        && message.contains("not signed by that key"),
                    "{message}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        // With no proof at all.
        let unproven =
            herd_protocol::encode_frame(&ClientMessage::Hello(herd_protocol::SignedHello {
                hello: claim,
                proof: herd_protocol::Signature(Vec::new()),
            }))
            .expect("encode");
        match hello_answer(&join, unproven).await {
            ServerMessage::Error { code, .. } => assert_eq!(code, ErrorCode::BadSignature),
            other => panic!("unexpected {other:?}"),
        }

        // Mallory's own host, proven on its connection: it may register, but it gets no blob
        // that no replica of its own needs (the unit's module and input are ada's and bob's).
        let first = herd_net::connect(&join).await.expect("connect");
        let channel = herd_net::channel_binding(&first).expect("channel binding");
        let recorded = herd_protocol::encode_frame(&ClientMessage::Hello(
            hello_from(&mallory, "mallory", None)
                .sign(&mallory, &channel)
                .expect("sign"),
        ))
        .expect("encode");
        let welcome = first_answer(&first, recorded.clone()).await;
        assert!(
            matches!(welcome, ServerMessage::Welcome { .. }),
            "{welcome:?}"
        );
        for hash in [module, input] {
            let answer: ServerMessage =
                herd_net::request(&first, &ClientMessage::FetchBlob { hash })
                    .await
                    .expect("an answer");
            match answer {
                ServerMessage::Error { code, message } => {
                    assert_eq!(code, ErrorCode::NotAssigned);
                    assert!(message.contains(&hash.to_hex()), "{message}");
                }
                other => panic!("blob {hash} was served: {other:?}"),
            }
        }
        // The same hello bytes, recorded there and sent on another connection: refused.
        match hello_answer(&join, recorded).await {
            ServerMessage::Error { code, message } => {
                assert_eq!(code, ErrorCode::BadSignature);
                assert!(message.contains("another connection"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }

        // A host of mallory's giving ada's name is refused: an anonymous name is the machine's
        // that first gave it (with any team, ada's own or another).
        let stranger = SigningKey::from_seed([67; 32]);
        let connection = herd_net::connect(&join).await.expect("connect");
        let answer: ServerMessage = herd_net::say_hello(
            &connection,
            &stranger,
            hello_from(&stranger, "ada", Some("mallory-team")),
        )
        .await
        .expect("an answer");
        match answer {
            ServerMessage::Error { code, message } => {
                assert_eq!(code, ErrorCode::NotAllowed);
                assert!(
                    message.contains("`ada`") && message.contains("another machine"),
                    "{message}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    });

    // The honest run is untouched: the unit is validated by ada's and bob's replicas, and no
    // third was needed (neither was taken from its host and reissued).
    let status = eventually(Duration::from_secs(180), "the long unit validated", || {
        let status = coordinator.herd_json(&["status", &long_batch.to_string(), "--json"]);
        (status["validated"] == 1).then_some(status)
    });
    assert_eq!(status["units"][0]["replicas"], 2, "{status}");
    // More work runs as ever, every output right.
    let inputs = root.path().join("inputs");
    let tiles = write_tiles(&inputs, 6);
    let batch = submit(&coordinator, root.path(), &inputs, true);
    check_results(&coordinator, root.path(), batch, &tiles);

    let after = coordinator_hosts(&coordinator.http);
    let ada_hosts = host_of(&after, "ada");
    assert_eq!(ada_hosts.len(), 1, "only ada's own host is ada's: {after}");
    let ada_host = &ada_hosts[0];
    assert_eq!(ada_host["public_key"], ada_key.to_hex());
    assert_eq!(ada_host["valid"], 7, "{ada_host}");
    assert_eq!(ada_host["timed_out"], 0, "{ada_host}");
    assert_eq!(ada_host["refused_reports"], 0, "{ada_host}");
    assert_eq!(ada_host["in_progress"], 0, "{ada_host}");
    let mallory_hosts = host_of(&after, "mallory");
    assert_eq!(mallory_hosts.len(), 1, "mallory's own host only: {after}");
    assert_eq!(
        mallory_hosts[0]["public_key"],
        mallory.public_key().to_hex()
    );
    assert_eq!(mallory_hosts[0]["valid"], 0);
    let credit = coordinator.herd_json(&["credit", "--json"]);
    let line = |name: &str| {
        credit["volunteers"]
            .as_array()
            .expect("volunteers")
            .iter()
            .find(|v| v["name"] == name)
            .cloned()
    };
    for honest in ["ada", "bob"] {
        let line = line(honest).expect("listed");
        assert_eq!(line["team"], "real", "{line}");
        assert_eq!(line["replicas"], 7, "{line}");
        assert!(line["credit"].as_f64().expect("credit") > 0.0, "{line}");
    }
    if let Some(mallory) = line("mallory") {
        assert_eq!(mallory["credit"], 0.0, "{mallory}");
    }
    assert!(
        credit["teams"]
            .as_array()
            .expect("teams")
            .iter()
            .all(|t| t["name"] != "mallory-team"),
        "{credit}"
    );
    let log = std::fs::read_to_string(&coordinator.process.log).expect("log");
    assert!(!log.contains("lost replicas will be reissued"), "{log}");
    for worker in [&ada, &bob] {
        let log = std::fs::read_to_string(&worker.log).expect("log");
        assert!(!log.contains("refused"), "{log}");
    }
    // A real worker on another machine (another host key) giving ada's name stops at once with
    // the reason (exit 3, no retry loop); ada's team stays.
    let elsewhere = root.path().join("another-machine");
    std::fs::create_dir_all(&elsewhere).expect("dir");
    let mut joiner =
        start_worker(&elsewhere, &coordinator.join, "ada", "mallory-team", 1).expect("worker");
    let code = eventually(Duration::from_secs(30), "the joiner to stop", || {
        joiner.exit_code()
    });
    assert_eq!(code, Some(3));
    let log = std::fs::read_to_string(&joiner.log).expect("log");
    assert!(
        log.contains("held by another machine") && log.contains("NotAllowed"),
        "{log}"
    );
    let credit = coordinator.herd_json(&["credit", "--json"]);
    let ada_line = credit["volunteers"]
        .as_array()
        .expect("volunteers")
        .iter()
        .find(|v| v["name"] == "ada")
        .cloned()
        .expect("ada");
    assert_eq!(ada_line["team"], "real");
}

/// The API contract of researchers: the administrator adds researchers, each sees only their
/// own batches and blobs, pages and cancelling work, and every refusal is JSON with a code.
#[test]
fn researchers_see_only_their_own_batches_and_every_refusal_names_its_problem() {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let coordinator = Coordinator::start(root.path(), 0).expect("coordinator");
    let admin = coordinator.token.clone();
    // The administrator adds grace; her token is printed once.
    let added = coordinator.herd_json(&["researcher", "add", "grace", "--json"]);
    let grace = added["token"].as_str().expect("token").to_string();
    let (status, body) = coordinator.api(
        "POST",
        "/api/v1/researchers",
        Some(&admin),
        Some(r#"{"name": "grace"}"#),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("invalid_researcher"))
    );
    // Grace may not add researchers.
    let (status, body) = coordinator.api(
        "POST",
        "/api/v1/researchers",
        Some(&grace),
        Some(r#"{"name": "eve"}"#),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );

    // Each submits a batch.
    write_tiles(&root.path().join("inputs"), 3);
    let mine = submit(
        &coordinator,
        root.path(),
        &root.path().join("inputs"),
        false,
    );
    let module = root.path().join("mandelbrot.wasm");
    let hers = submit_as(&coordinator, &grace, &module, &root.path().join("inputs"));

    // Lists: each their own.
    let listed = |token: &str| -> Vec<u64> {
        let output = coordinator.herd_as(token, &["batches", "--json"]);
        assert!(output.status.success());
        let batches: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
        batches
            .as_array()
            .expect("list")
            .iter()
            .map(|b| b["id"].as_u64().expect("id"))
            .collect()
    };
    assert_eq!(listed(&admin), vec![mine]);
    assert_eq!(listed(&grace), vec![hers]);
    // Another researcher's batch is "no such batch", to status, cancel and retire alike.
    for (method, path) in [
        ("GET", format!("/api/v1/batches/{hers}")),
        ("POST", format!("/api/v1/batches/{hers}/cancel")),
        ("POST", format!("/api/v1/batches/{hers}/retire")),
    ] {
        let (status, body) = coordinator.api(method, &path, Some(&admin), None);
        assert_eq!(status, 404, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "batch_not_found");
    }
    // She sees her own batch; the module is the same bytes in both batches, so its blob is
    // each one's to read.
    let (status, _) = coordinator.api(
        "GET",
        &format!("/api/v1/batches/{hers}"),
        Some(&grace),
        None,
    );
    assert_eq!(status, 200);
    let module_hash = herd_protocol::ContentHash::of(herd_samples::MANDELBROT_WASM);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    for token in [&admin, &grace] {
        let response = agent
            .get(&format!("{}/api/v1/blobs/{module_hash}", coordinator.http))
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .expect("an answer");
        assert_eq!(response.status().as_u16(), 200);
    }
    // A blob of no batch of hers is not hers to read, even by hash.
    let (status, body) = coordinator.api(
        "GET",
        &format!("/api/v1/blobs/{}", "ab".repeat(32)),
        Some(&grace),
        None,
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("blob_not_found"))
    );
    // Nor can she make a batch of another researcher's blobs by naming their hashes (to read
    // them as its blobs, or its outputs): they are missing to her, exactly as absent ones are.
    let secret = b"2 2 1 1 4 4 10".to_vec();
    let secret_hash = herd_protocol::ContentHash::of(&secret);
    let private_module = herd_samples::PRIMES_WASM.to_vec();
    let private_module_hash = herd_protocol::ContentHash::of(&private_module);
    for (hash, bytes) in [(secret_hash, secret), (private_module_hash, private_module)] {
        let response = agent
            .put(&format!("{}/api/v1/blobs/{hash}", coordinator.http))
            .header("Authorization", &format!("Bearer {admin}"))
            .send(&bytes[..])
            .expect("an answer");
        assert_eq!(response.status().as_u16(), 201);
    }
    for (module, input, code) in [
        (module_hash, secret_hash, "input_missing"),
        (private_module_hash, secret_hash, "module_missing"),
    ] {
        let request =
            format!(r#"{{"module": "{module}", "units": [{{"name": "u", "input": "{input}"}}]}}"#);
        let (status, body) =
            coordinator.api("POST", "/api/v1/batches", Some(&grace), Some(&request));
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some(code)),
            "{body}"
        );
        let message = body["error"]["message"].as_str().expect("message");
        assert!(message.contains("has not been uploaded"), "{message}");
    }
    for hash in [secret_hash, private_module_hash] {
        let (status, _) =
            coordinator.api("GET", &format!("/api/v1/blobs/{hash}"), Some(&grace), None);
        assert_eq!(status, 404);
    }
    assert_eq!(listed(&grace), vec![hers]);
    // The researcher who uploaded them reads them.
    let (status, _) = coordinator.api(
        "GET",
        &format!("/api/v1/blobs/{secret_hash}"),
        Some(&admin),
        None,
    );
    assert_eq!(status, 200);

    // Pages.
    let (status, page) = coordinator.api("GET", "/api/v1/batches?limit=1", Some(&admin), None);
    assert_eq!(status, 200);
    assert_eq!(page["batches"][0]["id"], mine);
    assert_eq!(page["next_after"], mine);
    let (status, page) = coordinator.api(
        "GET",
        &format!("/api/v1/batches?after={mine}&limit=1"),
        Some(&admin),
        None,
    );
    assert_eq!(
        (status, page["batches"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    for bad in ["/api/v1/batches?limit=0", "/api/v1/batches?limit=5000"] {
        let (status, body) = coordinator.api("GET", bad, Some(&admin), None);
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("out_of_range")),
            "{bad}"
        );
    }
    let (status, body) = coordinator.api("GET", "/api/v1/batches?after=x", Some(&admin), None);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_query"))
    );
    // A body over the limit is refused as JSON too.
    let huge = " ".repeat(33 << 20);
    let (status, body) = coordinator.api("POST", "/api/v1/batches", Some(&grace), Some(&huge));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("too_large")),
        "{body}"
    );
    // Submitting the same module again skips its upload (the coordinator has it for her).
    let resubmitted = submit_as(&coordinator, &grace, &module, &root.path().join("inputs"));
    let cancelled = coordinator.herd_as(&grace, &["cancel", &resubmitted.to_string()]);
    assert!(cancelled.status.success());
    // A bulk upload cut short is refused whole, naming the blob.
    let (status, body) = coordinator.api(
        "POST",
        "/api/v1/blobs",
        Some(&grace),
        Some("\0\0\0\x02ok\0\0\0\x09short"),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_frame")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("blob 1")),
        "{body}"
    );
    // An empty bulk upload holds no blob: refused, as the document says (schemathesis found
    // it accepted).
    let (status, body) = coordinator.api("POST", "/api/v1/blobs", Some(&grace), Some(""));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("empty")),
        "{body}"
    );
    // No token, a wrong token.
    let (status, body) = coordinator.api("GET", "/api/v1/batches", None, None);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, body) =
        coordinator.api("GET", "/api/v1/batches", Some("not-a-token-at-all"), None);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );

    // Grace cancels hers: no worker ran, so every unit fails as cancelled.
    let cancelled = coordinator.herd_as(&grace, &["cancel", &hers.to_string(), "--json"]);
    assert!(cancelled.status.success());
    let cancelled: serde_json::Value = serde_json::from_slice(&cancelled.stdout).expect("JSON");
    assert_eq!(cancelled["cancelled_units"], 3);
    let status = coordinator.herd_as(&grace, &["status", &hers.to_string(), "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("JSON");
    assert_eq!(
        (status["failed"].as_u64(), status["open"].as_u64()),
        (Some(3), Some(0))
    );
    // Mine is untouched, and a worker computes it (cancelled units are never sent).
    let _worker = start_worker(root.path(), &coordinator.join, "ada", "t", 2).expect("worker");
    let _other = start_worker(root.path(), &coordinator.join, "alan", "t", 2).expect("worker");
    eventually(Duration::from_secs(60), "my batch to be validated", || {
        let status = coordinator.herd_json(&["status", &mine.to_string(), "--json"]);
        (status["validated"] == 3).then_some(())
    });
    let hosts = coordinator_hosts(&coordinator.http);
    let replicas: u64 = hosts["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| {
            ["valid", "invalid", "errors", "timed_out", "in_progress"]
                .iter()
                .map(|field| h[field].as_u64().expect("a count"))
                .sum::<u64>()
        })
        .sum();
    // Quorum 2 on 3 units: at least 6 replicas, and none of grace's cancelled units.
    assert!(
        (6..=8).contains(&replicas),
        "only my 3 units were computed: {hosts}"
    );
    // Leaderboards: a page, sorted, ranked; unknown boards and sorts are refused by name.
    let (status, board) = coordinator.api(
        "GET",
        "/api/v1/leaderboard/volunteers?sort=recent&limit=1",
        None,
        None,
    );
    assert_eq!((status, board["total"].as_u64()), (200, Some(2)), "{board}");
    assert_eq!(board["entries"].as_array().map(Vec::len), Some(1));
    assert_eq!(board["entries"][0]["rank"], 1);
    let (status, body) = coordinator.api("GET", "/api/v1/leaderboard/planets", None, None);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, body) = coordinator.api("GET", "/api/v1/leaderboard/teams?sort=size", None, None);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_query"))
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("size"))
    );
    let (status, body) = coordinator.api("GET", "/api/v1/throughput?hours=1000", None, None);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("out_of_range"))
    );

    // The API describes itself.
    let (status, spec) = coordinator.api("GET", "/api/v1/openapi.json", None, None);
    assert_eq!((status, spec["openapi"].as_str()), (200, Some("3.1.0")));
    assert!(spec["paths"]["/api/v1/batches/{id}/units"]["get"].is_object());

    // Dashboards: the summary, Prometheus metrics and BOINC-style exports agree with the
    // credit the API shows.
    let (status, summary) = coordinator.api("GET", "/api/v1/summary", None, None);
    assert_eq!(status, 200);
    assert_eq!(summary["units_validated"], 3, "{summary}");
    assert_eq!(summary["hosts_active"], 2, "{summary}");
    assert!(
        summary["units_per_second"].as_f64() > Some(0.0),
        "{summary}"
    );
    let metrics = ureq::get(&format!("{}/metrics", coordinator.http))
        .call()
        .expect("GET /metrics")
        .body_mut()
        .read_to_string()
        .expect("text");
    assert!(
        metrics.contains("\nherd_units_validated_total 3\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE herd_queue_depth gauge"),
        "{metrics}"
    );
    let (status, body) = coordinator.api("POST", "/api/v1/stats/export", Some(&grace), None);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (status, exported) = coordinator.api("POST", "/api/v1/stats/export", Some(&admin), None);
    assert_eq!(status, 200, "{exported}");
    let fetch = |file: &str| -> Vec<u8> {
        let mut response = ureq::get(&format!("{}/stats/{file}", coordinator.http))
            .call()
            .expect("GET a stats file");
        response.body_mut().read_to_vec().expect("bytes")
    };
    let gunzip = |bytes: Vec<u8>| -> String {
        use std::io::Read;
        let mut text = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut text)
            .expect("gzip");
        text
    };
    let users = gunzip(fetch("user.gz"));
    let users = roxmltree::Document::parse(&users).expect("user.gz is XML");
    assert_eq!(users.root_element().tag_name().name(), "users");
    let credit = coordinator.herd_json(&["credit", "--json"]);
    for volunteer in credit["volunteers"].as_array().expect("volunteers") {
        let name = volunteer["name"].as_str().expect("name");
        let listed = users
            .root_element()
            .children()
            .find(|u| {
                u.children()
                    .any(|c| c.has_tag_name("name") && c.text() == Some(name))
            })
            .unwrap_or_else(|| panic!("{name} is in user.gz"));
        let total: f64 = listed
            .children()
            .find(|c| c.has_tag_name("total_credit"))
            .and_then(|c| c.text())
            .expect("total_credit")
            .parse()
            .expect("a number");
        let expected = volunteer["credit"].as_f64().expect("credit");
        assert!(
            (total - expected).abs() < 1e-6,
            "{name}: {total} vs {expected}"
        );
    }
    let tables = String::from_utf8(fetch("tables.xml")).expect("UTF-8");
    let tables = roxmltree::Document::parse(&tables).expect("tables.xml is XML");
    let nusers = tables
        .root_element()
        .children()
        .find(|c| c.has_tag_name("nusers_total"))
        .and_then(|c| c.text());
    assert_eq!(nusers, Some("2"));
    for file in ["team.gz", "host.gz"] {
        let text = gunzip(fetch(file));
        roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    let (status, body) = coordinator.api("GET", "/stats/passwords.txt", None, None);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
}

/// A batch of 100,000 units through the researcher's tools: inputs uploaded many to a request,
/// the batch created in one call, and its units listed a page at a time.
#[test]
fn a_batch_of_100000_units_is_created_and_listed_through_the_api() {
    const UNITS: usize = 100_000;
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let coordinator = Coordinator::start(root.path(), 0).expect("coordinator");
    let inputs = root.path().join("sweep");
    std::fs::create_dir_all(&inputs).expect("mkdir");
    for i in 0..UNITS {
        std::fs::write(inputs.join(format!("p{i:06}")), format!("{i}\n")).expect("input");
    }
    let started = std::time::Instant::now();
    let batch = submit(&coordinator, root.path(), &inputs, false);
    let created = started.elapsed();
    let status = coordinator.herd_json(&["status", &batch.to_string(), "--json"]);
    let listed = started.elapsed() - created;
    assert_eq!(status["total"], UNITS as u64);
    assert_eq!(status["open"], UNITS as u64);
    let units = status["units"].as_array().expect("units");
    assert_eq!(units.len(), UNITS);
    // In id order, each named after its file, nothing listed twice.
    let ids: Vec<u64> = units
        .iter()
        .map(|u| u["id"].as_u64().expect("id"))
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(units[0]["name"], "p000000");
    assert_eq!(units[UNITS - 1]["name"], format!("p{:06}", UNITS - 1));
    // A page in the middle, filtered by state.
    let (code, page) = coordinator.api(
        "GET",
        &format!(
            "/api/v1/batches/{batch}/units?after={}&limit=10&state=open",
            ids[50_000]
        ),
        Some(&coordinator.token),
        None,
    );
    assert_eq!(code, 200);
    assert_eq!(page["units"][0]["id"], ids[50_001]);
    assert_eq!(page["next_after"], ids[50_010]);
    let (code, page) = coordinator.api(
        "GET",
        &format!("/api/v1/batches/{batch}/units?state=validated"),
        Some(&coordinator.token),
        None,
    );
    assert_eq!(
        (code, page["units"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    let (code, body) = coordinator.api(
        "GET",
        &format!("/api/v1/batches/{batch}/units?state=lost"),
        Some(&coordinator.token),
        None,
    );
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (400, Some("bad_query"))
    );
    eprintln!("100,000 units: created in {created:?}, listed in {listed:?}");
}

/// The web dashboard in a real browser (headless Chromium) against a live coordinator with
/// real data: what the page shows after its scripts ran.
#[test]
fn the_dashboard_shows_status_throughput_leaderboards_and_volunteer_pages_in_a_browser() {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let coordinator = Coordinator::start(root.path(), 0).expect("coordinator");
    let _workers: Vec<_> = ["ada", "grace"]
        .iter()
        .map(|name| {
            start_worker(root.path(), &coordinator.join, name, "engines", 1).expect("worker")
        })
        .collect();
    // The batch is a parameter sweep: four tiles from a template, submitted and waited for.
    let template = root.path().join("tile.template");
    std::fs::write(&template, "{x} -1.0 0.5 1.0 16 16 {iterations}\n").expect("template");
    let module = root.path().join("mandelbrot.wasm");
    std::fs::write(&module, herd_samples::MANDELBROT_WASM).expect("module");
    let output = coordinator.herd(&[
        "submit",
        &module.display().to_string(),
        "--template",
        &template.display().to_string(),
        "--sweep",
        "x=-2.0..-1.0:0.5",
        "--sweep",
        "iterations=10,20",
        "--wait",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let batch = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let status = coordinator.herd_json(&["status", &batch, "--json"]);
    let names: Vec<&str> = status["units"]
        .as_array()
        .expect("units")
        .iter()
        .map(|u| u["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        [
            "x=-2.0,iterations=10",
            "x=-2.0,iterations=20",
            "x=-1.5,iterations=10",
            "x=-1.5,iterations=20"
        ]
    );
    assert_eq!(status["validated"], 4, "{status}");

    let page = herd_e2e::browser_dom(&format!("{}/", coordinator.http));
    let dom = page_text(&page);
    assert!(
        page.contains("data-loaded=\"#/\""),
        "the scripts ran: {page}"
    );
    assert!(
        page.contains("<div class=\"card\" id=\"units-validated\"><div class=\"value\">4</div>"),
        "{dom}"
    );
    assert!(
        page.contains("id=\"hosts-active\"><div class=\"value\">2</div>"),
        "{dom}"
    );
    // The chart's bars add up to the units validated.
    let units: u64 = page
        .split("data-units=\"")
        .skip(1)
        .map(|rest| {
            rest.split('"')
                .next()
                .expect("a value")
                .parse::<u64>()
                .expect("a count")
        })
        .sum();
    assert_eq!(units, 4, "{dom}");
    // Both volunteers on the leaderboard, each linked to their page, and their team.
    for name in ["ada", "grace"] {
        assert!(
            page.contains(&format!("href=\"#/volunteer/{name}\">{name}</a>")),
            "{dom}"
        );
    }
    assert!(page.contains("<td>engines</td>"), "{dom}");

    let ada = herd_e2e::browser_dom(&format!("{}/#/volunteer/ada", coordinator.http));
    assert!(ada.contains("<h2 id=\"volunteer-name\">ada</h2>"), "{ada}");
    // Her balance is what she earned (she spent nothing), from her account's ledger, in fuel.
    let fuel_of = |id: &str| -> i64 {
        ada.split(&format!(
            "id=\"{id}\"><div class=\"value\"><span data-fuel=\""
        ))
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|fuel| fuel.parse().ok())
        .unwrap_or_else(|| panic!("the {id} card: {ada}"))
    };
    let account = coordinator.herd_json(&["account", "show", "ada", "--json"]);
    assert!(account["earned"].as_i64().expect("earned") > 0, "{account}");
    assert_eq!(
        fuel_of("volunteer-balance"),
        account["earned"].as_i64().expect("earned")
    );
    assert_eq!(fuel_of("volunteer-spent"), 0, "{ada}");
    assert!(
        ada.contains("id=\"volunteer-team\"><div class=\"value\">engines</div>"),
        "{ada}"
    );
    let host_rows = ada
        .split("id=\"volunteer-hosts\"")
        .nth(1)
        .expect("the hosts table")
        .split("</table>")
        .next()
        .expect("its end")
        .matches("<tr>")
        .count();
    assert_eq!(host_rows, 2, "a header and ada's one host: {ada}");
    let nobody = herd_e2e::browser_dom(&format!("{}/#/volunteer/nobody", coordinator.http));
    assert!(nobody.contains("no volunteer `nobody`"), "{nobody}");
}

/// The text of an HTML page without its tags, for readable assertion messages.
fn page_text(html: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                text.push(' ');
            }
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A Mandelbrot module and one small tile's input written into `dir`, for `herd run`: the
/// module's path, the input's path and the input's text.
fn mandelbrot_run_files(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let module = dir.join("m.wasm");
    std::fs::write(&module, herd_samples::MANDELBROT_WASM).expect("module");
    let input = dir.join("tile");
    let text = herd_samples::mandelbrot_input((-2.0, -1.0), (1.0, 1.0), (30, 20), 100);
    std::fs::write(&input, &text).expect("input");
    (module, input, text)
}

#[test]
fn herd_run_reports_outcomes_and_names_a_forbidden_import() {
    let root = tempfile::tempdir().expect("tempdir");
    let (module, input, text) = mandelbrot_run_files(root.path());
    let out = root.path().join("out");
    let run = |args: &[&str]| {
        std::process::Command::new(herd_e2e::bin_dir().join("herd"))
            .args(args)
            .output()
            .expect("run herd")
    };
    let output = run(&[
        "run",
        &module.display().to_string(),
        "--input",
        &input.display().to_string(),
        "--output",
        &out.display().to_string(),
    ]);
    assert!(output.status.success());
    let outcome: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(outcome["status"], "success");
    assert!(outcome["fuel"].as_u64().expect("fuel") > 0);
    let expected = tile::render_ppm(&tile::parse_tile(&text).expect("tile"));
    assert_eq!(std::fs::read(&out).expect("output"), expected);
    assert_eq!(outcome["output_len"], expected.len());

    let forbidden = root.path().join("bad.wat");
    std::fs::write(
        &forbidden,
        r#"(module (import "env" "system" (func (param i32))) (memory (export "memory") 1) (func (export "_start")))"#,
    )
    .expect("write");
    let output = run(&["run", &forbidden.display().to_string()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("`env.system`"));
    let outcome: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(outcome["status"], "module_rejected");

    let output = run(&["run", "/nonexistent/module.wasm"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read module"));
}

/// `herd run` keeps the module it compiled in `$XDG_CACHE_HOME/herd/compiled`, and a second run
/// of the same module loads it from there (the cached file is not written again) with the same
/// result; `--no-cache` neither reads nor writes it.
#[test]
fn a_repeated_herd_run_loads_the_compiled_module_from_the_cache() {
    let root = tempfile::tempdir().expect("tempdir");
    let (module, input, _) = mandelbrot_run_files(root.path());
    let cache = root.path().join("cache");
    let run = |extra: &[&str]| -> serde_json::Value {
        let output = std::process::Command::new(herd_e2e::bin_dir().join("herd"))
            .args(["run", &module.display().to_string(), "--input"])
            .arg(&input)
            .args(extra)
            .env("XDG_CACHE_HOME", &cache)
            .output()
            .expect("run herd");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("JSON")
    };
    let compiled = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(cache.join("herd").join("compiled"))
            .map(|dir| dir.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let uncached = run(&["--no-cache"]);
    assert!(compiled().is_empty(), "--no-cache writes nothing");
    let first = run(&[]);
    assert_eq!(first, uncached);
    let files = compiled();
    assert_eq!(files.len(), 1, "one compiled module: {files:?}");
    let written = std::fs::metadata(&files[0])
        .and_then(|m| m.modified())
        .expect("mtime");
    let second = run(&[]);
    assert_eq!(second, first, "the same result from the cached module");
    assert_eq!(compiled(), files);
    assert_eq!(
        std::fs::metadata(&files[0])
            .and_then(|m| m.modified())
            .expect("mtime"),
        written,
        "loaded, not compiled and stored again"
    );
}

/// The README's main command, as a new user runs it: `herd demo` starts a coordinator and three
/// workers, computes the picture and writes it as a PNG. The PNG is compared pixel for pixel with
/// the same tiles rendered natively by the sample's own kernel, placed by this test's own code.
#[test]
fn herd_demo_draws_the_mandelbrot_set_exactly_as_the_kernel_renders_it_natively() {
    use herd_samples::demo;
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let out = root.path().join("herd-demo.png");
    let output = std::process::Command::new(herd_e2e::bin_dir().join("herd"))
        .args(["demo", "--out", &out.display().to_string(), "--keep"])
        .arg(root.path().join("demo"))
        .output()
        .expect("run herd demo");
    assert!(
        output.status.success(),
        "herd demo failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("all 16 tiles validated by quorum"),
        "{stdout}"
    );

    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&out).expect("the PNG is written"),
    ));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut image = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut image).expect("its pixels");
    assert_eq!((info.width, info.height), (demo::WIDTH, demo::HEIGHT));
    assert_eq!(info.color_type, png::ColorType::Rgb);
    image.truncate(info.buffer_size());

    // The reference: each tile rendered natively, its rows copied into place.
    let (tile_w, tile_h) = demo::tile_size();
    let row_bytes = demo::WIDTH as usize * 3;
    let mut expected = vec![0u8; row_bytes * demo::HEIGHT as usize];
    for tile in demo::tiles() {
        let pixels = tile::render(&tile::parse_tile(&tile.input).expect("a valid tile"));
        assert_eq!(pixels.len(), (tile_w * tile_h * 3) as usize);
        for y in 0..tile_h as usize {
            let line = &pixels[y * tile_w as usize * 3..(y + 1) * tile_w as usize * 3];
            let at = (tile.row as usize * tile_h as usize + y) * row_bytes
                + tile.column as usize * tile_w as usize * 3;
            expected[at..at + line.len()].copy_from_slice(line);
        }
    }
    if let Some(first) = image.iter().zip(&expected).position(|(a, b)| a != b) {
        let pixel = first / 3;
        panic!(
            "the demo's image differs from the native rendering first at pixel ({}, {})",
            pixel % demo::WIDTH as usize,
            pixel / demo::WIDTH as usize
        );
    }
    assert_eq!(image.len(), expected.len());

    // Not uniform either, so a change that blanked both the demo and the reference would not
    // pass: the set's inside is black, its outside coloured, with many shades in between.
    let colours: std::collections::HashSet<&[u8]> = image.chunks_exact(3).collect();
    assert!(
        colours.len() >= 64,
        "only {} distinct colours in the demo's image",
        colours.len()
    );
    let black = image.chunks_exact(3).filter(|p| *p == [0, 0, 0]).count();
    let pixels = image.len() / 3;
    assert!(
        black > pixels / 20 && black < pixels * 19 / 20,
        "{black} of {pixels} pixels are black"
    );
}

/// Research code in C and C++: each such sample job, built from one source for wasm32-wasi and
/// natively with `zig cc` / `zig c++` (the README's commands), writes the same bytes (and exits
/// with the same code) under `herd run` as natively, and runs end to end through a quorum-2
/// batch with every output equal to the native one.
#[test]
fn c_and_cpp_sample_jobs_built_with_zig_agree_with_their_native_builds_and_run_through_a_batch() {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let sources = concat!(env!("CARGO_MANIFEST_DIR"), "/../sample-jobs/c");
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("a text to count words in");
    // (source, compiler, flags, inputs): the flags are the README's.
    let jobs: [(&str, &str, &[&str], Vec<String>); 3] = [
        (
            "spectral.c",
            "cc",
            &["-O2", "-ffp-contract=off", "-lm"],
            vec!["120 6".into(), "1 1".into(), "0 0".into()],
        ),
        (
            "wordfreq.c",
            "cc",
            &["-O2"],
            vec![text, String::new(), "b a B, a: c-a".into()],
        ),
        (
            "median.cpp",
            "c++",
            &["-O2", "-fno-exceptions"],
            vec!["5 3 -9 12 7 1".into(), String::new(), "1 x".into()],
        ),
    ];
    let coordinator = Coordinator::start(root.path(), 0).expect("coordinator");
    let _workers: Vec<_> = ["ada", "grace"]
        .iter()
        .map(|name| start_worker(root.path(), &coordinator.join, name, "c", 1).expect("worker"))
        .collect();
    for (file, driver, flags, inputs) in jobs {
        let job = file.split('.').next().expect("a name");
        let source = format!("{sources}/{file}");
        let wasm = root.path().join(format!("{job}.wasm"));
        let native = root.path().join(format!("{job}-native"));
        let wasm_arg = wasm.display().to_string();
        let native_arg = native.display().to_string();
        let mut args = vec!["-target", "wasm32-wasi", "-s", &source, "-o", &wasm_arg];
        args.extend(flags);
        herd_e2e::zig(driver, &args).expect("build for wasm32-wasi");
        let mut args = vec![source.as_str(), "-o", &native_arg];
        args.extend(flags);
        herd_e2e::zig(driver, &args).expect("build natively");

        let dir = root.path().join(format!("{job}-inputs"));
        std::fs::create_dir_all(&dir).expect("inputs dir");
        let mut expected = HashMap::new();
        for (index, input) in inputs.iter().enumerate() {
            let name = format!("input-{index}");
            let path = dir.join(&name);
            std::fs::write(&path, input).expect("write input");
            let ran = std::process::Command::new(&native)
                .stdin(std::fs::File::open(&path).expect("input"))
                .output()
                .expect("run the native build");
            let out = root.path().join(format!("{job}-{name}.out"));
            let run = coordinator.herd(&[
                "run",
                &wasm_arg,
                "--input",
                &path.display().to_string(),
                "--output",
                &out.display().to_string(),
            ]);
            let outcome: serde_json::Value =
                serde_json::from_slice(&run.stdout).expect("herd run prints JSON");
            match ran.status.code() {
                Some(0) => assert_eq!(outcome["status"], "success", "{job} {name}: {outcome}"),
                code => {
                    assert_eq!(outcome["status"], "exit_code", "{job} {name}: {outcome}");
                    assert_eq!(outcome["exit_code"].as_i64(), code.map(i64::from));
                }
            }
            let got = std::fs::read(&out).expect("herd run wrote the output");
            assert!(
                got == ran.stdout,
                "{job} {name}: wasm wrote {:?}, native {:?}",
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&ran.stdout)
            );
            if ran.status.success() {
                expected.insert(name, ran.stdout);
            } else {
                // Only successful runs go into the batch (a failing one is not a result to share).
                std::fs::remove_file(&path).expect("remove");
            }
        }

        let submitted = coordinator.herd(&[
            "submit",
            &wasm_arg,
            "--inputs",
            &dir.display().to_string(),
            "--quorum",
            "2",
            "--wait",
        ]);
        assert!(
            submitted.status.success(),
            "{job}: {}",
            String::from_utf8_lossy(&submitted.stderr)
        );
        let batch = String::from_utf8_lossy(&submitted.stdout)
            .trim()
            .to_string();
        let out = root.path().join(format!("{job}-results"));
        let results = coordinator.herd(&["results", &batch, "--out", &out.display().to_string()]);
        assert!(
            results.status.success(),
            "{}",
            String::from_utf8_lossy(&results.stderr)
        );
        for (name, bytes) in &expected {
            let got = std::fs::read(out.join(name)).expect("a result");
            assert!(
                got == *bytes,
                "{job} {name}: the batch's output differs from native"
            );
        }
    }
    // The C library calls research code makes (stdio, malloc, qsort, rand, the clocks, time
    // formatting, getenv) work and give the same answer on every host: the fixed clock, the
    // module's own rand.
    // A C fixture under tests/fixtures, built for wasm32-wasi; returns the module's path.
    let fixture = |name: &str| {
        let source = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/").to_string() + name + ".c";
        let module = root
            .path()
            .join(format!("{name}.wasm"))
            .display()
            .to_string();
        herd_e2e::zig(
            "cc",
            &[
                "-O2",
                "-target",
                "wasm32-wasi",
                "-s",
                &source,
                "-o",
                &module,
            ],
        )
        .expect("build");
        module
    };
    let calls_arg = fixture("libc_calls");
    let input = root.path().join("hello.txt");
    std::fs::write(&input, "hello\n").expect("write");
    let out = root.path().join("libc_calls.out");
    let run = coordinator.herd(&[
        "run",
        &calls_arg,
        "--input",
        &input.display().to_string(),
        "--output",
        &out.display().to_string(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&out).expect("output"),
        "line=hello args=0 home=(none) time=1735689600 realtime=1735689600 tv=1735689600 \
         when=2025-01-01T00:00:00Z pi=3.141593 sorted=10,15,24,32,32,71,72,87\n"
    );
    // Reading a file by name is refused before it runs, saying what to do instead.
    let opens_arg = fixture("opens_a_file");
    let run = coordinator.herd(&["run", &opens_arg]);
    assert_eq!(run.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("a unit has no files or directories") && stderr.contains("read stdin"),
        "{stderr}"
    );
}
