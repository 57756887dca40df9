//! The OAuth 2.0 token endpoint (DESIGN §6): `client_credentials` and `bootstrap_token` grants
//! at `POST /oauth2/token` (and configured extra paths), the JWKS, each key's certificate and
//! the RFC 8414 metadata, over HTTP or TLS.

mod auth;
mod config;
mod error;
mod metrics;
mod params;
mod publish;
mod registry;
mod secret;
mod tls;
mod token;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};

pub use config::{ClientConfig, EndpointConfig, Grant, ReuseConfig, TlsConfig};
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
    published: tokio::sync::OnceCell<Published>,
    tls: Option<Arc<tls::CertReloader>>,
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
        Ok(State {
            issuer,
            config,
            metrics,
            clients,
            reuse: token::ReuseCache::default(),
            published: tokio::sync::OnceCell::new(),
            tls,
        })
    }

    async fn published(&self) -> Result<&Published, OAuthError> {
        let keys = self.issuer.keys().await.map_err(|error| {
            OAuthError::new(
                ErrorKind::KeysUnavailable,
                format!("the signing keys are not available yet: {error}"),
            )
        })?;
        self.published
            .get_or_try_init(|| async { Published::new(keys) })
            .await
            .map_err(|why| {
                OAuthError::new(
                    ErrorKind::KeysUnavailable,
                    format!("publishing the keys failed: {why}"),
                )
            })
    }
}

/// Every route of the endpoint.
pub fn router(state: Arc<State>) -> Router {
    let mut router = Router::new().route("/oauth2/token", any(token_request));
    for path in &state.config.extra_token_paths {
        router = router.route(path, any(token_request));
    }
    router
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

/// Serves until `shutdown` completes, then lets requests in flight finish.
pub async fn serve(
    state: Arc<State>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state.clone());
    match state.tls.clone() {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(tls) => {
            let listener = tls.listener(listener)?;
            let watching = tokio::spawn(tls.watch());
            let result = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await;
            watching.abort();
            result
        }
    }
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
            format!("the certificate of key {kid:?} cannot be signed now: {error}"),
        )
        .into_response(),
        None => {
            OAuthError::new(ErrorKind::NotFound, format!("no key with kid {kid:?}")).into_response()
        }
    }
}

async fn metadata(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    headers: HeaderMap,
) -> Response {
    let endpoint = &state.config;
    let base = match &endpoint.public_url {
        Some(url) => url.clone(),
        None => {
            let scheme = if state.tls.is_some() { "https" } else { "http" };
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .filter(|h| !h.is_empty() && !h.contains(['/', ' ', '@']))
                .map(str::to_string)
                .unwrap_or_else(|| format!("localhost:{}", endpoint.port));
            format!("{scheme}://{host}")
        }
    };
    let body = serde_json::to_vec(&Metadata::new(&state.issuer.profile().issuer, &base))
        .unwrap_or_default();
    ([JSON], body).into_response()
}

const JSON: (HeaderName, &str) = (header::CONTENT_TYPE, "application/json");

async fn get_only(request: Request) -> Response {
    let error = OAuthError::new(
        ErrorKind::MethodNotAllowed,
        format!("{} is not allowed here; use GET", request.method()),
    );
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    response
}

async fn not_found(request: Request) -> Response {
    let description = format!("no such endpoint: {}", request.uri().path());
    OAuthError::new(ErrorKind::NotFound, description).into_response()
}
