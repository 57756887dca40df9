//! What the token endpoint did, for `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `client_credentials`, `bootstrap_token`, or `other` for anything else (kept bounded).
    pub grant: &'static str,
    /// `issued`, `reused`, or the RFC 6749 `error` of the answer.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TimeoutLabels {
    /// `handshake`, `idle`, `header` or `body`.
    pub phase: &'static str,
}

/// Cheap to clone: every field shares its storage.
#[derive(Clone, Debug)]
pub struct EndpointMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub signing_duration: Histogram,
    pub open_connections: Gauge,
    pub connections_refused: Counter,
    pub connection_timeouts: Family<TimeoutLabels, Counter>,
    pub throttled: Counter,
    pub secret_hashes: Counter,
    pub token_reviews: Counter,
}

impl EndpointMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = EndpointMetrics {
            requests: Family::default(),
            // 50 µs … ~400 ms: RSA-2048 signing takes about a millisecond.
            signing_duration: Histogram::new(exponential_buckets(0.000_05, 2.0, 14)),
            open_connections: Gauge::default(),
            connections_refused: Counter::default(),
            connection_timeouts: Family::default(),
            throttled: Counter::default(),
            secret_hashes: Counter::default(),
            token_reviews: Counter::default(),
        };
        registry.register(
            "token_endpoint_requests",
            "Token requests by grant type and outcome (outcome=\"reused\" counts re-use hits)",
            metrics.requests.clone(),
        );
        registry.register(
            "token_endpoint_signing_duration_seconds",
            "Time to sign one token at the endpoint",
            metrics.signing_duration.clone(),
        );
        registry.register(
            "token_endpoint_open_connections",
            "Connections to the endpoint open now (TLS handshakes included)",
            metrics.open_connections.clone(),
        );
        registry.register(
            "token_endpoint_connections_refused",
            "Connections closed on arrival because endpoint.connections.max were open",
            metrics.connections_refused.clone(),
        );
        registry.register(
            "token_endpoint_connection_timeouts",
            "Connections closed (or answered 408) for stalling, by the phase that ran out",
            metrics.connection_timeouts.clone(),
        );
        registry.register(
            "token_endpoint_throttled",
            "Token requests answered 429 for too many failed authentications of one client (or of client assertions) from one source",
            metrics.throttled.clone(),
        );
        registry.register(
            "token_endpoint_secret_hashes",
            "Full (slow) client-secret hash verifications; a client's secret that verified once is then checked by digest",
            metrics.secret_hashes.clone(),
        );
        registry.register(
            "token_endpoint_token_reviews",
            "TokenReviews sent to the API server for client assertions the review cache did not know",
            metrics.token_reviews.clone(),
        );
        metrics
    }

    pub fn timeout(&self, phase: &'static str) {
        self.connection_timeouts
            .get_or_create(&TimeoutLabels { phase })
            .inc();
    }

    pub fn request(&self, grant: &'static str, outcome: &'static str) {
        self.requests
            .get_or_create(&RequestLabels { grant, outcome })
            .inc();
    }

    /// Requests counted so far with these labels.
    pub fn count(&self, grant: &'static str, outcome: &'static str) -> u64 {
        self.requests
            .get_or_create(&RequestLabels { grant, outcome })
            .get()
    }
}
