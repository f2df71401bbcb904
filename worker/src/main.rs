//! `herd-worker`: the volunteer's worker program. See the crate docs of `herd_worker`.
//!
//! Exit codes: 0 stopped cleanly, 1 failed, 2 bad arguments, 3 a failure retrying cannot cure
//! (a join string whose certificate or project key does not match the coordinator, a refused
//! protocol version, an unknown or revoked account key, a project that needs one). The systemd
//! unit does not restart on 2 or 3.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// The Herd worker: lends this machine to a Herd project while it is idle. It pulls WebAssembly
/// work units from the coordinator over QUIC, runs them in a deterministic sandbox and reports
/// signed results.
#[derive(Parser, Debug)]
#[command(name = "herd-worker", version, subcommand_negates_reqs = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

/// How to run the worker.
#[derive(clap::Args, Debug, Clone)]
struct RunArgs {
    /// Directory for this host's identity key, spool, caches and preferences (created if missing).
    #[arg(long, required = true)]
    data_dir: Option<PathBuf>,
    /// The coordinator's join string (herd://ADDR?cert=...&key=...), as it printed it.
    #[arg(long, required = true)]
    join: Option<herd_net::JoinString>,
    /// The account this machine computes for, by its key (as `herd account create` printed
    /// it). Prefer `herd-worker attach`, which stores it in the data directory: other users
    /// can read a command line.
    #[arg(long, env = "HERD_ACCOUNT_KEY", hide_env_values = true)]
    account_key: Option<String>,
    /// On a project with anonymous volunteers, the name this machine computes under (held by
    /// the first machine that gives it); with an account key, only this machine's label.
    #[arg(long)]
    name: Option<String>,
    /// The volunteer's team.
    #[arg(long)]
    team: Option<String>,
    /// Units to run at once (default: the number of CPUs).
    #[arg(long)]
    cores: Option<u32>,
    /// Override a preference of DATA_DIR/preferences.toml, e.g. `--pref cpu_percent=50`
    /// (repeatable; the value in TOML syntax).
    #[arg(long = "pref", value_name = "KEY=VALUE")]
    preferences: Vec<String>,
    /// A dedicated machine: compute whatever the user, the load, the battery or the clock say.
    #[arg(long)]
    always: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Attach this machine to an account: store its account key in the data directory (mode
    /// 0600), so `herd-worker` computes for it from then on. The key is read from
    /// --account-key, HERD_ACCOUNT_KEY, or else a line of standard input.
    Attach {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, env = "HERD_ACCOUNT_KEY", hide_env_values = true)]
        account_key: Option<String>,
    },
    /// Install the worker as a systemd user service for this user, and start it.
    Install {
        /// The coordinator's join string.
        #[arg(long)]
        join: herd_net::JoinString,
        /// The account this machine computes for, by its key (stored in the data directory,
        /// mode 0600; not in the unit).
        #[arg(long, env = "HERD_ACCOUNT_KEY", hide_env_values = true)]
        account_key: Option<String>,
        /// On a project with anonymous volunteers, the name this machine computes under.
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        team: Option<String>,
        /// Where the worker keeps its files (default: ~/.local/share/herd-worker).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Write the unit only; do not enable and start it.
        #[arg(long)]
        no_start: bool,
    },
    /// Print what the worker running with this data directory is doing, once (exit 1 if it is
    /// not running).
    Status {
        #[arg(long)]
        data_dir: PathBuf,
        /// The status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show what the worker is doing, full-screen, like a screensaver; any key leaves.
    Screen {
        #[arg(long)]
        data_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    herd_net::init_logging();
    let result = match args.command {
        Some(Command::Install {
            join,
            account_key,
            name,
            team,
            data_dir,
            no_start,
        }) => herd_worker::install::install(&herd_worker::install::Install {
            join,
            account_key,
            name,
            team,
            data_dir,
            start: !no_start,
        }),
        Some(Command::Attach {
            data_dir,
            account_key,
        }) => attach(&data_dir, account_key),
        Some(Command::Status { data_dir, json }) => status(&data_dir, json),
        Some(Command::Screen { data_dir }) => herd_worker::screen::run(&data_dir),
        None => run(args.run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("herd-worker: {error:#}");
            if error.is::<herd_worker::Permanent>() {
                ExitCode::from(3)
            } else if error.is::<BadArguments>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Arguments that cannot work together: exit 2, as clap's own refusals.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BadArguments(String);

fn attach(data_dir: &std::path::Path, key: Option<String>) -> anyhow::Result<()> {
    let key = match key {
        Some(key) => key,
        None => {
            eprintln!("account key (as herd account create printed it):");
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("read the account key from standard input")?;
            line
        }
    };
    let path = herd_worker::account::store(data_dir, &key)
        .map_err(|error| BadArguments(format!("{error:#}")))?;
    println!(
        "attached: {} holds the account key; start herd-worker with --data-dir {}",
        path.display(),
        data_dir.display()
    );
    Ok(())
}

/// Not running: `status` exits 1.
#[derive(Debug, thiserror::Error)]
#[error("the worker is not running")]
struct NotRunning;

fn status(data_dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    use herd_worker::status::{STATUS_FILE, StatusReport};
    let report = StatusReport::read(&data_dir.join(STATUS_FILE))?;
    let now_ms = herd_worker::now_ms();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for line in report.lines(now_ms) {
            println!("{line}");
        }
    }
    if report.not_running(now_ms).is_some() {
        return Err(NotRunning.into());
    }
    Ok(())
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    // clap enforces these when no subcommand is given.
    let (Some(data_dir), Some(join)) = (args.data_dir, args.join) else {
        anyhow::bail!("--data-dir and --join are required");
    };
    let account_key = match args.account_key {
        Some(key) => Some(
            herd_worker::account::parse_key(&key)
                .map_err(|error| BadArguments(format!("--account-key: {error:#}")))?,
        ),
        None => herd_worker::account::load(&data_dir)?,
    };
    if account_key.is_none() && args.name.is_none() {
        return Err(BadArguments(format!(
            "this machine is attached to no account: run `herd-worker attach --data-dir {} \
             --account-key KEY` (sign up with `herd account create NAME`), or, on a project \
             with anonymous volunteers, give --name",
            data_dir.display()
        ))
        .into());
    }
    let cores = match args.cores {
        Some(cores) => cores,
        None => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
    };
    let runtime = tokio::runtime::Runtime::new().context("start the async runtime")?;
    let result = runtime.block_on(async {
        let shutdown = herd_net::shutdown_on_signal();
        herd_worker::run(
            herd_worker::Config {
                data_dir,
                join,
                account_key,
                volunteer: args.name.unwrap_or_default(),
                team: args.team,
                cores,
                preference_overrides: args.preferences,
                always: args.always,
            },
            shutdown,
        )
        .await
    });
    // A unit still computing on a blocking thread is abandoned, not waited for: stopping the
    // worker must give the machine back promptly. (Its spool entry makes it run again later.)
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    result
}
