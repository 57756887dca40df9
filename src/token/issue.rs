use std::time::Duration;

use super::{Claims, NOT_BEFORE_SKEW_SECS, TOKEN_VERSION, new_jti};
use crate::config::Config;

/// The claims of a bootstrap token (DESIGN §4) for `sid`, issued at `now`: client id and scope
/// always from the configuration, never from the requester. Shared by the controller and the
/// token endpoint so both issue the same token.
pub fn bootstrap_claims(config: &Config, sid: &str, lifetime: Duration, now: i64) -> Claims {
    Claims {
        iss: config.issuer.clone(),
        aud: config.audience.clone(),
        exp: now.saturating_add(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX)),
        jti: new_jti(),
        iat: now,
        nbf: now - NOT_BEFORE_SKEW_SECS,
        version_claim: config.version_claim,
        version: TOKEN_VERSION.into(),
        client_id: config.bootstrap.client_id.clone(),
        scope: config.bootstrap.scope.clone(),
        sid: Some(sid.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_shape() {
        let mut config = Config::default();
        config.bootstrap.scope =
            vec!["A8E73740C0041C03D67C3A951AA1D7533C8F9F2FB57D7BA107210B9BC9E06DA2".into()];
        let claims = bootstrap_claims(
            &config,
            "com.networknt.petstore-1.0.0",
            config.bootstrap.lifetime,
            1_631_713_497,
        );
        assert_eq!(claims.exp, 1_947_073_497);
        assert_eq!(claims.nbf, 1_631_713_377);
        assert_eq!(claims.client_id, "f7d42348-c647-4efb-a52d-4c5787421e00");
        assert_eq!(claims.sid.as_deref(), Some("com.networknt.petstore-1.0.0"));
        assert_eq!(claims.jti.len(), 22);
    }
}
