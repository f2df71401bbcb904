//! The public endpoints: the dashboard's page and data (summary, throughput, leaderboards, a
//! volunteer's page), credit and host records, Prometheus metrics, the BOINC-format statistics
//! exports (regenerated on the administrator's request) and the OpenAPI document.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ADMIN, ApiError, MAX_PAGE, check_range, researcher};
use crate::{Shared, blocking, now_ms};

pub(super) async fn credit_totals(State(shared): State<Arc<Shared>>) -> Result<Response, ApiError> {
    let totals = shared
        .store
        .credit_totals(now_ms())
        .await
        .map_err(anyhow::Error::from)?;
    Ok(Json(totals).into_response())
}

pub(super) async fn hosts(State(shared): State<Arc<Shared>>) -> Result<Response, ApiError> {
    let hosts = shared
        .store
        .hosts(now_ms())
        .await
        .map_err(anyhow::Error::from)?;
    Ok(Json(serde_json::json!({ "hosts": hosts })).into_response())
}

/// `POST /api/v1/stats/export` (the administrator only): regenerates the statistics exports now.
pub(super) async fn export_stats(
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
pub(super) async fn stats_file(
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
pub(super) async fn summary(State(shared): State<Arc<Shared>>) -> Result<Response, ApiError> {
    Ok(Json(project_summary(&shared).await?).into_response())
}

/// `GET /metrics`: the same, for Prometheus (public).
pub(super) async fn metrics(State(shared): State<Arc<Shared>>) -> Result<Response, ApiError> {
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
pub(super) struct BoardQuery {
    /// `credit` (default) or `recent`.
    sort: Option<String>,
    offset: Option<u64>,
    /// 1..=1000, default 100.
    limit: Option<u64>,
}

/// `GET /api/v1/leaderboard/{volunteers|teams|hosts}?sort=credit|recent&offset=N&limit=N`
/// (public).
pub(super) async fn leaderboard(
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
pub(super) async fn volunteer_page(
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
pub(super) struct ThroughputQuery {
    /// How far back, 1..=168 hours (default 6).
    hours: Option<u64>,
}

/// `GET /api/v1/throughput?hours=N`: units validated and fuel credited per minute (per 10
/// minutes beyond 24 hours), for the dashboard's chart (public).
pub(super) async fn throughput(
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
pub(super) async fn dashboard_page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("../dashboard/index.html"),
    )
        .into_response()
}

pub(super) async fn dashboard_script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../dashboard/dashboard.js"),
    )
        .into_response()
}

pub(super) async fn dashboard_style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../dashboard/dashboard.css"),
    )
        .into_response()
}

/// The OpenAPI document of this API, kept beside this file; a test checks that it names every
/// route the router serves, with the same methods, and no other.
pub(crate) const OPENAPI: &str = include_str!("../openapi.json");

/// `GET /api/v1/openapi.json`.
pub(super) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}
