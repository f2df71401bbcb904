//! The HTTP API, JSON under `/api/v1`. Researcher endpoints need `Authorization: Bearer TOKEN`
//! (401 without it, 403 with a token no researcher holds); each researcher sees only their own
//! batches and their blobs, and another researcher's batch answers 404 like a missing one.
//! The dashboard endpoints are public.
//!
//! This file is the router, the API's errors and authentication, and the blob and researcher
//! endpoints; the batch endpoints are in `http/batches.rs`, the public ones (dashboard,
//! statistics, metrics) in `http/public.rs`, the account endpoints in `accounts.rs` and the
//! credit endpoints in `credit.rs`.
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
//! | POST | `/join` | the dashboard's sign-up form (`name`, `team`, `invitation`, form-encoded): a page with the account key and API token, once, or why it was refused |
//! | GET | `/api/v1/openapi.json` | the OpenAPI 3.1 document describing all of this (public) |
//!
//! Errors are `{"error": {"code": "...", "message": "..."}}` with a stable code.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use herd_protocol::ContentHash;
use herd_sandbox::MAX_MODULE_BYTES;
use herd_store::{Researcher, StoreError};
use serde::Deserialize;
use tokio::sync::watch;

mod batches;
mod public;

use crate::accounts::{deny_submit, grant_submit, invite, join, new_key, revoke_key, sign_up};
use crate::{Shared, blocking, credit, now_ms};
pub(crate) use batches::parse_batch;
use batches::{
    batch_results, batch_status, batch_units, cancel_batch, create_batch, list_batches,
    retire_batch,
};
use public::{
    credit_totals, dashboard_page, dashboard_script, dashboard_style, export_stats, hosts,
    leaderboard, metrics, openapi, stats_file, summary, throughput, volunteer_page,
};

/// The largest request body: a 16 MiB blob, or a batch description of 100,000 units.
const MAX_BODY_BYTES: usize = 32 << 20;

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
        .route("/join", post(join))
        .route("/dashboard.js", get(dashboard_script))
        .route("/dashboard.css", get(dashboard_style))
        .route("/api/v1/summary", get(summary))
        .route("/api/v1/throughput", get(throughput))
        .route("/api/v1/leaderboard/{board}", get(leaderboard))
        .route("/api/v1/volunteers/{name}", get(volunteer_page))
        .route("/metrics", get(metrics))
        .route("/api/v1/credit", get(credit_totals))
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

    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    pub(crate) fn message(&self) -> &str {
        &self.message
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> Self {
        // A full disk is the administrator's to fix, and says so; nothing was kept.
        let full = error.chain().any(|cause| {
            cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::StorageFull)
                || cause
                    .downcast_ref::<StoreError>()
                    .is_some_and(StoreError::is_disk_full)
        });
        if full {
            tracing::error!("the disk is full: {error:#}");
            return Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "disk_full",
                "the coordinator's disk is full: nothing of this request was kept; try again once \
                 the project's administrator has freed space",
            );
        }
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

/// The token of the request's `Authorization: Bearer TOKEN` header: 401 without the header
/// (an empty token, which no one holds, for a header of another form).
pub(crate) fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing Authorization: Bearer TOKEN header",
        ));
    };
    Ok(value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .trim())
}

/// The researcher whose token the request carries: 401 without one, 403 with one no
/// researcher holds. The token is looked up by its hash, so comparing never touches it.
pub(crate) async fn researcher(
    shared: &Shared,
    headers: &HeaderMap,
) -> Result<Researcher, ApiError> {
    let presented = bearer(headers)?;
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

/// Splits a bulk upload into its blobs, refusing an empty body, a truncated frame or an oversized
/// blob.
pub(crate) fn split_frames(body: &[u8]) -> Result<Vec<&[u8]>, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "empty",
            "a bulk upload holds at least one blob; this body is empty",
        ));
    }
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

/// `value`, or `out_of_range` naming `name` and the range.
pub(crate) fn check_range(name: &str, value: u64, min: u64, max: u64) -> Result<u64, ApiError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ApiError::bad_request(
            "out_of_range",
            format!("{name} {value} is outside {min}..={max}"),
        ))
    }
}

/// The `after` of the page following `page` (of at most `limit` items), or `None` if `page` was
/// the last.
pub(crate) fn next_after<T>(page: &[T], limit: u64, id: impl Fn(&T) -> u64) -> Option<u64> {
    if page.len() as u64 == limit {
        page.last().map(id)
    } else {
        None
    }
}

/// The most batches one page lists.
pub(crate) const MAX_PAGE: u32 = 1000;

#[cfg(test)]
mod tests {
    use super::public::OPENAPI;
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
