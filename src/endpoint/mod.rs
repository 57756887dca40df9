//! The OAuth 2.0 token endpoint (DESIGN §6): `client_credentials` and `bootstrap_token` grants
//! at `POST /oauth2/token` (and configured extra paths), the JWKS, each key's certificate and
//! the RFC 8414 metadata, over HTTP or TLS.

mod auth;
mod config;
mod error;
mod guard;
mod metrics;
mod params;
mod publish;
mod registry;
mod revoke;
mod secret;
mod server;
mod tls;
mod token;
pub mod workload;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request};
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};

pub use config::{
    ClientConfig, ConnectionsConfig, EndpointConfig, Grant, ReuseConfig, ThrottleConfig, TlsConfig,
};
pub use metrics::{EndpointMetrics, RequestLabels};
pub use secret::{SecretKeyRef, SecretSource};

use crate::token::Issuer;
use error::{ErrorKind, OAuthError};
use publish::{Metadata, Published};

/// Everything a request needs, built once at start.
pub struct State {
    issuer: Arc<Issuer>,
    config: EndpointConfig,
    metrics: EndpointMetrics,
    clients: registry::Clients,
    reuse: token::ReuseCache,
    /// Rebuilt when the key set changes.
    published: std::sync::Mutex<Option<Arc<Published>>>,
    tls: Option<Arc<tls::CertReloader>>,
    guard: guard::Guard,
    workload: Option<workload::WorkloadIdentity>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StateError(String);

impl State {
    /// Resolves client secrets (Secret references through `client`, once) and loads the TLS
    /// certificate when one is configured. Keys may still be loading: requests then get 503.
    pub async fn new(
        issuer: Arc<Issuer>,
        config: EndpointConfig,
        client: Option<kube::Client>,
        metrics: EndpointMetrics,
    ) -> Result<State, StateError> {
        let clients =
            registry::Clients::load(&config, &issuer.bootstrap().client_id, client.as_ref())
                .await
                .map_err(StateError)?;
        let tls = match &config.tls {
            Some(files) => Some(Arc::new(
                tls::CertReloader::new(files)
                    .map_err(|why| StateError(format!("endpoint.tls: {why}")))?,
            )),
            None => None,
        };
        let guard = guard::Guard::new(&config);
        let workload = match (&config.workload_identity, client) {
            (wi, Some(client)) if wi.enabled => Some(workload::WorkloadIdentity::new(
                wi,
                &issuer.profile().issuer,
                Arc::new(workload::KubeReviewer::new(client)),
            )),
            (wi, None) if wi.enabled => {
                return Err(StateError(
                    "endpoint.workloadIdentity needs the Kubernetes API (TokenReview)".into(),
                ));
            }
            _ => None,
        };
        Ok(State {
            issuer,
            config,
            metrics,
            clients,
            reuse: token::ReuseCache::default(),
            published: std::sync::Mutex::default(),
            tls,
            guard,
            workload,
        })
    }

    /// With workload identity on, keeps the ServiceAccount mappings current from a watch of the
    /// BootstrapTokens of `namespaces` (all when empty) until `shutdown`; otherwise returns at once.
    pub async fn watch_mappings(
        &self,
        client: kube::Client,
        namespaces: &[String],
        shutdown: impl Future<Output = ()>,
    ) {
        if let Some(workload) = &self.workload {
            workload.mappings.run(client, namespaces, shutdown).await;
        }
    }

    async fn published(&self) -> Result<Arc<Published>, OAuthError> {
        let keys = self.issuer.keys().await.map_err(|error| {
            OAuthError::new(
                ErrorKind::KeysUnavailable,
                format!("the signing keys are not available yet: {error}"),
            )
        })?;
        let mut cached = self.published.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(published) = cached.as_ref().filter(|p| Arc::ptr_eq(&p.keys, &keys)) {
            return Ok(published.clone());
        }
        let published = Arc::new(Published::new(keys).map_err(|why| {
            OAuthError::new(
                ErrorKind::KeysUnavailable,
                format!("publishing the keys failed: {why}"),
            )
        })?);
        *cached = Some(published.clone());
        Ok(published)
    }
}

/// Every route of the endpoint.
pub fn router(state: Arc<State>) -> Router {
    let mut router = Router::new().route("/oauth2/token", any(token_request));
    for path in &state.config.extra_token_paths {
        router = router.route(path, any(token_request));
    }
    router
        .route("/oauth2/introspect", any(introspect_request))
        .route("/oauth2/revoke", any(revoke_request))
        .route("/oauth2/keys", get(jwks).fallback(get_only))
        .route("/oauth2/key", get(jwks).fallback(get_only))
        .route("/.well-known/jwks.json", get(jwks).fallback(get_only))
        .route("/oauth2/key/{kid}", get(certificate).fallback(get_only))
        .route(
            "/.well-known/oauth-authorization-server",
            get(metadata).fallback(get_only),
        )
        .fallback(not_found)
        .with_state(state)
}

/// Serves until `shutdown` completes, then lets requests in flight finish; connections are
/// capped and timed out as `endpoint.connections` says.
pub async fn serve(
    state: Arc<State>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    server::run(state, listener, shutdown).await
}

async fn token_request(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    request: Request,
) -> Response {
    let not_allowed = request.method() != axum::http::Method::POST;
    let mut response = token::handle(&state, request).await;
    if not_allowed {
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
    }
    response
}

async fn introspect_request(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    request: Request,
) -> Response {
    post_only(revoke::handle(&state, request, revoke::Action::Introspect).await)
}

async fn revoke_request(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    request: Request,
) -> Response {
    post_only(revoke::handle(&state, request, revoke::Action::Revoke).await)
}

/// A 405 answer says which method is allowed.
fn post_only(mut response: Response) -> Response {
    if response.status() == axum::http::StatusCode::METHOD_NOT_ALLOWED {
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
    }
    response
}

async fn jwks(axum::extract::State(state): axum::extract::State<Arc<State>>) -> Response {
    match state.published().await {
        Ok(published) => ([JSON], published.jwks.clone()).into_response(),
        Err(error) => error.into_response(),
    }
}

/// light-oauth2's key service: the key's certificate as PEM.
async fn certificate(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    Path(kid): Path<String>,
) -> Response {
    let published = match state.published().await {
        Ok(published) => published,
        Err(error) => return error.into_response(),
    };
    match published.certificate(&kid).await {
        Some(Ok(pem)) => {
            ([(header::CONTENT_TYPE, "application/text")], pem.clone()).into_response()
        }
        Some(Err(error)) => OAuthError::new(
            ErrorKind::SigningUnavailable,
            format!("the certificate cannot be signed now: {error}"),
        )
        .into_response(),
        None => OAuthError::new(
            ErrorKind::NotFound,
            "no key with that kid; /oauth2/keys lists the keys",
        )
        .into_response(),
    }
}

/// Built from configuration only: a request's `Host` header never shapes the document.
async fn metadata(axum::extract::State(state): axum::extract::State<Arc<State>>) -> Response {
    let Some(base) = &state.config.public_url else {
        return OAuthError::new(
            ErrorKind::NotFound,
            "the discovery document is served only when endpoint.publicUrl is set to the URL clients reach this endpoint at",
        )
        .into_response();
    };
    let body = serde_json::to_vec(&Metadata::new(&state.issuer.profile().issuer, base))
        .unwrap_or_default();
    ([JSON], body).into_response()
}

const JSON: (HeaderName, &str) = (header::CONTENT_TYPE, "application/json");

async fn get_only() -> Response {
    let error = OAuthError::new(
        ErrorKind::MethodNotAllowed,
        "only GET and HEAD are allowed here",
    );
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    response
}

async fn not_found() -> Response {
    OAuthError::new(ErrorKind::NotFound, "no such endpoint").into_response()
}
