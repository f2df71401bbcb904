//! Credit as a balance, over HTTP: an account's public totals, the caller's own statement, and
//! moving credit (transfers by the account's holder; grants and overdrafts by the project's
//! administrator). The ledger itself is `herd_store::ledger`.
//!
//! Who speaks for an account is whoever holds its API token (`Authorization: Bearer TOKEN`),
//! never its account key: the key lives on every machine the volunteer attached, so it attaches
//! machines and nothing else (see `accounts.rs`).
//!
//! Amounts are written in credits as people write them (`"2.5"`, or a JSON number), and answered
//! in fuel, the ledger's exact unit, beside `fuel_per_credit`.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use herd_store::ledger::{self, Statement};
use herd_store::{Account, StoreError};
use serde::Deserialize;

use crate::accounts::{administrator, no_account, secret};
use crate::http::{ApiError, bearer, request_body, token_hash};
use crate::{Shared, now_ms};

/// A decimal as a JSON string (`"2.5"`, exact) or number (`2.5`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Decimal {
    Text(String),
    Number(serde_json::Number),
}

impl Decimal {
    pub(crate) fn text(&self) -> String {
        match self {
            Self::Text(text) => text.clone(),
            Self::Number(number) => number.to_string(),
        }
    }

    fn credit(&self) -> Result<u64, ApiError> {
        ledger::parse_credit(&self.text()).map_err(|e| ApiError::bad_request("bad_amount", e))
    }
}

/// The account whose API token the request carries: 401 without one, 403 with one no account
/// holds.
async fn caller(shared: &Shared, headers: &HeaderMap) -> Result<Account, ApiError> {
    let presented = bearer(headers)?;
    let found = shared
        .store
        .account_by_token(&token_hash(presented))
        .await
        .map_err(anyhow::Error::from)?;
    found.ok_or_else(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the token is not an account's API token on this project (an account key attaches \
             machines only)",
        )
    })
}

fn totals_json(statement: &Statement) -> serde_json::Value {
    serde_json::json!({
        "account": statement.account,
        "fuel_per_credit": herd_lifecycle::FUEL_PER_CREDIT,
        "balance": statement.balance,
        "earned": statement.earned,
        "revoked": statement.revoked,
        "spent": statement.spent,
        "granted": statement.granted,
        "sent": statement.sent,
        "received": statement.received,
    })
}

async fn statement_of(shared: &Shared, name: &str, recent: u32) -> Result<Statement, ApiError> {
    shared
        .store
        .statement(name, recent)
        .await
        .map_err(anyhow::Error::from)?
        .ok_or_else(|| no_account(name))
}

/// `GET /api/v1/accounts/{name}` (public): the account's credit totals, in fuel.
pub(crate) async fn public_totals(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let statement = statement_of(&shared, &name, 0).await?;
    Ok(Json(totals_json(&statement)).into_response())
}

/// The query of `GET /api/v1/account`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatementQuery {
    /// The latest movements to list, 0..=500 (default 20).
    recent: Option<u32>,
}

/// `GET /api/v1/account?recent=N` (the account's token): the caller's statement: its totals,
/// its overdraft, and its latest movements, newest first.
pub(crate) async fn own_statement(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    query: Result<Query<StatementQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let recent = query.recent.unwrap_or(20);
    if recent > 500 {
        return Err(ApiError::bad_request(
            "out_of_range",
            format!("recent {recent} is outside 0..=500"),
        ));
    }
    let me = caller(&shared, &headers).await?;
    let statement = statement_of(&shared, &me.name, recent).await?;
    let mut answer = totals_json(&statement);
    answer["overdraft"] = serde_json::json!(statement.overdraft);
    answer["recent"] = serde_json::json!(statement.recent);
    Ok(Json(answer).into_response())
}

/// The body of a transfer or a grant.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Movement {
    /// Whom to send to (transfers only).
    to: Option<String>,
    /// Credits, as `"2.5"` or `2.5`.
    amount: Decimal,
    memo: Option<String>,
}

fn parse_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    what: &str,
) -> Result<T, ApiError> {
    let body = request_body(body)?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("bad_json", format!("{what}: {e}")))
}

/// A refusal of the ledger's, as the API answers it.
fn refused(error: StoreError) -> ApiError {
    match error {
        StoreError::Invalid(message) => ApiError::bad_request("bad_transfer", message),
        StoreError::NotAllowed(message) => {
            ApiError::new(StatusCode::CONFLICT, "insufficient_credit", message)
        }
        other => anyhow::Error::from(other).into(),
    }
}

/// `POST /api/v1/account/transfers` (the account's token): sends credit to another account
/// (`{"to", "amount", "memo"?}`); refused with 409 `insufficient_credit` past the balance (and
/// any overdraft the project allows the account).
pub(crate) async fn send(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let me = caller(&shared, &headers).await?;
    let request: Movement = parse_body(body, "transfer")?;
    let to = request
        .to
        .ok_or_else(|| ApiError::bad_request("bad_json", "transfer: `to` names the receiver"))?;
    let amount = request.amount.credit()?;
    let transfer = shared
        .store
        .send_credit(me.id, &to, amount, request.memo.as_deref(), now_ms())
        .await
        .map_err(refused)?;
    // Checked again under lock at commit: a charge another coordinator committed in between
    // may have spent what the transfer needed.
    if !shared
        .store
        .transfer_happened(transfer.row_id)
        .await
        .map_err(anyhow::Error::from)?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "insufficient_credit",
            "the balance was spent while the transfer was made; nothing was sent",
        ));
    }
    tracing::info!(
        "{} sent {} credit to {}",
        me.name,
        ledger::credit_text(amount as i64),
        transfer.to
    );
    let statement = statement_of(&shared, &me.name, 0).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "from": me.name, "to": transfer.to, "amount": transfer.amount,
            "balance": statement.balance, "fuel_per_credit": herd_lifecycle::FUEL_PER_CREDIT,
        })),
    )
        .into_response())
}

/// `POST /api/v1/accounts/{name}/grants` (the administrator): the project gives the account
/// credit (`{"amount", "memo"?}`), a research group's allowance, say.
pub(crate) async fn grant(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    administrator(&shared, &headers, "grants credit").await?;
    let request: Movement = parse_body(body, "grant")?;
    if request.to.is_some() {
        return Err(ApiError::bad_request(
            "bad_json",
            "grant: the account is the one in the path; `to` is for transfers",
        ));
    }
    let amount = request.amount.credit()?;
    let row = shared
        .store
        .grant_credit(&name, amount, request.memo.as_deref(), now_ms())
        .await
        .map_err(refused)?;
    tracing::info!(
        "{name} was granted {} credit",
        ledger::credit_text(row.amount)
    );
    let statement = statement_of(&shared, &name, 0).await?;
    Ok((StatusCode::CREATED, Json(totals_json(&statement))).into_response())
}

/// The body of `PUT /api/v1/accounts/{name}/overdraft`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Overdraft {
    /// Credits the account may go below zero; `null`: no limit.
    amount: Option<Decimal>,
}

/// `PUT /api/v1/accounts/{name}/overdraft` (the administrator): how far below zero the
/// account's spending and transfers may take it.
pub(crate) async fn set_overdraft(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    administrator(&shared, &headers, "sets overdrafts").await?;
    let request: Overdraft = parse_body(body, "overdraft")?;
    let overdraft = request.amount.as_ref().map(Decimal::credit).transpose()?;
    shared
        .store
        .set_overdraft(&name, overdraft)
        .await
        .map_err(|e| match e {
            StoreError::Invalid(_) => no_account(&name),
            other => anyhow::Error::from(other).into(),
        })?;
    let statement = statement_of(&shared, &name, 0).await?;
    let mut answer = totals_json(&statement);
    answer["overdraft"] = serde_json::json!(statement.overdraft);
    Ok(Json(answer).into_response())
}

/// `POST /api/v1/accounts/{name}/token` (the administrator): a new API token for the account,
/// replacing any it had (its submit permission's too); answered once. How accounts from before
/// tokens, or whose holder lost theirs, get one.
pub(crate) async fn new_token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    administrator(&shared, &headers, "hands out API tokens").await?;
    let token = secret()?;
    let account = shared
        .store
        .set_account_token(&name, &token_hash(&token))
        .await
        .map_err(anyhow::Error::from)?
        .ok_or_else(|| no_account(&name))?;
    tracing::info!(
        "account {} ({}) has a new API token",
        account.name,
        account.id
    );
    Ok(Json(serde_json::json!({ "name": account.name, "token": token })).into_response())
}
