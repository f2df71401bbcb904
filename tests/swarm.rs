//! `herd-swarm`: many simulated workers in one process, for the load tests (issue 18). Each
//! connection is a host of its own: its own ed25519 key, a hello proven over its connection, a
//! volunteer of its own (`swarm-N`), and QUIC keep-alives as a worker sends them. Once welcomed
//! it asks for nothing: it is an idle worker, which is what most of a grid's connections are.
//! All the connections share one UDP socket ([`herd_net::Dialer`]).
//!
//! ```text
//! herd-swarm hold JOIN FIRST COUNT STATUS_FILE
//! herd-swarm flood handshakes|streams|requests|junk JOIN STATUS_FILE
//! ```
//!
//! `hold`: hosts `FIRST..FIRST+COUNT` connect, at most [`AT_ONCE`] handshakes at a time, each
//! retried a few times. The status file is rewritten as they do, as `held=H failed=F`. The process
//! then holds every connection until it is killed.
//!
//! `flood`: one hostile client, as fast as it can until killed, rewriting `sent=S answered=A`
//! every half second: new connections that never say hello (`handshakes`; answered: those whose
//! handshake completed), a proven host opening streams and sending nothing on them (`streams`),
//! a proven host sending valid requests (`requests`: `Standing`; answered: the answers), or UDP
//! datagrams of random bytes at the coordinator's port (`junk`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use herd_protocol::{ServerMessage, SigningKey};

/// Handshakes in flight at once: a crowd of workers arriving, not a flood.
const AT_ONCE: usize = 32;

/// Attempts per host before it counts as failed.
const ATTEMPTS: u32 = 4;

/// Host `n`'s key: a seed of its own, distinct from the e2e tests' fixed seeds.
fn key_of(n: u64) -> SigningKey {
    let mut seed = [0x5a; 32];
    seed[..8].copy_from_slice(&n.to_le_bytes());
    SigningKey::from_seed(seed)
}

/// Connects host `n` and says hello; the connection once welcomed.
async fn join_as(dialer: &herd_net::Dialer, n: u64) -> anyhow::Result<herd_net::Connection> {
    let key = key_of(n);
    let connection = dialer.connect().await?;
    let hello = herd_e2e::hello_from(&key, &format!("swarm-{n}"), None);
    match herd_net::say_hello(&connection, &key, hello).await? {
        ServerMessage::Welcome { .. } => Ok(connection),
        other => bail!("host {n} was not welcomed: {other:?}"),
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["hold", join, first, count, status] => hold(join, first, count, status),
        ["flood", kind, join, status] => flood(kind, join, status),
        _ => bail!(
            "usage: herd-swarm hold JOIN FIRST COUNT STATUS_FILE | \
             herd-swarm flood handshakes|streams|requests|junk JOIN STATUS_FILE"
        ),
    }
}

/// Counters of a flood, written to its status file.
#[derive(Default)]
struct Counts {
    sent: AtomicUsize,
    answered: AtomicUsize,
}

fn flood(kind: &str, join: &str, status: &str) -> anyhow::Result<()> {
    let join: herd_net::JoinString = join.parse()?;
    let status = std::path::PathBuf::from(status);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let counts = Arc::new(Counts::default());
    {
        let counts = counts.clone();
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let line = format!(
                    "sent={} answered={}\n",
                    counts.sent.load(Ordering::Relaxed),
                    counts.answered.load(Ordering::Relaxed)
                );
                let _ = herd_net::write_file(&status, line.as_bytes(), 0o644);
            }
        });
    }
    runtime.block_on(async move {
        let dialer = Arc::new(herd_net::Dialer::new(&join)?);
        match kind {
            "handshakes" => {
                // As many handshakes in flight as the client can keep, none followed by a hello.
                let gate = Arc::new(tokio::sync::Semaphore::new(2_048));
                loop {
                    let permit = gate.clone().acquire_owned().await?;
                    counts.sent.fetch_add(1, Ordering::Relaxed);
                    let (dialer, counts) = (dialer.clone(), counts.clone());
                    tokio::spawn(async move {
                        let connected = dialer.connect().await;
                        drop(permit);
                        if let Ok(connection) = connected {
                            counts.answered.fetch_add(1, Ordering::Relaxed);
                            // Held, silent, until the coordinator gives up on it.
                            let _ = connection.closed().await;
                        }
                    });
                }
            }
            "streams" | "requests" => {
                // Retried: another flood's handshakes may hold the coordinator's slots a while.
                let mut attempt = 0;
                let connection = loop {
                    match join_as(&dialer, u64::MAX / 2).await {
                        Ok(connection) => break connection,
                        Err(error) if attempt == 30 => return Err(error),
                        Err(_) => {
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                };
                if kind == "streams" {
                    // Every stream it may open, each with the first byte of a frame header only.
                    let mut open = Vec::new();
                    loop {
                        match connection.open_bi().await {
                            Ok((mut send, recv)) => {
                                counts.sent.fetch_add(1, Ordering::Relaxed);
                                let _ = send.write_all(&[0]).await;
                                open.push((send, recv));
                            }
                            Err(error) => bail!("the connection ended: {error}"),
                        }
                    }
                }
                // 32 requests in flight at once, each sent again as soon as it is answered.
                let mut senders = tokio::task::JoinSet::new();
                for _ in 0..32 {
                    let (connection, counts) = (connection.clone(), counts.clone());
                    senders.spawn(async move {
                        loop {
                            counts.sent.fetch_add(1, Ordering::Relaxed);
                            let answer: Result<ServerMessage, _> = herd_net::request(
                                &connection,
                                &herd_protocol::ClientMessage::Standing,
                            )
                            .await;
                            match answer {
                                Ok(_) => counts.answered.fetch_add(1, Ordering::Relaxed),
                                Err(error) => return error,
                            };
                        }
                    });
                }
                match senders.join_next().await {
                    Some(Ok(error)) => bail!("the connection ended: {error}"),
                    _ => bail!("a sender panicked"),
                }
            }
            "junk" => {
                let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
                let mut state = 0x9e37_79b9_7f4a_7c15_u64;
                let mut datagram = [0u8; 1_200];
                loop {
                    for byte in datagram.iter_mut() {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        *byte = state as u8;
                    }
                    let _ = socket.send_to(&datagram, join.addrs[0]);
                    counts.sent.fetch_add(1, Ordering::Relaxed);
                    if counts.sent.load(Ordering::Relaxed) % 64 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            }
            other => bail!("unknown flood `{other}`"),
        }
    })
}

fn hold(join_string: &str, first: &str, count: &str, status: &str) -> anyhow::Result<()> {
    let join_string: herd_net::JoinString = join_string.parse()?;
    let first: u64 = first.parse().context("FIRST")?;
    let count: u64 = count.parse().context("COUNT")?;
    let status = std::path::PathBuf::from(status);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let dialer = Arc::new(herd_net::Dialer::new(&join_string)?);
        let held = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(AT_ONCE));
        let (keep, mut kept) = tokio::sync::mpsc::unbounded_channel();
        let write_status = {
            let (held, failed, status) = (held.clone(), failed.clone(), status.clone());
            move || {
                let line = format!(
                    "held={} failed={}\n",
                    held.load(Ordering::Relaxed),
                    failed.load(Ordering::Relaxed)
                );
                let _ = herd_net::write_file(&status, line.as_bytes(), 0o644);
            }
        };
        for n in first..first + count {
            let permit = gate.clone().acquire_owned().await?;
            let (dialer, held, failed, keep) =
                (dialer.clone(), held.clone(), failed.clone(), keep.clone());
            let write_status = write_status.clone();
            tokio::spawn(async move {
                let mut wait = Duration::from_millis(200);
                for attempt in 1..=ATTEMPTS {
                    match join_as(&dialer, n).await {
                        Ok(connection) => {
                            let _ = keep.send(connection);
                            held.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Err(error) if attempt == ATTEMPTS => {
                            eprintln!("host {n}: {error:#}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            tokio::time::sleep(wait).await;
                            wait *= 2;
                        }
                    }
                }
                drop(permit);
                let done = held.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed);
                if done % 100 == 0 {
                    write_status();
                }
            });
        }
        drop(keep);
        // Every host has connected or failed once the gate is whole again.
        let _all = gate.acquire_many(AT_ONCE as u32).await?;
        write_status();
        let mut connections = Vec::new();
        while let Ok(connection) = kept.try_recv() {
            connections.push(connection);
        }
        // Held until killed; a connection the coordinator closes is reported on stderr.
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let closed = connections
                .iter()
                .filter(|c| c.close_reason().is_some())
                .count();
            if closed > 0 {
                eprintln!("{closed} connections were closed");
            }
        }
    })
}
