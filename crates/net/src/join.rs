//! The join string a volunteer pastes into their worker: where the project's coordinators are,
//! which certificate they present and which key signs their assignments.
//!
//! Format: `herd://ADDR[,ADDR...]?cert=SHA256_HEX&key=ED25519_HEX`, for example
//! `herd://127.0.0.1:4433?cert=9f86...&key=3b6a...`, or with the addresses of several
//! coordinators of one project, `herd://10.0.0.1:4433,10.0.0.2:4433?cert=...&key=...`: a worker
//! connects to one, and to another when it is gone.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use herd_protocol::PublicKey;

/// A parsed join string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinString {
    /// The coordinators' addresses, at least one, in the order workers try them.
    pub addrs: Vec<SocketAddr>,
    /// SHA-256 of the coordinator's certificate, lowercase hex.
    pub cert_sha256: String,
    /// The project key that signs assignments.
    pub project_key: PublicKey,
}

/// A join string that does not parse; the message says which part is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad join string: {0} (expected herd://ADDR[,ADDR...]?cert=SHA256_HEX&key=ED25519_HEX)")]
pub struct JoinError(String);

impl fmt::Display for JoinString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addrs: Vec<String> = self.addrs.iter().map(ToString::to_string).collect();
        write!(
            f,
            "herd://{}?cert={}&key={}",
            addrs.join(","),
            self.cert_sha256,
            self.project_key.to_hex()
        )
    }
}

impl FromStr for JoinString {
    type Err = JoinError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .trim()
            .strip_prefix("herd://")
            .ok_or_else(|| JoinError("it does not start with herd://".into()))?;
        let (addr, query) = rest
            .split_once('?')
            .ok_or_else(|| JoinError("it has no ?cert=...&key=... part".into()))?;
        let addrs = addr
            .split(',')
            .map(|addr| {
                addr.parse::<SocketAddr>()
                    .map_err(|_| JoinError(format!("`{addr}` is not an IP address and port")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut cert = None;
        let mut key = None;
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("cert", value)) => cert = Some(value),
                Some(("key", value)) => key = Some(value),
                _ => return Err(JoinError(format!("unknown part `{pair}`"))),
            }
        }
        let cert = cert.ok_or_else(|| JoinError("cert= is missing".into()))?;
        if cert.len() != 64 || !cert.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(JoinError(format!(
                "cert `{cert}` is not a SHA-256 fingerprint (64 hex digits)"
            )));
        }
        let key = key.ok_or_else(|| JoinError("key= is missing".into()))?;
        let project_key = PublicKey::from_hex(key)
            .map_err(|_| JoinError(format!("key `{key}` is not 64 hex digits")))?;
        Ok(Self {
            addrs,
            cert_sha256: cert.to_ascii_lowercase(),
            project_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_strings_round_trip_and_bad_ones_say_why() {
        let join = JoinString {
            addrs: vec!["127.0.0.1:4433".parse().expect("addr")],
            cert_sha256: "ab".repeat(32),
            project_key: PublicKey([7; 32]),
        };
        assert_eq!(join.to_string().parse::<JoinString>(), Ok(join.clone()));
        let several = JoinString {
            addrs: vec![
                "127.0.0.1:4433".parse().expect("addr"),
                "[::1]:4434".parse().expect("addr"),
            ],
            ..join.clone()
        };
        assert!(
            several
                .to_string()
                .starts_with("herd://127.0.0.1:4433,[::1]:4434?cert=")
        );
        assert_eq!(several.to_string().parse::<JoinString>(), Ok(several));
        let bad = |s: &str| s.parse::<JoinString>().unwrap_err().to_string();
        assert!(bad("quic://x").contains("herd://"));
        assert!(bad("herd://nowhere?cert=00&key=00").contains("`nowhere`"));
        assert!(bad("herd://127.0.0.1:1,?cert=00&key=00").contains("``"));
        assert!(bad("herd://127.0.0.1:1?cert=00&key=00").contains("cert `00`"));
        let no_key = format!("herd://127.0.0.1:1?cert={}", "a".repeat(64));
        assert!(bad(&no_key).contains("key= is missing"));
    }
}
