//! The admin port: `/healthz` (alive), `/readyz` (ready to serve), `/metrics` (Prometheus).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

pub struct AdminState {
    pub registry: Registry,
    /// Set once the signing keys are loaded.
    pub ready: AtomicBool,
    /// Why the process is not ready yet, the body of a 503 from /readyz.
    reason: Mutex<String>,
}

impl AdminState {
    pub fn new(registry: Registry) -> Self {
        AdminState {
            registry,
            ready: AtomicBool::new(false),
            reason: Mutex::new("starting".into()),
        }
    }

    /// Sets what /readyz answers while not ready.
    pub fn not_ready(&self, reason: String) {
        *self
            .reason
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = reason;
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
    if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready".to_string())
    } else {
        let reason = state.reason.lock().unwrap_or_else(|p| p.into_inner());
        (StatusCode::SERVICE_UNAVAILABLE, reason.clone())
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
