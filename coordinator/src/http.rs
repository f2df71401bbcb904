//! The HTTP API, JSON under `/api/v1`. Researcher endpoints need `Authorization: Bearer TOKEN`
//! (401 without it, 403 with a token no researcher holds); each researcher sees only their own
//! batches and their blobs, and another researcher's batch answers 404 like a missing one.
//! The dashboard endpoints are public.
//!
//! | method | path | what |
//! |---|---|---|
//! | PUT | `/api/v1/blobs/{hash}` | upload a module or input (body: its bytes; refused if they do not hash to `{hash}`) |
//! | POST | `/api/v1/blobs` | upload many inputs at once: the body is each blob as a 4-byte big-endian length and its bytes; answers their hashes in order |
//! | GET | `/api/v1/blobs/{hash}` | download a blob of one of your batches (an output, by the hash in a unit's result) |
//! | POST | `/api/v1/batches` | create a batch (see [`CreateBatch`]) |
//! | GET | `/api/v1/batches?after=ID&limit=N` | your batches, oldest first, a page at a time (`next_after` names the next page) |
//! | GET | `/api/v1/batches/{id}` | a batch's counts |
//! | GET | `/api/v1/batches/{id}/units?after=ID&limit=N&state=S` | a page of its units (state, result, failure, replicas) |
//! | GET | `/api/v1/batches/{id}/results` | every validated output as one tar archive, streamed; `Range` resumes it (`If-Range` with its `ETag`) |
//! | POST | `/api/v1/batches/{id}/cancel` | fail the batch's open units as cancelled; no more replicas are sent |
//! | POST | `/api/v1/batches/{id}/retire` | purge a batch's rows and blobs; `{"archive": true}` keeps a copy first |
//! | POST | `/api/v1/researchers` | the administrator adds a researcher (`{"name"}`); the answer holds their token, once |
//! | POST | `/api/v1/accounts` | sign up (`{"name", "team"?, "invitation"?}`), as the project allows: open, by invitation, or the administrator only; the answer holds the account key, once |
//! | POST | `/api/v1/accounts/{name}/key` | the administrator gives an account a new key (replacing any it had); the answer holds it, once |
//! | DELETE | `/api/v1/accounts/{name}/key` | the administrator revokes an account's key: its machines stop |
//! | POST | `/api/v1/accounts/{name}/permissions/submit` | the administrator lets an account submit batches; the answer holds its API token, once |
//! | DELETE | `/api/v1/accounts/{name}/permissions/submit` | the administrator withdraws it: the token answers 403, the batches stay |
//! | POST | `/api/v1/accounts/{name}/token` | the administrator gives an account a new API token (replacing any it had, its submit permission's too); the answer holds it, once |
//! | GET | `/api/v1/accounts/{name}` | an account's credit totals, in fuel: balance, earned, revoked, spent, granted, sent, received (public) |
//! | GET | `/api/v1/account?recent=N` | your account's statement: the totals, its overdraft and its latest movements (the account's token) |
//! | POST | `/api/v1/account/transfers` | send credit to another account (`{"to", "amount", "memo"?}`, amount in credits); 409 past your balance (the account's token) |
//! | POST | `/api/v1/accounts/{name}/grants` | the administrator gives an account credit (`{"amount", "memo"?}`) |
//! | PUT | `/api/v1/accounts/{name}/overdraft` | the administrator sets how far below zero an account may go (`{"amount"}`; `null`: no limit) |
//! | POST | `/api/v1/invitations` | the administrator makes an invitation code, good for one sign-up |
//! | POST | `/api/v1/stats/export` | the administrator regenerates the statistics exports now |
//! | GET | `/api/v1/credit` | credit and recent average credit per volunteer and team |
//! | GET | `/api/v1/hosts` | every host's record: valid, invalid, error, timed-out replicas, refused reports, credit |
//! | GET | `/api/v1/summary` | the project at a glance (public) |
//! | GET | `/api/v1/throughput?hours=N` | units validated and fuel credited per interval (public) |
//! | GET | `/api/v1/leaderboard/{board}` | a page of the volunteer, team or host leaderboard (public) |
//! | GET | `/api/v1/volunteers/{name}` | a volunteer's figures, rank, team and hosts (public) |
//! | GET | `/metrics` | the summary in Prometheus's text format (public) |
//! | GET | `/stats/{file}` | BOINC-format statistics exports (public) |
//! | GET | `/` | the web dashboard (public; the researcher's batches with their token) |
//! | GET | `/api/v1/openapi.json` | the OpenAPI 3.1 document describing all of this (public) |
//!
//! Errors are `{"error": {"code": "...", "message": "..."}}` with a stable code.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use herd_lifecycle::{Adaptive, PPM, Policy};
use herd_protocol::ContentHash;
use herd_sandbox::{Limits, MAX_MEMORY_BYTES, MAX_MODULE_BYTES, MAX_OUTPUT_BYTES};
use herd_store::{NewBatch, NewUnit, Researcher, RetiredBatch, StoreError, UnitState};
use serde::Deserialize;
use tokio::sync::watch;

use crate::accounts::{deny_submit, grant_submit, invite, new_key, revoke_key, sign_up};
use crate::{Shared, blocking, credit, now_ms};

/// The largest request body: a 16 MiB blob, or a batch description of 100,000 units.
const MAX_BODY_BYTES: usize = 32 << 20;

/// The most units one batch may have.
pub(crate) const MAX_UNITS_PER_BATCH: usize = 100_000;

pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/api/v1/blobs", post(put_blobs))
        .route("/api/v1/blobs/{hash}", get(get_blob).put(put_blob))
        .route("/api/v1/batches", post(create_batch).get(list_batches))
        .route("/api/v1/batches/{id}", get(batch_status))
        .route("/api/v1/batches/{id}/units", get(batch_units))
        .route("/api/v1/batches/{id}/results", get(batch_results))
        .route("/api/v1/batches/{id}/cancel", post(cancel_batch))
        .route("/api/v1/batches/{id}/retire", post(retire_batch))
        .route("/api/v1/researchers", post(add_researcher))
        .route("/api/v1/accounts", post(sign_up))
        .route(
            "/api/v1/accounts/{name}/key",
            post(new_key).delete(revoke_key),
        )
        .route(
            "/api/v1/accounts/{name}/permissions/submit",
            post(grant_submit).delete(deny_submit),
        )
        .route("/api/v1/accounts/{name}", get(credit::public_totals))
        .route("/api/v1/accounts/{name}/token", post(credit::new_token))
        .route("/api/v1/accounts/{name}/grants", post(credit::grant))
        .route(
            "/api/v1/accounts/{name}/overdraft",
            axum::routing::put(credit::set_overdraft),
        )
        .route("/api/v1/account", get(credit::own_statement))
        .route("/api/v1/account/transfers", post(credit::send))
        .route("/api/v1/invitations", post(invite))
        .route("/api/v1/stats/export", post(export_stats))
        .route("/stats/{file}", get(stats_file))
        .route("/", get(dashboard_page))
        .route("/dashboard.js", get(dashboard_script))
        .route("/dashboard.css", get(dashboard_style))
        .route("/api/v1/summary", get(summary))
        .route("/api/v1/throughput", get(throughput))
        .route("/api/v1/leaderboard/{board}", get(leaderboard))
        .route("/api/v1/volunteers/{name}", get(volunteer_page))
        .route("/metrics", get(metrics))
        .route("/api/v1/credit", get(credit))
        .route("/api/v1/hosts", get(hosts))
        .route("/api/v1/openapi.json", get(openapi))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shared);
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    // Each request knows its peer's address: sign-ups are limited per network.
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!("HTTP server: {error}");
    }
}

/// An API error: an HTTP status, a stable code and a message naming the problem.
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> Self {
        tracing::error!("internal error: {error:#}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the coordinator's log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// The name of the researcher whose token is the coordinator's own `researcher.token`: the
/// administrator, who may add researchers.
pub(crate) const ADMIN: &str = "admin";

/// How a token is kept: its BLAKE3 hash, so the database never holds a usable token.
pub(crate) fn token_hash(token: &str) -> String {
    ContentHash::of(token.as_bytes()).to_hex()
}

/// The researcher whose token the request carries: 401 without one, 403 with one no
/// researcher holds. The token is looked up by its hash, so comparing never touches it.
pub(crate) async fn researcher(
    shared: &Shared,
    headers: &HeaderMap,
) -> Result<Researcher, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing Authorization: Bearer TOKEN header",
        ));
    };
    let presented = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .trim();
    let found = shared
        .store
        .researcher_by_token(&token_hash(presented))
        .await
        .map_err(anyhow::Error::from)?;
    found.ok_or_else(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the token is not valid for this coordinator",
        )
    })
}

/// "No such batch", for batches that do not exist and for other researchers' batches alike:
/// whether another researcher's batch exists is not this researcher's business.
fn no_batch(id: u64) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "batch_not_found",
        format!("no batch {id}"),
    )
}

/// Checks that batch `id` is `researcher`'s.
async fn own_batch(shared: &Shared, researcher: &Researcher, id: u64) -> Result<(), ApiError> {
    let owner = shared
        .store
        .batch_owner(id)
        .await
        .map_err(anyhow::Error::from)?;
    if owner == Some(researcher.id) {
        Ok(())
    } else {
        Err(no_batch(id))
    }
}

/// A request's body, or the reason it could not be read, as a JSON error like every other:
/// 413 `too_large` past [`MAX_BODY_BYTES`].
pub(crate) fn request_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                "too_large",
                format!("the request body is over the limit of {MAX_BODY_BYTES} bytes"),
            )
        } else {
            ApiError::new(
                status,
                "bad_body",
                format!("cannot read the request body: {rejection}"),
            )
        }
    })
}

fn parse_hash(text: &str) -> Result<ContentHash, ApiError> {
    text.parse()
        .map_err(|e| ApiError::bad_request("bad_hash", format!("{e}")))
}

async fn put_blob(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(hash): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = request_body(body)?;
    let me = researcher(&shared, &headers).await?;
    let claimed = parse_hash(&hash)?;
    if body.len() > MAX_MODULE_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "blob is {} bytes, over the limit of {MAX_MODULE_BYTES}",
                body.len()
            ),
        ));
    }
    let actual = ContentHash::of(&body);
    if actual != claimed {
        return Err(ApiError::bad_request(
            "hash_mismatch",
            format!("body hashes to {actual}, not {claimed}"),
        ));
    }
    let blobs = shared.blobs.clone();
    blocking(move || blobs.put(&body)).await?;
    shared
        .store
        .record_uploads(me.id, vec![claimed])
        .await
        .map_err(anyhow::Error::from)?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "hash": claimed.to_hex() })),
    )
        .into_response())
}

async fn get_blob(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(hash): Path<String>,
) -> Result<Response, ApiError> {
    let me = researcher(&shared, &headers).await?;
    let hash = parse_hash(&hash)?;
    // Only blobs of the researcher's own batches: another researcher's output is not theirs
    // to read, even by its hash.
    let visible = shared
        .store
        .blob_visible(me.id, &hash)
        .await
        .map_err(anyhow::Error::from)?;
    let blobs = shared.blobs.clone();
    let found = if visible {
        blocking(move || blobs.get(&hash)).await?
    } else {
        None
    };
    match found {
        Some(bytes) => {
            Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
        }
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "blob_not_found",
            format!("no blob {hash}"),
        )),
    }
}

/// The body of `POST /api/v1/batches`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBatch {
    /// The module's content hash (upload it first).
    module: String,
    units: Vec<CreateUnit>,
    /// Agreeing replicas needed (default 2).
    quorum: Option<u32>,
    /// Fuel per unit (default 10^10).
    fuel: Option<u64>,
    /// Memory limit per unit in MiB (default 256).
    memory_mb: Option<u64>,
    /// Output limit per unit in bytes (default 8 MiB).
    output_limit_bytes: Option<u64>,
    /// Deadline for each replica in seconds (default one day).
    deadline_secs: Option<u64>,
    /// Replicas sent at first (default: the quorum).
    initial_replicas: Option<u32>,
    /// Aborted or timed-out replicas after which a unit fails (default 4 x quorum).
    max_error_replicas: Option<u32>,
    /// Replicas a unit may ever have (default 8 x quorum).
    max_total_replicas: Option<u32>,
    /// Successful replicas without agreement after which a unit fails (default 4 x quorum).
    max_success_replicas: Option<u32>,
    /// Higher goes first (-100..=100, default 0); equal priorities share workers fairly.
    priority: Option<i32>,
    /// Adaptive replication (off when absent): trusted hosts' results may stand alone.
    adaptive: Option<AdaptiveRequest>,
    /// At most one replica of a unit per network (IPv4 /24, IPv6 /48); on for every batch of
    /// a project started with `--distinct-networks`.
    distinct_networks: Option<bool>,
    /// What the batch pays per credit of agreed work, from its owner's balance, as each unit is
    /// validated (`"1.5"` or `1.5`; default 0, the free tier). Paying batches are served first,
    /// the higher bid first.
    bid: Option<credit::Decimal>,
}

/// Adaptive replication settings of a new batch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdaptiveRequest {
    /// Consecutive checked valid results before a host is trusted (default 10).
    trust_after: Option<u32>,
    /// Fraction of a trusted host's units replicated in full anyway, 0..=1 (default 0.1).
    spot_check: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUnit {
    name: String,
    /// The input's content hash (upload it first).
    input: String,
    /// Seed for random_get (default: the unit's position in the batch).
    seed: Option<u64>,
}

fn check_range(name: &str, value: u64, min: u64, max: u64) -> Result<u64, ApiError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ApiError::bad_request(
            "out_of_range",
            format!("{name} {value} is outside {min}..={max}"),
        ))
    }
}

async fn create_batch(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = request_body(body)?;
    let me = researcher(&shared, &headers).await?;
    let request: CreateBatch = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("bad_json", format!("batch description: {e}")))?;
    if request.units.is_empty() || request.units.len() > MAX_UNITS_PER_BATCH {
        return Err(ApiError::bad_request(
            "out_of_range",
            format!(
                "a batch has 1..={MAX_UNITS_PER_BATCH} units, not {}",
                request.units.len()
            ),
        ));
    }
    let module = parse_hash(&request.module)?;
    let mut policy = Policy::with_quorum(request.quorum.unwrap_or(2));
    if let Some(secs) = request.deadline_secs {
        policy.replica_deadline_ms = secs.saturating_mul(1000);
    }
    if let Some(n) = request.initial_replicas {
        policy.initial_replicas = n;
    }
    if let Some(n) = request.max_error_replicas {
        policy.max_error_replicas = n;
    }
    if let Some(n) = request.max_total_replicas {
        policy.max_total_replicas = n;
    }
    if let Some(n) = request.max_success_replicas {
        policy.max_success_replicas = n;
    }
    if let Some(adaptive) = &request.adaptive {
        let spot_check = adaptive
            .spot_check
            .unwrap_or(Adaptive::DEFAULT.spot_check_ppm as f64 / PPM as f64);
        if !(0.0..=1.0).contains(&spot_check) {
            return Err(ApiError::bad_request(
                "out_of_range",
                format!("adaptive spot_check {spot_check} is outside 0..=1"),
            ));
        }
        policy.adaptive = Some(Adaptive {
            trust_after: adaptive
                .trust_after
                .unwrap_or(Adaptive::DEFAULT.trust_after),
            spot_check_ppm: (spot_check * PPM as f64).round() as u32,
        });
    }
    policy.distinct_networks =
        request.distinct_networks.unwrap_or(false) || shared.accounts.rules.distinct_networks;
    let priority = request.priority.unwrap_or(0);
    if !(-100..=100).contains(&priority) {
        return Err(ApiError::bad_request(
            "out_of_range",
            format!("priority {priority} is outside -100..=100"),
        ));
    }
    policy
        .validate()
        .map_err(|e| ApiError::bad_request("out_of_range", e.0))?;
    let bid_milli = match &request.bid {
        Some(bid) => herd_store::ledger::parse_bid(&bid.text())
            .map_err(|e| ApiError::bad_request("bad_bid", e))?,
        None => 0,
    };
    let pricing = herd_store::Pricing {
        bid_milli,
        pause_when_broke: shared.accounts.rules.pause_unpaid,
    };
    let defaults = Limits::default();
    let fuel = check_range(
        "fuel",
        request.fuel.unwrap_or(defaults.fuel),
        1,
        u64::MAX / 4,
    )?;
    let memory = check_range(
        "memory_mb",
        request.memory_mb.unwrap_or(defaults.memory_bytes >> 20),
        1,
        MAX_MEMORY_BYTES >> 20,
    )? << 20;
    let output = check_range(
        "output_limit_bytes",
        request.output_limit_bytes.unwrap_or(defaults.output_bytes),
        0,
        MAX_OUTPUT_BYTES,
    )?;
    let mut units = Vec::with_capacity(request.units.len());
    for (index, unit) in request.units.into_iter().enumerate() {
        if unit.name.is_empty()
            || unit.name.len() > 255
            || unit.name.contains(['/', '\\', '\0'])
            || unit.name == "."
            || unit.name == ".."
        {
            return Err(ApiError::bad_request(
                "bad_unit_name",
                format!(
                    "unit name `{}` must be 1 to 255 bytes and usable as a file name",
                    unit.name.escape_debug()
                ),
            ));
        }
        units.push(NewUnit {
            input: parse_hash(&unit.input)?,
            seed: unit.seed.unwrap_or(index as u64),
            name: unit.name,
        });
    }
    let batch = NewBatch {
        researcher_id: me.id,
        module,
        policy,
        fuel_limit: fuel,
        memory_limit_bytes: memory,
        output_limit_bytes: output,
        priority,
        pricing,
        units,
    };
    // Another researcher's module, named by its hash, is missing to this one: it is neither
    // admitted nor looked at (admission's refusals would tell of it).
    if !shared
        .store
        .blob_visible(me.id, &batch.module)
        .await
        .map_err(anyhow::Error::from)?
    {
        return Err(ApiError::bad_request(
            "module_missing",
            format!("module {} has not been uploaded", batch.module),
        ));
    }
    let checker = shared.clone();
    let created = blocking(move || {
        let shared = checker;
        let Some(wasm) = shared.blobs.get(&batch.module)? else {
            return Ok(Err(ApiError::bad_request(
                "module_missing",
                format!("module {} has not been uploaded", batch.module),
            )));
        };
        let admitted = shared
            .sandbox
            .admit(&wasm)
            .and_then(|module| module.check_memory_limit(batch.memory_limit_bytes));
        if let Err(refusal) = admitted {
            return Ok(Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "module_rejected",
                refusal.to_string(),
            )));
        }
        if let Some(missing) = shared
            .blobs
            .first_missing(batch.units.iter().map(|u| &u.input))?
            && let Some(unit) = batch.units.iter().find(|u| u.input == missing)
        {
            return Ok(Err(ApiError::bad_request(
                "input_missing",
                format!(
                    "input {} of unit `{}` has not been uploaded",
                    unit.input, unit.name
                ),
            )));
        }
        Ok(Ok(batch))
    })
    .await??;
    let units = created.units.len();
    let id = match shared.store.create_batch(&created, now_ms()).await {
        Ok(id) => id,
        Err(StoreError::Invalid(message)) => {
            return Err(ApiError::bad_request("invalid_batch", message));
        }
        // An input this researcher does not hold (uploaded by someone else, or no one): the
        // same answer as a missing one.
        Err(StoreError::BlobMissing(hash)) => {
            let unit = created
                .units
                .iter()
                .find(|u| u.input == hash)
                .map_or_else(String::new, |u| format!(" of unit `{}`", u.name));
            return Err(ApiError::bad_request(
                "input_missing",
                format!("input {hash}{unit} has not been uploaded"),
            ));
        }
        Err(other) => return Err(anyhow::Error::from(other).into()),
    };
    tracing::info!("batch {id} created with {units} units");
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "id": id, "units": units })),
    )
        .into_response())
}

async fn batch_status(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let me = researcher(&shared, &headers).await?;
    let id = parse_batch_id(&id)?;
    match shared
        .store
        .batch_summary(id)
        .await
        .map_err(anyhow::Error::from)?
    {
        Some((owner, summary)) if owner == me.id => Ok(Json(summary).into_response()),
        _ => Err(no_batch(id)),
    }
}

/// The body of `POST /api/v1/batches/{id}/retire`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetireBatch {
    /// Write the batch's status and validated outputs to `DIR/archive/batch-ID` first.
    #[serde(default)]
    archive: bool,
}

fn parse_batch_id(id: &str) -> Result<u64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::bad_request("bad_batch_id", format!("`{id}` is not a batch id")))
}

/// Retires a batch: optionally archives it, purges its rows (one committed transaction), then
/// deletes the blobs nothing else refers to. A crash between the two leaves orphan blobs, never
/// a row that refers to a missing blob. `None` if there is no such batch.
async fn retire(
    shared: &Arc<Shared>,
    id: u64,
    archive: bool,
) -> anyhow::Result<Option<(RetiredBatch, Option<PathBuf>)>> {
    let archive = if archive {
        let Some(status) = shared.store.batch_status(id).await? else {
            return Ok(None);
        };
        let writer = shared.clone();
        Some(blocking(move || archive_batch(&writer, &status)).await?)
    } else {
        None
    };
    let Some(retired) = shared.store.retire_batch(id).await? else {
        return Ok(None);
    };
    let blobs = shared.blobs.clone();
    let unreferenced = retired.unreferenced_blobs.clone();
    blocking(move || blobs.remove_all(&unreferenced)).await?;
    Ok(Some((retired, archive)))
}

/// `POST /api/v1/batches/{id}/retire`.
async fn retire_batch(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = request_body(body)?;
    let me = researcher(&shared, &headers).await?;
    let id = parse_batch_id(&id)?;
    own_batch(&shared, &me, id).await?;
    let request: RetireBatch = if body.is_empty() {
        RetireBatch::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("bad_json", format!("retire request: {e}")))?
    };
    let retired = retire(&shared, id, request.archive).await?;
    match retired {
        Some((retired, archive)) => {
            tracing::info!(
                "batch {id} retired: {} units, {} replicas, {} blobs removed",
                retired.units,
                retired.replicas,
                retired.unreferenced_blobs.len()
            );
            Ok(Json(serde_json::json!({
                "id": id,
                "units": retired.units,
                "replicas": retired.replicas,
                "blobs_removed": retired.unreferenced_blobs.len(),
                "archive": archive.map(|p| p.display().to_string()),
            }))
            .into_response())
        }
        None => Err(no_batch(id)),
    }
}

/// Writes `DIR/archive/batch-ID/status.json` and each validated unit's output, named after the
/// unit, next to it.
fn archive_batch(shared: &Shared, status: &herd_store::BatchStatus) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    let dir = shared.archive_dir.join(format!("batch-{}", status.id));
    let outputs = dir.join("outputs");
    std::fs::create_dir_all(&outputs).with_context(|| format!("create {}", outputs.display()))?;
    let json = serde_json::to_vec_pretty(status).context("encode the batch status")?;
    std::fs::write(dir.join("status.json"), json).context("write status.json")?;
    for unit in &status.units {
        if let Some(result) = &unit.result
            && let Some(bytes) = shared.blobs.get(&result.output_hash)?
        {
            // Unit names were checked to be file names when the batch was created.
            std::fs::write(outputs.join(&unit.name), bytes)
                .with_context(|| format!("archive the output of {}", unit.name))?;
        }
    }
    Ok(dir)
}

async fn credit(State(shared): State<Arc<Shared>>) -> Result<Response, ApiError> {
    let totals = shared
        .store
        .credit_totals(now_ms())
        .await
        .map_err(anyhow::Error::from)?;
    Ok(Json(totals).into_response())
}

async fn hosts(State(shared): State<Arc<Shared>>) -> Result<Response, ApiError> {
    let hosts = shared
        .store
        .hosts(now_ms())
        .await
        .map_err(anyhow::Error::from)?;
    Ok(Json(serde_json::json!({ "hosts": hosts })).into_response())
}

/// The query of `GET /api/v1/batches`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Batches with ids above this (the `next_after` of the page before).
    after: Option<u64>,
    /// At most this many (1..=1000, default 100).
    limit: Option<u32>,
}

/// The `after` of the page following `page` (of at most `limit` items), or `None` if `page` was
/// the last.
fn next_after<T>(page: &[T], limit: u64, id: impl Fn(&T) -> u64) -> Option<u64> {
    if page.len() as u64 == limit {
        page.last().map(id)
    } else {
        None
    }
}

/// The most batches one page lists.
const MAX_PAGE: u32 = 1000;

/// `GET /api/v1/batches`: the researcher's batches, oldest first, a page at a time.
async fn list_batches(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let me = researcher(&shared, &headers).await?;
    let Query(query) =
        query.map_err(|e| ApiError::bad_request("bad_query", format!("batch list: {e}")))?;
    let limit = check_range(
        "limit",
        u64::from(query.limit.unwrap_or(100)),
        1,
        MAX_PAGE.into(),
    )?;
    let batches = shared
        .store
        .list_batches(me.id, query.after.unwrap_or(0), limit as u32)
        .await
        .map_err(anyhow::Error::from)?;
    let next_after = next_after(&batches, limit, |b| b.id);
    Ok(Json(serde_json::json!({ "batches": batches, "next_after": next_after })).into_response())
}

/// `POST /api/v1/batches/{id}/cancel`.
async fn cancel_batch(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let me = researcher(&shared, &headers).await?;
    let id = parse_batch_id(&id)?;
    own_batch(&shared, &me, id).await?;
    match shared
        .store
        .cancel_batch(id)
        .await
        .map_err(anyhow::Error::from)?
    {
        Some(cancelled) => {
            tracing::info!(
                "batch {id} cancelled by {}: {cancelled} open units",
                me.name
            );
            Ok(Json(serde_json::json!({ "id": id, "cancelled_units": cancelled })).into_response())
        }
        None => Err(no_batch(id)),
    }
}

/// The body of `POST /api/v1/researchers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddResearcher {
    name: String,
}

/// `POST /api/v1/researchers` (the administrator only): adds a researcher and returns their
/// token, once; the coordinator keeps only its hash.
async fn add_researcher(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = request_body(body)?;
    let me = researcher(&shared, &headers).await?;
    if me.name != ADMIN {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only the coordinator's administrator (the token in its researcher.token) adds researchers",
        ));
    }
    let request: AddResearcher = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("bad_json", format!("new researcher: {e}")))?;
    let token = crate::accounts::secret()?;
    let added = match shared
        .store
        .add_researcher(&request.name, &token_hash(&token), now_ms())
        .await
    {
        Ok(added) => added,
        Err(StoreError::Invalid(message)) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "invalid_researcher",
                message,
            ));
        }
        Err(StoreError::Taken(message)) => {
            return Err(ApiError::new(StatusCode::CONFLICT, "name_taken", message));
        }
        Err(other) => return Err(anyhow::Error::from(other).into()),
    };
    tracing::info!("researcher {} ({}) added", added.name, added.id);
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "id": added.id, "name": added.name, "token": token })),
    )
        .into_response())
}

/// `POST /api/v1/stats/export` (the administrator only): regenerates the statistics exports now.
async fn export_stats(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let me = researcher(&shared, &headers).await?;
    if me.name != ADMIN {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only the coordinator's administrator regenerates the statistics exports",
        ));
    }
    let update_time = crate::stats::export(&shared).await?;
    Ok(Json(serde_json::json!({
        "update_time": update_time,
        "files": crate::stats::FILES.iter().map(|f| format!("/stats/{f}")).collect::<Vec<_>>(),
    }))
    .into_response())
}

/// `GET /stats/{file}`: the statistics exports, public, as BOINC projects publish them.
async fn stats_file(
    State(shared): State<Arc<Shared>>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let Some(name) = crate::stats::FILES.iter().find(|f| **f == file) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no statistics file `{}`; there are {}",
                file.escape_debug(),
                crate::stats::FILES.join(", ")
            ),
        ));
    };
    let path = shared.stats_dir.join(name);
    let bytes = blocking(move || match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(anyhow::Error::from(error).context(format!("read {}", path.display()))),
    })
    .await?;
    let Some(bytes) = bytes else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{name} has not been generated yet"),
        ));
    };
    let kind = if name.ends_with(".gz") {
        "application/gzip"
    } else {
        "application/xml"
    };
    Ok(([(header::CONTENT_TYPE, kind)], bytes).into_response())
}

async fn project_summary(shared: &Shared) -> Result<herd_store::ProjectSummary, ApiError> {
    Ok(shared
        .store
        .project_summary(
            now_ms(),
            crate::metrics::ACTIVE_MS,
            crate::metrics::WINDOW_MS,
        )
        .await
        .map_err(anyhow::Error::from)?)
}

/// `GET /api/v1/summary`: the project at a glance (public).
async fn summary(State(shared): State<Arc<Shared>>) -> Result<Response, ApiError> {
    Ok(Json(project_summary(&shared).await?).into_response())
}

/// `GET /metrics`: the same, for Prometheus (public).
async fn metrics(State(shared): State<Arc<Shared>>) -> Result<Response, ApiError> {
    let text = crate::metrics::render(&project_summary(&shared).await?);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// The query of `GET /api/v1/leaderboard/{board}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BoardQuery {
    /// `credit` (default) or `recent`.
    sort: Option<String>,
    offset: Option<u64>,
    /// 1..=1000, default 100.
    limit: Option<u64>,
}

/// `GET /api/v1/leaderboard/{volunteers|teams|hosts}?sort=credit|recent&offset=N&limit=N`
/// (public).
async fn leaderboard(
    State(shared): State<Arc<Shared>>,
    Path(board): Path<String>,
    query: Result<Query<BoardQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) =
        query.map_err(|e| ApiError::bad_request("bad_query", format!("leaderboard: {e}")))?;
    let Some(board) = crate::leaderboard::Board::parse(&board) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no leaderboard `{}`; there are volunteers, teams and hosts",
                board.escape_debug()
            ),
        ));
    };
    let sort_name = query.sort.as_deref().unwrap_or("credit");
    let Some(sort) = crate::leaderboard::SortBy::parse(sort_name) else {
        return Err(ApiError::bad_request(
            "bad_query",
            format!(
                "sort `{}` is neither credit nor recent",
                sort_name.escape_debug()
            ),
        ));
    };
    let limit = check_range("limit", query.limit.unwrap_or(100), 1, MAX_PAGE.into())?;
    let dump = shared.fresh_dump().await?;
    Ok(Json(crate::leaderboard::page(
        &dump,
        board,
        sort,
        query.offset.unwrap_or(0),
        limit,
    ))
    .into_response())
}

/// `GET /api/v1/volunteers/{name}`: a volunteer's credit, rank, team and hosts (public).
async fn volunteer_page(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let dump = shared.fresh_dump().await?;
    match crate::leaderboard::volunteer(&dump, &name) {
        Some(page) => Ok(Json(page).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "volunteer_not_found",
            format!("no volunteer `{}`", name.escape_debug()),
        )),
    }
}

/// The query of `GET /api/v1/throughput`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ThroughputQuery {
    /// How far back, 1..=168 hours (default 6).
    hours: Option<u64>,
}

/// `GET /api/v1/throughput?hours=N`: units validated and fuel credited per minute (per 10
/// minutes beyond 24 hours), for the dashboard's chart (public).
async fn throughput(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<ThroughputQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) =
        query.map_err(|e| ApiError::bad_request("bad_query", format!("throughput: {e}")))?;
    let hours = check_range("hours", query.hours.unwrap_or(6), 1, 168)?;
    let bucket_ms: u64 = if hours > 24 { 600_000 } else { 60_000 };
    // Whole intervals, the last one ending now.
    let until = now_ms() / bucket_ms * bucket_ms + bucket_ms;
    let since = until.saturating_sub(hours * 3_600_000);
    let buckets = shared
        .store
        .throughput(since, until, bucket_ms)
        .await
        .map_err(anyhow::Error::from)?;
    Ok(Json(serde_json::json!({ "bucket_ms": bucket_ms, "buckets": buckets })).into_response())
}

/// The web dashboard: one page, its script and its style, built into the binary (no external
/// resources).
async fn dashboard_page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("dashboard/index.html"),
    )
        .into_response()
}

async fn dashboard_script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("dashboard/dashboard.js"),
    )
        .into_response()
}

async fn dashboard_style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("dashboard/dashboard.css"),
    )
        .into_response()
}

/// The query of `GET /api/v1/batches/{id}/units`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnitsQuery {
    /// Units with ids above this (the `next_after` of the page before).
    after: Option<u64>,
    /// At most this many (1..=1000, default 1000).
    limit: Option<u32>,
    /// Only units in this state: `open`, `validated` or `failed`.
    state: Option<String>,
}

/// `GET /api/v1/batches/{id}/units`: a page of a batch's units, in id order.
async fn batch_units(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<UnitsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let me = researcher(&shared, &headers).await?;
    let id = parse_batch_id(&id)?;
    let Query(query) =
        query.map_err(|e| ApiError::bad_request("bad_query", format!("unit list: {e}")))?;
    let limit = check_range(
        "limit",
        u64::from(query.limit.unwrap_or(MAX_PAGE)),
        1,
        MAX_PAGE.into(),
    )?;
    let state = match query.state.as_deref() {
        None => None,
        Some(name) => Some(UnitState::parse(name).ok_or_else(|| {
            ApiError::bad_request(
                "bad_query",
                format!(
                    "state `{}` is not open, validated or failed",
                    name.escape_debug()
                ),
            )
        })?),
    };
    own_batch(&shared, &me, id).await?;
    let units = shared
        .store
        .batch_units(id, query.after.unwrap_or(0), limit as u32, state)
        .await
        .map_err(anyhow::Error::from)?;
    let next_after = next_after(&units, limit, |u| u.id);
    Ok(Json(serde_json::json!({ "units": units, "next_after": next_after })).into_response())
}

/// `POST /api/v1/blobs`: many blobs in one request, for batches of many small inputs. The body
/// is a sequence of frames, each a 4-byte big-endian length then that many bytes; the answer
/// lists their hashes in order. Nothing is stored unless every frame is whole and within the
/// blob size limit.
async fn put_blobs(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = request_body(body)?;
    let me = researcher(&shared, &headers).await?;
    // Checked whole before anything is stored.
    split_frames(&body)?;
    let store = shared.blobs.clone();
    let hashes = blocking(move || {
        let blobs = split_frames(&body).map_err(|e| anyhow::anyhow!(e.message))?;
        store.put_many(&blobs)
    })
    .await?;
    shared
        .store
        .record_uploads(me.id, hashes.clone())
        .await
        .map_err(anyhow::Error::from)?;
    let hashes: Vec<String> = hashes.iter().map(ContentHash::to_hex).collect();
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "hashes": hashes })),
    )
        .into_response())
}

/// Splits a bulk upload into its blobs, refusing a truncated frame or an oversized blob.
fn split_frames(body: &[u8]) -> Result<Vec<&[u8]>, ApiError> {
    let mut blobs = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let Some((length, after)) = rest.split_first_chunk::<4>() else {
            return Err(ApiError::bad_request(
                "bad_frame",
                format!(
                    "blob {}: the body ends inside its 4-byte length",
                    blobs.len()
                ),
            ));
        };
        let length = u32::from_be_bytes(*length) as usize;
        if length > MAX_MODULE_BYTES {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "blob {} is {length} bytes, over the limit of {MAX_MODULE_BYTES}",
                    blobs.len()
                ),
            ));
        }
        let Some((blob, after)) = after.split_at_checked(length) else {
            return Err(ApiError::bad_request(
                "bad_frame",
                format!(
                    "blob {} claims {length} bytes; the body has {} left",
                    blobs.len(),
                    after.len()
                ),
            ));
        };
        blobs.push(blob);
        rest = after;
    }
    Ok(blobs)
}

/// The OpenAPI document of this API, kept beside this file; a test checks that it names every
/// route the router serves, with the same methods, and no other.
pub(crate) const OPENAPI: &str = include_str!("openapi.json");

/// `GET /api/v1/openapi.json`.
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// `GET /api/v1/batches/{id}/results`: the batch's validated outputs as one tar archive (see
/// [`crate::archive`]), streamed output by output; `Range: bytes=N-` resumes it, and
/// `If-Range` with the ETag makes sure the resumed bytes are of the same archive.
async fn batch_results(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    use crate::archive;
    let me = researcher(&shared, &headers).await?;
    let id = parse_batch_id(&id)?;
    own_batch(&shared, &me, id).await?;
    let mut entries = Vec::new();
    let mut after = 0;
    loop {
        let page = shared
            .store
            .batch_units(id, after, MAX_PAGE, Some(UnitState::Validated))
            .await
            .map_err(anyhow::Error::from)?;
        let Some(last) = page.last() else { break };
        after = last.id;
        let full = page.len() as u32 == MAX_PAGE;
        for unit in page {
            if let Some(result) = unit.result {
                entries.push(archive::Entry {
                    name: unit.name,
                    hash: result.output_hash,
                    len: result.output_len,
                });
            }
        }
        if !full {
            break;
        }
    }
    let layout = archive::layout(&entries);
    let etag = archive::etag(&entries);
    let header_text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    // A Range for another archive (its ETag changed) gets the whole new one.
    let same_archive = header_text(header::IF_RANGE).is_none_or(|tag| tag == etag);
    let range = if same_archive {
        archive::parse_range(header_text(header::RANGE), layout.total)
    } else {
        Ok(None)
    };
    let (start, end) = match range {
        Ok(Some(range)) => range,
        Ok(None) => (0, layout.total.saturating_sub(1)),
        Err(()) => {
            return Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{}", layout.total))],
                Json(serde_json::json!({ "error": {
                    "code": "bad_range",
                    "message": format!("the archive has {} bytes", layout.total),
                }})),
            )
                .into_response());
        }
    };
    let partial = (start, end) != (0, layout.total.saturating_sub(1));
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let blobs = shared.blobs.clone();
    let total = layout.total;
    tokio::spawn(async move {
        let mut ends: Vec<u64> = layout.offsets.iter().skip(1).map(|(s, _)| *s).collect();
        ends.push(total - 1024);
        for ((entry, (entry_start, _)), entry_end) in entries.iter().zip(&layout.offsets).zip(ends)
        {
            if entry_end <= start || *entry_start > end {
                continue;
            }
            let store = blobs.clone();
            let hash = entry.hash;
            let data = match tokio::task::spawn_blocking(move || store.get(&hash)).await {
                Ok(Ok(Some(data))) => data,
                other => {
                    tracing::error!("batch {id} results: output {hash} unreadable: {other:?}");
                    let _ = sender
                        .send(Err(std::io::Error::other("an output is unreadable")))
                        .await;
                    return;
                }
            };
            let bytes = archive::entry_bytes(entry, &data);
            let from = start.saturating_sub(*entry_start) as usize;
            let to = ((end + 1).min(entry_end) - entry_start) as usize;
            if sender
                .send(Ok(Bytes::copy_from_slice(&bytes[from..to])))
                .await
                .is_err()
            {
                return;
            }
        }
        // The two zero blocks that end an archive.
        let trailer_start = total - 1024;
        if end >= trailer_start {
            let from = start.max(trailer_start);
            let zeros = vec![0u8; (end + 1 - from) as usize];
            let _ = sender.send(Ok(Bytes::from(zeros))).await;
        }
    });
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (chunk, receiver))
    });
    let mut response = axum::body::Body::from_stream(stream).into_response();
    *response.status_mut() = if partial {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let set = |response: &mut Response, name, value: String| {
        if let Ok(value) = header::HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    };
    set(
        &mut response,
        header::CONTENT_TYPE,
        "application/x-tar".into(),
    );
    set(
        &mut response,
        header::CONTENT_LENGTH,
        (end + 1 - start).to_string(),
    );
    set(&mut response, header::ACCEPT_RANGES, "bytes".into());
    set(&mut response, header::ETAG, etag);
    set(
        &mut response,
        header::CONTENT_DISPOSITION,
        format!("attachment; filename=\"batch-{id}.tar\""),
    );
    if partial {
        set(
            &mut response,
            header::CONTENT_RANGE,
            format!("bytes {start}-{end}/{total}"),
        );
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The routes this file gives the router, as (method, path), read from its source: each
    /// `.route(` call that begins a line, up to its closing parenthesis (rustfmt may spread one
    /// over several lines).
    fn served() -> BTreeSet<(String, String)> {
        let source = include_str!("http.rs");
        let lines: Vec<&str> = source.lines().map(str::trim).collect();
        let mut routes = BTreeSet::new();
        for (i, line) in lines.iter().enumerate() {
            if !line.starts_with(".route(") {
                continue;
            }
            let mut call = String::new();
            let mut depth = 0i32;
            for next in &lines[i..] {
                call.push_str(next);
                depth += next.matches('(').count() as i32 - next.matches(')').count() as i32;
                if depth <= 0 {
                    break;
                }
            }
            let Some(rest) = call.strip_prefix(".route(\"") else {
                continue;
            };
            let Some((path, handlers)) = rest.split_once('"') else {
                continue;
            };
            for method in ["get", "post", "put", "delete"] {
                if handlers.contains(&format!("{method}(")) {
                    routes.insert((method.to_string(), path.to_string()));
                }
            }
        }
        routes
    }

    #[test]
    fn the_openapi_document_describes_every_route_and_only_those() {
        let spec: serde_json::Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        assert_eq!(spec["openapi"], "3.1.0");
        let mut described = BTreeSet::new();
        for (path, item) in spec["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("path item") {
                assert!(
                    operation["responses"].is_object(),
                    "{method} {path} has no responses"
                );
                described.insert((method.clone(), path.clone()));
            }
        }
        let served = served();
        assert!(served.len() >= 20, "the route scan found {served:?}");
        assert_eq!(described, served);
        // Every reference resolves.
        for reference in OPENAPI.split("\"$ref\": \"#/").skip(1) {
            let pointer = reference.split('"').next().expect("a reference");
            assert!(
                spec.pointer(&format!("/{pointer}")).is_some(),
                "dangling $ref {pointer}"
            );
        }
    }
}
