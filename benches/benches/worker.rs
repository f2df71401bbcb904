//! The volunteer's side: how fast a running unit gives the CPU back when told to pause, and what
//! an idle worker costs the machine.
//!
//! - `worker/pause_to_zero_cpu`: a unit spinning in the sandbox is paused (as the governor does
//!   when the user returns); the time until its thread stops using CPU, read from the thread's
//!   `/proc/self/task/TID/schedstat` (nanoseconds on CPU) every 100 µs.
//! - Idle footprint (printed after the criterion run): the worker (`herd_worker::run`, in its own
//!   process: this binary re-executed) connected to a coordinator that has no work, its resident
//!   memory and CPU over 60 seconds; beside it, in the same minute, Debian's `boinc` client at rest
//!   if it is installed (`apt-get install boinc-client`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use herd_sandbox::{Limits, RunControl, Sandbox, YIELD_FUEL};

const ROLE: &str = "HERD_BENCH_ROLE";
const DIR: &str = "HERD_BENCH_DIR";
const JOIN: &str = "HERD_BENCH_JOIN";

/// Nanoseconds the thread has spent on a CPU.
fn thread_cpu_ns(task: &Path) -> u64 {
    std::fs::read_to_string(task.join("schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Starts a spinning unit on its own thread; returns its control, its `/proc` task directory
/// and the thread.
fn spinning(sandbox: &Arc<Sandbox>) -> (Arc<RunControl>, PathBuf, std::thread::JoinHandle<()>) {
    let spin = herd_sandbox::module_bytes(
        b"(module (memory (export \"memory\") 1) (func (export \"_start\") (loop $l (br $l))))",
    )
    .expect("module");
    let module = sandbox.admit(&spin).expect("admitted");
    let control = RunControl::new();
    let (task_tx, task_rx) = std::sync::mpsc::channel();
    let thread = {
        let sandbox = sandbox.clone();
        let control = control.clone();
        std::thread::spawn(move || {
            let task = std::fs::read_link("/proc/thread-self").expect("thread-self");
            task_tx.send(Path::new("/proc").join(task)).expect("send");
            let limits = Limits {
                fuel: u64::MAX / 4,
                watchdog: Duration::from_secs(600),
                ..Limits::default()
            };
            let _ = sandbox.run_controlled(&module, b"", 0, &limits, control);
        })
    };
    let task = task_rx.recv().expect("task");
    // Running for real: a few yields' worth of fuel burned.
    while control.fuel_so_far() < 3 * YIELD_FUEL {
        std::thread::yield_now();
    }
    (control, task, thread)
}

/// Pauses the unit and returns how long its thread kept using CPU afterwards.
fn pause_latency(control: &RunControl, task: &Path) -> Duration {
    let paused_at = Instant::now();
    control.pause();
    let mut last = thread_cpu_ns(task);
    let mut last_change = paused_at;
    // Stopped when the CPU time has not moved for 20 ms.
    while last_change.elapsed() < Duration::from_millis(20) {
        std::thread::sleep(Duration::from_micros(100));
        let now = thread_cpu_ns(task);
        if now != last {
            last = now;
            last_change = Instant::now();
        }
    }
    last_change.saturating_duration_since(paused_at)
}

fn pause(c: &mut Criterion) {
    let sandbox = Arc::new(Sandbox::new().expect("sandbox"));
    let mut group = c.benchmark_group("worker");
    group.sample_size(20);
    group.bench_function("pause_to_zero_cpu", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let (control, task, thread) = spinning(&sandbox);
                total += pause_latency(&control, &task);
                control.cancel();
                thread.join().expect("unit thread");
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, pause);

/// Resident memory (KiB) and CPU time (nanoseconds, every thread's `schedstat` summed: clock
/// ticks of 10 ms are too coarse for processes at rest) of a process.
fn footprint(pid: u32) -> (u64, u64) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    // Threads that ended before the reading are missed; at rest none come and go.
    let nanos = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .map(|task| thread_cpu_ns(&task.path()))
                .sum::<u64>()
        })
        .unwrap_or(0);
    (rss, nanos)
}

/// A child process killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn reexec(role: &str, dir: &Path, join: Option<&str>) -> Child {
    let mut command = std::process::Command::new(std::env::current_exe().expect("this binary"));
    command
        .env(ROLE, role)
        .env(DIR, dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if let Some(join) = join {
        command.env(JOIN, join);
    }
    Child(command.spawn().expect("start a child"))
}

fn idle_footprint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let coordinator_dir = dir.path().join("coordinator");
    let _coordinator = reexec("coordinator", &coordinator_dir, None);
    let started = Instant::now();
    let join = loop {
        if let Ok(join) = std::fs::read_to_string(coordinator_dir.join("join")) {
            break join.trim().to_string();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "coordinator did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let worker = reexec("worker", &dir.path().join("worker"), Some(&join));
    let boinc_dir = dir.path().join("boinc");
    std::fs::create_dir_all(&boinc_dir).expect("boinc dir");
    let boinc = std::process::Command::new("boinc")
        .args(["--dir", &boinc_dir.display().to_string(), "--no_gpus"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()
        .map(Child);
    // Let both settle, then measure the same minute.
    std::thread::sleep(Duration::from_secs(10));
    let worker_pid = worker.0.id();
    let boinc_pid = boinc.as_ref().map(|b| b.0.id());
    let (_, worker_start) = footprint(worker_pid);
    let boinc_start = boinc_pid.map(|pid| footprint(pid).1);
    let minute = Duration::from_secs(60);
    std::thread::sleep(minute);
    let (worker_rss, worker_end) = footprint(worker_pid);
    let percent = |nanos: u64| nanos as f64 / 1e9 / minute.as_secs_f64() * 100.0;
    println!(
        "worker/idle: herd-worker {} KiB resident, {:.3}% CPU over 60 s (no work on offer)",
        worker_rss,
        percent(worker_end - worker_start)
    );
    match (boinc_pid, boinc_start) {
        (Some(pid), Some(start)) => {
            let (rss, end) = footprint(pid);
            println!(
                "worker/idle: boinc {} KiB resident, {:.3}% CPU over the same 60 s (no project attached)",
                rss,
                percent(end - start)
            );
        }
        _ => println!("worker/idle: boinc is not installed here (apt-get install boinc-client)"),
    }
}

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("coordinator") => {
            let dir = std::env::var(DIR).expect("dir");
            let runtime = tokio::runtime::Runtime::new().expect("runtime");
            let (_stop, shutdown) = tokio::sync::watch::channel(false);
            let config = herd_coordinator::Config {
                data_dir: dir.into(),
                database: None,
                quic: "127.0.0.1:0".parse().expect("addr"),
                http: "127.0.0.1:0".parse().expect("addr"),
                // The worker gives a name, not an account key.
                accounts: herd_coordinator::AccountRules {
                    anonymous: true,
                    ..Default::default()
                },
            };
            runtime
                .block_on(herd_coordinator::run(config, shutdown))
                .expect("coordinator");
        }
        Ok("worker") => {
            let dir = std::env::var(DIR).expect("dir");
            let join = std::env::var(JOIN)
                .expect("join")
                .parse()
                .expect("join string");
            let runtime = tokio::runtime::Runtime::new().expect("runtime");
            let (_stop, shutdown) = tokio::sync::watch::channel(false);
            let config = herd_worker::Config {
                data_dir: dir.into(),
                join,
                account_key: None,
                volunteer: "idle".into(),
                team: None,
                cores: 2,
                preference_overrides: Vec::new(),
                always: false,
            };
            runtime
                .block_on(herd_worker::run(config, shutdown))
                .expect("worker");
        }
        _ => {
            benches();
            Criterion::default().configure_from_args().final_summary();
            idle_footprint();
        }
    }
}
