//! Logging and the controllers' metrics. Log lines never carry a token, a secret or key material.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Level from `RUST_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_ansi(std::io::stdout().is_terminal()))
            .init(),
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json())
            .init(),
    }
}

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub controller: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// What the controllers did, for `/metrics`.
pub struct ControllerMetrics {
    pub reconciles: Family<ResultLabels, Counter>,
    pub failures: Family<ReasonLabels, Counter>,
    pub reconcile_duration: Histogram,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
}

impl ControllerMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = ControllerMetrics {
            reconciles: Family::default(),
            failures: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            leader: Gauge::default(),
        };
        registry.register(
            "bootstrap_token_reconciles",
            "Reconciles by controller and result",
            metrics.reconciles.clone(),
        );
        registry.register(
            "bootstrap_token_reconcile_failures",
            "Failed reconciles and not-ready outcomes by reason",
            metrics.failures.clone(),
        );
        registry.register(
            "bootstrap_token_reconcile_duration_seconds",
            "Time spent in one BootstrapToken reconcile",
            metrics.reconcile_duration.clone(),
        );
        registry.register(
            "bootstrap_token_leader",
            "1 while this replica holds the leader Lease and reconciles",
            metrics.leader.clone(),
        );
        metrics
    }

    /// Exposes a controller's counters at 0 before its first reconcile, so "none yet" is visible.
    pub fn init_controller(&self, controller: &'static str) {
        for result in ["success", "error"] {
            self.reconciles
                .get_or_create(&ResultLabels { controller, result })
                .inc_by(0);
        }
    }

    pub fn reconciled(&self, controller: &'static str, ok: bool) {
        let result = if ok { "success" } else { "error" };
        self.reconciles
            .get_or_create(&ResultLabels { controller, result })
            .inc();
    }

    /// Reconciles of `controller` so far, successful or not.
    pub fn reconcile_count(&self, controller: &'static str) -> u64 {
        ["success", "error"]
            .into_iter()
            .map(|result| {
                self.reconciles
                    .get_or_create(&ResultLabels { controller, result })
                    .get()
            })
            .sum()
    }
}
