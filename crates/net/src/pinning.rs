//! Certificate pinning: the client accepts the server's certificate if and only if its SHA-256
//! fingerprint equals the pinned one, and still checks the handshake signatures against it.

use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

pub(crate) fn fingerprint(cert_der: &[u8]) -> String {
    hex::encode(Sha256::digest(cert_der))
}

/// Where a refused certificate's reason is left for the handshake's caller.
pub(crate) type MismatchSlot = Arc<std::sync::Mutex<Option<String>>>;

#[derive(Debug)]
pub(crate) struct PinnedCertificate {
    sha256: String,
    provider: Arc<CryptoProvider>,
    /// Set when the server's certificate did not match: the handshake error that follows is
    /// then a wrong certificate, not a network failure.
    pub(crate) mismatch: MismatchSlot,
}

impl PinnedCertificate {
    pub(crate) fn new(sha256: String, provider: Arc<CryptoProvider>) -> Self {
        Self {
            sha256: sha256.to_ascii_lowercase(),
            provider,
            mismatch: Arc::default(),
        }
    }
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let actual = fingerprint(end_entity);
        if actual == self.sha256 {
            Ok(ServerCertVerified::assertion())
        } else {
            let message = format!(
                "coordinator certificate fingerprint {actual} does not match the join string's {}",
                self.sha256
            );
            *self
                .mismatch
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(message.clone());
            Err(rustls::Error::General(message))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
