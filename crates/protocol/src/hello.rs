//! The handshake: a host says who it is and proves it.
//!
//! Every host's public key is public (the coordinator lists them), so a `Hello` that only named a
//! key would let anyone speak as any host: take its replicas away, move it to another volunteer,
//! and with it the credit it earns. A [`SignedHello`] therefore carries a signature by the host's
//! secret key over the hello's claims *and* a [`ChannelBinding`], a value both ends of one QUIC
//! connection derive from its TLS session (an RFC 5705 / RFC 8446 exporter) and that no other
//! connection shares. A signature made for one connection proves nothing on another, so a
//! recorded `Hello` cannot be replayed, and no one without the secret key can make one.
//!
//! That one signature also vouches for everything the host sends after it on the connection.
//! The server's certificate is pinned by the join string, so no one can sit between the two
//! ends, and TLS 1.3 authenticates every byte of the connection under keys only its two ends
//! hold (AEAD). A report on a proven connection is therefore the host's just as surely as if it
//! carried its own signature, which is why reports carry none (until protocol version 5 each
//! did, and checking them was the largest share of the coordinator's ed25519 work). A report
//! signature would add only proof to a third party, and Herd never shows a report to one: a
//! coordinator that takes a report in for another one's shard vouches for it in the shared
//! database.

use serde::{Deserialize, Serialize};

use crate::{FrameError, PublicKey, Signature, SignatureError, SigningKey};

/// Domain string for hello proofs (never valid as an assignment's or a report's signature).
const HELLO_DOMAIN: &[u8] = b"herd hello v1\0";

/// The TLS exporter label both ends derive the [`ChannelBinding`] under (RFC 8446 section 7.5;
/// exporter labels begin with `EXPORTER-`).
pub const CHANNEL_BINDING_LABEL: &[u8] = b"EXPORTER-herd-hello-v1";

/// A secret both ends of one connection share and no other connection has: the TLS session's
/// keying material exported under [`CHANNEL_BINDING_LABEL`]. The host signs its hello over it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ChannelBinding(pub [u8; 32]);

impl std::fmt::Debug for ChannelBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A per-connection secret: not for logs.
        f.write_str("ChannelBinding(..)")
    }
}

/// What a host claims when it connects: who it is and for which volunteer it computes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// First, so any version of the coordinator can read it (see [`hello_version`]).
    pub protocol_version: u32,
    /// The version of the deterministic instrumentation the host's sandbox applies to every
    /// module (`herd-instrument`). The fuel and the NaN bits of a unit depend on it, so the
    /// coordinator only admits hosts that run its own: replicas must be comparable.
    pub instrumentation_version: u32,
    /// The host's identity: the hello's proof and its reports are signed with the matching
    /// secret key.
    pub host_key: PublicKey,
    /// The account this host computes for, by its key: the coordinator looks the account up by
    /// the key's hash, and `volunteer` is then only what the worker calls it. Without a key, a
    /// project with anonymous volunteers registers the host under `volunteer` (a name held by
    /// the machine that first gave it); any other project refuses it
    /// ([`crate::ErrorCode::AccountRequired`]).
    pub account_key: Option<AccountKey>,
    pub volunteer: String,
    pub team: Option<String>,
    /// Units this host runs at once; caps its in-flight replicas.
    pub cores: u32,
    /// Replicas this host still holds from an earlier connection (running, or finished and
    /// not yet acknowledged), at most [`MAX_HELD_REPLICAS`]. Its other in-progress replicas were
    /// lost and are reissued.
    pub held_replicas: Vec<u64>,
}

/// The most replicas a hello may say its host holds: two a core (one running, the next one
/// fetched) for a machine of 2,048 cores. The coordinator looks each up when the host connects.
pub const MAX_HELD_REPLICAS: usize = 4_096;

impl Hello {
    /// Signs the hello for the connection `channel` belongs to, with the secret key of
    /// `host_key` (which must be `key`'s public half, or the coordinator refuses it).
    pub fn sign(
        self,
        key: &SigningKey,
        channel: &ChannelBinding,
    ) -> Result<SignedHello, FrameError> {
        let proof = key.sign(HELLO_DOMAIN, &proof_bytes(&self, channel)?);
        Ok(SignedHello { hello: self, proof })
    }
}

/// An account key: the secret a volunteer's machines attach to their account with (BOINC's
/// account key, its "weak" authenticator: it lets a machine compute and earn for the account and
/// nothing else; acting for the account on the HTTP API needs its API token). It travels only
/// inside a hello, on a connection to the pinned coordinator, and never appears in logs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountKey(pub String);

impl std::fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccountKey(..)")
    }
}

/// A hello and its proof: the host key's signature over the hello and the connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHello {
    pub hello: Hello,
    pub proof: Signature,
}

impl SignedHello {
    /// Checks that the hello was signed by its host key's secret for this connection.
    pub fn verify(&self, channel: &ChannelBinding) -> Result<&Hello, SignatureError> {
        let bytes = proof_bytes(&self.hello, channel).map_err(|_| SignatureError::Invalid)?;
        self.hello
            .host_key
            .verify(HELLO_DOMAIN, &bytes, &self.proof)?;
        Ok(&self.hello)
    }
}

/// The bytes a hello's proof signs: the channel binding, then the hello's encoding.
fn proof_bytes(hello: &Hello, channel: &ChannelBinding) -> Result<Vec<u8>, FrameError> {
    let mut bytes = channel.0.to_vec();
    bytes.extend_from_slice(&postcard::to_allocvec(hello)?);
    Ok(bytes)
}

/// The protocol version of a first message, read without decoding the rest: `Some` if `body`
/// begins as a `Hello` of any version does (variant 0, then the version). A coordinator uses it
/// to refuse a worker of another version by name even when the rest of its hello has another
/// shape.
pub fn hello_version(body: &[u8]) -> Option<u32> {
    let (variant, rest): (u32, _) = postcard::take_from_bytes(body).ok()?;
    if variant != 0 {
        return None;
    }
    let (version, _): (u32, _) = postcard::take_from_bytes(rest).ok()?;
    Some(version)
}
