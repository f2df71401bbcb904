//! Accounts on the coordinator: the project's rules for them ([`AccountRules`]: how accounts
//! come to exist, whether a machine may compute without one), the sign-up limit per network
//! ([`SignUpLimiter`], pure: the time comes in), the keys revoked while machines are connected,
//! and the HTTP endpoints that create accounts, hand out and revoke keys, and make invitations.
//!
//! An account key is a random secret shown once, when it is made; the database keeps only its
//! BLAKE3 hash (as API tokens). It lets a machine compute for the account and nothing
//! else: the key lives on every volunteer machine, so it must not be what spends the account's
//! credit or submits its batches (BOINC's "weak" account key, for the same reason). That is the
//! account's API token, a second secret handed out at sign-up: it reads the account's ledger
//! and sends its credit (`credit.rs`), and with the submit permission it submits batches.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use herd_store::{Account, StoreError};
use serde::Deserialize;

use crate::http::{ADMIN, ApiError, request_body, researcher, token_hash};
use crate::{Shared, now_ms};

/// How accounts come to exist on a project (`herd-coordinator --sign-up`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignUp {
    /// Anyone may create an account (`herd account create NAME`), a few per network an hour.
    Open,
    /// Anyone holding an invitation code the administrator made, once per code.
    Invitation,
    /// Only the administrator creates accounts.
    Administrator,
}

impl std::str::FromStr for SignUp {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "open" => Ok(Self::Open),
            "invitation" => Ok(Self::Invitation),
            "admin" => Ok(Self::Administrator),
            other => Err(format!(
                "`{other}` is not a sign-up mode: open, invitation or admin"
            )),
        }
    }
}

/// The project's rules for accounts.
#[derive(Clone, Copy, Debug)]
pub struct AccountRules {
    pub sign_up: SignUp,
    /// Whether a machine may compute under a name alone, with no account key (the demo's
    /// projects); such a name belongs to the machine that first gave it.
    pub anonymous: bool,
    /// Sign-ups accepted per network (an IPv4 address, an IPv6 /64) per hour, when anyone may
    /// sign up.
    pub sign_ups_per_hour: u32,
    /// Every batch takes at most one replica of a unit per network (IPv4 /24, IPv6 /48, as
    /// this coordinator sees the hosts), so one person's accounts behind one router cannot
    /// form a quorum (`herd_lifecycle::network_may_take`).
    pub distinct_networks: bool,
    /// A paying batch whose owner's balance is spent waits until they can pay again, rather
    /// than being served in the free tier at priority 0.
    pub pause_unpaid: bool,
    /// Every batch's quorums need an agreeing replica from a host with at least this many valid
    /// results behind it (`herd_lifecycle::Policy::seasoned_after`).
    pub seasoned_after: Option<u32>,
}

impl Default for AccountRules {
    fn default() -> Self {
        Self {
            sign_up: SignUp::Administrator,
            anonymous: false,
            sign_ups_per_hour: 5,
            distinct_networks: false,
            pause_unpaid: false,
            seasoned_after: None,
        }
    }
}

/// The sign-up limit's window.
const HOUR_MS: u64 = 3_600_000;

/// Networks the limiter remembers at most: past it, those with nothing in the window are
/// forgotten, and if none is, the sign-up is refused (a flood of sources cannot grow memory).
const MAX_NETWORKS: usize = 100_000;

/// Sign-ups per network in a sliding hour. Pure: time comes in as `now_ms`.
#[derive(Debug)]
pub(crate) struct SignUpLimiter {
    per_hour: u32,
    recent: HashMap<IpAddr, VecDeque<u64>>,
}

/// The network a source address counts against: an IPv4 address as it is, an IPv6 address's
/// /64 (one home's prefix; its addresses are the volunteer's to choose).
fn network(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

impl SignUpLimiter {
    pub(crate) fn new(per_hour: u32) -> Self {
        Self {
            per_hour,
            recent: HashMap::new(),
        }
    }

    /// Counts a sign-up from `address` at `now_ms` if its network is under the limit; otherwise
    /// how many milliseconds until it is.
    pub(crate) fn admit(&mut self, address: IpAddr, now_ms: u64) -> Result<(), u64> {
        // A sign-up counts for the hour after it.
        let counts = |t: &u64| t.saturating_add(HOUR_MS) > now_ms;
        let key = network(address);
        if !self.recent.contains_key(&key) && self.recent.len() >= MAX_NETWORKS {
            self.recent
                .retain(|_, times| times.back().is_some_and(counts));
            if self.recent.len() >= MAX_NETWORKS {
                return Err(HOUR_MS);
            }
        }
        let times = self.recent.entry(key).or_default();
        while times.front().is_some_and(|t| !counts(t)) {
            times.pop_front();
        }
        if times.len() >= self.per_hour as usize {
            let oldest = times.front().copied().unwrap_or(now_ms);
            return Err((oldest + HOUR_MS).saturating_sub(now_ms).max(1));
        }
        times.push_back(now_ms);
        Ok(())
    }
}

/// The coordinator's account state: the rules, the sign-up limiter, and the hashes of keys
/// revoked or replaced through this coordinator since it started, so a machine already
/// connected with one is stopped at its next request (a machine connected to another
/// coordinator of the project is stopped when it next connects).
pub(crate) struct Accounts {
    pub(crate) rules: AccountRules,
    limiter: Mutex<SignUpLimiter>,
    revoked: Mutex<HashSet<String>>,
}

impl Accounts {
    pub(crate) fn new(rules: AccountRules) -> Self {
        Self {
            rules,
            limiter: Mutex::new(SignUpLimiter::new(rules.sign_ups_per_hour)),
            revoked: Mutex::new(HashSet::new()),
        }
    }

    /// Whether the key with this hash was revoked (or replaced) while the coordinator ran.
    pub(crate) fn is_revoked(&self, key_hash: &str) -> bool {
        self.revoked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(key_hash)
    }

    fn revoke(&self, key_hash: String) {
        self.revoked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key_hash);
    }

    fn admit(&self, address: IpAddr, now_ms: u64) -> Result<(), u64> {
        self.limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(address, now_ms)
    }
}

/// A new secret (an account key, an API token, an invitation code): 24 random bytes, hex.
pub(crate) fn secret() -> Result<String, ApiError> {
    Ok(hex::encode(
        herd_net::random_bytes::<24>().map_err(anyhow::Error::from)?,
    ))
}

/// The request's token is the administrator's.
pub(crate) async fn administrator(
    shared: &Shared,
    headers: &HeaderMap,
    what: &str,
) -> Result<(), ApiError> {
    let me = researcher(shared, headers).await?;
    if me.name == ADMIN {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "only the project's administrator (the token in the coordinator's researcher.token) {what}"
            ),
        ))
    }
}

/// The body of `POST /api/v1/accounts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAccount {
    name: String,
    team: Option<String>,
    invitation: Option<String>,
}

fn account_json(account: &Account) -> serde_json::Value {
    serde_json::json!({
        "id": account.id,
        "name": account.name,
        "team": account.team,
        "created_ms": account.created_ms,
    })
}

/// An account created by a sign-up: the account, and its key and API token, each shown once.
struct SignedUp {
    account: Account,
    key: String,
    token: String,
}

/// Signs up as the project's rules allow (the administrator's token may always): the sign-up
/// limit per network, invitations, then the store's checks of the name.
async fn create_account(
    shared: &Shared,
    peer: SocketAddr,
    headers: &HeaderMap,
    request: NewAccount,
) -> Result<SignedUp, ApiError> {
    // The administrator creates accounts whatever the rules; anyone else (with a researcher's
    // token or none) signs up as the rules allow.
    let by_administrator = headers.contains_key(axum::http::header::AUTHORIZATION)
        && researcher(shared, headers)
            .await
            .is_ok_and(|me| me.name == ADMIN);
    if !by_administrator {
        match shared.accounts.rules.sign_up {
            SignUp::Administrator => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "sign_up_closed",
                    "this project's accounts are created by its administrator: ask them for one",
                ));
            }
            SignUp::Invitation if request.invitation.is_none() => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "invitation_required",
                    "this project signs up by invitation: give the code you were sent \
                     (herd account create NAME --invitation CODE)",
                ));
            }
            SignUp::Invitation | SignUp::Open => {}
        }
        if let Err(wait_ms) = shared.accounts.admit(peer.ip(), now_ms()) {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_sign_ups",
                format!(
                    "{} accounts an hour may be created from one network; try again in {} minutes",
                    shared.accounts.rules.sign_ups_per_hour,
                    wait_ms.div_ceil(60_000)
                ),
            ));
        }
    }
    // The administrator's accounts need no invitation; anyone else's spends one when asked to.
    let invitation = match (by_administrator, shared.accounts.rules.sign_up) {
        (false, SignUp::Invitation) => request.invitation.as_deref().map(token_hash),
        _ => None,
    };
    let (key, token) = (secret()?, secret()?);
    let created = shared
        .store
        .create_account(
            &request.name,
            request.team.as_deref(),
            &token_hash(&key),
            Some(&token_hash(&token)),
            invitation.as_deref(),
            now_ms(),
        )
        .await;
    let account = match created {
        Ok(account) => account,
        Err(StoreError::Invalid(message)) => {
            return Err(ApiError::bad_request("invalid_account", message));
        }
        Err(StoreError::Taken(message)) => {
            return Err(ApiError::new(StatusCode::CONFLICT, "name_taken", message));
        }
        Err(StoreError::NotAllowed(message)) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "bad_invitation",
                message,
            ));
        }
        Err(other) => return Err(anyhow::Error::from(other).into()),
    };
    tracing::info!("account {} ({}) created", account.name, account.id);
    Ok(SignedUp {
        account,
        key,
        token,
    })
}

/// `POST /api/v1/accounts`: signs up, as the project's rules allow. Answers the account, its
/// key (which attaches machines) and its API token (which speaks for its credit), each once:
/// the coordinator keeps only their hashes.
pub(crate) async fn sign_up(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = request_body(body)?;
    let request: NewAccount = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("bad_json", format!("new account: {e}")))?;
    let created = create_account(&shared, peer, &headers, request).await?;
    let mut answer = account_json(&created.account);
    answer["account_key"] = created.key.into();
    answer["token"] = created.token.into();
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// The dashboard's sign-up form, as a browser posts it (`application/x-www-form-urlencoded`);
/// empty fields are absent ones.
#[derive(Debug, Deserialize)]
pub(crate) struct JoinForm {
    name: String,
    #[serde(default)]
    team: String,
    #[serde(default)]
    invitation: String,
}

/// `POST /join`: the dashboard's sign-up, a plain HTML form that works without scripts. Answers
/// a page with the account key and API token (shown this once, with what to do with each), or
/// one naming why the sign-up was refused.
pub(crate) async fn join(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<axum::Form<JoinForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let filled = |text: String| {
        let text = text.trim().to_string();
        (!text.is_empty()).then_some(text)
    };
    let request = match form {
        Ok(axum::Form(form)) => NewAccount {
            name: form.name,
            team: filled(form.team),
            invitation: filled(form.invitation),
        },
        Err(rejection) => {
            return page(
                rejection.status(),
                "Sign-up refused",
                &format!(
                    "<p class=\"error\" id=\"error\">the form could not be read: {}</p>",
                    crate::stats::escape(&rejection.body_text())
                ),
            );
        }
    };
    // Scripts and crawlers may post it; it counts against the network's sign-ups as any other.
    let headers = {
        let mut kept = HeaderMap::new();
        if let Some(value) = headers.get(axum::http::header::AUTHORIZATION) {
            kept.insert(axum::http::header::AUTHORIZATION, value.clone());
        }
        kept
    };
    match create_account(&shared, peer, &headers, request).await {
        Ok(created) => page(
            StatusCode::CREATED,
            "Welcome",
            &format!(
                "<h2 id=\"joined\">Welcome, {name}</h2>\
                 <p>Keep both of these now: the project does not show them again.</p>\
                 <h3>Your account key</h3><pre id=\"account-key\">{key}</pre>\
                 <p>Attach each machine you volunteer with it: \
                 <code>herd-worker attach --data-dir DIR</code> asks for it.</p>\
                 <h3>Your API token</h3><pre id=\"token\">{token}</pre>\
                 <p>It shows and spends your credit (<code>HERD_TOKEN=… herd account</code>, \
                 <code>herd credit send</code>); keep it off the machines you attach.</p>\
                 <p><a href=\"/#/\">Back to the project</a></p>",
                name = crate::stats::escape(&created.account.name),
                key = created.key,
                token = created.token,
            ),
        ),
        Err(error) => page(
            error.status(),
            "Sign-up refused",
            &format!(
                "<h2>Sign-up refused</h2><p class=\"error\" id=\"error\">{}</p>\
                 <p><a href=\"/#/join\">Back to the form</a></p>",
                crate::stats::escape(error.message())
            ),
        ),
    }
}

/// A page in the dashboard's style around `body`.
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Herd: {title}</title><link rel=\"stylesheet\" href=\"/dashboard.css\"></head>\
         <body><header><h1><a href=\"/#/\">Herd</a></h1></header><main>{body}</main></body></html>"
    );
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response()
}

/// `POST /api/v1/accounts/{name}/key` (the administrator): a new key for the account, replacing
/// any it had (whose machines stop); answered once. How the keys of volunteers that existed
/// before accounts are handed out.
pub(crate) async fn new_key(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    administrator(&shared, &headers, "hands out account keys").await?;
    let key = secret()?;
    let account = change_key(&shared, &name, Some(&token_hash(&key))).await?;
    tracing::info!("account {} ({}) has a new key", account.name, account.id);
    let mut answer = account_json(&account);
    answer["account_key"] = key.into();
    Ok(Json(answer).into_response())
}

/// `DELETE /api/v1/accounts/{name}/key` (the administrator): revokes the account's key; its
/// machines are refused from their next request on.
pub(crate) async fn revoke_key(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    administrator(&shared, &headers, "revokes account keys").await?;
    let account = change_key(&shared, &name, None).await?;
    tracing::info!("account {} ({}): key revoked", account.name, account.id);
    Ok(Json(account_json(&account)).into_response())
}

async fn change_key(
    shared: &Shared,
    name: &str,
    key_hash: Option<&str>,
) -> Result<Account, ApiError> {
    let changed = shared
        .store
        .set_account_key(name, key_hash)
        .await
        .map_err(anyhow::Error::from)?;
    let Some(change) = changed else {
        return Err(no_account(name));
    };
    if let Some(replaced) = change.replaced {
        shared.accounts.revoke(replaced);
    }
    Ok(change.account)
}

/// `POST /api/v1/accounts/{name}/permissions/submit` (the administrator): the account may
/// submit batches, with a new API token answered once (a token it had stops working).
pub(crate) async fn grant_submit(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    administrator(&shared, &headers, "grants permissions").await?;
    let token = secret()?;
    let granted = match shared
        .store
        .grant_submit(&name, &token_hash(&token), now_ms())
        .await
    {
        Ok(granted) => granted,
        Err(StoreError::Taken(message)) => {
            return Err(ApiError::new(StatusCode::CONFLICT, "name_taken", message));
        }
        Err(other) => return Err(anyhow::Error::from(other).into()),
    };
    let Some(researcher) = granted else {
        return Err(no_account(&name));
    };
    tracing::info!("account {name} may submit (researcher {})", researcher.id);
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "id": researcher.id, "name": researcher.name, "token": token,
        })),
    )
        .into_response())
}

/// `DELETE /api/v1/accounts/{name}/permissions/submit` (the administrator): the account may no
/// longer submit; its token answers 403 from now on, its batches stay.
pub(crate) async fn deny_submit(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    administrator(&shared, &headers, "withdraws permissions").await?;
    if name.trim().eq_ignore_ascii_case(ADMIN) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the administrator's own permission cannot be withdrawn",
        ));
    }
    let denied = shared
        .store
        .deny_submit(&name, now_ms())
        .await
        .map_err(anyhow::Error::from)?;
    let Some(withdrawn) = denied else {
        return Err(no_account(&name));
    };
    tracing::info!("account {name} may no longer submit");
    Ok(Json(serde_json::json!({ "name": name, "withdrawn": withdrawn })).into_response())
}

pub(crate) fn no_account(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "account_not_found",
        format!("no account `{name}`"),
    )
}

/// `POST /api/v1/invitations` (the administrator): an invitation code, good for one sign-up,
/// answered once.
pub(crate) async fn invite(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    administrator(&shared, &headers, "makes invitations").await?;
    let code = secret()?;
    shared
        .store
        .create_invitation(&token_hash(&code), now_ms())
        .await
        .map_err(anyhow::Error::from)?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "invitation": code })),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn a_network_gets_its_sign_ups_an_hour_and_then_waits_for_the_oldest_to_age() {
        let mut limiter = SignUpLimiter::new(3);
        for minute in 0..3 {
            assert_eq!(limiter.admit(ip("192.0.2.7"), minute * 60_000), Ok(()));
        }
        // The fourth within the hour waits until the first is an hour old.
        assert_eq!(
            limiter.admit(ip("192.0.2.7"), 10 * 60_000),
            Err(HOUR_MS - 10 * 60_000)
        );
        // Another address is another network.
        assert_eq!(limiter.admit(ip("192.0.2.8"), 10 * 60_000), Ok(()));
        // An hour after the first, one more.
        assert_eq!(limiter.admit(ip("192.0.2.7"), HOUR_MS + 1), Ok(()));
        assert!(limiter.admit(ip("192.0.2.7"), HOUR_MS + 2).is_err());
    }

    #[test]
    fn an_ipv6_home_is_its_64_prefix_and_a_mapped_ipv4_address_is_that_address() {
        let mut limiter = SignUpLimiter::new(1);
        assert_eq!(limiter.admit(ip("2001:db8:1:2::1"), 0), Ok(()));
        // Another address in the same /64: the same home.
        assert!(limiter.admit(ip("2001:db8:1:2:ffff::9"), 1).is_err());
        // The next /64 is another.
        assert_eq!(limiter.admit(ip("2001:db8:1:3::1"), 2), Ok(()));
        assert_eq!(limiter.admit(ip("198.51.100.1"), 3), Ok(()));
        assert!(limiter.admit(ip("::ffff:198.51.100.1"), 4).is_err());
    }

    #[test]
    fn a_flood_of_sources_cannot_grow_the_limiters_memory_past_its_bound() {
        let mut limiter = SignUpLimiter::new(1);
        for n in 0..MAX_NETWORKS as u32 {
            assert_eq!(limiter.admit(IpAddr::V4(n.into()), 0), Ok(()));
        }
        // Full, and every network still in its hour: a new one is refused, memory stays put.
        assert!(limiter.admit(ip("203.0.113.1"), 1).is_err());
        assert_eq!(limiter.recent.len(), MAX_NETWORKS);
        // An hour later the old ones are forgotten to make room.
        assert_eq!(limiter.admit(ip("203.0.113.1"), HOUR_MS + 1), Ok(()));
        assert_eq!(limiter.recent.len(), 1);
    }

    #[test]
    fn sign_up_modes_parse_by_their_documented_names_only() {
        assert_eq!("open".parse(), Ok(SignUp::Open));
        assert_eq!("invitation".parse(), Ok(SignUp::Invitation));
        assert_eq!("admin".parse(), Ok(SignUp::Administrator));
        assert!("Open".parse::<SignUp>().is_err());
    }
}
