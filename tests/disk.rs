//! Full disks (issue 18): the coordinator's data directory on a small tmpfs the test mounts and
//! fills. An upload that does not fit is refused with a clear error (507 `disk_full`), nothing
//! half-written is left, the coordinator keeps serving, and once space is freed a batch runs to
//! the end with every output right.
//!
//! Mounting needs root (CI runs the suite as root); without it the test fails saying so.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use herd_e2e::{Coordinator, LogsOnFailure, start_worker};

use super::{VOLUNTEERS, check_results, submit, write_tiles};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).expect("the mount point");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            output.status.success(),
            "this test mounts a small tmpfs and needs root for it: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Self(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system at `dir` with `filler` until a write fails for want of space, then
/// gives back `slack` bytes: room for the database's small writes, none for a blob.
fn fill(filler: &Path, slack: u64) {
    let mut file = std::fs::File::create(filler).expect("the filler");
    let chunk = vec![0x5a; 64 << 10];
    loop {
        match file.write_all(&chunk).and_then(|()| file.sync_all()) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::StorageFull => break,
            Err(error) => panic!("filling the disk: {error}"),
        }
    }
    let size = file.metadata().expect("the filler's size").len();
    file.set_len(size.saturating_sub(slack))
        .expect("give back some room");
}

#[test]
fn a_full_disk_on_the_coordinator_refuses_uploads_clearly_and_work_resumes_once_space_is_freed() {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let disk = root.path().join("disk");
    let _tmpfs = Tmpfs::mount(&disk, "24m");
    let coordinator = Coordinator::start_with(
        root.path(),
        &disk.join("coordinator"),
        0,
        None,
        &["--anonymous-volunteers"],
    )
    .expect("coordinator");
    let _workers: Vec<_> = VOLUNTEERS[..2]
        .iter()
        .map(|(name, team)| {
            start_worker(root.path(), &coordinator.join, name, team, 1).expect("worker")
        })
        .collect();
    let filler = disk.join("filler");
    fill(&filler, 96 << 10);

    // An input of 2 MiB cannot be stored: refused by name, and the coordinator carries on.
    let big = root.path().join("big-inputs");
    std::fs::create_dir_all(&big).expect("inputs");
    let noise: Vec<u8> = (0..2u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(big.join("noise"), noise).expect("input");
    let module = root.path().join("mandelbrot.wasm");
    std::fs::write(&module, herd_samples::MANDELBROT_WASM).expect("module");
    let refused = coordinator.herd(&[
        "submit",
        &module.display().to_string(),
        "--inputs",
        &big.display().to_string(),
    ]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("disk is full") && said.contains("disk_full"),
        "{said}"
    );
    let (status, summary) = coordinator.api("GET", "/api/v1/summary", None, None);
    assert_eq!(status, 200, "still serving: {summary}");
    // Nothing half-written was left behind: only the filler and the project's own files.
    let leftovers: Vec<String> = std::fs::read_dir(disk.join("coordinator").join("blobs"))
        .map(|entries| {
            entries
                .flatten()
                .flat_map(|dir| {
                    std::fs::read_dir(dir.path())
                        .into_iter()
                        .flatten()
                        .flatten()
                })
                .map(|file| file.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with(".tmp"))
                .collect()
        })
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // Space freed: a batch goes through, every output right.
    std::fs::remove_file(&filler).expect("free the space");
    let inputs = root.path().join("inputs");
    let tiles = write_tiles(&inputs, 6);
    let batch = submit(&coordinator, root.path(), &inputs, true);
    check_results(&coordinator, root.path(), batch, &tiles);
    let (status, summary) = coordinator.api("GET", "/api/v1/summary", None, None);
    assert_eq!(status, 200, "{summary}");
    assert!(summary["units_validated"].as_u64() >= Some(6), "{summary}");
}

#[test]
fn a_worker_with_a_full_disk_says_so_and_still_computes_its_units_from_memory() {
    let root = tempfile::tempdir().expect("tempdir");
    let _logs = LogsOnFailure(root.path());
    let coordinator = Coordinator::start(root.path(), 0).expect("coordinator");
    let (ada, team) = VOLUNTEERS[0];
    let _tmpfs = Tmpfs::mount(&herd_e2e::worker_dir(root.path(), ada), "8m");
    let mut full = start_worker(root.path(), &coordinator.join, ada, team, 1).expect("worker");
    let (grace, team) = VOLUNTEERS[1];
    let _other = start_worker(root.path(), &coordinator.join, grace, team, 1).expect("worker");
    herd_e2e::eventually(std::time::Duration::from_secs(30), "ada to connect", || {
        let log = std::fs::read_to_string(&full.log).unwrap_or_default();
        log.contains("connected to").then_some(())
    });
    fill(&herd_e2e::worker_dir(root.path(), ada).join("filler"), 0);
    // Quorum 2 with two workers: every unit needs the worker whose disk is full. It cannot
    // cache the module or spool its results, says so, and runs them from memory; no replica
    // is given up for the host's trouble (which, repeated, would spend the units' error limits
    // and fail the batch).
    let inputs = root.path().join("inputs");
    let tiles = write_tiles(&inputs, 4);
    let batch = submit(&coordinator, root.path(), &inputs, false);
    super::completes_exactly(
        &coordinator,
        root.path(),
        batch,
        &tiles,
        std::time::Duration::from_secs(120),
    );
    let log = std::fs::read_to_string(&full.log).unwrap_or_default();
    assert!(log.contains("No space left on device"), "{log}");
    assert!(!log.contains("aborted"), "no replica was given up: {log}");
    assert!(full.is_running(), "{log}");
}
