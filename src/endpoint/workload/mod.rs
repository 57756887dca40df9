//! Workload identity: a pod authenticates with its projected ServiceAccount token as a JWT client
//! assertion (RFC 7523 §2.2) and gets a short-lived token with the bootstrap claims of a
//! BootstrapToken whose `spec.serviceAccounts` lists that ServiceAccount. No secret is stored.
//!
//! The assertion is checked locally for shape and expiry, then reviewed by the API server
//! (TokenReview, with the configured audience), whose positive answers are cached briefly.

mod assertion;
mod cache;
mod mappings;
mod review;

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

pub use assertion::{JWT_BEARER, ServiceAccount};
pub use mappings::Mappings;
pub use review::{KubeReviewer, Review, ReviewError, TokenReviewer};

use super::error::{ErrorKind, OAuthError};
use super::metrics::EndpointMetrics;
use super::params::Params;
use crate::duration;
use crate::resource::BootstrapToken;
use crate::token::Issuer;
use cache::ReviewCache;

/// The `reason` of the tokens-issued metric for tokens issued to workload identities.
pub const ISSUED_REASON: &str = "workload_identity";

/// `endpoint.workloadIdentity`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadIdentityConfig {
    #[serde(default)]
    pub enabled: bool,
    /// The audience a projected token must be for; default the operator's `issuer`.
    #[serde(default)]
    pub audience: Option<String>,
    #[serde(default)]
    pub review_cache: ReviewCacheConfig,
}

/// Positive TokenReviews kept so a pod asking again costs no API request.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReviewCacheConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How long a review is trusted at most (never past the token's own `exp`): a token of a
    /// ServiceAccount deleted meanwhile is accepted for at most this long.
    #[serde(default = "default_max_age", with = "duration::serde_go")]
    pub max_age: Duration,
    #[serde(default = "default_max_entries")]
    pub max_entries: usize,
}

fn default_true() -> bool {
    true
}
fn default_max_age() -> Duration {
    Duration::from_secs(30)
}
fn default_max_entries() -> usize {
    10_000
}

impl Default for ReviewCacheConfig {
    fn default() -> Self {
        ReviewCacheConfig {
            enabled: true,
            max_age: default_max_age(),
            max_entries: default_max_entries(),
        }
    }
}

impl WorkloadIdentityConfig {
    /// Checks what serde cannot; the message names the field below `workloadIdentity.`.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.audience.as_deref().is_some_and(str::is_empty) {
            return Err("audience: must not be empty (leave it out to use issuer)".into());
        }
        let cache = &self.review_cache;
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&cache.max_age) {
            return Err("reviewCache.maxAge: must be from 1s to 1h".into());
        }
        if !(1..=1_000_000).contains(&cache.max_entries) {
            return Err("reviewCache.maxEntries: must be from 1 to 1000000".into());
        }
        Ok(())
    }
}

pub struct WorkloadIdentity {
    audience: String,
    reviewer: Arc<dyn TokenReviewer>,
    cache: ReviewCache,
    pub mappings: Mappings,
}

impl WorkloadIdentity {
    /// `issuer` is the audience when none is configured.
    pub fn new(
        config: &WorkloadIdentityConfig,
        issuer: &str,
        reviewer: Arc<dyn TokenReviewer>,
    ) -> WorkloadIdentity {
        let cache = &config.review_cache;
        let max_age = if cache.enabled {
            cache.max_age
        } else {
            Duration::ZERO
        };
        WorkloadIdentity {
            audience: config.audience.clone().unwrap_or_else(|| issuer.into()),
            reviewer,
            cache: ReviewCache::new(max_age, cache.max_entries),
            mappings: Mappings::default(),
        }
    }

    /// The ServiceAccount `assertion` is a token of, for our audience, at `now`.
    pub async fn authenticate(
        &self,
        assertion: &str,
        now: i64,
        metrics: &EndpointMetrics,
    ) -> Result<ServiceAccount, OAuthError> {
        let parsed = assertion::parse(assertion, now)
            .map_err(|why| OAuthError::new(ErrorKind::InvalidAssertion, why.to_string()))?;
        let key = cache::key(assertion);
        if let Some(account) = self.cache.get(&key, now) {
            return Ok(account);
        }
        if !self.mappings.synced() {
            return Err(OAuthError::new(
                ErrorKind::ReviewUnavailable,
                "the ServiceAccount mappings are not loaded yet; try again shortly",
            ));
        }
        metrics.token_reviews.inc();
        let review = self
            .reviewer
            .review(assertion, &self.audience)
            .await
            .map_err(|error| {
                tracing::warn!(%error, "TokenReview failed");
                OAuthError::new(
                    ErrorKind::ReviewUnavailable,
                    "the assertion cannot be verified now; try again shortly",
                )
            })?;
        let account = reviewed(review, &self.audience)?;
        self.cache.put(key, account.clone(), parsed.exp, now);
        Ok(account)
    }

    /// The BootstrapToken `account` acts as: the one it is mapped to, or among several the one
    /// whose service id is `sid`. Its service id must be its namespace's to use.
    pub fn mapped(
        &self,
        account: &ServiceAccount,
        sid: Option<&str>,
        issuer: &Issuer,
    ) -> Result<Arc<BootstrapToken>, OAuthError> {
        let bt = choose(self.mappings.of(account), sid).map_err(|kind| {
            let description = match kind {
                ErrorKind::ServiceIdRequired => format!(
                    "ServiceAccount {account} may act as several services: name one with sid"
                ),
                _ => format!(
                    "no BootstrapToken in namespace {} lists ServiceAccount {} in spec.serviceAccounts{}",
                    account.namespace,
                    account.name,
                    if sid.is_some() { " with that sid" } else { "" }
                ),
            };
            OAuthError::new(kind, description)
        })?;
        if self.mappings.held_elsewhere(&bt).is_some()
            && !issuer.allows_sharing(&account.namespace, &bt.spec.service_id)
        {
            return Err(OAuthError::new(
                ErrorKind::ServiceIdNotAllowed,
                "the service id is held by another namespace",
            ));
        }
        Ok(bt)
    }
}

/// The ServiceAccount a review authenticated, if it is one and the review was for `audience`.
fn reviewed(review: Review, audience: &str) -> Result<ServiceAccount, OAuthError> {
    let refused = |why: &str| OAuthError::new(ErrorKind::InvalidAssertion, why);
    match review {
        Review::Rejected => Err(refused(
            "the API server did not accept the assertion for this endpoint's audience",
        )),
        // An API server that ignores audiences must not make any audience good enough.
        Review::Authenticated { audiences, .. } if !audiences.iter().any(|a| a == audience) => {
            Err(refused("the assertion is not for this endpoint's audience"))
        }
        Review::Authenticated { username, .. } => ServiceAccount::from_username(&username)
            .ok_or_else(|| refused("the assertion is not a ServiceAccount token")),
    }
}

/// The mapping a request gets: the only one, or the one `sid` names. Several BootstrapTokens with
/// one service id (say in a rename) give the same claims, so they count as one.
fn choose(
    candidates: Vec<Arc<BootstrapToken>>,
    sid: Option<&str>,
) -> Result<Arc<BootstrapToken>, ErrorKind> {
    let mut matching = candidates
        .into_iter()
        .filter(|bt| sid.is_none_or(|sid| bt.spec.service_id == sid));
    let first = matching.next().ok_or(ErrorKind::ServiceAccountNotMapped)?;
    if matching.any(|bt| bt.spec.service_id != first.spec.service_id) {
        return Err(ErrorKind::ServiceIdRequired);
    }
    Ok(first)
}

/// The assertion of a request that authenticates with one, checked for what may come with it:
/// `client_credentials` only, no other client authentication, and a `client_id`, if any, that is
/// the one the token will carry (`bootstrap.clientId`). `None`: the request carries no assertion.
pub fn assertion_of<'a>(
    params: &'a Params,
    client_credentials: bool,
    authorization_header: bool,
    bootstrap_client_id: &str,
) -> Result<Option<&'a str>, OAuthError> {
    let (assertion, kind) = match (
        params.client_assertion.as_deref(),
        params.client_assertion_type.as_deref(),
    ) {
        (None, None) => return Ok(None),
        (Some(assertion), Some(kind)) => (assertion, kind),
        (None, Some(_)) => {
            return Err(OAuthError::new(
                ErrorKind::MissingAssertion,
                "client_assertion is missing",
            ));
        }
        (Some(_), None) => {
            return Err(OAuthError::new(
                ErrorKind::MissingAssertion,
                "client_assertion_type is missing",
            ));
        }
    };
    if kind != JWT_BEARER {
        return Err(OAuthError::new(
            ErrorKind::InvalidAssertion,
            format!("client_assertion_type must be {JWT_BEARER}"),
        ));
    }
    if authorization_header || params.client_secret.is_some() {
        return Err(OAuthError::new(
            ErrorKind::MultipleClientAuthentication,
            "a request authenticates with a client assertion or a client secret, not both",
        ));
    }
    if params
        .client_id
        .as_deref()
        .is_some_and(|id| id != bootstrap_client_id)
    {
        return Err(OAuthError::new(
            ErrorKind::MultipleClientAuthentication,
            "a client with a secret authenticates with its secret, not a client assertion",
        ));
    }
    if !client_credentials {
        return Err(OAuthError::new(
            ErrorKind::GrantNotAllowed,
            "a client assertion may be used with grant_type client_credentials only",
        ));
    }
    Ok(Some(assertion))
}

#[cfg(test)]
mod tests;
