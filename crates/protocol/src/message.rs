//! The messages of a Herd connection. A worker opens one QUIC connection, sends
//! [`ClientMessage::Hello`] on its first stream, then opens one bidirectional stream per request:
//! one [`ClientMessage`] frame in, one [`ServerMessage`] frame out.
//!
//! Wire-format invariant: variant 0 of [`ClientMessage`] is `Hello` and its first field is the
//! protocol version, so any future version can still read an old worker's version and refuse it
//! with a clear error ([`crate::hello_version`]). The encoding of [`ServerMessage::Error`] and of
//! the existing [`ErrorCode`]s never changes (new codes are appended), so an old worker can read
//! that refusal.

use serde::{Deserialize, Serialize};

use crate::{
    ContentHash, FrameError, Outcome, PublicKey, Signature, SignatureError, SignedHello, SigningKey,
};

/// Domain string for assignment signatures.
const ASSIGNMENT_DOMAIN: &[u8] = b"herd assignment v1\0";

/// What a worker sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClientMessage {
    /// The first message of a connection: who this host is, for which volunteer it computes,
    /// and the proof that it holds its key, bound to this connection (see [`crate::hello`]).
    Hello(SignedHello),
    /// Ask for one replica to run.
    RequestWork,
    /// Ask for a blob by its hash: the module or the input of a replica in progress on this host
    /// (anything else is refused with [`ErrorCode::NotAssigned`]).
    FetchBlob { hash: ContentHash },
    /// Report a finished replica, with its output bytes. A report carries no signature of its
    /// own: it is the host's because it arrives on the host's connection, which the hello's
    /// signature bound to the host key and TLS authenticates byte for byte (see
    /// [`crate::hello`]).
    Report { report: Report, output: Vec<u8> },
    /// Report finished replicas and ask for up to `want` more, in one round trip, as BOINC's
    /// scheduler RPC does. At most [`MAX_EXCHANGE`] of each. Answered with
    /// [`ServerMessage::Exchanged`], each report accepted or refused on its own.
    Exchange {
        reports: Vec<FinishedReplica>,
        want: u32,
        /// The fuel per second this host has been computing one unit at, pauses included (its
        /// measured speed per core, as the volunteer's limits and presence let it run); `None`
        /// until it has finished a unit. The coordinator does not assign it units of a batch
        /// whose typical unit it could not finish before the replica deadline at this speed.
        fuel_per_second: Option<u64>,
    },
    /// Ask for this host's volunteer's credit and rank (for the worker's screensaver view).
    Standing,
}

impl ClientMessage {
    /// The message's name, for logs (without its contents, which may be large).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Hello(_) => "Hello",
            Self::RequestWork => "RequestWork",
            Self::FetchBlob { .. } => "FetchBlob",
            Self::Report { .. } => "Report",
            Self::Exchange { .. } => "Exchange",
            Self::Standing => "Standing",
        }
    }
}

/// A volunteer's place in the project, as [`ServerMessage::Standing`] gives it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Standing {
    pub volunteer: String,
    /// Credit granted so far (agreed fuel / 10^9).
    pub credit: f64,
    /// Credit per day, 7-day half-life.
    pub recent_average_credit: f64,
    /// 1 for the volunteer with the most credit.
    pub rank: u32,
    pub volunteers: u32,
    pub team: Option<TeamStanding>,
}

/// A team's place in the project.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TeamStanding {
    pub name: String,
    pub credit: f64,
    pub rank: u32,
    pub teams: u32,
}

/// The most reports, and the most units asked for, in one [`ClientMessage::Exchange`].
pub const MAX_EXCHANGE: usize = 64;

/// A finished replica's report and its output bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishedReplica {
    pub report: Report,
    pub output: Vec<u8>,
}

/// A report of an exchange that was refused, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedReport {
    pub replica_id: u64,
    pub code: ErrorCode,
    pub message: String,
}

/// What the coordinator answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ServerMessage {
    /// The answer to `Hello`: the project key that signs assignments, and which of the replicas
    /// the hello said the host holds are no longer needed (their units were decided or retired
    /// while it was away): a replica not yet started need not run. A finished one is still
    /// worth reporting (an agreeing late result is credited).
    Welcome {
        project_key: PublicKey,
        unneeded: Vec<u64>,
    },
    /// One replica to run.
    Work(SignedAssignment),
    /// Nothing to do now; ask again after this many milliseconds.
    NoWork { retry_after_ms: u32 },
    /// The requested blob.
    Blob { hash: ContentHash, bytes: Vec<u8> },
    /// The report is recorded (or was already: reports are idempotent).
    ReportAccepted { replica_id: u64 },
    /// The request was refused.
    Error { code: ErrorCode, message: String },
    /// The answer to `Exchange`: the reports recorded (or already recorded: reports are
    /// idempotent), those refused and why, and the replicas to run; with fewer than asked for,
    /// how long to wait before asking again.
    Exchanged {
        accepted: Vec<u64>,
        refused: Vec<RefusedReport>,
        work: Vec<SignedAssignment>,
        retry_after_ms: u32,
    },
    /// The answer to `Standing`.
    Standing(Standing),
}

/// Why a request was refused. Stable: workers branch on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    UnsupportedVersion,
    Malformed,
    NotRegistered,
    BadSignature,
    UnknownReplica,
    NotYourReplica,
    BlobNotFound,
    BadOutput,
    Internal,
    /// Well formed, but the project's rules refuse it (a new host may not change the team of
    /// the volunteer it joins). Retrying the same request cannot help.
    NotAllowed,
    /// A blob asked for that no replica in progress on this host needs.
    NotAssigned,
    /// The hello's account key is not one of the project's accounts' (never issued, or
    /// replaced or revoked). Retrying with the same key cannot help.
    UnknownAccount,
    /// The hello has no account key, and the project has no anonymous volunteers: a machine
    /// computes for an account, attached with its key.
    AccountRequired,
}

/// One replica of a work unit given to one host, signed by the project key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub replica_id: u64,
    pub unit_id: u64,
    pub batch_id: u64,
    /// The host this replica is for: a worker refuses an assignment made out to another key.
    pub host_key: PublicKey,
    pub module: ContentHash,
    pub input: ContentHash,
    /// Seeds the unit's random_get.
    pub seed: u64,
    pub fuel_limit: u64,
    pub memory_limit_bytes: u64,
    pub output_limit_bytes: u64,
    /// Unix time in milliseconds after which the coordinator gives the replica to another host.
    pub deadline_ms: u64,
}

impl Assignment {
    /// Signs this assignment with the project key.
    pub fn sign(self, project_key: &SigningKey) -> Result<SignedAssignment, FrameError> {
        let bytes = postcard::to_allocvec(&self)?;
        let signature = project_key.sign(ASSIGNMENT_DOMAIN, &bytes);
        Ok(SignedAssignment {
            assignment: self,
            signature,
        })
    }
}

/// An assignment and the project's signature over it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedAssignment {
    pub assignment: Assignment,
    pub signature: Signature,
}

impl SignedAssignment {
    /// Checks the project's signature.
    pub fn verify(&self, project_key: &PublicKey) -> Result<(), SignatureError> {
        let bytes = postcard::to_allocvec(&self.assignment).map_err(|_| SignatureError::Invalid)?;
        project_key.verify(ASSIGNMENT_DOMAIN, &bytes, &self.signature)
    }
}

/// A host's report of one replica's outcome. Unsigned: see [`ClientMessage::Report`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub replica_id: u64,
    pub outcome: Outcome,
}
