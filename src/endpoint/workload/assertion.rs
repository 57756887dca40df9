//! What can be told about a client assertion (RFC 7523 §2.2) before asking the API server: its
//! shape and its `exp`. Nothing here is trusted on its own; the `exp` read here bounds the cache
//! entry only after a TokenReview has accepted the same bytes.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

/// `client_assertion_type` of a JWT used for client authentication (RFC 7523 §2.2).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Projected ServiceAccount tokens are about 1 KiB; anything much larger is not one.
const MAX_LENGTH: usize = 16 * 1024;

/// Why an assertion is refused without asking the API server. The texts are fixed: nothing of
/// the assertion is echoed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AssertionError {
    #[error("client_assertion is not a compact JWT")]
    Malformed,
    #[error("client_assertion is not signed")]
    Unsigned,
    #[error("client_assertion has no exp: use a projected ServiceAccount token")]
    NoExpiry,
    #[error("client_assertion has expired")]
    Expired,
}

/// The claims of an assertion that matter before its review.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assertion {
    pub exp: i64,
}

/// Parses `token` (without verifying it) and checks that it is signed and unexpired at `now`.
pub fn parse(token: &str, now: i64) -> Result<Assertion, AssertionError> {
    if token.len() > MAX_LENGTH {
        return Err(AssertionError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AssertionError::Malformed);
    };
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| AssertionError::Malformed)
    };
    // Objects, not just anything serde could read as the fields wanted.
    let object = |bytes: Vec<u8>| {
        serde_json::from_slice::<Map<String, Value>>(&bytes).map_err(|_| AssertionError::Malformed)
    };
    let header = object(decode(header)?)?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(AssertionError::Malformed)?;
    if alg.eq_ignore_ascii_case("none") || signature.is_empty() {
        return Err(AssertionError::Unsigned);
    }
    decode(signature)?;
    let payload = object(decode(payload)?)?;
    let exp = match payload.get("exp") {
        None => return Err(AssertionError::NoExpiry),
        Some(exp) => exp.as_i64().ok_or(AssertionError::Malformed)?,
    };
    if exp <= now {
        return Err(AssertionError::Expired);
    }
    Ok(Assertion { exp })
}

/// A ServiceAccount, as the API server names an authenticated one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

impl ServiceAccount {
    /// From `system:serviceaccount:<namespace>:<name>`; `None` for any other user.
    pub fn from_username(username: &str) -> Option<ServiceAccount> {
        let rest = username.strip_prefix("system:serviceaccount:")?;
        let (namespace, name) = rest.split_once(':')?;
        let valid = |s: &str| !s.is_empty() && !s.contains(':');
        (valid(namespace) && valid(name)).then(|| ServiceAccount {
            namespace: namespace.into(),
            name: name.into(),
        })
    }
}

impl std::fmt::Display for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(header: &str, payload: &str, signature: &str) -> String {
        format!(
            "{}.{}.{signature}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn assertions() {
        const NOW: i64 = 1_800_000_000;
        let rs256 = r#"{"alg":"RS256","kid":"k"}"#;
        let fresh = r#"{"aud":["x"],"exp":1800000600,"sub":"system:serviceaccount:a:b"}"#;
        let huge = "a".repeat(MAX_LENGTH + 1);
        #[rustfmt::skip]
        let cases: Vec<(&str, String, Result<Assertion, AssertionError>)> = vec![
            ("a signed, fresh token", jwt(rs256, fresh, "c2ln"), Ok(Assertion { exp: 1_800_000_600 })),
            ("ES256 too", jwt(r#"{"alg":"ES256"}"#, fresh, "c2ln"), Ok(Assertion { exp: 1_800_000_600 })),
            ("expired a second ago", jwt(rs256, r#"{"exp":1799999999}"#, "c2ln"), Err(AssertionError::Expired)),
            ("expiring now", jwt(rs256, r#"{"exp":1800000000}"#, "c2ln"), Err(AssertionError::Expired)),
            ("no exp (a legacy Secret token)", jwt(rs256, r#"{"sub":"x"}"#, "c2ln"), Err(AssertionError::NoExpiry)),
            ("exp not a number", jwt(rs256, r#"{"exp":"soon"}"#, "c2ln"), Err(AssertionError::Malformed)),
            ("alg none", jwt(r#"{"alg":"none"}"#, fresh, ""), Err(AssertionError::Unsigned)),
            ("alg None, with a signature", jwt(r#"{"alg":"None"}"#, fresh, "c2ln"), Err(AssertionError::Unsigned)),
            ("empty signature", jwt(rs256, fresh, ""), Err(AssertionError::Unsigned)),
            ("signature not base64url", jwt(rs256, fresh, "!!"), Err(AssertionError::Malformed)),
            ("two parts", format!("{}.{}", URL_SAFE_NO_PAD.encode(rs256), URL_SAFE_NO_PAD.encode(fresh)), Err(AssertionError::Malformed)),
            ("four parts", format!("{}.x", jwt(rs256, fresh, "c2ln")), Err(AssertionError::Malformed)),
            ("garbage", "not a token".into(), Err(AssertionError::Malformed)),
            ("empty", String::new(), Err(AssertionError::Malformed)),
            ("header not JSON", format!("e30x.{}.c2ln", URL_SAFE_NO_PAD.encode(fresh)), Err(AssertionError::Malformed)),
            ("header without alg", jwt("{}", fresh, "c2ln"), Err(AssertionError::Malformed)),
            ("payload an array", jwt(rs256, "[1]", "c2ln"), Err(AssertionError::Malformed)),
            ("too long", huge, Err(AssertionError::Malformed)),
        ];
        for (name, token, want) in cases {
            assert_eq!(parse(&token, NOW), want, "{name}");
        }
    }

    #[test]
    fn service_account_usernames() {
        assert_eq!(
            ServiceAccount::from_username("system:serviceaccount:team-a:api"),
            Some(ServiceAccount {
                namespace: "team-a".into(),
                name: "api".into()
            })
        );
        for other in [
            "admin",
            "system:serviceaccount:team-a",
            "system:serviceaccount::api",
            "system:serviceaccount:team-a:",
            "system:serviceaccount:team-a:api:extra",
            "system:node:worker-1",
            "system:serviceaccounts:team-a:api",
        ] {
            assert_eq!(ServiceAccount::from_username(other), None, "{other}");
        }
    }
}
