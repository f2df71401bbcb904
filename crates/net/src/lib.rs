//! Herd over QUIC: endpoints built on quinn and rustls, the coordinator's self-signed certificate
//! pinned by fingerprint, the join string, and message IO on streams.
//!
//! A worker trusts exactly one certificate: the one whose SHA-256 fingerprint is in its join
//! string. There is no certificate authority to compromise and nothing to configure.

mod bucket;
mod files;
mod join;
mod pinning;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herd_protocol::{
    ALPN, CHANNEL_BINDING_LABEL, ChannelBinding, ClientMessage, FrameError, HEADER_LEN, Hello,
    SigningKey, decode_body, decode_header, encode_frame,
};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use bucket::TokenBucket;
pub use files::{FileError, load_or_create_key, random_bytes, write_file};
pub use join::{JoinError, JoinString};
pub use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};

/// Streams a worker may have open at once on its connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;

/// A connection with no traffic for this long is closed; workers send keep-alives well inside it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a worker pings an idle connection: three pings fit in [`IDLE_TIMEOUT`], and an idle
/// worker barely wakes.
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// With several coordinators in the join string, a worker pings this often and gives a silent
/// connection up after [`FAILOVER_IDLE_TIMEOUT`] (QUIC takes the smaller of both ends' idle
/// timeouts), so it notices a dead coordinator within seconds and goes to the active one.
pub const FAILOVER_KEEP_ALIVE: Duration = Duration::from_secs(2);
pub const FAILOVER_IDLE_TIMEOUT: Duration = Duration::from_secs(6);

/// A network failure, or bytes from the peer that break the protocol.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("certificate generation: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("QUIC setup: {0}")]
    Setup(String),
    #[error("bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connect to {addr}: {message}")]
    Connect { addr: SocketAddr, message: String },
    /// The server is not the coordinator the join string names: retrying cannot help.
    #[error("connect to {addr}: {message}; check the join string")]
    CertificateMismatch { addr: SocketAddr, message: String },
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream closed: {0}")]
    Closed(#[from] quinn::ClosedStream),
    #[error("stream read: {0}")]
    Read(String),
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    #[error("TLS keying material: {0}")]
    Exporter(String),
    /// The peer took the request and did not begin to answer it in time: the connection is
    /// closed, so whoever holds it reconnects instead of waiting forever.
    #[error("no answer within {0:?}; the connection is closed")]
    NoAnswer(Duration),
}

/// A freshly generated self-signed certificate and its key, both DER.
pub struct Certificate {
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

/// Generates the coordinator's self-signed certificate.
pub fn generate_certificate() -> Result<Certificate, NetError> {
    let certified = rcgen::generate_simple_self_signed(vec!["herd-coordinator".to_string()])?;
    Ok(Certificate {
        cert_der: certified.cert.der().to_vec(),
        key_der: certified.signing_key.serialize_der(),
    })
}

/// The SHA-256 fingerprint of a DER certificate, as lowercase hex: what join strings pin.
pub fn fingerprint(cert_der: &[u8]) -> String {
    pinning::fingerprint(cert_der)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn transport(
    keep_alive: Option<Duration>,
    idle_timeout: Duration,
) -> Result<Arc<quinn::TransportConfig>, NetError> {
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(MAX_STREAMS_PER_CONNECTION.into());
    transport.max_concurrent_uni_streams(0u32.into());
    transport.max_idle_timeout(Some(
        idle_timeout
            .try_into()
            .map_err(|e| NetError::Setup(format!("idle timeout: {e}")))?,
    ));
    transport.keep_alive_interval(keep_alive);
    Ok(Arc::new(transport))
}

/// A server endpoint bound to `addr` presenting the given certificate.
///
/// `reset_secret` keys QUIC's stateless resets. Keeping it across restarts (the coordinator
/// derives it from its project key) lets a restarted coordinator tell workers at once that their
/// old connection is gone, instead of leaving them to wait out the idle timeout.
pub fn server_endpoint(
    addr: SocketAddr,
    cert_der: &[u8],
    key_der: &[u8],
    reset_secret: &[u8; 32],
) -> Result<Endpoint, NetError> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der.to_vec()));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(cert_der.to_vec())], key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| NetError::Setup(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport(None, IDLE_TIMEOUT)?);
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_secret);
    let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
    // Connection IDs carry a keyed hash that the endpoint checks before answering a packet for
    // an unknown connection; the key must survive restarts too, or the restarted endpoint drops
    // old connections' packets silently instead of resetting them.
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&reset_secret[24..]);
    let cid_key = u64::from_le_bytes(cid_key);
    // Many workers notice a restart at the same moment; at the default of one reset per 20 ms
    // most would wait out retransmission backoff instead. A reset is smaller than the packet that
    // provokes it, so answering more often amplifies nothing.
    endpoint_config.min_reset_interval(Duration::from_millis(1));
    endpoint_config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    let socket =
        std::net::UdpSocket::bind(addr).map_err(|source| NetError::Bind { addr, source })?;
    Endpoint::new(
        endpoint_config,
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| NetError::Bind { addr, source })
}

/// How long one coordinator's address is tried before the next (a dead one may not answer).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Connects to the first coordinator of `join` that answers, trusting only the pinned
/// certificate.
pub async fn connect(join: &JoinString) -> Result<Connection, NetError> {
    connect_from(join, 0)
        .await
        .map(|(connection, _)| connection)
}

/// Connects to one of `join`'s coordinators, trying them in turn from the `start`th (round the
/// list): the connection and the index of the address that answered. A certificate that does
/// not match is the error if any address presented one; otherwise the last address's error.
pub async fn connect_from(
    join: &JoinString,
    start: usize,
) -> Result<(Connection, usize), NetError> {
    let count = join.addrs.len();
    let mut failure = None;
    for offset in 0..count {
        let index = (start + offset) % count;
        let addr = join.addrs[index];
        let attempt = tokio::time::timeout(CONNECT_TIMEOUT, connect_to(join, addr)).await;
        let error = match attempt {
            Ok(Ok(connection)) => return Ok((connection, index)),
            Ok(Err(error)) => error,
            Err(_) => NetError::Connect {
                addr,
                message: format!("no answer within {CONNECT_TIMEOUT:?}"),
            },
        };
        if !matches!(failure, Some(NetError::CertificateMismatch { .. })) {
            failure = Some(error);
        }
    }
    Err(failure.unwrap_or_else(|| NetError::Setup("the join string names no address".into())))
}

/// A worker's QUIC client configuration for `join`: trusting only its pinned certificate, with
/// keep-alives. The slot says why the certificate was refused, if it was.
fn client_config(
    join: &JoinString,
) -> Result<(quinn::ClientConfig, pinning::MismatchSlot), NetError> {
    let verifier = pinning::PinnedCertificate::new(join.cert_sha256.clone(), provider());
    let mismatch = verifier.mismatch.clone();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| NetError::Setup(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(if join.addrs.len() > 1 {
        transport(Some(FAILOVER_KEEP_ALIVE), FAILOVER_IDLE_TIMEOUT)?
    } else {
        transport(Some(KEEP_ALIVE), IDLE_TIMEOUT)?
    });
    Ok((config, mismatch))
}

/// A client endpoint on a new UDP socket of `addr`'s family.
fn client_endpoint(addr: SocketAddr) -> Result<Endpoint, NetError> {
    let local: SocketAddr = if addr.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .map_err(|e| NetError::Setup(format!("{e}")))?;
    Endpoint::client(local).map_err(|source| NetError::Bind {
        addr: local,
        source,
    })
}

/// Many connections to a join string's first coordinator from one UDP socket, each configured
/// as a worker's: how a load test simulates thousands of workers without a socket each (a
/// worker holds one connection, and uses [`connect`]).
pub struct Dialer {
    endpoint: Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
}

impl Dialer {
    pub fn new(join: &JoinString) -> Result<Self, NetError> {
        let addr = *join
            .addrs
            .first()
            .ok_or_else(|| NetError::Setup("the join string names no address".into()))?;
        let (config, _) = client_config(join)?;
        Ok(Self {
            endpoint: client_endpoint(addr)?,
            config,
            addr,
        })
    }

    /// A new connection, given up after the connect timeout.
    pub async fn connect(&self) -> Result<Connection, NetError> {
        let failed = |message: String| NetError::Connect {
            addr: self.addr,
            message,
        };
        let connecting = self
            .endpoint
            .connect_with(self.config.clone(), self.addr, "herd-coordinator")
            .map_err(|e| failed(e.to_string()))?;
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(error)) => Err(failed(error.to_string())),
            Err(_) => Err(failed(format!("no answer within {CONNECT_TIMEOUT:?}"))),
        }
    }
}

/// Connects to the coordinator at `addr`, trusting only `join`'s pinned certificate.
async fn connect_to(join: &JoinString, addr: SocketAddr) -> Result<Connection, NetError> {
    let (config, mismatch) = client_config(join)?;
    let mut endpoint = client_endpoint(addr)?;
    endpoint.set_default_client_config(config);
    let connecting = endpoint
        .connect(addr, "herd-coordinator")
        .map_err(|e| NetError::Connect {
            addr,
            message: e.to_string(),
        })?;
    connecting.await.map_err(|e| {
        let wrong = mismatch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match wrong {
            Some(message) => NetError::CertificateMismatch { addr, message },
            None => NetError::Connect {
                addr,
                message: e.to_string(),
            },
        }
    })
}

/// The connection's [`ChannelBinding`]: keying material exported from its TLS session under
/// [`CHANNEL_BINDING_LABEL`]. Both ends compute the same value, no other connection has it, and
/// no one outside the TLS session can learn it, so a host's hello signed over it proves the host
/// holds its key on this connection and cannot be replayed on another.
pub fn channel_binding(connection: &Connection) -> Result<ChannelBinding, NetError> {
    let mut binding = [0u8; 32];
    connection
        .export_keying_material(&mut binding, CHANNEL_BINDING_LABEL, b"")
        .map_err(|e| NetError::Exporter(format!("{e:?}")))?;
    Ok(ChannelBinding(binding))
}

/// Opens a connection's handshake: signs `hello` with `key` over the connection's channel
/// binding (the proof the coordinator requires), sends it on the first stream and returns the
/// answer (`Welcome`, or the refusal).
pub async fn say_hello<R: DeserializeOwned>(
    connection: &Connection,
    key: &SigningKey,
    hello: Hello,
) -> Result<R, NetError> {
    let channel = channel_binding(connection)?;
    request(
        connection,
        &ClientMessage::Hello(hello.sign(key, &channel)?),
    )
    .await
}

/// Writes one framed message to a stream.
pub async fn write_message<T: Serialize>(
    send: &mut SendStream,
    message: &T,
) -> Result<(), NetError> {
    let frame = encode_frame(message)?;
    send.write_all(&frame).await?;
    Ok(())
}

/// Reads one framed message from a stream, refusing an oversized frame from its header.
pub async fn read_message<T: DeserializeOwned>(recv: &mut RecvStream) -> Result<T, NetError> {
    read_message_paced(recv, &Unpaced).await
}

/// Bytes moved between two calls to a [`Pace`].
pub const PACE_CHUNK: usize = 16 * 1024;

/// Paces transfers: each is asked, chunk by chunk (at most [`PACE_CHUNK`] bytes), when it may
/// move them. A volunteer's bandwidth limits are a `Pace`.
pub trait Pace: Sync {
    /// Returns when `bytes` more may be sent.
    fn upload(&self, bytes: usize) -> impl Future<Output = ()> + Send;
    /// Called after `bytes` more were received; returns when reading may go on.
    fn download(&self, bytes: usize) -> impl Future<Output = ()> + Send;
}

/// No limits.
pub struct Unpaced;

impl Pace for Unpaced {
    async fn upload(&self, _: usize) {}
    async fn download(&self, _: usize) {}
}

/// Reads one frame's body without decoding it (refusing an oversized frame from its header), for
/// a reader that looks at the bytes before it decodes them.
pub async fn read_frame(recv: &mut RecvStream) -> Result<Vec<u8>, NetError> {
    read_frame_paced(recv, &Unpaced, None).await
}

/// Reads one framed message, letting `pace` hold the reading back chunk by chunk (QUIC's flow
/// control then slows the sender down).
pub async fn read_message_paced<T: DeserializeOwned>(
    recv: &mut RecvStream,
    pace: &impl Pace,
) -> Result<T, NetError> {
    let body = read_frame_paced(recv, pace, None).await?;
    Ok(decode_body(&body)?)
}

/// [`read_frame`] under a [`Pace`]; with `header_within`, the header must arrive within it.
async fn read_frame_paced(
    recv: &mut RecvStream,
    pace: &impl Pace,
    header_within: Option<Duration>,
) -> Result<Vec<u8>, NetError> {
    let mut header = [0u8; HEADER_LEN];
    let read_header = recv.read_exact(&mut header);
    let read = match header_within {
        Some(within) => tokio::time::timeout(within, read_header)
            .await
            .map_err(|_| NetError::NoAnswer(within))?,
        None => read_header.await,
    };
    read.map_err(|e| NetError::Read(e.to_string()))?;
    pace.download(HEADER_LEN).await;
    let len = decode_header(header)?;
    let mut body = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        let end = (filled + PACE_CHUNK).min(len);
        recv.read_exact(&mut body[filled..end])
            .await
            .map_err(|e| NetError::Read(e.to_string()))?;
        pace.download(end - filled).await;
        filled = end;
    }
    Ok(body)
}

/// Writes one framed message, asking `pace` before each chunk.
pub async fn write_message_paced<T: Serialize>(
    send: &mut SendStream,
    message: &T,
    pace: &impl Pace,
) -> Result<(), NetError> {
    let frame = encode_frame(message)?;
    for chunk in frame.chunks(PACE_CHUNK) {
        pace.upload(chunk.len()).await;
        send.write_all(chunk).await?;
    }
    Ok(())
}

/// Sends one request on a new stream of `connection` and reads the one response.
pub async fn request<Q: Serialize, R: DeserializeOwned>(
    connection: &Connection,
    message: &Q,
) -> Result<R, NetError> {
    request_paced(connection, message, &Unpaced).await
}

/// How long a peer has to open a request's stream and to begin its answer once the request is
/// sent: a coordinator answers within one group commit (milliseconds), and one that has not
/// begun after this is stuck or gone. The answer's transfer itself is not bounded (a large blob
/// under a volunteer's bandwidth limit takes as long as it takes).
pub const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// The application error code a connection is closed with when its peer did not answer.
pub const NO_ANSWER: VarInt = VarInt::from_u32(4);

/// [`request`] under a [`Pace`], given up after [`ANSWER_WITHIN`] without an answer.
pub async fn request_paced<Q: Serialize, R: DeserializeOwned>(
    connection: &Connection,
    message: &Q,
    pace: &impl Pace,
) -> Result<R, NetError> {
    request_within(connection, message, pace, ANSWER_WITHIN).await
}

/// [`request_paced`] with the answer's deadline given: if the stream cannot be opened or the
/// answer has not begun `within` after the request was sent, the connection is closed (with
/// [`NO_ANSWER`], so every other request on it fails at once too) and the error is
/// [`NetError::NoAnswer`].
pub async fn request_within<Q: Serialize, R: DeserializeOwned>(
    connection: &Connection,
    message: &Q,
    pace: &impl Pace,
    within: Duration,
) -> Result<R, NetError> {
    let no_answer = || {
        connection.close(NO_ANSWER, b"no answer in time");
        NetError::NoAnswer(within)
    };
    let (mut send, mut recv) = tokio::time::timeout(within, connection.open_bi())
        .await
        .map_err(|_| no_answer())??;
    write_message_paced(&mut send, message, pace).await?;
    send.finish()?;
    let body = read_frame_paced(&mut recv, pace, Some(within))
        .await
        .map_err(|error| match error {
            NetError::NoAnswer(_) => no_answer(),
            other => other,
        })?;
    Ok(decode_body(&body)?)
}

/// A shutdown flag that turns true on SIGINT or SIGTERM: how the coordinator and the worker are
/// asked to stop. Must be called inside a tokio runtime.
pub fn shutdown_on_signal() -> tokio::sync::watch::Receiver<bool> {
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        let _ = stop.send(true);
    });
    shutdown
}

/// Logs to stderr with the filter in `HERD_LOG` (default `info`), for the coordinator and worker.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HERD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
