//! Client authentication against online guessing (RFC 6749 §2.3.1, README "Security"):
//! failures are counted per (client, source address) and answered 429 past a burst, before any
//! hashing; slow hashes run on blocking threads, a bounded number at once. Refused client
//! assertions (RFC 7523) are counted per source the same way, before any TokenReview.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::auth::Credentials;
use super::config::{EndpointConfig, ThrottleConfig};
use super::error::{ErrorKind, OAuthError};
use super::metrics::EndpointMetrics;
use super::registry::{Client, Clients};

pub struct Guard {
    throttle: Option<Throttle>,
    hashing: Semaphore,
}

impl Guard {
    pub fn new(config: &EndpointConfig) -> Guard {
        Guard {
            throttle: config
                .throttle
                .enabled
                .then(|| Throttle::new(config.throttle.clone())),
            hashing: Semaphore::new(config.hash_concurrency),
        }
    }

    /// The client whose secret `credentials` carry, asked from `peer`.
    pub async fn authenticate(
        &self,
        clients: &Clients,
        credentials: Credentials,
        peer: Option<IpAddr>,
        metrics: &EndpointMetrics,
    ) -> Result<Arc<Client>, OAuthError> {
        let client = match clients.find(&credentials) {
            Ok(client) => client.clone(),
            Err(error) => {
                // The id is the peer's text, not a client's: not logged.
                tracing::info!(peer = %shown(peer), "unknown client");
                return Err(error);
            }
        };
        let key = (Subject::Client(client.id.clone()), peer.map(source));
        // Checked before the secret, even a fast one: otherwise a throttled source would keep an
        // oracle for clients with plain SHA-256 hashes.
        self.check_throttle(&key, metrics)?;
        let matched = match client.check_fast(&credentials) {
            Some(matched) => matched,
            None => {
                // Held until the hash is done (the semaphore is never closed, so this is a permit).
                let _permit = self.hashing.acquire().await;
                // Failures recorded while this request waited count too: with one permit, no
                // source gets more slow hashes than its burst.
                self.check_throttle(&key, metrics)?;
                metrics.secret_hashes.inc();
                let hashed = client.clone();
                tokio::task::spawn_blocking(move || hashed.check_slow(&credentials))
                    .await
                    .unwrap_or(false)
            }
        };
        if matched {
            return Ok(client);
        }
        tracing::warn!(client_id = %client.id, peer = %shown(peer), "wrong client secret");
        self.failed(&key, peer);
        Err(OAuthError::new(
            ErrorKind::WrongSecret,
            format!("wrong secret for client {}", client.id),
        ))
    }

    /// A client assertion from `peer`, checked by `check` (a TokenReview unless the review cache
    /// knows it). A refused one counts against its source like a wrong secret, so past the burst
    /// a source that sends forged assertions is answered 429 without a review: it cannot turn
    /// every request into an API request.
    pub async fn authenticate_assertion<T>(
        &self,
        peer: Option<IpAddr>,
        metrics: &EndpointMetrics,
        check: impl Future<Output = Result<T, OAuthError>>,
    ) -> Result<T, OAuthError> {
        let key = (Subject::Assertion, peer.map(source));
        self.check_throttle(&key, metrics)?;
        let checked = check.await;
        if checked
            .as_ref()
            .is_err_and(|error| error.kind == ErrorKind::InvalidAssertion)
        {
            self.failed(&key, peer);
        }
        checked
    }

    /// Counts a failed authentication of `key`, saying so once it is throttled.
    fn failed(&self, key: &Key, peer: Option<IpAddr>) {
        let now_blocked = self
            .throttle
            .as_ref()
            .is_some_and(|throttle| throttle.failed(key, Instant::now()));
        if now_blocked {
            tracing::warn!(
                who = %key.0,
                peer = %shown(peer),
                "too many failed authentications: throttling them from this source"
            );
        }
    }

    fn check_throttle(&self, key: &Key, metrics: &EndpointMetrics) -> Result<(), OAuthError> {
        let Some(wait) = self
            .throttle
            .as_ref()
            .and_then(|throttle| throttle.wait(key, Instant::now()))
        else {
            return Ok(());
        };
        metrics.throttled.inc();
        tracing::debug!(who = %key.0, peer = ?key.1, "throttled");
        let mut error = OAuthError::new(
            ErrorKind::TooManyAttempts,
            format!(
                "too many failed authentications for {} from this address; retry later",
                key.0
            ),
        );
        // RFC 6585 §4: whole seconds, rounded up so a retry on time is let through.
        error.retry_after = Some(wait.as_secs() + u64::from(wait.subsec_nanos() > 0));
        Err(error)
    }
}

/// The peer's address for a log line.
fn shown(peer: Option<IpAddr>) -> String {
    peer.map_or_else(|| "unknown".to_string(), |ip| ip.to_string())
}

/// Whose authentications fail: a configured client, or whoever sends client assertions (not a
/// client until the API server says whose they are).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Subject {
    Client(String),
    Assertion,
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Client(id) => write!(f, "client {id}"),
            Subject::Assertion => f.write_str("client assertions"),
        }
    }
}

/// Who and the source address (none when the router runs without a socket).
type Key = (Subject, Option<IpAddr>);

/// IPv4 addresses as they are; IPv6 by their /64, which one host usually holds whole.
fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        },
    }
}

/// A token bucket per key: `burst` failures, then one more per `interval`.
struct Throttle {
    config: ThrottleConfig,
    buckets: Mutex<HashMap<Key, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    /// Failures still allowed at `at`.
    allowance: f64,
    at: Instant,
}

impl Throttle {
    fn new(config: ThrottleConfig) -> Throttle {
        Throttle {
            config,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn allowance(&self, bucket: &Bucket, now: Instant) -> f64 {
        let accrued = now.saturating_duration_since(bucket.at).as_secs_f64()
            / self.config.interval.as_secs_f64();
        (bucket.allowance + accrued).min(f64::from(self.config.burst))
    }

    /// How long until `key` may try again; `None` if it may now.
    fn wait(&self, key: &Key, now: Instant) -> Option<Duration> {
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let allowance = self.allowance(buckets.get(key)?, now);
        (allowance < 1.0).then(|| self.config.interval.mul_f64(1.0 - allowance))
    }

    /// Counts a failure; true when `key` is throttled from now on.
    fn failed(&self, key: &Key, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !buckets.contains_key(key) && buckets.len() >= self.config.max_tracked {
            let burst = f64::from(self.config.burst);
            buckets.retain(|_, bucket| self.allowance(bucket, now) < burst);
            if buckets.len() >= self.config.max_tracked
                && let Some(oldest) = buckets
                    .iter()
                    .min_by_key(|(_, bucket)| bucket.at)
                    .map(|(key, _)| key.clone())
            {
                buckets.remove(&oldest);
            }
        }
        let allowance = match buckets.get(key) {
            Some(bucket) => self.allowance(bucket, now),
            None => f64::from(self.config.burst),
        };
        let allowance = (allowance - 1.0).max(0.0);
        buckets.insert(key.clone(), Bucket { allowance, at: now });
        allowance < 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(burst: u32, max_tracked: usize) -> Throttle {
        Throttle::new(ThrottleConfig {
            enabled: true,
            burst,
            interval: Duration::from_secs(10),
            max_tracked,
        })
    }

    fn key(client: &str, ip: &str) -> Key {
        (
            Subject::Client(client.to_string()),
            Some(ip.parse().unwrap()),
        )
    }

    #[test]
    fn burst_then_one_per_interval_per_client_and_source() {
        let throttle = throttle(3, 100);
        let start = Instant::now();
        let a = key("a", "192.0.2.1");
        assert!(!throttle.failed(&a, start));
        assert!(!throttle.failed(&a, start));
        assert_eq!(throttle.wait(&a, start), None);
        assert!(throttle.failed(&a, start));
        assert_eq!(throttle.wait(&a, start), Some(Duration::from_secs(10)));
        // Another source, another client: not affected.
        assert_eq!(throttle.wait(&key("a", "192.0.2.2"), start), None);
        assert_eq!(throttle.wait(&key("b", "192.0.2.1"), start), None);
        let later = start + Duration::from_secs(4);
        assert_eq!(throttle.wait(&a, later), Some(Duration::from_secs(6)));
        let accrued = start + Duration::from_secs(10);
        assert_eq!(throttle.wait(&a, accrued), None);
        assert!(
            throttle.failed(&a, accrued),
            "one attempt accrued, one spent"
        );
    }

    #[tokio::test]
    async fn refused_assertions_are_throttled_per_source_before_their_check() {
        let guard = Guard {
            throttle: Some(throttle(2, 100)),
            hashing: Semaphore::new(1),
        };
        let metrics = EndpointMetrics::new(&mut prometheus_client::registry::Registry::default());
        let (attacker, neighbour) = (
            Some("192.0.2.1".parse().unwrap()),
            Some("192.0.2.2".parse().unwrap()),
        );
        // Counts the checks run (a TokenReview each, unless cached).
        let checks = &std::sync::atomic::AtomicUsize::new(0);
        let ran = || checks.load(std::sync::atomic::Ordering::SeqCst);
        let check = |kind: Option<ErrorKind>| async move {
            checks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match kind {
                None => Ok(()),
                Some(kind) => Err(OAuthError::new(kind, "refused")),
            }
        };
        let kind = |result: Result<(), OAuthError>| result.err().map(|error| error.kind);
        // An unreachable API server is not the sender's failure.
        for _ in 0..3 {
            let result = guard
                .authenticate_assertion(
                    attacker,
                    &metrics,
                    check(Some(ErrorKind::ReviewUnavailable)),
                )
                .await;
            assert_eq!(kind(result), Some(ErrorKind::ReviewUnavailable));
        }
        for _ in 0..2 {
            let result = guard
                .authenticate_assertion(
                    attacker,
                    &metrics,
                    check(Some(ErrorKind::InvalidAssertion)),
                )
                .await;
            assert_eq!(kind(result), Some(ErrorKind::InvalidAssertion));
        }
        assert_eq!(ran(), 5);
        let result = guard
            .authenticate_assertion(attacker, &metrics, check(Some(ErrorKind::InvalidAssertion)))
            .await;
        let throttled = result.expect_err("throttled");
        assert_eq!(throttled.kind, ErrorKind::TooManyAttempts);
        assert_eq!(throttled.retry_after, Some(10));
        assert_eq!(ran(), 5, "a throttled source's assertion is not checked");
        assert_eq!(metrics.throttled.get(), 1);
        // A valid assertion from the throttled source waits too; another source is not affected,
        // and a client's secret from the same source is its own bucket.
        let result = guard
            .authenticate_assertion(attacker, &metrics, check(None))
            .await;
        assert_eq!(kind(result), Some(ErrorKind::TooManyAttempts));
        let result = guard
            .authenticate_assertion(neighbour, &metrics, check(None))
            .await;
        assert_eq!(kind(result), None);
        let client = (Subject::Client("a".into()), attacker.map(source));
        assert_eq!(
            guard
                .throttle
                .as_ref()
                .unwrap()
                .wait(&client, Instant::now()),
            None
        );
    }

    #[test]
    fn ipv6_sources_count_by_their_64() {
        assert_eq!(
            source("2001:db8:1:2:aaaa::1".parse().unwrap()),
            source("2001:db8:1:2:bbbb::2".parse().unwrap())
        );
        assert_ne!(
            source("2001:db8:1:2::1".parse().unwrap()),
            source("2001:db8:1:3::1".parse().unwrap())
        );
        assert_eq!(
            source("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn bounded_memory_forgets_the_oldest() {
        let throttle = throttle(1, 2);
        let start = Instant::now();
        let (a, b, c) = (
            key("x", "192.0.2.1"),
            key("x", "192.0.2.2"),
            key("x", "192.0.2.3"),
        );
        throttle.failed(&a, start);
        throttle.failed(&b, start + Duration::from_secs(1));
        throttle.failed(&c, start + Duration::from_secs(2));
        let buckets = throttle.buckets.lock().unwrap();
        assert_eq!(buckets.len(), 2);
        assert!(!buckets.contains_key(&a));
    }
}
