//! `POST /oauth2/token`: read the request, authenticate the client, apply the grant, sign (or
//! serve a cached token again).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Serialize;

use super::State;
use super::auth::Credentials;
use super::config::{BOOTSTRAP_TOKEN, CLIENT_CREDENTIALS};
use super::error::{ErrorKind, NO_STORE_JSON, OAuthError};
use super::params::{BodyFormat, Params};
use super::registry::Client;
use crate::token::{Claims, NOT_BEFORE_SKEW_SECS, TOKEN_VERSION, bootstrap_claims, new_jti};
use crate::{policy, resource};

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

struct Issued {
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
    exp: i64,
}

impl ReuseCache {
    fn get(&self, key: &ReuseKey, now: i64, min_remaining: Duration) -> Option<Cached> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let cached = entries.get(key)?;
        (cached.exp - now >= min_remaining.as_secs() as i64).then(|| cached.clone())
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
    match result {
        Ok(issued) => {
            state.metrics.request(grant, issued.outcome);
            let body = TokenBody {
                access_token: &issued.token,
                token_type: "bearer",
                expires_in: issued.expires_in,
                scope: issued.scope.join(" "),
            };
            (NO_STORE_JSON, serde_json::to_vec(&body).unwrap_or_default()).into_response()
        }
        Err(mut error) => {
            state.metrics.request(grant, error.kind.error());
            match error.kind {
                ErrorKind::KeysUnavailable => tracing::warn!(grant, "{}", error.description),
                // Logged where the client and the peer are known (`guard`).
                ErrorKind::WrongSecret | ErrorKind::ClientNotFound | ErrorKind::TooManyAttempts => {
                }
                // The code says what was wrong; the request's content is not logged.
                _ => tracing::debug!(grant, code = error.kind.code(), "token request refused"),
            }
            error.realm = Some(state.config.endpoint.realm.clone());
            error.into_response()
        }
    }
}

/// The grant label for metrics (bounded) and the answer.
async fn respond(state: &State, request: Request) -> (&'static str, Result<Issued, OAuthError>) {
    let (parts, body) = request.into_parts();
    let body_timeout = state.config.endpoint.connections.body_timeout;
    let read = read_params(&parts.method, &parts.headers, body);
    let read = match tokio::time::timeout(body_timeout, read).await {
        Ok(read) => read,
        Err(_) => {
            state.metrics.timeout("body");
            Err(OAuthError::new(
                ErrorKind::RequestTimeout,
                "the request body did not arrive in time",
            ))
        }
    };
    let params = match read {
        Ok(params) => params.normalized(),
        Err(error) => return ("other", Err(error)),
    };
    let grant = match params.grant_type.as_deref() {
        Some(CLIENT_CREDENTIALS) => CLIENT_CREDENTIALS,
        Some(BOOTSTRAP_TOKEN) => BOOTSTRAP_TOKEN,
        Some(_) => {
            let description = format!(
                "grant_type is not supported; use {CLIENT_CREDENTIALS} or {BOOTSTRAP_TOKEN}"
            );
            return (
                "other",
                Err(OAuthError::new(
                    ErrorKind::UnsupportedGrantType,
                    description,
                )),
            );
        }
        None => {
            return (
                "other",
                Err(OAuthError::new(
                    ErrorKind::MissingGrantType,
                    "grant_type is missing",
                )),
            );
        }
    };
    let result = async {
        let authorization = parts
            .headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        let credentials = Credentials::extract(
            authorization,
            params.client_id.as_deref(),
            params.client_secret.as_deref(),
        )?;
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| peer.ip());
        let client = state
            .guard
            .authenticate(&state.clients, credentials, peer, &state.metrics)
            .await?;
        let client = client.as_ref();
        if !client.allows(grant) {
            return Err(OAuthError::new(
                ErrorKind::GrantNotAllowed,
                format!("client {} may not use grant_type {grant}", client.id),
            ));
        }
        if grant == CLIENT_CREDENTIALS {
            client_credentials(state, client, &params).await
        } else {
            bootstrap_token(state, client, &params).await
        }
    }
    .await;
    (grant, result)
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
    if declared.is_some_and(|length| length > MAX_BODY as u64) {
        return Err(too_large());
    }
    // Counted as it arrives, so a chunked body cannot grow past the limit either.
    let mut bytes = Vec::with_capacity(declared.unwrap_or(512).min(MAX_BODY as u64) as usize);
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
) -> Result<Issued, OAuthError> {
    let config = &state.config;
    let scope = choose_scope(params.scope.as_deref(), &client.scopes, &client.id)?;
    let audience = match params.audience.as_deref() {
        None => config.audience.as_str(),
        Some(aud) if aud == config.audience || client.audiences.iter().any(|a| a == aud) => aud,
        Some(aud) => {
            return Err(OAuthError::new(
                ErrorKind::AudienceNotAllowed,
                format!("client {} may not ask for audience {aud:?}", client.id),
            ));
        }
    };
    let now = jiff::Timestamp::now().as_second();
    let reuse = config.endpoint.reuse.enabled;
    let key = reuse.then(|| (client.id.clone(), audience.to_string(), scope.clone()));
    if let Some(key) = &key
        && let Some(cached) = state.reuse.get(
            key,
            now,
            config.endpoint.reuse_min_remaining(client.lifetime),
        )
    {
        return Ok(Issued {
            token: cached.token,
            expires_in: cached.exp - now,
            scope,
            outcome: "reused",
        });
    }
    let lifetime = client.lifetime.as_secs() as i64;
    let claims = Claims {
        iss: config.issuer.clone(),
        aud: audience.to_string(),
        exp: now + lifetime,
        jti: new_jti(),
        iat: now,
        nbf: now - NOT_BEFORE_SKEW_SECS,
        version_claim: config.version_claim,
        version: TOKEN_VERSION.into(),
        client_id: client.id.clone(),
        scope,
        sid: None,
    };
    let token: std::sync::Arc<str> = sign(state, &claims).await?.into();
    tracing::debug!(client_id = %client.id, jti = %claims.jti, "issued access token");
    if let Some(key) = key {
        state.reuse.put(
            key,
            Cached {
                token: token.clone(),
                exp: claims.exp,
            },
            now,
        );
    }
    Ok(Issued {
        token,
        expires_in: lifetime,
        scope: claims.scope,
        outcome: "issued",
    })
}

async fn bootstrap_token(
    state: &State,
    client: &Client,
    params: &Params,
) -> Result<Issued, OAuthError> {
    let config = &state.config;
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
    // The endpoint has no namespace: it is matched as "", so rules limited to namespaces do not
    // apply here, and rules without namespaces (or with `*`) do.
    if !policy::allows(&config.policy, "", sid) {
        return Err(OAuthError::new(
            ErrorKind::ServiceIdNotAllowed,
            format!("the operator's policy does not allow service id {sid:?}"),
        ));
    }
    let scope = choose_scope(params.scope.as_deref(), &config.bootstrap.scope, &client.id)?;
    let now = jiff::Timestamp::now().as_second();
    let mut claims = bootstrap_claims(config, sid, config.bootstrap.lifetime, now);
    claims.scope = scope;
    let token = sign(state, &claims).await?;
    tracing::info!(client_id = %client.id, sid, jti = %claims.jti, "issued bootstrap token");
    Ok(Issued {
        token: token.into(),
        expires_in: claims.exp - now,
        scope: claims.scope,
        outcome: "issued",
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

async fn sign(state: &State, claims: &Claims) -> Result<String, OAuthError> {
    let keys = state.keys.get().await.map_err(|error| {
        OAuthError::new(
            ErrorKind::KeysUnavailable,
            format!("the signing key is not available yet: {error}"),
        )
    })?;
    let started = Instant::now();
    // Inline rather than spawn_blocking: a fraction of a millisecond of CPU, and the runtime
    // has one worker per core, so a hop to another thread would only add latency.
    let token = keys.active().sign(claims);
    state
        .metrics
        .signing_duration
        .observe(started.elapsed().as_secs_f64());
    Ok(token)
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
