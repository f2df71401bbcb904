//! Herd's wire protocol: the messages a worker and the coordinator exchange over QUIC, the outcome
//! of running a work unit, content hashes, signatures, and the length-prefixed framing.
//!
//! Architecture Invariant: this crate does no IO, reads no clock and spawns no task. It depends on
//! neither tokio, quinn nor wasmtime, so every byte format here can be tested as pure data.
//!
//! Messages are encoded with postcard, which is not self-describing: the first message on every
//! connection is [`ClientMessage::Hello`], whose first field is [`PROTOCOL_VERSION`] (and which
//! proves the host holds its key: [`hello`]), and the
//! golden-bytes tests in `tests.rs` pin the encoding of each message so a change cannot slip in.

mod framing;
mod hash;
pub mod hello;
mod message;
mod outcome;
mod signing;

pub use framing::{
    FrameError, HEADER_LEN, MAX_FRAME_LEN, decode_body, decode_header, encode_frame,
};
pub use hash::{ContentHash, HashParseError};
pub use hello::{
    AccountKey, CHANNEL_BINDING_LABEL, ChannelBinding, Hello, MAX_HELD_REPLICAS, SignedHello,
    hello_version,
};
pub use message::{
    Assignment, ClientMessage, ErrorCode, FinishedReplica, MAX_EXCHANGE, RefusedReport, Report,
    ServerMessage, SignedAssignment, Standing, TeamStanding,
};
pub use outcome::{AbortReason, Outcome, RunResult, Status, TrapKind};
pub use signing::{PublicKey, Signature, SignatureError, SigningKey};

/// The version of this protocol. A coordinator refuses a worker whose `Hello` carries another.
/// Version 4 added the instrumentation version to `Hello`; version 5 its proof (the host key's
/// signature over the hello and the connection's channel binding); version 6 dropped the
/// reports' own signatures, which the proven connection made redundant; version 7 the account
/// key in `Hello`; version 8 the replicas a reconnecting host need not run, in `Welcome`.
pub const PROTOCOL_VERSION: u32 = 8;

/// The ALPN identifier both ends of a Herd QUIC connection must agree on.
pub const ALPN: &[u8] = b"herd/1";

#[cfg(test)]
mod tests;
