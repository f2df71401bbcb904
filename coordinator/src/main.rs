//! `herd-coordinator`: the coordinator program. See the crate docs of `herd_coordinator`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// The Herd coordinator: hands out WebAssembly work units to volunteer workers over QUIC,
/// validates their results by quorum, grants credit, and serves researchers over HTTP.
#[derive(Parser, Debug)]
#[command(name = "herd-coordinator", version)]
struct Args {
    /// Directory for the database, blobs, certificate, keys and token (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// QUIC address for workers.
    #[arg(long, default_value = "127.0.0.1:4433")]
    quic: SocketAddr,
    /// HTTP address for researchers and dashboards.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    herd_net::init_logging();
    let runtime = tokio::runtime::Runtime::new().context("start the async runtime")?;
    runtime.block_on(async {
        let shutdown = herd_net::shutdown_on_signal();
        herd_coordinator::run(
            herd_coordinator::Config {
                data_dir: args.data_dir,
                quic: args.quic,
                http: args.http,
            },
            shutdown,
        )
        .await
    })
}
