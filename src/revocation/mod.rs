//! Revoked tokens. Each revocation is one small `RevokedToken` object in the operator's
//! namespace, named by a hash of the token's `jti`; every replica watches them into memory
//! ([`Revocations`]), and the [`crate::token::Issuer`] consults that copy whenever it verifies a
//! token. An object is deleted (by the leader) once the token it names has expired, so the state
//! is bounded by the revoked tokens still alive. The tokens of the endpoint's `bootstrap_token`
//! grant are recorded the same way (`IssuedToken`, [`IssuedTokens`]), capped per sid.

mod issued;
mod list;
mod mirror;

use std::time::Duration;

use aws_lc_rs::digest;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration;

pub use issued::IssuedTokens;
pub use list::{RevocationError, Revocations};

/// The `revocation:` section of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevocationConfig {
    /// How long the previous token of a re-issued BootstrapToken keeps working, so pods can roll
    /// onto the new one first.
    #[serde(default = "default_reissue_grace", with = "duration::serde_go")]
    pub reissue_grace: Duration,
    /// How often the leader deletes the records of tokens that have expired.
    #[serde(default = "default_sweep_interval", with = "duration::serde_go")]
    pub sweep_interval: Duration,
    /// How many unexpired, unrevoked tokens of the `bootstrap_token` grant one sid keeps; a new
    /// one beyond revokes the oldest.
    #[serde(default = "default_issued_per_service")]
    pub issued_per_service: usize,
}

/// Above the replicas of a large Deployment that each ask the grant once at start.
fn default_issued_per_service() -> usize {
    100
}

/// A record is about 1 KiB in etcd and in each replica: this keeps one sid under 10 MiB.
const MAX_ISSUED_PER_SERVICE: usize = 10_000;

fn default_reissue_grace() -> Duration {
    Duration::from_secs(600)
}

fn default_sweep_interval() -> Duration {
    Duration::from_secs(60)
}

impl Default for RevocationConfig {
    fn default() -> Self {
        RevocationConfig {
            reissue_grace: default_reissue_grace(),
            sweep_interval: default_sweep_interval(),
            issued_per_service: default_issued_per_service(),
        }
    }
}

impl RevocationConfig {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.sweep_interval < Duration::from_secs(1) {
            return Err("sweepInterval: must be at least 1s".into());
        }
        if self.reissue_grace > Duration::from_secs(30 * 24 * 3600) {
            return Err("reissueGrace: must be at most 720h".into());
        }
        if !(1..=MAX_ISSUED_PER_SERVICE).contains(&self.issued_per_service) {
            return Err(format!(
                "issuedPerService: must be 1 to {MAX_ISSUED_PER_SERVICE}"
            ));
        }
        Ok(())
    }
}

/// Why a token was revoked.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RevocationReason {
    /// Its BootstrapToken got a new token (renewal, `reissue`, a changed input).
    Reissued,
    /// The `bootstraptoken.dev/revoke` annotation asked for it.
    RevokeRequested,
    /// Its BootstrapToken (or the Secret holding it) was deleted.
    Deleted,
    /// A client asked at `POST /oauth2/revoke`.
    Endpoint,
    /// A newer token of the `bootstrap_token` grant for the same sid went beyond
    /// `revocation.issuedPerService`; this was the oldest.
    ServiceCapReached,
}

/// A revoked token: enough to answer "is this jti revoked" and to drop the record once the token
/// has expired; the `kid` says which key signed it (for key rotation).
// Each printcolumn(...) repeats the same keys, which clippy mistakes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "bootstraptoken.dev",
    version = "v1alpha1",
    kind = "RevokedToken",
    namespaced,
    shortname = "rvt",
    derive = "PartialEq",
    doc = "A revoked token, kept by the bootstrap-token-operator until the token expires.",
    printcolumn(name = "Token ID", type_ = "string", json_path = ".spec.tokenId"),
    printcolumn(name = "Service ID", type_ = "string", json_path = ".spec.serviceId"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".spec.reason"),
    printcolumn(name = "Effective", type_ = "string", json_path = ".spec.effectiveAt"),
    printcolumn(name = "Expires", type_ = "string", json_path = ".spec.expiresAt")
)]
#[serde(rename_all = "camelCase")]
pub struct RevokedTokenSpec {
    /// `jti` of the revoked token.
    #[schemars(length(min = 1, max = 256))]
    pub token_id: String,
    /// `kid` of the key that signed it.
    #[schemars(length(max = 256))]
    pub key_id: String,
    /// `client_id` of the token.
    #[schemars(length(max = 512))]
    pub client_id: String,
    /// `sid` of the token, for bootstrap tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub service_id: Option<String>,
    /// `exp` of the token (RFC 3339): the record is deleted after it.
    pub expires_at: String,
    /// From when the token is refused (RFC 3339); later than the revocation for a re-issue's
    /// grace period.
    pub effective_at: String,
    pub reason: RevocationReason,
}

/// A revocation to record, times as Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub jti: String,
    pub kid: String,
    pub client_id: String,
    pub sid: Option<String>,
    pub exp: i64,
    pub effective_at: i64,
    pub reason: RevocationReason,
}

impl Revocation {
    pub fn spec(&self) -> RevokedTokenSpec {
        RevokedTokenSpec {
            token_id: self.jti.clone(),
            key_id: self.kid.clone(),
            client_id: self.client_id.clone(),
            service_id: self.sid.clone(),
            expires_at: rfc3339(self.exp),
            effective_at: rfc3339(self.effective_at),
            reason: self.reason,
        }
    }
}

/// A token of the `bootstrap_token` grant, recorded before it is handed out: enough to list it,
/// cap its sid and count it for its key's rotation.
// Each printcolumn(...) repeats the same keys, which clippy mistakes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "bootstraptoken.dev",
    version = "v1alpha1",
    kind = "IssuedToken",
    namespaced,
    shortname = "ist",
    derive = "PartialEq",
    doc = "A token of the bootstrap_token grant, kept by the bootstrap-token-operator until the token expires or is revoked.",
    printcolumn(name = "Token ID", type_ = "string", json_path = ".spec.tokenId"),
    printcolumn(name = "Service ID", type_ = "string", json_path = ".spec.serviceId"),
    printcolumn(name = "Client", type_ = "string", json_path = ".spec.clientId"),
    printcolumn(name = "Key ID", type_ = "string", json_path = ".spec.keyId"),
    printcolumn(name = "Issued", type_ = "string", json_path = ".spec.issuedAt"),
    printcolumn(name = "Expires", type_ = "string", json_path = ".spec.expiresAt")
)]
#[serde(rename_all = "camelCase")]
pub struct IssuedTokenSpec {
    /// `jti` of the token.
    #[schemars(length(min = 1, max = 256))]
    pub token_id: String,
    /// `kid` of the key that signed it.
    #[schemars(length(max = 256))]
    pub key_id: String,
    /// `client_id` of the token: the bootstrap client, the only one that may use the grant.
    #[schemars(length(max = 512))]
    pub client_id: String,
    /// `sid` of the token.
    #[schemars(length(max = 253))]
    pub service_id: String,
    /// When it was issued (RFC 3339, to the millisecond: the cap revokes the oldest first).
    pub issued_at: String,
    /// `exp` of the token (RFC 3339): the record is deleted after it.
    pub expires_at: String,
}

/// A grant token to record, times as Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedGrant {
    pub jti: String,
    pub kid: String,
    pub client_id: String,
    pub sid: String,
    /// When it was issued, in milliseconds (its `iat` is the second).
    pub issued_ms: i64,
    pub exp: i64,
}

impl IssuedGrant {
    fn spec(&self) -> IssuedTokenSpec {
        IssuedTokenSpec {
            token_id: self.jti.clone(),
            key_id: self.kid.clone(),
            client_id: self.client_id.clone(),
            service_id: self.sid.clone(),
            issued_at: jiff::Timestamp::from_millisecond(self.issued_ms)
                .map(|t| t.to_string())
                .unwrap_or_default(),
            expires_at: rfc3339(self.exp),
        }
    }

    fn entry(&self) -> issued::Entry {
        issued::Entry {
            kid: self.kid.clone(),
            sid: self.sid.clone(),
            client_id: self.client_id.clone(),
            issued_ms: self.issued_ms,
            exp: self.exp,
        }
    }
}

/// The token a BootstrapToken held before a new one, as its Secret's annotations (or its
/// status) name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Previous<'a> {
    pub jti: &'a str,
    pub kid: &'a str,
    pub exp: i64,
}

/// What to revoke when a BootstrapToken gets the token `new_jti`: the previous token, unless
/// there is none, it is the same token or it has expired anyway. A re-issue leaves the previous
/// token working for the grace period (pods roll onto the new one meanwhile); a `revoke` request
/// and a deletion take it back at once.
pub fn on_replace(
    previous: Option<Previous<'_>>,
    new_jti: Option<&str>,
    reason: RevocationReason,
    client_id: &str,
    sid: &str,
    grace: Duration,
    now: i64,
) -> Option<Revocation> {
    let previous = previous?;
    if Some(previous.jti) == new_jti || previous.jti.is_empty() || previous.exp <= now {
        return None;
    }
    let delay = match reason {
        RevocationReason::Reissued => i64::try_from(grace.as_secs()).unwrap_or(i64::MAX),
        RevocationReason::RevokeRequested
        | RevocationReason::Deleted
        | RevocationReason::Endpoint
        | RevocationReason::ServiceCapReached => 0,
    };
    Some(Revocation {
        jti: previous.jti.to_string(),
        kid: previous.kid.to_string(),
        client_id: client_id.to_string(),
        sid: Some(sid.to_string()),
        exp: previous.exp,
        effective_at: now.saturating_add(delay),
        reason,
    })
}

/// The object's name: a `jti` may hold characters a name may not (`_`, capitals).
pub fn record_name(jti: &str) -> String {
    let digest = digest::digest(&digest::SHA256, jti.as_bytes());
    let hex: String = digest.as_ref()[..20]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("jti-{hex}")
}

pub(crate) fn rfc3339(seconds: i64) -> String {
    jiff::Timestamp::from_second(seconds)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

pub fn parse_time(text: &str) -> Option<i64> {
    text.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}

fn parse_time_ms(text: &str) -> Option<i64> {
    text.parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

/// The RevokedToken CRD as YAML, exactly what `make manifests` writes to `crds/`.
pub fn crd_yaml() -> String {
    generated_crd::<RevokedToken>("revokedtokens")
}

/// The IssuedToken CRD as YAML, exactly what `make manifests` writes to `crds/`.
pub fn issued_crd_yaml() -> String {
    generated_crd::<IssuedToken>("issuedtokens")
}

fn generated_crd<K: kube::CustomResourceExt>(name: &str) -> String {
    let mut yaml = format!(
        "# Generated by `bootstrap-token-operator crd {name}` (make manifests); do not edit.\n"
    );
    yaml.push_str(&serde_yaml::to_string(&K::crd()).expect("the CRD serialises"));
    yaml
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const GRACE: Duration = Duration::from_secs(600);

    fn previous(jti: &str, exp: i64) -> Option<Previous<'_>> {
        Some(Previous {
            jti,
            kid: "k1",
            exp,
        })
    }

    /// The previous token, the new jti, why, and when the revocation takes effect (if any).
    type Row<'a> = (
        Option<Previous<'a>>,
        Option<&'a str>,
        RevocationReason,
        Option<i64>,
    );

    #[test]
    fn what_a_replacement_revokes() {
        use RevocationReason::*;
        let later = NOW + 3600;
        // (previous, new jti, reason) → effective_at of the revocation, or none.
        let table: [Row; 8] = [
            (None, Some("new"), Reissued, None),
            (
                previous("old", later),
                Some("new"),
                Reissued,
                Some(NOW + 600),
            ),
            (
                previous("old", later),
                Some("new"),
                RevokeRequested,
                Some(NOW),
            ),
            (previous("old", later), None, Deleted, Some(NOW)),
            // The same token again: nothing to revoke.
            (previous("same", later), Some("same"), Reissued, None),
            // Expired already: a record would only be swept.
            (previous("old", NOW), Some("new"), Reissued, None),
            (previous("old", NOW - 1), None, Deleted, None),
            (previous("", later), Some("new"), Reissued, None),
        ];
        for (i, (prev, new, reason, want)) in table.into_iter().enumerate() {
            let got = on_replace(prev, new, reason, "client", "svc", GRACE, NOW);
            assert_eq!(got.as_ref().map(|r| r.effective_at), want, "row {i}");
            if let Some(revocation) = got {
                assert_eq!(revocation.kid, "k1", "row {i}: the kid is kept");
                assert_eq!(revocation.exp, later, "row {i}");
                assert_eq!(revocation.sid.as_deref(), Some("svc"));
            }
        }
    }

    #[test]
    fn record_names_are_valid_and_distinct() {
        let a = record_name("AbC_-x9");
        let b = record_name("AbC_-x8");
        assert_ne!(a, b);
        assert_eq!(a.len(), 44);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        );
    }

    #[test]
    fn crd_file_is_generated_from_the_type() {
        let on_disk = include_str!("../../crds/revokedtokens.bootstraptoken.dev.yaml");
        assert!(
            on_disk == crd_yaml(),
            "crds/ drifted from the Rust type: run `make manifests`"
        );
        let on_disk = include_str!("../../crds/issuedtokens.bootstraptoken.dev.yaml");
        assert!(
            on_disk == issued_crd_yaml(),
            "crds/ drifted from the Rust type: run `make manifests`"
        );
    }
}
