//! The batch endpoints: creating a batch (its policy, limits and bid checked, its module
//! admitted), a researcher's list of batches, a batch's counts, units and results archive,
//! cancelling and retiring. Another researcher's batch answers 404 like a missing one.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herd_lifecycle::{Adaptive, PPM, Policy};
use herd_sandbox::{Limits, MAX_MEMORY_BYTES, MAX_OUTPUT_BYTES};
use herd_store::{NewBatch, NewUnit, Researcher, RetiredBatch, StoreError, UnitState};
use serde::Deserialize;

use super::{ApiError, MAX_PAGE, check_range, next_after, parse_hash, request_body, researcher};
use crate::{Shared, blocking, credit, now_ms};

/// The most units one batch may have.
pub(crate) const MAX_UNITS_PER_BATCH: usize = 100_000;

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
    /// Every quorum needs an agreeing replica from a host with at least this many valid
    /// results behind it (1..=100000); on for every batch of a project started with
    /// `--seasoned-after N`.
    seasoned_after: Option<u32>,
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

pub(super) async fn create_batch(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = request_body(body)?;
    let me = researcher(&shared, &headers).await?;
    let batch = parse_batch(&body, me.id, &shared.accounts.rules)?;
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

/// The batch a `POST /api/v1/batches` body describes, for researcher `researcher_id` under the
/// project's `rules`: every check that needs neither the store nor the blobs (the JSON, the
/// policy, the limits, the bid, the unit names and hashes). Pure, so it is fuzzed
/// (`fuzz/fuzz_targets/batch_request.rs`).
pub(crate) fn parse_batch(
    body: &[u8],
    researcher_id: u64,
    rules: &crate::AccountRules,
) -> Result<NewBatch, ApiError> {
    let request: CreateBatch = serde_json::from_slice(body)
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
        request.distinct_networks.unwrap_or(false) || rules.distinct_networks;
    // The stricter of the batch's and the project's.
    policy.seasoned_after = match (request.seasoned_after, rules.seasoned_after) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
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
        pause_when_broke: rules.pause_unpaid,
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
        researcher_id,
        module,
        policy,
        fuel_limit: fuel,
        memory_limit_bytes: memory,
        output_limit_bytes: output,
        priority,
        pricing,
        units,
    };
    Ok(batch)
}

pub(super) async fn batch_status(
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
pub(super) async fn retire_batch(
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

/// The query of `GET /api/v1/batches`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    /// Batches with ids above this (the `next_after` of the page before).
    after: Option<u64>,
    /// At most this many (1..=1000, default 100).
    limit: Option<u32>,
}

/// `GET /api/v1/batches`: the researcher's batches, oldest first, a page at a time.
pub(super) async fn list_batches(
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
pub(super) async fn cancel_batch(
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

/// The query of `GET /api/v1/batches/{id}/units`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UnitsQuery {
    /// Units with ids above this (the `next_after` of the page before).
    after: Option<u64>,
    /// At most this many (1..=1000, default 1000).
    limit: Option<u32>,
    /// Only units in this state: `open`, `validated` or `failed`.
    state: Option<String>,
}

/// `GET /api/v1/batches/{id}/units`: a page of a batch's units, in id order.
pub(super) async fn batch_units(
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

/// `GET /api/v1/batches/{id}/results`: the batch's validated outputs as one tar archive (see
/// [`crate::archive`]), streamed output by output; `Range: bytes=N-` resumes it, and
/// `If-Range` with the ETag makes sure the resumed bytes are of the same archive.
pub(super) async fn batch_results(
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
