//! How closely the worker's download limit paces a real transfer: a 2 MiB frame sent over QUIC
//! on 127.0.0.1 (herd-net's endpoints, the coordinator's side sending as fast as it can) and read
//! through the worker's `Network` pace at several limits, against the same transfer unlimited in
//! the same run. The end-to-end test only asserts that a limit is never exceeded; the band
//! (how near the limit a transfer runs) is measured here. Figures in BENCHMARKS.md.
//!
//! `cargo bench -p herd-benches --locked --bench bandwidth`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use herd_net::JoinString;
use herd_protocol::{ContentHash, ServerMessage, SigningKey};
use herd_worker::bandwidth::Network;
use herd_worker::preferences::Preferences;

/// The transfer: a blob as large as the end-to-end test's padded input.
const BYTES: usize = 2 << 20;
/// Transfers per limit.
const ROUNDS: usize = 3;

/// A server that answers every request on every connection with one 2 MiB blob.
async fn serve(endpoint: herd_net::Endpoint) {
    let bytes = vec![7u8; BYTES];
    let answer = ServerMessage::Blob {
        hash: ContentHash::of(&bytes),
        bytes,
    };
    while let Some(incoming) = endpoint.accept().await {
        let answer = answer.clone();
        tokio::spawn(async move {
            let Ok(connection) = incoming.await else {
                return;
            };
            while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                let _ = herd_net::read_frame(&mut recv).await;
                let _ = herd_net::write_message(&mut send, &answer).await;
                let _ = send.finish();
            }
        });
    }
}

/// One paced transfer's rate in KiB/s.
async fn transfer(connection: &herd_net::Connection, network: &Network) -> f64 {
    let started = Instant::now();
    let answer: ServerMessage =
        herd_net::request_paced(connection, &herd_protocol::ClientMessage::Standing, network)
            .await
            .expect("a blob");
    let seconds = started.elapsed().as_secs_f64();
    let ServerMessage::Blob { bytes, .. } = answer else {
        panic!("unexpected answer");
    };
    assert_eq!(bytes.len(), BYTES);
    BYTES as f64 / 1024.0 / seconds
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let certificate = herd_net::generate_certificate().expect("certificate");
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let endpoint = herd_net::server_endpoint(
            addr,
            &certificate.cert_der,
            &certificate.key_der,
            &[9; 32],
        )
        .expect("endpoint");
        let port = endpoint.local_addr().expect("bound").port();
        tokio::spawn(serve(endpoint));
        let join: JoinString = format!(
            "herd://127.0.0.1:{port}?cert={}&key={}",
            herd_net::fingerprint(&certificate.cert_der),
            SigningKey::from_seed([1; 32]).public_key().to_hex()
        )
        .parse()
        .expect("join string");
        let connection = herd_net::connect(&join).await.expect("connect");
        let unlimited = Network::new(&Preferences::parse("", &[]).expect("defaults"));
        let mut baseline = Vec::new();
        for _ in 0..ROUNDS {
            baseline.push(transfer(&connection, &unlimited).await);
        }
        baseline.sort_by(f64::total_cmp);
        println!(
            "bandwidth/unlimited: {:.0} KiB/s (median of {ROUNDS} transfers of {} KiB)",
            baseline[ROUNDS / 2],
            BYTES / 1024
        );
        for limit in [256u64, 512, 2048] {
            let text = format!("download_kib_per_s = {limit}");
            let network = Network::new(&Preferences::parse(&text, &[]).expect("preferences"));
            // The bucket starts full; let it be, as a worker's would between transfers.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut rates = Vec::new();
            for _ in 0..ROUNDS {
                rates.push(transfer(&connection, &network).await);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            rates.sort_by(f64::total_cmp);
            let (low, high) = (rates[0], rates[ROUNDS - 1]);
            println!(
                "bandwidth/limit_{limit}: {:.1} KiB/s median, {low:.1}..{high:.1} ({:.3}x..{:.3}x the limit; unlimited ran {:.0}x faster)",
                rates[ROUNDS / 2],
                low / limit as f64,
                high / limit as f64,
                baseline[ROUNDS / 2] / rates[ROUNDS / 2]
            );
        }
    });
}
