//! The coordinator's data directory. Created on first start, reused on every later one:
//!
//! | file | what | mode |
//! |---|---|---|
//! | `herd.sqlite` | the database | 0600 |
//! | `blobs/` | modules, inputs, outputs by BLAKE3 hash | |
//! | `tls.cert.der` | the self-signed certificate workers pin | 0644 |
//! | `tls.key.der` | its private key | 0600 |
//! | `project.key` | the ed25519 seed that signs assignments (hex) | 0600 |
//! | `researcher.token` | the researcher API token | 0600 |
//! | `join`, `http` | the worker join string and HTTP URL, rewritten at each start | 0644 |

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use herd_net::{load_or_create_key, random_bytes, write_file};
use herd_protocol::SigningKey;

/// The files that make a project's identity: the same in every coordinator of a project.
const SECRETS: [&str; 4] = [
    "tls.cert.der",
    "tls.key.der",
    "project.key",
    "researcher.token",
];

/// The coordinator's files, loaded or created.
pub struct DataDir {
    root: PathBuf,
    /// None of [`SECRETS`] existed before this start: they were created now.
    pub fresh: bool,
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
    pub project_key: SigningKey,
    pub researcher_token: String,
}

impl DataDir {
    /// Opens `root`, creating the directory and any missing secret on first start.
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(root).with_context(|| format!("create data dir {}", root.display()))?;
        let fresh = SECRETS.iter().all(|name| !root.join(name).exists());
        let cert_path = root.join("tls.cert.der");
        let key_path = root.join("tls.key.der");
        let (cert_der, key_der) = if cert_path.exists() && key_path.exists() {
            (
                fs::read(&cert_path).with_context(|| format!("read {}", cert_path.display()))?,
                fs::read(&key_path).with_context(|| format!("read {}", key_path.display()))?,
            )
        } else {
            let cert = herd_net::generate_certificate().context("generate TLS certificate")?;
            write_file(&key_path, &cert.key_der, 0o600)?;
            write_file(&cert_path, &cert.cert_der, 0o644)?;
            (cert.cert_der, cert.key_der)
        };
        let project_key = load_or_create_key(&root.join("project.key"))?;
        let token_path = root.join("researcher.token");
        let researcher_token = if token_path.exists() {
            let token = fs::read_to_string(&token_path)
                .with_context(|| format!("read {}", token_path.display()))?;
            token.trim().to_string()
        } else {
            let token = hex::encode(random_bytes::<24>()?);
            write_file(&token_path, format!("{token}\n").as_bytes(), 0o600)?;
            token
        };
        if researcher_token.len() < 16 {
            bail!(
                "{} holds a token shorter than 16 characters",
                token_path.display()
            );
        }
        Ok(Self {
            root: root.to_path_buf(),
            fresh,
            cert_der,
            key_der,
            project_key,
            researcher_token,
        })
    }

    /// The project's secrets, by file name, as their files hold them.
    pub fn secrets(&self) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        let mut secrets: Vec<(String, Vec<u8>)> = SECRETS
            .iter()
            .map(|name| {
                let path = self.root.join(name);
                fs::read(&path)
                    .with_context(|| format!("read {}", path.display()))
                    .map(|bytes| (name.to_string(), bytes))
            })
            .collect::<anyhow::Result<_>>()?;
        secrets.sort();
        Ok(secrets)
    }

    /// Replaces this directory's secrets with the project's (a new coordinator joining it), and
    /// opens it again.
    pub fn adopt(self, secrets: &[(String, Vec<u8>)]) -> anyhow::Result<Self> {
        for (name, bytes) in secrets {
            if !SECRETS.contains(&name.as_str()) {
                bail!("the database holds an unknown secret `{name}`");
            }
            let mode = if name == "tls.cert.der" { 0o644 } else { 0o600 };
            write_file(&self.root.join(name), bytes, mode)?;
        }
        let mut adopted = Self::open(&self.root)?;
        adopted.fresh = false;
        Ok(adopted)
    }

    pub fn database_path(&self) -> PathBuf {
        self.root.join("herd.sqlite")
    }

    pub fn blobs_path(&self) -> PathBuf {
        self.root.join("blobs")
    }

    pub fn token_path(&self) -> PathBuf {
        self.root.join("researcher.token")
    }

    /// Writes the join string and HTTP URL where scripts and `herd demo` find them.
    pub fn write_addresses(&self, join: &str, http: &str) -> anyhow::Result<()> {
        write_file(
            &self.root.join("join"),
            format!("{join}\n").as_bytes(),
            0o644,
        )?;
        write_file(
            &self.root.join("http"),
            format!("{http}\n").as_bytes(),
            0o644,
        )?;
        Ok(())
    }
}
