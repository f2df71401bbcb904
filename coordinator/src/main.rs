//! `herd-coordinator`: the coordinator program. See the crate docs of `herd_coordinator`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// The Herd coordinator: hands out WebAssembly work units to volunteer workers over QUIC,
/// validates their results by quorum, grants credit, and serves researchers over HTTP.
#[derive(Parser, Debug)]
#[command(name = "herd-coordinator", version)]
struct Args {
    /// Directory for the database, blobs, certificate, keys and token (created if missing).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// The project's database: a PostgreSQL URL (`postgres://user@host:port/name`); without it,
    /// `herd.sqlite` in the data directory.
    #[arg(long, env = "HERD_DATABASE")]
    database: Option<String>,
    /// QUIC address for workers.
    #[arg(long, default_value = "127.0.0.1:4433")]
    quic: SocketAddr,
    /// HTTP address for researchers and dashboards.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// How accounts come to exist: `open` (anyone signs up, `herd account create NAME`),
    /// `invitation` (with a code the administrator made, `herd account invite`) or `admin` (the
    /// administrator creates them).
    #[arg(long, default_value = "admin", value_name = "MODE")]
    sign_up: herd_coordinator::SignUp,
    /// Let machines compute under a name alone, with no account key (a demo's or a trial's
    /// project): each such name belongs to the machine that first gave it.
    #[arg(long)]
    anonymous_volunteers: bool,
    /// With open sign-up or invitations: accounts created per network (an IPv4 address, an
    /// IPv6 /64) per hour.
    #[arg(long, default_value_t = 5)]
    sign_ups_per_hour: u32,
    /// Every batch takes at most one replica of a unit per network (an IPv4 /24, an IPv6 /48):
    /// one person's machines and accounts behind one router cannot form a quorum.
    #[arg(long)]
    distinct_networks: bool,
    /// What a paying batch does when its owner's balance is spent: `free` (served in the free
    /// tier, at priority 0, paying nothing) or `pause` (waits until they can pay again).
    #[arg(long, default_value = "free", value_name = "free|pause", value_parser = ["free", "pause"])]
    out_of_credit: String,
    /// Every batch's quorums need an agreeing replica from a seasoned host, one with at least N
    /// valid results behind it: a ring of fresh accounts cannot validate anything among
    /// themselves. Turn it on once the project has seasoned hosts (`herd hosts`), or units wait.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    seasoned_after: Option<u32>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Copies the project in the data directory's SQLite file, and its blobs, into an empty
    /// PostgreSQL database, and checks the copy (every table's rows, the credit ledgers' totals, every
    /// volunteer's credit) before committing it. Stop the coordinator first; afterwards start it
    /// with `--database URL` and the same data directory (its keys, certificate and blobs).
    Migrate {
        /// The PostgreSQL database to copy into (`postgres://user@host:port/name`).
        #[arg(long)]
        to: String,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    herd_net::init_logging();
    let data_dir = args
        .data_dir
        .context("--data-dir DIR is required: the directory of the project's files")?;
    if let Some(Command::Migrate { to }) = args.command {
        let database = data_dir.join("herd.sqlite");
        let blobs = herd_blobs::BlobStore::open(data_dir.join("blobs"))
            .context("open the data directory's blob store")?;
        let entries = blobs.entries().context("list the blobs")?;
        let contents = entries
            .into_iter()
            .map(|entry| match blobs.get(&entry.hash) {
                Ok(Some(bytes)) => Ok(bytes),
                Ok(None) => Err(herd_store::StoreError::Corrupt(format!(
                    "blob {} vanished while copying",
                    entry.hash
                ))),
                Err(error) => Err(herd_store::StoreError::Corrupt(format!(
                    "blob {}: {error}",
                    entry.hash
                ))),
            });
        let migrated = herd_store::migrate_sqlite_to_postgres(&database, &to, contents)
            .with_context(|| format!("migrate {} to {to}", database.display()))?;
        for (table, rows) in &migrated.tables {
            println!("{table:>16}: {rows} rows");
        }
        println!(
            "{:>16}: {} ({} bytes)",
            "blobs", migrated.blobs, migrated.blob_bytes
        );
        println!(
            "copied and checked: {} fuel granted, {} revoked, in both. Start the coordinator \
             with --database {to} --data-dir {}",
            migrated.granted_fuel,
            migrated.revoked_fuel,
            data_dir.display()
        );
        return Ok(());
    }
    let runtime = tokio::runtime::Runtime::new().context("start the async runtime")?;
    runtime.block_on(async {
        let shutdown = herd_net::shutdown_on_signal();
        herd_coordinator::run(
            herd_coordinator::Config {
                data_dir,
                database: args.database,
                quic: args.quic,
                http: args.http,
                accounts: herd_coordinator::AccountRules {
                    sign_up: args.sign_up,
                    anonymous: args.anonymous_volunteers,
                    sign_ups_per_hour: args.sign_ups_per_hour,
                    distinct_networks: args.distinct_networks,
                    pause_unpaid: args.out_of_credit == "pause",
                    seasoned_after: args.seasoned_after,
                },
            },
            shutdown,
        )
        .await
    })
}
