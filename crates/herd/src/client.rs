//! The researcher's HTTP client for the coordinator's `/api/v1`.

use std::time::Duration;

use anyhow::{Context, bail};
use herd_protocol::ContentHash;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The largest response read: a 16 MiB output with room to spare.
const MAX_RESPONSE_BYTES: u64 = 64 << 20;

/// A connection to one coordinator's HTTP API.
pub(crate) struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// A unit of a new batch, as the API takes it.
#[derive(Serialize)]
pub(crate) struct UnitSpec {
    pub(crate) name: String,
    pub(crate) input: String,
}

/// The batch parameters a researcher chooses.
#[derive(Serialize, Default)]
pub(crate) struct BatchSpec {
    pub(crate) module: String,
    pub(crate) units: Vec<UnitSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) quorum: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) fuel: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) memory_mb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) priority: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) adaptive: Option<AdaptiveSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) distinct_networks: Option<bool>,
    /// Credits per credit of agreed work, as written ("1.5").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) bid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) seasoned_after: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) deadline_secs: Option<u64>,
}

/// Adaptive replication, as `POST /api/v1/batches` takes it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct AdaptiveSpec {
    pub(crate) trust_after: u32,
    pub(crate) spot_check: f64,
}

impl Client {
    pub(crate) fn new(base: &str, token: Option<String>) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            agent,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1/{path}", self.base)
    }

    fn auth(&self) -> anyhow::Result<String> {
        match &self.token {
            Some(token) => Ok(format!("Bearer {}", token.trim())),
            None => bail!("no API token: pass --token or set HERD_TOKEN (your account's token)"),
        }
    }

    /// Turns a response into its body, or an error carrying the API's code and message.
    fn finish(
        &self,
        what: &str,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<Vec<u8>> {
        let mut response =
            response.with_context(|| format!("{what}: cannot reach {}", self.base))?;
        let status = response.status();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_vec()
            .with_context(|| format!("{what}: read the response"))?;
        if status.is_success() {
            return Ok(body);
        }
        let parsed: Option<Value> = serde_json::from_slice(&body).ok();
        match parsed.as_ref().and_then(|v| v.get("error")) {
            Some(error) => bail!(
                "{what}: {} ({})",
                error["message"].as_str().unwrap_or("no message"),
                error["code"].as_str().unwrap_or("no code")
            ),
            None => bail!("{what}: HTTP {status}"),
        }
    }

    fn json<T: DeserializeOwned>(what: &str, body: &[u8]) -> anyhow::Result<T> {
        serde_json::from_slice(body).with_context(|| format!("{what}: unexpected response"))
    }

    /// Uploads a blob unless the coordinator already has it for this researcher (a module
    /// submitted before); returns its hash.
    pub(crate) fn put_blob(&self, bytes: &[u8]) -> anyhow::Result<ContentHash> {
        let hash = ContentHash::of(bytes);
        let known = self
            .agent
            .head(&self.url(&format!("blobs/{hash}")))
            .header("Authorization", &self.auth()?)
            .call()
            .is_ok_and(|response| response.status().is_success());
        if known {
            return Ok(hash);
        }
        let response = self
            .agent
            .put(&self.url(&format!("blobs/{hash}")))
            .header("Authorization", &self.auth()?)
            .send(bytes);
        self.finish("upload blob", response)?;
        Ok(hash)
    }

    /// Uploads many blobs in one request (`POST /api/v1/blobs`); returns their hashes, checked
    /// against the coordinator's answer.
    pub(crate) fn put_blobs(&self, blobs: &[&[u8]]) -> anyhow::Result<Vec<ContentHash>> {
        let mut body = Vec::with_capacity(blobs.iter().map(|b| b.len() + 4).sum());
        for blob in blobs {
            let length = u32::try_from(blob.len()).context("a blob over 4 GiB")?;
            body.extend_from_slice(&length.to_be_bytes());
            body.extend_from_slice(blob);
        }
        let response = self
            .agent
            .post(&self.url("blobs"))
            .header("Authorization", &self.auth()?)
            .header("Content-Type", "application/octet-stream")
            .send(&body[..]);
        let answer = self.finish("upload blobs", response)?;
        let answer: Value = Self::json("upload blobs", &answer)?;
        let hashes: Vec<ContentHash> = blobs.iter().map(|b| ContentHash::of(b)).collect();
        let said: Vec<&str> = answer["hashes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if said.len() != hashes.len()
            || said
                .iter()
                .zip(&hashes)
                .any(|(said, hash)| **said != hash.to_hex())
        {
            bail!("upload blobs: the coordinator's hashes do not match the blobs sent");
        }
        Ok(hashes)
    }

    pub(crate) fn get_blob(&self, hash: &ContentHash) -> anyhow::Result<Vec<u8>> {
        let response = self
            .agent
            .get(&self.url(&format!("blobs/{hash}")))
            .header("Authorization", &self.auth()?)
            .call();
        let bytes = self.finish("download blob", response)?;
        if ContentHash::of(&bytes) != *hash {
            bail!("download blob: the coordinator sent bytes that do not hash to {hash}");
        }
        Ok(bytes)
    }

    /// Creates a batch; returns its id.
    pub(crate) fn create_batch(&self, spec: &BatchSpec) -> anyhow::Result<u64> {
        let response = self
            .agent
            .post(&self.url("batches"))
            .header("Authorization", &self.auth()?)
            .send_json(spec);
        let body = self.finish("create batch", response)?;
        let created: Value = Self::json("create batch", &body)?;
        created["id"]
            .as_u64()
            .context("create batch: the response has no batch id")
    }

    /// A batch's counts.
    pub(crate) fn batch_summary(&self, id: u64) -> anyhow::Result<Value> {
        let response = self
            .agent
            .get(&self.url(&format!("batches/{id}")))
            .header("Authorization", &self.auth()?)
            .call();
        let body = self.finish("batch status", response)?;
        Self::json("batch status", &body)
    }

    /// Every unit of a batch (in `state`, if given), page after page.
    pub(crate) fn batch_units(&self, id: u64, state: Option<&str>) -> anyhow::Result<Vec<Value>> {
        let mut units = Vec::new();
        let mut after = 0;
        loop {
            let filter = state.map(|s| format!("&state={s}")).unwrap_or_default();
            let response = self
                .agent
                .get(&self.url(&format!(
                    "batches/{id}/units?after={after}&limit=1000{filter}"
                )))
                .header("Authorization", &self.auth()?)
                .call();
            let body = self.finish("batch units", response)?;
            let page: Value = Self::json("batch units", &body)?;
            units.extend(page["units"].as_array().into_iter().flatten().cloned());
            match page["next_after"].as_u64() {
                Some(next) => after = next,
                None => return Ok(units),
            }
        }
    }

    /// A batch's counts with its units (in `state`, if given) under `"units"`.
    pub(crate) fn batch_status_with(&self, id: u64, state: Option<&str>) -> anyhow::Result<Value> {
        let mut status = self.batch_summary(id)?;
        status["units"] = Value::Array(self.batch_units(id, state)?);
        Ok(status)
    }

    /// Retires a batch, archiving it on the coordinator first if asked.
    pub(crate) fn retire(&self, id: u64, archive: bool) -> anyhow::Result<Value> {
        let response = self
            .agent
            .post(&self.url(&format!("batches/{id}/retire")))
            .header("Authorization", &self.auth()?)
            .send_json(serde_json::json!({ "archive": archive }));
        let body = self.finish("retire batch", response)?;
        Self::json("retire batch", &body)
    }

    /// Downloads the batch's results archive into `path`, resuming a partial download left in
    /// `path.part` (with the ETag it had, in `path.part.etag`): only the missing bytes are
    /// fetched, and only if the archive has not changed since. Returns the archive's size.
    pub(crate) fn download_archive(&self, id: u64, path: &std::path::Path) -> anyhow::Result<u64> {
        use std::io::Write;
        let part = path.with_extension("part");
        let tag_file = path.with_extension("part.etag");
        let have = std::fs::metadata(&part).map_or(0, |m| m.len());
        let tag = std::fs::read_to_string(&tag_file).ok();
        let mut request = self
            .agent
            .get(&self.url(&format!("batches/{id}/results")))
            .header("Authorization", &self.auth()?);
        if let (true, Some(tag)) = (have > 0, tag.as_deref()) {
            request = request
                .header("Range", &format!("bytes={have}-"))
                .header("If-Range", tag.trim());
        }
        let mut response = request
            .call()
            .with_context(|| format!("download results: cannot reach {}", self.base))?;
        let status = response.status().as_u16();
        if !(status == 200 || status == 206) {
            // An error: read its JSON for the message.
            return self
                .finish("download results", Ok(response))
                .and_then(|_| bail!("download results: HTTP {status}"));
        }
        let etag = response
            .headers()
            .get("ETag")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        std::fs::write(&tag_file, &etag)
            .with_context(|| format!("cannot write {}", tag_file.display()))?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(status == 206)
            .write(true)
            .truncate(status == 200)
            .open(&part)
            .with_context(|| format!("cannot open {}", part.display()))?;
        let mut reader = response.body_mut().with_config().limit(u64::MAX).reader();
        std::io::copy(&mut reader, &mut file).with_context(|| {
            format!(
                "download results: interrupted; run again to resume ({})",
                part.display()
            )
        })?;
        file.flush()?;
        let size = file.metadata()?.len();
        std::fs::rename(&part, path).with_context(|| format!("cannot write {}", path.display()))?;
        let _ = std::fs::remove_file(&tag_file);
        Ok(size)
    }

    /// One page of the researcher's batches (ids above `after`).
    pub(crate) fn list_batches(&self, after: u64, limit: u32) -> anyhow::Result<Value> {
        let response = self
            .agent
            .get(&self.url(&format!("batches?after={after}&limit={limit}")))
            .header("Authorization", &self.auth()?)
            .call();
        let body = self.finish("list batches", response)?;
        Self::json("list batches", &body)
    }

    /// Cancels a batch's open units.
    pub(crate) fn cancel(&self, id: u64) -> anyhow::Result<Value> {
        let response = self
            .agent
            .post(&self.url(&format!("batches/{id}/cancel")))
            .header("Authorization", &self.auth()?)
            .send_empty();
        let body = self.finish("cancel batch", response)?;
        Self::json("cancel batch", &body)
    }

    /// Adds a researcher (the administrator only); the answer holds their token.
    pub(crate) fn add_researcher(&self, name: &str) -> anyhow::Result<Value> {
        let response = self
            .agent
            .post(&self.url("researchers"))
            .header("Authorization", &self.auth()?)
            .send_json(serde_json::json!({ "name": name }));
        let body = self.finish("add researcher", response)?;
        Self::json("add researcher", &body)
    }

    /// Signs up (with the administrator's token, if this client has one: the coordinator then
    /// creates the account whatever its sign-up rules).
    pub(crate) fn create_account(
        &self,
        name: &str,
        team: Option<&str>,
        invitation: Option<&str>,
    ) -> anyhow::Result<Value> {
        let mut request = self.agent.post(&self.url("accounts"));
        if self.token.is_some() {
            request = request.header("Authorization", &self.auth()?);
        }
        let response = request.send_json(serde_json::json!({
            "name": name,
            "team": team,
            "invitation": invitation,
        }));
        let body = self.finish("create account", response)?;
        Self::json("create account", &body)
    }

    /// The administrator gives an account a new key (`revoke`: takes its key away).
    pub(crate) fn account_key(&self, name: &str, revoke: bool) -> anyhow::Result<Value> {
        let what = if revoke {
            "revoke account key"
        } else {
            "new account key"
        };
        self.administer(
            &format!("accounts/{}/key", path_segment(name)),
            revoke,
            what,
        )
    }

    /// The administrator grants (or with `withdraw`, withdraws) an account's permission to
    /// submit.
    pub(crate) fn submit_permission(&self, name: &str, withdraw: bool) -> anyhow::Result<Value> {
        let what = if withdraw {
            "deny the permission to submit"
        } else {
            "grant the permission to submit"
        };
        let path = format!("accounts/{}/permissions/submit", path_segment(name));
        self.administer(&path, withdraw, what)
    }

    /// The administrator makes an invitation code.
    pub(crate) fn invite(&self) -> anyhow::Result<Value> {
        self.administer("invitations", false, "invite")
    }

    /// An administrator's request with no body: `POST path`, or with `delete`, `DELETE path`.
    fn administer(&self, path: &str, delete: bool, what: &str) -> anyhow::Result<Value> {
        let url = self.url(path);
        let auth = self.auth()?;
        let response = if delete {
            self.agent
                .delete(&url)
                .header("Authorization", &auth)
                .call()
        } else {
            self.agent
                .post(&url)
                .header("Authorization", &auth)
                .send_empty()
        };
        let body = self.finish(what, response)?;
        Self::json(what, &body)
    }

    /// The administrator gives an account a new API token.
    pub(crate) fn account_token(&self, name: &str) -> anyhow::Result<Value> {
        let path = format!("accounts/{}/token", path_segment(name));
        self.administer(&path, false, "new API token")
    }

    /// The statement of the account whose token this client has, with `recent` movements.
    pub(crate) fn statement(&self, recent: u32) -> anyhow::Result<Value> {
        let response = self
            .agent
            .get(&self.url(&format!("account?recent={recent}")))
            .header("Authorization", &self.auth()?)
            .call();
        let body = self.finish("account", response)?;
        Self::json("account", &body)
    }

    /// An account's public credit totals.
    pub(crate) fn account_totals(&self, name: &str) -> anyhow::Result<Value> {
        let response = self
            .agent
            .get(&self.url(&format!("accounts/{}", path_segment(name))))
            .call();
        let body = self.finish("account", response)?;
        Self::json("account", &body)
    }

    /// Sends `amount` credits (as written: "2.5") from this client's account to `to`.
    pub(crate) fn send_credit(
        &self,
        to: &str,
        amount: &str,
        memo: Option<&str>,
    ) -> anyhow::Result<Value> {
        let response = self
            .agent
            .post(&self.url("account/transfers"))
            .header("Authorization", &self.auth()?)
            .send_json(serde_json::json!({ "to": to, "amount": amount, "memo": memo }));
        let body = self.finish("send credit", response)?;
        Self::json("send credit", &body)
    }

    /// The administrator gives `name` `amount` credits.
    pub(crate) fn grant_credit(
        &self,
        name: &str,
        amount: &str,
        memo: Option<&str>,
    ) -> anyhow::Result<Value> {
        let response = self
            .agent
            .post(&self.url(&format!("accounts/{}/grants", path_segment(name))))
            .header("Authorization", &self.auth()?)
            .send_json(serde_json::json!({ "amount": amount, "memo": memo }));
        let body = self.finish("grant credit", response)?;
        Self::json("grant credit", &body)
    }

    /// The administrator sets how far below zero `name` may go (`None`: no limit).
    pub(crate) fn set_overdraft(&self, name: &str, amount: Option<&str>) -> anyhow::Result<Value> {
        let response = self
            .agent
            .put(&self.url(&format!("accounts/{}/overdraft", path_segment(name))))
            .header("Authorization", &self.auth()?)
            .send_json(serde_json::json!({ "amount": amount }));
        let body = self.finish("set overdraft", response)?;
        Self::json("set overdraft", &body)
    }

    pub(crate) fn hosts(&self) -> anyhow::Result<Value> {
        let response = self.agent.get(&self.url("hosts")).call();
        let body = self.finish("hosts", response)?;
        Self::json("hosts", &body)
    }

    pub(crate) fn credit(&self) -> anyhow::Result<Value> {
        let response = self.agent.get(&self.url("credit")).call();
        let body = self.finish("credit", response)?;
        Self::json("credit", &body)
    }
}

/// A name as one segment of a URL path: every byte but unreserved ones percent-encoded.
fn path_segment(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
