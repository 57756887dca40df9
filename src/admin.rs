//! The admin port: `/healthz` (alive), `/readyz` (ready to serve), `/metrics` (Prometheus).

use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

pub struct AdminState {
    pub registry: Registry,
    pub readiness: Readiness,
}

/// Ready once the signing keys are loaded; until then, why not.
pub struct Readiness(RwLock<Option<String>>);

impl Default for Readiness {
    fn default() -> Self {
        Readiness(RwLock::new(Some("starting".into())))
    }
}

impl Readiness {
    pub fn set_ready(&self) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Not ready, because of `why` (shown by `/readyz`; it must carry no secret).
    pub fn set_waiting(&self, why: String) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    /// `None` when ready, else why not.
    pub fn waiting_for(&self) -> Option<String> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    match state.readiness.waiting_for() {
        None => (StatusCode::OK, "ready".to_string()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}
