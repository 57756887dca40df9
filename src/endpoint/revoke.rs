//! `POST /oauth2/introspect` (RFC 7662) and `POST /oauth2/revoke` (RFC 7009), for clients that
//! authenticate as at the token endpoint. Both read the same in-memory copy of the revoked
//! tokens the [`crate::token::Issuer`] verifies against: no API round trip per request.

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::State;
use super::error::{ErrorKind, NO_STORE_JSON, OAuthError};
use super::token::{authenticate, read_body};
use crate::revocation::{Revocation, RevocationReason};
use crate::token::VerifiedToken;

/// Which of the two endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Introspect,
    Revoke,
}

impl Action {
    /// The `grant` label of the request metric.
    fn label(self) -> &'static str {
        match self {
            Action::Introspect => "introspection",
            Action::Revoke => "revocation",
        }
    }
}

/// RFC 7662 §2.2; an inactive token is `{"active":false}` and nothing else.
#[derive(Serialize, Default)]
struct Introspection {
    active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iat: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nbf: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sid: Option<String>,
}

impl Introspection {
    fn active(verified: VerifiedToken) -> Self {
        let claims = verified.claims;
        Introspection {
            active: true,
            scope: Some(claims.scope.join(" ")),
            sub: Some(claims.client_id.clone()),
            client_id: Some(claims.client_id),
            token_type: Some("Bearer"),
            exp: Some(claims.exp),
            iat: Some(claims.iat),
            nbf: Some(claims.nbf),
            iss: Some(claims.iss),
            aud: Some(claims.aud),
            jti: Some(claims.jti),
            sid: claims.sid,
        }
    }
}

pub async fn handle(state: &State, request: Request, action: Action) -> Response {
    match respond(state, request, action).await {
        Ok((outcome, body)) => {
            state.metrics.request(action.label(), outcome);
            (NO_STORE_JSON, body).into_response()
        }
        Err(mut error) => {
            state.metrics.request(action.label(), error.kind.error());
            tracing::debug!(
                action = action.label(),
                code = error.kind.code(),
                "request refused"
            );
            error.realm = Some(state.config.realm.clone());
            error.into_response()
        }
    }
}

/// The metric outcome and the JSON body.
async fn respond(
    state: &State,
    request: Request,
    action: Action,
) -> Result<(&'static str, Vec<u8>), OAuthError> {
    let (parts, body) = request.into_parts();
    let params = read_body(state, &parts, body).await?;
    let client = authenticate(state, &parts, &params).await?;
    let token = params
        .token
        .as_deref()
        .ok_or_else(|| OAuthError::new(ErrorKind::MissingToken, "token is required"))?;
    let revocations = state.issuer.revocations();
    if !revocations.is_synced() {
        return Err(OAuthError::new(
            ErrorKind::RevocationUnavailable,
            "the revoked tokens are not loaded yet; try again shortly",
        ));
    }
    let now = jiff::Timestamp::now().as_second();
    match action {
        Action::Introspect => {
            let answer = match state.issuer.verify(token, now).await {
                Ok(verified) if verified.claims.exp > now && verified.claims.nbf <= now => {
                    Introspection::active(verified)
                }
                // Revoked, expired, not yet valid, unknown key, malformed: all the same to the
                // caller (RFC 7662 §2.2 says no more).
                _ => Introspection::default(),
            };
            let outcome = if answer.active { "active" } else { "inactive" };
            Ok((outcome, serde_json::to_vec(&answer).unwrap_or_default()))
        }
        Action::Revoke => {
            let keys = state.issuer.keys().await.map_err(|error| {
                OAuthError::new(
                    ErrorKind::KeysUnavailable,
                    format!("the signing keys are not available yet: {error}"),
                )
            })?;
            // RFC 7009 §2.2: a token that is not ours, or no longer valid, is answered 200 too.
            let Ok(verified) = keys.verify(token) else {
                return Ok(("ignored", Vec::new()));
            };
            let claims = verified.claims;
            if claims.client_id != client.id && !client.revoke_any {
                return Err(OAuthError::new(
                    ErrorKind::TokenNotOwned,
                    format!("client {} may revoke only tokens issued to it", client.id),
                ));
            }
            if claims.exp <= now {
                return Ok(("ignored", Vec::new()));
            }
            let revocation = Revocation {
                jti: claims.jti,
                kid: verified.kid,
                client_id: claims.client_id,
                sid: claims.sid,
                exp: claims.exp,
                effective_at: now,
                reason: RevocationReason::Endpoint,
            };
            revocations.revoke(&revocation).await.map_err(|error| {
                tracing::warn!(%error, "recording a revocation failed");
                OAuthError::new(
                    ErrorKind::RevocationUnavailable,
                    "the revocation could not be recorded; try again shortly",
                )
            })?;
            tracing::info!(client_id = %client.id, jti = %revocation.jti, "revoked a token");
            Ok(("revoked", Vec::new()))
        }
    }
}
