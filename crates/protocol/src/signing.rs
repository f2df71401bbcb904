//! Ed25519 keys and signatures: the coordinator signs assignments with the project key, a worker
//! signs its hello (bound to its connection) with its host key. Each signed message is prefixed
//! with its own domain string so a signature over one kind of message can never be replayed as
//! another.

use std::fmt;

use ed25519_dalek::Signer;
use serde::{Deserialize, Serialize};

/// An ed25519 public key (a worker's host identity or the project's key).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Lowercase hexadecimal, as in join strings and logs.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hexadecimal digits.
    pub fn from_hex(s: &str) -> Result<Self, SignatureError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| SignatureError::BadKey)?;
        Ok(Self(bytes))
    }

    /// Checks `signature` over `domain || message`.
    pub fn verify(
        &self,
        domain: &[u8],
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), SignatureError> {
        let key =
            ed25519_dalek::VerifyingKey::from_bytes(&self.0).map_err(|_| SignatureError::BadKey)?;
        let bytes: [u8; 64] = signature
            .0
            .as_slice()
            .try_into()
            .map_err(|_| SignatureError::Invalid)?;
        let signature = ed25519_dalek::Signature::from_bytes(&bytes);
        // Strict: refuses weak (small-order) keys and non-canonical signatures, under which one
        // signature can check out for many messages.
        key.verify_strict(&signed_bytes(domain, message), &signature)
            .map_err(|_| SignatureError::Invalid)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

/// An ed25519 signature (64 bytes; a vector on the wire, checked when verified).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature(pub Vec<u8>);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", hex::encode(&self.0))
    }
}

/// A signature or key that does not check out.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the public key is not a valid ed25519 key")]
    BadKey,
    #[error("the signature does not match the message and key")]
    Invalid,
}

/// A secret ed25519 key. The 32-byte seed is what is stored on disk (mode 0600).
pub struct SigningKey(ed25519_dalek::SigningKey);

impl SigningKey {
    /// Makes the key from its 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// The seed, to store.
    pub fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// Signs `domain || message`.
    pub fn sign(&self, domain: &[u8], message: &[u8]) -> Signature {
        Signature(
            self.0
                .sign(&signed_bytes(domain, message))
                .to_bytes()
                .to_vec(),
        )
    }
}

fn signed_bytes(domain: &[u8], message: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(domain.len() + message.len());
    bytes.extend_from_slice(domain);
    bytes.extend_from_slice(message);
    bytes
}
