//! `herd-worker`: the volunteer's worker program. See the crate docs of `herd_worker`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// The Herd worker: lends this machine to a Herd project. It pulls WebAssembly work units from
/// the coordinator over QUIC, runs them in a deterministic sandbox and reports signed results.
#[derive(Parser, Debug)]
#[command(name = "herd-worker", version)]
struct Args {
    /// Directory for this host's identity key and blob cache (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// The coordinator's join string (herd://ADDR?cert=...&key=...), as it printed it.
    #[arg(long)]
    join: herd_net::JoinString,
    /// The volunteer this machine computes for; credit goes to this name.
    #[arg(long)]
    name: String,
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

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    herd_net::init_logging();
    let cores = match args.cores {
        Some(cores) => cores,
        None => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
    };
    let runtime = tokio::runtime::Runtime::new().context("start the async runtime")?;
    let result = runtime.block_on(async {
        let shutdown = herd_net::shutdown_on_signal();
        herd_worker::run(
            herd_worker::Config {
                data_dir: args.data_dir,
                join: args.join,
                volunteer: args.name,
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
    // worker must give the machine back promptly.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    result
}
