//! The harness of the end-to-end tests: real `herd-coordinator`, `herd-worker` and `herd`
//! processes on 127.0.0.1, started from the binaries `cargo build` leaves in the target directory.
//! Every process is killed when its handle is dropped, so a failing test leaves nothing behind.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub mod netns;
pub mod xvfb;

/// The directory holding the workspace's binaries: the test executable lives in its `deps/`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf();
    for name in ["herd-coordinator", "herd-worker", "herd"] {
        assert!(
            dir.join(name).is_file(),
            "{name} is not built in {}: run `cargo build --workspace` before `cargo test` (README's test command does)",
            dir.display()
        );
    }
    dir
}

/// A process killed (SIGKILL) when dropped.
pub struct Process {
    child: Child,
    pub log: PathBuf,
}

impl Process {
    /// Kills the process at once, as a crash or power loss would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(code)` once the process has exited (`None` inside if a signal ended it).
    pub fn exit_code(&mut self) -> Option<Option<i32>> {
        self.child
            .try_wait()
            .ok()
            .flatten()
            .map(|status| status.code())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `program` with its stderr in `log`; it is killed when the [`Process`] is dropped.
pub fn spawn(program: &Path, args: &[String], log: PathBuf) -> anyhow::Result<Process> {
    spawn_in(program, args, log, &[])
}

/// [`spawn`] with extra environment variables.
fn spawn_in(
    program: &Path,
    args: &[String],
    log: PathBuf,
    env: &[(&str, &str)],
) -> anyhow::Result<Process> {
    let file = std::fs::File::create(&log)?;
    let child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        // `HERD_TEST_LOG=debug` (or any filter) logs more from every process a test starts.
        .env(
            "HERD_LOG",
            std::env::var("HERD_TEST_LOG").unwrap_or_else(|_| "info".into()),
        )
        // Local time is UTC for every process, so tests can reason about the workers' hours.
        .env("TZ", "UTC")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .with_context(|| format!("start {}", program.display()))?;
    Ok(Process { child, log })
}

/// A free UDP port on 127.0.0.1 (so a restarted coordinator can take the same one).
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("bind a UDP port on 127.0.0.1")
}

/// A running coordinator and how to reach it.
pub struct Coordinator {
    pub process: Process,
    pub data_dir: PathBuf,
    /// Its PostgreSQL database's URL; `None` for the data directory's SQLite file.
    pub database: Option<String>,
    pub join: String,
    pub http: String,
    pub token: String,
}

impl Coordinator {
    /// Starts a coordinator on 127.0.0.1 with the given QUIC port (0 for any).
    pub fn start(root: &Path, quic_port: u16) -> anyhow::Result<Self> {
        Self::start_on(root, quic_port, None)
    }

    /// Starts a coordinator whose database is PostgreSQL at `database` (or, with `None`, the
    /// SQLite file in its data directory).
    pub fn start_on(root: &Path, quic_port: u16, database: Option<&str>) -> anyhow::Result<Self> {
        Self::start_in(root, &root.join("coordinator"), quic_port, database)
    }

    /// Starts a coordinator with its data directory at `data_dir` (its log goes in `root`), for
    /// anonymous volunteers: its workers compute under the names they give.
    pub fn start_in(
        root: &Path,
        data_dir: &Path,
        quic_port: u16,
        database: Option<&str>,
    ) -> anyhow::Result<Self> {
        Self::start_with(
            root,
            data_dir,
            quic_port,
            database,
            &["--anonymous-volunteers"],
        )
    }

    /// Starts a coordinator with these arguments besides its addresses and database (its
    /// account rules, say: without `--anonymous-volunteers`, machines need account keys).
    pub fn start_with(
        root: &Path,
        data_dir: &Path,
        quic_port: u16,
        database: Option<&str>,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let quic = format!("127.0.0.1:{quic_port}");
        Self::start_at(root, data_dir, &quic, database, extra)
    }

    /// [`Coordinator::start_with`] listening for workers at `quic` (an address and port): one
    /// inside a network namespace of the test's, say ([`netns`]).
    pub fn start_at(
        root: &Path,
        data_dir: &Path,
        quic: &str,
        database: Option<&str>,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let data_dir = data_dir.to_path_buf();
        // Stale address files from an earlier run must not be mistaken for this one's.
        let _ = std::fs::remove_file(data_dir.join("join"));
        let _ = std::fs::remove_file(data_dir.join("http"));
        let args = vec![
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--quic".into(),
            quic.into(),
            "--http".into(),
            "127.0.0.1:0".into(),
        ];
        let mut args = args;
        if let Some(url) = database {
            args.extend(["--database".into(), url.to_string()]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let log = root.join(format!("coordinator-{}.log", free_udp_port()));
        let mut process = spawn(&bin_dir().join("herd-coordinator"), &args, log)?;
        let started = Instant::now();
        loop {
            let join = std::fs::read_to_string(data_dir.join("join"));
            let http = std::fs::read_to_string(data_dir.join("http"));
            if let (Ok(join), Ok(http)) = (join, http) {
                let token = std::fs::read_to_string(data_dir.join("researcher.token"))?;
                return Ok(Self {
                    process,
                    data_dir,
                    database: database.map(str::to_string),
                    join: join.trim().into(),
                    http: http.trim().into(),
                    token: token.trim().into(),
                });
            }
            if !process.is_running() {
                bail!(
                    "coordinator exited: {}",
                    std::fs::read_to_string(&process.log).unwrap_or_default()
                );
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("coordinator did not start within 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The number a SQL query (`SELECT COUNT(*) ...`) answers on this coordinator's database,
    /// read beside the coordinator: the SQLite file read-only, or PostgreSQL through `psql`.
    pub fn sql_number(&self, sql: &str) -> anyhow::Result<i64> {
        match &self.database {
            None => {
                let db = rusqlite::Connection::open_with_flags(
                    self.data_dir.join("herd.sqlite"),
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )?;
                Ok(db.query_row(sql, [], |row| row.get(0))?)
            }
            Some(url) => {
                let output = Command::new("psql")
                    .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql, url])
                    .output()?;
                if !output.status.success() {
                    bail!("psql: {}", String::from_utf8_lossy(&output.stderr));
                }
                Ok(String::from_utf8_lossy(&output.stdout).trim().parse()?)
            }
        }
    }

    /// Runs the `herd` CLI against this coordinator.
    pub fn herd(&self, args: &[&str]) -> Output {
        Command::new(bin_dir().join("herd"))
            .args(args)
            .env("HERD_COORDINATOR", &self.http)
            .env("HERD_TOKEN", &self.token)
            .output()
            .expect("run herd")
    }

    /// Runs `herd` against this coordinator with another researcher's token.
    pub fn herd_as(&self, token: &str, args: &[&str]) -> Output {
        Command::new(bin_dir().join("herd"))
            .args(args)
            .env("HERD_COORDINATOR", &self.http)
            .env("HERD_TOKEN", token)
            .output()
            .expect("run herd")
    }

    /// Sends an API request with an optional token and body; returns the status and the JSON
    /// answer (every answer of the API, errors included, is JSON).
    pub fn api(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let url = format!("{}{path}", self.http);
        let with_token = |request: ureq::RequestBuilder<ureq::typestate::WithBody>| match token {
            Some(token) => request.header("Authorization", &format!("Bearer {token}")),
            None => request,
        };
        let response = match method {
            "GET" => {
                let request = agent.get(&url);
                match token {
                    Some(token) => request
                        .header("Authorization", &format!("Bearer {token}"))
                        .call(),
                    None => request.call(),
                }
            }
            "POST" => with_token(agent.post(&url))
                .header("Content-Type", "application/json")
                .send(body.unwrap_or("")),
            "DELETE" => {
                let request = agent.delete(&url);
                match token {
                    Some(token) => request
                        .header("Authorization", &format!("Bearer {token}"))
                        .call(),
                    None => request.call(),
                }
            }
            other => panic!("api: method {other} is not used by the tests"),
        };
        let mut response = response.expect("an HTTP answer");
        let status = response.status().as_u16();
        let json = response
            .body_mut()
            .read_json()
            .unwrap_or(serde_json::Value::Null);
        (status, json)
    }

    /// Runs `herd` and parses its stdout as JSON, failing loudly if it failed.
    pub fn herd_json(&self, args: &[&str]) -> serde_json::Value {
        let output = self.herd(args);
        assert!(
            output.status.success(),
            "herd {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("herd printed JSON")
    }
}

/// Starts a worker for `volunteer` in `root/worker-NAME`, on a dedicated machine (`--always`).
pub fn start_worker(
    root: &Path,
    join: &str,
    volunteer: &str,
    team: &str,
    cores: u32,
) -> anyhow::Result<Process> {
    start_worker_with(root, join, volunteer, team, cores, &["--always"])
}

/// The directory of `volunteer`'s worker under `root`.
pub fn worker_dir(root: &Path, volunteer: &str) -> PathBuf {
    root.join(format!("worker-{volunteer}"))
}

/// Starts a worker for `volunteer` in `root/worker-NAME` with extra arguments.
pub fn start_worker_with(
    root: &Path,
    join: &str,
    volunteer: &str,
    team: &str,
    cores: u32,
    extra: &[&str],
) -> anyhow::Result<Process> {
    start_worker_in(root, join, volunteer, team, cores, extra, &[])
}

/// Starts a worker with extra arguments and environment variables (`DISPLAY`, say).
pub fn start_worker_in(
    root: &Path,
    join: &str,
    volunteer: &str,
    team: &str,
    cores: u32,
    extra: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<Process> {
    let dir = worker_dir(root, volunteer);
    let mut args: Vec<String> = vec![
        "--data-dir".into(),
        dir.display().to_string(),
        "--join".into(),
        join.into(),
        "--name".into(),
        volunteer.into(),
        "--team".into(),
        team.into(),
        "--cores".into(),
        cores.to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    spawn_in(
        &bin_dir().join("herd-worker"),
        &args,
        root.join(format!("worker-{volunteer}-{}.log", free_udp_port())),
        env,
    )
}

/// Starts a worker in `root/worker-LABEL` that gives no name: it computes for the account its
/// data directory is attached to (`herd-worker attach`), or whose key `env` gives
/// (`HERD_ACCOUNT_KEY`). One core, on a dedicated machine (`--always`).
pub fn start_account_worker(
    root: &Path,
    join: &str,
    label: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<Process> {
    let dir = worker_dir(root, label);
    let args: Vec<String> = vec![
        "--data-dir".into(),
        dir.display().to_string(),
        "--join".into(),
        join.into(),
        "--cores".into(),
        "1".into(),
        "--always".into(),
    ];
    spawn_in(
        &bin_dir().join("herd-worker"),
        &args,
        root.join(format!("worker-{label}-{}.log", free_udp_port())),
        env,
    )
}

/// A hello of this protocol and instrumentation from `key`'s host, holding no replicas: what
/// the tests' own protocol clients (and `herd-swarm`'s simulated workers) say, signed with
/// `herd_net::say_hello`.
pub fn hello_from(
    key: &herd_protocol::SigningKey,
    volunteer: &str,
    team: Option<&str>,
) -> herd_protocol::Hello {
    herd_protocol::Hello {
        protocol_version: herd_protocol::PROTOCOL_VERSION,
        instrumentation_version: herd_sandbox::INSTRUMENTATION_VERSION,
        host_key: key.public_key(),
        account_key: None,
        volunteer: volunteer.into(),
        team: team.map(Into::into),
        cores: 1,
        held_replicas: Vec::new(),
    }
}

/// Polls `check` until it returns `Some`, or fails after `limit`.
pub fn eventually<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Prints every `*.log` under a directory when dropped during a panic, so a failed end-to-end
/// test shows what its processes said.
pub struct LogsOnFailure<'a>(pub &'a Path);

impl Drop for LogsOnFailure<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(self.0) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("---- {} (last 40 lines)", path.display());
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// The page at `url` as headless Chromium (Debian's `chromium`, which the README's test command
/// installs) renders it, scripts run and their requests answered: its DOM, serialized.
pub fn browser_dom(url: &str) -> String {
    let profile = tempfile::tempdir().expect("a browser profile directory");
    let output = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=15000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--dump-dom", url])
        .stdin(Stdio::null())
        .output()
        .expect(
            "chromium runs (`apt-get install chromium`; the README's test command installs it)",
        );
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs Zig's C or C++ compiler (see [`herd_samples::zig`]).
pub fn zig(driver: &str, args: &[&str]) -> anyhow::Result<()> {
    Ok(herd_samples::zig(driver, args)?)
}
