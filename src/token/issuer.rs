//! The one place tokens are made. The BootstrapToken controller and the token endpoint both ask
//! the [`Issuer`]: it builds the claims from the token profile and the bootstrap defaults, applies
//! the operator's policy, signs with the active key and counts what it issued.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Deserialize;

use super::store::{KeyProvider, StoreError};
use super::{Claims, KeySet, NOT_BEFORE_SKEW_SECS, SignError, TOKEN_VERSION, VerifiedToken};
use super::{VerifyError, VersionClaim, new_jti};
use crate::duration;
use crate::policy::{self, PolicyRule};
use crate::revocation::Revocations;

/// What every token carries whoever asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenProfile {
    /// `iss`.
    pub issuer: String,
    /// `aud` unless a client may ask for another.
    pub audience: String,
    pub version_claim: VersionClaim,
}

/// The `bootstrap:` section of the configuration: what a bootstrap token says besides its `sid`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BootstrapConfig {
    /// `client_id` of every bootstrap token: always the operator's, never the requester's.
    #[serde(default = "default_bootstrap_client_id")]
    pub client_id: String,
    /// `scope` of every bootstrap token.
    #[serde(default)]
    pub scope: Vec<String>,
    #[serde(default = "default_lifetime", with = "duration::serde_go")]
    pub lifetime: Duration,
    /// Re-issue when less than this remains; default a third of the lifetime, as cert-manager.
    #[serde(default, deserialize_with = "duration::serde_go::option")]
    pub renew_before: Option<Duration>,
    /// The shortest `spec.lifetime` a BootstrapToken may ask for: a tenant must not set the
    /// re-issue rate (a token, a Secret write and a rollout every second).
    #[serde(default = "default_min_lifetime", with = "duration::serde_go")]
    pub min_lifetime: Duration,
    /// The shortest time between two issuances for one object, whatever asks for them.
    #[serde(default = "default_min_reissue_interval", with = "duration::serde_go")]
    pub min_reissue_interval: Duration,
    /// A renewal further off than this holds no timer; a look over the cached objects every half
    /// of it finds the renewal in time. Shorter: more timers held, more looks.
    #[serde(default = "default_renewal_horizon", with = "duration::serde_go")]
    pub renewal_horizon: Duration,
}

/// The longest lifetime accepted anywhere: a hundred years keeps every `exp` far from overflow.
pub const MAX_LIFETIME: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn default_bootstrap_client_id() -> String {
    "f7d42348-c647-4efb-a52d-4c5787421e00".into()
}

fn default_lifetime() -> Duration {
    Duration::from_secs(315_360_000)
}

fn default_min_lifetime() -> Duration {
    Duration::from_secs(3600)
}

fn default_min_reissue_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_renewal_horizon() -> Duration {
    Duration::from_secs(3600)
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        BootstrapConfig {
            client_id: default_bootstrap_client_id(),
            scope: Vec::new(),
            lifetime: default_lifetime(),
            renew_before: None,
            min_lifetime: default_min_lifetime(),
            min_reissue_interval: default_min_reissue_interval(),
            renewal_horizon: default_renewal_horizon(),
        }
    }
}

impl BootstrapConfig {
    /// How long before expiry a token of `lifetime` is re-issued.
    pub fn renew_before_for(&self, lifetime: Duration) -> Duration {
        match self.renew_before {
            Some(renew) if renew < lifetime => renew,
            _ => lifetime / 3,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuedLabels {
    /// `bootstrap` or `access`.
    pub token: &'static str,
    /// Why a new token was needed (the controller's reasons, or the endpoint's grant).
    pub reason: &'static str,
}

/// A signed token and what it says.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: String,
    pub claims: Claims,
    pub kid: String,
}

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("signing keys unavailable: {0}")]
    KeyUnavailable(#[from] StoreError),
    #[error("the operator's policy does not allow service id {sid:?} in namespace {namespace:?}")]
    Forbidden { namespace: String, sid: String },
    #[error(transparent)]
    Signing(#[from] SignError),
}

/// A bootstrap token for `sid`; `namespace` is where it is asked for ("" at the endpoint, which
/// has none, so only rules without namespaces apply there).
pub struct BootstrapRequest<'a> {
    pub namespace: &'a str,
    pub sid: &'a str,
    pub lifetime: Duration,
    /// A subset of the configured scope, already checked by the caller; `None` means all of it.
    pub scope: Option<Vec<String>>,
    /// Why it is issued, for the metric.
    pub reason: &'static str,
}

/// A short-lived `client_credentials` token.
pub struct AccessRequest<'a> {
    pub client_id: &'a str,
    pub audience: &'a str,
    pub scope: Vec<String>,
    pub lifetime: Duration,
}

pub struct Issuer {
    profile: TokenProfile,
    bootstrap: BootstrapConfig,
    policy: Vec<PolicyRule>,
    keys: Arc<KeyProvider>,
    issued: Family<IssuedLabels, Counter>,
    /// The revoked tokens: every verification consults them.
    revocations: Arc<Revocations>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

impl Issuer {
    pub fn new(
        profile: TokenProfile,
        bootstrap: BootstrapConfig,
        policy: Vec<PolicyRule>,
        keys: Arc<KeyProvider>,
        registry: &mut Registry,
    ) -> Self {
        let issued = Family::default();
        registry.register(
            "bootstrap_token_tokens_issued",
            "Tokens signed, by kind (bootstrap, access) and why a new one was needed",
            issued.clone(),
        );
        Issuer {
            profile,
            bootstrap,
            policy,
            keys,
            issued,
            revocations: Arc::default(),
        }
    }

    /// Checks tokens against `revocations` (by default an empty list held in memory).
    pub fn with_revocations(mut self, revocations: Arc<Revocations>) -> Self {
        self.revocations = revocations;
        self
    }

    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    pub fn profile(&self) -> &TokenProfile {
        &self.profile
    }

    pub fn bootstrap(&self) -> &BootstrapConfig {
        &self.bootstrap
    }

    /// The key set as it is now, loaded on first use.
    pub async fn keys(&self) -> Result<Arc<KeySet>, StoreError> {
        self.keys.get().await
    }

    /// One item each time the keys load after failing to (a key lost and restored) or the
    /// active key changes (rotation).
    pub fn keys_recovered(&self) -> impl futures::Stream<Item = ()> + Send + 'static {
        self.keys.recovered()
    }

    pub fn allows(&self, namespace: &str, sid: &str) -> bool {
        policy::allows(&self.policy, namespace, sid)
    }

    /// Whether `sid` may be held in `namespace` while another namespace holds it too.
    pub fn allows_sharing(&self, namespace: &str, sid: &str) -> bool {
        policy::allows_sharing(&self.policy, namespace, sid)
    }

    /// Tokens issued so far with these labels.
    pub fn issued_count(&self, token: &'static str, reason: &'static str) -> u64 {
        self.issued
            .get_or_create(&IssuedLabels { token, reason })
            .get()
    }

    /// The claims of a bootstrap token for `sid` issued at `now`, with a fresh `jti`: client id
    /// and scope always from the configuration, never from the requester.
    pub fn bootstrap_claims(&self, sid: &str, lifetime: Duration, now: i64) -> Claims {
        let mut claims = self.claims(
            &self.bootstrap.client_id,
            &self.profile.audience,
            self.bootstrap.scope.clone(),
            lifetime,
            now,
        );
        claims.sid = Some(sid.to_string());
        claims
    }

    fn claims(
        &self,
        client_id: &str,
        audience: &str,
        scope: Vec<String>,
        lifetime: Duration,
        now: i64,
    ) -> Claims {
        Claims {
            iss: self.profile.issuer.clone(),
            aud: audience.to_string(),
            exp: now.saturating_add(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX)),
            jti: new_jti(),
            iat: now,
            nbf: now.saturating_sub(NOT_BEFORE_SKEW_SECS),
            version_claim: self.profile.version_claim,
            version: TOKEN_VERSION.into(),
            client_id: client_id.to_string(),
            scope,
            sid: None,
        }
    }

    pub async fn issue_bootstrap(
        &self,
        request: BootstrapRequest<'_>,
        now: i64,
    ) -> Result<Issued, IssueError> {
        if !self.allows(request.namespace, request.sid) {
            return Err(IssueError::Forbidden {
                namespace: request.namespace.into(),
                sid: request.sid.into(),
            });
        }
        let mut claims = self.bootstrap_claims(request.sid, request.lifetime, now);
        if let Some(scope) = request.scope {
            claims.scope = scope;
        }
        self.sign(claims, "bootstrap", request.reason).await
    }

    pub async fn issue_access(
        &self,
        request: AccessRequest<'_>,
        now: i64,
    ) -> Result<Issued, IssueError> {
        let claims = self.claims(
            request.client_id,
            request.audience,
            request.scope,
            request.lifetime,
            now,
        );
        self.sign(claims, "access", "client_credentials").await
    }

    async fn sign(
        &self,
        claims: Claims,
        token: &'static str,
        reason: &'static str,
    ) -> Result<Issued, IssueError> {
        let keys = self.keys.get().await?;
        let key = keys.active();
        let signed = key.sign(&claims).await?;
        self.issued
            .get_or_create(&IssuedLabels { token, reason })
            .inc();
        Ok(Issued {
            token: signed,
            claims,
            kid: key.kid().to_string(),
        })
    }

    /// Whether `token` was signed by one of our keys and is not revoked at `now`; expiry and
    /// audience are the caller's.
    pub async fn verify(&self, token: &str, now: i64) -> Result<VerifiedToken, VerifyError> {
        let keys = self
            .keys
            .get()
            .await
            .map_err(|e| VerifyError::KeysUnavailable(e.to_string()))?;
        let verified = keys.verify(token)?;
        self.check_revoked(&verified.claims, now)?;
        Ok(verified)
    }

    /// The revocation half of [`Issuer::verify`], for callers that hold the claims already.
    pub fn check_revoked(&self, claims: &Claims, now: i64) -> Result<(), VerifyError> {
        if self.revocations.is_revoked(&claims.jti, now) {
            return Err(VerifyError::Revoked);
        }
        Ok(())
    }
}

/// An issuer with light-oauth2's token profile and keys in memory, for unit tests.
#[cfg(test)]
pub(crate) fn test_issuer(
    bootstrap: BootstrapConfig,
    policy: Vec<PolicyRule>,
    keys: KeySet,
) -> Issuer {
    Issuer::new(
        TokenProfile {
            issuer: "urn:com:networknt:oauth2:v1".into(),
            audience: "urn:com.networknt".into(),
            version_claim: VersionClaim::Version,
        },
        bootstrap,
        policy,
        Arc::new(KeyProvider::from_keys(keys)),
        &mut Registry::default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::LocalKey;

    fn issuer(policy: Vec<PolicyRule>) -> Issuer {
        let bootstrap = BootstrapConfig {
            scope: vec!["A8E73740C0041C03D67C3A951AA1D7533C8F9F2FB57D7BA107210B9BC9E06DA2".into()],
            ..Default::default()
        };
        let keys = KeySet::new(LocalKey::generate("100").unwrap(), vec![]);
        test_issuer(bootstrap, policy, keys)
    }

    #[test]
    fn the_seed_shape() {
        let issuer = issuer(vec![]);
        let claims = issuer.bootstrap_claims(
            "com.networknt.petstore-1.0.0",
            issuer.bootstrap().lifetime,
            1_631_713_497,
        );
        assert_eq!(claims.exp, 1_947_073_497);
        assert_eq!(claims.nbf, 1_631_713_377);
        assert_eq!(claims.client_id, "f7d42348-c647-4efb-a52d-4c5787421e00");
        assert_eq!(claims.sid.as_deref(), Some("com.networknt.petstore-1.0.0"));
        assert_eq!(claims.jti.len(), 22);
    }

    #[tokio::test]
    async fn both_kinds_share_one_claim_layout_and_verify() {
        let issuer = issuer(vec![]);
        let now = 1_700_000_000;
        let bootstrap = issuer
            .issue_bootstrap(
                BootstrapRequest {
                    namespace: "team-a",
                    sid: "svc",
                    lifetime: Duration::from_secs(3600),
                    scope: None,
                    reason: "test",
                },
                now,
            )
            .await
            .unwrap();
        let access = issuer
            .issue_access(
                AccessRequest {
                    client_id: "c",
                    audience: "urn:com.networknt",
                    scope: vec!["a".into()],
                    lifetime: Duration::from_secs(600),
                },
                now,
            )
            .await
            .unwrap();
        let keys_of = |token: &str| -> Vec<String> {
            let payload = token.split('.').nth(1).unwrap();
            let json: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(
                &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
                    .unwrap(),
            )
            .unwrap();
            json.keys().cloned().collect()
        };
        let layout = [
            "iss",
            "aud",
            "exp",
            "jti",
            "iat",
            "nbf",
            "version",
            "client_id",
            "scope",
        ];
        assert_eq!(keys_of(&access.token), layout);
        assert_eq!(keys_of(&bootstrap.token)[..layout.len()], layout);
        assert_eq!(keys_of(&bootstrap.token).last().unwrap(), "sid");
        for issued in [&bootstrap, &access] {
            let verified = issuer.verify(&issued.token, now).await.unwrap();
            assert_eq!(verified.claims, issued.claims);
            assert_eq!(verified.kid, issued.kid);
        }
        assert_eq!(issuer.issued_count("bootstrap", "test"), 1);
        assert_eq!(issuer.issued_count("access", "client_credentials"), 1);
    }

    #[tokio::test]
    async fn policy_is_applied_where_tokens_are_made() {
        let issuer = issuer(vec![PolicyRule {
            namespaces: vec!["team-*".into()],
            service_ids: vec!["com.team.*".into()],
            ..Default::default()
        }]);
        let request = |namespace, sid| BootstrapRequest {
            namespace,
            sid,
            lifetime: Duration::from_secs(60),
            scope: None,
            reason: "test",
        };
        assert!(
            issuer
                .issue_bootstrap(request("team-a", "com.team.api"), 0)
                .await
                .is_ok()
        );
        for (namespace, sid) in [("other", "com.team.api"), ("team-a", "org.other")] {
            let error = issuer
                .issue_bootstrap(request(namespace, sid), 0)
                .await
                .unwrap_err();
            assert!(matches!(error, IssueError::Forbidden { .. }), "{error}");
        }
        assert_eq!(issuer.issued_count("bootstrap", "test"), 1);
    }
}
