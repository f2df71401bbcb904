//! Throw-away PostgreSQL servers for tests and benchmarks: Debian's PostgreSQL (its binaries in
//! `/usr/lib/postgresql/<version>/bin`), a fresh data directory, a free port on 127.0.0.1, no
//! Unix socket, trust authentication for the `postgres` user on loopback only.
//!
//! `initdb` and `pg_ctl` refuse to run as root, and CI runs as root: then every command runs as
//! the `postgres` user (`runuser -u postgres -- ...`) on a directory it owns. A server is stopped
//! when its [`Server`] is dropped, and also when the process that started it exits however it
//! exits: a small watcher shell holds a pipe from this process and stops the server when the pipe
//! closes, so no test leaves a server behind.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How a server keeps its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Every commit is flushed to disk (`fsync=on`, `synchronous_commit=on`), as in production:
    /// for benchmarks and for tests that stop the server abruptly and count what survived.
    Full,
    /// `fsync=off`: a killed server still keeps what it committed (the kernel holds it), only a
    /// machine crash would lose it. For tests that only need a database.
    Fast,
}

/// A running throw-away server.
pub struct Server {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    durability: Durability,
    /// Closing it makes the watcher stop the server (see the module docs).
    watcher: Option<(Child, ChildStdin)>,
}

/// One server per process for tests that only need a database each: see [`fresh_database`].
static SHARED: OnceLock<Result<Server, String>> = OnceLock::new();
static DATABASES: AtomicU32 = AtomicU32::new(0);

/// A new, empty database on this process's shared server (started on first use), as a URL.
pub fn fresh_database() -> Result<String, String> {
    let server = SHARED
        .get_or_init(|| Server::start(Durability::Fast))
        .as_ref()
        .map_err(Clone::clone)?;
    let name = format!("test_{}", DATABASES.fetch_add(1, Ordering::SeqCst));
    server.create_database(&name)?;
    Ok(server.url(&name))
}

fn running_as_root() -> bool {
    // `id -u` rather than libc: this crate has no unsafe and no libc dependency.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The newest PostgreSQL's binaries under `/usr/lib/postgresql`, or `$HERD_PG_BIN`.
pub fn binaries() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("HERD_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| {
            format!(
                "PostgreSQL is not installed (/usr/lib/postgresql: {e}); scripts/test installs \
                 Debian's `postgresql` package"
            )
        })?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| "no PostgreSQL with initdb under /usr/lib/postgresql".to_string())
}

/// A command for one of PostgreSQL's programs, run as `postgres` when this process is root.
fn program(bin: &Path, name: &str) -> Command {
    if running_as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(bin.join(name));
        command
    } else {
        Command::new(bin.join(name))
    }
}

fn run(mut command: Command, what: &str) -> Result<(), String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| format!("no free port: {e}"))
}

impl Server {
    /// Creates a data directory and starts a server on it.
    pub fn start(durability: Durability) -> Result<Self, String> {
        let bin = binaries()?;
        let dir = tempfile::Builder::new()
            .prefix("herd-pg-")
            .tempdir()
            .map_err(|e| format!("temporary directory: {e}"))?;
        if running_as_root() {
            // The data directory must belong to the user the server runs as.
            run(
                {
                    let mut chown = Command::new("chown");
                    chown.arg("-R").arg("postgres:postgres").arg(dir.path());
                    chown
                },
                "chown the data directory to postgres",
            )?;
        }
        let mut initdb = program(&bin, "initdb");
        initdb.arg("-D").arg(dir.path().join("data")).args([
            "--auth=trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        run(initdb, "initdb")?;
        let mut server = Self {
            dir,
            bin,
            port: free_port()?,
            durability,
            watcher: None,
        };
        server.start_again()?;
        server.watch()?;
        Ok(server)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The log the server writes (for a failing test to show).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Starts the server (again, after [`stop_immediately`](Self::stop_immediately)) on the same
    /// port and data, and waits until it accepts connections.
    pub fn start_again(&mut self) -> Result<(), String> {
        let fsync = match self.durability {
            Durability::Full => "on",
            Durability::Fast => "off",
        };
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync={fsync} \
             -c max_connections=200 -c shared_buffers=128MB",
            self.port
        );
        let mut start = program(&self.bin, "pg_ctl");
        start
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "60", "-o", &options, "start"]);
        run(start, "pg_ctl start")?;
        // `-w` waits for the server; a connection proves it (and the port is ours).
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                return Err(format!("the server on port {} never listened", self.port));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops the server at once, as a crash would (`pg_ctl -m immediate stop`): no checkpoint,
    /// every connection cut; what was committed is recovered from the WAL at the next start.
    pub fn stop_immediately(&self) -> Result<(), String> {
        let mut stop = program(&self.bin, "pg_ctl");
        stop.arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"]);
        run(stop, "pg_ctl stop")
    }

    /// A shell that stops the server when this process's end of its stdin closes.
    fn watch(&mut self) -> Result<(), String> {
        let mut stop = format!(
            "{} -D '{}' -m immediate stop",
            self.bin.join("pg_ctl").display(),
            self.data().display()
        );
        if running_as_root() {
            stop = format!("runuser -u postgres -- {stop}");
        }
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("read _ignored; {stop} >/dev/null 2>&1"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start the watcher: {e}"))?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| "the watcher has no stdin".to_string())?;
        self.watcher = Some((child, stdin));
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates an empty database.
    pub fn create_database(&self, name: &str) -> Result<(), String> {
        let mut createdb = program(&self.bin, "createdb");
        createdb
            .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(self.port.to_string())
            .arg(name);
        run(createdb, "createdb")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some((mut child, mut stdin)) = self.watcher.take() {
            // A line (or the pipe closing) makes the watcher stop the server; wait for it, so
            // the data directory can be removed.
            let _ = stdin.write_all(b"\n");
            drop(stdin);
            let _ = child.wait();
        }
    }
}
