//! `POST /oauth2/token`: read the request, authenticate the client, apply the grant, sign (or
//! serve a cached token again).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Serialize;

use super::State;
use super::auth::Credentials;
use super::config::Grant;
use super::error::{ErrorKind, NO_STORE_JSON, OAuthError};
use super::params::{BodyFormat, Params};
use super::registry::Client;
use super::workload;
use crate::resource;
use crate::revocation::IssuedGrant;
use crate::token::{AccessRequest, BootstrapRequest, IssueError, Issued};

/// Token requests are a few hundred bytes; anything near this is not one.
const MAX_BODY: usize = 64 * 1024;
/// Bound on cached tokens; distinct (client, scope, audience) triples are few in practice.
const MAX_CACHED: usize = 10_000;

#[derive(Serialize)]
struct TokenBody<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_in: i64,
    scope: String,
}

/// What the client gets back.
struct Answer {
    token: std::sync::Arc<str>,
    expires_in: i64,
    scope: Vec<String>,
    outcome: &'static str,
}

/// Client id, audience, scope (in the configured order).
type ReuseKey = (String, String, Vec<String>);

/// Tokens served again while enough of their lifetime remains (seed 003).
#[derive(Default)]
pub struct ReuseCache {
    entries: Mutex<HashMap<ReuseKey, Cached>>,
}

#[derive(Clone)]
struct Cached {
    token: std::sync::Arc<str>,
    jti: String,
    exp: i64,
}

impl ReuseCache {
    fn get(&self, key: &ReuseKey, now: i64, min_remaining: Duration) -> Option<Cached> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let cached = entries.get(key)?;
        let min_remaining = i64::try_from(min_remaining.as_secs()).unwrap_or(i64::MAX);
        (cached.exp.saturating_sub(now) >= min_remaining).then(|| cached.clone())
    }

    fn put(&self, key: ReuseKey, cached: Cached, now: i64) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_CACHED {
            entries.retain(|_, c| c.exp > now);
            if entries.len() >= MAX_CACHED {
                return;
            }
        }
        entries.insert(key, cached);
    }
}

pub async fn handle(state: &State, request: Request) -> Response {
    let (grant, result) = respond(state, request).await;
    let grant = grant.map_or("other", Grant::name);
    match result {
        Ok(answer) => {
            state.metrics.request(grant, answer.outcome);
            let body = TokenBody {
                access_token: &answer.token,
                token_type: "bearer",
                expires_in: answer.expires_in,
                scope: answer.scope.join(" "),
            };
            (NO_STORE_JSON, serde_json::to_vec(&body).unwrap_or_default()).into_response()
        }
        Err(mut error) => {
            state.metrics.request(grant, error.kind.error());
            match error.kind {
                ErrorKind::KeysUnavailable | ErrorKind::SigningUnavailable => {
                    tracing::warn!(grant, "{}", error.description)
                }
                // Logged where the client and the peer are known (`guard`).
                ErrorKind::WrongSecret | ErrorKind::ClientNotFound | ErrorKind::TooManyAttempts => {
                }
                ErrorKind::InvalidAssertion | ErrorKind::ServiceAccountNotMapped => {
                    tracing::info!(grant, code = error.kind.code(), "{}", error.description)
                }
                // The code says what was wrong; the request's content is not logged.
                _ => tracing::debug!(grant, code = error.kind.code(), "token request refused"),
            }
            error.realm = Some(state.config.realm.clone());
            error.into_response()
        }
    }
}

/// The grant (for the metric label; `None` before one is known) and the answer.
async fn respond(state: &State, request: Request) -> (Option<Grant>, Result<Answer, OAuthError>) {
    let (parts, body) = request.into_parts();
    let params = match read_body(state, &parts, body).await {
        Ok(params) => params,
        Err(error) => return (None, Err(error)),
    };
    let grant = match params.grant_type.as_deref() {
        Some(name) => match Grant::from_name(name) {
            Some(grant) => grant,
            None => {
                let supported: Vec<&str> = Grant::ALL.map(Grant::name).to_vec();
                // The value the client sent is not echoed.
                let description = format!(
                    "grant_type is not supported; use {}",
                    supported.join(" or ")
                );
                return (
                    None,
                    Err(OAuthError::new(
                        ErrorKind::UnsupportedGrantType,
                        description,
                    )),
                );
            }
        },
        None => {
            return (
                None,
                Err(OAuthError::new(
                    ErrorKind::MissingGrantType,
                    "grant_type is missing",
                )),
            );
        }
    };
    let result = async {
        if let Some(assertion) = workload::assertion_of(
            &params,
            grant == Grant::ClientCredentials,
            parts.headers.contains_key(header::AUTHORIZATION),
            &state.issuer.bootstrap().client_id,
        )? {
            return workload_identity(state, assertion, &params, peer(&parts)).await;
        }
        let client = authenticate(state, &parts, &params).await?;
        let client = client.as_ref();
        if !client.allows(grant) {
            return Err(OAuthError::new(
                ErrorKind::GrantNotAllowed,
                format!(
                    "client {} may not use grant_type {}",
                    client.id,
                    grant.name()
                ),
            ));
        }
        match grant {
            Grant::ClientCredentials => client_credentials(state, client, &params).await,
            Grant::BootstrapToken => bootstrap_token(state, client, &params).await,
        }
    }
    .await;
    (Some(grant), result)
}

/// The client the request authenticates as (RFC 6749 §2.3.1), throttled by the guard.
pub(super) async fn authenticate(
    state: &State,
    parts: &Parts,
    params: &Params,
) -> Result<Arc<Client>, OAuthError> {
    let authorization = parts
        .headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    let credentials = Credentials::extract(
        authorization,
        params.client_id.as_deref(),
        params.client_secret.as_deref(),
    )?;
    state
        .guard
        .authenticate(&state.clients, credentials, peer(parts), &state.metrics)
        .await
}

/// The address the request came from (none when the router runs without a socket).
fn peer(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip())
}

/// The body's parameters, within the body timeout and [`MAX_BODY`].
pub(super) async fn read_body(
    state: &State,
    parts: &Parts,
    body: Body,
) -> Result<Params, OAuthError> {
    let read = read_params(&parts.method, &parts.headers, body);
    match tokio::time::timeout(state.config.connections.body_timeout, read).await {
        Ok(read) => read.map(Params::normalized),
        Err(_) => {
            state.metrics.timeout("body");
            Err(OAuthError::new(
                ErrorKind::RequestTimeout,
                "the request body did not arrive in time",
            ))
        }
    }
}

async fn read_params(
    method: &Method,
    headers: &HeaderMap,
    body: Body,
) -> Result<Params, OAuthError> {
    if method != Method::POST {
        return Err(OAuthError::new(
            ErrorKind::MethodNotAllowed,
            "only POST is allowed here",
        ));
    }
    let format = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(BodyFormat::from_content_type)
        .ok_or_else(|| {
            OAuthError::new(
                ErrorKind::UnsupportedMediaType,
                "Content-Type must be application/x-www-form-urlencoded or application/json",
            )
        })?;
    let too_large = || {
        OAuthError::new(
            ErrorKind::BodyTooLarge,
            format!("the body exceeds {MAX_BODY} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    let declared = match declared.map(usize::try_from) {
        Some(Ok(length)) if length <= MAX_BODY => Some(length),
        Some(_) => return Err(too_large()),
        None => None,
    };
    // Counted as it arrives, so a chunked body cannot grow past the limit either.
    let mut bytes = Vec::with_capacity(declared.unwrap_or(512));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| {
            OAuthError::new(ErrorKind::UnparsableBody, "the body could not be read")
        })?;
        if bytes.len() + chunk.len() > MAX_BODY {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    Params::parse(format, &bytes)
}

async fn client_credentials(
    state: &State,
    client: &Client,
    params: &Params,
) -> Result<Answer, OAuthError> {
    let default_audience = state.issuer.profile().audience.as_str();
    let scope = choose_scope(params.scope.as_deref(), &client.scopes, &client.id)?;
    let audience = match params.audience.as_deref() {
        None => default_audience,
        Some(aud) if aud == default_audience || client.audiences.iter().any(|a| a == aud) => aud,
        Some(_) => {
            return Err(OAuthError::new(
                ErrorKind::AudienceNotAllowed,
                format!("client {} may not ask for that audience", client.id),
            ));
        }
    };
    let now = jiff::Timestamp::now().as_second();
    let reuse = state.config.reuse.enabled;
    let key = reuse.then(|| (client.id.clone(), audience.to_string(), scope.clone()));
    if let Some(key) = &key
        && let Some(cached) =
            state
                .reuse
                .get(key, now, state.config.reuse_min_remaining(client.lifetime))
        // A revoked token is never handed out again: a new one is signed instead.
        && !state.issuer.revocations().is_revoked(&cached.jti, now)
    {
        return Ok(Answer {
            token: cached.token,
            expires_in: cached.exp.saturating_sub(now),
            scope,
            outcome: "reused",
        });
    }
    let issued = issue(
        state,
        state.issuer.issue_access(
            AccessRequest {
                client_id: &client.id,
                audience,
                scope,
                lifetime: client.lifetime,
            },
            now,
        ),
    )
    .await?;
    tracing::debug!(client_id = %client.id, jti = %issued.claims.jti, "issued access token");
    let token: std::sync::Arc<str> = issued.token.into();
    if let Some(key) = key {
        state.reuse.put(
            key,
            Cached {
                token: token.clone(),
                jti: issued.claims.jti.clone(),
                exp: issued.claims.exp,
            },
            now,
        );
    }
    Ok(Answer {
        token,
        expires_in: issued.claims.exp.saturating_sub(now),
        scope: issued.claims.scope,
        outcome: "issued",
    })
}

async fn bootstrap_token(
    state: &State,
    client: &Client,
    params: &Params,
) -> Result<Answer, OAuthError> {
    let sid = params.sid.as_deref().ok_or_else(|| {
        OAuthError::new(
            ErrorKind::InvalidServiceId,
            "sid (the service id) is required",
        )
    })?;
    if !resource::valid_service_id(sid) {
        return Err(OAuthError::new(
            ErrorKind::InvalidServiceId,
            "sid must be 1 to 253 printable ASCII characters without spaces, as spec.serviceId",
        ));
    }
    let bootstrap = state.issuer.bootstrap();
    let scope = choose_scope(params.scope.as_deref(), &bootstrap.scope, &client.id)?;
    let now = jiff::Timestamp::now().as_second();
    // The endpoint has no namespace: it is matched as "", so rules limited to namespaces do not
    // apply here, and rules without namespaces (or with `*`) do.
    let issued = issue(
        state,
        state.issuer.issue_bootstrap(
            BootstrapRequest {
                namespace: "",
                sid,
                lifetime: bootstrap.lifetime,
                scope: Some(scope),
                reason: Grant::BootstrapToken.name(),
            },
            now,
        ),
    )
    .await?;
    // Recorded before it leaves, so that every token of the grant can be listed, revoked and
    // counted for its key's rotation; unrecorded, it is dropped.
    let grant = IssuedGrant {
        jti: issued.claims.jti.clone(),
        kid: issued.kid.clone(),
        client_id: issued.claims.client_id.clone(),
        sid: sid.to_string(),
        issued_ms: jiff::Timestamp::now().as_millisecond(),
        exp: issued.claims.exp,
    };
    state
        .issuer
        .revocations()
        .record_issued(&grant, now)
        .await
        .map_err(|error| {
            tracing::warn!(%error, "recording a bootstrap_token grant failed; no token handed out");
            OAuthError::new(
                ErrorKind::RecordUnavailable,
                "the token could not be recorded; try again shortly",
            )
        })?;
    tracing::info!(client_id = %client.id, sid, jti = %issued.claims.jti, "issued bootstrap token");
    Ok(Answer {
        token: issued.token.into(),
        expires_in: issued.claims.exp.saturating_sub(now),
        scope: issued.claims.scope,
        outcome: "issued",
    })
}

/// `client_credentials` authenticated by a ServiceAccount's token: a short-lived token with
/// exactly the bootstrap claims of the BootstrapToken the ServiceAccount is mapped to.
async fn workload_identity(
    state: &State,
    assertion: &str,
    params: &Params,
    peer: Option<IpAddr>,
) -> Result<Answer, OAuthError> {
    let Some(workload) = &state.workload else {
        return Err(OAuthError::new(
            ErrorKind::InvalidAssertion,
            "client assertions are not accepted here (endpoint.workloadIdentity is off)",
        ));
    };
    let now = jiff::Timestamp::now().as_second();
    let account = state
        .guard
        .authenticate_assertion(
            peer,
            &state.metrics,
            workload.authenticate(assertion, now, &state.metrics),
        )
        .await?;
    let bt = workload.mapped(&account, params.sid.as_deref(), &state.issuer)?;
    let bootstrap = state.issuer.bootstrap();
    if params
        .audience
        .as_deref()
        .is_some_and(|aud| aud != state.issuer.profile().audience)
    {
        return Err(OAuthError::new(
            ErrorKind::AudienceNotAllowed,
            "a workload identity gets the configured audience only",
        ));
    }
    let scope = choose_scope(
        params.scope.as_deref(),
        &bootstrap.scope,
        &bootstrap.client_id,
    )?;
    let sid = bt.spec.service_id.as_str();
    let issued = issue(
        state,
        state.issuer.issue_bootstrap(
            BootstrapRequest {
                namespace: &account.namespace,
                sid,
                lifetime: state.config.access_token_lifetime,
                scope: Some(scope),
                reason: workload::ISSUED_REASON,
            },
            now,
        ),
    )
    .await?;
    tracing::info!(service_account = %account, sid, jti = %issued.claims.jti, "issued token to a workload identity");
    Ok(Answer {
        token: issued.token.into(),
        expires_in: issued.claims.exp.saturating_sub(now),
        scope: issued.claims.scope,
        outcome: "issued",
    })
}

/// Runs one issuance, timing it, and turns its failure into the answer the client gets.
async fn issue(
    state: &State,
    issuance: impl std::future::Future<Output = Result<Issued, IssueError>>,
) -> Result<Issued, OAuthError> {
    let started = Instant::now();
    let result = issuance.await;
    state
        .metrics
        .signing_duration
        .observe(started.elapsed().as_secs_f64());
    result.map_err(|error| match error {
        IssueError::KeyUnavailable(why) => OAuthError::new(
            ErrorKind::KeysUnavailable,
            format!("the signing key is not available yet: {why}"),
        ),
        IssueError::Signing(why) => OAuthError::new(
            ErrorKind::SigningUnavailable,
            format!("signing is unavailable; try again shortly: {why}"),
        ),
        IssueError::Forbidden { .. } => OAuthError::new(
            ErrorKind::ServiceIdNotAllowed,
            "the operator's policy does not allow that service id",
        ),
    })
}

/// The requested scope (space separated) if every word is allowed, in the configured order;
/// all allowed scopes when none is requested.
fn choose_scope(
    requested: Option<&str>,
    allowed: &[String],
    client_id: &str,
) -> Result<Vec<String>, OAuthError> {
    let Some(requested) = requested else {
        return Ok(allowed.to_vec());
    };
    let words: Vec<&str> = requested.split_whitespace().collect();
    if words.iter().any(|w| !allowed.iter().any(|a| a == w)) {
        return Err(OAuthError::new(
            ErrorKind::ScopeMismatch,
            format!("the scope asks for more than client {client_id} is granted"),
        ));
    }
    if words.is_empty() {
        return Ok(allowed.to_vec());
    }
    Ok(allowed
        .iter()
        .filter(|a| words.contains(&a.as_str()))
        .cloned()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn scopes_are_subsets_in_configured_order() {
        let allowed = strings(&["petstore.r", "petstore.w", "admin"]);
        assert_eq!(choose_scope(None, &allowed, "c").unwrap(), allowed);
        assert_eq!(choose_scope(Some("  "), &allowed, "c").unwrap(), allowed);
        assert_eq!(
            choose_scope(Some("admin petstore.r admin"), &allowed, "c").unwrap(),
            strings(&["petstore.r", "admin"])
        );
        let err = choose_scope(Some("petstore.r root"), &allowed, "c").unwrap_err();
        assert_eq!(err.kind, ErrorKind::ScopeMismatch);
        assert!(!err.description.contains("root"), "{}", err.description);
    }

    #[test]
    fn reuse_needs_enough_remaining() {
        let cache = ReuseCache::default();
        let key = ("c".to_string(), "aud".to_string(), strings(&["a"]));
        cache.put(
            key.clone(),
            Cached {
                token: "t".into(),
                jti: "j".into(),
                exp: 1_000,
            },
            400,
        );
        assert!(cache.get(&key, 400, Duration::from_secs(600)).is_some());
        assert!(cache.get(&key, 401, Duration::from_secs(600)).is_none());
        let other = ("c".to_string(), "aud".to_string(), strings(&["b"]));
        assert!(cache.get(&other, 400, Duration::ZERO).is_none());
    }
}
