//! The worker-facing QUIC service. Each worker holds one connection: its first stream carries
//! `Hello` (protocol version, host key, volunteer, and the proof that the host holds its key on
//! this connection), every later stream one request and its answer. Nothing a connection asks is
//! done before its hello is proven, and every later request acts only for the proven host.
//!
//! A malformed frame, an unsupported version or a bad signature gets an `Error` message naming
//! the problem and the connection is closed; the coordinator itself carries on.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use herd_net::{
    Connection, Endpoint, NetError, RecvStream, SendStream, read_message, write_message,
};
use herd_protocol::{
    Assignment, ClientMessage, ContentHash, ErrorCode, FinishedReplica, Hello, MAX_EXCHANGE,
    MAX_HELD_REPLICAS, Outcome, PROTOCOL_VERSION, RefusedReport, ServerMessage, Standing,
    TeamStanding,
};
use herd_store::{HostRecord, ReportRefusal, StoreError, Want};
use tokio::sync::Semaphore;

use crate::{Shared, blocking, now_ms};

/// Worker connections held at once (about 40 KiB each when idle: RELIABILITY.md). One more is
/// refused at once, and its worker backs off and tries again.
const MAX_CONNECTIONS: usize = 16_384;

/// Handshakes in flight at once. Past half of them, a client whose address is not yet proven must
/// first show it receives at that address (a QUIC Retry: one round trip, no state kept), so a
/// flood from forged addresses costs the coordinator nothing; past all of them, new connections
/// are refused until some finish.
const MAX_HANDSHAKES: usize = 256;

/// How long a connection's QUIC handshake may take: a worker gives up on one after 3 s
/// (`herd_net`'s connect timeout), so one still unfinished after this is abandoned, or a flood's,
/// and its handshake slot goes to the next.
const HANDSHAKE_WITHIN: Duration = Duration::from_secs(4);

/// How long a connection has, once its handshake is done, to prove its hello. One that has not
/// by then is closed: it holds no connection slot for longer, whatever keep-alives it sends.
const HELLO_WITHIN: Duration = Duration::from_secs(10);

/// Each connection's requests: bursts of [`REQUEST_BURST`], then this many a second. An honest
/// worker asks once per unit (reports and new work in one exchange), so only a flood meets it;
/// the flood's next stream is then read only when its budget allows, and the other hosts' work
/// goes on.
const REQUESTS_PER_SECOND: f64 = 500.0;
const REQUEST_BURST: f64 = 1_000.0;

/// How long a worker with nothing to do waits before asking again.
const NO_WORK_RETRY_MS: u32 = 1_000;

/// An answer slower than this is logged: a group commit takes milliseconds.
const SLOW_ANSWER: Duration = Duration::from_secs(5);

/// How long a refusal is given to reach the worker before the connection closes.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// QUIC application close codes.
const CLOSE_PROTOCOL_ERROR: u32 = 1;

/// The registered peer of one connection.
struct Peer {
    /// The host, and its volunteer (by the name the project has it under).
    host: HostRecord,
    /// The hash of the account key the host attached with, if it did.
    key_hash: Option<String>,
    /// The network of the host's address on this connection (`herd_lifecycle::network_of`).
    network: u64,
}

/// Accepts connections until the endpoint closes, within the bounds above.
pub(crate) async fn serve(endpoint: Endpoint, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    while let Some(incoming) = endpoint.accept().await {
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("refusing {}: connections full", incoming.remote_address());
            incoming.refuse();
            continue;
        };
        if handshakes.available_permits() < MAX_HANDSHAKES / 2
            && !incoming.remote_address_validated()
            && incoming.may_retry()
        {
            // Dropping the slot: the retried connection comes back as a new incoming.
            let _ = incoming.retry();
            continue;
        }
        let Ok(handshake) = handshakes.clone().try_acquire_owned() else {
            tracing::debug!("refusing {}: handshakes full", incoming.remote_address());
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let connection = match tokio::time::timeout(HANDSHAKE_WITHIN, incoming).await {
                Ok(Ok(connection)) => connection,
                Ok(Err(error)) => {
                    tracing::info!("handshake with {remote} failed: {error}");
                    return;
                }
                Err(_) => {
                    tracing::info!("handshake with {remote} took over {HANDSHAKE_WITHIN:?}");
                    return;
                }
            };
            drop(handshake);
            if let Err(error) = serve_connection(connection, shared).await {
                tracing::info!("worker {remote}: {error:#}");
            }
            drop(slot);
        });
    }
}

/// Sends a refusal, lets it arrive, and closes the connection.
async fn refuse(connection: &Connection, mut send: SendStream, code: ErrorCode, message: String) {
    tracing::info!("refusing {}: {message}", connection.remote_address());
    let _ = write_message(
        &mut send,
        &ServerMessage::Error {
            code,
            message: message.clone(),
        },
    )
    .await;
    let _ = send.finish();
    let _ = tokio::time::timeout(CLOSE_GRACE, send.stopped()).await;
    connection.close(CLOSE_PROTOCOL_ERROR.into(), message.as_bytes());
}

/// Reads the first message of a connection and checks it: a hello of this protocol and
/// instrumentation version, signed by its host key over this connection's channel binding. Any
/// other first message is answered with the refusal to send (`Err`); nothing about the host it
/// names has been touched.
async fn read_hello(
    connection: &Connection,
    recv: &mut RecvStream,
) -> Result<Hello, (ErrorCode, String)> {
    let body = match herd_net::read_frame(recv).await {
        Ok(body) => body,
        Err(error) => return Err((ErrorCode::Malformed, format!("bad hello: {error}"))),
    };
    let unsupported = |version: u32| {
        (
            ErrorCode::UnsupportedVersion,
            format!(
                "protocol version {version} is not supported; this coordinator speaks {PROTOCOL_VERSION} (update herd-worker)"
            ),
        )
    };
    let signed = match herd_protocol::decode_body::<ClientMessage>(&body) {
        Ok(ClientMessage::Hello(signed)) => signed,
        Ok(_) => {
            return Err((
                ErrorCode::NotRegistered,
                "the first message must be Hello".into(),
            ));
        }
        // Another version's hello has another shape; its version still reads.
        Err(error) => match herd_protocol::hello_version(&body) {
            Some(version) if version != PROTOCOL_VERSION => return Err(unsupported(version)),
            _ => return Err((ErrorCode::Malformed, format!("bad hello: {error}"))),
        },
    };
    let hello = &signed.hello;
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(unsupported(hello.protocol_version));
    }
    if hello.held_replicas.len() > MAX_HELD_REPLICAS {
        return Err((
            ErrorCode::Malformed,
            format!(
                "a hello may name at most {MAX_HELD_REPLICAS} replicas held, not {}",
                hello.held_replicas.len()
            ),
        ));
    }
    if hello.instrumentation_version != herd_sandbox::INSTRUMENTATION_VERSION {
        return Err((
            ErrorCode::UnsupportedVersion,
            format!(
                "instrumentation version {} is not supported; this coordinator's units run under \
                 version {} (replicas must agree on it); update herd-worker",
                hello.instrumentation_version,
                herd_sandbox::INSTRUMENTATION_VERSION
            ),
        ));
    }
    let channel = herd_net::channel_binding(connection)
        .map_err(|error| (ErrorCode::Internal, format!("{error}")))?;
    if let Err(problem) = signed.verify(&channel) {
        return Err((
            ErrorCode::BadSignature,
            format!(
                "the hello for host key {} is not signed by that key over this connection ({problem}): \
                 a host must prove it holds its key, and a hello recorded on another connection proves nothing",
                hello.host_key.to_hex()
            ),
        ));
    }
    Ok(signed.hello)
}

async fn serve_connection(connection: Connection, shared: Arc<Shared>) -> anyhow::Result<()> {
    let opened = tokio::time::timeout(HELLO_WITHIN, async {
        let (send, mut recv) = connection.accept_bi().await?;
        let hello = read_hello(&connection, &mut recv).await;
        Ok::<_, anyhow::Error>((send, hello))
    })
    .await;
    let (mut send, hello) = match opened {
        Ok(opened) => opened?,
        Err(_) => {
            connection.close(
                CLOSE_PROTOCOL_ERROR.into(),
                b"no hello in time: a connection proves its host within seconds",
            );
            anyhow::bail!("no hello within {HELLO_WITHIN:?}");
        }
    };
    let Hello {
        host_key,
        account_key,
        volunteer,
        team,
        cores,
        held_replicas,
        ..
    } = match hello {
        Ok(hello) => hello,
        Err((code, message)) => {
            // Counted nowhere: a refused hello proves nothing about the host it names.
            refuse(&connection, send, code, message).await;
            return Ok(());
        }
    };
    let now = now_ms();
    // The account the host computes for: by its key, or, where the project allows anonymous
    // volunteers, by the name the hello gives.
    let key_hash = account_key.map(|key| crate::http::token_hash(&key.0));
    let registered = match &key_hash {
        Some(hash) => {
            shared
                .store
                .attach_host(&host_key, hash, team.as_deref(), cores, now)
                .await
        }
        None if shared.accounts.rules.anonymous => {
            shared
                .store
                .register_host(&host_key, &volunteer, team.as_deref(), cores, now)
                .await
        }
        None => {
            refuse(
                &connection,
                send,
                ErrorCode::AccountRequired,
                "this project's machines compute for an account: attach this one with its \
                 account key (herd-worker attach --data-dir DIR; sign up with herd account \
                 create NAME)"
                    .into(),
            )
            .await;
            return Ok(());
        }
    };
    let registered = match registered {
        Ok(host) => {
            let lost = shared
                .store
                .release_lost_replicas(host.host_id, &held_replicas, now)
                .await?;
            if lost > 0 {
                tracing::info!(
                    "host {}: {lost} lost replicas will be reissued",
                    host.host_id
                );
            }
            Ok(host)
        }
        Err(error) => Err(error),
    };
    let host = match registered {
        Ok(host) => host,
        Err(StoreError::Invalid(message)) => {
            refuse(&connection, send, ErrorCode::Malformed, message).await;
            return Ok(());
        }
        Err(StoreError::NotAllowed(message)) => {
            refuse(&connection, send, ErrorCode::NotAllowed, message).await;
            return Ok(());
        }
        Err(error @ StoreError::UnknownAccount { .. }) => {
            refuse(
                &connection,
                send,
                ErrorCode::UnknownAccount,
                error.to_string(),
            )
            .await;
            return Ok(());
        }
        Err(error) => return Err(error.into()),
    };
    tracing::info!(
        "host {} registered (host {}, volunteer {}, {} cores)",
        connection.remote_address(),
        host.host_id,
        host.volunteer_id,
        host.cores
    );
    // Replicas it holds whose units were decided while it was away: it need not run them. (Most
    // hellos hold nothing, and cost no lookup.)
    let unneeded = if held_replicas.is_empty() {
        Vec::new()
    } else {
        shared
            .store
            .unneeded_replicas(host.host_id, &held_replicas)
            .await?
    };
    if !unneeded.is_empty() {
        tracing::info!(
            "host {}: {} of the replicas it holds are no longer needed",
            host.host_id,
            unneeded.len()
        );
    }
    write_message(
        &mut send,
        &ServerMessage::Welcome {
            project_key: shared.project_key.public_key(),
            unneeded,
        },
    )
    .await?;
    send.finish()?;
    let peer = Arc::new(Peer {
        host,
        key_hash,
        network: herd_lifecycle::network_of(connection.remote_address().ip()),
    });
    let mut budget = herd_net::TokenBucket::with_burst(REQUESTS_PER_SECOND, REQUEST_BURST, now);
    loop {
        let (send, recv) = match connection.accept_bi().await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::info!("host {} disconnected: {error}", peer.host.host_id);
                return Ok(());
            }
        };
        let wait = budget.take(now_ms(), 1);
        if !wait.is_zero() {
            // Over its budget: the request waits (and the peer's further streams with it, up to
            // its stream limit), while every other connection is served.
            tokio::time::sleep(wait).await;
        }
        let shared = shared.clone();
        let peer = peer.clone();
        let connection = connection.clone();
        tokio::spawn(async move {
            if let Err(error) = serve_stream(&connection, send, recv, &shared, &peer).await {
                tracing::warn!("host {}: {error:#}", peer.host.host_id);
            }
        });
    }
}

/// What to do after answering a request.
enum After {
    KeepOpen,
    Close,
}

async fn serve_stream(
    connection: &Connection,
    mut send: SendStream,
    mut recv: RecvStream,
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
) -> anyhow::Result<()> {
    let request = match read_message::<ClientMessage>(&mut recv).await {
        Ok(request) => request,
        Err(NetError::Frame(error)) => {
            refuse(
                connection,
                send,
                ErrorCode::Malformed,
                format!("malformed frame: {error}"),
            )
            .await;
            return Ok(());
        }
        Err(error) => return Err(error.into()),
    };
    let kind = request.kind();
    let started = std::time::Instant::now();
    // On an error the stream ends unanswered: the worker keeps its report and sends it again.
    let (answer, after) = answer(request, shared, peer)
        .await
        .with_context(|| format!("answering a {kind}"))?;
    let took = started.elapsed();
    if took > SLOW_ANSWER {
        // A worker gives a request up after `herd_net::ANSWER_WITHIN`: say where the time went.
        tracing::warn!(
            "host {}: answering a {kind} took {took:?}",
            peer.host.host_id
        );
    }
    if let (ServerMessage::Error { code, message }, After::Close) = (&answer, &after) {
        refuse(connection, send, *code, message.clone()).await;
        return Ok(());
    }
    write_message(&mut send, &answer).await?;
    send.finish()?;
    Ok(())
}

fn error(code: ErrorCode, message: impl Into<String>) -> ServerMessage {
    ServerMessage::Error {
        code,
        message: message.into(),
    }
}

async fn answer(
    request: ClientMessage,
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
) -> anyhow::Result<(ServerMessage, After)> {
    if let Some(hash) = &peer.key_hash
        && shared.accounts.is_revoked(hash)
    {
        return Ok((
            error(
                ErrorCode::UnknownAccount,
                StoreError::UnknownAccount { revoked: true }.to_string(),
            ),
            After::Close,
        ));
    }
    match request {
        ClientMessage::Hello(_) => Ok((
            error(
                ErrorCode::Malformed,
                "Hello was already sent on this connection",
            ),
            After::Close,
        )),
        ClientMessage::RequestWork => Ok((assign(shared, peer).await?, After::KeepOpen)),
        ClientMessage::FetchBlob { hash } => {
            Ok((fetch_blob(shared, peer, hash).await?, After::KeepOpen))
        }
        ClientMessage::Standing => Ok((standing(shared, peer).await?, After::KeepOpen)),
        ClientMessage::Report { report, output } => {
            // No signature to check: the report is the host's because it came on the
            // connection its hello proved (`herd_protocol::hello`).
            let (fates, _) = record_reports(
                shared,
                peer,
                vec![FinishedReplica { report, output }],
                Want::units(0),
            )
            .await?;
            Ok((
                match fates.into_iter().next() {
                    Some(Ok(replica_id)) => ServerMessage::ReportAccepted { replica_id },
                    Some(Err(refused)) => error(refused.code, refused.message),
                    None => error(ErrorCode::Internal, "the report was lost"),
                },
                After::KeepOpen,
            ))
        }
        ClientMessage::Exchange {
            reports,
            want,
            fuel_per_second,
        } => {
            if reports.len() > MAX_EXCHANGE || want as usize > MAX_EXCHANGE {
                return Ok((
                    error(
                        ErrorCode::Malformed,
                        format!(
                            "an exchange carries at most {MAX_EXCHANGE} reports and asks for at most {MAX_EXCHANGE} units, not {} and {want}",
                            reports.len()
                        ),
                    ),
                    After::Close,
                ));
            }
            let want_work = Want {
                units: want,
                fuel_per_second,
                network: peer.network,
            };
            let (fates, assignments) = record_reports(shared, peer, reports, want_work).await?;
            let mut work = Vec::with_capacity(assignments.len());
            for assignment in assignments {
                work.push(assignment.sign(&shared.project_key)?);
            }
            let (mut accepted, mut refused) = (Vec::new(), Vec::new());
            for fate in fates {
                match fate {
                    Ok(replica_id) => accepted.push(replica_id),
                    Err(refusal) => refused.push(refusal),
                }
            }
            let retry_after_ms = if work.len() < want as usize {
                NO_WORK_RETRY_MS
            } else {
                0
            };
            Ok((
                ServerMessage::Exchanged {
                    accepted,
                    refused,
                    work,
                    retry_after_ms,
                },
                After::KeepOpen,
            ))
        }
    }
}

/// Records reports that came on `peer`'s proven connection, then assigns up to `want`
/// replicas, in one store operation (the reports first, so the replicas they finish no longer
/// count against the host's cores). Each output is checked against its claimed hash and stored
/// (synced) before the report that refers to it is committed. Returns each report's fate in order (its replica
/// id, or why it was refused; refusals count against the host) and the new assignments.
async fn record_reports(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    reports: Vec<FinishedReplica>,
    want: Want,
) -> anyhow::Result<(Vec<Result<u64, RefusedReport>>, Vec<Assignment>)> {
    let mut fates: Vec<Option<Result<u64, RefusedReport>>> = Vec::with_capacity(reports.len());
    let mut to_store = Vec::new();
    let mut outcomes = Vec::with_capacity(reports.len());
    let mut slots = Vec::with_capacity(reports.len());
    for FinishedReplica { report, output } in reports {
        let replica_id = report.replica_id;
        let outcome = report.outcome;
        if let Outcome::Countable(result) = &outcome {
            let actual = ContentHash::of(&output);
            if actual != result.output_hash || output.len() as u64 != result.output_len {
                fates.push(Some(Err(RefusedReport {
                    replica_id,
                    code: ErrorCode::BadOutput,
                    message: format!(
                        "replica {replica_id}: output bytes hash to {actual} ({} bytes), the report claims {} ({} bytes)",
                        output.len(),
                        result.output_hash,
                        result.output_len
                    ),
                })));
                continue;
            }
            // Replicas that agree share one blob, so usually only the first writes it.
            if !shared.blobs.cached(&result.output_hash) {
                to_store.push(output);
            }
        }
        slots.push(fates.len());
        fates.push(None);
        outcomes.push((replica_id, outcome));
    }
    let bad_outputs = fates.iter().filter(|f| f.is_some()).count();
    for _ in 0..bad_outputs {
        // A report whose output does not match counts against the host, in its public record.
        shared
            .store
            .record_refused_report(peer.host.host_id)
            .await?;
    }
    if !to_store.is_empty() {
        let blobs = shared.blobs.clone();
        blocking(move || {
            let outputs: Vec<&[u8]> = to_store.iter().map(Vec::as_slice).collect();
            blobs.put_many(&outputs).map(|_| ())
        })
        .await?;
    }
    let replica_ids: Vec<u64> = outcomes.iter().map(|(id, _)| *id).collect();
    let exchanged = shared
        .store
        .exchange(peer.host.host_id, outcomes, want, now_ms())
        .await?;
    for ((index, replica_id), fate) in slots.into_iter().zip(replica_ids).zip(exchanged.reports) {
        fates[index] = Some(match fate {
            Ok(effect) => {
                tracing::debug!("replica {replica_id}: {effect:?}");
                Ok(replica_id)
            }
            Err(ReportRefusal::UnknownReplica) => Err(RefusedReport {
                replica_id,
                code: ErrorCode::UnknownReplica,
                message: format!("replica {replica_id} does not exist"),
            }),
            Err(ReportRefusal::NotYourReplica) => Err(RefusedReport {
                replica_id,
                code: ErrorCode::NotYourReplica,
                message: format!("replica {replica_id} was not assigned to this host"),
            }),
            Err(ReportRefusal::Impossible(reason)) => Err(RefusedReport {
                replica_id,
                code: ErrorCode::BadOutput,
                message: format!("replica {replica_id}: {reason}"),
            }),
        });
    }
    Ok((fates.into_iter().flatten().collect(), exchanged.assignments))
}

/// The peer's volunteer's credit and rank, and their team's.
async fn standing(shared: &Arc<Shared>, peer: &Arc<Peer>) -> anyhow::Result<ServerMessage> {
    let totals = shared.store.credit_totals(now_ms()).await?;
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let Some((index, line)) = totals
        .volunteers
        .iter()
        .enumerate()
        .find(|(_, line)| line.name == peer.host.volunteer)
    else {
        return Ok(error(
            ErrorCode::NotRegistered,
            format!("no volunteer `{}`", peer.host.volunteer),
        ));
    };
    let team = line.team.as_ref().and_then(|name| {
        totals
            .teams
            .iter()
            .enumerate()
            .find(|(_, t)| &t.name == name)
            .map(|(rank, t)| TeamStanding {
                name: t.name.clone(),
                credit: t.credit,
                rank: count(rank + 1),
                teams: count(totals.teams.len()),
            })
    });
    Ok(ServerMessage::Standing(Standing {
        volunteer: line.name.clone(),
        credit: line.credit,
        recent_average_credit: line.recent_average_credit,
        rank: count(index + 1),
        volunteers: count(totals.volunteers.len()),
        team,
    }))
}

async fn assign(shared: &Arc<Shared>, peer: &Arc<Peer>) -> anyhow::Result<ServerMessage> {
    // An exchange with no reports: it carries the host's network, which `assign` does not.
    let want = Want {
        units: 1,
        fuel_per_second: None,
        network: peer.network,
    };
    let exchanged = shared
        .store
        .exchange(peer.host.host_id, Vec::new(), want, now_ms())
        .await?;
    let Some(assignment) = exchanged.assignments.into_iter().next() else {
        return Ok(ServerMessage::NoWork {
            retry_after_ms: NO_WORK_RETRY_MS,
        });
    };
    Ok(ServerMessage::Work(assignment.sign(&shared.project_key)?))
}

/// A blob for the peer: only the module or input of a replica in progress on its host, so a
/// connected host cannot read other batches' inputs (or anything else) by hash.
async fn fetch_blob(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    hash: ContentHash,
) -> anyhow::Result<ServerMessage> {
    if !shared
        .store
        .host_needs_blob(peer.host.host_id, &hash)
        .await?
    {
        return Ok(error(
            ErrorCode::NotAssigned,
            format!(
                "blob {hash} is not the module or input of a replica in progress on this host: a host fetches only what its assignments name"
            ),
        ));
    }
    let blobs = shared.blobs.clone();
    let bytes = blocking(move || blobs.get(&hash)).await?;
    Ok(match bytes {
        Some(bytes) => ServerMessage::Blob { hash, bytes },
        None => error(ErrorCode::BlobNotFound, format!("no blob {hash}")),
    })
}
