//! What the token endpoint did, for `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `client_credentials`, `bootstrap_token`, or `other` for anything else (kept bounded).
    pub grant: &'static str,
    /// `issued`, `reused`, or the RFC 6749 `error` of the answer.
    pub outcome: &'static str,
}

/// Cheap to clone: every field shares its storage.
#[derive(Clone, Debug)]
pub struct EndpointMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub signing_duration: Histogram,
}

impl EndpointMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = EndpointMetrics {
            requests: Family::default(),
            // 50 µs … ~400 ms: RSA-2048 signing takes about a millisecond.
            signing_duration: Histogram::new(exponential_buckets(0.000_05, 2.0, 14)),
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
        metrics
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
